//! Runs, reports and artifacts: a from-failed re-run runs again what failed and everything
//! downstream of it (the same through the local CLI and the server), reports carry the
//! run's final state in every format, an old run's artifact serves the bytes that run
//! produced when a later run rewrites the same file, and the JUnit report's totals and time
//! are the run's, read back by a JUnit reader (python3 `junitparser`).

use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::{cli, project, Server};
use crate::support::{newest_run, step};

/// A DAG where `unit` fails until the file `fixed` exists; `coverage` runs after it
/// whatever happens (so it succeeded downstream of a failure), `lint` hangs off `build`
/// only, and the report comes last.
const CHAIN: &str = r#"name: Chain
steps:
  - name: build
    command: ["sh", "-c", "echo built >> build.count"]
  - name: unit
    depends_on: [build]
    command: ["sh", "-c", "test -f fixed"]
  - name: coverage
    depends_on: [unit]
    if: always()
    command: ["sh", "-c", "echo covered >> coverage.count"]
  - name: lint
    depends_on: [build]
    command: ["sh", "-c", "echo linted >> lint.count"]
  - name: report
    depends_on: [coverage, lint]
    if: always()
    agent: report_generator
    action: generate_json_report
"#;

fn lines(dir: &Path, file: &str) -> usize {
    fs::read_to_string(dir.join(file))
        .unwrap_or_default()
        .lines()
        .count()
}

fn json_file(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
}

/// Applies the project's manifests and executes `workflow`, which fails (exit 1); the
/// run's id.
fn failed_run(dir: &Path, workflow: &str) -> String {
    cli(dir, &["apply"]).expect_code(0);
    cli(dir, &["workflow", "execute", workflow]).expect_code(1);
    newest_run(dir)
}

fn shown(dir: &Path, run: &str) -> Value {
    let out = cli(dir, &["run", "show", run, "-o", "json"]).expect_code(0);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// A from-failed re-run of `original` (`{"run", "steps"}` of the re-run): the steps that
/// succeeded upstream of no failure kept, everything else run again, its own report
/// written.
fn assert_from_failed(dir: &Path, original: &str, rerun: &Value) {
    let id = rerun["run"]["id"].as_str().unwrap();
    assert_eq!(rerun["run"]["status"], "succeeded", "{rerun}");
    assert_eq!(rerun["run"]["rerun_of"], original, "{rerun}");
    let reused = format!("reused from {original}");
    for name in ["build", "lint"] {
        assert_eq!(
            step(rerun, name)["message"],
            reused.as_str(),
            "{name}: {rerun}"
        );
    }
    for name in ["unit", "coverage", "report"] {
        let step = step(rerun, name);
        assert_eq!(step["status"], "succeeded", "{name}: {rerun}");
        assert!(
            !step["message"].as_str().unwrap_or("").contains("reused"),
            "{name} must run again, not be reused: {rerun}"
        );
        assert!(
            step["started_at"].is_string(),
            "{name} did not run: {rerun}"
        );
    }
    let report = json_file(&dir.join(format!("reports/{id}/report.json")));
    assert_eq!(report["run"]["id"], id, "the re-run's own report");
}

#[test]
fn rerun_from_failed_runs_the_failed_steps_and_everything_downstream() {
    let project = project(&[("workflows/chain.yaml", CHAIN)]);
    let dir = project.path();
    let original = failed_run(dir, "wf_chain");
    assert_eq!(shown(dir, &original)["run"]["status"], "failed");
    assert_eq!(lines(dir, "coverage.count"), 1);
    fs::write(dir.join("fixed"), "").unwrap();

    // Without a server: the store directly.
    cli(dir, &["run", "rerun", &original, "--from-failed"]).expect_code(0);
    let local = newest_run(dir);
    assert_ne!(local, original);
    assert_from_failed(dir, &original, &shown(dir, &local));
    assert_eq!(lines(dir, "build.count"), 1, "build is kept");
    assert_eq!(lines(dir, "lint.count"), 1, "lint is kept");
    assert_eq!(lines(dir, "coverage.count"), 2, "coverage runs again");

    // Through the server: the same steps kept and run.
    let server = Server::start(dir);
    let api = server.api();
    let accepted = api
        .post(
            &format!("/api/runs/{original}/rerun"),
            r#"{"from_failed": true}"#,
        )
        .expect(202);
    let remote = accepted["run_id"].as_str().unwrap();
    let finished = api.wait_finished(remote);
    assert_from_failed(dir, &original, &finished);
    assert_eq!(lines(dir, "coverage.count"), 3, "coverage runs again");
    assert_eq!(lines(dir, "build.count"), 1, "build is kept");

    // Nothing failed in the re-run: both paths refuse the same way.
    let message = api
        .post(
            &format!("/api/runs/{remote}/rerun"),
            r#"{"from_failed": true}"#,
        )
        .expect_error(422, "invalid");
    assert!(message.contains("nothing failed to re-run"), "{message}");
    let refused = cli(dir, &["run", "rerun", remote, "--from-failed"]).expect_code(2);
    assert!(
        refused.stderr.contains("nothing failed to re-run"),
        "{}",
        refused.stderr
    );
}

/// A failing step, then the three reports of the run, written whatever happened.
const REPORTED: &str = r#"name: Reported
steps:
  - name: tests
    command: ["sh", "-c", "exit 3"]
  - name: html
    if: always()
    agent: report_generator
    action: generate_html_report
  - name: json
    if: always()
    agent: report_generator
    action: generate_json_report
  - name: junit
    if: always()
    agent: report_generator
    action: generate_junit_report
"#;

#[test]
fn reports_of_a_finished_run_carry_its_final_state() {
    let project = project(&[("workflows/reported.yaml", REPORTED)]);
    let dir = project.path();
    let id = failed_run(dir, "wf_reported");
    let record = shown(dir, &id);
    assert_eq!(record["run"]["status"], "failed", "{record}");

    // JSON: the run record and the steps as stored, the report steps themselves finished.
    let report = json_file(&dir.join(format!("reports/{id}/report.json")));
    assert_eq!(report["run"], record["run"], "report.json's run");
    assert_eq!(report["steps"], record["steps"], "report.json's steps");
    assert_eq!(report["tests"], record["run"]["tests"]);

    // HTML: the final status and duration; nothing still "running".
    let html = fs::read_to_string(dir.join(format!("reports/{id}/report.html"))).unwrap();
    assert!(html.contains(">failed</span>"), "{html}");
    assert!(!html.contains("running"), "{html}");
    for name in ["html", "json", "junit"] {
        assert_eq!(step(&record, name)["status"], "succeeded", "{record}");
        assert!(
            html.contains(&format!("<td>{name}</td><td>report_generator.")),
            "{html}"
        );
    }

    // JUnit: the run's totals (no test ran).
    let junit = fs::read_to_string(dir.join(format!("reports/{id}/junit.xml"))).unwrap();
    assert!(
        junit.contains(r#"tests="0" failures="0" errors="0" skipped="0""#),
        "{junit}"
    );
}

/// A suite that writes JUnit naming the run to a fixed path, as the scaffold's does.
const FIXED_RUNNER: &str = r#"name: fixed_runner
type: test_runner
suites:
  fixed:
    command: ["sh", "-c", "mkdir -p reports && printf '<testsuite name=\"s\"><testcase classname=\"c\" name=\"%s\"/></testsuite>' \"$ORCHESTRATOR_RUN_ID\" > reports/junit-fixed.xml"]
    junit: reports/junit-fixed.xml
"#;

const FIXED: &str = r#"name: Fixed
steps:
  - name: tests
    agent: fixed_runner
    action: run_tests
    parameters:
      test_suite: fixed
"#;

#[test]
fn an_old_runs_artifact_keeps_the_bytes_that_run_produced() {
    let project = project(&[
        ("agents/fixed_runner.yaml", FIXED_RUNNER),
        ("workflows/fixed.yaml", FIXED),
    ]);
    let dir = project.path();
    let server = Server::start(dir);
    let api = server.api();
    let artifact_url = |run: &str| {
        let shown = api.wait_finished(run);
        assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
        let artifacts = step(&shown, "tests")["artifacts"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(artifacts.len(), 1, "{shown}");
        format!(
            "/api/runs/{run}/artifacts/{}",
            artifacts[0].as_str().unwrap()
        )
    };
    let first = api.execute("wf_fixed", "");
    let first_url = artifact_url(&first);
    let served = api.get(&first_url);
    assert_eq!(served.status, 200, "{served:?}");
    assert!(served.text.contains(&first), "{served:?}");

    let second = api.execute("wf_fixed", "");
    let second_url = artifact_url(&second);
    let rewritten = fs::read_to_string(dir.join("reports/junit-fixed.xml")).unwrap();
    assert!(
        rewritten.contains(&second),
        "the suite rewrote its file: {rewritten}"
    );

    let served = api.get(&first_url);
    assert_eq!(served.status, 200, "{served:?}");
    assert!(
        served.text.contains(&first) && !served.text.contains(&second),
        "the first run's artifact serves what the first run wrote: {served:?}"
    );
    let served = api.get(&second_url);
    assert_eq!(served.status, 200, "{served:?}");
    assert!(served.text.contains(&second), "{served:?}");
}

/// Two suites of five cases: a pass, a failure, a skip, an error and a pass.
const TWO_SUITES: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites>
  <testsuite name="alpha" tests="2">
    <testcase classname="a" name="one" time="0.25"/>
    <testcase classname="a" name="two" time="0.5"><failure message="no">boom</failure></testcase>
  </testsuite>
  <testsuite name="beta" tests="3">
    <testcase classname="b" name="three" time="1.125"><skipped/></testcase>
    <testcase classname="b" name="four" time="0.125"><error message="oops"/></testcase>
    <testcase classname="b" name="five" time="0"/>
  </testsuite>
</testsuites>
"#;

const TWO_RUNNER: &str = r#"name: two_runner
type: test_runner
suites:
  two:
    command: ["sh", "-c", "mkdir -p reports && cp two-suites.xml reports/junit-two.xml; exit 1"]
    junit: reports/junit-two.xml
"#;

const JUNIT_REPORTED: &str = r#"name: Junit Reported
steps:
  - name: setup
    command: ["sh", "-c", "echo ready"]
  - name: tests
    agent: two_runner
    action: run_tests
    parameters:
      test_suite: two
  - name: junit
    if: always()
    agent: report_generator
    action: generate_junit_report
"#;

/// Totals, suite names and case counts of a JUnit file as `junitparser` reads them.
const READ_JUNIT: &str = r#"
import json, sys
from junitparser import JUnitXml, Failure, Error, Skipped
xml = JUnitXml.fromfile(sys.argv[1])
suites = list(xml)
cases = [case for suite in suites for case in suite]
def count(kind):
    return sum(1 for case in cases if any(isinstance(r, kind) for r in case.result))
print(json.dumps({
    "root": {"tests": xml.tests, "failures": xml.failures, "errors": xml.errors,
             "skipped": xml.skipped, "time": xml.time},
    "suites": [suite.name for suite in suites],
    "cases": {"tests": len(cases), "failures": count(Failure), "errors": count(Error),
              "skipped": count(Skipped), "time": sum(case.time for case in cases)},
}))
"#;

fn read_junit(path: &Path) -> Value {
    let output = Command::new("python3")
        .args(["-c", READ_JUNIT])
        .arg(path)
        .output()
        .expect("python3 (install it, with the junitparser module: pip install junitparser)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'junitparser'"),
        "the JUnit reader is missing: pip install junitparser (scripts/test installs it)"
    );
    assert!(output.status.success(), "junitparser failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn the_junit_report_holds_the_runs_suites_and_its_totals() {
    let project = project(&[
        ("two-suites.xml", TWO_SUITES),
        ("agents/two_runner.yaml", TWO_RUNNER),
        ("workflows/junit_reported.yaml", JUNIT_REPORTED),
    ]);
    let dir = project.path();
    let id = failed_run(dir, "wf_junit-reported");
    let record = shown(dir, &id);
    let tests = &record["run"]["tests"];
    assert_eq!(tests["total"], 5, "{record}");

    let read = read_junit(&dir.join(format!("reports/{id}/junit.xml")));
    let root = &read["root"];
    assert_eq!(
        read["suites"],
        serde_json::json!(["alpha", "beta"]),
        "{read}"
    );
    for (junit, run) in [
        ("tests", "total"),
        ("failures", "failed"),
        ("errors", "errors"),
        ("skipped", "skipped"),
    ] {
        assert_eq!(root[junit], tests[run], "root {junit}: {read}");
        assert_eq!(read["cases"][junit], tests[run], "cases {junit}: {read}");
    }
    let case_time: f64 = record["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["tests"].as_array())
        .flatten()
        .map(|c| c["time_seconds"].as_f64().unwrap())
        .sum();
    assert!((case_time - 2.0).abs() < 1e-9, "{record}");
    let root_time = root["time"].as_f64().unwrap();
    assert!(
        (root_time - case_time).abs() < 1e-3,
        "root time {root_time}, the run's tests took {case_time}: {read}"
    );
}
