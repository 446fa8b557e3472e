//! Reading runs back: through the CLI (`run show`, `run list`), out of a run record, and
//! the files and processes a step leaves behind.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{cli, eventually_within, orchestrator};

/// `run show RUN -o json`: `{"run", "steps"}`.
pub(crate) fn show(dir: &Path, run: &str) -> Value {
    let shown = orchestrator(dir, &["run", "show", run, "-o", "json"]).expect_code(0);
    serde_json::from_str(&shown.stdout).unwrap()
}

/// The newest run's id (`run list -o json`), through whichever backend the CLI finds.
pub(crate) fn newest_run(dir: &Path) -> String {
    let listed = cli(dir, &["run", "list", "-o", "json"]).expect_code(0);
    let runs: Value = serde_json::from_str(&listed.stdout).unwrap();
    runs[0]["id"].as_str().expect("a run").to_owned()
}

/// The step called `name` in a run record (`{"run", "steps"}`, as `run show -o json` and
/// `GET /api/runs/{id}` give it).
pub(crate) fn step<'v>(shown: &'v Value, name: &str) -> &'v Value {
    shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step `{name}` in {shown:#}"))
}

/// The first run id (`run_...`) a command printed.
pub(crate) fn run_id(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("run_"))
        .expect("a run id")
        .to_owned()
}

/// Waits for a file to appear, with a deadline.
#[track_caller]
pub(crate) fn wait_for_file(path: &Path, what: &str) {
    eventually_within(
        &format!("{what}: {} to appear", path.display()),
        Duration::from_secs(20),
        || path.exists().then_some(()),
    );
}

/// Asserts that the process whose pid a file holds is gone (probing with signal 0), with a
/// deadline.
#[track_caller]
pub(crate) fn assert_gone(pid_file: &Path) {
    let pid: u32 = fs::read_to_string(pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually_within(
        &format!("process {pid} to end: it outlived its run"),
        Duration::from_secs(10),
        || (!super::alive(pid)).then_some(()),
    );
}

/// `workflow execute WORKFLOW --detach` through the running server; the new run's id.
pub(crate) fn execute_detached(dir: &Path, workflow: &str) -> String {
    let started = cli(dir, &["workflow", "execute", workflow, "--detach"]).expect_code(0);
    run_id(&started.stdout)
}

/// Waits (up to `within`, naming the server's stderr on failure) for a run to end; its
/// `run show -o json`.
pub(crate) fn finished_run(
    dir: &Path,
    server: &super::Server,
    run: &str,
    within: std::time::Duration,
) -> Value {
    server.eventually("the run to finish", within, || {
        let shown = show(dir, run);
        let status = shown["run"]["status"].as_str().unwrap_or_default();
        (!matches!(status, "queued" | "running")).then_some(shown)
    })
}

/// The attempts of the step called `name` in a run record.
pub(crate) fn attempts<'v>(shown: &'v Value, name: &str) -> &'v Vec<Value> {
    step(shown, name)["attempts"].as_array().expect("attempts")
}

/// The workers that ran the attempts of the step called `name`, in order.
pub(crate) fn workers_of(shown: &Value, name: &str) -> Vec<String> {
    attempts(shown, name)
        .iter()
        .filter_map(|a| a["worker"].as_str().map(str::to_owned))
        .collect()
}
