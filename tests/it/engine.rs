//! Running workflows for real: the guide's api_tests.json on an initialised project, a DAG
//! whose branches overlap, timeouts that kill a process group, retries, parameters that stay
//! data, and runs left behind by a killed process.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{orchestrator, temp_project};

fn project_with(workflows: &[(&str, &str)]) -> tempfile::TempDir {
    let project = temp_project();
    let dir = project.path();
    orchestrator(dir, &["init"]).expect_code(0);
    for (file, text) in workflows {
        fs::write(dir.join("workflows").join(file), text).unwrap();
    }
    orchestrator(dir, &["apply"]).expect_code(0);
    project
}

fn show(dir: &Path, run: &str) -> Value {
    let shown = orchestrator(dir, &["run", "show", run, "-o", "json"]).expect_code(0);
    serde_json::from_str(&shown.stdout).unwrap()
}

fn run_id(stdout: &str) -> String {
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("run_"))
        .expect("a run id")
        .to_owned()
}

#[test]
fn the_guides_api_tests_run_green_with_junit_results_and_a_report() {
    let project = project_with(&[]);
    let dir = project.path();
    let run = orchestrator(
        dir,
        &[
            "workflow",
            "execute",
            "wf_api-test-suite",
            "--params",
            r#"{"environment": "production"}"#,
        ],
    )
    .expect_code(0);
    assert!(
        run.stdout.contains("tests: 3 total, 3 passed"),
        "{}",
        run.stdout
    );
    let id = run_id(&run.stdout);
    let shown = show(dir, &id);
    assert_eq!(shown["run"]["status"], "succeeded");
    assert_eq!(shown["run"]["parameters"]["environment"], "production");
    assert_eq!(shown["steps"][1]["tests"].as_array().unwrap().len(), 3);
    let report = dir.join("reports").join(&id).join("report.html");
    let html = fs::read_to_string(&report).unwrap();
    assert!(html.contains("API Test Suite") && html.contains("3 passed"));
    assert!(dir
        .join("logs/workflows")
        .join(&id)
        .join("run_tests.log")
        .exists());
}

#[test]
fn dag_branches_overlap_and_outputs_flow() {
    let project = project_with(&[(
        "dag.yaml",
        r#"name: Dag
max_parallel: 2
steps:
  - name: start
    command: ["sh", "-c", "echo version=1.2.3 >> \"$ORCHESTRATOR_OUTPUT\""]
  - name: left
    depends_on: [start]
    command: ["sh", "-c", "date +%s.%N > left.start; sleep 1; date +%s.%N > left.end"]
  - name: right
    depends_on: [start]
    command: ["sh", "-c", "date +%s.%N > right.start; sleep 1; date +%s.%N > right.end"]
  - name: join
    depends_on: [left, right]
    command: ["sh", "-c", "test \"$1\" = 1.2.3", "join", "{{ steps.start.outputs.version }}"]
"#,
    )]);
    let dir = project.path();
    orchestrator(dir, &["workflow", "execute", "wf_dag"]).expect_code(0);
    let read = |name: &str| -> f64 {
        fs::read_to_string(dir.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    assert!(
        read("left.start") < read("right.end") && read("right.start") < read("left.end"),
        "the two branches ran at the same time"
    );
}

#[test]
fn a_timeout_kills_the_process_group_and_retries_are_counted() {
    let project = project_with(&[(
        "slow.yaml",
        r#"name: Slow
steps:
  - name: flaky
    command: ["sh", "-c", "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ $n -ge 2 ]"]
    retries: 3
    retry_delay: 10ms
  - name: hang
    command: ["sh", "-c", "sleep 100 & echo $! > child.pid; sleep 100"]
    timeout: 1s
"#,
    )]);
    let dir = project.path();
    let started = Instant::now();
    let run = orchestrator(dir, &["workflow", "execute", "wf_slow"]).expect_code(1);
    assert!(started.elapsed() < Duration::from_secs(30));
    let shown = show(dir, &run_id(&run.stdout));
    assert_eq!(shown["steps"][0]["status"], "succeeded");
    assert_eq!(shown["steps"][0]["attempts"].as_array().unwrap().len(), 3);
    assert_eq!(shown["steps"][1]["status"], "timed_out");
    assert_eq!(shown["run"]["status"], "failed");
    let child: i32 = fs::read_to_string(dir.join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), None).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the background sleep outlived its step"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn parameters_are_checked_and_stay_data() {
    let project = project_with(&[(
        "echo.yaml",
        r#"name: Echo
parameters:
  target: {type: string, required: true}
steps:
  - name: echo
    command: ["sh", "-c", "printf '%s' \"$1\" > seen; printf '%s' \"$ORCHESTRATOR_PARAM_TARGET\" > seen-env", "echo", "{{ params.target }}"]
"#,
    )]);
    let dir = project.path();
    let bad = orchestrator(
        dir,
        &[
            "workflow",
            "execute",
            "wf_echo",
            "--params",
            r#"{"traget": "x"}"#,
        ],
    )
    .expect_code(2);
    assert!(
        bad.stderr.contains("did you mean `target`?"),
        "{}",
        bad.stderr
    );
    assert!(
        bad.stderr.contains("missing required parameter `target`"),
        "{}",
        bad.stderr
    );
    let hostile = r#""; touch pwned; echo ""#;
    orchestrator(
        dir,
        &[
            "workflow",
            "execute",
            "wf_echo",
            "--params",
            &serde_json::json!({"target": hostile}).to_string(),
        ],
    )
    .expect_code(0);
    assert_eq!(fs::read_to_string(dir.join("seen")).unwrap(), hostile);
    assert_eq!(fs::read_to_string(dir.join("seen-env")).unwrap(), hostile);
    assert!(!dir.join("pwned").exists());
}

#[test]
fn a_run_left_by_a_killed_process_is_marked_interrupted() {
    let project = project_with(&[(
        "long.yaml",
        "name: Long\nsteps:\n  - name: wait\n    command: [\"sh\", \"-c\", \"touch started; sleep 100\"]\n",
    )]);
    let dir = project.path();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["workflow", "execute", "wf_long"])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("started").exists() {
        assert!(Instant::now() < deadline, "the step never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let list = orchestrator(dir, &["run", "list", "-o", "json"]).expect_code(0);
    assert!(
        list.stderr.contains("marked interrupted"),
        "{}",
        list.stderr
    );
    let runs: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(runs[0]["status"], "interrupted");
}
