//! The server-wide limit on runs executing at once (`runs.max_active`) with real processes:
//! runs beyond it are created `queued` and answered at once, wait for a slot, and start in
//! the order they were created as slots free; a waiting run cancelled ends without
//! starting; at shutdown the waiting runs end `interrupted`, none is left `running`;
//! `/metrics` counts the runs waiting; runs left waiting by a server killed outright start,
//! once each and in order, when it starts again.
//!
//! Each step writes `start <run>` to a shared log, waits until the test creates
//! `gate/release/<run>`, then writes `end <run>`: the log shows which runs executed at once.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{cli, edit_config, eventually, project, Api, Server};

const GATE: &str = "name: Gate\nsteps:\n  - name: wait\n    command: [\"sh\", \"-c\", \"echo start $ORCHESTRATOR_RUN_ID >> gate/events.log; while [ ! -e gate/release/$ORCHESTRATOR_RUN_ID ]; do sleep 0.02; done; echo end $ORCHESTRATOR_RUN_ID >> gate/events.log\"]\n";

/// A project whose server executes at most `max_active` runs at once.
fn gated_project(max_active: u32) -> tempfile::TempDir {
    let dir = project(&[("workflows/gate.yaml", GATE)]);
    fs::create_dir_all(dir.path().join("gate/release")).unwrap();
    fs::write(dir.path().join("gate/events.log"), "").unwrap();
    edit_config(
        dir.path(),
        "\nruns:\n",
        &format!("\nruns:\n  max_active: {max_active}\n"),
    );
    dir
}

/// A minimal client: status and body of each answer.
struct Client {
    api: Api,
}

impl Client {
    /// Talks to the server of `dir` at the address its `data/server.json` gives.
    fn new(dir: &Path) -> Client {
        Client {
            api: Api::of_project(dir),
        }
    }

    fn get(&self, path: &str) -> (u16, String) {
        let reply = self.api.get(path);
        (reply.status, reply.text)
    }

    fn json(&self, path: &str) -> Value {
        let (status, text) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    fn post(&self, path: &str) -> (u16, Value) {
        self.api.post(path, "").into_parts()
    }

    /// A gauge or counter of `/metrics` without labels.
    fn metric(&self, name: &str) -> f64 {
        let (status, text) = self.get("/metrics");
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Runs the gate workflow; the answer must come at once, whatever the slots.
    fn execute(&self) -> String {
        let asked = Instant::now();
        let (status, body) = self.post("/api/workflows/wf_gate/execute");
        assert_eq!(status, 202, "{body}");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the answer waited {:?}",
            asked.elapsed()
        );
        body["run_id"].as_str().expect("run_id").to_owned()
    }

    fn run(&self, id: &str) -> Value {
        self.json(&format!("/api/runs/{id}"))
    }
}

/// The `start`/`end` lines of the steps so far, as (event, run).
fn events(dir: &Path) -> Vec<(String, String)> {
    fs::read_to_string(dir.join("gate/events.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(event, run)| (event.to_owned(), run.to_owned()))
        .collect()
}

fn started(dir: &Path) -> Vec<String> {
    events(dir)
        .into_iter()
        .filter(|(e, _)| e == "start")
        .map(|(_, run)| run)
        .collect()
}

/// The most steps that were between their `start` and `end` at once.
fn most_at_once(dir: &Path) -> usize {
    let mut running = 0usize;
    let mut most = 0;
    for (event, _) in events(dir) {
        if event == "start" {
            running += 1;
            most = most.max(running);
        } else {
            running -= 1;
        }
    }
    most
}

fn release(dir: &Path, run: &str) {
    fs::write(dir.join("gate/release").join(run), "").unwrap();
}

#[test]
fn at_most_max_active_runs_execute_and_the_others_start_in_creation_order() {
    let dir = gated_project(2);
    let _server = Server::start(dir.path());
    let client = Client::new(dir.path());
    let runs: Vec<String> = (0..6).map(|_| client.execute()).collect();

    // Two start; four wait, queued, and are counted.
    let mut first = eventually("two runs to start", || {
        let started = started(dir.path());
        (started.len() == 2).then_some(started)
    });
    // Both take a slot at once: their steps may start in either order.
    first.sort();
    let mut expected = runs[..2].to_vec();
    expected.sort();
    assert_eq!(first, expected, "the first two created start first");
    eventually("four runs counted waiting", || {
        (client.metric("orchestrator_runs_waiting") == 4.0).then_some(())
    });
    assert_eq!(client.metric("orchestrator_active_runs"), 2.0);
    for waiting in &runs[2..] {
        let shown = client.run(waiting);
        assert_eq!(shown["run"]["status"], "queued", "{shown}");
        assert!(shown["run"]["started_at"].is_null(), "{shown}");
    }

    // A waiting run cancelled ends at once, without starting.
    let (status, body) = client.post(&format!("/api/runs/{}/cancel", runs[3]));
    assert_eq!(status, 202, "{body}");
    let cancelled = eventually("the waiting run to end cancelled", || {
        let shown = client.run(&runs[3]);
        (shown["run"]["status"] == "cancelled").then_some(shown)
    });
    assert!(cancelled["run"]["started_at"].is_null(), "{cancelled}");
    assert_eq!(cancelled["steps"][0]["status"], "cancelled", "{cancelled}");
    assert_eq!(client.metric("orchestrator_runs_waiting"), 3.0);
    let (status, body) = client.post(&format!("/api/runs/{}/cancel", runs[3]));
    assert_eq!(status, 409, "a finished run has nothing to cancel: {body}");

    // Each run that ends hands its slot to the next one created.
    let expected: Vec<&String> = runs.iter().filter(|r| **r != runs[3]).collect();
    for (done, run) in expected.iter().enumerate() {
        release(dir.path(), run);
        let wanted = (done + 3).min(expected.len());
        let started = eventually("the next run to start", || {
            let started = started(dir.path());
            (started.len() >= wanted).then_some(started)
        });
        assert_eq!(started.len(), wanted, "{started:?}");
        assert!(most_at_once(dir.path()) <= 2, "{:?}", events(dir.path()));
    }
    for run in &expected {
        let finished = eventually("the run to succeed", || {
            let shown = client.run(run);
            (shown["run"]["status"] != "queued" && shown["run"]["status"] != "running")
                .then_some(shown)
        });
        assert_eq!(finished["run"]["status"], "succeeded", "{finished}");
    }
    // In creation order (the first two, started together, in either order), never more
    // than two at once, and two at once at the start.
    let mut order = started(dir.path());
    let mut wanted: Vec<String> = expected.iter().map(|r| r.to_string()).collect();
    order[..2].sort();
    wanted[..2].sort();
    assert_eq!(order, wanted);
    assert_eq!(most_at_once(dir.path()), 2, "{:?}", events(dir.path()));
    assert_eq!(client.metric("orchestrator_runs_waiting"), 0.0);
    assert_eq!(client.metric("orchestrator_active_runs"), 0.0);
}

#[test]
fn a_shutdown_ends_the_waiting_runs_interrupted_without_starting_them() {
    let dir = gated_project(1);
    let mut server = Server::start_with(dir.path(), &[("ORCHESTRATOR_SHUTDOWN_GRACE", "1")]);
    let client = Client::new(dir.path());
    let runs: Vec<String> = (0..3).map(|_| client.execute()).collect();
    eventually("the first run to start and two to wait", || {
        (started(dir.path()) == runs[..1] && client.metric("orchestrator_runs_waiting") == 2.0)
            .then_some(())
    });
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    // Only the first ever started; nothing is left queued or running.
    assert_eq!(started(dir.path()), runs[..1]);
    for (index, run) in runs.iter().enumerate() {
        let shown = cli(dir.path(), &["run", "show", run, "-o", "json"]).expect_code(0);
        let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
        assert_eq!(shown["run"]["status"], "interrupted", "{shown}");
        assert_eq!(shown["steps"][0]["status"], "interrupted", "{shown}");
        let message = shown["run"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("shut down"), "{shown}");
        if index > 0 {
            assert!(shown["run"]["started_at"].is_null(), "{shown}");
            assert!(message.contains("before the run started"), "{shown}");
        }
    }
}

/// The processes whose environment names `run` as theirs (`ORCHESTRATOR_RUN_ID`).
fn processes_of_run(run: &str) -> Vec<u32> {
    let wanted = format!("ORCHESTRATOR_RUN_ID={run}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            environ
                .split(|byte| *byte == 0)
                .any(|variable| variable == wanted.as_bytes())
                .then_some(pid)
        })
        .collect()
}

/// `run show` of a run, straight from the store (no server holds it).
fn shown(dir: &Path, run: &str) -> Value {
    let shown = cli(dir, &["run", "show", run, "-o", "json"]).expect_code(0);
    serde_json::from_str(&shown.stdout).unwrap()
}

#[test]
fn runs_left_waiting_by_a_killed_server_run_once_at_the_next_start() {
    let dir = gated_project(1);
    let mut server = Server::start(dir.path());
    let client = Client::new(dir.path());
    let runs: Vec<String> = (0..3).map(|_| client.execute()).collect();
    eventually("the first run to start and two to wait", || {
        (started(dir.path()) == runs[..1] && client.metric("orchestrator_runs_waiting") == 2.0)
            .then_some(())
    });
    // No shutdown: the process is gone at once, with two acknowledged runs waiting.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    drop(server);
    assert!(
        !processes_of_run(&runs[0]).is_empty(),
        "the executing run's step process outlives the killed server"
    );
    for run in &runs[1..] {
        assert_eq!(shown(dir.path(), run)["run"]["status"], "queued");
    }

    server = Server::start(dir.path());
    let client = Client::new(dir.path());
    // The run that was executing ends interrupted; the waiting ones start in creation
    // order, still one at a time.
    let first = client.run(&runs[0]);
    assert_eq!(first["run"]["status"], "interrupted", "{first}");
    // Its step process outlived the killed server; the restart stopped it.
    eventually("the interrupted run's step process to be stopped", || {
        processes_of_run(&runs[0]).is_empty().then_some(())
    });
    let resumed = eventually("the second run to start", || {
        let started = started(dir.path());
        (started.len() == 2).then_some(started)
    });
    assert_eq!(resumed, runs[..2]);
    assert_eq!(client.metric("orchestrator_runs_waiting"), 1.0);
    assert_eq!(client.run(&runs[2])["run"]["status"], "queued");
    release(dir.path(), &runs[1]);
    eventually("the third run to start", || {
        (started(dir.path()).len() == 3).then_some(())
    });
    release(dir.path(), &runs[2]);
    for run in &runs[1..] {
        let finished = eventually("the run to succeed", || {
            let shown = client.run(run);
            (shown["run"]["status"] != "queued" && shown["run"]["status"] != "running")
                .then_some(shown)
        });
        assert_eq!(finished["run"]["status"], "succeeded", "{finished}");
    }
    // Each ran exactly once, in order.
    assert_eq!(started(dir.path()), runs);
    assert_eq!(client.metric("orchestrator_runs_waiting"), 0.0);
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
}
