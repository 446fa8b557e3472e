//! Running workflows for real: the guide's api_tests.json on an initialised project, a DAG
//! whose branches overlap, timeouts that kill a process group, retries, parameters that stay
//! data, and runs left behind by a killed process.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    alive, assert_gone, command, eventually_within, orchestrator, project, run_id, show,
    wait_for_file,
};

fn project_with(workflows: &[(&str, &str)]) -> tempfile::TempDir {
    let project = project(&[]);
    let dir = project.path();
    for (file, text) in workflows {
        fs::write(dir.join("workflows").join(file), text).unwrap();
    }
    orchestrator(dir, &["apply"]).expect_code(0);
    project
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
    let child: u32 = fs::read_to_string(dir.join("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually_within(
        "the background sleep to end: it outlived its step",
        Duration::from_secs(5),
        || (!alive(child)).then_some(()),
    );
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
    let mut child = command(dir)
        .args(["workflow", "execute", "wf_long"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_file(&dir.join("started"), "the step");
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

pub(crate) const SLEEPER: &str = r#"name: Sleeper
steps:
  - name: nap
    command: ["sh", "-c", "sleep 100 & echo $! > nap.pid; touch started; wait"]
  - name: after
    command: ["true"]
  - name: report
    if: always()
    command: ["sh", "-c", "touch reported"]
"#;

#[test]
fn run_cancel_from_another_terminal_stops_the_group_and_marks_the_run() {
    let project = project_with(&[("sleeper.yaml", SLEEPER)]);
    let dir = project.path();
    let child = command(dir)
        .args(["workflow", "execute", "wf_sleeper"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&dir.join("started"), "the step");
    let runs = fs::read_dir(dir.join("logs/workflows")).unwrap();
    let id = runs
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|name| name.starts_with("run_"))
        .expect("a run directory");
    let cancel = orchestrator(dir, &["run", "cancel", &id]).expect_code(0);
    assert!(
        cancel.stdout.contains("cancel requested"),
        "{}",
        cancel.stdout
    );
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1), "a cancelled run exits 1");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("run {id} cancelled")), "{stdout}");
    assert_gone(&dir.join("nap.pid"));
    let shown = show(dir, &id);
    assert_eq!(shown["run"]["status"], "cancelled");
    assert_eq!(shown["steps"][0]["status"], "cancelled");
    assert_eq!(shown["steps"][1]["status"], "cancelled");
    // `always()` steps do not run once the run is cancelled: nothing new starts.
    assert_eq!(shown["steps"][2]["status"], "cancelled");
    assert!(!dir.join("reported").exists());
}

#[test]
fn ctrl_c_cancels_the_run_in_the_foreground() {
    let project = project_with(&[("sleeper.yaml", SLEEPER)]);
    let dir = project.path();
    let child = command(dir)
        .args(["workflow", "execute", "wf_sleeper"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_file(&dir.join("started"), "the step");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_gone(&dir.join("nap.pid"));
    let list = orchestrator(dir, &["run", "list", "-o", "json"]).expect_code(0);
    let runs: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(runs[0]["status"], "cancelled");
}

#[test]
fn a_disabled_agent_fails_its_steps_clearly_or_makes_them_wait() {
    let project = project(&[]);
    let dir = project.path();
    fs::write(
        dir.join("agents/off.yaml"),
        r#"name: off_fail
type: exec
command: ["true"]
enabled: false
---
name: off_wait
type: exec
command: ["true"]
enabled: false
when_disabled: wait
"#,
    )
    .unwrap();
    fs::write(
        dir.join("workflows/uses-off.yaml"),
        r#"name: Uses Off
steps:
  - name: probe
    agent: off_fail
    action: run
  - name: waits
    if: always()
    agent: off_wait
    action: run
    timeout: 1s
"#,
    )
    .unwrap();
    orchestrator(dir, &["apply"]).expect_code(0);
    let run = orchestrator(dir, &["workflow", "execute", "wf_uses-off"]).expect_code(1);
    let shown = show(dir, &run_id(&run.stdout));
    assert_eq!(shown["steps"][0]["status"], "failed");
    let message = shown["steps"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("agent `off_fail` is disabled") && message.contains("when_disabled: wait"),
        "{message}"
    );
    assert_eq!(shown["steps"][1]["status"], "timed_out");
    assert!(
        shown["steps"][1]["message"]
            .as_str()
            .unwrap()
            .contains("timed out waiting for agent `off_wait`"),
        "{}",
        shown["steps"][1]
    );
}

/// Concurrency policies act between runs of one process (a server): driven here through the
/// library with a shared engine configuration, on a store made by the real binary.
mod concurrency {
    use super::*;
    use orchestrator::agents::local::{LocalExecutor, LocalSettings};
    use orchestrator::engine::admission::{AgentSwitches, RunAdmission};
    use orchestrator::engine::run::{self, CancelSignal, EngineConfig, RunRequest};
    use orchestrator::model::{RunRecord, Trigger};
    use orchestrator::store::Store;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn workflow(policy: &str) -> String {
        format!(
            r#"name: Gate
concurrency: {policy}
steps:
  - name: hold
    command: ["sh", "-c", "touch \"started-$ORCHESTRATOR_RUN_ID\"; while [ ! -e release ]; do sleep 0.02; done; date +%s.%N > \"done-$ORCHESTRATOR_RUN_ID\""]
"#
        )
    }

    struct Engine {
        project: tempfile::TempDir,
        store: Arc<Store>,
        config: EngineConfig,
    }

    fn engine(policy: &str) -> Engine {
        let project = project_with(&[("gate.yaml", &workflow(policy))]);
        let dir = project.path();
        let store = Arc::new(Store::open(&dir.join("data")).unwrap());
        let agent_switches = AgentSwitches::new();
        let agent_logs = orchestrator::engine::agent_logs::AgentLogs::new(
            orchestrator::logging::Rotation::default(),
        );
        let executor = LocalExecutor::new(LocalSettings {
            project_dir: dir.to_owned(),
            log_dir: dir.join("logs"),
            reports_dir: dir.join("reports"),
            max_log_bytes: 100 << 20,
            agent_logs: Arc::clone(&agent_logs),
            agent_switches: Arc::clone(&agent_switches),
        });
        let config = EngineConfig {
            project_dir: dir.to_owned(),
            log_dir: dir.join("logs"),
            reports_dir: dir.join("reports"),
            data_dir: dir.join("data"),
            history_limit: 100,
            max_parallel: 4,
            admission: RunAdmission::new(),
            agent_switches,
            max_log_bytes: 100 << 20,
            agent_logs,
            executor: Arc::new(executor),
            history: Arc::default(),
            detach_remote: Arc::default(),
            tests: Default::default(),
            git_source_path: None,
        };
        Engine {
            project,
            store,
            config,
        }
    }

    impl Engine {
        fn dir(&self) -> &Path {
            self.project.path()
        }

        /// Creates a run and executes it in a thread; returns its id, its cancel flag and
        /// the thread.
        fn start(&self) -> (String, Arc<AtomicBool>, std::thread::JoinHandle<RunRecord>) {
            let request = RunRequest {
                workflow: "wf_gate".into(),
                parameters: Default::default(),
                trigger: Trigger {
                    kind: "api".into(),
                    details: Default::default(),
                },
            };
            let (run, steps) = run::create_run(&self.store, &request).unwrap();
            let id = run.id.clone();
            let flag = Arc::new(AtomicBool::new(false));
            let cancel = CancelSignal {
                flag: Arc::clone(&flag),
            };
            let store = Arc::clone(&self.store);
            let config = self.config.clone();
            let thread = std::thread::spawn(move || {
                run::execute(&store, &config, run, steps, &cancel, &|_| {}).unwrap()
            });
            (id, flag, thread)
        }

        fn started(&self, id: &str) -> PathBuf {
            self.dir().join(format!("started-{id}"))
        }

        fn release(&self) {
            fs::write(self.dir().join("release"), "").unwrap();
        }

        fn finished_at(&self, id: &str) -> f64 {
            fs::read_to_string(self.dir().join(format!("done-{id}")))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        }
    }

    use std::path::PathBuf;

    #[test]
    fn forbid_skips_a_run_while_another_is_active() {
        let engine = engine("forbid");
        let (first, _, first_thread) = engine.start();
        wait_for_file(&engine.started(&first), "the first run");
        let (second, _, second_thread) = engine.start();
        let skipped = second_thread.join().unwrap();
        assert_eq!(skipped.status.as_str(), "skipped");
        assert!(
            skipped.message.as_deref().unwrap().contains(&first),
            "{:?}",
            skipped.message
        );
        assert!(!engine.started(&second).exists());
        engine.release();
        assert_eq!(first_thread.join().unwrap().status.as_str(), "succeeded");
    }

    #[test]
    fn queue_runs_the_second_after_the_first() {
        let engine = engine("queue");
        let (first, _, first_thread) = engine.start();
        wait_for_file(&engine.started(&first), "the first run");
        let (second, _, second_thread) = engine.start();
        let queued = engine.store.run(&second).unwrap().unwrap();
        assert_eq!(queued.status.as_str(), "queued");
        assert!(
            !engine.started(&second).exists(),
            "the second run did not wait"
        );
        engine.release();
        assert_eq!(first_thread.join().unwrap().status.as_str(), "succeeded");
        assert_eq!(second_thread.join().unwrap().status.as_str(), "succeeded");
        let second_started: f64 = {
            let step = &engine.store.steps(&second).unwrap()[0];
            chrono::DateTime::parse_from_rfc3339(step.started_at.as_deref().unwrap())
                .unwrap()
                .timestamp_micros() as f64
                / 1e6
        };
        assert!(
            second_started >= engine.finished_at(&first) - 0.001,
            "the queued run started before the first ended"
        );
    }

    #[test]
    fn replace_cancels_the_active_run_for_the_new_one() {
        let engine = engine("replace");
        let (first, _, first_thread) = engine.start();
        wait_for_file(&engine.started(&first), "the first run");
        let (second, _, second_thread) = engine.start();
        let replaced = first_thread.join().unwrap();
        assert_eq!(replaced.status.as_str(), "cancelled");
        wait_for_file(&engine.started(&second), "the replacing run");
        engine.release();
        assert_eq!(second_thread.join().unwrap().status.as_str(), "succeeded");
    }

    #[test]
    fn allow_runs_side_by_side() {
        let engine = engine("allow");
        let (first, _, first_thread) = engine.start();
        let (second, _, second_thread) = engine.start();
        wait_for_file(&engine.started(&first), "the first run");
        wait_for_file(&engine.started(&second), "the second run, beside the first");
        engine.release();
        assert_eq!(first_thread.join().unwrap().status.as_str(), "succeeded");
        assert_eq!(second_thread.join().unwrap().status.as_str(), "succeeded");
    }
}

#[test]
fn the_guides_create_then_execute_sequence_runs_green_on_a_fresh_project() {
    let project = project(&[]);
    let dir = project.path();
    let guide = crate::support::repo_dir().join("tests/fixtures/guide/workflows/api_tests.json");
    let created = orchestrator(
        dir,
        &[
            "workflow",
            "create",
            "API Tests",
            "--config",
            guide.to_str().unwrap(),
        ],
    )
    .expect_code(0);
    let id = created
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("created workflow "))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the new workflow's id")
        .to_owned();
    assert_eq!(id, "wf_api-tests");
    let listed = orchestrator(dir, &["workflow", "list"]).expect_code(0);
    assert!(listed.stdout.contains("wf_api-tests"), "{}", listed.stdout);
    let run = orchestrator(dir, &["workflow", "execute", &id]).expect_code(0);
    assert!(
        run.stdout.contains("tests: 3 total, 3 passed"),
        "{}",
        run.stdout
    );
    let id = run_id(&run.stdout);
    assert!(dir.join("reports").join(&id).join("report.html").exists());
}

#[test]
fn an_agents_timeout_and_max_concurrent_apply_to_its_steps() {
    let project = project(&[]);
    let dir = project.path();
    fs::write(
        dir.join("agents/limited.yaml"),
        r#"name: one_at_a_time
type: exec
command: ["sh", "-c", "date +%s.%N > \"$ORCHESTRATOR_STEP.start\"; sleep 0.5; date +%s.%N > \"$ORCHESTRATOR_STEP.end\"; echo '{\"status\": \"succeeded\"}'"]
max_concurrent: 1
---
name: hasty
type: exec
command: ["sh", "-c", "sleep 30 & echo $! > hasty.pid; wait"]
timeout: 1s
"#,
    )
    .unwrap();
    fs::write(
        dir.join("workflows/limits.yaml"),
        r#"name: Limits
max_parallel: 4
steps:
  - name: first
    agent: one_at_a_time
    action: run
  - name: second
    agent: one_at_a_time
    action: run
    depends_on: []
  - name: slow
    agent: hasty
    action: run
    depends_on: []
"#,
    )
    .unwrap();
    orchestrator(dir, &["apply"]).expect_code(0);
    let run = orchestrator(dir, &["workflow", "execute", "wf_limits"]).expect_code(1);
    let shown = show(dir, &run_id(&run.stdout));
    assert_eq!(shown["steps"][0]["status"], "succeeded");
    assert_eq!(shown["steps"][1]["status"], "succeeded");
    assert_eq!(
        shown["steps"][2]["status"], "timed_out",
        "{}",
        shown["steps"][2]
    );
    assert_gone(&dir.join("hasty.pid"));
    let read = |name: &str| -> f64 {
        fs::read_to_string(dir.join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (first, second) = (
        (read("first.start"), read("first.end")),
        (read("second.start"), read("second.end")),
    );
    assert!(
        first.1 <= second.0 || second.1 <= first.0,
        "max_concurrent: 1 but the steps overlapped: {first:?} {second:?}"
    );
}
