//! The long-running server end to end: `orchestrator start` as a child process on a free
//! port in a temp project, driven over REST (ureq) and WebSocket (tokio-tungstenite): runs,
//! agents, metrics and the access log; JSON errors for bad input; the event stream; the
//! directory watcher; `start --background`, `status`, `stop`; the API token.
//!
//! Nothing waits a fixed time: every wait polls with a deadline or waits for an event. The
//! harness, the client and the `/ws` helpers are in [`crate::support`].

use std::fs;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    alive, cli, edit_config, eventually, poll_for, project, signal, ws_connect, ws_next, ws_send,
    ws_subscribe, ws_until, Api, Server, DEADLINE,
};

/// `GET /api/openapi.json` against what the server answers (a child module, so it can use
/// the workflows here).
#[path = "openapi.rs"]
mod openapi;

/// A workflow of one shell step.
const HELLO: &str = r#"name: Hello
steps:
  - name: greet
    command: ["sh", "-c", "echo hello from the server"]
"#;

#[test]
fn rest_api_runs_workflows_and_reports_them() {
    let project = project(&[("workflows/hello.yaml", HELLO), ("workflows/nap.yaml", NAP)]);
    let dir = project.path();
    let mut server = Server::start(dir);
    let api = server.api();

    // server.json names this process and address while it runs.
    let info: Value =
        serde_json::from_slice(&fs::read(dir.join("data/server.json")).unwrap()).unwrap();
    assert_eq!(info["pid"], server.pid());
    assert_eq!(info["address"], server.address.as_str());

    let listed = api.get("/api/workflows").expect(200);
    assert_eq!(listed["total"], 5, "{listed}");
    let mut ids = api.workflow_ids();
    ids.sort();
    assert_eq!(
        ids,
        [
            "wf_api-test-suite",
            "wf_api-tests-production",
            "wf_hello",
            "wf_nap",
            "wf_smoke"
        ]
    );
    let smoke = api.get("/api/workflows/wf_smoke").expect(200);
    assert_eq!(smoke["name"], "Smoke", "{smoke}");
    assert_eq!(smoke["status"], "applied", "{smoke}");
    assert_eq!(smoke["steps"], 4, "{smoke}");
    assert_eq!(smoke["spec"]["steps"][0]["name"], "checkout", "{smoke}");

    // A run through the API, followed to its end.
    let run = api.execute(
        "wf_api-test-suite",
        r#"{"parameters": {"environment": "staging"}}"#,
    );
    let shown = api.wait_finished(&run);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
    assert_eq!(shown["run"]["trigger"]["kind"], "api", "{shown}");
    assert_eq!(shown["run"]["parameters"]["environment"], "staging");
    assert_eq!(shown["run"]["tests"]["total"], 3, "{shown}");
    assert_eq!(shown["run"]["tests"]["passed"], 3, "{shown}");
    let steps = shown["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{shown}");
    assert_eq!(steps[1]["name"], "run_tests");
    assert_eq!(steps[1]["tests"].as_array().unwrap().len(), 3, "{shown}");
    assert!(steps.iter().all(|s| s["status"] == "succeeded"), "{shown}");

    let log = api.get(&format!("/api/runs/{run}/logs/run_tests"));
    assert_eq!(log.status, 200, "{log:?}");
    assert!(log.content_type.starts_with("text/plain"), "{log:?}");
    assert!(log.text.contains("3 passed"), "{log:?}");
    let message = api
        .get(&format!("/api/runs/{run}/logs/nope"))
        .expect_error(404, "not_found");
    assert!(
        message.contains("setup, run_tests, generate_report"),
        "{message}"
    );

    // Nothing to cancel in a finished run; a re-run starts a new one.
    let message = api
        .post(&format!("/api/runs/{run}/cancel"), "")
        .expect_error(409, "conflict");
    assert!(message.contains("succeeded"), "{message}");
    // A running run is cancelled: its step's process is stopped, the run ends cancelled.
    let napping = api.execute("wf_nap", "");
    eventually("the nap step to start", || {
        let shown = api.get(&format!("/api/runs/{napping}")).expect(200);
        (shown["steps"][0]["status"] == "running").then_some(())
    });
    let cancelling = api
        .post(&format!("/api/runs/{napping}/cancel"), "")
        .expect(202);
    assert_eq!(cancelling["status"], "cancelling", "{cancelling}");
    let shown = api.wait_finished(&napping);
    assert_eq!(shown["run"]["status"], "cancelled", "{shown}");
    assert_eq!(shown["steps"][0]["status"], "cancelled", "{shown}");

    let rerun = api.post(&format!("/api/runs/{run}/rerun"), "");
    let location = rerun.location.clone();
    let rerun = rerun.expect(202);
    let rerun_id = rerun["run_id"].as_str().unwrap().to_owned();
    assert_ne!(rerun_id, run);
    assert_eq!(location, Some(format!("/api/runs/{rerun_id}")));
    let shown = api.wait_finished(&rerun_id);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
    assert_eq!(shown["run"]["rerun_of"], run.as_str(), "{shown}");
    let listed = api.get("/api/workflows").expect(200);
    let suite = listed["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "wf_api-test-suite")
        .unwrap();
    assert_eq!(suite["last_run"]["id"], rerun_id.as_str(), "{suite}");

    // Agents: a stopped agent fails its steps, saying so, until it is started again.
    let agents = api.get("/api/agents").expect(200);
    let agent = |name: &str| {
        agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap_or_else(|| panic!("no agent {name}: {agents}"))
            .clone()
    };
    assert_eq!(agent("test_runner")["builtin"], false);
    assert_eq!(agent("test_runner")["enabled"], true);
    assert_eq!(agent("shell")["enabled"], true);
    let stopped = api.post("/api/agents/shell/stop", "").expect(200);
    assert_eq!(stopped["enabled"], false, "{stopped}");
    assert_eq!(api.get("/api/agents/shell").expect(200)["enabled"], false);
    let failed = api.execute("wf_hello", "");
    let shown = api.wait_finished(&failed);
    assert_eq!(shown["run"]["status"], "failed", "{shown}");
    assert_eq!(shown["steps"][0]["agent"], "shell", "{shown}");
    let message = shown["steps"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("agent `shell` is stopped"), "{shown}");
    let started = api.post("/api/agents/shell/start", "").expect(200);
    assert_eq!(started["enabled"], true, "{started}");
    let ok = api.execute("wf_hello", "{}");
    assert_eq!(api.wait_finished(&ok)["run"]["status"], "succeeded");
    api.post("/api/agents/nope/stop", "")
        .expect_error(404, "not_found");

    let status = api.get("/api/status").expect(200);
    assert_eq!(status["pid"], server.pid(), "{status}");
    assert_eq!(status["environment"], "development", "{status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["objects"]["Workflow"], 5, "{status}");
    assert_eq!(status["objects"]["Schedule"], 1, "{status}");
    assert_eq!(status["active_runs"], json!([]), "{status}");
    assert_eq!(status["source"]["status"]["errors"], 0, "{status}");

    let health = api.get("/healthz");
    assert_eq!((health.status, health.text.trim()), (200, "ok"));
    assert_eq!(api.get("/readyz").expect(200), json!({"ready": true}));

    let jobs = api.get("/api/scheduler/jobs").expect(200);
    let jobs = jobs["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["id"], "sch_nightly-api-tests");
    assert_eq!(jobs[0]["schedule"], "0 2 * * *");
    assert_eq!(jobs[0]["workflow_id"], "wf_api-test-suite");

    let page = api.get("/api/runs?limit=2").expect(200);
    assert_eq!(page["total"], 5, "{page}");
    assert_eq!(page["runs"].as_array().unwrap().len(), 2, "{page}");
    assert_eq!(page["runs"][0]["id"], ok.as_str(), "newest first: {page}");

    // Five runs started; the finished ones are counted once each has ended.
    let metrics = eventually("the finished runs to be counted", || {
        let reply = api.get("/metrics");
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(reply.content_type.starts_with("text/plain"), "{reply:?}");
        reply
            .text
            .contains("orchestrator_runs_finished_total{status=\"succeeded\"} 3\n")
            .then_some(reply.text)
    });
    assert!(
        metrics.contains("\norchestrator_runs_started_total 5\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("orchestrator_runs_finished_total{status=\"failed\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("orchestrator_runs_finished_total{status=\"cancelled\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("orchestrator_objects{kind=\"Workflow\"} 5\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\norchestrator_active_runs 0\n"),
        "{metrics}"
    );

    // SIGTERM: a clean exit, and server.json is gone.
    let (exit, stdout) = server.stop();
    assert!(exit.success(), "{exit:?}\n--- stderr\n{}", server.stderr());
    assert!(stdout.contains("stopped"), "{stdout}");
    assert!(!dir.join("data/server.json").exists());

    // The access log: one line per request, method, path (no query string) and status.
    let log = fs::read_to_string(dir.join("logs/api.log")).unwrap();
    for line in [
        "GET /api/workflows 200 ".to_owned(),
        "POST /api/workflows/wf_api-test-suite/execute 202 ".to_owned(),
        format!("GET /api/runs/{run}/logs/run_tests 200 "),
        format!("GET /api/runs/{run}/logs/nope 404 "),
        format!("POST /api/runs/{run}/cancel 409 "),
        format!("POST /api/runs/{napping}/cancel 202 "),
        "POST /api/agents/shell/stop 200 ".to_owned(),
        "GET /api/runs 200 ".to_owned(),
        "GET /metrics 200 ".to_owned(),
    ] {
        assert!(log.contains(&line), "no `{line}` in logs/api.log:\n{log}");
    }
    assert!(
        !log.contains("limit=2"),
        "the query string was logged:\n{log}"
    );
    let executes = log
        .lines()
        .filter(|l| l.contains("POST /api/workflows/") && l.contains("/execute 202 "))
        .count();
    assert_eq!(executes, 4, "{log}");
}

/// A workflow whose one step runs until it is stopped.
const NAP: &str = r#"name: Nap
steps:
  - name: nap
    command: ["sleep", "60"]
"#;

pub(crate) const ECHO: &str = r#"name: Echo
parameters:
  target: {type: string, required: true}
steps:
  - name: echo
    command: ["echo", "{{ params.target }}"]
"#;

/// The run an event is about.
fn event_run(event: &Value) -> Option<&str> {
    let payload = &event["payload"];
    match event["type"].as_str()? {
        "workflow_started" | "workflow_completed" => payload["id"].as_str(),
        "step_started" | "step_completed" | "step_retrying" => payload["run_id"].as_str(),
        _ => None,
    }
}

#[test]
fn the_websocket_streams_run_events_in_order() {
    let project = project(&[]);
    let server = Server::start(project.path());
    let api = server.api();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut ws = ws_connect(&server.address, None).await;

        let run = api.execute(
            "wf_api-test-suite",
            r#"{"parameters": {"environment": "staging"}}"#,
        );
        let mut seen = Vec::new();
        let mut last_sequence = 0;
        let completed = loop {
            let event = ws_next(&mut ws).await;
            let sequence = event["sequence"].as_u64().expect("a sequence number");
            assert!(sequence > last_sequence, "sequence went back: {event}");
            last_sequence = sequence;
            if event_run(&event) != Some(run.as_str()) {
                continue;
            }
            let kind = event["type"].as_str().unwrap().to_owned();
            let step = event["payload"]["name"].as_str().unwrap_or("").to_owned();
            seen.push(format!("{kind} {step}").trim().to_owned());
            if kind == "workflow_completed" {
                break event;
            }
        };
        assert_eq!(
            seen,
            [
                "workflow_started",
                "step_started setup",
                "step_completed setup",
                "step_started run_tests",
                "step_completed run_tests",
                "step_started generate_report",
                "step_completed generate_report",
                "workflow_completed",
            ]
        );
        assert_eq!(completed["payload"]["status"], "succeeded", "{completed}");
        assert_eq!(completed["payload"]["tests"]["passed"], 3, "{completed}");
        // What the event said is what the store says.
        let shown = api.get(&format!("/api/runs/{run}")).expect(200);
        assert_eq!(shown["run"]["status"], "succeeded", "{shown}");

        // Narrowed to one kind; with no run going on, nothing else comes now.
        ws_subscribe(&mut ws, &["workflow_completed"]).await;
        ws_send(&mut ws, json!({"type": "ping"})).await;
        let pong = ws_next(&mut ws).await;
        assert_eq!(pong["type"], "pong", "{pong}");

        // Unknown names and messages are answered with an error.
        ws_send(
            &mut ws,
            json!({"type": "subscribe", "events": ["workflow_finished"]}),
        )
        .await;
        let refused = ws_next(&mut ws).await;
        assert_eq!(refused["type"], "error", "{refused}");
        let message = refused["payload"]["message"].as_str().unwrap();
        assert!(message.contains("workflow_finished"), "{refused}");
        ws_send(&mut ws, json!({"type": "dance"})).await;
        let refused = ws_next(&mut ws).await;
        assert_eq!(refused["type"], "error", "{refused}");
        ws.send(Message::text("not json")).await.unwrap();
        let refused = ws_next(&mut ws).await;
        assert_eq!(refused["type"], "error", "{refused}");

        // The next run shows up only as its completion.
        let second = api.execute("wf_api-test-suite", "");
        let event = ws_next(&mut ws).await;
        assert_eq!(event["type"], "workflow_completed", "{event}");
        assert_eq!(event_run(&event), Some(second.as_str()), "{event}");
        assert_eq!(event["payload"]["status"], "succeeded", "{event}");
        // Nothing else was queued behind it: a ping is answered next.
        ws_send(&mut ws, json!({"type": "ping"})).await;
        let pong = ws_next(&mut ws).await;
        assert_eq!(pong["type"], "pong", "{pong}");
    });
}

#[test]
fn the_watcher_applies_changes_keeps_the_last_good_version_and_prunes() {
    let project = project(&[]);
    let dir = project.path();
    // `extra` does not exist when the server starts.
    edit_config(
        dir,
        "paths: [workflows, templates, agents, schedules, alerts, triggers, dashboards, quarantine]",
        "paths: [workflows, templates, agents, schedules, alerts, triggers, dashboards, quarantine, extra]",
    );
    let server = Server::start(dir);
    let api = server.api();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut ws = ws_connect(&server.address, None).await;
        ws_subscribe(&mut ws, &["manifest_applied", "manifest_invalid"]).await;
        let change = |id: &'static str, change: &'static str| {
            move |event: &Value| {
                event["type"] == "manifest_applied"
                    && event["payload"]["id"] == id
                    && event["payload"]["change"] == change
            }
        };
        let workflows = dir.join("workflows");

        // (a) A new file: applied, and in the list once the event has arrived.
        fs::write(
            workflows.join("fresh.yaml"),
            "name: Fresh\ndescription: first\nsteps:\n  - name: one\n    command: [\"true\"]\n",
        )
        .unwrap();
        let event = ws_until(&mut ws, "wf_fresh created", change("wf_fresh", "created")).await;
        assert_eq!(event["payload"]["kind"], "Workflow", "{event}");
        assert!(api.workflow_ids().contains(&"wf_fresh".to_owned()));

        // (b) Saved the way editors do: a temporary file renamed over the original.
        let temporary = workflows.join(".fresh.yaml.swp");
        fs::write(
            &temporary,
            "name: Fresh\ndescription: second\nsteps:\n  - name: one\n    command: [\"true\"]\n  - name: two\n    command: [\"true\"]\n",
        )
        .unwrap();
        fs::rename(&temporary, workflows.join("fresh.yaml")).unwrap();
        ws_until(&mut ws, "wf_fresh updated", change("wf_fresh", "updated")).await;
        let shown = api.get("/api/workflows/wf_fresh").expect(200);
        assert_eq!(shown["spec"]["description"], "second", "{shown}");
        assert_eq!(shown["steps"], 2, "{shown}");
        assert_eq!(shown["status"], "applied", "{shown}");

        // (c) Broken: reported, and the last good version stays in force.
        fs::write(
            workflows.join("fresh.yaml"),
            "name: Fresh\ndescription: third\nsteps: 5\n",
        )
        .unwrap();
        let event = ws_until(&mut ws, "wf_fresh invalid", |event| {
            event["type"] == "manifest_invalid" && event["payload"]["id"] == "wf_fresh"
        })
        .await;
        let diagnostics = event["payload"]["diagnostics"].as_array().unwrap();
        assert!(!diagnostics.is_empty(), "{event}");
        assert_eq!(diagnostics[0]["file"], "workflows/fresh.yaml", "{event}");
        assert!(
            diagnostics[0]["pointer"].as_str().unwrap().starts_with("/steps"),
            "{event}"
        );
        let shown = api.get("/api/workflows/wf_fresh").expect(200);
        assert_eq!(shown["status"], "invalid", "{shown}");
        assert_eq!(shown["spec"]["description"], "second", "{shown}");
        assert_eq!(shown["spec"]["steps"].as_array().unwrap().len(), 2);
        assert!(
            !shown["diagnostics"].as_array().unwrap().is_empty(),
            "{shown}"
        );

        // (d) Deleted: pruned.
        fs::remove_file(workflows.join("fresh.yaml")).unwrap();
        ws_until(&mut ws, "wf_fresh pruned", change("wf_fresh", "pruned")).await;
        assert!(!api.workflow_ids().contains(&"wf_fresh".to_owned()));
        api.get("/api/workflows/wf_fresh")
            .expect_error(404, "not_found");

        // (e) A manifest directory created after the start is watched too.
        fs::create_dir(dir.join("extra")).unwrap();
        fs::write(
            dir.join("extra/more.yaml"),
            "kind: Workflow\nname: More\nsteps:\n  - name: one\n    command: [\"true\"]\n",
        )
        .unwrap();
        ws_until(&mut ws, "wf_more created", change("wf_more", "created")).await;
        assert!(api.workflow_ids().contains(&"wf_more".to_owned()));
    });
}

#[test]
fn a_file_that_no_longer_parses_is_reported_and_its_objects_stay() {
    let project = project(&[]);
    let dir = project.path();
    let server = Server::start(dir);
    let api = server.api();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut ws = ws_connect(&server.address, None).await;
        ws_subscribe(&mut ws, &["manifest_invalid", "sync_completed"]).await;
        fs::write(dir.join("workflows/smoke.yaml"), "name: Smoke\nsteps: [\n").unwrap();
        // Everything up to the end of the reconcile that found the error.
        let mut invalid = None;
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the reconcile"
            );
            let message = ws_next(&mut ws).await;
            if message["type"] == "manifest_invalid" && message["payload"]["id"] == "wf_smoke" {
                invalid = Some(message);
            } else if message["type"] == "sync_completed" && message["payload"]["errors"] != 0 {
                break;
            }
        }
        // The objects of the file stay in force as they were.
        let shown = api.get("/api/workflows/wf_smoke").expect(200);
        assert_eq!(
            shown["spec"]["steps"].as_array().unwrap().len(),
            4,
            "{shown}"
        );
        let listed = api.get("/api/manifests").expect(200);
        assert_eq!(listed["source"]["errors"], 1, "{listed}");
        // And listeners were told the manifest is broken, with the parse error.
        let invalid = invalid.unwrap_or_else(|| {
            panic!("no manifest_invalid event for wf_smoke, whose file no longer parses")
        });
        let diagnostics = invalid["payload"]["diagnostics"].as_array().unwrap();
        assert!(!diagnostics.is_empty(), "{invalid}");
        assert_eq!(diagnostics[0]["file"], "workflows/smoke.yaml", "{invalid}");
    });
}

#[test]
fn a_change_right_after_the_start_is_not_missed() {
    let project = project(&[]);
    let dir = project.path();
    let server = Server::start(dir);
    // At once, before anything else talks to the server: "listening" means the manifest
    // directories are watched.
    fs::write(
        dir.join("workflows/quick.yaml"),
        "name: Quick\nsteps:\n  - name: one\n    command: [\"true\"]\n",
    )
    .unwrap();
    let api = server.api();
    eventually("wf_quick to be applied", || {
        api.workflow_ids()
            .contains(&"wf_quick".to_owned())
            .then_some(())
    });
}

/// `PID N` in a line of output.
fn pid_in(text: &str) -> u32 {
    let rest = &text[text
        .find("PID ")
        .unwrap_or_else(|| panic!("no PID in {text}"))
        + 4..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// A background server started by a test: stopped (SIGTERM, then SIGKILL) if the test
/// fails before it stops it.
struct Background(Option<u32>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take() {
            signal(pid, nix::sys::signal::Signal::SIGTERM);
            // Best effort: killed anyway once it is gone or the wait is over.
            let _ = poll_for(Duration::from_secs(10), || (!alive(pid)).then_some(()));
            signal(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

#[test]
fn background_start_status_stop_and_refusals() {
    let project = project(&[]);
    let dir = project.path();

    let started = cli(dir, &["start", "--background", "--port", "0"]).expect_code(0);
    let pid = pid_in(&started.stdout);
    let mut guard = Background(Some(pid));
    let url = started
        .stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http://"))
        .map(|a| a.trim_end_matches([',', ';']).to_owned())
        .unwrap_or_else(|| panic!("no URL in {}", started.stdout));
    // It returned once ready: answering at once, no retry.
    let api = Api::new(&url, None);
    assert_eq!(api.get("/readyz").expect(200), json!({"ready": true}));
    assert_eq!(api.get("/api/status").expect(200)["pid"], pid);

    let status = cli(dir, &["status"]).expect_code(0);
    assert!(
        status
            .stdout
            .contains(&format!("running: PID {pid}, http://{url}")),
        "{}",
        status.stdout
    );
    let status = cli(dir, &["status", "-o", "json"]).expect_code(0);
    let status: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["pid"], pid, "{status}");

    for args in [
        &["start", "--background", "--port", "0"][..],
        &["start", "--port", "0"][..],
    ] {
        let again = cli(dir, args);
        assert_ne!(again.code, 0, "{}", again.stdout);
        assert!(again.stderr.contains("already running"), "{}", again.stderr);
        assert!(
            again.stderr.contains(&format!("PID {pid}")),
            "{}",
            again.stderr
        );
    }
    assert!(
        alive(pid),
        "a refused second start stopped the first server"
    );

    let stopped = cli(dir, &["stop"]).expect_code(0);
    assert!(
        stopped.stdout.contains(&format!("stopped (PID {pid})")),
        "{}",
        stopped.stdout
    );
    assert!(!alive(pid), "stop returned before the server was gone");
    guard.0 = None;
    assert!(!dir.join("data/server.json").exists());
    let status = cli(dir, &["status"]).expect_code(3);
    assert!(status.stdout.contains("not running"), "{}", status.stdout);
    let again = cli(dir, &["stop"]).expect_code(0);
    assert!(
        again.stdout.contains("no server is running"),
        "{}",
        again.stdout
    );

    // A port in use: one line saying so and how to pick another.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let refused = cli(dir, &["start", "--port", &port]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    let stderr = refused.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(&port), "{stderr}");
    assert!(stderr.contains("already in use"), "{stderr}");
    assert!(stderr.contains("--port"), "{stderr}");
    // The same in the background, from the server's log.
    let refused = cli(dir, &["start", "--background", "--port", &port]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("already in use"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("--port"), "{}", refused.stderr);
    drop(taken);
    // (A non-loopback address without a token gets a generated one: `security::http`.)
}

/// How many runs the server at `address` has, asked with `token`.
fn authorized_runs(address: &str, token: &str) -> u64 {
    Api::new(address, Some(token)).get("/api/runs").expect(200)["total"]
        .as_u64()
        .expect("a total")
}

#[test]
fn an_api_token_guards_every_route_of_the_api() {
    let project = project(&[]);
    let dir = project.path();
    edit_config(
        dir,
        "  port: 8080\n",
        "  port: 8080\n  api_token: env:TEST_TOKEN\n",
    );
    let token = "s3cret-token";
    let server = Server::start_with(dir, &[("TEST_TOKEN", token)]);
    let anonymous = server.api();
    let execute = "/api/workflows/wf_api-test-suite/execute";

    let message = anonymous
        .post(execute, "")
        .expect_error(401, "unauthorized");
    assert!(message.contains("Authorization: Bearer"), "{message}");
    let wrong = Api::new(&server.address, Some("guess"));
    let message = wrong.post(execute, "").expect_error(401, "unauthorized");
    assert!(
        message.contains("not the configured API token"),
        "{message}"
    );
    wrong
        .post("/api/agents/shell/stop", "")
        .expect_error(401, "unauthorized");
    // Nothing ran.
    assert_eq!(authorized_runs(&server.address, token), 0);

    let authorized = Api::new(&server.address, Some(token));
    let run = authorized.execute("wf_api-test-suite", "");
    // Reads need the token too; health and readiness stay open.
    anonymous
        .get(&format!("/api/runs/{run}"))
        .expect_error(401, "unauthorized");
    anonymous
        .get("/api/workflows")
        .expect_error(401, "unauthorized");
    assert_eq!(authorized.wait_finished(&run)["run"]["status"], "succeeded");
    assert_eq!(authorized.get("/api/workflows").expect(200)["total"], 3);
    assert_eq!(anonymous.get("/readyz").expect(200)["ready"], true);

    // The event stream needs it too.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let request = format!("ws://{}/ws", server.address);
        match tokio_tungstenite::connect_async(request).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401)
            }
            Err(other) => panic!("expected a 401, got {other}"),
            Ok(_) => panic!("/ws accepted a client without the token"),
        }
        ws_connect(&server.address, Some(token)).await;
    });
}

#[test]
fn step_logs_stream_to_clients_that_subscribe_to_them() {
    let dir = project(&[(
        "workflows/talk.yaml",
        "name: Talk\nsteps:\n  - name: speak\n    command: [\"sh\", \"-c\", \"echo first line; echo second line\"]\n",
    )]);
    let server = Server::start(dir.path());
    let api = server.api();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut ws = ws_connect(&server.address, None).await;
        ws_subscribe(&mut ws, &["run_log", "workflow_completed"]).await;
        let run = api.execute("wf_talk", "{}");
        let mut text = String::new();
        loop {
            let event = ws_next(&mut ws).await;
            match event["type"].as_str() {
                Some("run_log") if event["payload"]["run_id"] == run.as_str() => {
                    assert_eq!(event["payload"]["step"], "speak", "{event}");
                    text.push_str(event["payload"]["text"].as_str().unwrap());
                }
                Some("workflow_completed") if event["payload"]["id"] == run.as_str() => break,
                _ => {}
            }
        }
        // Every line is published before the run is reported complete.
        assert_eq!(text, "first line\nsecond line\n");
    });
}

#[test]
fn a_shutdown_interrupts_runs_still_going_after_the_grace_period() {
    let dir = project(&[(
        "workflows/long.yaml",
        "name: Long\nsteps:\n  - name: nap\n    command: [\"sh\", \"-c\", \"sleep 100 & echo $! > nap.pid; touch started; wait\"]\n",
    )]);
    let mut server = Server::start_with(dir.path(), &[("ORCHESTRATOR_SHUTDOWN_GRACE", "1")]);
    let run = server.api().execute("wf_long", "{}");
    eventually("the step to start", || {
        dir.path().join("started").exists().then_some(())
    });
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    let shown = cli(dir.path(), &["run", "show", &run, "-o", "json"]);
    let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
    assert_eq!(shown["run"]["status"], "interrupted", "{shown}");
    assert!(
        shown["run"]["message"]
            .as_str()
            .unwrap()
            .contains("shut down"),
        "{shown}"
    );
    assert_eq!(shown["steps"][0]["status"], "interrupted", "{shown}");
    let pid: u32 = std::fs::read_to_string(dir.path().join("nap.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("the step's process group to be gone", || {
        (!alive(pid)).then_some(())
    });
}

#[test]
fn the_guides_job_creation_writes_a_schedule_manifest_and_applies_it() {
    let dir = project(&[]);
    let server = Server::start(dir.path());
    let api = server.api();
    // The guide's request, verbatim.
    let created = api
        .post(
            "/api/scheduler/jobs",
            r#"{"name": "API Tests", "schedule": "0 2 * * *", "workflow_id": "wf_api-test-suite"}"#,
        )
        .expect(201);
    assert_eq!(created["id"], "sch_api-tests", "{created}");
    assert_eq!(created["schedule"], "0 2 * * *");
    let file = std::fs::read_to_string(dir.path().join("schedules/api-tests.yaml")).unwrap();
    assert!(
        file.contains("cron: 0 2 * * *") || file.contains("cron: '0 2 * * *'"),
        "{file}"
    );
    assert!(file.contains("workflow: wf_api-test-suite"), "{file}");
    let jobs = api.get("/api/scheduler/jobs").expect(200);
    let job = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == "sch_api-tests")
        .cloned()
        .unwrap_or_else(|| panic!("{jobs}"));
    assert_eq!(job["workflow_id"], "wf_api-test-suite");
    assert_eq!(job["status"], "applied");

    // The same name again is a conflict; the file is untouched.
    api.post(
        "/api/scheduler/jobs",
        r#"{"name": "API Tests", "schedule": "*/5 * * * *", "workflow_id": "wf_smoke"}"#,
    )
    .expect_error(409, "conflict");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("schedules/api-tests.yaml")).unwrap(),
        file
    );
    // A cron that can never fire is refused with the reason, and leaves nothing behind.
    let message = api
        .post(
            "/api/scheduler/jobs",
            r#"{"name": "Never", "schedule": "0 0 30 2 *", "workflow_id": "wf_smoke"}"#,
        )
        .expect_error(422, "invalid");
    assert!(message.contains("nothing was created"), "{message}");
    assert!(!dir.path().join("schedules/never.yaml").exists());
    let jobs = api.get("/api/scheduler/jobs").expect(200);
    assert!(
        !jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == "sch_never"),
        "{jobs}"
    );
    // A missing field is named.
    let message = api
        .post(
            "/api/scheduler/jobs",
            r#"{"name": "No Cron", "workflow_id": "wf_smoke"}"#,
        )
        .expect_error(400, "bad_request");
    assert!(message.contains("`schedule` is required"), "{message}");
}
