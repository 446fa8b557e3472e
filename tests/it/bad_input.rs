//! Bad input end to end: the invalid-manifest corpus (`tests/fixtures/invalid/`) through
//! `orchestrator validate` and through `POST /api/validate` and `POST /api/manifests`;
//! malformed and oversized bodies on every route that reads one; path traversal in route
//! parameters, artifact and log paths, names and paths that would write outside the
//! project; shell metacharacters in workflow parameters; unicode at its edges. Each answer
//! is checked for its status and the `{"error": {code, message, details}}` shape, and that
//! nothing was written and the last good state is still served.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::support::{
    assert_error_shape, cli, edit_config, eventually, get_json, project_files, raw_request,
    server_address, write_files, Reply, Server,
};

/// A project inside a directory of its own (`<root>/project`), so that anything written
/// next to the project can be seen.
struct Nested {
    root: tempfile::TempDir,
}

impl Nested {
    fn new(files: &[(&str, &str)]) -> Nested {
        let root = tempfile::tempdir().expect("temp dir");
        let dir = root.path().join("project");
        fs::create_dir(&dir).unwrap();
        cli(&dir, &["init"]).expect_code(0);
        write_files(&dir, files);
        Nested { root }
    }

    fn dir(&self) -> PathBuf {
        self.root.path().join("project")
    }

    /// Replaces `from` with `to` in the development configuration.
    fn edit_config(&self, from: &str, to: &str) {
        edit_config(&self.dir(), from, to);
    }

    /// Nothing but the project (and the test's own `secret.txt`) in its root directory.
    #[track_caller]
    fn nothing_beside_the_project(&self) {
        let entries: Vec<String> = fs::read_dir(self.root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "secret.txt")
            .collect();
        assert_eq!(entries, ["project"], "written beside the project");
    }
}

/// Every file under `dir` whose name contains `needle`.
fn files_named(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = fs::read_dir(&current) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.file_name().unwrap().to_string_lossy().contains(needle) {
                found.push(path.clone());
            }
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found
}

/// POST with a JSON body.
fn post(address: &str, path: &str, body: &str) -> Reply {
    raw_request(
        address,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// The objects in force: kind, id, name, status, generation, content hash and spec.
fn objects_in_force(address: &str) -> Value {
    let listed = get_json(address, "/api/manifests?full=true");
    let mut records: Vec<Value> = listed["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!([
                r["kind"],
                r["id"],
                r["name"],
                r["status"],
                r["generation"],
                r["hash"],
                r["spec"]
            ])
        })
        .collect();
    records.sort_by_key(|r| r.to_string());
    json!(records)
}

/// Objects in force, project files and runs: what "nothing was lost or written" compares.
fn state(address: &str, dir: &Path) -> Value {
    json!({
        "objects": objects_in_force(address),
        "files": project_files(dir),
        "runs": get_json(address, "/api/runs?limit=1000")["total"],
    })
}

/// Asserts that two [`state`]s are the same, naming only what differs.
#[track_caller]
fn assert_same(before: &Value, after: &Value, what: &str) {
    if before == after {
        return;
    }
    let mut differences = Vec::new();
    for part in ["objects", "files", "runs"] {
        let items = |state: &Value| -> Vec<String> {
            match &state[part] {
                Value::Array(items) => items.iter().map(|i| i.to_string()).collect(),
                other => vec![other.to_string()],
            }
        };
        let (old, new) = (items(before), items(after));
        for gone in old.iter().filter(|i| !new.contains(i)) {
            differences.push(format!("{part} lost: {}", short(gone)));
        }
        for added in new.iter().filter(|i| !old.contains(i)) {
            differences.push(format!("{part} gained: {}", short(added)));
        }
    }
    panic!("{what}:\n{}", differences.join("\n"));
}

/// At most 300 characters of `text`.
fn short(text: &str) -> String {
    text.chars().take(300).collect()
}

/// The invalid corpus, sorted: (file name, bytes).
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = crate::support::repo_dir().join("tests/fixtures/invalid");
    let mut files: Vec<(String, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&path).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 20, "the corpus is there");
    files
}

#[test]
fn every_invalid_manifest_fails_validate_with_where_and_what() {
    for (name, _) in corpus() {
        let path = format!("tests/fixtures/invalid/{name}");
        let run = crate::support::orchestrator(&crate::support::repo_dir(), &["validate", &path]);
        assert_eq!(run.code, 1, "{name}:\n{}\n{}", run.stdout, run.stderr);
        // Each error names the file, line and column where it is.
        let errors = run.stdout.matches("\nerror: ").count()
            + usize::from(run.stdout.starts_with("error: "));
        assert!(errors >= 1, "{name}: {}", run.stdout);
        // Warnings (a parameter pasted into a shell script) are located the same way.
        let warnings = run.stdout.matches("\nwarning: ").count()
            + usize::from(run.stdout.starts_with("warning: "));
        let located = run
            .stdout
            .lines()
            .filter(|l| {
                l.trim_start()
                    .strip_prefix(&format!("--> {path}:"))
                    .and_then(|rest| {
                        let mut parts = rest.split([':', ' ']);
                        let line: usize = parts.next()?.parse().ok()?;
                        let column: usize = parts.next()?.parse().ok()?;
                        Some(line >= 1 && column >= 1)
                    })
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(
            located,
            errors + warnings,
            "{name}: every error and warning has file:line:column\n{}",
            run.stdout
        );

        // The same as data: every diagnostic with its place and a message.
        let run = crate::support::orchestrator(
            &crate::support::repo_dir(),
            &["validate", &path, "-o", "json"],
        );
        assert_eq!(run.code, 1, "{name}:\n{}", run.stdout);
        let report: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", run.stdout));
        let diagnostics = report["diagnostics"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {report:#}"));
        let errors: Vec<&Value> = diagnostics
            .iter()
            .filter(|d| d["severity"] == "error")
            .collect();
        assert!(!errors.is_empty(), "{name}: {report:#}");
        for error in errors {
            assert_eq!(error["file"], path.as_str(), "{name}: {error:#}");
            assert!(
                error["line"].as_u64().unwrap_or(0) >= 1,
                "{name}: {error:#}"
            );
            assert!(
                error["column"].as_u64().unwrap_or(0) >= 1,
                "{name}: {error:#}"
            );
            let message = error["message"].as_str().unwrap_or_default();
            assert!(message.len() > 15, "{name}: {error:#}");
        }
    }
}

/// What the corpus is checked against: a project with one object of each kind the corpus
/// declares, each in a YAML file of its own, so that an invalid replacement can be tried.
const KEEP_WORKFLOW: &str = "name: Keep\ndescription: the last good version\nsteps:\n  - name: one\n    command: [\"true\"]\n";
const KEEP_ALERT: &str = "name: Keep alert\ncondition: system.cpu_percent > 99\nduration: 5m\n";
const KEEP_SCHEDULE: &str = "name: Keep schedule\ncron: \"0 3 * * *\"\nworkflow: wf_keep\n";
const KEEP_TRIGGER: &str =
    "name: Keep trigger\ntype: webhook\npath: /hooks/keep\nworkflow: wf_keep\ninsecure: true\n";

/// The object of `kind` an invalid document tries to replace.
fn kept_id(kind: &str) -> Option<&'static str> {
    match kind {
        "Workflow" => Some("wf_keep"),
        "Alert" => Some("alert_keep-alert"),
        "Schedule" => Some("sch_keep-schedule"),
        "Trigger" => Some("trg_keep-trigger"),
        _ => None,
    }
}

#[test]
fn every_invalid_manifest_is_refused_by_the_api_and_nothing_is_lost() {
    let nested = Nested::new(&[
        ("workflows/keep.yaml", KEEP_WORKFLOW),
        ("alerts/keep.yaml", KEEP_ALERT),
        ("schedules/keep.yaml", KEEP_SCHEDULE),
        ("triggers/keep.yaml", KEEP_TRIGGER),
    ]);
    let dir = nested.dir();
    let _server = Server::start(&dir);
    let address = server_address(&dir);
    for kind in ["Workflow", "Alert", "Schedule", "Trigger"] {
        let id = kept_id(kind).unwrap();
        let listed = get_json(&address, "/api/manifests");
        let found = listed["objects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["id"] == id && o["status"] == "applied");
        assert!(found, "{id} is applied: {listed:#}");
    }
    let mut before = state(&address, &dir);
    let mut refused_documents = 0;
    let mut unparsed_files = 0;
    for (name, bytes) in corpus() {
        let documents: Option<Vec<Value>> = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| documents_of(&name, text));
        let Some(documents) = documents else {
            // Not a document the API could carry: sent as the body itself, it is refused
            // as what it is.
            unparsed_files += 1;
            for route in ["/api/validate", "/api/manifests"] {
                let answer = raw_request(
                    &address,
                    "POST",
                    route,
                    &[("Content-Type", "application/json")],
                    &bytes,
                );
                let error = answer.error(400, "malformed_json");
                assert!(
                    error["message"]
                        .as_str()
                        .unwrap()
                        .contains("not valid JSON"),
                    "{name} {route}: {error:#}"
                );
            }
            continue;
        };
        let mut refused_here = 0;
        for (index, document) in documents.iter().enumerate() {
            let what = format!("{name} document {index}");
            let kind = document
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let body = json!({"manifest": document});
            // Validate: either a clear refusal, or the diagnostics with their places.
            let answer = post(&address, "/api/validate", &body.to_string());
            let valid = if answer.status == 200 {
                let checked = answer.json(200);
                if checked["valid"] == false {
                    let diagnostics = checked["diagnostics"].as_array().unwrap();
                    assert!(!diagnostics.is_empty(), "{what}: {checked:#}");
                    for diagnostic in diagnostics.iter().filter(|d| d["severity"] == "error") {
                        assert!(
                            diagnostic["line"].as_u64().unwrap_or(0) >= 1,
                            "{what}: {diagnostic:#}"
                        );
                        assert!(
                            diagnostic["column"].as_u64().unwrap_or(0) >= 1,
                            "{what}: {diagnostic:#}"
                        );
                        assert!(
                            diagnostic["message"].as_str().unwrap_or_default().len() > 15,
                            "{what}: {diagnostic:#}"
                        );
                    }
                }
                checked["valid"] == true
            } else {
                answer.client_error();
                false
            };
            if valid {
                // Valid alone (one of two documents that clash): not this test's case.
                continue;
            }
            refused_here += 1;
            // Saving it as a new object: refused, with the reasons, nothing written.
            let answer = post(&address, "/api/manifests", &body.to_string());
            let error = answer.client_error();
            if answer.status == 422 {
                assert_eq!(error["code"], "invalid", "{what}: {error:#}");
                let diagnostics = error["details"]["diagnostics"].as_array().unwrap();
                assert!(!diagnostics.is_empty(), "{what}: {error:#}");
                assert!(
                    error["message"]
                        .as_str()
                        .unwrap()
                        .contains("nothing was written"),
                    "{what}: {error:#}"
                );
            }
            // Saving it over the last good object of its kind: refused, that object stays.
            if let Some(id) = kept_id(&kind) {
                let body = json!({"manifest": document, "id": id});
                post(&address, "/api/manifests", &body.to_string()).client_error();
            }
            assert_same(
                &before,
                &state(&address, &dir),
                &format!("{what} changed something"),
            );
        }
        if refused_here == 0 {
            // Documents valid one by one that clash with each other (two with one id):
            // the first saved, the next is refused for the clash, the first kept.
            assert!(documents.len() > 1, "{name}: no document of it was refused");
            let first = json!({"manifest": documents[0]});
            let saved = post(&address, "/api/manifests", &first.to_string()).json(201);
            let id = saved["id"].as_str().unwrap().to_owned();
            let kept = state(&address, &dir);
            for document in &documents[1..] {
                let next = json!({"manifest": document});
                let error =
                    post(&address, "/api/manifests", &next.to_string()).error(409, "conflict");
                assert!(
                    error["message"].as_str().unwrap().contains(&id),
                    "{name}: {error:#}"
                );
            }
            assert_same(
                &kept,
                &state(&address, &dir),
                &format!("{name}: the clash changed something"),
            );
            before = kept;
            refused_here = documents.len() - 1;
        }
        refused_documents += refused_here;
    }
    assert!(refused_documents >= 15, "{refused_documents}");
    assert!(unparsed_files >= 3, "{unparsed_files}");
    // The last good versions are served as they were.
    let keep = get_json(&address, "/api/workflows/wf_keep");
    assert_eq!(keep["status"], "applied", "{keep:#}");
    assert_eq!(
        keep["spec"]["description"], "the last good version",
        "{keep:#}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("workflows/keep.yaml")).unwrap(),
        KEEP_WORKFLOW
    );
    nested.nothing_beside_the_project();
}

/// The documents of a corpus file as JSON values, when it parses as YAML (or JSON) at all.
fn documents_of(name: &str, text: &str) -> Option<Vec<Value>> {
    if name.ends_with(".json") {
        return serde_json::from_str(text).ok().map(|v| vec![v]);
    }
    serde_saphyr::from_multiple::<Value>(text).ok()
}

/// The routes with a request body, from the OpenAPI document (webhooks left out: they
/// answer for their signatures first).
fn routes_with_bodies(address: &str) -> Vec<String> {
    let document = get_json(address, "/api/openapi.json");
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        if path.starts_with("/hooks/") {
            continue;
        }
        if let Some(post) = item.get("post") {
            if post.get("requestBody").is_some() {
                routes.push(path.clone());
            }
        }
    }
    routes
}

/// A route's template with real ids in it.
fn concrete(template: &str, run: &str) -> String {
    template
        .replace("/api/workflows/{id}", "/api/workflows/wf_keep")
        .replace("/api/runs/{id}", &format!("/api/runs/{run}"))
        .replace(
            "/api/scheduler/jobs/{id}",
            "/api/scheduler/jobs/sch_nightly-api-tests",
        )
        .replace("{name}", "shell")
}

/// Starts `wf_keep` and waits for it to finish; returns the run id.
fn finished_run(address: &str) -> String {
    let run = post(address, "/api/workflows/wf_keep/execute", "").json(202)["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("the run to finish", || {
        let shown = get_json(address, &format!("/api/runs/{run}"));
        (shown["run"]["status"] == "succeeded").then_some(())
    });
    run
}

#[test]
fn malformed_bodies_are_refused_as_json_errors_on_every_route() {
    let nested = Nested::new(&[("workflows/keep.yaml", KEEP_WORKFLOW)]);
    let dir = nested.dir();
    let _server = Server::start(&dir);
    let address = server_address(&dir);
    let run = finished_run(&address);
    let routes = routes_with_bodies(&address);
    for expected in [
        "/api/workflows/{id}/execute",
        "/api/manifests",
        "/api/validate",
        "/api/apply",
        "/api/silences",
    ] {
        assert!(
            routes.iter().any(|r| r == expected),
            "{expected} not in {routes:?}"
        );
    }
    let deep = "[".repeat(5000) + &"]".repeat(5000);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "truncated",
            "application/json",
            b"{\"parameters\": {".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "a lone brace",
            "application/json",
            b"}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "trailing garbage",
            "application/json",
            b"{} x".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "single quotes",
            "application/json",
            b"{'paths': []}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "invalid UTF-8",
            "application/json",
            b"{\"name\": \"caf\xe9\"}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "a raw NUL",
            "application/json",
            b"{\"name\": \"a\x00b\"}".to_vec(),
            400,
            "malformed_json",
        ),
        (
            "a lone surrogate",
            "application/json",
            br#"{"name": "\ud800"}"#.to_vec(),
            400,
            "malformed_json",
        ),
        (
            "deep nesting",
            "application/json",
            deep.into_bytes(),
            400,
            "malformed_json",
        ),
        (
            "an array",
            "application/json",
            b"[1, 2]".to_vec(),
            422,
            "invalid_body",
        ),
        (
            "a string",
            "application/json",
            b"\"text\"".to_vec(),
            422,
            "invalid_body",
        ),
        (
            "a number",
            "application/json",
            b"42".to_vec(),
            422,
            "invalid_body",
        ),
        (
            "null",
            "application/json",
            b"null".to_vec(),
            422,
            "invalid_body",
        ),
        (
            "an unknown field",
            "application/json",
            b"{\"surprise\": true}".to_vec(),
            422,
            "invalid_body",
        ),
        (
            "text/plain",
            "text/plain",
            b"{}".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "a form",
            "application/x-www-form-urlencoded",
            b"paths=..%2F..".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            "YAML",
            "application/yaml",
            b"kind: Workflow\n".to_vec(),
            415,
            "unsupported_media_type",
        ),
    ];
    // Fields of the wrong type, per route.
    let wrong_types: &[(&str, &str)] = &[
        ("/api/workflows/{id}/execute", r#"{"parameters": [1]}"#),
        (
            "/api/workflows/{id}/execute",
            r#"{"parameters": "environment=staging"}"#,
        ),
        ("/api/runs/{id}/rerun", r#"{"from_failed": "yes"}"#),
        ("/api/manifests", r#"{"kind": 5, "manifest": {}}"#),
        (
            "/api/manifests",
            r#"{"kind": "Workflow", "manifest": {}, "id": 7}"#,
        ),
        ("/api/validate", r#"{"kind": ["Workflow"], "manifest": {}}"#),
        (
            "/api/scheduler/jobs",
            r#"{"name": 5, "schedule": "0 2 * * *", "workflow_id": "wf_keep"}"#,
        ),
        (
            "/api/scheduler/jobs",
            r#"{"name": "x", "schedule": 5, "workflow_id": "wf_keep"}"#,
        ),
        ("/api/diff", r#"{"paths": "workflows"}"#),
        ("/api/apply", r#"{"paths": [], "prune": "yes"}"#),
        ("/api/sync", r#"{"prune": 1}"#),
        ("/api/silences", r#"{"comment": 5}"#),
    ];
    let before = state(&address, &dir);
    let mut checked = 0;
    for template in &routes {
        let path = concrete(template, &run);
        for (what, content_type, body, status, code) in &cases {
            let answer = raw_request(
                &address,
                "POST",
                &path,
                &[("Content-Type", content_type)],
                body,
            );
            assert_eq!(answer.status, *status, "{path} with {what}: {answer:#?}");
            let error = answer.error(*status, code);
            assert!(!error["message"].as_str().unwrap().is_empty());
            checked += 1;
        }
    }
    for (template, body) in wrong_types {
        assert!(routes.iter().any(|r| r == template), "{template}");
        let path = concrete(template, &run);
        let answer = post(&address, &path, body);
        let error = answer.client_error();
        assert!(
            matches!(answer.status, 400 | 422),
            "{path} with {body}: {answer:#?}"
        );
        assert!(error["message"].as_str().unwrap().len() > 15, "{error:#}");
        checked += 1;
    }
    assert_eq!(checked, routes.len() * cases.len() + wrong_types.len());
    assert_same(
        &before,
        &state(&address, &dir),
        "a refused body changed something",
    );
    nested.nothing_beside_the_project();
}

#[test]
fn oversized_bodies_are_refused_with_413_on_every_route() {
    let nested = Nested::new(&[("workflows/keep.yaml", KEEP_WORKFLOW)]);
    nested.edit_config("  port: 8080\n", "  port: 8080\n  max_body_bytes: 2048\n");
    let dir = nested.dir();
    let _server = Server::start(&dir);
    let address = server_address(&dir);
    let run = finished_run(&address);
    let routes = routes_with_bodies(&address);
    let before = state(&address, &dir);
    let big = json!({"manifest": {"name": "Big", "description": "x".repeat(8192)}}).to_string();
    for template in &routes {
        let path = concrete(template, &run);
        let answer = raw_request(
            &address,
            "POST",
            &path,
            &[("Content-Type", "application/json")],
            big.as_bytes(),
        );
        let error = answer.error(413, "payload_too_large");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("max_body_bytes"),
            "{path}: {error:#}"
        );
        assert_eq!(
            error["details"]["max_body_bytes"], 2048,
            "{path}: {error:#}"
        );
        // Without a length: cut off as it is read.
        let mut chunked = Vec::new();
        for _ in 0..4 {
            chunked.extend_from_slice(format!("{:x}\r\n", 1024).as_bytes());
            chunked.extend_from_slice(&[b' '; 1024]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let answer = raw_request(
            &address,
            "POST",
            &path,
            &[
                ("Content-Type", "application/json"),
                ("Transfer-Encoding", "chunked"),
            ],
            &chunked,
        );
        answer.error(413, "payload_too_large");
    }
    assert_same(
        &before,
        &state(&address, &dir),
        "an oversized body changed something",
    );
    // Under the limit the same route works.
    let small = json!({"manifest": {"name": "Small", "steps": [{"name": "a", "command": ["true"]}]}, "kind": "Workflow"});
    let checked = post(&address, "/api/validate", &small.to_string()).json(200);
    assert_eq!(checked["valid"], true, "{checked:#}");
}

#[test]
fn path_traversal_is_refused_and_nothing_is_written_outside() {
    let nested = Nested::new(&[("workflows/keep.yaml", KEEP_WORKFLOW)]);
    let dir = nested.dir();
    fs::write(nested.root.path().join("secret.txt"), "outside the project").unwrap();
    let _server = Server::start(&dir);
    let address = server_address(&dir);
    // A run with a report (an artifact) and step logs.
    let started = post(&address, "/api/workflows/wf_api-test-suite/execute", "").json(202);
    let run = started["run_id"].as_str().unwrap().to_owned();
    let shown = eventually("the run to finish", || {
        let shown = get_json(&address, &format!("/api/runs/{run}"));
        (shown["run"]["status"] == "succeeded").then_some(shown)
    });
    let artifact = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["artifacts"].as_array().cloned().unwrap_or_default())
        .next()
        .and_then(|a| a.as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("the run recorded an artifact: {shown:#}"));
    let served = raw_request(
        &address,
        "GET",
        &format!("/api/runs/{run}/artifacts/{artifact}"),
        &[],
        b"",
    );
    assert_eq!(served.status, 200, "{served:#?}");

    let index = format!("%00by-workflow%00wf_api-test-suite%00{run}");
    // (path, acceptable statuses)
    let reads: Vec<(String, &[u16])> = vec![
        (
            format!("/api/runs/{run}/artifacts/../../../secret.txt"),
            &[400],
        ),
        (
            format!("/api/runs/{run}/artifacts/..%2f..%2f..%2fsecret.txt"),
            &[400],
        ),
        (
            format!("/api/runs/{run}/artifacts/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt"),
            &[400],
        ),
        (
            format!("/api/runs/{run}/artifacts/reports/..%2f..%2f..%2fsecret.txt"),
            &[400],
        ),
        (
            format!("/api/runs/{run}/artifacts//etc/passwd"),
            &[400, 404],
        ),
        (
            format!("/api/runs/{run}/artifacts/%2fetc%2fpasswd"),
            &[400, 404],
        ),
        (
            format!("/api/runs/{run}/artifacts/{artifact}%00.txt"),
            &[400, 404],
        ),
        (
            format!("/api/runs/{run}/artifacts/config%2fdevelopment.yaml"),
            &[404],
        ),
        (format!("/api/runs/{run}/artifacts/%ff%fe"), &[400]),
        (
            format!("/api/runs/{run}/logs/..%2f..%2f..%2fsecret.txt"),
            &[404],
        ),
        (
            format!("/api/runs/{run}/logs/../../../../secret.txt"),
            &[404],
        ),
        (format!("/api/runs/{run}/logs/run_tests%00"), &[404]),
        ("/api/runs/..%2f..%2fsecret.txt".to_owned(), &[404]),
        ("/api/runs/..%2f..%2fsecret.txt/logs/x".to_owned(), &[404]),
        (format!("/api/runs/{index}"), &[404]),
        (format!("/api/runs/{index}/logs/setup"), &[404]),
        (format!("/api/runs/{index}/artifacts/{artifact}"), &[404]),
        (format!("/api/runs/{run}%00"), &[404]),
        ("/api/runs/%00".to_owned(), &[404]),
        ("/api/workflows/..%2f..%2fsecret.txt".to_owned(), &[404]),
        ("/api/workflows/%00".to_owned(), &[404]),
        ("/api/workflows/wf_keep%00/metrics".to_owned(), &[404]),
        ("/api/agents/..%2f..%2fsecret.txt".to_owned(), &[404]),
        ("/api/triggers/..%2f..%2fsecret.txt".to_owned(), &[404]),
        (
            "/api/triggers/..%2f..%2fsecret.txt/deliveries".to_owned(),
            &[404],
        ),
        ("/api/dashboards/..%2f..%2fsecret.txt".to_owned(), &[404]),
        ("/api/alerts/..%2f..%2fsecret.txt".to_owned(), &[404]),
        ("/assets/../../secret.txt".to_owned(), &[404]),
        ("/assets/..%2f..%2f..%2fsecret.txt".to_owned(), &[404]),
        ("/assets/%2e%2e/%2e%2e/Cargo.toml".to_owned(), &[404]),
        ("/api/runs?workflow=..%2f..%2fsecret.txt".to_owned(), &[200]),
        ("/api/runs?workflow=%00by-workflow%00".to_owned(), &[200]),
    ];
    for (path, statuses) in &reads {
        let answer = raw_request(&address, "GET", path, &[], b"");
        assert!(statuses.contains(&answer.status), "GET {path}: {answer:#?}");
        assert!(
            !answer.text.contains("outside the project"),
            "GET {path}: {answer:#?}"
        );
        if answer.status != 200 {
            answer.client_error();
        } else {
            assert_eq!(answer.json(200)["total"], 0, "GET {path}");
        }
    }
    let before = state(&address, &dir);
    let writes: Vec<(String, String, &[u16])> = vec![
        (
            "/api/agents/..%2f..%2fsecret.txt/stop".into(),
            String::new(),
            &[404],
        ),
        ("/api/agents/shell%00/stop".into(), String::new(), &[404]),
        (
            "/api/runs/..%2f..%2fsecret.txt/cancel".into(),
            String::new(),
            &[404],
        ),
        (format!("/api/runs/{index}/rerun"), String::new(), &[404]),
        (format!("/api/runs/{index}/cancel"), String::new(), &[404]),
        (
            "/api/scheduler/jobs/..%2f..%2fsecret.txt/pause".into(),
            String::new(),
            &[404],
        ),
        (
            "/api/workflows/..%2f..%2fsecret.txt/execute".into(),
            String::new(),
            &[404],
        ),
        ("/hooks/../../secret.txt".into(), "{}".into(), &[404]),
        ("/hooks/..%2f..%2fsecret.txt".into(), "{}".into(), &[404]),
        (
            "/api/silences/..%2f..%2fsecret.txt".into(),
            String::new(),
            &[404],
        ),
        (
            "/api/apply".into(),
            r#"{"paths": ["../secret.txt"]}"#.into(),
            &[400],
        ),
        (
            "/api/apply".into(),
            r#"{"paths": ["workflows/../../secret.txt"]}"#.into(),
            &[400],
        ),
        ("/api/diff".into(), r#"{"paths": ["/etc"]}"#.into(), &[400]),
        (
            "/api/sync".into(),
            r#"{"paths": ["%2e%2e/secret.txt"]}"#.into(),
            &[404],
        ),
        (
            "/api/apply".into(),
            r#"{"paths": ["workflows\u0000/keep.yaml"]}"#.into(),
            &[400, 404],
        ),
        (
            "/api/manifests".into(),
            json!({"kind": "Workflow", "id": "../../secret", "manifest": {"name": "x"}})
                .to_string(),
            &[400],
        ),
        (
            "/api/manifests".into(),
            json!({"kind": "Workflow", "id": "wf_keep/../../x", "manifest": {"name": "x"}})
                .to_string(),
            &[400],
        ),
        (
            "/api/manifests".into(),
            json!({"kind": "Workflow", "id": "wf_keep\u{0}", "manifest": {"name": "x"}})
                .to_string(),
            &[400],
        ),
        (
            "/api/manifests".into(),
            json!({"kind": "../workflows", "manifest": {"name": "x"}}).to_string(),
            &[400],
        ),
        (
            "/api/validate".into(),
            json!({"kind": "Workflow", "id": "/etc/passwd", "manifest": {"name": "x"}}).to_string(),
            &[400],
        ),
    ];
    for (path, body, statuses) in &writes {
        let method = if path.starts_with("/api/silences/") {
            "DELETE"
        } else {
            "POST"
        };
        let answer = raw_request(
            &address,
            method,
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert!(
            statuses.contains(&answer.status),
            "{method} {path} {body}: {answer:#?}"
        );
        answer.client_error();
    }
    assert_same(
        &before,
        &state(&address, &dir),
        "a refused request changed something",
    );

    // Names that would make file names leaving the project: the file is made from a slug,
    // inside the kind's directory, or the manifest is refused.
    let hostile_names = [
        "../../../outside-pwn",
        "..\\..\\outside-pwn",
        "/tmp/outside-pwn",
        "workflows/../../outside-pwn",
        "%2e%2e%2foutside-pwn",
        ".outside-pwn",
        "outside-pwn\u{0}.yaml",
    ];
    for (i, name) in hostile_names.iter().enumerate() {
        let manifest = json!({"kind": "Workflow", "manifest": {
            "name": name, "steps": [{"name": "a", "command": ["true"]}]}});
        let answer = post(&address, "/api/manifests", &manifest.to_string());
        if answer.status == 201 {
            let saved = answer.json(201);
            let file = saved["file"].as_str().unwrap();
            let components: Vec<_> = Path::new(file).components().collect();
            assert_eq!(components.len(), 2, "{name}: {saved:#}");
            assert_eq!(components[0].as_os_str(), "workflows", "{name}: {saved:#}");
            assert!(
                matches!(components[1], std::path::Component::Normal(_)),
                "{name}: {saved:#}"
            );
            assert!(dir.join(file).is_file(), "{name}: {saved:#}");
            // The name is kept exactly as given.
            assert_eq!(saved["name"], *name, "{name}: {saved:#}");
        } else {
            answer.client_error();
        }
        // A schedule by the same name through the guide's route.
        let job = json!({"name": format!("{name} {i}"), "schedule": "0 2 * * *", "workflow_id": "wf_keep"});
        let answer = post(&address, "/api/scheduler/jobs", &job.to_string());
        if answer.status == 201 {
            let created = answer.json(201);
            let id = created["id"].as_str().unwrap();
            assert!(id.starts_with("sch_") && !id.contains('/'), "{created:#}");
        } else {
            answer.client_error();
        }
    }
    // Nothing landed beside the project, under /tmp, or anywhere but the kind directories.
    nested.nothing_beside_the_project();
    assert_eq!(
        fs::read_to_string(nested.root.path().join("secret.txt")).unwrap(),
        "outside the project"
    );
    assert!(!Path::new("/tmp/outside-pwn").exists());
    assert!(!Path::new("/tmp/outside-pwn.yaml").exists());
    for found in files_named(&dir, "outside-pwn") {
        let relative = found
            .strip_prefix(&dir)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert!(
            relative.starts_with("workflows/") || relative.starts_with("schedules/"),
            "{relative}"
        );
    }
    // The original is untouched.
    let keep = get_json(&address, "/api/workflows/wf_keep");
    assert_eq!(keep["spec"]["description"], "the last good version");
}

/// A workflow whose parameters reach its steps as an argv element and as an environment
/// variable used by a shell, and a typed one.
const INJECT: &str = r#"name: Inject
parameters:
  target: {type: string, required: true}
  count: {type: integer, default: 1}
  flag: {type: boolean, default: false}
steps:
  - name: argv
    command: ["printf", "[%s]\n", "{{ params.target }}"]
  - name: env
    command: ["sh", "-c", "printf '[%s]\n' \"$ORCHESTRATOR_PARAM_TARGET\""]
  - name: typed
    command: ["printf", "[%s]\n", "{{ params.count }}"]
"#;

#[test]
fn parameters_with_shell_metacharacters_stay_data() {
    let nested = Nested::new(&[("workflows/inject.yaml", INJECT)]);
    let dir = nested.dir();
    let _server = Server::start(&dir);
    let address = server_address(&dir);
    let root = nested.root.path().display().to_string();
    let pwned = format!("{root}/pwned");
    let payloads = [
        "$(touch pwned)".to_owned(),
        format!("$(touch {pwned})"),
        format!("`touch {pwned}`"),
        format!("; touch {pwned}"),
        format!("x; touch {pwned}; echo"),
        format!("| touch {pwned}"),
        format!("&& touch {pwned}"),
        format!("x\ntouch {pwned}\n"),
        format!("' ; touch {pwned} ; '"),
        format!("\" ; touch {pwned} ; \""),
        format!("$(printf %s {pwned} | xargs touch)"),
        "${IFS}touch${IFS}pwned".to_owned(),
        "> pwned".to_owned(),
        "{{ params.count }}".to_owned(),
        "$ORCHESTRATOR_PARAM_COUNT".to_owned(),
        "-n".to_owned(),
        "%s%s%s%n".to_owned(),
        "\u{0}after-nul".to_owned(),
    ];
    for payload in &payloads {
        let body = json!({"parameters": {"target": payload}});
        let answer = post(
            &address,
            "/api/workflows/wf_inject/execute",
            &body.to_string(),
        );
        if payload.contains('\u{0}') {
            // A NUL cannot be an argument: refused before anything runs, or the step fails.
            if answer.status != 202 {
                answer.client_error();
                continue;
            }
        }
        let run = answer.json(202)["run_id"].as_str().unwrap().to_owned();
        let shown = eventually("the run to finish", || {
            let shown = get_json(&address, &format!("/api/runs/{run}"));
            let status = shown["run"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            (status != "queued" && status != "running").then_some(shown)
        });
        if payload.contains('\u{0}') {
            assert_ne!(shown["run"]["status"], "succeeded", "{shown:#}");
            continue;
        }
        assert_eq!(
            shown["run"]["status"], "succeeded",
            "{payload:?}: {shown:#}"
        );
        assert_eq!(shown["run"]["parameters"]["target"], payload.as_str());
        // Exactly the text, as one argument, by both ways.
        for step in ["argv", "env"] {
            let log = raw_request(
                &address,
                "GET",
                &format!("/api/runs/{run}/logs/{step}"),
                &[],
                b"",
            );
            assert_eq!(log.status, 200, "{log:#?}");
            assert!(
                log.text.contains(&format!("[{payload}]\n")),
                "{payload:?} in {step}: {:?}",
                log.text
            );
        }
        let log = raw_request(
            &address,
            "GET",
            &format!("/api/runs/{run}/logs/typed"),
            &[],
            b"",
        );
        assert!(log.text.contains("[1]\n"), "{:?}", log.text);
    }
    assert!(!Path::new(&pwned).exists(), "a parameter ran as a command");
    assert!(
        files_named(nested.root.path(), "pwned").is_empty(),
        "a parameter ran as a command"
    );

    // Types are checked before anything runs.
    let before = get_json(&address, "/api/runs?limit=1000")["total"].clone();
    for (what, parameters, expected) in [
        (
            "an integer as text",
            json!({"target": "x", "count": "1; touch pwned"}),
            "count",
        ),
        (
            "an integer as a float",
            json!({"target": "x", "count": 1.5}),
            "count",
        ),
        (
            "a boolean as text",
            json!({"target": "x", "flag": "true; rm -rf /"}),
            "flag",
        ),
        (
            "a string as an array",
            json!({"target": ["$(touch pwned)"]}),
            "target",
        ),
        (
            "a string as an object",
            json!({"target": {"$(touch pwned)": 1}}),
            "target",
        ),
        (
            "an unknown parameter",
            json!({"target": "x", "evil": "$(touch pwned)"}),
            "evil",
        ),
        ("a missing one", json!({"count": 2}), "target"),
    ] {
        let body = json!({"parameters": parameters});
        let answer = post(
            &address,
            "/api/workflows/wf_inject/execute",
            &body.to_string(),
        );
        let error = answer.error(422, "invalid");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(expected), "{what}: {message}");
    }
    assert_eq!(get_json(&address, "/api/runs?limit=1000")["total"], before);
    assert!(files_named(nested.root.path(), "pwned").is_empty());
}

#[test]
fn unicode_names_round_trip_exactly_or_are_refused_clearly() {
    let nested = Nested::new(&[("workflows/keep.yaml", KEEP_WORKFLOW)]);
    let dir = nested.dir();
    let _server = Server::start(&dir);
    let address = server_address(&dir);
    let texts = [
        "Rocket 🚀 suite 👩‍💻",
        "اختبار الواجهة",
        "עברית mixed with English",
        "Cafe\u{301} combining",
        "Zero\u{200b}width\u{200d}joiners",
        "\u{feff}Byte order mark",
        "Right\u{202e}to-left override",
        "Ｆｕｌｌｗｉｄｔｈ",
        "日本語のテスト",
        "Ǆemal ﬁ ligature",
    ];
    let mut accepted = 0;
    for (i, text) in texts.iter().enumerate() {
        let manifest = json!({"kind": "Workflow", "manifest": {
            "name": text, "description": format!("{text} / {i}"),
            "steps": [{"name": "say", "command": ["printf", "%s", text]}]}});
        let answer = post(&address, "/api/manifests", &manifest.to_string());
        if answer.status != 201 {
            let error = answer.client_error();
            assert!(
                error["message"].as_str().unwrap().len() > 15,
                "{text:?}: {error:#}"
            );
            continue;
        }
        accepted += 1;
        let saved = answer.json(201);
        let id = saved["id"].as_str().unwrap().to_owned();
        // Served exactly as sent.
        let shown = get_json(&address, &format!("/api/workflows/{}", percent(&id)));
        assert_eq!(shown["name"], *text, "{shown:#}");
        assert_eq!(
            shown["spec"]["description"],
            format!("{text} / {i}"),
            "{shown:#}"
        );
        // The file holds the same text.
        let file = fs::read_to_string(dir.join(saved["file"].as_str().unwrap())).unwrap();
        let parsed: Value = serde_saphyr::from_str(&file).unwrap();
        assert_eq!(parsed["name"], *text, "{file}");
        // A run prints the bytes unchanged.
        let run = post(
            &address,
            &format!("/api/workflows/{}/execute", percent(&id)),
            "",
        )
        .json(202)["run_id"]
            .as_str()
            .unwrap()
            .to_owned();
        eventually("the run to finish", || {
            let shown = get_json(&address, &format!("/api/runs/{run}"));
            (shown["run"]["status"] == "succeeded").then_some(())
        });
        let log = raw_request(
            &address,
            "GET",
            &format!("/api/runs/{run}/logs/say"),
            &[],
            b"",
        );
        assert_eq!(log.text, *text);
        // And the object can be edited through its id.
        let edit = json!({"kind": "Workflow", "id": id, "manifest": {
            "name": text, "description": "edited",
            "steps": [{"name": "say", "command": ["printf", "%s", text]}]}});
        let edited = post(&address, "/api/manifests", &edit.to_string()).json(200);
        assert_eq!(edited["id"], id.as_str(), "{edited:#}");
        let shown = get_json(&address, &format!("/api/workflows/{}", percent(&id)));
        assert_eq!(shown["spec"]["description"], "edited", "{shown:#}");
    }
    assert!(accepted >= 8, "{accepted} of {} accepted", texts.len());

    // Long names: refused with the limit, or saved in a file whose name fits; never a
    // failure to write the file.
    for (i, name) in [
        "a".repeat(201),
        "é".repeat(200),
        "🚀".repeat(200),
        "語".repeat(150),
    ]
    .iter()
    .enumerate()
    {
        let before = state(&address, &dir);
        let manifest = json!({"kind": "Workflow", "manifest": {
            "name": name, "steps": [{"name": "a", "command": ["true"]}]}});
        let answer = post(&address, "/api/manifests", &manifest.to_string());
        if answer.status == 201 {
            let saved = answer.json(201);
            assert_eq!(saved["name"], name.as_str());
            let shown = get_json(
                &address,
                &format!("/api/workflows/{}", percent(saved["id"].as_str().unwrap())),
            );
            assert_eq!(shown["name"], name.as_str());
            assert!(
                dir.join(saved["file"].as_str().unwrap()).is_file(),
                "{saved:#}"
            );
        } else {
            let error = answer.client_error();
            assert!(error["message"].as_str().unwrap().len() > 15, "{error:#}");
            assert_same(
                &before,
                &state(&address, &dir),
                "a refused long name changed something",
            );
        }
        let before = state(&address, &dir);
        let job = json!({"name": name, "schedule": "0 2 * * *", "workflow_id": "wf_keep"});
        let answer = post(&address, "/api/scheduler/jobs", &job.to_string());
        if answer.status == 201 {
            let created = answer.json(201);
            assert_eq!(created["name"], name.as_str(), "{i}");
            assert!(
                dir.join(created["file"].as_str().unwrap()).is_file(),
                "{created:#}"
            );
        } else {
            answer.client_error();
            assert_same(
                &before,
                &state(&address, &dir),
                "a refused long name changed something",
            );
        }
    }

    // Ids in paths: unknown unicode ids are 404; bytes that are not UTF-8 are 400.
    raw_request(&address, "GET", "/api/workflows/wf_%F0%9F%9A%80", &[], b"")
        .error(404, "not_found");
    raw_request(&address, "GET", "/api/workflows/wf_%FF%FE", &[], b"").error(400, "bad_request");
    raw_request(
        &address,
        "POST",
        "/api/workflows/wf_%C0%AF/execute",
        &[("Content-Type", "application/json")],
        b"",
    )
    .error(400, "bad_request");
    // A manifest file that is not UTF-8, dropped into the project: reported, the rest stays.
    let before = objects_in_force(&address);
    fs::write(
        dir.join("workflows/latin1.yaml"),
        b"name: caf\xe9\nsteps: []\n",
    )
    .unwrap();
    let synced = post(&address, "/api/sync", "").json(200);
    let text = synced.to_string();
    assert!(text.contains("workflows/latin1.yaml"), "{synced:#}");
    assert!(text.contains("UTF-8"), "{synced:#}");
    assert_eq!(objects_in_force(&address), before);
}

/// Percent-encodes everything but unreserved ASCII.
fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn the_error_shape_helper_rejects_other_shapes() {
    // The checks above rest on this one: a body with a stray field or a missing one fails.
    for bad in [
        json!({"error": {"code": "x", "message": "m"}}),
        json!({"error": {"code": "x", "message": "m", "details": null, "extra": 1}}),
        json!({"error": {"code": "x", "message": "", "details": null}}),
        json!({"error": "text"}),
        json!({"error": {"code": "x", "message": "m", "details": null}, "more": 1}),
    ] {
        let result = std::panic::catch_unwind(|| assert_error_shape(&bad, "bad"));
        assert!(result.is_err(), "{bad} passed");
    }
    assert_error_shape(
        &json!({"error": {"code": "x", "message": "m", "details": null}}),
        "good",
    );
}
