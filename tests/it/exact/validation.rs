//! Validation and partial applies: references resolved against the whole desired set, every violation in one pass, run-time problems caught at validate time, schemas that accept what `validate` accepts, clean failures of the create commands.
//!
//! Each test works in a fresh `init` project and runs the real binary, as CI jobs and
//! pre-commit hooks call it: `validate FILE...`, `apply FILE...`, the create commands, and
//! `check-jsonschema` with the published schemas beside `validate`.

use std::fs;
use std::path::Path;

use crate::support::{cli, project, write_files, Server};

/// A custom agent in `agents/` and a workflow in `workflows/` that uses it.
const AGENT: &str =
    "name: api_runner\ntype: test_runner\nsuites:\n  smoke:\n    command: [\"true\"]\n";
const ONE: &str = "name: One\nsteps:\n  - name: smoke\n    agent: api_runner\n    action: run_tests\n    parameters:\n      test_suite: smoke\n";

fn write(dir: &Path, path: &str, text: &str) {
    write_files(dir, &[(path, text)]);
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
        "warning: no environment configures the notification channel `opss`; did you mean `ops`? (configured: log, ops)",
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
    let run = crate::support::command(dir)
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

/// The manifest directories and the schema each one's documents are checked against.
const KIND_DIRS: [(&str, &str); 7] = [
    ("workflows", "workflow"),
    ("templates", "workflow-template"),
    ("agents", "agent"),
    ("schedules", "schedule"),
    ("alerts", "alert"),
    ("triggers", "trigger"),
    ("dashboards", "dashboard"),
];

/// The schema of a manifest file: its `kind:` line, else the kind directory it sits in;
/// `None` for files that are no manifests (a CI workflow in examples/).
fn schema_of(path: &Path) -> Option<&'static str> {
    schema_of_document(&fs::read_to_string(path).ok()?, path)
}

/// [`schema_of`] for one document of the file at `path`.
fn schema_of_document(text: &str, path: &Path) -> Option<&'static str> {
    for line in text.lines() {
        let line = line.trim().trim_start_matches('"');
        if let Some(kind) = line
            .strip_prefix("kind:")
            .or_else(|| line.strip_prefix("kind\":"))
        {
            let kind = kind.trim().trim_matches([',', '"', '\'']).to_lowercase();
            return KIND_DIRS.iter().find_map(|(dir, schema)| {
                (kind == schema.replace('-', "") || kind == *dir).then_some(*schema)
            });
        }
    }
    path.ancestors().find_map(|dir| {
        let name = dir.file_name()?.to_str()?;
        KIND_DIRS
            .iter()
            .find_map(|(d, schema)| (*d == name).then_some(*schema))
    })
}

fn manifest_files(root: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            manifest_files(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(path);
        }
    }
}

/// JSON text without the `//` and `/* */` comments `validate` allows (as tsconfig does),
/// which JSON tools do not read.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                out.extend(chars.next());
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut last = ' ';
                for n in chars.by_ref() {
                    if last == '*' && n == '/' {
                        break;
                    }
                    last = n;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// Runs check-jsonschema with `schemas/<schema>.json` on `files`: whether all pass, and
/// what it said. Our `duration` format (`5m`, `1h30m`) is not ISO 8601's, so that format is
/// left to `validate`.
fn check_jsonschema(schema: &str, files: &[std::path::PathBuf]) -> (bool, String) {
    let schema_file = crate::support::repo_dir().join(format!("schemas/{schema}.json"));
    let output = std::process::Command::new("check-jsonschema")
        .args(["--disable-formats", "duration", "--schemafile"])
        .arg(&schema_file)
        .args(files)
        .output()
        .expect(
            "check-jsonschema is not installed: scripts/test installs it (python3 -m pip install check-jsonschema==0.39.0)",
        );
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_published_schemas_accept_every_example_manifest() {
    let repo = crate::support::repo_dir();
    let temp = project(&[]);
    let mut files = Vec::new();
    for root in [repo.clone(), temp.path().to_owned()] {
        for (dir, _) in KIND_DIRS {
            manifest_files(&root.join(dir), &mut files);
        }
    }
    manifest_files(&repo.join("examples"), &mut files);
    // JSON tools read JSON without comments: check a copy without them.
    let plain = tempfile::tempdir().unwrap();
    let mut by_schema: std::collections::BTreeMap<&str, Vec<std::path::PathBuf>> =
        Default::default();
    // JSON tools read one YAML document per file: check each document of a stream alone.
    let mut documents = 0;
    let mut examples: Vec<std::path::PathBuf> = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let text = fs::read_to_string(file).unwrap();
        let json = file.extension().is_some_and(|e| e == "json");
        let parts: Vec<String> = if json {
            vec![text.clone()]
        } else {
            text.split("\n---")
                .map(|part| part.trim_start_matches("---").to_owned())
                .filter(|part| {
                    part.lines()
                        .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
                })
                .collect()
        };
        for (part_index, part) in parts.iter().enumerate() {
            let Some(schema) = schema_of_document(part, file) else {
                continue;
            };
            documents += 1;
            if file.starts_with(repo.join("examples")) && !examples.contains(file) {
                examples.push(file.clone());
            }
            let checked = if json && serde_json::from_str::<serde_json::Value>(part).is_err() {
                let copy = plain.path().join(format!("{index}.json"));
                fs::write(&copy, without_comments(part)).unwrap();
                copy
            } else if parts.len() > 1 {
                let copy = plain.path().join(format!("{index}-{part_index}.yaml"));
                fs::write(&copy, part).unwrap();
                copy
            } else {
                file.clone()
            };
            by_schema.entry(schema).or_default().push(checked);
        }
    }
    assert!(documents >= 20, "{by_schema:?}");
    for (schema, files) in &by_schema {
        let (ok, said) = check_jsonschema(schema, files);
        assert!(ok, "schemas/{schema}.json rejects an example:\n{said}");
    }
    // validate accepts all of them too.
    let mut args = vec!["validate"];
    args.extend(examples.iter().map(|p| p.to_str().unwrap()));
    cli(&repo, &args).expect_code(0);
    cli(&repo, &["validate"]).expect_code(0);
    cli(temp.path(), &["validate"]).expect_code(0);
}

#[test]
fn the_published_schemas_and_validate_agree_on_aliases() {
    // (file, text, accepted)
    let cases: [(&str, &str, bool); 9] = [
        ("schedules/aliased.yaml", "name: Aliased\nschedule: \"0 2 * * *\"\nworkflow_id: wf_api-test-suite\n", true),
        ("schedules/kind.yaml", "kind: schedule\nname: Kind\ncron: \"@daily\"\nworkflow: wf_api-test-suite\n", true),
        ("schedules/both.yaml", "name: Both\ncron: \"0 2 * * *\"\nschedule: \"0 2 * * *\"\nworkflow: wf_api-test-suite\n", false),
        ("schedules/neither.yaml", "name: Neither\nworkflow_id: wf_api-test-suite\n", false),
        ("triggers/aliased.yaml", "name: Aliased hook\nurl: /hooks/aliased\nworkflow_id: wf_api-test-suite\ninsecure: true\n", true),
        ("triggers/both.yaml", "name: Both hook\nurl: /hooks/both\npath: /hooks/both\nworkflow: wf_api-test-suite\ninsecure: true\n", false),
        ("triggers/unknown.yaml", "name: Unknown hook\npath: /hooks/unknown\nworkflow: wf_api-test-suite\ninsecure: true\nurls: x\n", false),
        ("alerts/several.json", "{\"alerts\": [{\"name\": \"Busy\", \"condition\": \"system.cpu_percent > 90\"}]}", true),
        ("alerts/stray.json", "{\"alerts\": [{\"name\": \"Busy2\", \"condition\": \"system.cpu_percent > 90\"}], \"extra\": 1}", false),
    ];
    let temp = project(&[]);
    let dir = temp.path();
    for (file, text, accepted) in cases {
        write(dir, file, text);
        let validated = cli(dir, &["validate", file]);
        assert_eq!(
            validated.code == 0,
            accepted,
            "validate {file}:\n{}",
            validated.stdout
        );
        let schema = schema_of(&dir.join(file)).unwrap();
        let (ok, said) = check_jsonschema(schema, &[dir.join(file)]);
        assert_eq!(ok, accepted, "check-jsonschema {file}:\n{said}");
    }
}

/// Whether the store (or the server's API) holds any record of `id`, pruned ones included.
fn has_record(dir: &Path, id: &str) -> bool {
    let all = cli(dir, &["get", "--all", "-o", "json"]).expect_code(0);
    all.stdout.contains(&format!("\"{id}\""))
}

#[test]
fn a_failed_schedule_create_leaves_no_file_and_no_record() {
    let temp = project(&[]);
    let dir = temp.path();
    cli(dir, &["apply"]).expect_code(0);
    let run = cli(
        dir,
        &["schedule", "create", "Bad One", "0 2 * * *", "wf_nope"],
    )
    .expect_code(1);
    assert!(
        run.stderr
            .contains("error: unknown workflow `wf_nope` (the schedule's `workflow`)"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("schedules/bad-one.yaml"),
        "{}",
        run.stderr
    );
    assert!(!dir.join("schedules/bad-one.yaml").exists());
    assert!(!has_record(dir, "sch_bad-one"));
    // The same with a server watching the directory: no invalid, no pruned record.
    let _server = Server::start(dir);
    cli(
        dir,
        &["schedule", "create", "Bad Two", "0 2 * * *", "wf_nope"],
    )
    .expect_code(1);
    assert!(!dir.join("schedules/bad-two.yaml").exists());
    cli(dir, &["apply"]).expect_code(0);
    assert!(!has_record(dir, "sch_bad-two"));
    cli(
        dir,
        &["schedule", "create", "Good", "0 2 * * *", "wf_smoke"],
    )
    .expect_code(0);
    assert!(has_record(dir, "sch_good"));
}

#[test]
fn workflow_create_from_a_bad_file_points_into_that_file() {
    let temp = project(&[(
        "bad.json",
        "{\n  \"name\": \"Ignored\",\n  \"steps\": [\n    {\"name\": \"a\", \"command\": [\"true\"], \"timout\": 5},\n    {\"name\": \"b\", \"agent\": \"nope\", \"action\": \"x\"}\n  ]\n}\n",
    )]);
    let dir = temp.path();
    let run = cli(
        dir,
        &["workflow", "create", "From Config", "--config", "bad.json"],
    )
    .expect_code(1);
    assert_at(
        &run.stderr,
        "error: unknown field `timout`",
        "bad.json:4:40 at /steps/0/timout",
    );
    assert_at(
        &run.stderr,
        "error: unknown agent `nope`",
        "bad.json:5:28 at /steps/1/agent",
    );
    assert!(!run.stderr.contains("from-config.yaml"), "{}", run.stderr);
    assert!(!dir.join("workflows/from-config.yaml").exists());
    assert!(!has_record(dir, "wf_from-config"));
}

#[test]
fn executing_an_invalid_workflow_says_why() {
    let temp = project(&[(
        "workflows/broken.yaml",
        "name: Broken\nsteps:\n  - name: a\n    command: [\"true\"]\n    depends_on: [zz]\n",
    )]);
    let dir = temp.path();
    cli(dir, &["apply"]).expect_code(1);
    for given in ["wf_broken", "Broken"] {
        let run = cli(dir, &["workflow", "execute", given]).expect_code(2);
        assert!(
            run.stderr.contains(
                "workflow `wf_broken` is invalid: unknown step `zz` in depends_on; did you mean `a`? (steps: a) (at workflows/broken.yaml:5:18)"
            ),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("in the store"), "{}", run.stderr);
    }
}

#[test]
fn trigger_parameters_its_workflow_does_not_declare_fail_validation() {
    let workflow = "name: Deploy check\nparameters:\n  environment:\n    type: string\n    enum: [staging, production]\n    default: staging\n  number:\n    type: integer\nsteps:\n  - name: a\n    command: [\"true\"]\n";
    let trigger = "name: Deploy hook\npath: /hooks/deploy\nworkflow: wf_deploy-check\ninsecure: true\nparameters:\n  number: \"{{ payload.number }}\"\n  enviroment: production\n";
    let out = validate(
        &[
            ("workflows/deploy.yaml", workflow),
            ("triggers/deploy.yaml", trigger),
        ],
        &["triggers/deploy.yaml"],
        1,
    );
    assert_at(
        &out,
        "error: unknown parameter `enviroment`; did you mean `environment`?",
        "triggers/deploy.yaml:7:3 at /parameters/enviroment",
    );
    // A value from the delivery is known only then: its type is not held against it.
    assert!(out.contains("1 error"), "{out}");
}
