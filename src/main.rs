//! The `orchestrator` binary: parse arguments, run the command, print the error chain (a
//! closed pipe on stdout ends it quietly).

use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: it gives freed pages back to the system, so the
/// resident memory of a long-running server falls again after a large run, a burst of
/// WebSocket clients or large webhook bodies (glibc keeps the freed heap of every arena),
/// and runs and steps, which each take a short-lived thread, do not leave it fragmented.
/// Its options (how soon freed pages go back) are built in from `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    orchestrator::cli::quiet_on_closed_pipes();
    match orchestrator::cli::run() {
        Ok(code) => code,
        // The reader went away (`| head`): nothing to say, as ripgrep does.
        Err(err) if orchestrator::cli::is_closed_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
