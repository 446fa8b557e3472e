//! Logging with tracing: warnings (or, with `--verbose`, debug) to stderr, and the
//! environment's level to `<logs>/system.log`.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// A log directory or file that cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write log file {path}: {source}; fix its permissions or set logging.dir (ORCHESTRATOR_LOG_DIR)")]
pub struct LogError {
    /// The file or directory.
    pub path: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn level(name: &str) -> LevelFilter {
    name.parse().unwrap_or(LevelFilter::INFO)
}

/// This program's own events at `level`; other crates' only from warnings up (their debug
/// output is about their internals, not about what the user asked for).
fn ours_at(level: LevelFilter) -> Targets {
    Targets::new()
        .with_target("orchestrator", level)
        .with_default(level.min(LevelFilter::WARN))
}

/// Installs the global subscriber. `log_dir` is `None` for commands that write nothing.
pub fn init(verbose: bool, file_level: &str, log_dir: Option<&Path>) -> Result<(), LogError> {
    let stderr_level = if verbose {
        LevelFilter::DEBUG
    } else {
        LevelFilter::WARN
    };
    let stderr_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_filter(ours_at(stderr_level));
    let file_layer = match log_dir {
        Some(dir) => {
            let path = dir.join("system.log");
            let error = |source| LogError {
                path: path.display().to_string(),
                source,
            };
            fs::create_dir_all(dir).map_err(error)?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(error)?;
            let file_level = if verbose {
                LevelFilter::DEBUG.max(level(file_level))
            } else {
                level(file_level)
            };
            Some(
                fmt::layer()
                    .with_writer(Mutex::new(file))
                    .with_ansi(false)
                    .with_filter(ours_at(file_level)),
            )
        }
        None => None,
    };
    // A second init (tests calling the CLI in-process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
    Ok(())
}
