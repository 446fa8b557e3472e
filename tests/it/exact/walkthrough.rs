//! The usage guide's walkthrough in a fresh `init` project: schemas that resolve (written by
//! `init` and `schemas export`, served at `/schemas/<file>`, read by check-jsonschema from
//! disk and over HTTP), triggers named after what they trigger, a data directory per
//! environment, logs without escapes or duplicates.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::server::{cli, project, Server};

/// Every schema the binary publishes.
const SCHEMA_FILES: [&str; 8] = [
    "agent.json",
    "alert.json",
    "config.json",
    "dashboard.json",
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
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(crate::server::DEADLINE))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {raw}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
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
fn schemas_export_writes_every_schema_anywhere() {
    let project = crate::temp_project();
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
