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
