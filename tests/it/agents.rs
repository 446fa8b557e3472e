//! Exec plugin agents for real: the Python `file_checks` example from examples/agents/ is
//! installed into an initialised project, its actions run as steps, outputs flow from one
//! step to the next, its stderr lands in the agent log, and failures carry its message.
//! Needs `python3` on PATH.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::support::{orchestrator, project, repo_dir, run_id, show, step, temp_project};

const EXAMPLE: &str = "examples/agents/file_checks";

/// An initialised project with the plugin installed as a user would: the script in
/// `plugins/`, the example's Agent manifest in `agents/` with its command pointed there.
fn project_with_plugin() -> tempfile::TempDir {
    let project = project(&[]);
    let dir = project.path();
    let example = repo_dir().join(EXAMPLE);
    fs::create_dir_all(dir.join("plugins")).unwrap();
    fs::copy(
        example.join("file_checks.py"),
        dir.join("plugins/file_checks.py"),
    )
    .unwrap();
    let manifest = fs::read_to_string(example.join("agent.yaml")).unwrap();
    let shipped = format!("\"{EXAMPLE}/file_checks.py\"");
    assert!(manifest.contains(&shipped), "{manifest}");
    fs::write(
        dir.join("agents/file_checks.yaml"),
        manifest.replace(&shipped, "\"plugins/file_checks.py\""),
    )
    .unwrap();
    project
}

fn apply_workflow(dir: &Path, file: &str, text: &str) {
    fs::write(dir.join("workflows").join(file), text).unwrap();
    orchestrator(dir, &["apply"]).expect_code(0);
}

fn agent_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("logs/agents/file_checks.log")).unwrap()
}

#[test]
fn a_python_plugin_runs_its_actions_and_passes_outputs_on() {
    let project = project_with_plugin();
    let dir = project.path();
    fs::create_dir_all(dir.join("build")).unwrap();
    fs::write(
        dir.join("build/manifest.json"),
        r#"{"version": "2.7.0", "outputs": {"access log": "build/access.log"}}"#,
    )
    .unwrap();
    fs::write(
        dir.join("build/access.log"),
        "GET /healthz 200\nGET /api/users 200\nPOST /api/orders 201\nGET /api/orders 200\n",
    )
    .unwrap();
    apply_workflow(
        dir,
        "artifacts.yaml",
        r#"name: Artifacts
steps:
  - name: locate
    agent: file_checks
    action: json_field
    parameters: {path: build/manifest.json, pointer: /outputs/access log}
  - name: gets
    depends_on: [locate]
    agent: file_checks
    action: count_lines
    parameters:
      path: "{{ steps.locate.outputs.value }}"
      pattern: "^GET .* 200$"
      min: 3
"#,
    );
    let run = orchestrator(dir, &["workflow", "execute", "wf_artifacts"]).expect_code(0);
    let id = run_id(&run.stdout);
    let shown = show(dir, &id);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");

    let locate = step(&shown, "locate");
    assert_eq!(locate["status"], "succeeded");
    assert_eq!(locate["agent"], "file_checks");
    assert_eq!(locate["action"], "json_field");
    assert_eq!(locate["exit_code"], 0);
    assert_eq!(
        locate["outputs"],
        json!({"value": "build/access.log", "type": "string"})
    );

    let gets = step(&shown, "gets");
    assert_eq!(gets["status"], "succeeded");
    assert_eq!(gets["outputs"], json!({"lines": 3, "total_lines": 4}));
    assert_eq!(
        gets["message"], "build/access.log: 3 lines matching /^GET .* 200$/",
        "the plugin's message is the step's"
    );

    // The plugin's stderr, tagged with the run and step from the request, is in the agent log
    // beside the orchestrator's own line per step.
    let log = agent_log(dir);
    assert!(
        log.contains(&format!(
            "[file_checks] {id} locate: json_field {{\"path\": \"build/manifest.json\""
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "[file_checks] {id} gets: count_lines {{\"path\": \"build/access.log\""
        )),
        "the substituted output reached the plugin: {log}"
    );
    assert!(
        log.contains("[file_checks] build/access.log: 3 lines matching /^GET .* 200$/ of 4"),
        "{log}"
    );
    assert!(
        log.contains(&format!("{id} gets file_checks.count_lines succeeded")),
        "{log}"
    );
    // stdout is the answer, not log material.
    assert!(!log.contains("\"status\""), "{log}");
}

#[test]
fn a_failing_check_fails_the_step_and_the_run_with_the_plugins_message() {
    let project = project_with_plugin();
    let dir = project.path();
    fs::write(
        dir.join("summary.json"),
        r#"{"suite": "api", "stats": {"failures": 2}}"#,
    )
    .unwrap();
    apply_workflow(
        dir,
        "gate.yaml",
        r#"name: Gate
steps:
  - name: green
    agent: file_checks
    action: json_field
    parameters: {path: summary.json, pointer: /stats/failures, equals: 0}
  - name: publish
    depends_on: [green]
    command: ["sh", "-c", "touch published"]
  - name: missing
    depends_on: []
    agent: file_checks
    action: exists
    parameters: {path: reports/junit-ui.xml}
"#,
    );
    let run = orchestrator(dir, &["workflow", "execute", "wf_gate"]).expect_code(1);
    let shown = show(dir, &run_id(&run.stdout));
    assert_eq!(shown["run"]["status"], "failed", "{shown:#}");

    let green = step(&shown, "green");
    assert_eq!(green["status"], "failed");
    assert_eq!(green["exit_code"], 1);
    assert_eq!(
        green["message"], "summary.json#/stats/failures is 2, expected 0",
        "{green:#}"
    );
    assert_eq!(step(&shown, "publish")["status"], "skipped");
    assert!(!dir.join("published").exists());

    let missing = step(&shown, "missing");
    assert_eq!(missing["status"], "failed");
    let message = missing["message"].as_str().unwrap();
    assert!(
        message.starts_with("reports/junit-ui.xml does not exist"),
        "{message}"
    );
    assert!(
        run.stdout
            .contains("summary.json#/stats/failures is 2, expected 0"),
        "{}",
        run.stdout
    );
    assert!(
        agent_log(dir).contains("[file_checks] failed: summary.json#/stats/failures is 2"),
        "{}",
        agent_log(dir)
    );
}

#[test]
fn an_action_the_manifest_does_not_declare_is_rejected_before_anything_runs() {
    let project = project_with_plugin();
    let dir = project.path();
    fs::write(
        dir.join("workflows/typo.yaml"),
        r#"name: Typo
steps:
  - name: count
    agent: file_checks
    action: count_line
    parameters: {path: README.md}
"#,
    )
    .unwrap();
    let applied = orchestrator(dir, &["apply"]).expect_code(1);
    let all = format!("{}{}", applied.stdout, applied.stderr);
    assert!(
        all.contains(
            "agent `file_checks` has no action `count_line`; did you mean `count_lines`? \
             (its actions: exists, json_field, count_lines)"
        ),
        "{all}"
    );
    assert!(all.contains("workflows/typo.yaml:5:13"), "{all}");
}

/// Runs the plugin by hand the way the orchestrator does: a request on stdin, the answer on
/// the last stdout line, diagnostics on stderr.
fn ask_plugin(dir: &Path, request: &str) -> (i32, Value, String) {
    let mut child = Command::new("python3")
        .arg(repo_dir().join(EXAMPLE).join("file_checks.py"))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), request.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let answer = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no answer in {stdout:?}"));
    (
        output.status.code().unwrap_or(-1),
        serde_json::from_str(answer).unwrap(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_plugin_answers_unknown_actions_and_bad_requests_with_a_failure() {
    let dir = temp_project();
    let (code, answer, _) = ask_plugin(
        dir.path(),
        r#"{"action": "checksum", "parameters": {}, "run": {"id": "run_x", "workflow_id": "wf_x", "step": "s"}}"#,
    );
    assert_eq!(code, 1);
    assert_eq!(answer["status"], "failed");
    assert_eq!(
        answer["message"],
        "file_checks has no action \"checksum\" (its actions: exists, json_field, count_lines)"
    );

    let (code, answer, stderr) = ask_plugin(dir.path(), "not json");
    assert_eq!(code, 1);
    assert_eq!(answer["status"], "failed");
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .starts_with("file_checks: the request on stdin is not JSON"),
        "{answer}"
    );
    assert!(stderr.contains("unreadable request"), "{stderr}");

    let (code, answer, _) = ask_plugin(
        dir.path(),
        r#"{"action": "count_lines", "parameters": {"path": "x", "min": true}}"#,
    );
    assert_eq!(code, 1);
    assert_eq!(
        answer["message"],
        "parameter `min` must be an integer, got true"
    );
}

#[test]
fn the_shipped_example_validates_and_runs_green() {
    let example = repo_dir().join(EXAMPLE);
    let validated =
        orchestrator(&repo_dir(), &["validate", example.to_str().unwrap()]).expect_code(0);
    assert!(
        validated.stdout.contains("2 objects") && validated.stdout.contains("0 errors, 0 warnings"),
        "{}",
        validated.stdout
    );

    // Installed as its README says: the directory copied as it is, the manifest into agents/.
    let project = project(&[]);
    let dir = project.path();
    let installed = dir.join(EXAMPLE);
    fs::create_dir_all(&installed).unwrap();
    for file in ["file_checks.py", "agent.yaml", "workflow.yaml", "README.md"] {
        fs::copy(example.join(file), installed.join(file)).unwrap();
    }
    fs::copy(
        example.join("agent.yaml"),
        dir.join("agents/file_checks.yaml"),
    )
    .unwrap();
    fs::copy(
        example.join("workflow.yaml"),
        dir.join("workflows/smoke_artifacts.yaml"),
    )
    .unwrap();
    orchestrator(dir, &["apply"]).expect_code(0);
    let run = orchestrator(dir, &["workflow", "execute", "wf_smoke-artifacts"]).expect_code(0);
    let shown = show(dir, &run_id(&run.stdout));
    let steps = shown["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 6);
    assert!(
        steps.iter().all(|s| s["status"] == "succeeded"),
        "{shown:#}"
    );
    assert_eq!(
        step(&shown, "log_written")["outputs"]["path"],
        "reports/smoke/requests.log"
    );
    assert_eq!(step(&shown, "enough_requests")["outputs"]["lines"], 3);
    assert_eq!(step(&shown, "all_requests_ok")["outputs"]["lines"], 0);
}
