//! Workers made visible and steerable: `GET /api/workers[/{name}]`, drain and resume, the
//! `worker_*` events, `/metrics` per worker, `orchestrator worker list|show|drain|resume`
//! and `validate`'s warning for a `runs_on` no worker ever matched — against a real
//! nats-server and real worker processes.

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
