//! Saving manifests through the API (`POST /api/manifests`), the dry run behind the
//! dashboard's editors (`POST /api/validate`), and the custom dashboards
//! (`GET /api/dashboards`): a real server in an `init`ed project, real files.
//!
//! A valid manifest is written into its kind's directory and applied; an invalid one is
//! refused with its diagnostics and leaves no file; a git-source server writes nothing; a
//! name full of `../` gives a file inside the kind's directory, and an id that is not a slug
//! is refused.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::support::{eventually, follow_main, init_repo, project, server_url, Api, Server};

/// `(status, body)` of a JSON POST.
fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    Api::at(base).post(path, &body.to_string()).into_parts()
}

/// `(status, body)` of a GET.
fn get(base: &str, path: &str) -> (u16, Value) {
    Api::at(base).get(path).into_parts()
}

/// A two-step workflow: `build`, then `test` after it, with a typed parameter.
fn workflow(name: &str) -> Value {
    json!({
        "name": name,
        "description": "Made in the editor",
        "timeout": "10m",
        "max_parallel": 2,
        "parameters": {
            "target": {"type": "string", "required": true, "description": "What to build"},
            "retries": {"type": "number", "default": 1},
        },
        "steps": [
            {"name": "build", "command": ["echo", "building", "{{ params.target }}"]},
            {"name": "test", "depends_on": ["build"], "command": ["sh", "-c", "echo testing"]},
        ],
    })
}

/// The pointers of a list of diagnostics, sorted, each once.
fn pointers(diagnostics: &Value) -> Vec<String> {
    diagnostics
        .as_array()
        .unwrap_or_else(|| panic!("diagnostics: {diagnostics}"))
        .iter()
        .map(|d| d["pointer"].as_str().unwrap_or_default().to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Files under a directory of the project, sorted.
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn a_valid_workflow_is_validated_saved_applied_and_edited_in_its_file() {
    let project = project(&[]);
    let dir = project.path();
    let _server = Server::start(dir);
    let base = server_url(dir);

    // The dry run: valid, with the id and file saving would use; nothing written.
    let (status, checked) = post(
        &base,
        "/api/validate",
        json!({"kind": "Workflow", "manifest": workflow("Editor Flow")}),
    );
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["valid"], true, "{checked}");
    assert_eq!(checked["id"], "wf_editor-flow");
    assert_eq!(checked["file"], "workflows/editor-flow.yaml");
    assert_eq!(checked["replaces"], false);
    assert_eq!(checked["writable"], true);
    assert!(
        checked["text"]
            .as_str()
            .unwrap()
            .contains("depends_on:\n  - build"),
        "{checked}"
    );
    assert!(!dir.join("workflows/editor-flow.yaml").exists());

    // Saved: 201, the file, the object in force.
    let (status, saved) = post(
        &base,
        "/api/manifests",
        json!({"kind": "workflow", "manifest": workflow("Editor Flow")}),
    );
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["id"], "wf_editor-flow");
    assert_eq!(saved["created"], true);
    assert_eq!(saved["object"]["status"], "applied", "{saved}");
    let text = fs::read_to_string(dir.join("workflows/editor-flow.yaml")).unwrap();
    assert!(
        text.starts_with("# yaml-language-server: $schema=../schemas/workflow.json\n"),
        "{text}"
    );
    assert!(text.contains("name: Editor Flow"), "{text}");
    let (status, shown) = get(&base, "/api/workflows/wf_editor-flow");
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["spec"]["steps"][1]["depends_on"], json!(["build"]));
    assert_eq!(shown["spec"]["parameters"]["target"]["required"], true);
    assert_eq!(shown["source_file"], "workflows/editor-flow.yaml");

    // Saving the same name again is a conflict, not an overwrite.
    let (status, again) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "manifest": workflow("Editor Flow")}),
    );
    assert_eq!(status, 409, "{again}");

    // Edited in place: its file, its leading comments, 200.
    let edited_text = format!("# Owned by the QA team.\n{text}");
    fs::write(dir.join("workflows/editor-flow.yaml"), edited_text).unwrap();
    let mut changed = workflow("Editor Flow");
    changed["description"] = json!("Edited in the editor");
    let (status, replaced) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "id": "wf_editor-flow", "manifest": changed}),
    );
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["created"], false);
    let text = fs::read_to_string(dir.join("workflows/editor-flow.yaml")).unwrap();
    assert!(text.starts_with("# Owned by the QA team.\n"), "{text}");
    assert!(text.contains("description: Edited in the editor"), "{text}");
    let (_, shown) = get(&base, "/api/workflows/wf_editor-flow");
    assert_eq!(shown["description"], "Edited in the editor", "{shown}");
    // No stray temporary file.
    assert!(
        files_in(&dir.join("workflows"))
            .iter()
            .all(|f| !f.ends_with(".tmp")),
        "{:?}",
        files_in(&dir.join("workflows"))
    );
}

#[test]
fn an_invalid_manifest_is_refused_with_its_diagnostics_and_nothing_is_written() {
    let project = project(&[]);
    let dir = project.path();
    let _server = Server::start(dir);
    let base = server_url(dir);
    let before = files_in(&dir.join("workflows"));

    // A semantic error (an unknown step in depends_on) and a schema error (an unknown
    // field), each pointing into the manifest.
    let mut broken = workflow("Broken Flow");
    broken["steps"][1]["depends_on"] = json!(["biuld"]);
    broken["max_paralel"] = json!(3);
    let (status, checked) = post(
        &base,
        "/api/validate",
        json!({"kind": "Workflow", "manifest": broken.clone()}),
    );
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["valid"], false);
    assert_eq!(
        pointers(&checked["diagnostics"]),
        ["/max_paralel", "/steps/1/depends_on/0"],
        "{checked}"
    );
    let messages = checked["diagnostics"].to_string();
    assert!(messages.contains("did you mean `build`?"), "{messages}");
    assert!(
        messages.contains("did you mean `max_parallel`?"),
        "{messages}"
    );

    let (status, refused) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "manifest": broken}),
    );
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "invalid");
    assert_eq!(
        pointers(&refused["error"]["details"]["diagnostics"]),
        ["/max_paralel", "/steps/1/depends_on/0"]
    );
    assert_eq!(files_in(&dir.join("workflows")), before);
    let (status, _) = get(&base, "/api/workflows/wf_broken-flow");
    assert_eq!(status, 404);

    // An unknown agent action, a dashboard widget of no known type: the same.
    let mut unknown_action = workflow("Action Flow");
    unknown_action["steps"][0] =
        json!({"name": "build", "agent": "test_runner", "action": "run_test"});
    let (status, refused) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "manifest": unknown_action}),
    );
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `run_tests`?"),
        "{refused}"
    );
    let (status, refused) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Dashboard", "manifest": {"name": "Board", "widgets": [{"type": "pie"}]}}),
    );
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        pointers(&refused["error"]["details"]["diagnostics"]),
        ["/widgets/0/type"]
    );
    assert!(!dir.join("dashboards").exists());

    // Malformed requests: no kind, no manifest, an empty body.
    let (status, _) = post(&base, "/api/manifests", json!({"manifest": {"name": "x"}}));
    assert_eq!(status, 400);
    let (status, _) = post(
        &base,
        "/api/validate",
        json!({"kind": "Pipeline", "manifest": {}}),
    );
    assert_eq!(status, 400);
    let (status, _) = Api::at(&base).post("/api/manifests", "").into_parts();
    assert_eq!(status, 400);
}

#[test]
fn json_and_multi_document_sources_are_not_rewritten() {
    let project = project(&[(
        "workflows/pair.yaml",
        "name: First\nsteps:\n  - name: a\n    command: echo a\n---\nname: Second\nsteps:\n  - name: b\n    command: echo b\n",
    )]);
    let dir = project.path();
    let _server = Server::start(dir);
    let base = server_url(dir);
    // `init` writes workflows/api_tests.json: the API Test Suite.
    let (status, shown) = get(&base, "/api/workflows/wf_api-test-suite");
    assert_eq!(status, 200, "{shown}");
    let json_before = fs::read_to_string(dir.join("workflows/api_tests.json")).unwrap();
    let (status, refused) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "id": "wf_api-test-suite", "manifest": shown["spec"]}),
    );
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("JSON file workflows/api_tests.json"),
        "{refused}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("workflows/api_tests.json")).unwrap(),
        json_before
    );

    let pair_before = fs::read_to_string(dir.join("workflows/pair.yaml")).unwrap();
    let (status, refused) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "id": "wf_first", "manifest": {"name": "First", "steps": [{"name": "a", "command": "echo A"}]}}),
    );
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("beside other documents"),
        "{refused}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("workflows/pair.yaml")).unwrap(),
        pair_before
    );
    // An id that is in force nowhere.
    let (status, _) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "id": "wf_nothing", "manifest": workflow("Nothing")}),
    );
    assert_eq!(status, 404);
}

#[test]
fn names_and_ids_cannot_leave_the_kind_directory() {
    let project = project(&[]);
    let dir = project.path();
    let _server = Server::start(dir);
    let base = server_url(dir);

    let (status, saved) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "manifest": workflow("../../escape")}),
    );
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["file"], "workflows/escape.yaml", "{saved}");
    assert!(dir.join("workflows/escape.yaml").is_file());
    assert!(!dir.join("escape.yaml").exists());
    assert!(!dir.parent().unwrap().join("escape.yaml").exists());

    for id in ["../../etc/passwd", "wf_a/../../b", ".hidden"] {
        let (status, refused) = post(
            &base,
            "/api/manifests",
            json!({"kind": "Workflow", "id": id, "manifest": workflow("Whatever")}),
        );
        assert_eq!(status, 400, "{id}: {refused}");
        assert_eq!(refused["error"]["details"]["field"], "id", "{refused}");
    }
    // An explicit `id` that is not a slug is a schema error, and writes nothing.
    let mut odd = workflow("Odd");
    odd["id"] = json!("../odd");
    let (status, refused) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "manifest": odd}),
    );
    assert_eq!(status, 422, "{refused}");
    assert_eq!(
        pointers(&refused["error"]["details"]["diagnostics"]),
        ["/id"]
    );
    assert!(!dir.join("workflows/odd.yaml").exists());
}

#[test]
fn dashboards_are_saved_as_manifests_and_listed() {
    let project = project(&[]);
    let dir = project.path();
    let _server = Server::start(dir);
    let base = server_url(dir);
    let (_, empty) = get(&base, "/api/dashboards");
    assert_eq!(empty, json!({"dashboards": []}));

    let board = json!({
        "name": "Team Board",
        "description": "What the team watches",
        "widgets": [
            {"type": "system_metric", "title": "CPU", "options": {"metric": "cpu_percent"}},
            {"type": "runs_table", "width": 4, "options": {"status": "failed", "limit": 5}},
        ],
    });
    let (status, saved) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Dashboard", "manifest": board}),
    );
    assert_eq!(status, 201, "{saved}");
    assert_eq!(saved["id"], "dash_team-board");
    assert_eq!(saved["file"], "dashboards/team-board.yaml");
    let text = fs::read_to_string(dir.join("dashboards/team-board.yaml")).unwrap();
    assert!(
        text.starts_with("# yaml-language-server: $schema=../schemas/dashboard.json\n"),
        "{text}"
    );
    let (status, list) = get(&base, "/api/dashboards");
    assert_eq!(status, 200);
    assert_eq!(
        list["dashboards"],
        json!([{"id": "dash_team-board", "name": "Team Board", "description": "What the team watches",
                "widgets": 2, "status": "applied", "source_file": "dashboards/team-board.yaml"}])
    );
    let (status, shown) = get(&base, "/api/dashboards/dash_team-board");
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["spec"]["widgets"][1]["options"]["limit"], 5);
    let (status, missing) = get(&base, "/api/dashboards/dash_nope");
    assert_eq!(status, 404, "{missing}");

    // A dashboard file written by hand is picked up by the watcher like any manifest.
    fs::write(
        dir.join("dashboards/ops.yaml"),
        "name: Ops\nwidgets:\n  - type: alerts_table\n",
    )
    .unwrap();
    eventually("the hand-written dashboard to apply", || {
        let (_, list) = get(&base, "/api/dashboards");
        (list["dashboards"].as_array()?.len() == 2).then_some(())
    });
}

#[test]
fn a_git_source_server_validates_but_writes_nothing() {
    let repository = tempfile::tempdir().unwrap();
    init_repo(repository.path());
    let project = project(&[]);
    let dir = project.path();
    follow_main(dir, repository.path());
    let _server = Server::start(dir);
    let base = server_url(dir);
    let (_, status) = get(&base, "/api/status");
    assert_eq!(status["source"]["kind"], "git", "{status}");

    let (status, checked) = post(
        &base,
        "/api/validate",
        json!({"kind": "Workflow", "manifest": workflow("Git Flow")}),
    );
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["valid"], true, "{checked}");
    assert_eq!(checked["writable"], false);
    // References are checked against the objects in force there.
    let mut unknown = workflow("Git Flow");
    unknown["steps"][0] = json!({"name": "build", "agent": "nobody"});
    let (_, checked) = post(
        &base,
        "/api/validate",
        json!({"kind": "Workflow", "manifest": unknown}),
    );
    assert_eq!(pointers(&checked["diagnostics"]), ["/steps/0/agent"]);

    let (status, refused) = post(
        &base,
        "/api/manifests",
        json!({"kind": "Workflow", "manifest": workflow("Git Flow")}),
    );
    assert_eq!(status, 409, "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(message.contains("git-source mode"), "{message}");
    assert!(
        message.contains("commit workflows/git-flow.yaml"),
        "{message}"
    );
    assert!(
        refused["error"]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("name: Git Flow"),
        "{refused}"
    );
    assert!(!dir.join("workflows/git-flow.yaml").exists());
    assert!(!repository.path().join("workflows/git-flow.yaml").exists());
}
