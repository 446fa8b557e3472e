//! Workflow and agent metrics end to end: a real server runs a workflow whose steps are
//! real processes (one allocates 60 MB, one fails), and `GET /api/agents/{name}/metrics`,
//! `GET /api/workflows/{id}/metrics` and `/metrics` report executions, error rates,
//! durations, CPU time and peak memory, failure rates and the agents' health checks; the
//! figures survive a restart (they are rebuilt from the store), and the answers validate
//! against the OpenAPI document.

use std::path::Path;

use serde_json::{json, Value};

use crate::support::{eventually, project, Api, Server};

const MIXED: &str = r#"name: Mixed
steps:
  - name: allocate
    command: ["python3", "-c", "x = bytearray(60_000_000); s = sum(range(3_000_000))"]
  - name: broken
    command: ["sh", "-c", "echo about to fail >&2; exit 4"]
"#;

/// An exec plugin whose program does not exist.
const GHOST: &str = r#"kind: Agent
name: ghost
type: exec
command: ["./plugins/ghost-plugin-that-is-not-there"]
"#;

/// Starts a run through the API (the address from `data/server.json`); returns its id.
fn execute(dir: &Path, workflow: &str) -> String {
    let reply = Api::of_project(dir).post(&format!("/api/workflows/{workflow}/execute"), "{}");
    let body = reply.json_or_text();
    assert_eq!(reply.status, 202, "{body}");
    body["run_id"].as_str().expect("run_id").to_owned()
}

/// Checks a body against the response schema the OpenAPI document declares.
#[track_caller]
fn conforms(api: &Api, path: &str, status: u16, body: &Value) {
    let doc = api.get("/api/openapi.json").expect(200);
    let media =
        &doc["paths"][path]["get"]["responses"][status.to_string()]["content"]["application/json"];
    assert!(media.is_object(), "{path} {status} is not documented");
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [media["schema"]],
        "components": doc["components"],
    });
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{path}: {errors:?}\n{body:#}");
}

fn shell_metrics_are_right(shell: &Value, run: &str) {
    assert_eq!(shell["agent"], "shell", "{shell}");
    assert_eq!(shell["executions"], 2, "{shell}");
    assert_eq!(shell["succeeded"], 1, "{shell}");
    assert_eq!(shell["error_rate"], 0.5, "{shell}");
    assert_eq!(shell["success_rate"], 0.5, "{shell}");
    let p50 = shell["duration_p50_seconds"].as_f64().expect("p50");
    let p95 = shell["duration_p95_seconds"].as_f64().expect("p95");
    assert!(p50 >= 0.0 && p95 >= p50 && p95 > 0.0, "{shell}");
    assert!(shell["cpu_seconds"].as_f64().expect("cpu") > 0.0, "{shell}");
    let rss = shell["max_rss_bytes"].as_u64().expect("max_rss_bytes");
    assert!(rss >= 60_000_000, "the 60 MB step's peak: {shell}");
    assert_eq!(shell["last_error"]["run_id"], run, "{shell}");
    assert_eq!(shell["last_error"]["step"], "broken", "{shell}");
    let message = shell["last_error"]["message"].as_str().unwrap();
    assert!(message.contains("exit code 4"), "{shell}");
    assert_eq!(shell["window_seconds"], 3600, "{shell}");
    // One failure in two, and an error moments ago: below 0.8 × 0.5 + 0.2.
    let score = shell["health_score"].as_f64().unwrap();
    assert!(score > 0.3 && score < 0.45, "{shell}");
}

#[test]
fn agent_and_workflow_metrics_from_real_runs() {
    let project = project(&[
        ("workflows/mixed.yaml", MIXED),
        ("agents/ghost.yaml", GHOST),
    ]);
    let dir = project.path();
    let mut server = Server::start(dir);
    let api = server.api();

    let run = execute(dir, "wf_mixed");
    let shown = api.wait_finished(&run);
    assert_eq!(shown["run"]["status"], "failed", "{shown}");
    // The step records carry what their processes used.
    let steps = shown["steps"].as_array().unwrap();
    let allocate = steps.iter().find(|s| s["name"] == "allocate").unwrap();
    let attempt = &allocate["attempts"][0];
    assert!(
        attempt["max_rss_bytes"].as_u64().unwrap() >= 60_000_000,
        "{allocate}"
    );
    assert!(attempt["cpu_seconds"].as_f64().unwrap() > 0.0, "{allocate}");

    // The run is recorded once its executor returns, right after the store says it ended.
    let shell = eventually("the run in the agent's metrics", || {
        let shell = api.get("/api/agents/shell/metrics").expect(200);
        (shell["executions"] == 2).then_some(shell)
    });
    shell_metrics_are_right(&shell, &run);
    conforms(&api, "/api/agents/{name}/metrics", 200, &shell);

    let workflow = api.get("/api/workflows/wf_mixed/metrics").expect(200);
    assert_eq!(workflow["workflow_id"], "wf_mixed", "{workflow}");
    assert_eq!(workflow["workflow_name"], "Mixed", "{workflow}");
    assert_eq!(workflow["runs"], 1, "{workflow}");
    assert_eq!(workflow["failure_rate"], 1.0, "{workflow}");
    assert_eq!(workflow["success_rate"], 0.0, "{workflow}");
    assert!(workflow["duration_p95_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(workflow["tests"]["pass_rate"], Value::Null, "no tests");
    conforms(&api, "/api/workflows/{id}/metrics", 200, &workflow);
    // By name too; a workflow without runs answers zero runs.
    let by_name = api.get("/api/workflows/Mixed/metrics").expect(200);
    assert_eq!(by_name["runs"], 1, "{by_name}");
    let smoke = api.get("/api/workflows/wf_smoke/metrics").expect(200);
    assert_eq!(smoke["runs"], 0, "{smoke}");
    assert_eq!(smoke["failure_rate"], Value::Null, "{smoke}");

    // The broken plugin's health check fails; shell's passes.
    let ghost = eventually("the ghost agent's health check", || {
        let ghost = api.get("/api/agents/ghost/metrics").expect(200);
        ghost["health_check"].is_object().then_some(ghost)
    });
    assert_eq!(ghost["health_check"]["status"], "failed", "{ghost}");
    let message = ghost["health_check"]["message"].as_str().unwrap();
    assert!(
        message.contains("ghost-plugin-that-is-not-there"),
        "{ghost}"
    );
    assert!(message.contains("not found"), "{ghost}");
    assert_eq!(ghost["health_score"], 0.0, "{ghost}");
    assert_eq!(ghost["executions"], 0, "{ghost}");
    conforms(&api, "/api/agents/{name}/metrics", 200, &ghost);
    let shell = api.get("/api/agents/shell/metrics").expect(200);
    assert_eq!(shell["health_check"]["status"], "passed", "{shell}");
    let http = api.get("/api/agents/http/metrics").expect(200);
    assert_eq!(http["health_check"]["status"], "skipped", "{http}");
    assert_eq!(http["cpu_seconds"], Value::Null, "{http}");

    // Unknown names: 404 with the error body.
    let missing = api.get("/api/agents/nobody/metrics").expect(404);
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ghost"),
        "the message lists the agents: {missing}"
    );
    conforms(&api, "/api/agents/{name}/metrics", 404, &missing);
    let missing = api.get("/api/workflows/wf_nope/metrics").expect(404);
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");

    // Prometheus series with agent and workflow labels.
    let text = eventually("/metrics", || {
        let text = ureq_text(dir, "/metrics");
        text.contains("orchestrator_agent_healthy{agent=\"ghost\"} 0")
            .then_some(text)
    });
    for line in [
        "orchestrator_agent_executions{agent=\"shell\"} 2\n",
        "orchestrator_agent_error_rate{agent=\"shell\"} 0.5\n",
        "orchestrator_workflow_runs{workflow=\"wf_mixed\"} 1\n",
        "orchestrator_workflow_failure_rate{workflow=\"wf_mixed\"} 1\n",
        "orchestrator_agent_healthy{agent=\"shell\"} 1\n",
    ] {
        assert!(text.contains(line), "no `{}` in\n{text}", line.trim());
    }
    assert!(text.contains("orchestrator_agent_max_rss_bytes{agent=\"shell\"} "));

    // After a restart the figures are rebuilt from the store.
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}");
    let server = Server::start(dir);
    let api = server.api();
    let shell = api.get("/api/agents/shell/metrics").expect(200);
    shell_metrics_are_right(&shell, &run);
    let workflow = api.get("/api/workflows/wf_mixed/metrics").expect(200);
    assert_eq!(workflow["failure_rate"], 1.0, "{workflow}");
}

/// A text route, read with the address from `data/server.json`; it must answer 200.
fn ureq_text(dir: &Path, path: &str) -> String {
    let reply = Api::of_project(dir).get(path);
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.text
}
