//! Quarantine as code (issue 19), with real processes: a shell suite writes JUnit with a
//! case that fails while `state/fail` exists; a Quarantine manifest covering it makes the
//! run succeed (the case still recorded as failed, classified `quarantined`); an expired
//! one warns and no longer applies; one that covers no known test warns; `tests quarantine
//! suggest` writes the manifest for a test that flipped on one revision, which validates
//! and applies once its owner is filled in; bad manifests are reported at file:line.

use std::fs;
use std::path::Path;

use chrono::{Days, Utc};
use serde_json::Value;

use crate::support::{cli, orchestrator, project, run_id, show, step, write_files, Server};

const AGENT: &str = "name: flip_runner
type: test_runner
suites:
  flip:
    command: [\"sh\", \"suites/flip.sh\", \"reports/junit-flip.xml\"]
    junit: reports/junit-flip.xml
";

const WORKFLOW: &str = "name: Flip
steps:
  - name: tests
    agent: flip_runner
    action: run_tests
    parameters: {test_suite: flip}
";

/// Two cases: `test_stable` passes, `test_flip` fails (exit 1) while `state/fail` exists.
const SUITE: &str = r#"out="$1"
mkdir -p "$(dirname "$out")"
if [ -e state/fail ]; then
  flip='<testcase classname="flip.tests" name="test_flip" time="0.01"><failure message="timed out after 31 ms">trace</failure></testcase>'
  code=1
else
  flip='<testcase classname="flip.tests" name="test_flip" time="0.01"/>'
  code=0
fi
cat > "$out" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<testsuites><testsuite name="flip" tests="2"><testcase classname="flip.tests" name="test_stable" time="0.01"/>$flip</testsuite></testsuites>
EOF
exit $code
"#;

/// An `init`ed project with the suite, its agent and workflow, applied.
fn flip_project() -> tempfile::TempDir {
    let project = project(&[
        ("agents/flip_runner.yaml", AGENT),
        ("workflows/flip.yaml", WORKFLOW),
        ("suites/flip.sh", SUITE),
    ]);
    orchestrator(project.path(), &["apply"]).expect_code(0);
    project
}

fn failing(dir: &Path, fail: bool) {
    let marker = dir.join("state/fail");
    if fail {
        fs::create_dir_all(marker.parent().unwrap()).unwrap();
        fs::write(marker, "").unwrap();
    } else {
        let _ = fs::remove_file(marker);
    }
}

/// Executes the workflow and expects its exit code; the run as `run show -o json` gives it.
fn execute(dir: &Path, code: i32) -> (Value, String) {
    let run = orchestrator(dir, &["workflow", "execute", "wf_flip"]).expect_code(code);
    let id = run_id(&run.stdout);
    (show(dir, &id), id)
}

fn case<'v>(shown: &'v Value, name: &str) -> &'v Value {
    step(shown, "tests")["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no case {name} in {shown:#}"))
}

fn day(offset: i64) -> String {
    let today = Utc::now().date_naive();
    let day = if offset >= 0 {
        today.checked_add_days(Days::new(offset as u64))
    } else {
        today.checked_sub_days(Days::new(offset.unsigned_abs()))
    };
    day.unwrap().to_string()
}

fn quarantine(until: &str) -> String {
    format!(
        "kind: Quarantine
name: Known flaky
entries:
  - match: {{workflow: wf_flip, suite: flip, name: \"test_fl*\"}}
    reason: \"times out on shared runners, #123\"
    owner: qa-team
    until: {until}
"
    )
}

#[test]
fn a_quarantined_failure_fails_no_run_until_the_quarantine_expires() {
    let project = flip_project();
    let dir = project.path();
    failing(dir, true);
    let (shown, _) = execute(dir, 1);
    assert_eq!(shown["run"]["status"], "failed");
    assert_eq!(case(&shown, "test_flip")["class"], "new_failure");

    write_files(dir, &[("quarantine/known.yaml", &quarantine(&day(10)))]);
    let validated = cli(dir, &["validate"]).expect_code(0);
    assert!(
        validated.stdout.contains("0 errors, 0 warnings"),
        "{}",
        validated.stdout
    );
    let diff = cli(dir, &["diff"]).expect_code(1);
    assert!(
        diff.stdout.contains("Quarantine qua_known-flaky") && diff.stdout.contains("1 to create"),
        "{}",
        diff.stdout
    );
    orchestrator(dir, &["apply"]).expect_code(0);
    cli(dir, &["diff"]).expect_code(0);
    let listed = cli(dir, &["get", "quarantine"]).expect_code(0);
    assert!(
        listed.stdout.contains("qua_known-flaky"),
        "{}",
        listed.stdout
    );

    let (shown, id) = execute(dir, 0);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    let tests_step = step(&shown, "tests");
    assert_eq!(tests_step["status"], "succeeded");
    assert_eq!(tests_step["outputs"]["quarantined_failures"], 1);
    let flip = case(&shown, "test_flip");
    assert_eq!(flip["status"], "failed", "the result is still recorded");
    assert_eq!(flip["class"], "quarantined");
    assert_eq!(shown["run"]["tests"]["quarantined"], 1);
    let text = cli(dir, &["run", "show", &id]).expect_code(0);
    assert!(text.stdout.contains("1 quarantined"), "{}", text.stdout);

    // Expired: validate warns (a finding, exit 0 as for every warning) and the failure
    // fails the run again.
    write_files(dir, &[("quarantine/known.yaml", &quarantine(&day(-1)))]);
    let validated = cli(dir, &["validate"]).expect_code(0);
    assert!(
        validated.stdout.contains(&format!(
            "the quarantine of workflow=wf_flip, suite=flip, name=test_fl* expired on {} (1 day ago): its failures fail again; remove it or extend `until`",
            day(-1)
        )),
        "{}",
        validated.stdout
    );
    assert!(
        validated.stdout.contains("quarantine/known.yaml:7:12"),
        "{}",
        validated.stdout
    );
    assert!(
        validated.stdout.contains("1 warning"),
        "{}",
        validated.stdout
    );
    orchestrator(dir, &["apply"]).expect_code(0);
    let (shown, _) = execute(dir, 1);
    assert_eq!(shown["run"]["status"], "failed");
    assert_ne!(case(&shown, "test_flip")["class"], "quarantined");

    // A quarantine that covers no test with results warns, with the nearest id.
    write_files(
        dir,
        &[(
            "quarantine/known.yaml",
            &format!(
                "kind: Quarantine
name: Known flaky
entries:
  - match: {{workflow: wf_flip, name: test_typo}}
    reason: r
    owner: qa
    until: {}
  - test: tc_0000000000000000
    reason: r
    owner: qa
    until: {}
",
                day(5),
                day(5)
            ),
        )],
    );
    let validated = cli(dir, &["validate", "-o", "json"]).expect_code(0);
    let report: Value = serde_json::from_str(&validated.stdout).unwrap();
    let warnings: Vec<&Value> = report["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["file"] == "quarantine/known.yaml")
        .collect();
    assert_eq!(warnings.len(), 2, "{report:#}");
    assert_eq!(warnings[0]["pointer"], "/entries/0/match");
    assert_eq!(warnings[1]["pointer"], "/entries/1/test");
    for warning in &warnings {
        assert_eq!(warning["severity"], "warning", "{warning:#}");
        let message = warning["message"].as_str().unwrap();
        assert!(
            message.contains("matches none of the 2 tests with recorded results"),
            "{message}"
        );
    }
}

#[test]
fn suggest_writes_a_manifest_for_a_test_that_flipped_on_one_revision() {
    let project = flip_project();
    let dir = project.path();
    let none = cli(dir, &["tests", "quarantine", "suggest"]).expect_code(0);
    assert!(
        none.stdout.contains("no flaky tests to quarantine"),
        "{}",
        none.stdout
    );

    // The same revision (nothing of the project's manifests changes), failing then
    // passing: the test is flaky.
    failing(dir, true);
    execute(dir, 1);
    failing(dir, false);
    let (shown, _) = execute(dir, 0);
    assert_eq!(case(&shown, "test_flip")["class"], "flaky", "{shown:#}");

    let suggested = cli(
        dir,
        &["tests", "quarantine", "suggest", "--workflow", "Flip"],
    )
    .expect_code(0)
    .stdout;
    assert!(suggested.contains("kind: Quarantine\n"), "{suggested}");
    assert!(
        suggested.contains(
            "  # workflow wf_flip (Flip), suite flip, classname flip.tests, name test_flip\n  - test: tc_"
        ),
        "{suggested}"
    );
    assert!(suggested.contains("    reason: \"flaky: "), "{suggested}");
    assert!(
        suggested.contains(&format!("    until: {}\n", day(30))),
        "{suggested}"
    );
    assert!(!suggested.contains("test_stable"), "{suggested}");

    // Saved as it is, the empty owner is refused; filled in, it validates and applies.
    write_files(dir, &[("quarantine/flaky.yaml", &suggested)]);
    let refused = cli(dir, &["validate"]).expect_code(1);
    assert!(
        refused.stdout.contains("quarantine/flaky.yaml:") && refused.stdout.contains("owner"),
        "{}",
        refused.stdout
    );
    let filled = suggested.replace("owner: \"\"", "owner: qa-team");
    write_files(dir, &[("quarantine/flaky.yaml", &filled)]);
    let validated = cli(dir, &["validate"]).expect_code(0);
    assert!(
        validated.stdout.contains("0 errors, 0 warnings"),
        "{}",
        validated.stdout
    );
    orchestrator(dir, &["apply"]).expect_code(0);
    let after = cli(dir, &["tests", "quarantine", "suggest"]).expect_code(0);
    assert!(
        after
            .stdout
            .contains("no flaky tests to quarantine (1 flaky test already quarantined)"),
        "{}",
        after.stdout
    );

    // Through a running server: the same tests, from GET /api/quarantine/tests.
    fs::remove_file(dir.join("quarantine/flaky.yaml")).unwrap();
    orchestrator(dir, &["apply", "--prune"]).expect_code(0);
    let pruned = cli(dir, &["get", "quarantine", "--all", "-o", "json"]).expect_code(0);
    let pruned: Value = serde_json::from_str(&pruned.stdout).unwrap();
    assert_eq!(pruned[0]["status"], "pruned", "{pruned:#}");
    let server = Server::start(dir);
    let listed = server.api().get("/api/quarantine/tests").json(200);
    let tests = listed["tests"].as_array().unwrap();
    assert_eq!(tests.len(), 2, "{listed:#}");
    let flip = tests.iter().find(|t| t["name"] == "test_flip").unwrap();
    assert_eq!(flip["flaky"], true);
    assert_eq!(flip["workflow_name"], "Flip");
    let remote = cli(dir, &["tests", "quarantine", "suggest", "-o", "json"]).expect_code(0);
    let manifest: Value = serde_json::from_str(&remote.stdout).unwrap();
    assert_eq!(manifest["kind"], "Quarantine");
    assert_eq!(manifest["entries"][0]["test"], flip["id"]);
    assert_eq!(manifest["entries"][0]["owner"], "");
    write_files(
        dir,
        &[(
            "quarantine/typo.yaml",
            "kind: Quarantine\nname: Typo\nentries:\n  - match: {name: test_nothing}\n    reason: r\n    owner: o\n    until: 2099-01-01\n",
        )],
    );
    let validated = cli(dir, &["validate"]).expect_code(0);
    assert!(
        validated
            .stdout
            .contains("matches none of the 2 tests with recorded results"),
        "{}",
        validated.stdout
    );
    // The dashboard's editors validate through the server, with the same findings.
    let checked = server
        .api()
        .post(
            "/api/validate",
            &serde_json::json!({"kind": "Quarantine", "manifest": {"name": "Old", "entries": [
                {"test": flip["id"], "reason": "r", "owner": "o", "until": "2020-01-31"},
                {"match": {"name": "nothing*"}, "reason": "r", "owner": "o", "until": "2099-01-31"},
            ]}})
            .to_string(),
        )
        .json(200);
    assert_eq!(checked["valid"], true, "{checked:#}");
    let messages: Vec<&str> = checked["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert_eq!(messages.len(), 2, "{checked:#}");
    assert!(
        messages[0].contains("expired on 2020-01-31"),
        "{messages:?}"
    );
    assert!(
        messages[1].contains("matches none of the 2 tests"),
        "{messages:?}"
    );
    // Saved through the API like every kind: a file under quarantine/, in force.
    let saved = server
        .api()
        .post(
            "/api/manifests",
            &serde_json::json!({"kind": "Quarantine", "manifest": {"name": "Saved", "entries": [
                {"test": flip["id"], "reason": "r", "owner": "o", "until": "2099-01-31"},
            ]}})
            .to_string(),
        )
        .json(201);
    assert_eq!(saved["id"], "qua_saved", "{saved:#}");
    assert_eq!(saved["file"], "quarantine/saved.yaml");
    assert!(dir.join("quarantine/saved.yaml").exists());
    let listed = server.api().get("/api/quarantine/tests").json(200);
    let covered: Vec<&Value> = listed["tests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["covered_by"] == "qua_saved#0")
        .collect();
    assert_eq!(covered.len(), 1, "{listed:#}");
}

#[test]
fn bad_quarantine_manifests_are_reported_at_their_fields() {
    let project = project(&[(
        "quarantine/bad.yaml",
        "kind: Quarantine
name: Bad
entries:
  - match: {workflow: wf_nightly, name: \"a[b\"}
    reason: r
    owner: qa
    until: 2027-02-30
  - test: tc_0123456789abcdef
    match: {name: x}
    reason: r
    owner: qa
    until: 31/01/2027
",
    )]);
    let dir = project.path();
    let validated = cli(dir, &["validate"]).expect_code(1);
    let out = &validated.stdout;
    for (place, message) in [
        (
            "quarantine/bad.yaml:4:41",
            "`a[b` is not a glob: unclosed character class",
        ),
        (
            "quarantine/bad.yaml:7:12",
            "`2027-02-30` is not a date (YYYY-MM-DD)",
        ),
        (
            "quarantine/bad.yaml:8:5",
            "set one of `test` or `match`, not more",
        ),
        (
            "quarantine/bad.yaml:12:12",
            "`31/01/2027` is not a date (YYYY-MM-DD)",
        ),
    ] {
        assert!(out.contains(place), "{place} in {out}");
        assert!(out.contains(message), "{message} in {out}");
    }
    assert!(out.contains("4 errors"), "one error each: {out}");
    // Applying records it as invalid, with nothing in force.
    orchestrator(dir, &["apply"]).expect_code(1);
    let listed = cli(dir, &["get", "quarantine", "-o", "json"]).expect_code(0);
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed[0]["id"], "qua_bad", "{listed:#}");
    assert_eq!(listed[0]["status"], "invalid");
    assert_eq!(listed[0]["spec"], Value::Null);
}
