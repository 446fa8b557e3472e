//! Workers made visible and steerable: `GET /api/workers[/{name}]`, drain and resume, the
//! `worker_*` events, `/metrics` per worker, `orchestrator worker list|show|drain|resume`
//! and `validate`'s warning for a `runs_on` no worker ever matched — against a real
//! nats-server and real worker processes.

use std::path::Path;
use std::time::Duration;

use orchestrator::events::Published;
use serde_json::Value;
use tokio::sync::broadcast::Receiver;

use crate::support::*;

/// The `worker_*` events received so far, as (type, worker name).
fn worker_events(events: &mut Receiver<std::sync::Arc<Published>>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    while let Ok(event) = events.try_recv() {
        let wire = serde_json::to_value(&*event).unwrap();
        let kind = wire["type"].as_str().unwrap_or_default().to_owned();
        if kind.starts_with("worker_") {
            found.push((kind, wire["payload"]["name"].as_str().unwrap().to_owned()));
        }
    }
    found
}

fn worker<'v>(list: &'v Value, name: &str) -> Option<&'v Value> {
    list["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
}

#[test]
fn without_workers_the_list_says_disabled_and_steering_is_refused() {
    let api = InProcess::start(&[], None);
    let list = api.get("/api/workers").expect(200);
    assert_eq!(
        list,
        serde_json::json!({"enabled": false, "lease_ms": null, "workers": []})
    );

    let message = api
        .post("/api/workers/rig-07/drain", "{}")
        .expect_error(409, "workers_disabled");
    assert!(message.contains("--nats"), "{message}");
    api.post("/api/workers/rig-07/resume", "{}")
        .expect_error(409, "workers_disabled");
    let message = api
        .get("/api/workers/rig-07")
        .expect_error(404, "not_found");
    assert!(message.contains("runs every step itself"), "{message}");
    // A name no worker can have is refused before anything else.
    let message = api
        .post("/api/workers/rig.07/drain", "{}")
        .expect_error(400, "bad_request");
    assert!(message.contains("letters, digits"), "{message}");
    api.get("/api/workers/a%20b")
        .expect_error(400, "bad_request");
    api.get("/api/workers/rig-07/drain")
        .expect_error(405, "method_not_allowed");

    let routes = api.get("/api").expect(200);
    let listed: Vec<String> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect();
    for route in [
        "GET /api/workers",
        "GET /api/workers/{name}",
        "POST /api/workers/{name}/drain",
        "POST /api/workers/{name}/resume",
    ] {
        assert!(listed.iter().any(|r| r == route), "{route} in {listed:?}");
    }
    let metrics = api.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        !metrics.text.contains("orchestrator_worker_"),
        "no worker figures without workers:\n{}",
        metrics.text
    );
}

#[test]
fn workers_are_listed_drained_resumed_and_lost_with_one_event_each() {
    let nats = Nats::start();
    let api = InProcess::start_with_workers(&[], &nats);
    let mut events = api.app.events.subscribe();
    let elsewhere = project(&[]);
    let url = nats.url();
    let mut rig = WorkerProcess::start_with(
        elsewhere.path(),
        "rig-07",
        "os=linux,browser=chromium",
        3,
        &["--nats", &url],
    );

    let listed = eventually("rig-07 to be listed up", || {
        let list = api.get("/api/workers").expect(200);
        (worker(&list, "rig-07")?["state"] == "up").then_some(list)
    });
    assert_eq!(listed["enabled"], true);
    assert_eq!(listed["lease_ms"], 2000);
    let shown = api.get("/api/workers/rig-07").expect(200);
    assert_eq!(
        shown["labels"],
        serde_json::json!({"os": "linux", "browser": "chromium"})
    );
    assert_eq!(shown["slots"], 3);
    assert_eq!(shown["running"], serde_json::json!([]));
    assert_eq!(shown["draining"], false);
    assert_eq!(shown["pid"], rig.pid());
    assert_eq!(shown["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        shown["heartbeat_age_ms"].as_u64().unwrap() < 2000,
        "{shown}"
    );
    assert!(
        shown["started_at"].as_str().unwrap().ends_with('Z'),
        "{shown}"
    );

    // Unknown and malformed names.
    let message = api.get("/api/workers/rig-7").expect_error(404, "not_found");
    assert!(message.contains("did you mean `rig-07`?"), "{message}");
    api.post("/api/workers/rig-7/drain", "{}")
        .expect_error(404, "not_found");
    api.post("/api/workers/rig%2F07/drain", "{}")
        .expect_error(400, "bad_request");

    // Drain: 202 once the worker's record says so; resume: 200.
    let drained = api.post("/api/workers/rig-07/drain", "{}").expect(202);
    assert_eq!(drained["draining"], true, "{drained}");
    let resumed = api.post("/api/workers/rig-07/resume", "{}").expect(200);
    assert_eq!(resumed["draining"], false, "{resumed}");

    // /metrics: the worker's gauges and the dispatcher's counters.
    let metrics = api.get("/metrics").text;
    for line in [
        "orchestrator_worker_up{worker=\"rig-07\"} 1\n",
        "orchestrator_worker_slots{worker=\"rig-07\"} 3\n",
        "orchestrator_worker_running_attempts{worker=\"rig-07\"} 0\n",
        "# TYPE orchestrator_worker_heartbeat_age_seconds gauge\norchestrator_worker_heartbeat_age_seconds{worker=\"rig-07\"} ",
        "orchestrator_worker_attempts_published_total 0\n",
        "# TYPE orchestrator_worker_claims_granted_total counter\n",
        "orchestrator_worker_attempts_lost_total 0\n",
        "orchestrator_worker_log_gaps_total 0\n",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    let (code, said) = crate::exact::ecosystem::check_with(
        "promtool",
        &["check", "metrics"],
        &metrics,
        "Debian's `prometheus` package (promtool)",
    );
    assert_eq!((code, said.as_str()), (0, ""), "promtool on:\n{metrics}");

    // Killed: lost after the lease, once; steering it is refused.
    rig.kill9();
    eventually_within("rig-07 to be lost", Duration::from_secs(20), || {
        (api.get("/api/workers/rig-07").expect(200)["state"] == "lost").then_some(())
    });
    let message = api
        .post("/api/workers/rig-07/drain", "{}")
        .expect_error(409, "worker_lost");
    assert!(message.contains("no heartbeat"), "{message}");
    let mut seen = Vec::new();
    eventually("the worker_lost event", || {
        seen.extend(worker_events(&mut events));
        seen.iter()
            .any(|(kind, _)| kind == "worker_lost")
            .then_some(())
    });
    let lost_metrics = api.get("/metrics").text;
    assert!(
        lost_metrics.contains("orchestrator_worker_up{worker=\"rig-07\"} 0\n"),
        "{lost_metrics}"
    );
    let names: Vec<&str> = seen.iter().map(|(kind, _)| kind.as_str()).collect();
    assert_eq!(
        names,
        [
            "worker_connected",
            "worker_drained",
            "worker_resumed",
            "worker_lost"
        ],
        "{seen:?}"
    );
    assert!(seen.iter().all(|(_, name)| name == "rig-07"));

    // Remembered durably: every worker that ever registered.
    let remembered: Vec<(String, Value)> = api.app.store.states("workers_seen", "").unwrap();
    assert_eq!(remembered.len(), 1);
    assert_eq!(remembered[0].0, "rig-07");
    assert_eq!(remembered[0].1["info"]["labels"]["os"], "linux");
}

/// A remote step that runs until the test creates `release`, so that its attempt is seen
/// running however slowly the machine goes.
fn remote(release: &Path) -> String {
    format!(
        r#"id: wf_remote
name: remote
max_parallel: 2
steps:
  - name: slow
    runs_on: {{pool: rig}}
    command: ["sh", "-c", "while [ ! -f '{}' ]; do sleep 0.05; done"]
"#,
        release.display()
    )
}

const NOWHERE: &str = r#"id: wf_nowhere
name: nowhere
runs_on: {os: windows}
steps:
  - name: first
    command: ["true"]
  - name: second
    command: ["true"]
  - name: gpu
    runs_on: {gpu: "yes"}
    command: ["true"]
  - name: rig
    runs_on: {pool: rig}
    command: ["true"]
"#;

#[test]
fn worker_commands_list_show_drain_and_resume_through_the_server_and_validate_warns_of_unmatched_runs_on(
) {
    let nats = Nats::start();
    let project = distributed_project(&nats, &[("workflows/nowhere.yaml", NOWHERE)]);
    let dir = project.path();
    let release = dir.join("release");
    std::fs::write(dir.join("workflows/remote.yaml"), remote(&release)).unwrap();

    // No server yet: the commands say where the workers are known.
    let refused = cli(dir, &["worker", "list"]).expect_code(2);
    assert!(
        refused.stderr.contains("no server runs"),
        "{}",
        refused.stderr
    );
    // No worker ever registered: nothing is warned, one note says why.
    let validated = cli(dir, &["validate"]).expect_code(0);
    assert!(
        !validated.stdout.contains("no worker"),
        "{}",
        validated.stdout
    );
    assert!(
        validated.stderr.contains("no worker has registered"),
        "{}",
        validated.stderr
    );

    let mut server = Server::start(dir);
    // /ws tells of the worker as it registers.
    let runtime = crate::browser::runtime();
    let mut ws = runtime.block_on(async {
        let mut ws = ws_connect(&server.address, None).await;
        // The start's own events (its sync) may come before the subscription is read.
        ws_subscribe(&mut ws, &["worker_connected"]).await;
        ws
    });
    let _rig = WorkerProcess::start(dir, "rig-1", "pool=rig,os=linux", 2);
    let connected = runtime.block_on(ws_next(&mut ws));
    assert_eq!(connected["type"], "worker_connected", "{connected}");
    assert_eq!(connected["payload"]["name"], "rig-1", "{connected}");
    assert_eq!(connected["payload"]["state"], "up", "{connected}");
    assert_eq!(connected["payload"]["slots"], 2, "{connected}");
    let listed = server.eventually("rig-1 in worker list", DEADLINE, || {
        let out = cli(dir, &["worker", "list"]).expect_code(0).stdout;
        out.contains("rig-1").then_some(out)
    });
    let header = listed.lines().next().unwrap();
    for column in [
        "NAME",
        "STATE",
        "LABELS",
        "RUNNING",
        "HEARTBEAT",
        "VERSION",
        "HOST",
    ] {
        assert!(header.contains(column), "{listed}");
    }
    let row = listed.lines().find(|l| l.starts_with("rig-1")).unwrap();
    assert!(row.contains(" up "), "{row}");
    assert!(row.contains("os=linux,pool=rig"), "{row}");
    assert!(row.contains("0/2"), "{row}");

    let json: Value = serde_json::from_str(
        &cli(dir, &["worker", "list", "-o", "json"])
            .expect_code(0)
            .stdout,
    )
    .unwrap();
    assert_eq!(json["enabled"], true);
    assert_eq!(json["workers"][0]["name"], "rig-1");

    // A running attempt shows, with its run.
    let run = execute_detached(dir, "remote");
    let running = server.eventually("the attempt on rig-1", DEADLINE, || {
        let shown: Value = serde_json::from_str(
            &cli(dir, &["worker", "show", "rig-1", "-o", "json"])
                .expect_code(0)
                .stdout,
        )
        .unwrap();
        (!shown["running"].as_array().unwrap().is_empty()).then_some(shown)
    });
    assert_eq!(running["running"][0]["run_id"], run.as_str());
    assert_eq!(running["running"][0]["step"], "slow");
    assert_eq!(running["running"][0]["attempt"], 1);
    let text = cli(dir, &["worker", "show", "rig-1"]).expect_code(0).stdout;
    assert!(text.contains("labels:     os=linux,pool=rig"), "{text}");
    assert!(text.contains(&run), "{text}");

    let drained = cli(dir, &["worker", "drain", "rig-1"]).expect_code(0);
    assert!(
        drained.stdout.contains("worker rig-1 is draining"),
        "{}",
        drained.stdout
    );
    let listed = cli(dir, &["worker", "list"]).expect_code(0).stdout;
    assert!(listed.contains(" draining "), "{listed}");
    let resumed = cli(dir, &["worker", "resume", "rig-1"]).expect_code(0);
    assert!(
        resumed.stdout.contains("worker rig-1 takes work again"),
        "{}",
        resumed.stdout
    );
    let unknown = cli(dir, &["worker", "show", "rig-2"]).expect_code(2);
    assert!(
        unknown.stderr.contains("did you mean `rig-1`?"),
        "{}",
        unknown.stderr
    );
    std::fs::write(&release, "").unwrap();
    server.eventually("the run to end", DEADLINE, || {
        (show(dir, &run)["run"]["status"] == "succeeded").then_some(())
    });

    // validate, through the server: the workflow's runs_on once and the gpu step's are
    // warned about, the rig step's is not; warnings keep exit code 0.
    let check = |validated: &Run| {
        let out = &validated.stdout;
        assert_eq!(
            out.matches("no worker that has registered").count(),
            2,
            "{out}"
        );
        assert!(out.contains("{os=windows}"), "{out}");
        assert!(out.contains("{gpu=yes}"), "{out}");
        assert!(!out.contains("{pool=rig}"), "{out}");
        assert!(out.contains("rig-1 (os=linux,pool=rig)"), "{out}");
    };
    check(&cli(dir, &["validate"]).expect_code(0));
    // Without the server, from the store.
    server.stop();
    check(&cli(dir, &["validate"]).expect_code(0));
}

#[test]
fn the_workers_page_shows_a_real_worker_its_running_attempt_and_drains_and_resumes_it() {
    use crate::browser::{runtime, serve, Browser, DESKTOP};
    let nats = Nats::start();
    let project = distributed_project(&nats, &[]);
    let dir = project.path();
    let release = dir.join("release");
    std::fs::write(dir.join("workflows/remote.yaml"), remote(&release)).unwrap();
    let (server, base) = serve(dir);
    let api = server.api();
    let mut rig = WorkerProcess::start(dir, "rig-1", "pool=rig,os=linux", 2);
    server.eventually("rig-1 up", DEADLINE, || {
        let list = api.get("/api/workers").expect(200);
        (worker(&list, "rig-1")?["state"] == "up").then_some(())
    });
    let run = execute_detached(dir, "remote");

    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser.open(&format!("{base}/#/workers"), "workers").await;
        let row = browser
            .wait_text("[data-worker='rig-1'][data-state='up']", "os=linux")
            .await;
        assert!(row.contains("pool=rig"), "{row}");
        assert!(row.contains(env!("CARGO_PKG_VERSION")), "{row}");
        assert!(row.contains("ago"), "the heartbeat's age: {row}");
        // The running attempt, linked to its run.
        browser
            .wait_element(&format!(
                "[data-worker='rig-1'] [data-attempt='{run}/slow/1'] a[href='#/runs/{run}']"
            ))
            .await;
        browser
            .wait_text("[data-worker='rig-1'] [data-slots]", "1 / 2")
            .await;
        browser.check("the workers page", "workers").await;

        // Once the step is done (its end redraws the row), drain from the page: the API
        // says draining, the row offers resume.
        std::fs::write(&release, "").unwrap();
        server.eventually("the run to end", DEADLINE, || {
            (show(dir, &run)["run"]["status"] == "succeeded").then_some(())
        });
        browser
            .wait_text("[data-worker='rig-1'] [data-slots]", "0 / 2")
            .await;
        browser
            .press("[data-worker='rig-1'] button[data-action='drain']")
            .await;
        browser
            .wait_element(
                "[data-worker='rig-1'][data-state='draining'] button[data-action='resume']",
            )
            .await;
        assert_eq!(api.get("/api/workers/rig-1").expect(200)["draining"], true);
        browser
            .press("[data-worker='rig-1'] button[data-action='resume']")
            .await;
        browser
            .wait_element("[data-worker='rig-1'][data-state='up'] button[data-action='drain']")
            .await;
        assert_eq!(api.get("/api/workers/rig-1").expect(200)["draining"], false);

        // The run page names the worker of the remote step.
        browser.route(&format!("#/runs/{run}"), "runs").await;
        browser
            .wait_element("[data-step='slow'] [data-worker='rig-1'] a[href='#/workers/rig-1']")
            .await;
        browser
            .check("the run page with its worker", "workers-run")
            .await;

        // Killed: the page turns it lost, live.
        browser.route("#/workers/rig-1", "workers").await;
        rig.kill9();
        browser
            .wait_text("[data-worker='rig-1'][data-state='lost']", "lost")
            .await;
        browser.check("a lost worker", "workers-lost").await;
        browser.close().await;
    });
}
