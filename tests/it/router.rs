//! The API's contracts and error shapes, through the router of a server assembled in this
//! process (`oneshot`, no socket): what is wrong, where, and what was expected, as
//! `{error: {code, message, details}}` with the right status — and nothing started.

use serde_json::json;

use crate::server::ECHO;
use crate::support::InProcess;

#[test]
fn bad_input_is_answered_with_json_errors() {
    let api = InProcess::start(
        &[("workflows/echo.yaml", ECHO)],
        Some(("  port: 8080\n", "  port: 8080\n  max_body_bytes: 1024\n")),
    );
    let execute = "/api/workflows/wf_smoke/execute";

    let message = api
        .post(execute, r#"{"parameters": {"#)
        .expect_error(400, "malformed_json");
    assert!(message.contains("not valid JSON"), "{message}");
    assert!(message.contains("column"), "{message}");

    let message = api
        .call("POST", execute, Some("text/plain"), r#"{"parameters": {}}"#)
        .expect_error(415, "unsupported_media_type");
    assert!(message.contains("application/json"), "{message}");

    let message = api
        .post(execute, r#"{"parameters": 5}"#)
        .expect_error(422, "invalid_body");
    assert!(message.contains("invalid type: integer `5`"), "{message}");
    let message = api
        .post(execute, r#"{"params": {}}"#)
        .expect_error(422, "invalid_body");
    assert!(message.contains("unknown field `params`"), "{message}");

    let message = api
        .post("/api/workflows/wf_smok/execute", "{}")
        .expect_error(404, "not_found");
    assert!(message.contains("no workflow `wf_smok`"), "{message}");
    assert!(message.contains("did you mean `wf_smoke`?"), "{message}");
    api.get("/api/workflows/wf_smok")
        .expect_error(404, "not_found");
    api.get("/api/runs/run_nope").expect_error(404, "not_found");

    let message = api.get("/api/nope").expect_error(404, "not_found");
    assert!(message.contains("GET /api"), "{message}");
    api.post("/nope", "{}").expect_error(404, "not_found");

    let wrong_method = api.call("DELETE", "/api/workflows", None, "");
    assert_eq!(wrong_method.status, 405, "{wrong_method:?}");
    wrong_method.expect_error(405, "method_not_allowed");
    api.get(execute).expect_error(405, "method_not_allowed");
    api.post("/api/status", "")
        .expect_error(405, "method_not_allowed");

    // Over server.max_body_bytes (1024): refused before it is read, still as JSON.
    let big = json!({"parameters": {"padding": "x".repeat(4096)}}).to_string();
    let message = api
        .post(execute, &big)
        .expect_error(413, "payload_too_large");
    assert!(message.contains("max_body_bytes"), "{message}");
    // Just under the limit is fine as far as size goes.
    let padded = json!({"parameters": {"p": "x".repeat(900)}}).to_string();
    assert!(padded.len() < 1024);
    api.post("/api/workflows/wf_smok/execute", &padded)
        .expect_error(404, "not_found");

    // Parameters checked against the declared ones, every problem at once.
    let message = api
        .post(
            "/api/workflows/wf_echo/execute",
            r#"{"parameters": {"traget": "x"}}"#,
        )
        .expect_error(422, "invalid");
    assert!(message.contains("did you mean `target`?"), "{message}");
    assert!(
        message.contains("missing required parameter `target`"),
        "{message}"
    );
    let message = api
        .post(
            "/api/workflows/wf_echo/execute",
            r#"{"parameters": {"target": 5}}"#,
        )
        .expect_error(422, "invalid");
    assert!(message.contains("must be a string"), "{message}");

    // Query strings.
    let body = api.get("/api/workflows?limit=0").expect(400);
    assert_eq!(body["error"]["code"], "bad_request", "{body}");
    assert_eq!(body["error"]["details"]["field"], "limit", "{body}");
    let message = api
        .get("/api/runs?limit=100000")
        .expect_error(400, "bad_request");
    assert!(message.contains("between 1 and"), "{message}");
    let message = api
        .get("/api/workflows?limit=abc")
        .expect_error(400, "bad_request");
    assert!(message.contains("limit"), "{message}");
    let message = api
        .get("/api/runs?status=bogus")
        .expect_error(400, "bad_request");
    assert!(message.contains("bogus"), "{message}");
    let message = api
        .get("/api/runs?colour=red")
        .expect_error(400, "bad_request");
    assert!(message.contains("colour"), "{message}");

    // Not a WebSocket handshake.
    api.get("/ws").expect_error(400, "bad_request");

    // None of it started a run.
    let runs = api.get("/api/runs").expect(200);
    assert_eq!(runs["total"], 0, "{runs}");
    assert!(api.app.runner.live_run_ids().is_empty());
}

#[test]
fn the_guard_answers_before_any_handler_in_process() {
    let api = InProcess::start(&[], None);
    let status = api.get("/api/status");
    assert_eq!(
        status.expect(200)["environment"],
        "development",
        "{status:?}"
    );
    // Assembled, reconciled, but not bound: not ready.
    assert_eq!(status.json["ready"], false, "{status:?}");

    // A Host that names another server: 421, before the route is looked at.
    let json = [("content-type", "application/json")];
    api.send("GET", "/api/status", &[("host", "evil.example:8080")], "")
        .expect_error(421, "host_not_allowed");
    // A state change from another origin: 403, and nothing ran.
    api.send(
        "POST",
        "/api/sync",
        &[
            ("host", "127.0.0.1:8080"),
            ("origin", "http://evil.example"),
            json[0],
        ],
        "{}",
    )
    .expect_error(403, "origin_not_allowed");
    // Unknown routes and methods are JSON errors too.
    let message = api.get("/api/nothing-here").expect_error(404, "not_found");
    assert!(message.contains("GET /api"), "{message}");
    api.call("PUT", "/api/status", None, "{}")
        .expect_error(405, "method_not_allowed");
    api.call(
        "POST",
        "/api/sync",
        Some("application/x-www-form-urlencoded"),
        "a=b",
    )
    .expect_error(415, "unsupported_media_type");
    let runs = api.get("/api/runs");
    assert_eq!(runs.expect(200)["total"], 0, "{runs:?}");
}

/// A run record as the engine writes them, straight into the store.
fn stored_run(id: &str, workflow: &str, status: &str) -> orchestrator::model::RunRecord {
    serde_json::from_value(json!({
        "id": id,
        "workflow_id": workflow,
        "workflow_name": workflow,
        "status": status,
        "parameters": {},
        "trigger": {"kind": "api"},
        "workflow": {"steps": [{"name": "a", "command": ["true"]}, {"name": "b", "command": ["true"]}]},
        "steps": ["a", "b"],
        "created_at": "2026-01-01T00:00:00Z",
    }))
    .expect("a run record")
}

#[test]
fn the_run_list_pages_newest_first_with_filters_and_totals() {
    let api = InProcess::start(&[], None);
    for n in 0..12 {
        let workflow = if n % 3 == 0 { "wf_a" } else { "wf_b" };
        let status = if n % 2 == 0 { "succeeded" } else { "failed" };
        api.app
            .store
            .save_run(
                Some(&stored_run(&format!("run_{n:02}"), workflow, status)),
                &[],
                true,
            )
            .expect("save");
    }
    let ids = |body: &serde_json::Value| -> Vec<String> {
        body["runs"]
            .as_array()
            .expect("runs")
            .iter()
            .map(|r| r["id"].as_str().expect("id").to_owned())
            .collect()
    };
    let page = api.get("/api/runs?limit=3&offset=2").expect(200);
    assert_eq!(ids(&page), ["run_09", "run_08", "run_07"], "{page}");
    assert_eq!(
        (&page["total"], &page["limit"], &page["offset"]),
        (&json!(12), &json!(3), &json!(2)),
        "{page}"
    );
    // Summaries: no workflow, steps counted.
    assert!(page["runs"][0].get("workflow").is_none(), "{page}");
    assert_eq!(page["runs"][0]["steps"], 2, "{page}");

    let failed = api.get("/api/runs?status=failed&limit=2").expect(200);
    assert_eq!(ids(&failed), ["run_11", "run_09"], "{failed}");
    assert_eq!(failed["total"], 6, "{failed}");
    let of_a = api.get("/api/runs?workflow=wf_a").expect(200);
    assert_eq!(
        ids(&of_a),
        ["run_09", "run_06", "run_03", "run_00"],
        "{of_a}"
    );
    assert_eq!(of_a["total"], 4, "{of_a}");
    let both = api
        .get("/api/runs?workflow=wf_a&status=succeeded")
        .expect(200);
    assert_eq!(ids(&both), ["run_06", "run_00"], "{both}");
    assert_eq!(both["total"], 2, "{both}");
    let past = api.get("/api/runs?offset=50").expect(200);
    assert_eq!(
        (ids(&past).len(), &past["total"]),
        (0, &json!(12)),
        "{past}"
    );

    // Whole records carry their workflows.
    let full = api.get("/api/runs?full=true&limit=1").expect(200);
    assert_eq!(ids(&full), ["run_11"], "{full}");
    assert_eq!(
        full["runs"][0]["workflow"],
        stored_run("run_11", "wf_b", "failed").workflow,
        "{full}"
    );
    assert_eq!(full["runs"][0]["steps"], json!(["a", "b"]), "{full}");

    // A listed run that changes is listed as it is now (its summary is cached once listed).
    api.app
        .store
        .save_run(Some(&stored_run("run_11", "wf_b", "succeeded")), &[], true)
        .expect("save");
    let changed = api.get("/api/runs?limit=1").expect(200);
    assert_eq!(changed["runs"][0]["status"], "succeeded", "{changed}");
    let failed = api.get("/api/runs?status=failed&limit=2").expect(200);
    assert_eq!(ids(&failed), ["run_09", "run_07"], "{failed}");

    // A delete leaves the pages and their totals.
    api.app
        .store
        .delete_runs("wf_a", &["run_09".into()])
        .expect("delete");
    let after = api.get("/api/runs?limit=2").expect(200);
    assert_eq!(ids(&after), ["run_11", "run_10"], "{after}");
    assert_eq!(after["total"], 11, "{after}");
    assert_eq!(api.get("/api/runs?workflow=wf_a").expect(200)["total"], 3);
}
