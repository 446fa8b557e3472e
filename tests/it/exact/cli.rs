//! The CLI's contracts: encoded path segments, missing or empty project directories, API
//! errors shown with the same exit codes, closed pipes, output formats, completions and help.
//!
//! Commands that can go through a running server run twice, in a project without a server
//! and in one whose store a real `orchestrator start` holds, and must answer alike. Closed
//! pipes are real pipes whose reader is gone; completion scripts are checked by `bash -n`.

use std::fs;
use std::path::Path;

use crate::cli_remote::Pair;
use crate::support::Run;
use crate::support::{cli, project, Server};

/// A quick workflow whose name has a space.
const UNIT_TESTS: &str = r#"name: Unit Tests
steps:
  - name: unit
    command: ["sh", "-c", "echo all green"]
  - name: second step
    command: ["true"]
"#;

#[test]
fn names_and_ids_with_spaces_slashes_and_query_characters_reach_the_server_as_one_segment() {
    let pair = Pair::new(&[("workflows/unit.yaml", UNIT_TESTS)]);
    let executed = pair.same_exit(&["workflow", "execute", "Unit Tests"], 0);
    assert!(executed.stdout.contains("succeeded"), "{}", executed.stdout);
    pair.same_exit(&["alert", "show", "High CPU Usage"], 0);
    pair.same_exit(&["schedule", "pause", "Nightly API Tests"], 0);
    pair.same_exit(&["schedule", "resume", "Nightly API Tests"], 0);
    // Ids that hold a slash, a `?`, a `#`, a `%` or a space name nothing: the answer is the
    // store's "no such ...", never another route's answer or a malformed request.
    for id in ["no such/run?x=1#y", "100% done", "a b"] {
        pair.same_exit(&["run", "show", id], 2);
        pair.same_exit(&["run", "cancel", id], 2);
        pair.same_exit(&["run", "rerun", id], 2);
        pair.same_exit(&["workflow", "execute", id], 2);
        pair.same_exit(&["trigger", "deliveries", id], 2);
        pair.same_exit(&["alert", "show", id], 2);
        pair.same_exit(&["alert", "unsilence", id], 2);
    }
}

/// Every file and directory under `dir`, relative to it, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        for entry in fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                pending.push(path);
            }
        }
    }
    found.sort();
    found
}

/// Commands that only read, as a user types them.
const READ_ONLY: &[&[&str]] = &[
    &["get"],
    &["get", "workflow"],
    &["workflow", "list"],
    &["run", "list"],
    &["run", "list", "-o", "json"],
    &["schedule", "list"],
    &["trigger", "list"],
    &["alert", "list"],
    &["alert", "silences"],
    &["tests", "list"],
    &["tests", "list", "--status", "flaky", "-o", "json"],
];

#[test]
fn a_missing_project_directory_is_an_error_and_stays_missing() {
    let parent = crate::support::temp_project();
    let missing = parent.path().join("no/such/project");
    let shown = missing.display().to_string();
    for args in READ_ONLY.iter().chain(&[
        &["validate"][..],
        &["diff"],
        &["apply"],
        &["config", "show"],
        &["workflow", "execute", "x"],
        &["status"],
    ]) {
        let mut full = vec!["-C", shown.as_str()];
        full.extend_from_slice(args);
        let run = cli(parent.path(), &full).expect_code(2);
        assert!(
            run.stderr
                .contains(&format!("no project directory {shown}: it does not exist")),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!parent.path().join("no").exists(), "{args:?} created it");
    }
    // A file is no project directory either.
    fs::write(parent.path().join("file"), "").unwrap();
    let run = cli(parent.path(), &["-C", "file", "get"]).expect_code(2);
    assert!(
        run.stderr.contains("no project directory file"),
        "{}",
        run.stderr
    );
}

#[test]
fn read_only_commands_create_nothing_and_say_nothing_is_applied_yet() {
    // A directory that is no project.
    let empty = crate::support::temp_project();
    for args in READ_ONLY {
        let run = cli(empty.path(), args).expect_code(0);
        assert!(
            run.stderr
                .contains("nothing applied yet: no store in ./data"),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(tree(empty.path()), Vec::<String>::new(), "{args:?}");
    }
    let listed = cli(empty.path(), &["run", "list", "-o", "json"]).expect_code(0);
    assert_eq!(listed.stdout.trim(), "[]");
    cli(empty.path(), &["config", "show"]).expect_code(0);
    cli(empty.path(), &["status"]).expect_code(3);
    let shown = cli(empty.path(), &["workflow", "show", "wf_x"]).expect_code(2);
    assert!(
        shown.stderr.contains("no workflow `wf_x`"),
        "{}",
        shown.stderr
    );
    assert_eq!(tree(empty.path()), Vec::<String>::new());

    // A fresh project: reading and planning write neither data/ nor logs/.
    let project = project(&[]);
    let dir = project.path();
    let before = tree(dir);
    for args in READ_ONLY {
        cli(dir, args).expect_code(0);
    }
    let planned = cli(dir, &["diff"]).expect_code(1);
    assert!(
        planned.stdout.contains("Workflow wf_api-test-suite"),
        "{}",
        planned.stdout
    );
    cli(dir, &["apply", "--dry-run"]).expect_code(0);
    cli(dir, &["validate"]).expect_code(0);
    assert_eq!(tree(dir), before);
    // Once applied, they read the store and say nothing of it.
    cli(dir, &["apply"]).expect_code(0);
    let listed = cli(dir, &["workflow", "list"]).expect_code(0);
    assert!(
        listed.stdout.contains("wf_api-test-suite"),
        "{}",
        listed.stdout
    );
    assert!(
        !listed.stderr.contains("nothing applied"),
        "{}",
        listed.stderr
    );
}

#[test]
fn validate_in_a_directory_without_manifests_or_configuration_says_it_is_no_project() {
    let empty = crate::support::temp_project();
    let real = fs::canonicalize(empty.path()).unwrap();
    for args in [
        &["validate"][..],
        &["validate", "-o", "json"],
        &["diff"],
        &["apply"],
    ] {
        let run = cli(empty.path(), args).expect_code(2);
        assert!(
            run.stderr.contains(&format!(
                "{} is not a project: no manifests in workflows/",
                real.display()
            )) && run.stderr.contains("and no config/development.yaml"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(!empty.path().join("data").exists(), "{args:?}");
    }
    // Manifests without configuration are a project (the defaults apply)...
    fs::create_dir(empty.path().join("workflows")).unwrap();
    fs::write(empty.path().join("workflows/unit.yaml"), UNIT_TESTS).unwrap();
    let run = cli(empty.path(), &["validate"]).expect_code(0);
    assert!(
        run.stdout.contains("validated 1 object in 1 file"),
        "{}",
        run.stdout
    );
    // ...and so is configuration without manifests.
    let configured = project(&[]);
    for dir in [
        "workflows",
        "schedules",
        "alerts",
        "triggers",
        "agents",
        "templates",
    ] {
        let _ = fs::remove_dir_all(configured.path().join(dir));
    }
    let run = cli(configured.path(), &["validate"]).expect_code(0);
    assert!(
        run.stdout.contains("validated 0 objects in 0 files"),
        "{}",
        run.stdout
    );
}

#[test]
fn api_errors_reach_the_user_with_the_same_words_and_exit_codes_with_or_without_a_server() {
    let pair = Pair::new(&[("workflows/unit.yaml", UNIT_TESTS)]);
    pair.same_exit(&["workflow", "execute", "wf_unit-tests"], 0);
    let (local, remote) = pair.newest_runs();
    let logs = pair.same_exit_with(
        &["run", "logs", &local, "nosuchstep"],
        &["run", "logs", &remote, "nosuchstep"],
        2,
    );
    assert_eq!(
        logs.stderr.trim(),
        format!("error: run `{remote}` has no step `nosuchstep`; its steps: unit, second step")
    );
    let api = pair.server.api();
    let message = api
        .get(&format!("/api/runs/{remote}/logs/nosuchstep"))
        .expect_error(404, "not_found");
    assert_eq!(logs.stderr.trim(), format!("error: {message}"));
    let shown = pair.same_exit_with(
        &["run", "logs", &local, "second step"],
        &["run", "logs", &remote, "second step"],
        0,
    );
    assert_eq!(shown.stdout, "");
    let unit = pair.same_exit_with(
        &["run", "logs", &local, "unit"],
        &["run", "logs", &remote, "unit"],
        0,
    );
    assert!(unit.stdout.contains("all green"), "{}", unit.stdout);
    pair.same_exit(&["run", "logs", "run_nosuch"], 2);
    pair.same_exit(&["run", "logs", "run_nosuch", "unit"], 2);

    let listed = pair.same_exit(&["run", "list", "--status", "bogus"], 2);
    let message = api
        .get("/api/runs?status=bogus")
        .expect_error(400, "bad_request");
    assert_eq!(listed.stderr.trim(), format!("error: {message}"));
    assert_eq!(listed.stdout, "");
    for dir in [pair.local(), pair.remote()] {
        let succeeded = cli(dir, &["run", "list", "--status", "succeeded"]).expect_code(0);
        assert!(
            succeeded.stdout.contains("wf_unit-tests"),
            "{}",
            succeeded.stdout
        );
    }
    pair.same_exit(&["run", "list", "--status", "failed"], 0);
}

/// Runs a command whose stdout is a pipe nobody reads any more (what `| head -1` leaves once
/// head has exited): every write fails with a broken pipe.
fn with_closed_stdout(dir: &Path, args: &[&str]) -> Run {
    let (reader, writer) = nix::unistd::pipe().expect("a pipe");
    drop(reader);
    let output = crate::support::command(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run orchestrator");
    Run::from(output)
}

#[test]
fn a_closed_pipe_on_stdout_ends_every_command_quietly() {
    let project = project(&[("workflows/unit.yaml", UNIT_TESTS)]);
    let dir = project.path();
    cli(dir, &["apply"]).expect_code(0);
    cli(dir, &["workflow", "execute", "wf_unit-tests"]).expect_code(0);
    let commands: &[&[&str]] = &[
        &["config", "show"],
        &["config", "show", "-o", "json"],
        &["validate"],
        &["validate", "-o", "json"],
        &["diff"],
        &["get"],
        &["get", "-o", "yaml"],
        &["workflow", "list"],
        &["workflow", "show", "wf_unit-tests"],
        &["run", "list"],
        &["run", "logs", "run_none"],
        &["schedule", "list"],
        &["schedule", "next", "* * * * *", "--count", "500"],
        &["alert", "list"],
        &["trigger", "list"],
        &["status"],
        &["--help"],
    ];
    for args in commands {
        let run = with_closed_stdout(dir, args);
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("Broken pipe"),
            "{args:?} (exit {}): {}",
            run.code,
            run.stderr
        );
        // Errors that are not about the pipe are still reported.
        if args == &["run", "logs", "run_none"] {
            assert_eq!(run.code, 2, "{}", run.stderr);
            assert!(run.stderr.contains("no run `run_none`"), "{}", run.stderr);
        } else {
            assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        }
    }
    // The issue's own case: `status | head -1` against a running server.
    let _server = Server::start(dir);
    let run = with_closed_stdout(dir, &["status"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""));
    let run = with_closed_stdout(dir, &["run", "list"]);
    assert_eq!((run.code, run.stderr.as_str()), (0, ""));
}

/// Runs a command with `stdin` as its standard input and extra environment variables.
fn with_input(dir: &Path, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Run {
    use std::io::Write as _;
    let mut child = crate::support::command(dir)
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run orchestrator");
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.as_bytes()).unwrap();
    drop(pipe);
    Run::from(child.wait_with_output().unwrap())
}

#[test]
fn validate_dash_reads_manifests_from_stdin() {
    let project = project(&[]);
    let dir = project.path();
    let good = format!("kind: Workflow\n{UNIT_TESTS}");
    let run = with_input(dir, &["validate", "-"], &good, &[]).expect_code(0);
    assert_eq!(
        run.stdout,
        "validated 1 object in 1 file: 0 errors, 0 warnings\n"
    );
    let bad = good.replace(
        "    command: [\"true\"]",
        "    command: [\"true\"]\n    timout: 3",
    );
    let run = with_input(dir, &["validate", "-"], &bad, &[]).expect_code(1);
    assert!(
        run.stdout.contains("--> <stdin>:8:5 at /steps/1/timout"),
        "{}",
        run.stdout
    );
    // With other paths, stdin is one more file.
    let run =
        with_input(dir, &["validate", "workflows/smoke.yaml", "-"], &good, &[]).expect_code(0);
    assert_eq!(
        run.stdout,
        "validated 2 objects in 2 files: 0 errors, 0 warnings\n"
    );
    // -o yaml is YAML (it was JSON).
    let run = with_input(dir, &["validate", "-", "-o", "yaml"], &bad, &[]).expect_code(1);
    assert!(run.stdout.contains("\nerrors: 1\n"), "{}", run.stdout);
    assert!(run.stdout.contains("file: <stdin>"), "{}", run.stdout);
    let run = with_input(dir, &["validate", "-", "-o", "json"], &bad, &[]).expect_code(1);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["diagnostics"][0]["file"], "<stdin>");
}

#[test]
fn diff_speaks_json_and_yaml_with_its_exit_codes() {
    let project = project(&[]);
    let dir = project.path();
    let run = cli(dir, &["diff", "-o", "json"]).expect_code(1);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).expect(&run.stdout);
    let created: Vec<&str> = plan["plan"]["create"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(created.contains(&"wf_api-test-suite"), "{created:?}");
    assert!(
        plan["summary"].as_str().unwrap().ends_with("0 to delete"),
        "{plan}"
    );
    assert_eq!(plan["diagnostics"], serde_json::json!([]));
    let run = cli(dir, &["diff", "-o", "yaml"]).expect_code(1);
    assert!(
        run.stdout.starts_with("plan:\n  create:\n"),
        "{}",
        run.stdout
    );
    cli(dir, &["apply"]).expect_code(0);
    let run = cli(dir, &["diff", "-o", "json"]).expect_code(0);
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(plan["plan"]["create"], serde_json::json!([]));
    assert_eq!(plan["summary"], "0 to create, 0 to update, 0 to delete");
}

#[test]
fn get_kind_id_in_json_or_yaml_is_the_object_itself() {
    let project = project(&[]);
    let dir = project.path();
    cli(dir, &["apply"]).expect_code(0);
    let run = cli(dir, &["get", "workflow", "wf_api-test-suite", "-o", "json"]).expect_code(0);
    let object: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(object["kind"], "Workflow", "{object}");
    assert_eq!(object["id"], "wf_api-test-suite", "{object}");
    let run = cli(dir, &["get", "workflow", "wf_api-test-suite", "-o", "yaml"]).expect_code(0);
    assert!(
        run.stdout
            .starts_with("kind: Workflow\nid: wf_api-test-suite\n"),
        "{}",
        run.stdout
    );
    // Without an id, a list, even of one.
    let run = cli(dir, &["get", "trigger", "-o", "json"]).expect_code(0);
    let list: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish() {
    // Read whole (`orchestrator`, not `cli`): a script is larger than a pipe's buffer.
    let nowhere = crate::support::temp_project();
    let bash = crate::support::orchestrator(nowhere.path(), &["completion", "bash"]).expect_code(0);
    assert!(
        bash.stdout.contains("complete -F _orchestrator"),
        "{}",
        bash.stdout
    );
    for command in ["validate", "workflow", "completion", "silence"] {
        assert!(bash.stdout.contains(command), "bash: no {command}");
    }
    let script = nowhere.path().join("orchestrator.bash");
    fs::write(&script, &bash.stdout).unwrap();
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(checked.status.success(), "{checked:?}");
    let zsh = crate::support::orchestrator(nowhere.path(), &["completion", "zsh"]).expect_code(0);
    assert!(
        zsh.stdout.starts_with("#compdef orchestrator"),
        "{}",
        zsh.stdout
    );
    let fish = crate::support::orchestrator(nowhere.path(), &["completion", "fish"]).expect_code(0);
    assert!(
        fish.stdout.contains("complete -c orchestrator"),
        "{}",
        fish.stdout
    );
    crate::support::orchestrator(nowhere.path(), &["completion", "tcsh"]).expect_code(2);
    assert_eq!(tree(nowhere.path()), vec!["orchestrator.bash".to_owned()]);
}

#[test]
fn help_names_every_kind_and_validate_its_exit_codes_and_formats() {
    let dir = crate::support::temp_project();
    let get = cli(dir.path(), &["get", "--help"]).expect_code(0);
    for kind in [
        "workflow",
        "workflowtemplate",
        "agent",
        "schedule",
        "alert",
        "trigger",
        "dashboard",
    ] {
        assert!(
            get.stdout.contains(kind),
            "get --help lacks {kind}:\n{}",
            get.stdout
        );
        // Each one named there is accepted.
        cli(dir.path(), &["get", kind]).expect_code(0);
    }
    let validate = cli(dir.path(), &["validate", "--help"]).expect_code(0);
    for line in [
        "0  no errors (warnings allowed)",
        "1  errors in the manifests",
        "2  the command could not run",
        "json   {revision, files, objects, errors, warnings, diagnostics}",
        "yaml   the same as YAML",
        "reads manifests from stdin",
    ] {
        assert!(
            validate.stdout.contains(line),
            "validate --help lacks {line:?}:\n{}",
            validate.stdout
        );
    }
    let diff = cli(dir.path(), &["diff", "--help"]).expect_code(0);
    assert!(diff.stdout.contains("0  no differences"), "{}", diff.stdout);
}

#[test]
fn alert_silence_by_label_works_as_the_readme_writes_it() {
    let readme = fs::read_to_string(crate::support::repo_dir().join("README.md")).unwrap();
    assert!(readme.contains("`orchestrator alert silence --label team=qa --for 1h`"));
    let project = project(&[]);
    let dir = project.path();
    cli(dir, &["apply"]).expect_code(0);
    let run = cli(
        dir,
        &["alert", "silence", "--label", "team=qa", "--for", "1h"],
    )
    .expect_code(0);
    assert!(run.stdout.contains("mutes team=qa until"), "{}", run.stdout);
    let listed = cli(dir, &["alert", "silences", "-o", "json"]).expect_code(0);
    let silences: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(
        silences[0]["comment"], "silenced from the command line: team=qa",
        "{silences}"
    );
}

#[test]
fn orchestrator_api_token_is_a_reference_read_by_the_server_and_the_cli_alike() {
    let project = project(&[]);
    let dir = project.path();
    let env = [
        ("ORCHESTRATOR_API_TOKEN", "env:QA_TOKEN"),
        ("QA_TOKEN", "s3cret-token-for-the-test"),
    ];
    let _server = Server::start_with(dir, &env);
    // The CLI reads the same variable and sends the token.
    with_input(dir, &["workflow", "list"], "", &env).expect_code(0);
    // Without it the server refuses the CLI, and the CLI says so.
    let refused = with_input(dir, &["workflow", "list"], "", &[]).expect_code(2);
    assert!(refused.stderr.contains("token"), "{}", refused.stderr);
    // It wins over the configuration file's server.api_token.
    crate::support::edit_config(dir, "server:\n", "server:\n  api_token: env:OTHER_TOKEN\n");
    with_input(dir, &["workflow", "list"], "", &env).expect_code(0);
    let readme = fs::read_to_string(crate::support::repo_dir().join("README.md")).unwrap();
    assert!(
        readme.contains("**`ORCHESTRATOR_API_TOKEN`** is the same setting as `server.api_token`")
            && readme.contains("Precedence, highest first:"),
        "the README does not say who reads ORCHESTRATOR_API_TOKEN and what wins"
    );
    // The token itself, instead of a reference, is refused.
    let bare = with_input(
        dir,
        &["workflow", "list"],
        "",
        &[("ORCHESTRATOR_API_TOKEN", "s3cret-token-for-the-test")],
    )
    .expect_code(2);
    assert!(
        bare.stderr.contains("never the token itself"),
        "{}",
        bare.stderr
    );
}
