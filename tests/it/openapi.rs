//! `GET /api/openapi.json` against the running server: the document lists exactly the routes
//! the server answers (`GET /api` and `orchestrator::api::routes()`), every documented route
//! is served (none falls to the router's 404 or 405), and what the server answers — status,
//! content type, and the JSON body against the documented schema — is what the document
//! says.
//!
//! A child of `server` (it uses that module's `Server`, `Api` and project helpers).

use std::collections::BTreeSet;

use serde_json::{json, Value};

use super::{HELLO, NAP};
use crate::support::{eventually, project, Reply, Server};

/// (METHOD, path) of every operation of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in [
            "get", "put", "post", "delete", "patch", "head", "options", "trace",
        ] {
            if item.get(method).is_some() {
                found.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    found
}

/// Checks an answer against the document's operation `method path` (the path as
/// documented, with `{name}` parameters): its status must be one the operation declares,
/// with the declared content type; a JSON body must validate against the declared schema.
/// Returns the JSON body (null for text).
#[track_caller]
fn conforms(doc: &Value, method: &str, path: &str, reply: Reply) -> Value {
    let here = format!("{method} {path} answered {}", reply.status);
    let operation = &doc["paths"][path][method.to_lowercase()];
    assert!(operation.is_object(), "{here}: not in the document");
    let response = &operation["responses"][reply.status.to_string()];
    assert!(
        response.is_object(),
        "{here}, which the document does not declare: {reply:?}"
    );
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return Value::Null;
    };
    let (content_type, media) = content.iter().next().expect("a content type");
    let essence = |t: &str| t.split(';').next().unwrap_or("").trim().to_owned();
    assert_eq!(
        essence(&reply.content_type),
        essence(content_type),
        "{here}: {reply:?}"
    );
    if essence(content_type) != "application/json" {
        return Value::Null;
    }
    let body: Value =
        serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{here}: {e}: {reply:?}"));
    // The schema, with the document's components beside it for its `$ref`s.
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [media["schema"]],
        "components": doc["components"],
    });
    let validator = jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{here}: the documented schema does not compile: {e}"));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{here}: the body does not match the document:\n{}\n{body:#}",
        errors.join("\n")
    );
    body
}

#[test]
fn the_openapi_document_describes_what_the_server_answers() {
    let project = project(&[("workflows/hello.yaml", HELLO), ("workflows/nap.yaml", NAP)]);
    let server = Server::start(project.path());
    let api = server.api();

    let reply = api.get("/api/openapi.json");
    let doc = reply.expect(200);
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi {version}");
    assert_eq!(doc["info"]["title"], "orchestrator");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    // The document describes itself.
    let again = api.get("/api/openapi.json");
    assert_eq!(
        conforms(&doc, "GET", "/api/openapi.json", again),
        doc,
        "served twice, the same"
    );

    // Exactly the routes: the server's own list, and the library's.
    let documented = operations(&doc);
    let index = conforms(&doc, "GET", "/api", api.get("/api"));
    let listed: BTreeSet<(String, String)> = index["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            (
                r["method"].as_str().unwrap().to_owned(),
                r["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(documented, listed, "the document and GET /api");
    let routes: BTreeSet<(String, String)> = orchestrator::api::routes()
        .into_iter()
        .map(|(m, p)| (m.to_owned(), p))
        .collect();
    assert_eq!(documented, routes, "the document and api::routes()");

    // Every documented operation is served: asked with parameters that name nothing, it
    // answers with one of its documented statuses, never the router's "no such route" or
    // 405. (POST bodies are left out: every body of the API is optional.)
    for (method, path) in &documented {
        let concrete = path
            .split('/')
            .map(|s| if s.starts_with('{') { "nope" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let reply = match method.as_str() {
            "GET" => api.get(&concrete),
            "POST" => api.post(&concrete, ""),
            "DELETE" => api.delete(&concrete),
            other => panic!("{other} {path}: the API has only GET, POST and DELETE"),
        };
        assert_ne!(reply.status, 405, "{method} {concrete}: {reply:?}");
        assert!(
            !reply.text.contains("no such route"),
            "{method} {concrete} is not routed: {reply:?}"
        );
        conforms(&doc, method, path, reply);
    }

    // The bodies the document describes in detail, as the server sends them.
    let accepted = api.post("/api/workflows/wf_hello/execute", r#"{"parameters": {}}"#);
    let accepted = conforms(&doc, "POST", "/api/workflows/{id}/execute", accepted);
    let run = accepted["run_id"].as_str().expect("run_id").to_owned();
    let finished = eventually("the run to finish", || {
        let shown = api.get(&format!("/api/runs/{run}"));
        let shown = conforms(&doc, "GET", "/api/runs/{id}", shown);
        (shown["run"]["status"] == "succeeded").then_some(shown)
    });
    assert_eq!(finished["steps"][0]["name"], "greet", "{finished}");
    let log = api.get(&format!("/api/runs/{run}/logs/greet"));
    assert!(log.text.contains("hello from the server"), "{log:?}");
    conforms(&doc, "GET", "/api/runs/{id}/logs/{step}", log);
    // A finished run: nothing to cancel, once its executor is gone.
    eventually("the run's executor to end", || {
        let status = conforms(&doc, "GET", "/api/status", api.get("/api/status"));
        (status["active_runs"] == json!([])).then_some(())
    });
    let conflict = api.post(&format!("/api/runs/{run}/cancel"), "");
    assert_eq!(conflict.status, 409, "{conflict:?}");
    conforms(&doc, "POST", "/api/runs/{id}/cancel", conflict);
    let rerun = api.post(
        &format!("/api/runs/{run}/rerun"),
        r#"{"from_failed": false}"#,
    );
    conforms(&doc, "POST", "/api/runs/{id}/rerun", rerun);

    let napping = api.execute("wf_nap", "");
    eventually("the nap step to start", || {
        let shown = api.get(&format!("/api/runs/{napping}")).expect(200);
        (shown["steps"][0]["status"] == "running").then_some(())
    });
    let cancelling = api.post(&format!("/api/runs/{napping}/cancel"), "");
    assert_eq!(cancelling.status, 202, "{cancelling:?}");
    conforms(&doc, "POST", "/api/runs/{id}/cancel", cancelling);
    api.wait_finished(&napping);

    let workflows = conforms(&doc, "GET", "/api/workflows", api.get("/api/workflows"));
    assert!(workflows["total"].as_u64().unwrap() >= 2, "{workflows}");
    for query in ["", "?limit=1&offset=1", "?status=succeeded", "?full=true"] {
        let runs = api.get(&format!("/api/runs{query}"));
        let runs = conforms(&doc, "GET", "/api/runs", runs);
        assert!(
            !runs["runs"].as_array().unwrap().is_empty(),
            "{query}: {runs}"
        );
    }
    for (path, bad) in [
        ("/api/runs", "/api/runs?status=bogus"),
        ("/api/runs", "/api/runs?colour=red"),
        ("/api/workflows", "/api/workflows?limit=0"),
        ("/api/manifests", "/api/manifests?full=maybe"),
    ] {
        let reply = api.get(bad);
        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
        conforms(&doc, "GET", path, reply);
    }
    for (body, status) in [("{", 400), (r#"{"parameters": 5}"#, 422)] {
        let reply = api.post("/api/workflows/wf_hello/execute", body);
        assert_eq!(reply.status, status, "{body}: {reply:?}");
        conforms(&doc, "POST", "/api/workflows/{id}/execute", reply);
    }
    let reply = api.post_as("/api/apply", "text/plain", "{}");
    assert_eq!(reply.status, 415, "{reply:?}");
    conforms(&doc, "POST", "/api/apply", reply);
    let reply = api.post("/api/diff", r#"{"paths": ["workflows/hello.yaml"]}"#);
    assert_eq!(reply.status, 200, "{reply:?}");
    conforms(&doc, "POST", "/api/diff", reply);
}
