//! Validation of what a manifest lets outsiders do, and what wears a long-running server
//! down: `{{ params.* }}` pasted into shell scripts (a warning at the field), triggers
//! without a secret (an error unless `insecure: true`), logs that rotate, control
//! characters in CLI tables, and a full disk the server survives.

use std::path::Path;

use serde_json::Value;

use crate::support::{cli, create_webhook, project, Api, Server};

/// The issue's reproduction: a trigger maps a pull request's title into a parameter that a
/// step pastes into `sh -c`.
const INJECTED: &str = r#"name: Greet
parameters:
  title: {type: string, default: none}
steps:
  - name: greet
    command: ["sh", "-c", "echo {{ params.title }}"]
  - name: as-string
    command: "echo {{ params.title }} done"
  - name: agent
    agent: shell
    parameters:
      command: ["bash", "-lc", "echo {{ params.title }}"]
  - name: safe
    env:
      TITLE: "{{ params.title }}"
    command: ["sh", "-c", "echo \"$TITLE\"", "greet", "{{ params.title }}"]
"#;

const PR_TRIGGER: &str = r#"name: PR
path: /hooks/pr
workflow: wf_greet
events: [pull_request]
secret: env:GITHUB_WEBHOOK_SECRET
parameters:
  title: "{{ payload.pull_request.title }}"
"#;

#[test]
fn validate_warns_where_a_parameter_lands_inside_a_shell_script() {
    let dir = project(&[
        ("workflows/greet.yaml", INJECTED),
        ("triggers/pr.yaml", PR_TRIGGER),
    ]);
    let dir = dir.path();
    // Warnings do not stop a document: validate succeeds and says where and why.
    let run = cli(dir, &["validate", "-o", "json"]).expect_code(0);
    let report: Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", run.stdout);
    });
    let diagnostics = find_diagnostics(&report);
    let warnings: Vec<&Value> = diagnostics
        .iter()
        .filter(|d| d["severity"] == "warning" && d["file"].as_str().unwrap().contains("greet"))
        .collect();
    let places: Vec<(String, u64, u64)> = warnings
        .iter()
        .map(|d| {
            (
                d["pointer"].as_str().unwrap().to_owned(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        places,
        [
            ("/steps/0/command/2".to_owned(), 6, 27),
            ("/steps/1/command".to_owned(), 8, 14),
            ("/steps/2/parameters/command/2".to_owned(), 12, 32),
        ],
        "{warnings:#?}"
    );
    for warning in &warnings {
        let message = warning["message"].as_str().unwrap();
        for part in [
            "`{{ params.title }}`",
            "script injection",
            "env: {TITLE: \"{{ params.title }}\"}",
            "\"$TITLE\"",
        ] {
            assert!(message.contains(part), "{part}: {message}");
        }
    }

    // The trigger that fills the parameter from the payload is warned about too (beside
    // its secret, which does not resolve where this test runs).
    let at_trigger: Vec<&Value> = diagnostics
        .iter()
        .filter(|d| d["severity"] == "warning" && d["file"] == "triggers/pr.yaml")
        .filter(|d| d["pointer"] != "/secret")
        .collect();
    assert_eq!(at_trigger.len(), 1, "{diagnostics:#?}");
    assert_eq!(at_trigger[0]["pointer"], "/parameters/title");
    assert_eq!(at_trigger[0]["line"], 7);
    assert_eq!(at_trigger[0]["column"], 10);
    let message = at_trigger[0]["message"].as_str().unwrap();
    for part in ["wf_greet", "workflows/greet.yaml:6:27", "env:"] {
        assert!(message.contains(part), "{part}: {message}");
    }

    // The compiler-style rendering names the file, line, column and pointer.
    let text = cli(dir, &["validate"]).expect_code(0);
    assert!(
        text.stdout
            .contains("workflows/greet.yaml:6:27 at /steps/0/command/2"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("warning: `{{ params.title }}` is pasted into a shell script"),
        "{}",
        text.stdout
    );
}

/// Every diagnostic in `validate -o json`'s answer, wherever it nests them.
fn find_diagnostics(report: &Value) -> Vec<Value> {
    let mut found = Vec::new();
    let mut stack = vec![report];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) if map.contains_key("severity") && map.contains_key("pointer") => {
                found.push(value.clone());
            }
            Value::Object(map) => stack.extend(map.values()),
            Value::Array(items) => stack.extend(items.iter()),
            _ => {}
        }
    }
    found.sort_by_key(|d| d["line"].as_u64());
    found
}

#[test]
fn a_trigger_without_a_secret_is_an_error_unless_it_says_insecure() {
    let workflow = "name: Work\nsteps:\n  - name: one\n    command: [\"true\"]\n";
    let open = "name: Open\npath: /hooks/open\nworkflow: wf_work\n";
    let dir = project(&[
        ("workflows/work.yaml", workflow),
        ("triggers/open.yaml", open),
    ]);
    let dir = dir.path();
    let run = cli(dir, &["validate"]).expect_code(1);
    assert!(
        run.stdout.contains("error: trigger has no `secret`"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("triggers/open.yaml:1:1"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("insecure: true"), "{}", run.stdout);

    std::fs::write(
        dir.join("triggers/open.yaml"),
        format!("{open}insecure: true\n"),
    )
    .unwrap();
    cli(dir, &["validate"]).expect_code(0);

    // `trigger create webhook` writes a trigger that validates: a secret reference by
    // default, `insecure: true` when asked.
    let created = create_webhook(dir, "/hooks/ci", "wf_work", &[]).expect_code(0);
    let manifest = std::fs::read_to_string(dir.join("triggers/ci-wf_work.yaml")).unwrap();
    assert!(
        manifest.contains("secret: env:GITHUB_WEBHOOK_SECRET"),
        "{manifest}\n{}",
        created.stderr
    );
    create_webhook(dir, "/hooks/open2", "wf_work", &["--insecure"]).expect_code(0);
    let manifest = std::fs::read_to_string(dir.join("triggers/open2-wf_work.yaml")).unwrap();
    assert!(manifest.contains("insecure: true"), "{manifest}");
    assert!(!manifest.contains("secret"), "{manifest}");
    cli(dir, &["validate"]).expect_code(0);
}

#[test]
fn cli_tables_escape_control_characters_and_json_stays_exact() {
    // YAML's double-quoted `\e` is ESC: the name would turn the terminal red, and `\r`
    // would let the rest of the line overwrite the id.
    let workflow = "id: wf_evil\nname: \"\\e[31mEvil\\rwf_fake\\u202e\"\nsteps:\n  - name: \"\\e[2Jone\"\n    command: [\"true\"]\n";
    let dir = project(&[("workflows/evil.yaml", workflow)]);
    let dir = dir.path();
    cli(dir, &["apply"]).expect_code(0);
    for args in [&["get"][..], &["get", "workflow"], &["workflow", "list"]] {
        let run = cli(dir, args).expect_code(0);
        assert!(
            !run.stdout.contains(['\x1b', '\r', '\u{202e}']),
            "{args:?}: {:?}",
            run.stdout
        );
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains("wf_evil"))
            .unwrap_or_else(|| panic!("{args:?}: {}", run.stdout));
        assert!(
            line.contains("\\x1b[31mEvil\\rwf_fake\\u{202e}"),
            "{args:?}: {line}"
        );
    }
    // `workflow execute` names the step (which would clear the screen) escaped, and a
    // run's page names its workflow the same way.
    let executed = cli(dir, &["workflow", "execute", "wf_evil"]).expect_code(0);
    assert!(
        !executed.stdout.contains('\x1b') && executed.stdout.contains("\\x1b[2Jone"),
        "{:?}",
        executed.stdout
    );
    let runs = cli(dir, &["run", "list", "-o", "json"]).expect_code(0);
    let runs: Value = serde_json::from_str(&runs.stdout).unwrap();
    let run = find_run_id(&runs);
    let shown = cli(dir, &["run", "show", &run]).expect_code(0);
    assert!(!shown.stdout.contains(['\x1b', '\r']), "{:?}", shown.stdout);
    assert!(
        shown.stdout.contains("(\\x1b[31mEvil\\rwf_fake"),
        "{}",
        shown.stdout
    );

    let json = cli(dir, &["get", "workflow", "wf_evil", "-o", "json"]).expect_code(0);
    assert!(
        json.stdout.contains("\\u001b[31mEvil\\rwf_fake\u{202e}"),
        "JSON keeps the exact name, escaped as JSON does: {}",
        json.stdout
    );
}

/// The files of `dir` whose names start with `prefix`, sorted.
fn files_named(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[test]
fn api_and_system_logs_rotate_by_size_and_keep_max_files() {
    let dir = project(&[]);
    let dir = dir.path();
    let config = dir.join("config/development.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "  dir: logs\n",
        "  dir: logs\n  max_file_bytes: 2048\n  max_files: 3\n",
    );
    std::fs::write(&config, text).unwrap();
    let server = Server::start(dir);
    let api = Api::of_project(dir);
    // Each request is one line of the access log (and debug lines in system.log).
    for index in 0..300 {
        let answer = api.get(&format!("/api/workflows/wf_n{index}"));
        assert_eq!(answer.status, 404);
    }
    let logs = dir.join("logs");
    let api = crate::support::eventually("api.log to rotate twice", || {
        let names = files_named(&logs, "api.log");
        (names.len() == 3).then_some(names)
    });
    assert_eq!(api, ["api.log", "api.log.1", "api.log.2"]);
    let system = files_named(&logs, "system.log");
    assert!(
        !system.is_empty() && system.len() <= 3,
        "system.log keeps at most 3 files: {system:?}"
    );
    for name in api.iter().chain(&system) {
        let text = std::fs::read_to_string(logs.join(name)).unwrap();
        let longest = text.lines().map(str::len).max().unwrap_or(0);
        assert!(
            text.len() <= 2048 + longest + 1,
            "{name} holds {} bytes",
            text.len()
        );
    }
    // The newest lines are in the current file, the older ones were dropped.
    let current = std::fs::read_to_string(logs.join("api.log")).unwrap();
    let all: String = api
        .iter()
        .map(|name| std::fs::read_to_string(logs.join(name)).unwrap())
        .collect();
    assert!(
        !all.contains("/api/workflows/wf_n0 "),
        "the oldest lines are gone"
    );
    assert!(current.contains("/api/workflows/wf_n299 "), "{current}");
    drop(server);
}

/// A tmpfs mounted on a directory for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`8m`). The suite runs as root in CI; anywhere else this
    /// test fails and says why, rather than passing without having tried.
    fn mount(size: &str) -> Tmpfs {
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&uid.stdout).trim(),
            "0",
            "the full-disk test mounts a small tmpfs and needs root (the suite runs as root in CI): run it as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the filesystem of `path` with one file until a write fails; returns the file.
fn fill(path: &Path) -> std::path::PathBuf {
    use std::io::Write as _;
    let filler = path.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    // The last pages, smaller than a block.
    while file.write_all(&[0u8; 512]).is_ok() {}
    while file.write_all(&[0u8]).is_ok() {}
    filler
}

/// The `*.tmp` files anywhere under `dir`.
fn temporary_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".tmp") {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn a_full_disk_is_survived_without_a_restart() {
    let tmpfs = Tmpfs::mount("8m");
    let dir = tmpfs.path();
    cli(dir, &["init"]).expect_code(0);
    let server = Server::start(dir);
    let api = Api::of_project(dir);
    let status = |path: &str| api.get(path).status;
    let post = |path: &str, body: &str| {
        let answer = api.post(path, body);
        (answer.status, answer.text)
    };
    let manifest = |name: &str| {
        serde_json::json!({"kind": "Workflow", "manifest": {"name": name,
            "steps": [{"name": "one", "command": ["true"]}]}})
        .to_string()
    };
    assert_eq!(status("/readyz"), 200);
    let (code, text) = post("/api/manifests", &manifest("Before"));
    assert_eq!(code, 201, "{text}");
    let mut acknowledged = Vec::new();
    let (code, text) = post("/api/workflows/wf_before/execute", "{}");
    assert_eq!(code, 202, "{text}");
    let run: Value = serde_json::from_str(&text).unwrap();
    acknowledged.push(run["run_id"].as_str().unwrap().to_owned());

    let filler = fill(dir);
    // A manifest cannot be written: 5xx with the error shape, and no temporary file stays.
    let (code, text) = post("/api/manifests", &manifest("During"));
    assert!((500..600).contains(&code), "{code} {text}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert!(error["error"]["code"].is_string(), "{text}");
    assert!(error["error"]["message"].is_string(), "{text}");
    assert!(error["error"].get("details").is_some(), "{text}");
    assert_eq!(temporary_files(dir), Vec::<String>::new());
    assert!(!dir.join("workflows/during.yaml").exists());
    // Runs need the store: a write fails (sled's buffer may take a few), and then the
    // server says it is not ready.
    let failed = crate::support::eventually("a store write to fail", || {
        let (code, text) = post("/api/workflows/wf_before/execute", "{}");
        if code == 202 {
            let run: Value = serde_json::from_str(&text).unwrap();
            acknowledged.push(run["run_id"].as_str().unwrap().to_owned());
            return None;
        }
        Some((code, text))
    });
    assert!((500..600).contains(&failed.0), "{failed:?}");
    let error: Value = serde_json::from_str(&failed.1).unwrap();
    assert!(error["error"]["code"].is_string(), "{failed:?}");
    crate::support::eventually("/readyz to answer 503", || {
        (status("/readyz") == 503).then_some(())
    });
    assert_eq!(temporary_files(dir), Vec::<String>::new());

    // Space comes back: without a restart, the server is ready and writes succeed.
    std::fs::remove_file(&filler).unwrap();
    crate::support::eventually("/readyz to answer 200 again", || {
        (status("/readyz") == 200).then_some(())
    });
    let (code, text) = post("/api/manifests", &manifest("After"));
    assert_eq!(code, 201, "{text}");
    let (code, text) = post("/api/workflows/wf_after/execute", "{}");
    assert_eq!(code, 202, "{text}");
    // Everything acknowledged before is still there.
    for run in &acknowledged {
        assert_eq!(status(&format!("/api/runs/{run}")), 200, "{run}");
    }
    assert_eq!(status("/api/workflows/wf_before"), 200);
    assert_eq!(status("/api/workflows/wf_after"), 200);
    assert_eq!(temporary_files(dir), Vec::<String>::new());
    drop(server);
    // And after a restart too.
    let _server = Server::start(dir);
    let api = Api::of_project(dir);
    for run in &acknowledged {
        let answer = api.get(&format!("/api/runs/{run}"));
        assert_eq!(answer.status, 200, "{run}");
    }
}

/// The first run id in `run list -o json`'s answer, wherever it nests them.
fn find_run_id(value: &Value) -> String {
    match value {
        Value::String(text) if text.starts_with("run_") => Some(text.clone()),
        Value::Array(items) => items.iter().map(find_run_id).find(|id| !id.is_empty()),
        Value::Object(map) => map
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| id.starts_with("run_"))
            .map(str::to_owned)
            .or_else(|| map.values().map(find_run_id).find(|id| !id.is_empty())),
        _ => None,
    }
    .unwrap_or_default()
}
