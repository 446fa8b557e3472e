//! Issue 18: a controller restart kills no remote step. The controller is killed with
//! SIGKILL while steps run on workers and started again on the same project: the steps go
//! on where they run, what their workers reported while it was down is applied once, and
//! the run ends as if nothing had happened.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

fn log_of(dir: &Path, shown: &Value, name: &str) -> String {
    let log = step(shown, name)["log"].as_str().unwrap().to_owned();
    fs::read_to_string(dir.join("logs").join(log)).unwrap_or_default()
}

/// The attempts a worker has finished, from its heartbeat record in the `orch_workers`
/// bucket: it counts an attempt once its `finished` report is in the results stream.
fn finished_by(nats: &Nats, worker: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Ok(client) = async_nats::connect(nats.url()).await else {
            return 0;
        };
        let js = async_nats::jetstream::new(client);
        let Ok(bucket) = js.get_key_value("orch_workers").await else {
            return 0;
        };
        match bucket.get(worker).await {
            Ok(Some(value)) => serde_json::from_slice::<Value>(&value)
                .ok()
                .and_then(|info| info["finished"].as_u64())
                .unwrap_or(0),
            _ => 0,
        }
    })
}

/// Two remote steps that wait for a file, after a remote step whose output they use and
/// before a local step that uses theirs.
fn waiting_workflow(release: &Path) -> String {
    let release = release.display();
    format!(
        r#"id: wf_restart
name: restart
max_parallel: 4
steps:
  - name: first
    runs_on: {{pool: linux}}
    command: ["sh", "-c", "echo first ran; echo token=t7 >> $ORCHESTRATOR_OUTPUT"]
  - name: wait_a
    depends_on: [first]
    runs_on: {{pool: linux}}
    command: ["sh", "-c", "echo a before {{{{ steps.first.outputs.token }}}}; while [ ! -f {release} ]; do sleep 0.05; done; echo a after; echo a=A >> $ORCHESTRATOR_OUTPUT"]
  - name: wait_b
    depends_on: [first]
    runs_on: {{pool: linux}}
    command: ["sh", "-c", "echo b before; while [ ! -f {release} ]; do sleep 0.05; done; i=0; while [ $i -lt 2000 ]; do echo \"b line $i\"; i=$((i+1)); done; echo b=B >> $ORCHESTRATOR_OUTPUT"]
  - name: join
    depends_on: [wait_a, wait_b]
    command: ["sh", "-c", "echo joined {{{{ steps.first.outputs.token }}}} {{{{ steps.wait_a.outputs.a }}}} {{{{ steps.wait_b.outputs.b }}}}"]
"#
    )
}

/// Starts the workflow and waits until both waiting steps have said `before` (their logs
/// reached the controller).
fn start_and_wait_for_both(dir: &Path, server: &Server) -> String {
    let run = execute_detached(dir, "restart");
    server.eventually(
        "both remote steps to be waiting",
        Duration::from_secs(60),
        || {
            let shown = show(dir, &run);
            (log_of(dir, &shown, "wait_a").contains("a before t7")
                && log_of(dir, &shown, "wait_b").contains("b before"))
            .then_some(())
        },
    );
    run
}

fn assert_ran_once_each(dir: &Path, shown: &Value) {
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    for name in ["first", "wait_a", "wait_b", "join"] {
        let attempts = step(shown, name)["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 1, "step {name} ran once: {shown:#}");
        assert_eq!(step(shown, name)["status"], "succeeded", "{shown:#}");
    }
    for name in ["first", "wait_a", "wait_b"] {
        assert_eq!(
            step(shown, name)["attempts"][0]["worker"],
            "r1",
            "{name} ran on the worker"
        );
    }
    assert_eq!(step(shown, "wait_a")["outputs"]["a"], "A");
    assert_eq!(step(shown, "wait_b")["outputs"]["b"], "B");
    let joined = log_of(dir, shown, "join");
    assert!(joined.contains("joined t7 A B"), "{joined}");
    // Each remote log whole, every line once and in order.
    let a = log_of(dir, shown, "wait_a");
    assert_eq!(a.matches("a before t7\n").count(), 1, "{a}");
    assert_eq!(a.matches("a after\n").count(), 1, "{a}");
    let b = log_of(dir, shown, "wait_b");
    let expected: String = std::iter::once("b before\n".to_owned())
        .chain((0..2000).map(|i| format!("b line {i}\n")))
        .collect();
    assert!(
        b.contains(&expected),
        "the log of wait_b is whole and in order ({} bytes):\n{}",
        b.len(),
        &b[..b.len().min(400)]
    );
    assert_eq!(b.matches("b line 1999\n").count(), 1);
    assert!(
        !step(shown, "wait_b")["message"]
            .as_str()
            .unwrap_or_default()
            .contains("incomplete"),
        "{shown:#}"
    );
}

#[test]
fn a_controller_killed_while_remote_steps_run_picks_them_up_again_after_a_restart() {
    let nats = Nats::start();
    let outside = tempfile::tempdir().unwrap();
    let release = outside.path().join("release");
    let project = distributed_project(
        &nats,
        &[("workflows/restart.yaml", &waiting_workflow(&release))],
    );
    let dir = project.path();
    let mut server = Server::start(dir);
    let worker = WorkerProcess::start(dir, "r1", "pool=linux", 4);
    let run = start_and_wait_for_both(dir, &server);

    let said = server.kill9();
    let mut server = Server::start(dir);
    // Released only once the new controller is up: the steps report to it.
    fs::write(&release, "go").unwrap();
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    assert_ran_once_each(dir, &shown);
    assert!(
        server
            .stderr()
            .contains("resumed with its steps on workers"),
        "the restart says what it did:\n{}\n--- before the kill\n{said}",
        server.stderr()
    );
    assert!(!worker.stderr().contains("lost"), "{}", worker.stderr());
    server.stop();
}

#[test]
fn what_a_remote_step_reported_while_the_controller_was_down_is_applied_once_at_restart() {
    let nats = Nats::start();
    let outside = tempfile::tempdir().unwrap();
    let release = outside.path().join("release");
    let project = distributed_project(
        &nats,
        &[("workflows/restart.yaml", &waiting_workflow(&release))],
    );
    let dir = project.path();
    let mut server = Server::start(dir);
    let _worker = WorkerProcess::start(dir, "r1", "pool=linux", 4);
    let run = start_and_wait_for_both(dir, &server);
    // The worker counts what it finished in its registration, refreshed with its lease:
    // only `first` has finished (the others wait for the release file).
    eventually("the worker to count `first` as finished", || {
        (finished_by(&nats, "r1") == 1).then_some(())
    });

    server.kill9();
    // Both steps finish while no controller listens: their logs and `finished` reports
    // wait in the results stream.
    fs::write(&release, "go").unwrap();
    let done = poll_for(Duration::from_secs(60), || {
        (finished_by(&nats, "r1") >= 3).then_some(())
    });
    assert!(
        done.is_some(),
        "the worker finished both steps while the controller was down"
    );
    let still = show(dir, &run);
    assert_eq!(
        still["run"]["status"], "running",
        "nothing applied them yet"
    );

    let server = Server::start(dir);
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    assert_ran_once_each(dir, &shown);
}

#[test]
fn an_attempt_no_worker_had_claimed_is_still_run_once_and_a_local_step_cut_off_is_retried() {
    let nats = Nats::start();
    let outside = tempfile::tempdir().unwrap();
    let release = outside.path().join("release");
    let workflow = format!(
        r#"id: wf_unclaimed
name: unclaimed
max_parallel: 4
steps:
  - name: remote
    runs_on: {{pool: linux}}
    command: ["sh", "-c", "echo remote ran"]
  - name: local
    depends_on: []
    retries: 1
    retry_delay: 0s
    command: ["sh", "-c", "echo local attempt; while [ ! -f {} ]; do sleep 0.05; done; echo local done"]
"#,
        release.display()
    );
    let project = distributed_project(&nats, &[("workflows/unclaimed.yaml", &workflow)]);
    let dir = project.path();
    let mut server = Server::start(dir);
    let run = execute_detached(dir, "unclaimed");
    // No worker yet: the remote attempt waits in the work stream, the local step runs.
    server.eventually("both steps to be running", Duration::from_secs(60), || {
        let shown = show(dir, &run);
        (step(&shown, "remote")["status"] == "running"
            && log_of(dir, &shown, "local").contains("local attempt"))
        .then_some(())
    });

    server.kill9();
    fs::write(&release, "go").unwrap();
    let server = Server::start(dir);
    let _worker = WorkerProcess::start(dir, "r1", "pool=linux", 1);
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    let remote = step(&shown, "remote");
    assert_eq!(remote["attempts"].as_array().unwrap().len(), 1, "{shown:#}");
    assert_eq!(remote["attempts"][0]["worker"], "r1");
    assert_eq!(
        log_of(dir, &shown, "remote")
            .matches("remote ran\n")
            .count(),
        1
    );
    // The local step's first attempt died with the controller; the retry finished it.
    let local = step(&shown, "local");
    let attempts = local["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{shown:#}");
    assert!(
        attempts[0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the controller restarted"),
        "{shown:#}"
    );
    assert_eq!(local["status"], "succeeded");
    assert!(log_of(dir, &shown, "local").contains("local done"));
}

#[test]
fn a_controller_stopped_with_sigterm_leaves_remote_steps_to_their_workers_and_resumes_them() {
    let nats = Nats::start();
    let outside = tempfile::tempdir().unwrap();
    let release = outside.path().join("release");
    let project = distributed_project(
        &nats,
        &[("workflows/restart.yaml", &waiting_workflow(&release))],
    );
    let dir = project.path();
    let mut server = Server::start_args(dir, &["--port", "0", "--grace", "1"], &[]);
    let _worker = WorkerProcess::start(dir, "r1", "pool=linux", 4);
    let run = start_and_wait_for_both(dir, &server);

    let (status, _) = server.stop();
    assert!(status.success(), "{}", server.stderr());
    let left = show(dir, &run);
    assert_eq!(
        left["run"]["status"], "running",
        "left to the workers: {left:#}"
    );
    assert_eq!(step(&left, "wait_a")["status"], "running");

    let server = Server::start(dir);
    fs::write(&release, "go").unwrap();
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    assert_ran_once_each(dir, &shown);
}
