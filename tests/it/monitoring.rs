//! System metrics end to end: a real server sampling every 200 ms answers
//! `GET /api/system/metrics` with sane figures, publishes `system_metrics` events on `/ws`,
//! exports the gauges on `/metrics`, keeps its downsampled history across a restart, and
//! refuses a `since` or `step` it cannot read with the standard error body.
//!
//! Nothing waits a fixed time: every wait polls with a deadline or waits for an event.

use std::fs;

use serde_json::Value;

use crate::support::{eventually, project, server_address, ws_connect, ws_until, Api, Server};

/// Samples every 200 ms, one history point a second.
const FAST_SAMPLING: &str = "monitoring:\n  sample_interval: 200ms\n  history_step: 1s\n";

/// An `init`ed project whose development configuration samples fast.
fn sampling_project() -> tempfile::TempDir {
    let project = project(&[]);
    let config = project.path().join("config/development.yaml");
    let mut text = fs::read_to_string(&config).unwrap();
    assert!(!text.contains("monitoring:"), "{text}");
    text.push_str(FAST_SAMPLING);
    fs::write(&config, text).unwrap();
    project
}

/// GET: (status, content type, body).
fn get(address: &str, path: &str) -> (u16, String, String) {
    let reply = Api::new(address, None).get(path);
    (reply.status, reply.content_type, reply.text)
}

/// GET of a JSON route that must answer `status`.
#[track_caller]
fn get_json(address: &str, path: &str, status: u16) -> Value {
    let (got, content_type, text) = get(address, path);
    assert_eq!(got, status, "GET {path}: {text}");
    assert!(
        content_type.starts_with("application/json"),
        "GET {path}: {content_type}"
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: {e}: {text}"))
}

/// Asserts the figures of a sample (or of a point) are in range.
#[track_caller]
fn assert_sane(sample: &Value) {
    let number = |name: &str| {
        sample[name]
            .as_f64()
            .unwrap_or_else(|| panic!("no {name}: {sample}"))
    };
    for percent in [
        "cpu_percent",
        "memory_percent",
        "disk_percent",
        "orchestrator_cpu_percent",
    ] {
        let value = number(percent);
        assert!((0.0..=100.0).contains(&value), "{percent}: {sample}");
    }
    assert!(number("memory_percent") > 0.0, "{sample}");
    assert!(number("disk_percent") > 0.0, "{sample}");
    assert!(number("orchestrator_rss_bytes") > 1e6, "{sample}");
    assert!(number("process_count") >= 1.0, "{sample}");
    assert!(number("load_average") >= 0.0, "{sample}");
    assert!(number("network_rx_bytes_per_second") >= 0.0, "{sample}");
    assert!(number("network_tx_bytes_per_second") >= 0.0, "{sample}");
    let at = sample["at"].as_str().unwrap_or_default();
    assert!(
        chrono::DateTime::parse_from_rfc3339(at).is_ok(),
        "at: {sample}"
    );
}

/// Asserts an error answer of the standard shape; returns its message.
#[track_caller]
fn expect_bad_request(address: &str, path: &str) -> (String, Value) {
    let body = get_json(address, path, 400);
    let error = &body["error"];
    assert_eq!(error["code"], "bad_request", "{body}");
    assert!(error.get("details").is_some(), "{body}");
    let message = error["message"].as_str().unwrap_or_default().to_owned();
    assert!(!message.is_empty(), "{body}");
    (message, error["details"].clone())
}

#[test]
fn system_metrics_are_sampled_published_and_exported() {
    let project = sampling_project();
    let server = Server::start(project.path());
    let address = server_address(project.path());

    // Samples arrive within a second of the start, then every 200 ms.
    let metrics = eventually("a few samples", || {
        let metrics = get_json(&address, "/api/system/metrics", 200);
        (metrics["points"].as_array().map_or(0, Vec::len) >= 3).then_some(metrics)
    });
    assert_sane(&metrics["latest"]);
    assert_eq!(metrics["source"], "raw", "{metrics}");
    assert_eq!(metrics["step_seconds"], 0.2, "{metrics}");
    let points = metrics["points"].as_array().unwrap();
    for point in points {
        assert_sane(point);
        assert_eq!(point["samples"], 1, "{point}");
    }
    let times: Vec<&str> = points.iter().map(|p| p["at"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    assert_eq!(
        points.last().unwrap()["at"],
        metrics["latest"]["at"],
        "{metrics}"
    );
    let since = chrono::DateTime::parse_from_rfc3339(metrics["since"].as_str().unwrap())
        .expect("since is RFC 3339");
    let ago = chrono::Utc::now().signed_duration_since(since);
    assert!(
        ago > chrono::TimeDelta::minutes(59) && ago < chrono::TimeDelta::minutes(61),
        "the default range is an hour: {metrics}"
    );

    // A coarser step aggregates the samples.
    let coarse = eventually("two seconds of samples", || {
        let coarse = get_json(&address, "/api/system/metrics?since=10m&step=1s", 200);
        let points = coarse["points"].as_array().unwrap();
        (points.iter().any(|p| p["samples"].as_u64() >= Some(3))).then_some(coarse)
    });
    assert_eq!(coarse["step_seconds"], 1.0, "{coarse}");
    for point in coarse["points"].as_array().unwrap() {
        assert_sane(point);
        assert!(
            point["cpu_percent_max"].as_f64() >= point["cpu_percent"].as_f64(),
            "{point}"
        );
        let at = chrono::DateTime::parse_from_rfc3339(point["at"].as_str().unwrap()).unwrap();
        assert_eq!(
            at.timestamp_subsec_millis(),
            0,
            "aligned on seconds: {point}"
        );
    }

    // A `system_metrics` event on /ws, with the sample as payload.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let event = runtime.block_on(async {
        let mut ws = ws_connect(&address, None).await;
        ws_until(&mut ws, "a system_metrics event", |event| {
            event["type"] == "system_metrics"
        })
        .await
    });
    assert_sane(&event["payload"]);
    assert!(event["sequence"].as_u64() > Some(0), "{event}");

    // The gauges on /metrics.
    let (status, content_type, text) = get(&address, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    for name in [
        "cpu_percent",
        "memory_percent",
        "disk_percent",
        "network_rx_bytes_per_second",
        "network_tx_bytes_per_second",
        "load_average",
        "processes",
        "orchestrator_cpu_percent",
        "orchestrator_rss_bytes",
    ] {
        let gauge = format!("orchestrator_system_{name}");
        assert!(
            text.contains(&format!("# TYPE {gauge} gauge\n")),
            "{gauge} in:\n{text}"
        );
        let value: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{gauge} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no value of {gauge} in:\n{text}"));
        assert!(value >= 0.0, "{gauge} {value}");
    }
    let rss: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("orchestrator_system_orchestrator_rss_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss > 1e6, "{rss}");

    // What it cannot read, it says, in the standard error body.
    let (message, details) = expect_bad_request(&address, "/api/system/metrics?since=yesterday");
    assert!(message.contains("`since`"), "{message}");
    assert!(message.contains("RFC 3339"), "{message}");
    assert!(message.contains("yesterday"), "{message}");
    assert_eq!(details["parameter"], "since");
    let (message, _) = expect_bad_request(&address, "/api/system/metrics?step=0s");
    assert!(message.contains("above zero"), "{message}");
    let (message, _) = expect_bad_request(&address, "/api/system/metrics?step=fast");
    assert!(message.contains("`step`"), "{message}");
    expect_bad_request(&address, "/api/system/metrics?from=1h");
    // An RFC 3339 time is a valid `since`.
    let at = get_json(
        &address,
        "/api/system/metrics?since=2020-01-01T00:00:00Z",
        200,
    );
    assert_eq!(at["since"], "2020-01-01T00:00:00.000Z", "{at}");
    drop(server);
}

#[test]
fn the_system_metrics_history_survives_a_restart() {
    let project = sampling_project();
    let dir = project.path();
    let mut server = Server::start(dir);
    let address = server_address(dir);
    // Three seconds of samples: points of three history buckets at least.
    let before = eventually("three seconds of samples", || {
        let metrics = get_json(&address, "/api/system/metrics", 200);
        let points = metrics["points"].as_array()?;
        let first = chrono::DateTime::parse_from_rfc3339(points.first()?["at"].as_str()?).ok()?;
        let last = chrono::DateTime::parse_from_rfc3339(points.last()?["at"].as_str()?).ok()?;
        (last - first > chrono::TimeDelta::seconds(3)).then_some(metrics)
    });
    let sampled = before["points"].as_array().unwrap().len() as u64;
    let first =
        chrono::DateTime::parse_from_rfc3339(before["points"][0]["at"].as_str().unwrap()).unwrap();
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}");

    let server = Server::start(dir);
    let address = server_address(dir);
    // Before the ring of the new process reaches back: the persisted history answers, with
    // every sample of the first process.
    let after = get_json(&address, "/api/system/metrics?since=1h", 200);
    assert_eq!(after["source"], "history", "{after}");
    assert_eq!(after["step_seconds"], 1.0, "{after}");
    let points = after["points"].as_array().unwrap();
    let oldest = chrono::DateTime::parse_from_rfc3339(points[0]["at"].as_str().unwrap()).unwrap();
    assert!(
        oldest <= first && first - oldest < chrono::TimeDelta::seconds(1),
        "the first bucket holds the first sample: {oldest} vs {first}"
    );
    let samples: u64 = points.iter().map(|p| p["samples"].as_u64().unwrap()).sum();
    assert!(samples >= sampled, "{samples} < {sampled}: {after}");
    for point in points {
        assert_sane(point);
    }
    // Re-bucketed to a coarser step.
    let coarse = get_json(&address, "/api/system/metrics?since=1h&step=1m", 200);
    assert_eq!(coarse["step_seconds"], 60.0, "{coarse}");
    let coarse_samples: u64 = coarse["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["samples"].as_u64().unwrap())
        .sum();
    assert!(coarse_samples >= samples, "{coarse}");
    assert!(coarse["points"].as_array().unwrap().len() <= 2, "{coarse}");
    drop(server);
}
