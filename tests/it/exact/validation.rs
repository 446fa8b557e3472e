//! Validation and partial applies: references resolved against the whole desired set, every violation in one pass, run-time problems caught at validate time, schemas that accept what `validate` accepts, clean failures of the create commands.
//!
//! Each test works in a fresh `init` project and runs the real binary, as CI jobs and
//! pre-commit hooks call it: `validate FILE...`, `apply FILE...`, the create commands, and
//! `check-jsonschema` with the published schemas beside `validate`.

use std::fs;
use std::path::Path;

use crate::server::{cli, project, Server};

/// A custom agent in `agents/` and a workflow in `workflows/` that uses it.
const AGENT: &str =
    "name: api_runner\ntype: test_runner\nsuites:\n  smoke:\n    command: [\"true\"]\n";
const ONE: &str = "name: One\nsteps:\n  - name: smoke\n    agent: api_runner\n    action: run_tests\n    parameters:\n      test_suite: smoke\n";

fn write(dir: &Path, path: &str, text: &str) {
    let path = dir.join(path);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn applying_one_schedule_resolves_its_workflow_in_the_rest_of_the_source() {
    let temp = project(&[]);
    let dir = temp.path();
    cli(dir, &["apply"]).expect_code(0);
    let partial = cli(dir, &["apply", "schedules/nightly.yaml"]).expect_code(0);
    assert!(
        partial.stdout.contains(" 0 invalid") && !partial.stderr.contains("unknown workflow"),
        "the schedule was downgraded:\n{}{}",
        partial.stdout,
        partial.stderr
    );
    // The record keeps its valid status (not `invalid` until the next full apply).
    let get = cli(dir, &["get", "schedule", "-o", "json"]).expect_code(0);
    assert!(!get.stdout.contains("\"invalid\""), "{}", get.stdout);
    // Named any way, and before anything was applied.
    let fresh = project(&[]);
    let absolute = fresh.path().join("schedules/nightly.yaml");
    cli(fresh.path(), &["validate", absolute.to_str().unwrap()]).expect_code(0);
    cli(fresh.path(), &["apply", "./schedules/nightly.yaml"]).expect_code(0);
}

#[test]
fn applying_one_schedule_through_the_server_resolves_its_workflow() {
    let temp = project(&[]);
    let dir = temp.path();
    let _server = Server::start(dir);
    let partial = cli(dir, &["apply", "schedules/nightly.yaml"]).expect_code(0);
    assert!(
        partial.stdout.contains(" 0 invalid"),
        "{}{}",
        partial.stdout,
        partial.stderr
    );
}

#[test]
fn validating_one_workflow_resolves_agents_from_the_agents_directory() {
    let temp = project(&[
        ("agents/api_runner.yaml", AGENT),
        ("workflows/one.yaml", ONE),
    ]);
    let dir = temp.path();
    let run = cli(dir, &["validate", "workflows/one.yaml"]).expect_code(0);
    assert!(
        run.stdout
            .contains("validated 1 object in 1 file: 0 errors"),
        "{}",
        run.stdout
    );
    // What the rest of the source lacks is still an error, and ids still collide with it.
    write(
        dir,
        "workflows/two.yaml",
        &ONE.replace("api_runner", "nosuch_runner"),
    );
    let run = cli(dir, &["validate", "workflows/two.yaml"]).expect_code(1);
    assert!(
        run.stdout.contains("unknown agent `nosuch_runner`"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("duplicate Workflow id `wf_one`"),
        "{}",
        run.stdout
    );
}

#[test]
fn every_violation_of_a_document_is_reported_in_one_pass() {
    let temp = project(&[(
        "workflows/two.yaml",
        "name: Two\nsteps:\n  - name: a\n    command: [\"true\"]\n  - name: b\n    command: [\"true\"]\n    depend_on: [a]\n    timout: 5m\n    retries: -1\nextra: 1\n",
    )]);
    let run = cli(temp.path(), &["validate", "workflows/two.yaml"]).expect_code(1);
    for (field, place) in [
        (
            "unknown field `depend_on`; did you mean `depends_on`?",
            "workflows/two.yaml:7:5",
        ),
        (
            "unknown field `timout`; did you mean `timeout`?",
            "workflows/two.yaml:8:5",
        ),
        ("unknown field `extra`", "workflows/two.yaml:10:1"),
        ("less than the minimum of 0", "workflows/two.yaml:9:14"),
    ] {
        let at = run
            .stdout
            .find(field)
            .unwrap_or_else(|| panic!("no `{field}`:\n{}", run.stdout));
        assert!(
            run.stdout[at..]
                .lines()
                .nth(1)
                .is_some_and(|l| l.contains(place)),
            "`{field}` not at {place}:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("4 errors"), "{}", run.stdout);
}

/// Validates `files` written into a fresh `init` project; the diagnostics printed.
fn validate(files: &[(&str, &str)], args: &[&str], code: i32) -> String {
    let temp = project(files);
    let mut all = vec!["validate"];
    all.extend_from_slice(args);
    cli(temp.path(), &all).expect_code(code).stdout
}

/// Asserts that `out` holds `message` with the place below it.
#[track_caller]
fn assert_at(out: &str, message: &str, place: &str) {
    let at = out
        .find(message)
        .unwrap_or_else(|| panic!("no `{message}` in:\n{out}"));
    assert!(
        out[at..].lines().nth(1).is_some_and(|l| l.contains(place)),
        "`{message}` not at {place}:\n{out}"
    );
}

#[test]
fn test_suites_a_step_runs_are_checked_against_its_agent() {
    let workflow = "name: Suites\nsteps:\n  - name: none\n    agent: api_runner\n    action: run_tests\n  - name: typo\n    agent: api_runner\n    action: run_tests\n    parameters:\n      test_suite: smokey\n  - name: env\n    agent: api_runner\n    action: setup_environment\n    parameters:\n      environment: staging\n  - name: later\n    agent: api_runner\n    action: run_tests\n    parameters:\n      test_suite: \"{{ params.suite }}\"\n";
    let out = validate(
        &[
            ("agents/api_runner.yaml", AGENT),
            ("workflows/suites.yaml", workflow),
        ],
        &["workflows/suites.yaml"],
        1,
    );
    assert_at(
        &out,
        "error: `run_tests` needs the parameter `test_suite`",
        "workflows/suites.yaml:5:13 at /steps/0/action",
    );
    assert_at(
        &out,
        "error: agent `api_runner` has no suite `smokey`; did you mean `smoke`? (its suites: smoke)",
        "workflows/suites.yaml:10:19 at /steps/1/parameters/test_suite",
    );
    assert_at(
        &out,
        "error: agent `api_runner` has no environment `staging` (its environments: none)",
        "workflows/suites.yaml:15:20 at /steps/2/parameters/environment",
    );
    assert!(out.contains("3 errors"), "{out}");
}

#[test]
fn alert_actions_name_channels_some_environment_configures() {
    let alert = "name: Disk\ncondition: system.disk_percent > 90\nactions: [ops, opss, pager]\n";
    let temp = project(&[("alerts/disk.yaml", alert)]);
    let dir = temp.path();
    let staging = dir.join("config/staging.yaml");
    let mut config = fs::read_to_string(&staging).unwrap();
    config.push_str(
        "\nnotifications:\n  ops:\n    type: webhook\n    url: http://127.0.0.1:9/hook\n",
    );
    fs::write(&staging, config).unwrap();
    // Development (the environment in force) has no channel: staging's count.
    let out = cli(dir, &["validate", "alerts/disk.yaml"])
        .expect_code(0)
        .stdout;
    assert_at(
        &out,
        "warning: no environment configures the notification channel `opss`; did you mean `ops`? (configured: ops)",
        "alerts/disk.yaml:3:16 at /actions/1",
    );
    assert_at(
        &out,
        "warning: no environment configures the notification channel `pager`",
        "alerts/disk.yaml:3:22 at /actions/2",
    );
    assert!(out.contains("0 errors, 2 warnings"), "{out}");
}

#[test]
fn schedule_parameters_its_workflow_rejects_fail_validation() {
    let workflow = "name: Deploy check\nparameters:\n  environment:\n    type: string\n    enum: [staging, production]\n    required: true\nsteps:\n  - name: a\n    command: [\"true\"]\n";
    let schedule = "name: Nightly deploy check\ncron: \"0 2 * * *\"\nworkflow: wf_deploy-check\nparameters:\n  environment: dev\n  extra: 1\n";
    let bare = "name: Bare\ncron: \"0 3 * * *\"\nworkflow: wf_deploy-check\n";
    let out = validate(
        &[
            ("workflows/deploy.yaml", workflow),
            ("schedules/deploy.yaml", schedule),
            ("schedules/bare.yaml", bare),
        ],
        &["schedules"],
        1,
    );
    assert_at(
        &out,
        "error: parameter `environment` must be one of \"staging\", \"production\", got \"dev\"",
        "schedules/deploy.yaml:5:16 at /parameters/environment",
    );
    assert_at(
        &out,
        "error: unknown parameter `extra` (declared: environment)",
        "schedules/deploy.yaml:6:3 at /parameters/extra",
    );
    assert_at(
        &out,
        "error: missing required parameter `environment`",
        "schedules/bare.yaml:3:11 at /workflow",
    );
}

#[test]
fn secret_references_that_do_not_resolve_here_are_warnings() {
    let workflow = "name: Secretive\nenv:\n  TOKEN: {secret: env:VALIDATION_TEST_TOKEN}\nsteps:\n  - name: a\n    command: [\"true\"]\n    env:\n      KEY: {secret: file:secrets/key.txt}\n";
    let temp = project(&[("workflows/secretive.yaml", workflow)]);
    let dir = temp.path();
    let out = cli(dir, &["validate", "workflows/secretive.yaml"])
        .expect_code(0)
        .stdout;
    assert_at(
        &out,
        "warning: the secret `env:VALIDATION_TEST_TOKEN` does not resolve here: the environment variable VALIDATION_TEST_TOKEN is not set",
        "workflows/secretive.yaml:3:19 at /env/TOKEN/secret",
    );
    assert_at(
        &out,
        "warning: the secret `file:secrets/key.txt` does not resolve here",
        "workflows/secretive.yaml:8:21 at /steps/0/env/KEY/secret",
    );
    // Both resolve once the variable is set and the file exists.
    write(dir, "secrets/key.txt", "k\n");
    let run = crate::server::command(dir)
        .args(["validate", "workflows/secretive.yaml"])
        .env("VALIDATION_TEST_TOKEN", "t")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&run.stdout);
    assert!(out.contains("0 errors, 0 warnings"), "{out}");
}

#[test]
fn a_bare_name_in_a_condition_is_an_error_with_a_did_you_mean() {
    let workflow = "name: Cleanup\nsteps:\n  - name: a\n    command: [\"true\"]\n  - name: b\n    command: [\"true\"]\n    if: always\n  - name: c\n    command: [\"true\"]\n    if: steps.a.status == 'succeeded' && failure()\n";
    let out = validate(
        &[("workflows/cleanup.yaml", workflow)],
        &["workflows/cleanup.yaml"],
        1,
    );
    assert_at(
        &out,
        "error: invalid condition `always`: unknown name `always`",
        "workflows/cleanup.yaml:7:9 at /steps/1/if",
    );
    assert!(out.contains("did you mean `always()`?"), "{out}");
    assert!(out.contains("1 error,"), "{out}");
}
