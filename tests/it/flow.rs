//! The user's path through the foundation commands: init, validate, diff, apply, edit, break,
//! delete, prune; each step checked on output, exit code and store content.

use std::fs;

use serde_json::Value;

use crate::support::{command, orchestrator, project, repo_dir, temp_project};

fn stored(dir: &std::path::Path) -> Vec<Value> {
    let run = orchestrator(dir, &["get", "--all", "-o", "json"]).expect_code(0);
    serde_json::from_str(&run.stdout).expect("get -o json prints JSON")
}

fn record<'a>(records: &'a [Value], id: &str) -> &'a Value {
    records
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no record {id} in {records:#?}"))
}

#[test]
fn init_validate_diff_apply_edit_break_delete_prune() {
    let project = temp_project();
    let dir = project.path();

    let init = orchestrator(dir, &["init"]).expect_code(0);
    assert!(init.stdout.contains("created workflows/api_tests.json"));
    assert!(init.stdout.contains("created config/production.yaml"));
    assert!(fs::read_to_string(dir.join(".gitignore"))
        .unwrap()
        .contains("data/"));

    // A second init refuses to overwrite, and says how to.
    let again = orchestrator(dir, &["init"]).expect_code(2);
    assert!(
        again.stderr.contains("use --force to overwrite"),
        "{}",
        again.stderr
    );
    orchestrator(dir, &["init", "--force"]).expect_code(0);

    let validate = orchestrator(dir, &["validate"]).expect_code(0);
    assert!(validate.stdout.contains("0 errors"), "{}", validate.stdout);
    assert_only_environment_warnings(&validate.stdout);

    let diff = orchestrator(dir, &["diff"]).expect_code(1);
    assert!(diff
        .stdout
        .contains("Workflow wf_api-test-suite (workflows/api_tests.json): create"));
    assert!(diff.stdout.contains("+name: API Test Suite"));
    assert!(
        diff.stdout
            .ends_with("9 to create, 0 to update, 0 to delete\n"),
        "{}",
        diff.stdout
    );

    let apply = orchestrator(dir, &["apply"]).expect_code(0);
    assert!(apply.stdout.contains("Workflow wf_api-test-suite created"));
    assert!(apply.stdout.contains("9 created"), "{}", apply.stdout);
    let records = stored(dir);
    assert_eq!(records.len(), 9);
    let workflow = record(&records, "wf_api-test-suite");
    assert_eq!(workflow["status"], "applied");
    assert_eq!(workflow["spec"]["steps"][1]["parameters"]["timeout"], 300);
    assert_eq!(workflow["source_file"], "workflows/api_tests.json");

    let unchanged = orchestrator(dir, &["diff"]).expect_code(0);
    assert_eq!(unchanged.stdout, "0 to create, 0 to update, 0 to delete\n");

    // An edit shows as exactly that edit.
    let path = dir.join("workflows/api_tests.json");
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("\"detailed\"", "\"summary\"")).unwrap();
    let edited = orchestrator(dir, &["diff"]).expect_code(1);
    let changed: Vec<&str> = edited
        .stdout
        .lines()
        .filter(|l| {
            (l.starts_with('+') || l.starts_with('-'))
                && !l.starts_with("+++")
                && !l.starts_with("---")
        })
        .collect();
    assert_eq!(
        changed,
        ["-    template: detailed", "+    template: summary"]
    );
    assert!(edited
        .stdout
        .contains("0 to create, 1 to update, 0 to delete"));
    orchestrator(dir, &["apply"]).expect_code(0);
    assert_eq!(record(&stored(dir), "wf_api-test-suite")["generation"], 2);

    // A broken file: the diagnostic is reported, the last good version stays in force, and
    // the valid files still apply.
    let smoke = dir.join("workflows/smoke.yaml");
    let smoke_text = fs::read_to_string(&smoke).unwrap();
    fs::write(&smoke, smoke_text.replace("retries: 2", "retries: many")).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    fs::write(&path, text.replace("\"summary\"", "\"detailed\"")).unwrap();
    let broken = orchestrator(dir, &["apply"]).expect_code(1);
    assert!(
        broken
            .stderr
            .contains("error: expected an integer, found `many`"),
        "{}",
        broken.stderr
    );
    assert!(
        broken.stderr.contains("--> workflows/smoke.yaml:"),
        "{}",
        broken.stderr
    );
    assert!(broken
        .stdout
        .contains("Workflow wf_smoke invalid: the last good version stays in force"));
    assert!(broken
        .stdout
        .contains("Workflow wf_api-test-suite configured"));
    let records = stored(dir);
    let smoke_record = record(&records, "wf_smoke");
    assert_eq!(smoke_record["status"], "invalid");
    assert_eq!(smoke_record["spec"]["steps"][2]["retries"], 2);
    assert_eq!(
        smoke_record["diagnostics"][0]["pointer"],
        "/steps/2/retries"
    );

    // A file that does not even parse keeps the objects it held.
    fs::write(&smoke, "name: [unclosed\n").unwrap();
    let unreadable = orchestrator(dir, &["apply", "--prune"]).expect_code(1);
    assert!(
        unreadable.stdout.contains("Workflow wf_smoke kept"),
        "{}",
        unreadable.stdout
    );
    assert!(record(&stored(dir), "wf_smoke")["spec"].is_object());

    // Fixing it brings it back to applied.
    fs::write(&smoke, &smoke_text).unwrap();
    orchestrator(dir, &["apply"]).expect_code(0);
    assert_eq!(record(&stored(dir), "wf_smoke")["status"], "applied");

    // A deleted file shows as a deletion, stays until --prune, then is pruned.
    fs::remove_file(dir.join("triggers/github.yaml")).unwrap();
    let deleted = orchestrator(dir, &["diff"]).expect_code(1);
    assert!(deleted.stdout.contains(
        "Trigger trg_github-push (triggers/github.yaml): delete (manifest removed; apply --prune removes it)"
    ));
    assert!(deleted
        .stdout
        .contains("0 to create, 0 to update, 1 to delete"));
    let kept = orchestrator(dir, &["apply"]).expect_code(0);
    assert!(kept.stdout.contains("Trigger trg_github-push not pruned"));
    assert_eq!(record(&stored(dir), "trg_github-push")["status"], "applied");
    let pruned = orchestrator(dir, &["apply", "--prune"]).expect_code(0);
    assert!(pruned.stdout.contains("Trigger trg_github-push pruned"));
    assert_eq!(record(&stored(dir), "trg_github-push")["status"], "pruned");
    orchestrator(dir, &["diff"]).expect_code(0);
}

#[test]
fn dry_run_writes_nothing() {
    let project = project(&[]);
    let dir = project.path();
    let dry = orchestrator(dir, &["apply", "--dry-run"]).expect_code(0);
    assert!(dry.stdout.contains("Workflow wf_smoke created (dry run)"));
    assert!(dry.stdout.contains("dry run, nothing written"));
    assert!(stored(dir).is_empty());
}

#[test]
fn explicit_paths_limit_deletions_to_those_paths() {
    let project = project(&[]);
    let dir = project.path();
    orchestrator(dir, &["apply"]).expect_code(0);
    // Diffing one directory does not call everything else a deletion.
    let run = orchestrator(dir, &["diff", "alerts"]).expect_code(0);
    assert_eq!(run.stdout, "0 to create, 0 to update, 0 to delete\n");
}

#[test]
fn a_held_store_is_reported_with_the_holder_pid() {
    let project = project(&[]);
    let dir = project.path();
    let store = orchestrator::store::Store::open(&dir.join("data")).unwrap();
    let run = orchestrator(dir, &["apply"]).expect_code(2);
    assert!(
        run.stderr.contains(&format!(
            "data directory {} is in use by PID {}",
            dir.join("data").display(),
            std::process::id()
        )) || run
            .stderr
            .contains(&format!("is in use by PID {}", std::process::id())),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    drop(store);
    orchestrator(dir, &["apply"]).expect_code(0);
}

#[test]
fn unwritable_data_dir_is_one_line_naming_the_path() {
    let project = project(&[]);
    let dir = project.path();
    // A file where the data directory should be cannot be made a directory, even as root.
    fs::write(dir.join("blocker"), "").unwrap();
    let run = orchestrator(dir, &["apply", "--data-dir", "blocker/data"]).expect_code(2);
    assert!(
        run.stderr
            .starts_with("error: cannot use data directory blocker/data:"),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn config_show_follows_environment_and_overrides() {
    let project = project(&[]);
    let dir = project.path();
    let show = orchestrator(dir, &["config", "show", "--environment", "production"]).expect_code(0);
    assert!(show.stdout.contains("# environment: production"));
    assert!(show.stdout.contains("level: warn"), "{}", show.stdout);
    let run = command(dir)
        .args(["--environment", "staging", "config", "show", "-o", "json"])
        .env("ORCHESTRATOR_PORT", "9100")
        .output()
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(config["environment"], "staging");
    assert_eq!(config["server"]["port"], 9100);

    orchestrator(dir, &["config", "validate"]).expect_code(0);
    fs::write(
        dir.join("config/testing.yaml"),
        "environment: testing\nserver:\n  port: 99999\n",
    )
    .unwrap();
    let invalid = orchestrator(dir, &["config", "validate"]).expect_code(1);
    assert!(
        invalid
            .stdout
            .contains("--> config/testing.yaml:3:9 at /server/port"),
        "{}",
        invalid.stdout
    );
}

#[test]
fn the_repository_and_its_examples_validate() {
    let run = orchestrator(&repo_dir(), &["validate"]).expect_code(0);
    assert!(run.stdout.contains("0 errors"), "{}", run.stdout);
    assert_only_environment_warnings(&run.stdout);
    let examples = repo_dir().join("examples/manifests");
    let run = orchestrator(&repo_dir(), &["validate", examples.to_str().unwrap()]).expect_code(0);
    assert!(run.stdout.contains("0 errors"), "{}", run.stdout);
}

#[test]
fn the_guides_examples_are_valid_verbatim() {
    let guide = repo_dir().join("tests/fixtures/guide");
    let run = orchestrator(&guide, &["validate", "-o", "json"]).expect_code(0);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["errors"], 0, "{report:#}");
    // workflow + two alerts + the template
    assert_eq!(report["objects"], 4, "{report:#}");
    // The guide's template has only a comment for steps: accepted, with a warning. Its
    // test_runner steps name a suite and an environment no Agent manifest configures here,
    // and its alerts notify channels no configuration defines here: warnings too.
    let messages: Vec<&str> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    let count = |text: &str| messages.iter().filter(|m| m.contains(text)).count();
    assert_eq!(count("template has no steps"), 1, "{report:#}");
    assert_eq!(count("has no Agent manifest here"), 2, "{report:#}");
    assert_eq!(count("notification channel"), 4, "{report:#}");
    assert_eq!(report["warnings"], 7, "{report:#}");
}

/// Every warning in `validate`'s output depends on where it runs: a secret that does not
/// resolve in this environment, a notification channel no configuration defines.
#[track_caller]
fn assert_only_environment_warnings(out: &str) {
    for line in out.lines().filter(|l| l.starts_with("warning:")) {
        assert!(
            line.contains("does not resolve here") || line.contains("notification channel"),
            "unexpected warning `{line}` in:\n{out}"
        );
    }
}
