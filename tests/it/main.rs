//! Integration tests: the real `orchestrator` binary in temporary project directories.

mod agent_metrics;
mod agents;
mod alerts;
mod bad_input;
mod browser;
mod cli_remote;
mod crash;
mod cron_crosscheck;
mod dashboard;
mod dashboard_editor;
mod dashboard_monitoring;
mod dashboard_ops;
mod editor_api;
mod engine;
mod exact;
mod flow;
mod fuzz_regressions;
mod git_source;
mod inputs;
mod load;
mod memo;
mod monitoring;
mod notifications;
mod receivers;
mod replay_auth;
mod run_slots;
mod schedule_pause;
mod scheduler;
mod security;
mod server;
mod soak;
mod triggers;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The result of one run of the binary.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams when the exit code is not the expected one.
    #[track_caller]
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the binary in `dir` with a clean environment for the variables it reads.
pub fn orchestrator(dir: &Path, args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(args)
        .current_dir(dir)
        .env_remove("ORCHESTRATOR_ENVIRONMENT")
        .env_remove("ORCHESTRATOR_CONFIG")
        .env_remove("ORCHESTRATOR_DATA_DIR")
        .env_remove("ORCHESTRATOR_PORT")
        .env("NO_COLOR", "1")
        .output()
        .expect("run orchestrator");
    Run::from(output)
}

/// The repository's own directory.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh project directory.
pub fn temp_project() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}
