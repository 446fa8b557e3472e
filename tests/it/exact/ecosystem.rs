//! The ecosystem's checkers against a live server: promtool on `/metrics`, openapi-spec-validator and schemathesis on the API, Alertmanager's fingerprint, HEAD answered like GET.
//!
//! Each checker runs as the process a user would run; a missing one fails the test naming
//! what to install.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::receivers::HttpRecorder;
use crate::support::{eventually, project, Api, Server};

/// Deep-merges `patch` into the development configuration `init` wrote (rewritten as JSON,
/// which is YAML), so a test adds its settings whatever sections the scaffold has.
fn configure(dir: &Path, patch: Value) {
    fn merge(into: &mut Value, patch: Value) {
        match (into, patch) {
            (Value::Object(into), Value::Object(patch)) => {
                for (key, value) in patch {
                    merge(into.entry(key).or_insert(Value::Null), value);
                }
            }
            (into, patch) => *into = patch,
        }
    }
    let path = dir.join("config/development.yaml");
    let text = fs::read_to_string(&path).unwrap();
    let mut config: Value = serde_saphyr::from_str(&text).unwrap();
    merge(&mut config, patch);
    fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

/// Runs an installed checker with `input` on its stdin; returns (exit code, stdout +
/// stderr). A checker that is not installed fails the test saying what to install.
pub(crate) fn check_with(
    program: &str,
    args: &[&str],
    input: &str,
    install: &str,
) -> (i32, String) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{program}` ({e}): install {install}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn promtool_accepts_the_metrics_of_a_live_server() {
    let project = project(&[]);
    let dir = project.path();
    configure(dir, json!({"monitoring": {"sample_interval": "1s"}}));
    let server = Server::start(dir);
    let api = server.api();
    let run = api.execute("wf_smoke", "{}");
    api.wait_finished(&run);
    api.get("/api/runs/nosuch").expect_error(404, "not_found");

    let text = eventually("a system sample and the run in /metrics", || {
        let reply = api.get("/metrics");
        assert_eq!(reply.status, 200, "{reply:?}");
        let text = reply.text;
        (text.contains("\norchestrator_system_processes ")
            && text.contains("orchestrator_agent_step_duration_seconds_count{agent=\"shell\"}"))
        .then_some(text)
    });
    let (code, said) = check_with(
        "promtool",
        &["check", "metrics"],
        &text,
        "Debian's `prometheus` package (promtool)",
    );
    assert_eq!(
        (code, said.as_str()),
        (0, ""),
        "promtool on /metrics:\n{text}"
    );

    // What a dashboard queries: requests by method and code, counters named `_total`.
    for line in [
        "orchestrator_http_requests_total{method=\"POST\",code=\"202\"} 1\n",
        "orchestrator_http_requests_total{method=\"GET\",code=\"404\"} 1\n",
        "# TYPE orchestrator_events_published_total counter\n",
        "# TYPE process_cpu_seconds_total counter\n",
        "# TYPE orchestrator_agent_step_duration_seconds histogram\n",
        "# TYPE orchestrator_run_duration_seconds histogram\n",
    ] {
        assert!(text.contains(line), "no {line:?} in /metrics:\n{text}");
    }
}

#[test]
fn a_delivered_alert_carries_alertmanagers_fingerprint() {
    let webhook = HttpRecorder::start();
    let project = project(&[(
        "alerts/cpu-always.yaml",
        "name: CPU Always\ncondition: system.process_count > 0\nseverity: critical\nlabels:\n  team: qa\nactions: [webhook]\n",
    )]);
    let dir = project.path();
    configure(
        dir,
        json!({
            "monitoring": {"evaluation_interval": "200ms", "sample_interval": "1s"},
            "notifications": {"webhook": {"url": format!("{}/hook", webhook.url())}},
        }),
    );
    let _server = Server::start(dir);

    let delivered = webhook.wait_for(1);
    let alert = &delivered[0].body["alerts"][0];
    assert_eq!(
        alert["labels"],
        json!({"alertname": "CPU Always", "severity": "critical", "team": "qa"}),
        "{alert}"
    );
    // What Alertmanager 0.25 sends for these labels.
    assert_eq!(alert["fingerprint"], "48525fe1cfc801a2", "{alert}");
}

/// One answer as a client sees it: status, headers (names lowercased, `date` left out) and
/// body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// `method path` against the server at `address`, whatever the status.
fn answer(address: &str, method: &'static str, path: &str) -> Answer {
    let reply = Api::new(address, None).request(method, path).send();
    let headers = reply
        .headers
        .into_iter()
        .filter(|(name, _)| name != "date")
        .collect();
    Answer {
        status: reply.status,
        headers,
        body: reply.text,
    }
}

#[test]
fn head_answers_every_get_route_like_get_without_a_body() {
    let project = project(&[]);
    let dir = project.path();
    let server = Server::start(dir);
    let api = server.api();
    let run = api.execute("wf_smoke", "{}");
    api.wait_finished(&run);

    // Each path parameter filled with something that exists where there is one.
    let fill = |route: &str| -> String {
        let mut path = String::new();
        let mut rest = route;
        while let Some(start) = rest.find('{') {
            let end = rest[start..].find('}').map_or(rest.len(), |e| start + e);
            path.push_str(&rest[..start]);
            let before = &route[..route.len() - rest.len() + start];
            let value = match &rest[start + 1..end] {
                "step" => "lint",
                "name" => "http",
                "path" if before.starts_with("/assets/") => "app.js",
                "id" if before.starts_with("/api/workflows/") => "wf_smoke",
                "id" if before.starts_with("/api/runs/") => run.as_str(),
                "id" if before.starts_with("/api/triggers/") => "trg_github-push",
                "id" if before.starts_with("/api/alerts/") => "alert_high-cpu-usage",
                _ => "nosuch",
            };
            path.push_str(value);
            rest = &rest[(end + 1).min(rest.len())..];
        }
        path.push_str(rest);
        path
    };
    let mut checked = Vec::new();
    for (method, route) in orchestrator::api::routes() {
        if method != "GET" {
            continue;
        }
        let path = fill(&route);
        let get = answer(&server.address, "GET", &path);
        let head = answer(&server.address, "HEAD", &path);
        let mut get_headers = get.headers.clone();
        let mut head_headers = head.headers.clone();
        // Live figures change between two requests, and with them the length.
        if matches!(
            route.as_str(),
            "/metrics" | "/api/system/metrics" | "/api/status"
        ) {
            assert!(
                head_headers.remove("content-length").is_some(),
                "HEAD {path}: {head:?}"
            );
            assert!(
                get_headers.remove("content-length").is_some(),
                "GET {path}: {get:?}"
            );
        }
        assert_eq!(
            (head.status, &head_headers),
            (get.status, &get_headers),
            "HEAD {path} answered otherwise than GET\n--- GET\n{get:?}\n--- HEAD\n{head:?}"
        );
        assert_eq!(head.body, "", "HEAD {path} sent a body");
        checked.push(format!("{} {path}", get.status));
    }
    // The probes and the metrics answer 200, not an error both methods share.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert!(checked.contains(&format!("200 {path}")), "{checked:#?}");
    }
}

#[test]
fn openapi_spec_validator_accepts_the_served_document() {
    let project = project(&[]);
    let server = Server::start(project.path());
    let reply = server.api().get("/api/openapi.json");
    assert_eq!(reply.status, 200, "{reply:?}");
    let file = project.path().join("openapi.json");
    fs::write(&file, &reply.text).unwrap();
    let (code, said) = check_with(
        "openapi-spec-validator",
        &[file.to_str().unwrap()],
        "",
        "the PyPI package `openapi-spec-validator`",
    );
    assert_eq!(code, 0, "openapi-spec-validator:\n{said}");
}

/// How schemathesis runs against the server: every check, deterministic generation (the
/// same requests every time), a few examples per operation and a wall-clock budget of a
/// minute, which the fuzzing phase fills.
///
/// Left out or constrained, each for a reason:
/// - `GET /ws` is a WebSocket: the document declares the handshake headers, and a request
///   with them switches protocols, which an HTTP fuzzer cannot follow (the WebSocket tests
///   cover it).
/// - `POST /api/manifests` writes manifest files into the project, which the watcher
///   applies mid-run: generated workflows, agents and schedules would change what every
///   other operation sees. `POST /api/validate` takes the same body and writes nothing.
/// - `POST /hooks/{path}` and `POST /hooks/source` are webhooks signed with secrets the
///   fuzzer does not have; the webhook suites cover them.
/// - A well-formed schedule whose cron expression, time zone or workflow the server does
///   not know is refused with 422 (400 for a name with nothing to make an id of), and a
///   silence for an unknown alert or ending in the past with 400: rules no schema can state
///   (what exists, what time it is, which letters make a slug). Those two operations accept
///   those statuses for schema-valid requests; every other check stays.
/// - Every state change must say `Content-Type: application/json`, even with no body (the
///   request guard's rule against cross-site forms, documented as each operation's 415);
///   OpenAPI has no way to require a content type on a request without a body, so the
///   header is sent with every request.
const SCHEMATHESIS_CONFIG: &str = r#"
# Entries name operations by operationId: the filters of one entry are not combined.
[[operations]]
include-operation-id = ["websocket", "save", "receive_webhook", "receive_source_push"]
enabled = false

[[operations]]
include-operation-id = "create_job"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422"]

[[operations]]
include-operation-id = "create_silence"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409"]
"#;

#[test]
fn schemathesis_finds_no_mismatch_between_the_document_and_the_server() {
    let project = project(&[]);
    let dir = project.path();
    let server = Server::start_with(
        dir,
        &[
            ("ORCHESTRATOR_API_TOKEN", "env:ECOSYSTEM_TEST_TOKEN"),
            ("ECOSYSTEM_TEST_TOKEN", "ecosystem-token"),
        ],
    );
    // Some data: a finished run, so runs, logs and metrics have something to show.
    let api = crate::support::Api::new(&server.address, Some("ecosystem-token"));
    let run = api.execute("wf_smoke", "{}");
    api.wait_finished(&run);

    fs::write(dir.join("schemathesis.toml"), SCHEMATHESIS_CONFIG).unwrap();
    let url = format!("http://{}/api/openapi.json", server.address);
    let output = Command::new("schemathesis")
        .current_dir(dir)
        .args([
            "--config-file",
            "schemathesis.toml",
            "run",
            &url,
            "--checks",
            "all",
            "--header",
            "Authorization: Bearer ecosystem-token",
            "--header",
            "Content-Type: application/json",
            "--max-examples",
            "10",
            // The stateful phase chains calls that change things and would share the time
            // budget with the rest; the examples, every boundary (coverage) and a minute of
            // fuzzing check each operation on its own.
            "--phases",
            "examples,coverage,fuzzing",
            "--generation-deterministic",
            // The artifact path's pattern (segments that may hold almost anything) makes
            // many generated values unusable in a URL; that is generation, not a mismatch.
            "--suppress-health-check",
            "filter_too_much",
            "--max-time",
            "60",
            "--request-timeout",
            "10",
            "--no-color",
        ])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `schemathesis` ({e}): install the PyPI package `schemathesis` (4.x)")
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "schemathesis found mismatches:\n{said}"
    );
    assert!(said.contains("Tested:"), "{said}");
}
