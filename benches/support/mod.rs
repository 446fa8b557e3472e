//! What the benchmark binaries share: the release binary, a server started on port 0, a
//! process's resident memory, percentiles, and running a command that must succeed.

#![allow(dead_code)] // Each bench uses its own share of these.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The release binary next to the bench's own executable (`target/release/`).
pub fn release_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("bench path");
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/release")
        .join("orchestrator");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --release` first (the bench/ scripts do)",
        binary.display()
    );
    binary
}

/// `orchestrator start --port 0` in the production environment, running until `stop`.
pub struct Server {
    /// The process.
    pub child: Child,
    /// `host:port` it listens on.
    pub address: String,
}

impl Server {
    /// Starts the server in `project` with extra environment variables and waits for its
    /// `orchestrator listening on http://ADDR` line.
    pub fn start(binary: &Path, project: &Path, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(binary)
            .args(["start", "--port", "0"])
            .current_dir(project)
            .env("ORCHESTRATOR_ENVIRONMENT", "production")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let address = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_owned();
        Server { child, address }
    }

    /// SIGTERM, then waits for it to exit.
    pub fn stop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The `quantile` of samples (sorted here).
pub fn percentile(samples: &[f64], quantile: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs a command that must succeed.
pub fn run_ok(command: &mut Command) {
    let output = command.stdin(Stdio::null()).output().expect("run");
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
