//! Running the `orchestrator` binary: a clean environment, commands that must end within
//! the deadline, `init`ed projects in temporary directories and what they hold, and signals
//! to processes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};

use super::{poll_for, DEADLINE};

/// The result of one run of the binary.
pub(crate) struct Run {
    /// Exit code.
    pub(crate) code: i32,
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with both streams when the exit code is not the expected one.
    #[track_caller]
    pub(crate) fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs the binary in `dir` with a clean environment (see [`command`]) and waits for it,
/// however long it takes (for commands that wait for runs; [`cli`] has a deadline).
pub(crate) fn orchestrator(dir: &Path, args: &[&str]) -> Run {
    let output = command(dir).args(args).output().expect("run orchestrator");
    Run::from(output)
}

/// The binary with a clean environment: no `ORCHESTRATOR_*` variable of the caller leaks in.
pub(crate) fn command(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command.current_dir(dir).env("NO_COLOR", "1");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("ORCHESTRATOR_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs a command that must end on its own (it is killed, and the test fails, if it does
/// not end within the deadline: a `start` that should be refused must not hang the suite).
pub(crate) fn cli(dir: &Path, args: &[&str]) -> Run {
    let child = command(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run orchestrator");
    finish(child, &format!("`orchestrator {}`", args.join(" ")))
}

/// Waits for a child started by a test and collects what it printed, failing (and killing
/// it) when it does not end within the deadline.
pub(crate) fn finish(mut child: Child, what: &str) -> Run {
    let ended = poll_for(DEADLINE, || child.try_wait().expect("wait"));
    if ended.is_none() {
        let _ = child.kill();
        let output = child.wait_with_output().expect("wait");
        panic!(
            "{what} did not end within {DEADLINE:?}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Run::from(child.wait_with_output().expect("output"))
}

/// The repository's own directory.
pub(crate) fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh, empty project directory.
pub(crate) fn temp_project() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// An `init`ed project with extra files (project-relative path, content).
pub(crate) fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let project = temp_project();
    let dir = project.path();
    cli(dir, &["init"]).expect_code(0);
    write_files(dir, files);
    project
}

/// Writes files (path relative to `dir`, content), making their directories.
pub(crate) fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
}

/// Replaces `from` with `to` in the development configuration `init` wrote.
pub(crate) fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("config/development.yaml");
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(from),
        "config/development.yaml has no `{from}`:\n{text}"
    );
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Sends `signal` to a process, whether or not it still exists.
pub(crate) fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

/// Whether a process exists (signal 0).
pub(crate) fn alive(pid: u32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok()
}

/// `orchestrator trigger create webhook --url <url> --workflow <workflow>` with the further
/// arguments `more`, in `dir`.
pub(crate) fn create_webhook(dir: &Path, url: &str, workflow: &str, more: &[&str]) -> Run {
    let mut args = vec![
        "trigger",
        "create",
        "webhook",
        "--url",
        url,
        "--workflow",
        workflow,
    ];
    args.extend_from_slice(more);
    cli(dir, &args)
}

/// Every file of the project outside `data/`, `logs/` and `reports/`, with its content.
pub(crate) fn project_files(dir: &Path) -> Value {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let relative = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if ["data", "logs", "reports"].contains(&relative.as_str()) {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.push((relative, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files);
    json!(files)
}
