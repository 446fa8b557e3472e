//! The usage guide's walkthrough in a fresh `init` project: schemas that resolve (written by
//! `init` and `schemas export`, served at `/schemas/<file>`, read by check-jsonschema from
//! disk and over HTTP); `trigger create` beside the scaffold's trigger on one path, named
//! after path and workflow, one signed delivery starting both, with the secret `init`
//! generated; scaffolded alerts naming only channels every environment defines, the `log`
//! channel's JSON lines; a data directory and a server per environment; logs with one line
//! per event, no escapes, and no debug lines from commands run against the server.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::support::{cli, create_webhook, project, raw_exchange, sign, Api, Server};

/// Every schema the binary publishes.
const SCHEMA_FILES: [&str; 9] = [
    "agent.json",
    "alert.json",
    "config.json",
    "dashboard.json",
    "quarantine.json",
    "schedule.json",
    "trigger.json",
    "workflow-template.json",
    "workflow.json",
];

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Each `# yaml-language-server: $schema=...` modeline under `dir`, as (file, target).
fn modelines(dir: &Path) -> Vec<(PathBuf, String)> {
    files_under(dir)
        .into_iter()
        .filter_map(|file| {
            let text = fs::read_to_string(&file).ok()?;
            let target = text
                .lines()
                .find_map(|line| line.strip_prefix("# yaml-language-server: $schema="))?
                .trim()
                .to_owned();
            Some((file, target))
        })
        .collect()
}

/// Asserts that every modeline under `dir` names a schema file that exists, parses, and
/// whose `$id` is its own file name (so it resolves to wherever it was read from).
#[track_caller]
fn assert_modelines_resolve(dir: &Path) -> usize {
    let lines = modelines(dir);
    for (file, target) in &lines {
        let schema = file.parent().unwrap().join(target);
        let text = fs::read_to_string(&schema).unwrap_or_else(|err| {
            panic!(
                "{} names {target}, which does not resolve ({}): {err}",
                file.display(),
                schema.display()
            )
        });
        let value: Value = serde_json::from_str(&text).unwrap();
        let name = schema.file_name().unwrap().to_str().unwrap();
        assert_eq!(value["$id"], name, "{}", schema.display());
    }
    lines.len()
}

/// Runs check-jsonschema; fails saying what to install when it is missing.
fn check_jsonschema(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new("check-jsonschema")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|err| {
            panic!("check-jsonschema is needed (pipx install check-jsonschema): {err}")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A raw HTTP/1.1 GET with the given Host; returns the status and the body.
fn get_with_host(address: &str, host: &str, path: &str) -> (u16, String) {
    let reply = raw_exchange(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n"),
        b"",
    );
    (reply.status, reply.text)
}

#[test]
fn init_writes_the_schemas_every_modeline_names() {
    let project = project(&[]);
    let dir = project.path();
    let mut written: Vec<String> = fs::read_dir(dir.join("schemas"))
        .expect("init writes schemas/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, SCHEMA_FILES);
    let checked = assert_modelines_resolve(dir);
    assert!(checked >= 8, "only {checked} modelines in the scaffold");

    // A project whose schemas/ is gone gets it back from a create command.
    fs::remove_dir_all(dir.join("schemas")).unwrap();
    let definition = dir.join("hello.yaml");
    fs::write(
        &definition,
        "name: ignored\nsteps:\n  - name: greet\n    command: [\"true\"]\n",
    )
    .unwrap();
    cli(
        dir,
        &["workflow", "create", "Hello", "--config", "hello.yaml"],
    )
    .expect_code(0);
    assert!(dir.join("workflows/hello.yaml").exists());
    assert_modelines_resolve(&dir.join("workflows"));

    // The editor's view, with the tool the ecosystem trusts: the files validate against
    // the schemas their modelines name, read from disk.
    let (ok, text) = check_jsonschema(
        dir,
        &[
            "--schemafile",
            "schemas/workflow.json",
            "workflows/smoke.yaml",
            "workflows/hello.yaml",
        ],
    );
    assert!(ok, "{text}");
    let (ok, text) = check_jsonschema(
        dir,
        &[
            "--schemafile",
            "schemas/config.json",
            "config/development.yaml",
            "config/production.yaml",
        ],
    );
    assert!(ok, "{text}");
}

#[test]
fn manifests_written_by_the_server_put_back_the_schemas_their_modelines_name() {
    let project = project(&[]);
    let dir = project.path();
    fs::remove_dir_all(dir.join("schemas")).unwrap();
    let server = Server::start(dir);
    let api = server.api();
    api.post(
        "/api/manifests",
        r#"{"kind": "Workflow", "manifest": {"name": "Saved Here", "steps": [{"name": "one", "command": ["true"]}]}}"#,
    )
    .expect(201);
    let saved = fs::read_to_string(dir.join("workflows/saved-here.yaml")).unwrap();
    assert!(
        saved.starts_with("# yaml-language-server: $schema=../schemas/workflow.json\n"),
        "{saved}"
    );
    assert!(dir.join("schemas/workflow.json").is_file());
    fs::remove_dir_all(dir.join("schemas")).unwrap();
    api.post(
        "/api/scheduler/jobs",
        r#"{"name": "Nightly Here", "schedule": "0 2 * * *", "workflow_id": "wf_saved-here"}"#,
    )
    .expect(201);
    assert!(
        assert_modelines_resolve(dir) >= 2,
        "the saved workflow and schedule"
    );
    for file in SCHEMA_FILES {
        assert!(dir.join("schemas").join(file).is_file(), "{file}");
    }
}

#[test]
fn schemas_export_writes_every_schema_anywhere() {
    let project = crate::support::temp_project();
    let dir = project.path();
    let run = cli(dir, &["schemas", "export", "out/json-schemas"]).expect_code(0);
    let out = dir.join("out/json-schemas");
    for file in SCHEMA_FILES {
        let text = fs::read_to_string(out.join(file)).unwrap_or_else(|_| panic!("{file}"));
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["$id"], file);
        assert!(run.stdout.contains(file), "{}", run.stdout);
    }
    let (ok, text) = check_jsonschema(
        dir,
        &["--check-metaschema", "out/json-schemas/workflow.json"],
    );
    assert!(ok, "{text}");
    // An existing directory is refreshed in place.
    fs::write(out.join("workflow.json"), "stale").unwrap();
    cli(dir, &["schemas", "export", "out/json-schemas"]).expect_code(0);
    assert_ne!(
        fs::read_to_string(out.join("workflow.json")).unwrap(),
        "stale"
    );
}

#[test]
fn the_server_serves_the_schemas_without_a_token_behind_the_host_check() {
    let project = project(&[]);
    let dir = project.path();
    let server = Server::start_args(
        dir,
        &["--port", "0"],
        &[
            ("WALK_TOKEN", "walk-token-0123456789"),
            ("ORCHESTRATOR_API_TOKEN", "env:WALK_TOKEN"),
        ],
    );
    let api = server.api();
    // The API needs the token; the schemas are public documents.
    assert_eq!(api.get("/api/workflows").status, 401);
    for file in SCHEMA_FILES {
        let reply = api.get(&format!("/schemas/{file}"));
        assert_eq!(reply.status, 200, "{file}: {reply:?}");
        assert_eq!(reply.content_type, "application/schema+json", "{file}");
        assert_eq!(
            reply.text,
            fs::read_to_string(dir.join("schemas").join(file)).unwrap(),
            "{file}: the served text is the one init wrote"
        );
    }
    let message = api
        .get("/schemas/nothing.json")
        .expect_error(404, "not_found");
    assert!(message.contains("workflow.json"), "{message}");
    // A foreign Host is refused as on every route.
    let (status, body) = get_with_host(
        &server.address,
        "rebind.attacker.example",
        "/schemas/workflow.json",
    );
    assert_eq!(status, 421, "{body}");

    // A modeline or a CI job may name the served URL: check-jsonschema reads it from there.
    let url = format!("http://{}/schemas/workflow.json", server.address);
    let (ok, text) = check_jsonschema(
        dir,
        &["--no-cache", "--schemafile", &url, "workflows/smoke.yaml"],
    );
    assert!(ok, "{text}");
    let (ok, text) = check_jsonschema(
        dir,
        &[
            "--no-cache",
            "--schemafile",
            &url,
            "config/development.yaml",
        ],
    );
    assert!(!ok, "a configuration is no workflow: {text}");
}

/// Sends a GitHub delivery to `path`; returns the status and the JSON answer.
fn github_delivery(
    address: &str,
    path: &str,
    delivery: &str,
    body: &str,
    signature: Option<String>,
) -> (u16, Value) {
    let mut headers = vec![("X-GitHub-Event", "push"), ("X-GitHub-Delivery", delivery)];
    if let Some(signature) = &signature {
        headers.push(("X-Hub-Signature-256", signature));
    }
    let reply = Api::new(address, None).post_with(path, &headers, body);
    let answer = serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    (reply.status, answer)
}

#[test]
fn the_guides_trigger_create_adds_a_trigger_beside_the_scaffolds_and_a_delivery_starts_both() {
    use std::os::unix::fs::PermissionsExt;
    let project = project(&[]);
    let dir = project.path();
    // The scaffolded trigger's secret is generated, private and ignored by git.
    let secret_file = dir.join("secrets/github-webhook-secret");
    let mode = fs::metadata(&secret_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let secret = fs::read_to_string(&secret_file).unwrap().trim().to_owned();
    assert_eq!(secret.len(), 64, "{secret}");
    assert!(fs::read_to_string(dir.join(".gitignore"))
        .unwrap()
        .lines()
        .any(|l| l == "secrets/"));
    let scaffold = fs::read_to_string(dir.join("triggers/github.yaml")).unwrap();

    // The guide's command, on the path the scaffold already listens on.
    let created = create_webhook(
        dir,
        "/hooks/github",
        "wf_smoke",
        &["--events", "push,pull_request"],
    )
    .expect_code(0);
    assert!(
        created.stdout.contains("trg_github-wf_smoke"),
        "{}",
        created.stdout
    );
    let manifest = fs::read_to_string(dir.join("triggers/github-wf_smoke.yaml"))
        .expect("the file is named after the path and the workflow");
    // One GitHub webhook signs once for every trigger of its path: the same secret.
    assert!(
        manifest.contains("secret: file:secrets/github-webhook-secret"),
        "{manifest}"
    );
    assert_eq!(
        fs::read_to_string(dir.join("triggers/github.yaml")).unwrap(),
        scaffold
    );

    // Out of the box, with no variable set: a signed delivery starts both workflows.
    let server = Server::start(dir);
    let body = r#"{"ref": "refs/heads/main", "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246", "commits": []}"#;
    let (status, answer) = github_delivery(
        &server.address,
        "/hooks/github",
        "walk-1",
        body,
        Some(sign(&secret, body.as_bytes())),
    );
    assert_eq!(status, 202, "{answer}");
    let mut started: Vec<&str> = answer["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trigger"].as_str().unwrap())
        .collect();
    started.sort();
    assert_eq!(
        started,
        ["trg_github-push", "trg_github-wf_smoke"],
        "{answer}"
    );
    let api = server.api();
    for run in answer["runs"].as_array().unwrap() {
        let shown = api
            .get(&format!("/api/runs/{}", run["run_id"].as_str().unwrap()))
            .expect(200);
        assert_eq!(shown["run"]["trigger"]["details"]["delivery"], "walk-1");
    }
    // An unsigned one is refused for what it is, not for a missing setting.
    let (status, answer) = github_delivery(&server.address, "/hooks/github", "walk-2", body, None);
    assert_eq!(status, 401, "{answer}");
}

#[test]
fn scaffolded_alerts_name_channels_every_environment_defines_and_log_appends_json_lines() {
    let project = project(&[(
        "alerts/busy.yaml",
        "name: Busy Host\ncondition: system.process_count > 0\nseverity: critical\nlabels:\n  team: qa\nactions: [log]\nrepeat_interval: 4h\n",
    )]);
    let dir = project.path();
    let scaffold: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("alerts/alerts.json")).unwrap()).unwrap();
    let mut actions: Vec<&str> = scaffold["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|a| a["actions"].as_array().unwrap())
        .map(|a| a.as_str().unwrap())
        .collect();
    actions.dedup();
    assert!(!actions.is_empty());
    for environment in ["development", "testing", "staging", "production"] {
        let shown = cli(
            dir,
            &["--environment", environment, "config", "show", "-o", "json"],
        )
        .expect_code(0);
        let config: Value = serde_json::from_str(&shown.stdout).unwrap();
        for action in &actions {
            assert!(
                config["notifications"].get(*action).is_some(),
                "{environment} defines no `{action}` channel: {}",
                config["notifications"]
            );
        }
        assert_eq!(config["notifications"]["log"]["type"], "log");
    }

    // A firing alert on the `log` channel: one JSON line in logs/alerts.log.
    let config = dir.join("config/development.yaml");
    let mut text = fs::read_to_string(&config).unwrap();
    assert!(!text.contains("\nmonitoring:"), "{text}");
    text.push_str("monitoring:\n  evaluation_interval: 200ms\n  sample_interval: 1s\n");
    fs::write(&config, text).unwrap();
    let _server = Server::start(dir);
    let log = dir.join("logs/alerts.log");
    let line = crate::support::eventually("a line in logs/alerts.log", || {
        let text = fs::read_to_string(&log).ok()?;
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .find(|v| v["alert_id"] == "alert_busy-host")
    });
    assert_eq!(line["channel"], "log", "{line}");
    assert_eq!(line["status"], "firing", "{line}");
    assert_eq!(line["labels"]["team"], "qa", "{line}");
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
}

/// `--environment ENV status -o json`: the exit code and the answer.
fn status_of(dir: &Path, environment: &str) -> (i32, Value) {
    let run = cli(dir, &["--environment", environment, "status", "-o", "json"]);
    let value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    (run.code, value)
}

#[test]
fn each_environment_has_its_own_data_directory_and_server() {
    let project = project(&[]);
    let dir = project.path();
    // The guide: start in production mode, check production status.
    let production = Server::start_args(dir, &["--port", "0", "--environment", "production"], &[]);
    assert!(dir.join("data/production/server.json").exists());
    let (code, status) = status_of(dir, "production");
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["environment"], "production", "{status}");
    assert_eq!(status["address"], production.address.as_str(), "{status}");
    // No development server runs: development says so.
    let (code, status) = status_of(dir, "development");
    assert_eq!(code, 3, "{status}");
    assert_eq!(status["running"], false, "{status}");
    let plain = cli(dir, &["status"]).expect_code(3);
    assert!(
        plain.stdout.contains("no development server"),
        "{}",
        plain.stdout
    );

    // The default environment's store is where it always was, and both run side by side.
    let development = Server::start(dir);
    assert!(dir.join("data/server.json").exists());
    assert!(dir.join("data/db").exists());
    let (code, status) = status_of(dir, "development");
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["address"], development.address.as_str(), "{status}");
    let (_, status) = status_of(dir, "production");
    assert_eq!(status["address"], production.address.as_str(), "{status}");
    drop(production);
    drop(development);

    // A project whose environments share one data directory (written before each had its
    // own): production's status does not report the development server as its own.
    let file = dir.join("config/production.yaml");
    let text = fs::read_to_string(&file).unwrap();
    assert!(text.contains("data_dir: data/production\n"), "{text}");
    fs::write(
        &file,
        text.replace("data_dir: data/production\n", "data_dir: data\n"),
    )
    .unwrap();
    let _development = Server::start(dir);
    let (code, status) = status_of(dir, "production");
    assert_eq!(code, 3, "{status}");
    assert_eq!(
        status["data_dir_used_by"]["environment"], "development",
        "{status}"
    );
    let plain = cli(dir, &["--environment", "production", "status"]).expect_code(3);
    assert!(
        plain.stdout.contains("runs the development environment"),
        "{}",
        plain.stdout
    );
}

/// A trigger whose secret names a variable that is not set: each delivery logs an error.
const UNSET_SECRET_TRIGGER: &str = "name: Unset\ntype: webhook\npath: /hooks/unset\nprovider: github\nworkflow: wf_smoke\nevents: [push]\nsecret: env:WALK_SECRET_NEVER_SET\n";

/// Kills a background server a test started if the test ends before stopping it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

#[test]
fn a_background_server_logs_each_event_once_without_escapes_and_cli_guests_add_no_debug() {
    let project = project(&[("triggers/unset.yaml", UNSET_SECRET_TRIGGER)]);
    let dir = project.path();
    // Not a terminal, and no NO_COLOR: colour must still stay out of the file.
    let started = crate::support::command(dir)
        .args(["start", "--background", "--port", "0", "--verbose"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(started.status.success(), "{started:?}");
    let info: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("data/server.json")).unwrap()).unwrap();
    let _guard = KillOnDrop(info["pid"].as_u64().unwrap() as u32);
    let address = info["address"].as_str().unwrap().to_owned();

    let body = r#"{"ref": "refs/heads/main"}"#;
    let (status, answer) = github_delivery(
        &address,
        "/hooks/unset",
        "walk-log-1",
        body,
        Some("sha256=00".into()),
    );
    assert_eq!(status, 503, "{answer}");
    // Commands run against the server, verbose too: their debug lines stay on their stderr.
    let listed = crate::support::command(dir)
        .args(["--verbose", "workflow", "list"])
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(stderr.contains("DEBUG"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "colour on a pipe: {stderr:?}");
    cli(dir, &["get"]).expect_code(0);
    cli(dir, &["stop"]).expect_code(0);

    let log = fs::read_to_string(dir.join("logs/system.log")).unwrap();
    assert!(
        !log.contains('\x1b'),
        "escape sequences in system.log:\n{log}"
    );
    let refusals = log
        .lines()
        .filter(|l| l.contains("WALK_SECRET_NEVER_SET"))
        .count();
    assert_eq!(refusals, 1, "one line per event:\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains(" DEBUG orchestrator::controller::")),
        "the server's own debug lines are there (--verbose):\n{log}"
    );
    assert!(
        !log.contains("orchestrator::cli"),
        "a command run against the server added its lines to the server's log:\n{log}"
    );
}
