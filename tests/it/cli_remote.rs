//! The command line with and without a server: "the same output either way". Every command
//! runs in two projects initialised alike, one on its store directly and one whose store a
//! running `orchestrator start` holds (the command goes through its API); the exit codes and
//! the outputs, once what legitimately differs is masked (run ids, timestamps, durations, the
//! project's path), must be equal.
//!
//! Nothing waits a fixed time: every wait polls with a deadline.

use std::fs;
use std::path::Path;
use std::process::Stdio;

use serde_json::Value;
use tempfile::TempDir;

use crate::engine::SLEEPER;
use crate::server::ECHO;
use crate::support::{
    assert_gone, cli, command, eventually, finish, newest_run, project, run_id, wait_for_file,
    write_files, Run, Server,
};

/// A workflow whose one step fails with output.
const BOOM: &str = r#"name: Boom
steps:
  - name: explode
    command: ["sh", "-c", "echo boom; exit 3"]
"#;

/// A step that fails twice, then succeeds (the count is kept in the project directory).
const FLAKY: &str = r#"name: Flaky
steps:
  - name: flaky
    command: ["sh", "-c", "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ $n -ge 2 ]"]
    retries: 3
    retry_delay: 10ms
  - name: after
    command: ["true"]
"#;

/// Two projects initialised alike: `local` used without a server (its manifests applied by
/// `apply`), `remote` with a server running on it (which applied them when it started).
pub(crate) struct Pair {
    // Declared first, so it is stopped before the directories are removed.
    pub(crate) server: Server,
    local: TempDir,
    remote: TempDir,
}

impl Pair {
    pub(crate) fn new(files: &[(&str, &str)]) -> Pair {
        let local = project(files);
        cli(local.path(), &["apply"]).expect_code(0);
        let remote = project(files);
        let server = Server::start(remote.path());
        assert!(remote.path().join("data/server.json").exists());
        Pair {
            server,
            local,
            remote,
        }
    }

    pub(crate) fn local(&self) -> &Path {
        self.local.path()
    }

    pub(crate) fn remote(&self) -> &Path {
        self.remote.path()
    }

    /// Runs one command in both projects; asserts equal exit codes and equal normalised
    /// stdout and stderr; returns (local, remote).
    #[track_caller]
    pub(crate) fn same(&self, args: &[&str]) -> (Run, Run) {
        self.same_with(args, args)
    }

    /// [`Pair::same`] with arguments that differ between the projects (run ids).
    #[track_caller]
    pub(crate) fn same_with(&self, local_args: &[&str], remote_args: &[&str]) -> (Run, Run) {
        let local = cli(self.local(), local_args);
        let remote = cli(self.remote(), remote_args);
        let both = || {
            format!(
                "`orchestrator {}`\n--- without a server (exit {})\n{}{}\n--- with a server (exit {})\n{}{}",
                local_args.join(" "),
                local.code,
                local.stdout,
                local.stderr,
                remote.code,
                remote.stdout,
                remote.stderr
            )
        };
        assert_eq!(local.code, remote.code, "exit codes differ: {}", both());
        assert_eq!(
            normalise(&local.stdout, self.local()),
            normalise(&remote.stdout, self.remote()),
            "stdout differs: {}",
            both()
        );
        assert_eq!(
            normalise(&local.stderr, self.local()),
            normalise(&remote.stderr, self.remote()),
            "stderr differs: {}",
            both()
        );
        (local, remote)
    }

    /// [`Pair::same`] that also asserts the exit code; returns the remote run.
    #[track_caller]
    pub(crate) fn same_exit(&self, args: &[&str], code: i32) -> Run {
        self.same_exit_with(args, args, code)
    }

    /// [`Pair::same_with`] that also asserts the exit code; returns the remote run.
    #[track_caller]
    pub(crate) fn same_exit_with(
        &self,
        local_args: &[&str],
        remote_args: &[&str],
        code: i32,
    ) -> Run {
        let (local, remote) = self.same_with(local_args, remote_args);
        assert_eq!(
            local.code,
            code,
            "`orchestrator {}` exit code\n--- stdout\n{}\n--- stderr\n{}",
            local_args.join(" "),
            local.stdout,
            local.stderr
        );
        remote
    }

    /// The id of the newest run in each project (local, remote).
    pub(crate) fn newest_runs(&self) -> (String, String) {
        (newest_run(self.local()), newest_run(self.remote()))
    }

    /// For `-o json`: runs one command in both projects; asserts exit 0 and equal documents
    /// once normalised; returns (local, remote).
    #[track_caller]
    fn same_json(&self, local_args: &[&str], remote_args: &[&str]) -> (Value, Value) {
        let parse = |dir: &Path, args: &[&str]| -> Value {
            let run = cli(dir, args).expect_code(0);
            serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
        };
        let local = parse(self.local(), local_args);
        let remote = parse(self.remote(), remote_args);
        assert_eq!(
            normalise_json(&local, self.local()),
            normalise_json(&remote, self.remote()),
            "`orchestrator {}` differs\n--- without a server\n{local:#}\n--- with a server\n{remote:#}",
            local_args.join(" ")
        );
        (local, remote)
    }

    /// Writes the same file into both projects.
    fn write(&self, path: &str, text: &str) {
        for dir in [self.local(), self.remote()] {
            write_files(dir, &[(path, text)]);
        }
    }
}

/// Masks what legitimately differs between two runs of a command: the project's path, run
/// ids, timestamps and durations; and the spaces aligning table columns (their widths follow
/// the masked values).
fn normalise(text: &str, project: &Path) -> String {
    let text = mask_run_ids(&text.replace(&project.display().to_string(), "PROJECT"));
    text.lines()
        .map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let mut out: Vec<String> = Vec::new();
            let mut index = 0;
            while index < tokens.len() {
                let token = tokens[index];
                let unit = tokens
                    .get(index + 1)
                    .map(|u| u.trim_end_matches([':', ',', ';', ')']));
                if is_timestamp(token) {
                    out.push("TIME".into());
                } else if is_number(token) && matches!(unit, Some("ms" | "s" | "min")) {
                    // "381 ms", "1.2 s", "2 min 5 s": the unit's punctuation stays.
                    let rest = &tokens[index + 1][unit.unwrap().len()..];
                    out.push(format!("DUR{rest}"));
                    index += 1;
                } else if token
                    .strip_suffix('s')
                    .is_some_and(|n| n.contains('.') && is_number(n))
                {
                    // `workflow show`'s "0.4s".
                    out.push("DUR".into());
                } else {
                    out.push(token.to_owned());
                }
                index += 1;
            }
            out.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `run_` and 26 lowercase base-32 characters (a ULID) become `RUN`.
fn mask_run_ids(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("run_") {
        out.push_str(&rest[..at]);
        let id: String = rest[at + 4..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
            .collect();
        if id.len() == 26 {
            out.push_str("RUN");
            rest = &rest[at + 4 + 26..];
        } else {
            out.push_str("run_");
            rest = &rest[at + 4..];
        }
    }
    out.push_str(rest);
    out
}

fn is_number(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| c.is_ascii_digit() || c == '.')
        && text.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// `2026-01-31T12:00:00.000Z` and the like.
fn is_timestamp(text: &str) -> bool {
    let bytes = text.trim_start_matches(['"', '\'']).as_bytes();
    bytes.len() >= 19
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes[10] == b'T'
}

/// A JSON document with its run ids, timestamps, durations (a run's, a step's, a test
/// case's), PIDs and the resources step processes used masked.
fn normalise_json(value: &Value, project: &Path) -> Value {
    const VOLATILE: [&str; 8] = [
        "created_at",
        "started_at",
        "finished_at",
        "duration_ms",
        "time_seconds",
        "pid",
        "cpu_seconds",
        "max_rss_bytes",
    ];
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    let value = if VOLATILE.contains(&key.as_str()) && !value.is_null() {
                        Value::from("MASKED")
                    } else {
                        normalise_json(value, project)
                    };
                    (key.clone(), value)
                })
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| normalise_json(v, project)).collect())
        }
        Value::String(text) => Value::from(normalise(text, project)),
        other => other.clone(),
    }
}

/// The lines of a run's output that report steps (`▶`, `✔`, `✘`, `↻`, `–`), each as its mark
/// and step name.
fn step_lines(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with(['▶', '✔', '✘', '↻', '–']))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
        .collect()
}

/// `run show RUN -o json` once the run has finished (a detached run without a server holds
/// the store while it runs: the command is refused until it is done).
fn finished_run(dir: &Path, run: &str) -> Value {
    eventually(&format!("run {run} to finish"), || {
        let shown = cli(dir, &["run", "show", run, "-o", "json"]);
        if shown.code != 0 {
            return None;
        }
        let shown: Value = serde_json::from_str(&shown.stdout).unwrap();
        let status = shown["run"]["status"].as_str().unwrap_or_default();
        (status != "queued" && status != "running").then_some(shown)
    })
}

#[test]
fn workflows_and_objects_read_the_same_with_and_without_a_server() {
    let pair = Pair::new(&[("workflows/echo.yaml", ECHO)]);

    let (list, _) = pair.same(&["workflow", "list"]);
    let list = list.expect_code(0);
    assert!(list.stdout.starts_with("ID "), "{}", list.stdout);
    for id in ["wf_api-test-suite", "wf_echo", "wf_smoke"] {
        assert!(list.stdout.contains(id), "{}", list.stdout);
    }
    assert!(
        list.stdout.contains("template api_test_suite"),
        "{}",
        list.stdout
    );
    let json = ["workflow", "list", "-o", "json"];
    pair.same_json(&json, &json);
    let json = ["get", "-o", "json"];
    pair.same_json(&json, &json);

    let (show, _) = pair.same(&["workflow", "show", "wf_smoke"]);
    let show = show.expect_code(0);
    assert!(
        show.stdout
            .starts_with("wf_smoke (Smoke)  from workflows/smoke.yaml"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains("recent runs:\n  none"),
        "{}",
        show.stdout
    );

    // A workflow made from a template, with a parameter given.
    let (render, _) = pair.same(&[
        "workflow",
        "render",
        "wf_api-tests-production",
        "--params",
        r#"{"environment":"staging"}"#,
    ]);
    let render = render.expect_code(0);
    assert!(
        render.stdout.contains("expanded_from: api_test_suite"),
        "{}",
        render.stdout
    );
    assert!(
        render.stdout.contains("environment: staging"),
        "{}",
        render.stdout
    );

    let (get, _) = pair.same(&["get", "workflow"]);
    let get = get.expect_code(0);
    assert!(get.stdout.starts_with("KIND "), "{}", get.stdout);
    assert!(get.stdout.contains("wf_echo"), "{}", get.stdout);
    pair.same(&["get"]).0.expect_code(0);
    pair.same(&["get", "workflow", "wf_smoke", "-o", "yaml"])
        .0
        .expect_code(0);

    let (diff, _) = pair.same(&["diff"]);
    let diff = diff.expect_code(0);
    assert_eq!(diff.stdout.trim(), "0 to create, 0 to update, 0 to delete");

    // What cannot be done is refused alike: exit 2 and the same message.
    let (unknown, _) = pair.same(&["workflow", "execute", "nope"]);
    let unknown = unknown.expect_code(2);
    assert!(
        unknown.stderr.contains("error: no workflow `nope`"),
        "{}",
        unknown.stderr
    );
    pair.same(&["workflow", "show", "nope"]).0.expect_code(2);
    pair.same(&["get", "workflow", "nope"]).0.expect_code(2);
    let (bad, _) = pair.same(&[
        "workflow",
        "execute",
        "wf_echo",
        "--params",
        r#"{"traget": "x"}"#,
    ]);
    let bad = bad.expect_code(2);
    assert!(
        bad.stderr.contains("did you mean `target`?"),
        "{}",
        bad.stderr
    );
    let (bad, _) = pair.same(&[
        "workflow",
        "execute",
        "wf_api-tests-production",
        "--params",
        r#"{"environment": 5}"#,
    ]);
    let bad = bad.expect_code(2);
    assert!(bad.stderr.contains("must be a string"), "{}", bad.stderr);
    pair.same(&["workflow", "execute", "wf_echo", "--params", "[1]"])
        .0
        .expect_code(2);
    // None of it ran anything.
    let (runs, _) = pair.same(&["run", "list"]);
    assert_eq!(runs.expect_code(0).stdout.lines().count(), 1);

    let status = cli(pair.local(), &["status"]).expect_code(3);
    assert!(status.stdout.contains("not running"), "{}", status.stdout);
    let status = cli(pair.remote(), &["status"]).expect_code(0);
    assert!(
        status
            .stdout
            .contains(&format!("running: PID {}", pair.server.pid())),
        "{}",
        status.stdout
    );
}

#[test]
fn runs_execute_and_report_the_same_with_and_without_a_server() {
    let pair = Pair::new(&[
        ("workflows/boom.yaml", BOOM),
        ("workflows/flaky.yaml", FLAKY),
    ]);

    // A run followed live: the same step lines, test summary and end.
    let (local, remote) = pair.same(&["workflow", "execute", "wf_api-test-suite"]);
    let local = local.expect_code(0);
    assert_eq!(
        step_lines(&local.stdout),
        [
            "▶ setup",
            "✔ setup",
            "▶ run_tests",
            "✔ run_tests",
            "▶ generate_report",
            "✔ generate_report"
        ],
        "{}",
        local.stdout
    );
    assert!(
        local.stdout.contains("\ntests: 3 total, 3 passed"),
        "{}",
        local.stdout
    );
    let last = local.stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("run run_") && last.contains(" succeeded in "),
        "{}",
        local.stdout
    );
    let (local_run, remote_run) = (run_id(&local.stdout), run_id(&remote.stdout));

    // A failing step: exit 1, the failure and the tail of its log.
    let (failed, _) = pair.same(&["workflow", "execute", "wf_boom"]);
    let failed = failed.expect_code(1);
    assert!(
        failed.stdout.contains("✘ explode failed in ") && failed.stdout.contains("      │ boom\n"),
        "{}",
        failed.stdout
    );
    assert!(
        failed
            .stdout
            .lines()
            .last()
            .is_some_and(|l| l.contains(" failed in ")),
        "{}",
        failed.stdout
    );

    // Retries: each failed attempt and the wait before the next, as the engine reports them.
    let (flaky, _) = pair.same(&["workflow", "execute", "wf_flaky"]);
    let flaky = flaky.expect_code(0);
    assert!(
        flaky
            .stdout
            .contains("↻ flaky attempt 1 failed; retrying in 10ms\n")
            && flaky
                .stdout
                .contains("↻ flaky attempt 2 failed; retrying in 20ms\n"),
        "{}",
        flaky.stdout
    );

    // Detached: the run id, and the run goes on.
    let (local_detached, remote_detached) =
        pair.same(&["workflow", "execute", "wf_api-test-suite", "--detach"]);
    for (dir, detached) in [
        (pair.local(), local_detached.expect_code(0)),
        (pair.remote(), remote_detached.expect_code(0)),
    ] {
        let id = detached.stdout.trim();
        assert!(
            id.starts_with("run_") && !id.contains(char::is_whitespace),
            "{}",
            detached.stdout
        );
        assert_eq!(finished_run(dir, id)["run"]["status"], "succeeded");
    }

    // The history.
    let (list, _) = pair.same(&["run", "list"]);
    assert_eq!(list.expect_code(0).stdout.lines().count(), 5);
    pair.same(&["run", "list", "--workflow", "wf_boom", "--status", "failed"])
        .0
        .expect_code(0);
    pair.same(&["workflow", "list"]).0.expect_code(0);
    let json = ["workflow", "list", "-o", "json"];
    pair.same_json(&json, &json);
    let json = ["run", "list", "-o", "json"];
    pair.same_json(&json, &json);
    pair.same(&["workflow", "show", "wf_api-test-suite"])
        .0
        .expect_code(0);

    let (shown, _) = pair.same_with(&["run", "show", &local_run], &["run", "show", &remote_run]);
    let shown = shown.expect_code(0);
    assert!(
        shown.stdout.contains("\nstatus succeeded\n"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains("\ntrigger cli, "), "{}", shown.stdout);
    let (local_json, _) = pair.same_json(
        &["run", "show", &local_run, "-o", "json"],
        &["run", "show", &remote_run, "-o", "json"],
    );
    assert_eq!(local_json["run"]["status"], "succeeded");
    assert_eq!(local_json["run"]["trigger"]["kind"], "cli");
    let statuses: Vec<&Value> = local_json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["status"])
        .collect();
    assert_eq!(statuses, ["succeeded", "succeeded", "succeeded"]);

    let (log, _) = pair.same_with(
        &["run", "logs", &local_run, "run_tests"],
        &["run", "logs", &remote_run, "run_tests"],
    );
    let log = log.expect_code(0);
    assert!(log.stdout.contains("3 tests"), "{}", log.stdout);
    pair.same_with(&["run", "logs", &local_run], &["run", "logs", &remote_run])
        .0
        .expect_code(0);

    let (rerun, _) = pair.same_with(
        &["run", "rerun", &local_run],
        &["run", "rerun", &remote_run],
    );
    let rerun = rerun.expect_code(0);
    assert!(
        rerun.stdout.contains("tests: 3 total, 3 passed"),
        "{}",
        rerun.stdout
    );
    let (refused, _) = pair.same_with(
        &["run", "rerun", &local_run, "--from-failed"],
        &["run", "rerun", &remote_run, "--from-failed"],
    );
    refused.expect_code(2);

    let (cancel, _) = pair.same_with(
        &["run", "cancel", &local_run],
        &["run", "cancel", &remote_run],
    );
    let cancel = cancel.expect_code(1);
    assert!(
        cancel.stdout.contains("is succeeded: nothing to cancel"),
        "{}",
        cancel.stdout
    );
    let (unknown, _) = pair.same(&["run", "cancel", "run_nope"]);
    let unknown = unknown.expect_code(2);
    assert!(
        unknown.stderr.contains("no run `run_nope`"),
        "{}",
        unknown.stderr
    );
    pair.same(&["run", "show", "run_nope"]).0.expect_code(2);
}

#[test]
fn run_cancel_stops_a_running_run_the_same_with_and_without_a_server() {
    let pair = Pair::new(&[("workflows/sleeper.yaml", SLEEPER)]);
    let mut followed = Vec::new();
    for dir in [pair.local(), pair.remote()] {
        let child = command(dir)
            .args(["workflow", "execute", "wf_sleeper"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_file(&dir.join("started"), "the sleeping step");
        let id = fs::read_dir(dir.join("logs/workflows"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .find(|name| name.starts_with("run_"))
            .expect("a run directory");
        let cancel = cli(dir, &["run", "cancel", &id]).expect_code(0);
        assert_eq!(
            cancel.stdout.trim(),
            format!("run {id} cancel requested: its steps are being stopped")
        );
        let execute = finish(child, "the cancelled `workflow execute`").expect_code(1);
        assert!(
            execute.stdout.contains(&format!("run {id} cancelled")),
            "{}",
            execute.stdout
        );
        assert_gone(&dir.join("nap.pid"));
        let shown = finished_run(dir, &id);
        assert_eq!(shown["run"]["status"], "cancelled", "{shown}");
        assert_eq!(shown["steps"][0]["status"], "cancelled", "{shown}");
        assert!(!dir.join("reported").exists());
        followed.push(normalise(&execute.stdout, dir));
    }
    assert_eq!(
        followed[0], followed[1],
        "`workflow execute` reported the cancelled run differently"
    );
    pair.same(&["run", "list"]).0.expect_code(0);
}

#[test]
fn apply_and_diff_of_given_paths_are_the_same_with_and_without_a_server() {
    let pair = Pair::new(&[]);
    // Outside the directories the server watches: only `apply` puts it in the store.
    pair.write(
        "extra/new.yaml",
        "kind: Workflow\nname: Extra\nsteps:\n  - name: one\n    command: [\"true\"]\n",
    );
    let (diff, _) = pair.same(&["diff", "extra/new.yaml"]);
    let diff = diff.expect_code(1);
    for line in [
        "Workflow wf_extra (extra/new.yaml): create",
        "+++ b/extra/new.yaml",
        "+name: Extra",
        "1 to create, 0 to update, 0 to delete",
    ] {
        assert!(diff.stdout.contains(line), "{}", diff.stdout);
    }
    let (dry, _) = pair.same(&["apply", "--dry-run", "extra/new.yaml"]);
    let dry = dry.expect_code(0);
    assert!(
        dry.stdout.contains("Workflow wf_extra created (dry run)"),
        "{}",
        dry.stdout
    );
    pair.same(&["get", "workflow", "wf_extra"]).0.expect_code(2);

    let (applied, _) = pair.same(&["apply", "extra/new.yaml"]);
    let applied = applied.expect_code(0);
    assert!(
        applied.stdout.starts_with("Workflow wf_extra created\n"),
        "{}",
        applied.stdout
    );
    let (again, _) = pair.same(&["apply", "extra/new.yaml"]);
    assert!(again
        .expect_code(0)
        .stdout
        .contains(": 0 created, 0 configured, 0 pruned, 1 unchanged"),);
    let (diff, _) = pair.same(&["diff", "extra/new.yaml"]);
    assert_eq!(
        diff.expect_code(0).stdout.trim(),
        "0 to create, 0 to update, 0 to delete"
    );
    let (get, _) = pair.same(&["get", "workflow"]);
    let get = get.expect_code(0);
    assert!(
        get.stdout
            .lines()
            .any(|l| l.starts_with("Workflow  wf_extra ") && l.ends_with("extra/new.yaml")),
        "{}",
        get.stdout
    );
    // Without paths its manifest is not among the configured ones: shown as a deletion, and
    // kept by an apply without --prune.
    let (diff, _) = pair.same(&["diff"]);
    assert!(diff
        .expect_code(1)
        .stdout
        .contains("Workflow wf_extra (extra/new.yaml): delete"),);

    // An edit.
    pair.write(
        "extra/new.yaml",
        "kind: Workflow\nname: Extra\ndescription: second\nsteps:\n  - name: one\n    command: [\"true\"]\n",
    );
    let (diff, _) = pair.same(&["diff", "extra/new.yaml"]);
    let diff = diff.expect_code(1);
    assert!(
        diff.stdout.contains("+description: second"),
        "{}",
        diff.stdout
    );
    assert!(
        diff.stdout
            .contains("0 to create, 1 to update, 0 to delete"),
        "{}",
        diff.stdout
    );
    let (applied, _) = pair.same(&["apply", "extra/new.yaml"]);
    assert!(applied
        .expect_code(0)
        .stdout
        .contains("Workflow wf_extra configured"),);

    // An invalid manifest: the same diagnostics, exit 1 for apply and 2 for diff.
    pair.write(
        "extra/bad.yaml",
        "kind: Workflow\nname: Bad\nsteps:\n  - name: one\n    agent: test_runer\n",
    );
    let (invalid, _) = pair.same(&["apply", "extra/bad.yaml"]);
    let invalid = invalid.expect_code(1);
    assert!(
        invalid
            .stdout
            .contains("Workflow wf_bad invalid: not applied"),
        "{}",
        invalid.stdout
    );
    assert!(
        invalid.stderr.contains("did you mean `test_runner`?")
            && invalid.stderr.contains("extra/bad.yaml:5:12"),
        "{}",
        invalid.stderr
    );
    pair.same(&["apply", "extra/bad.yaml", "-o", "json"])
        .0
        .expect_code(1);
    pair.same(&["diff", "extra/bad.yaml"]).0.expect_code(2);
    pair.same(&["apply", "extra/missing.yaml"]).0.expect_code(2);
}

#[test]
fn a_manifest_saved_in_a_watched_directory_ends_up_applied_either_way() {
    let pair = Pair::new(&[]);
    pair.write(
        "workflows/late.yaml",
        "name: Late\nsteps:\n  - name: one\n    command: [\"true\"]\n",
    );
    // Without a server it waits for `apply`.
    let diff = cli(pair.local(), &["diff"]).expect_code(1);
    assert!(
        diff.stdout
            .contains("Workflow wf_late (workflows/late.yaml): create"),
        "{}",
        diff.stdout
    );
    let applied = cli(pair.local(), &["apply"]).expect_code(0);
    assert!(
        applied.stdout.starts_with("Workflow wf_late created\n"),
        "{}",
        applied.stdout
    );
    // The server applies it on its own: soon nothing is left to apply.
    eventually("the server to apply workflows/late.yaml", || {
        (cli(pair.remote(), &["diff"]).code == 0).then_some(())
    });
    let applied = cli(pair.remote(), &["apply"]).expect_code(0);
    assert!(
        applied
            .stdout
            .contains(": 0 created, 0 configured, 0 pruned, "),
        "{}",
        applied.stdout
    );
    // From then on both read the same.
    let (diff, _) = pair.same(&["diff"]);
    assert_eq!(
        diff.expect_code(0).stdout.trim(),
        "0 to create, 0 to update, 0 to delete"
    );
    let (get, _) = pair.same(&["get", "workflow"]);
    assert!(get.expect_code(0).stdout.contains("wf_late"));
    pair.same(&["workflow", "show", "wf_late"]).0.expect_code(0);
}
