//! Workers over a real nats-server: steps with `runs_on` run on `orchestrator worker`
//! processes whose labels match, in a snapshot of the project; their logs, outputs, test
//! cases and artifacts come back as if they had run on the controller.

use std::collections::BTreeSet;
use std::fs;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// Six remote steps; each waits until three of them have started (`MARKS` holds a file per
/// started step), so three one-slot workers all take one however the machine is loaded.
const FAN_OUT: &str = r#"id: wf_fan
name: fan
max_parallel: 8
steps:
  - name: seed
    command: ["sh", "-c", "echo seed=s42 >> $ORCHESTRATOR_OUTPUT"]
  - name: big
    depends_on: [seed]
    runs_on: {pool: linux}
    command: ["sh", "-c", "touch MARKS/$ORCHESTRATOR_STEP; while [ $(ls MARKS | wc -l) -lt 3 ]; do sleep 0.05; done; i=0; while [ $i -lt 3000 ]; do echo \"line $i of a log that crosses many chunks {{ steps.seed.outputs.seed }}\"; i=$((i+1)); done; echo total=3000 >> $ORCHESTRATOR_OUTPUT"]
  - name: s1
    depends_on: [seed]
    runs_on: {pool: linux}
    command: ["sh", "-c", "touch MARKS/$ORCHESTRATOR_STEP; while [ $(ls MARKS | wc -l) -lt 3 ]; do sleep 0.05; done; test -f suites/api.sh && echo part=one >> $ORCHESTRATOR_OUTPUT"]
  - name: s2
    depends_on: [seed]
    runs_on: {pool: linux}
    command: ["sh", "-c", "touch MARKS/$ORCHESTRATOR_STEP; while [ $(ls MARKS | wc -l) -lt 3 ]; do sleep 0.05; done; echo part=two >> $ORCHESTRATOR_OUTPUT"]
  - name: s3
    depends_on: [seed]
    runs_on: {pool: linux}
    command: ["sh", "-c", "touch MARKS/$ORCHESTRATOR_STEP; while [ $(ls MARKS | wc -l) -lt 3 ]; do sleep 0.05; done; echo part=three >> $ORCHESTRATOR_OUTPUT"]
  - name: s4
    depends_on: [seed]
    runs_on: {pool: linux}
    command: ["sh", "-c", "touch MARKS/$ORCHESTRATOR_STEP; while [ $(ls MARKS | wc -l) -lt 3 ]; do sleep 0.05; done; echo part=four >> $ORCHESTRATOR_OUTPUT"]
  - name: s5
    depends_on: [seed]
    runs_on: {pool: linux}
    command: ["sh", "-c", "touch MARKS/$ORCHESTRATOR_STEP; while [ $(ls MARKS | wc -l) -lt 3 ]; do sleep 0.05; done; echo part=five >> $ORCHESTRATOR_OUTPUT"]
  - name: join
    depends_on: [big, s1, s2, s3, s4, s5]
    command: ["sh", "-c", "echo joined {{ steps.big.outputs.total }} {{ steps.s1.outputs.part }} {{ steps.s5.outputs.part }}"]
"#;

#[test]
fn a_dag_fans_out_over_three_workers_and_outputs_pass_between_remote_and_local_steps() {
    let nats = Nats::start();
    let marks = tempfile::tempdir().expect("temp dir");
    let fan_out = FAN_OUT.replace("MARKS", &marks.path().display().to_string());
    let project = distributed_project(&nats, &[("workflows/fan.yaml", &fan_out)]);
    let dir = project.path();
    let server = Server::start(dir);
    let _workers: Vec<WorkerProcess> = (1..=3)
        .map(|i| WorkerProcess::start(dir, &format!("w{i}"), "pool=linux,os=linux", 1))
        .collect();
    let run = execute_detached(dir, "fan");
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");

    let used: BTreeSet<String> = ["big", "s1", "s2", "s3", "s4", "s5"]
        .iter()
        .flat_map(|s| workers_of(&shown, s))
        .collect();
    assert_eq!(
        used,
        BTreeSet::from(["w1".to_owned(), "w2".to_owned(), "w3".to_owned()]),
        "six remote steps over three one-slot workers use all three"
    );
    assert!(
        workers_of(&shown, "seed").is_empty(),
        "local steps name no worker"
    );
    let joined = cli(dir, &["run", "logs", &run, "join"]).expect_code(0);
    assert!(
        joined.stdout.contains("joined 3000 one five"),
        "{}",
        joined.stdout
    );

    // The remote step's log arrived byte for byte (across many 32 KiB chunks).
    let log = step(&shown, "big")["log"].as_str().unwrap().to_owned();
    let text = fs::read_to_string(dir.join("logs").join(&log)).unwrap();
    let expected: String = (0..3000)
        .map(|i| format!("line {i} of a log that crosses many chunks s42\n"))
        .collect();
    assert!(
        text.contains(&expected),
        "the remote log is whole and in order ({} bytes, expected {} of output)",
        text.len(),
        expected.len()
    );
}

const LABELLED: &str = r#"id: wf_labels
name: labels
max_parallel: 4
steps:
  - name: browser
    runs_on: {os: linux, browser: chromium}
    command: ["true"]
  - name: anywhere
    depends_on: []
    runs_on: {os: linux}
    command: ["true"]
  - name: windows
    depends_on: []
    runs_on: {os: windows}
    queue_timeout: 2s
    command: ["true"]
"#;

#[test]
fn steps_go_only_to_workers_with_every_label_and_an_unmatched_step_fails_at_its_queue_timeout() {
    let nats = Nats::start();
    let project = distributed_project(&nats, &[("workflows/labels.yaml", LABELLED)]);
    let dir = project.path();
    let server = Server::start(dir);
    let _plain = WorkerProcess::start(dir, "plain", "os=linux", 2);
    let _chrome = WorkerProcess::start(dir, "chrome", "os=linux,browser=chromium", 2);
    let run = execute_detached(dir, "labels");
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    assert_eq!(shown["run"]["status"], "failed", "{shown:#}");
    assert_eq!(workers_of(&shown, "browser"), ["chrome"]);
    assert_eq!(step(&shown, "anywhere")["status"], "succeeded");
    let windows = step(&shown, "windows");
    assert_eq!(windows["status"], "failed");
    let message = windows["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("queue_timeout") && message.contains("os=windows"),
        "the failure says no worker took it and what it needs: {message}"
    );
}

#[test]
fn a_remote_test_runner_step_brings_back_its_junit_cases_and_artifact() {
    let nats = Nats::start();
    let project = distributed_project(
        &nats,
        &[(
            "workflows/remote_api.yaml",
            "id: wf_remote_api\nname: remote_api\nsteps:\n  - name: api\n    runs_on: {os: linux}\n    agent: test_runner\n    action: run_tests\n    parameters: {test_suite: api}\n",
        )],
    );
    let dir = project.path();
    let server = Server::start(dir);
    let _worker = WorkerProcess::start(dir, "tester", "os=linux", 1);
    let run = execute_detached(dir, "remote_api");
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    // The scaffold's suite fails its `environment_ready` case without the setup step: the
    // failure travels back like the passes.
    let api = step(&shown, "api");
    assert_eq!(api["status"], "failed", "{shown:#}");
    assert!(
        api["tests"].as_array().is_some_and(|t| t
            .iter()
            .any(|c| c["name"] == "environment_ready" && c["status"] == "failed")),
        "{api:#}"
    );
    assert_eq!(workers_of(&shown, "api"), ["tester"]);
    let tests = api["tests"].as_array().expect("test cases");
    assert!(
        tests.iter().any(|t| t["name"] == "shell_available"),
        "{api:#}"
    );
    let artifacts = api["artifacts"].as_array().expect("artifacts");
    let kept = artifacts
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.ends_with("junit-api.xml"))
        .unwrap_or_else(|| panic!("the JUnit file is kept: {artifacts:?}"));
    let xml = fs::read_to_string(dir.join(kept)).unwrap();
    assert!(xml.contains("shell_available"), "{xml}");
    // The worker ran it in its own workspace, not in the controller's project.
    assert!(!dir.join("reports/junit-api.xml").exists());
}

#[test]
fn a_token_protected_nats_is_used_with_the_configured_token_reference() {
    let nats = Nats::start_with_token(Some("s3cret-nats-token"));
    let project = project(&[(
        "workflows/one.yaml",
        "id: wf_one\nname: one\nsteps:\n  - name: hi\n    runs_on: {}\n    command: [\"echo\", \"hi from a worker\"]\n",
    )]);
    let dir = project.path();
    write_files(dir, &[("secrets/nats-token", "s3cret-nats-token\n")]);
    append_config(
        dir,
        &format!(
            "distributed:\n  nats:\n    url: {}\n    token: file:secrets/nats-token\n  lease: {TEST_LEASE}\n",
            nats.url()
        ),
    );
    let server = Server::start(dir);
    let _worker = WorkerProcess::start(dir, "authed", "os=linux", 1);
    let run = execute_detached(dir, "one");
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    assert_eq!(workers_of(&shown, "hi"), ["authed"]);

    // Without the token the worker is refused, and says so.
    let other = project_without_token(&nats);
    let refused = cli(
        other.path(),
        &[
            "worker",
            "--name",
            "anon",
            "--work-dir",
            "w",
            "--lease",
            TEST_LEASE,
        ],
    );
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.to_lowercase().contains("authorization")
            || refused.stderr.contains("cannot connect"),
        "{}",
        refused.stderr
    );
}

fn project_without_token(nats: &Nats) -> tempfile::TempDir {
    let project = project(&[]);
    append_config(
        project.path(),
        &format!("distributed:\n  nats:\n    url: {}\n", nats.url()),
    );
    project
}

#[test]
fn bad_worker_flags_and_manifests_get_clear_errors_that_say_where() {
    let nats = Nats::start();
    let bad = distributed_project(
        &nats,
        &[(
            "workflows/bad.yaml",
            "id: wf_bad\nname: bad\nsteps:\n  - name: a\n    runs_on: [linux]\n    on_worker_lost: sometimes\n    command: [\"true\"]\n",
        )],
    );
    let dir = bad.path();
    let bad_label = cli(dir, &["worker", "--name", "w", "--labels", "os"]);
    assert_ne!(bad_label.code, 0);
    assert!(bad_label.stderr.contains("`os`"), "{}", bad_label.stderr);
    let bad_name = cli(dir, &["worker", "--name", "rig.07", "--labels", "os=linux"]);
    assert_ne!(bad_name.code, 0);
    assert!(bad_name.stderr.contains("rig.07"), "{}", bad_name.stderr);
    let no_slots = cli(dir, &["worker", "--name", "w", "--slots", "0"]);
    assert_ne!(no_slots.code, 0);
    assert!(no_slots.stderr.contains("--slots"), "{}", no_slots.stderr);

    let validated = cli(dir, &["validate"]);
    assert_ne!(validated.code, 0);
    let all = format!("{}{}", validated.stdout, validated.stderr);
    assert!(
        all.contains("workflows/bad.yaml:5") && all.contains("runs_on"),
        "the error points at runs_on's line: {all}"
    );
    assert!(all.contains("on_worker_lost"), "{all}");

    let config = project(&[]);
    append_config(
        config.path(),
        "distributed:\n  nats:\n    url: http://nats:4222\n",
    );
    let refused = cli(config.path(), &["config", "validate"]);
    assert_ne!(refused.code, 0);
    let all = format!("{}{}", refused.stdout, refused.stderr);
    assert!(
        all.contains("config/development.yaml") && all.contains("url"),
        "{all}"
    );
}

#[test]
fn a_worker_without_a_reachable_nats_says_so_and_exits_non_zero() {
    let project = project(&[]);
    let dir = project.path();
    let none = cli(dir, &["worker", "--name", "w"]);
    assert_ne!(none.code, 0);
    assert!(none.stderr.contains("--nats"), "{}", none.stderr);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let unreachable = cli(
        dir,
        &[
            "worker",
            "--name",
            "w",
            "--nats",
            &format!("nats://127.0.0.1:{closed}"),
        ],
    );
    assert_ne!(unreachable.code, 0);
    assert!(
        unreachable.stderr.contains("cannot connect to NATS"),
        "{}",
        unreachable.stderr
    );
}

#[test]
fn a_tls_only_nats_is_reached_through_the_configured_ca_and_refused_without_it() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = tls_files(certs.path());
    let nats = Nats::start_tls(&cert, &key);
    let secured = project(&[(
        "workflows/tls.yaml",
        "id: wf_tls\nname: tls\nsteps:\n  - name: hi\n    runs_on: {}\n    env: {TOKEN: {secret: \"env:STEP_TOKEN\"}}\n    command: [\"sh\", \"-c\", \"echo token is $TOKEN\"]\n",
    )]);
    let dir = secured.path();
    std::fs::copy(&ca, dir.join("nats-ca.pem")).unwrap();
    append_config(
        dir,
        &format!(
            "distributed:\n  nats:\n    url: tls://127.0.0.1:{}\n    tls_ca: nats-ca.pem\n  lease: {TEST_LEASE}\n",
            nats.port
        ),
    );
    let server = Server::start_with(dir, &[("STEP_TOKEN", "tls-secret-value")]);
    let _worker = WorkerProcess::start(dir, "secure", "os=linux", 1);
    let run = execute_detached(dir, "tls");
    let shown = finished_run(dir, &server, &run, Duration::from_secs(60));
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    assert_eq!(workers_of(&shown, "hi"), ["secure"]);
    // The declared secret reached the worker over TLS and came back masked.
    let logs = cli(dir, &["run", "logs", &run, "hi"]).expect_code(0);
    assert!(logs.stdout.contains("token is ***"), "{}", logs.stdout);
    assert!(!logs.stdout.contains("tls-secret-value"));

    // Without the CA the server's certificate is not trusted: the worker says so.
    let untrusting = project(&[]);
    append_config(
        untrusting.path(),
        &format!(
            "distributed:\n  nats:\n    url: tls://127.0.0.1:{}\n",
            nats.port
        ),
    );
    let refused = cli(untrusting.path(), &["worker", "--name", "doubter"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("cannot connect to NATS"),
        "{}",
        refused.stderr
    );
}
