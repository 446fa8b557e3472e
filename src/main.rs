//! The `orchestrator` binary: parse arguments, run the command, print the error chain.

use std::process::ExitCode;

fn main() -> ExitCode {
    match orchestrator::cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
