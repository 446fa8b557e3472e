//! Every test's history as users read it (issue 19): `GET /api/tests` and
//! `GET /api/tests/{id}` in process (filters, order, the quarantine list, the timeline with
//! its failure groups, 400 and 404 in the error shape), and the headline: a real pytest
//! suite (a shell suite writing JUnit where pytest is missing) whose test fails once and
//! passes on the same revision is named flaky by `tests list | show` from the store and
//! through the server, by the API, and in chromium by the Tests page (its flip history and
//! timeline, a Quarantine manifest saved from it) and the run page (the case's class).

use std::fs;
use std::path::Path;
use std::process::Command;

use orchestrator::config::TestsConfig;
use orchestrator::model::{TestCase, TestStatus};
use orchestrator::store::test_history::{test_id, ResultSource};
use serde_json::Value;

use crate::support::{cli, project, run_id, InProcess};

/// A Quarantine that covers `test_timeout_*` of wf_api until far ahead, and an expired one.
const QUARANTINE: &str = r#"kind: Quarantine
name: Known flaky
entries:
  - match: {workflow: wf_api, name: "test_timeout_*"}
    reason: "times out on shared runners, #123"
    owner: qa-team
    until: 2999-01-31
  - test: tc_0000000000000000
    reason: "gone"
    owner: someone
    until: 2001-01-01
"#;

fn case(name: &str, status: TestStatus, ms: u32, message: Option<&str>) -> TestCase {
    TestCase {
        suite: "api".into(),
        classname: "tests.api".into(),
        name: name.into(),
        status,
        time_seconds: f64::from(ms) / 1000.0,
        message: message.map(str::to_owned),
        details: None,
        output: None,
        class: None,
    }
}

/// Checks a 200 body of `GET path` against the schema the OpenAPI document declares for it.
#[track_caller]
fn documented(doc: &Value, path: &str, body: &Value) {
    let schema = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [doc["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]],
        "components": doc["components"],
    });
    let validator = jsonschema::validator_for(&schema).expect("the documented schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "GET {path}: {errors:#?}\n{body:#}");
}

/// A run id whose ULID is made at `ms`, so runs sort in the order they are made.
fn run_at(ms: u64) -> String {
    format!(
        "run_{}",
        ulid::Ulid::from_parts(ms, u128::from(ms))
            .to_string()
            .to_lowercase()
    )
}

#[test]
fn the_tests_routes_list_by_status_show_a_timeline_and_say_what_is_wrong() {
    let api = InProcess::start(&[("quarantine/known.yaml", QUARANTINE)], None);
    let store = &api.app.store;
    let settings = TestsConfig::default();
    let start = 1_800_000_000_000u64;
    // Four runs of wf_api on two revisions: test_flaky fails then passes on rev a; test_new
    // passes then fails; test_broken always fails (and is slow); test_timeout_x fails once
    // and is quarantined.
    let plan: [(&str, [TestStatus; 4]); 4] = {
        use TestStatus::{Failed as F, Passed as P};
        [
            ("test_flaky", [P, F, P, P]),
            ("test_new", [P, P, P, F]),
            ("test_broken", [F, F, F, F]),
            ("test_timeout_x", [P, P, P, F]),
        ]
    };
    for n in 0..4 {
        let run = run_at(start + n as u64 * 1000);
        let source = ResultSource {
            workflow: "wf_api",
            run_id: &run,
            step: 0,
            attempt: 1,
            revision: if n < 3 { "git:aaaa" } else { "git:bbbb" },
            worker: (n == 3).then_some("rig-1"),
        };
        let mut cases: Vec<TestCase> = plan
            .iter()
            .map(|(name, statuses)| {
                let failing = statuses[n] == TestStatus::Failed;
                let message = format!("AssertionError: got {} at 0x7ffd{n}abc", 40 + n);
                case(
                    name,
                    statuses[n],
                    if *name == "test_broken" { 900 } else { 10 },
                    failing.then_some(message.as_str()),
                )
            })
            .collect();
        store
            .record_test_results(&source, &mut cases, &settings, &|_, c| {
                c.name.starts_with("test_timeout_") && c.status == TestStatus::Failed
            })
            .expect("recorded");
    }
    let names = |list: &Value| -> Vec<String> {
        list["tests"]
            .as_array()
            .expect("tests")
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    };

    let doc = api.get("/api/openapi.json").expect(200);
    let all = api.get("/api/tests").expect(200);
    assert_eq!(all["total"], 4, "{all:#}");
    let flaky = api.get("/api/tests?status=flaky").expect(200);
    assert_eq!(names(&flaky), ["test_flaky"], "{flaky:#}");
    documented(&doc, "/api/tests", &flaky);
    let item = &flaky["tests"][0];
    assert_eq!(item["recent"], "PFPP");
    assert_eq!(item["flips"], 2);
    assert_eq!(item["failures"], 1);
    assert_eq!(item["failure_rate"], 0.25);
    assert!(
        item["flaky_reason"]
            .as_str()
            .unwrap()
            .contains("passed and failed on git:aaaa"),
        "{item}"
    );
    assert_eq!(
        item["id"],
        test_id("wf_api", "api", "tests.api", "test_flaky")
    );

    // Most failures first; between equals, by id.
    let failing = api.get("/api/tests?status=failing").expect(200);
    let mut equals = ["test_new", "test_timeout_x"]
        .map(|name| (test_id("wf_api", "api", "tests.api", name), name.to_owned()));
    equals.sort();
    let expected_failing = [
        "test_broken".to_owned(),
        equals[0].1.clone(),
        equals[1].1.clone(),
    ];
    assert_eq!(
        names(&failing),
        expected_failing,
        "most failures first: {failing:#}"
    );
    let new = api.get("/api/tests?status=new&workflow=wf_api").expect(200);
    assert_eq!(names(&new), ["test_new"], "{new:#}");
    assert_eq!(new["workflow"], "wf_api");
    let slow = api.get("/api/tests?status=slow&limit=1").expect(200);
    assert_eq!(names(&slow), ["test_broken"], "{slow:#}");
    assert_eq!(
        (slow["total"].as_u64(), slow["limit"].as_u64()),
        (Some(4), Some(1))
    );
    let other = api.get("/api/tests?workflow=wf_other").expect(200);
    assert_eq!(other["total"], 0, "{other:#}");

    // Quarantined: the entry in force, with its owner, reason and expiry; the expired one
    // is listed as such and covers nothing.
    let quarantined = api.get("/api/tests?status=quarantined").expect(200);
    assert_eq!(names(&quarantined), ["test_timeout_x"], "{quarantined:#}");
    let entry = &quarantined["tests"][0]["quarantine"];
    assert_eq!(entry["owner"], "qa-team");
    assert_eq!(entry["reason"], "times out on shared runners, #123");
    assert_eq!(entry["until"], "2999-01-31");
    assert_eq!(entry["manifest"], "qua_known-flaky");
    assert_eq!(entry["tests"], 1);
    documented(&doc, "/api/tests", &quarantined);
    let entries = quarantined["quarantines"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{quarantined:#}");
    assert_eq!(entries[0]["active"], true);
    assert_eq!(entries[0]["covers"], "workflow=wf_api, name=test_timeout_*");
    assert_eq!(entries[1]["active"], false);
    assert_eq!(entries[1]["tests"], 0);

    // One test: its record, its timeline newest first with revisions, the worker and the
    // failure's group, whose normalised message has no numbers or addresses.
    let id = test_id("wf_api", "api", "tests.api", "test_broken");
    let shown = api.get(&format!("/api/tests/{id}")).expect(200);
    documented(&doc, "/api/tests/{id}", &shown);
    assert_eq!(shown["test"]["name"], "test_broken");
    let timeline = shown["timeline"].as_array().unwrap();
    assert_eq!(timeline.len(), 4, "{shown:#}");
    assert_eq!(timeline[0]["revision"], "git:bbbb");
    assert_eq!(timeline[0]["worker"], "rig-1");
    assert_eq!(timeline[0]["class"], "still_failing");
    assert_eq!(timeline[3]["class"], "new_failure");
    assert_eq!(timeline[3]["revision"], "git:aaaa");
    assert!(timeline[3]["at"]
        .as_str()
        .unwrap()
        .starts_with("2027-01-15"));
    let message = timeline[0]["failure_message"].as_str().unwrap();
    assert!(message.starts_with("AssertionError: got"), "{message}");
    assert!(!message.contains("0x7ffd"), "{message}");
    let groups = shown["failure_groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "one group for four messages: {shown:#}");
    assert_eq!(groups[0]["count"], 4);
    assert!(shown.get("quarantine").is_none(), "{shown:#}");
    let limited = api.get(&format!("/api/tests/{id}?limit=2")).expect(200);
    assert_eq!(limited["timeline"].as_array().unwrap().len(), 2);
    let timeout = test_id("wf_api", "api", "tests.api", "test_timeout_x");
    let covered = api.get(&format!("/api/tests/{timeout}")).expect(200);
    assert_eq!(covered["quarantine"]["owner"], "qa-team", "{covered:#}");
    documented(&doc, "/api/tests/{id}", &covered);
    assert_eq!(covered["timeline"][0]["class"], "quarantined");

    // What is wrong, in the error shape.
    let bad = api.get("/api/tests?status=flakey");
    let message = bad.expect_error(400, "bad_request");
    assert!(message.contains("did you mean `flaky`"), "{message}");
    assert!(
        message.contains("flaky, failing, new, slow, quarantined"),
        "{message}"
    );
    assert_eq!(bad.json["error"]["details"]["field"], "status");
    api.get("/api/tests?limit=0")
        .expect_error(400, "bad_request");
    api.get("/api/tests?limit=10001")
        .expect_error(400, "bad_request");
    api.get(&format!("/api/tests/{id}?limit=0"))
        .expect_error(400, "bad_request");
    let unknown = api.get("/api/tests?color=red");
    assert_eq!(unknown.status, 400, "{unknown:?}");
    let message = api
        .get("/api/tests/tc_0123456789abcdef")
        .expect_error(404, "not_found");
    assert!(message.contains("has results"), "{message}");
    let message = api.get("/api/tests/nope").expect_error(404, "not_found");
    assert!(message.contains("`tc_` and 16 hex digits"), "{message}");
}

/// The suite that fails its test once (the marker file does not exist yet) and passes it
/// after, with pytest where there is one.
fn flipping_suite(dir: &Path) -> &'static str {
    let pytest = Command::new("python3")
        .args(["-m", "pytest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    fs::create_dir_all(dir.join("pyt")).unwrap();
    if pytest {
        fs::write(
            dir.join("pyt/test_flip.py"),
            r#"import os

MARK = os.path.join(os.path.dirname(__file__), "flip.marker")


def test_stable():
    assert 1 + 1 == 2


def test_flips():
    if not os.path.exists(MARK):
        open(MARK, "w").write("failed once")
        assert False, "first run fails at 0x7ffd1234"
"#,
        )
        .unwrap();
        r#"name: py
type: test_runner
suites:
  unit:
    command: ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider", "pyt", "--junitxml=reports/junit-py.xml"]
    junit: reports/junit-py.xml
"#
    } else {
        fs::write(
            dir.join("pyt/suite.sh"),
            r#"mkdir -p reports
if [ -e pyt/flip.marker ]; then
  flip='<testcase classname="pyt.test_flip" name="test_flips" time="0.01"/>'
  code=0
else
  echo once > pyt/flip.marker
  flip='<testcase classname="pyt.test_flip" name="test_flips" time="0.01"><failure message="first run fails at 0x7ffd1234">assert False</failure></testcase>'
  code=1
fi
printf '<testsuites><testsuite name="pytest"><testcase classname="pyt.test_flip" name="test_stable" time="0.01"/>%s</testsuite></testsuites>' "$flip" > reports/junit-py.xml
exit $code
"#,
        )
        .unwrap();
        r#"name: py
type: test_runner
suites:
  unit:
    command: ["sh", "pyt/suite.sh"]
    junit: reports/junit-py.xml
"#
    }
}

const PY: &str = r#"name: Py
steps:
  - name: tests
    agent: py
    action: run_tests
    parameters:
      test_suite: unit
"#;

fn json(run: &crate::support::Run) -> Value {
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[test]
fn a_test_that_flips_on_one_revision_is_named_flaky_by_the_cli_the_api_and_the_dashboard() {
    use crate::browser::{fill, runtime, serve, Browser, DESKTOP};
    let project = project(&[("workflows/py.yaml", PY)]);
    let dir = project.path();
    let agent = flipping_suite(dir);
    fs::write(dir.join("agents/py.yaml"), agent).unwrap();
    cli(dir, &["apply"]).expect_code(0);

    // Twice on one revision: it fails, then passes.
    let first = cli(dir, &["workflow", "execute", "wf_py"]).expect_code(1);
    assert!(first.stdout.contains("1 new failure"), "{}", first.stdout);
    let second = cli(dir, &["workflow", "execute", "wf_py"]).expect_code(0);
    assert!(second.stdout.contains("1 flaky"), "{}", second.stdout);
    let run = run_id(&second.stdout);

    // The CLI, from the store.
    let local = json(&cli(
        dir,
        &["tests", "list", "--status", "flaky", "-o", "json"],
    ));
    assert_eq!(local["total"], 1, "{local:#}");
    let test = &local["tests"][0];
    assert_eq!(test["name"], "test_flips");
    assert_eq!(test["recent"], "FP");
    assert!(
        test["flaky_reason"]
            .as_str()
            .unwrap()
            .starts_with("passed and failed on dir:"),
        "{test}"
    );
    let id = test["id"].as_str().unwrap().to_owned();
    let table = cli(dir, &["tests", "list", "--status", "flaky"]).expect_code(0);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("flaky"),
        "{}",
        table.stdout
    );
    let shown = cli(dir, &["tests", "show", &id]).expect_code(0);
    for expected in [
        "flaky: passed and failed on dir:",
        "new_failure",
        "first run fails at <hex>",
    ] {
        assert!(
            shown.stdout.contains(expected),
            "{expected}: {}",
            shown.stdout
        );
    }
    let local_show = json(&cli(dir, &["tests", "show", &id, "-o", "json"]));
    assert_eq!(local_show["timeline"].as_array().unwrap().len(), 2);
    // A workflow by its name or its id; another has none.
    let by_name = json(&cli(
        dir,
        &["tests", "list", "--workflow", "Py", "-o", "json"],
    ));
    assert_eq!(
        (by_name["workflow"].as_str(), by_name["total"].as_u64()),
        (Some("wf_py"), Some(2))
    );
    let other = json(&cli(
        dir,
        &["tests", "list", "--workflow", "wf_smoke", "-o", "json"],
    ));
    assert_eq!(other["total"], 0, "{other:#}");
    let wrong = cli(dir, &["tests", "list", "--status", "flakey"]).expect_code(2);
    assert!(
        wrong.stderr.contains("did you mean `flaky`"),
        "{}",
        wrong.stderr
    );
    let missing = cli(dir, &["tests", "show", "tc_0123456789abcdef"]).expect_code(2);
    assert!(missing.stderr.contains("no test"), "{}", missing.stderr);

    let (server, base) = serve(dir);
    let http = server.api();
    // The CLI through the server says the same; the API names it too.
    let remote = json(&cli(
        dir,
        &["tests", "list", "--status", "flaky", "-o", "json"],
    ));
    assert_eq!(remote, local, "through the server and from the store");
    let remote_show = json(&cli(dir, &["tests", "show", &id, "-o", "json"]));
    assert_eq!(remote_show, local_show);
    let missing = cli(dir, &["tests", "show", "tc_0123456789abcdef"]).expect_code(2);
    assert!(missing.stderr.contains("no test"), "{}", missing.stderr);
    let listed = http.get("/api/tests?status=flaky").expect(200);
    assert_eq!(listed["tests"][0]["id"], id.as_str());

    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser.open(&format!("{base}/#/tests"), "tests").await;
        let row = browser
            .wait_text(&format!("[data-section='flaky'] [data-test='{id}']"), "test_flips")
            .await;
        assert!(row.contains("passed and failed on dir:"), "{row}");
        browser
            .wait_element(&format!(
                "[data-test='{id}'] .flip-strip[data-recent='FP'] .flip.f-F + .flip.f-P"
            ))
            .await;
        browser.check("the tests page", "tests").await;

        // Quarantine it from the page: the manifest's text, then saved into quarantine/.
        browser
            .press(&format!("[data-section='flaky'] button[data-quarantine='{id}']"))
            .await;
        fill(&browser, "[data-field='owner']", "qa-team").await;
        let yaml = browser
            .wait_text("[data-quarantine-yaml]", "owner: qa-team")
            .await;
        assert!(yaml.contains(&format!("test: {id}")), "{yaml}");
        assert!(yaml.contains("kind: Quarantine"), "{yaml}");
        browser.check("the quarantine form", "tests-quarantine").await;
        browser.press("[data-save]").await;
        let said = browser
            .wait_text("[data-quarantine-saved]", "quarantine/")
            .await;
        let file = said
            .split_whitespace()
            .find(|w| w.starts_with("quarantine/"))
            .unwrap_or_else(|| panic!("no file in {said}"));
        let saved = fs::read_to_string(dir.join(file)).expect("the manifest saved in quarantine/");
        assert!(saved.contains(&id) && saved.contains("qa-team"), "{saved}");
        let quarantined = http.get("/api/tests?status=quarantined").expect(200);
        assert_eq!(quarantined["tests"][0]["id"], id.as_str(), "{quarantined:#}");
        assert_eq!(quarantined["tests"][0]["quarantine"]["owner"], "qa-team");

        // Its timeline: both runs on one revision, the failure's group.
        browser.route(&format!("#/tests/{id}"), "tests").await;
        browser
            .wait_element("[data-section='timeline'] [data-class='new_failure']")
            .await;
        let timeline = browser
            .wait_text("[data-section='timeline']", "new failure")
            .await;
        assert!(timeline.contains("flaky"), "{timeline}");
        assert!(timeline.contains("first run fails at <hex>"), "{timeline}");
        let revisions: Value = browser
            .js(
                "return [...document.querySelectorAll('[data-section=timeline] tr[data-revision]')].map((r) => r.dataset.revision);",
                vec![],
            )
            .await;
        let revisions = revisions.as_array().unwrap();
        assert_eq!(revisions.len(), 2, "{revisions:?}");
        assert_eq!(revisions[0], revisions[1], "one revision");
        browser
            .wait_text("[data-section='test']", "qa-team")
            .await;
        browser.check("a test's timeline", "tests-timeline").await;

        // The run page marks the case's class.
        browser.route(&format!("#/runs/{run}"), "runs").await;
        browser
            .wait_element("[data-test='test_flips'][data-class='flaky'] [data-test-class='flaky']")
            .await;
        browser.check("the run page's classes", "tests-run").await;
        // Each case links to its history, by the id the store gives it.
        browser
            .press(&format!("[data-test='test_flips'] a[data-history='{id}']"))
            .await;
        browser.wait_ready("tests").await;
        browser
            .wait_text("[data-section='timeline']", "new failure")
            .await;

        // 768 pixels wide: the Tests pages do not overflow sideways.
        browser.resize((768, 1000)).await;
        for (hash, name) in [
            ("#/tests".to_owned(), "tests-768"),
            (format!("#/tests/{id}"), "tests-timeline-768"),
        ] {
            browser.route(&hash, "tests").await;
            let overflow = browser
                .js("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", vec![])
                .await;
            assert!(
                overflow.as_i64().unwrap_or(1) <= 0,
                "{name}: the page is wider than the window by {overflow} px"
            );
            browser.screenshot(name).await;
        }
        browser.assert_no_errors("768 px").await;
        browser.close().await;
    });
}
