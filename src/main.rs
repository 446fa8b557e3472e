//! The `orchestrator` binary: parse arguments, run the command, print the error chain.

use std::process::ExitCode;

/// mimalloc instead of glibc's malloc: it gives freed pages back to the system, so the
/// resident memory of a long-running server falls again after a large run, a burst of
/// WebSocket clients or large webhook bodies (glibc keeps the freed heap of every arena).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match orchestrator::cli::run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
