//! The Monitoring, Alerts and Reports pages of the dashboard end to end, in a real headless
//! chromium (see `browser`) against `orchestrator start` in a seeded project: samples and
//! alert evaluations every 200 ms, a rule that fires at once (with a webhook channel that
//! refuses connections, so its delivery fails), a rule that stays inactive, finished runs
//! with JUnit cases (one failing) and an HTML report.
//!
//! Each page loads with no console error and shows the seeded data; the monitoring charts
//! get points live; an alert manifest added while the Alerts page is open appears firing
//! without a reload; a silence created on the page is in the API and is expired from the
//! page; an HTML report opens through `GET /api/runs/{id}/artifacts/{path}`. Over raw HTTP,
//! that route refuses traversal (`..`, `%2e%2e`, absolute paths, a recorded file replaced by
//! a symlink out of `reports/`). Screenshots go to `target/screenshots/`.

use std::fs;

use serde_json::{json, Value};

use crate::browser::{runtime, serve, Browser, DESKTOP};
use crate::support::{eventually, project, raw_exchange, Api};

/// A JUnit suite and an HTML report: the suite fails a case when `flavour` is `broken`; the
/// report step runs either way.
const CHECKOUT: &str = r#"name: Checkout
description: A suite, then a report
parameters:
  flavour: {type: string, enum: [plain, broken], default: plain}
steps:
  - name: suite
    agent: test_runner
    action: run_tests
    parameters: {test_suite: dash, tags: "{{ params.flavour }}"}
  - name: report
    depends_on: [suite]
    if: always()
    agent: report_generator
    action: generate_html_report
    parameters: {template: detailed}
"#;

const AGENT: &str = r#"name: test_runner
type: test_runner
suites:
  dash:
    command: ["sh", "suites/dash.sh"]
    junit: reports/junit-dash.xml
"#;

const SUITE: &str = r#"#!/bin/sh
out="${ORCHESTRATOR_JUNIT:?}"
mkdir -p "$(dirname "$out")"
if [ "$ORCHESTRATOR_TEST_TAGS" = broken ]; then
  second='<testcase classname="dash" name="totals_add_up" time="0.02"><failure message="expected 3, got 4">assertion failed at totals.rs:12</failure></testcase>'
  code=1
else
  second='<testcase classname="dash" name="totals_add_up" time="0.02"/>'
  code=0
fi
printf '<?xml version="1.0"?>\n<testsuite name="dashboard" tests="2"><testcase classname="dash" name="loads_the_page" time="0.35"/>%s</testsuite>\n' "$second" > "$out"
exit $code
"#;

/// Fires as soon as the first sample is taken; notifies a webhook nobody listens on.
const BUSY: &str = r#"name: Busy Host
condition: system.process_count > 0
severity: critical
labels: {team: qa}
actions: [webhook]
"#;

/// Never true.
const CALM: &str = r#"name: Calm Load
condition: system.load_average > 1000000
severity: info
labels: {team: ops}
"#;

/// Added while the Alerts page is open.
const FRESH: &str = r#"name: Fresh Alert
condition: system.memory_percent >= 0
severity: warning
"#;

/// Samples and evaluations every 200 ms; one attempt per delivery, to a closed port.
const CONFIG: &str = "monitoring:\n  sample_interval: 200ms\n  evaluation_interval: 200ms\nnotifications:\n  retry:\n    attempts: 1\n    initial_backoff: 10ms\n  webhook:\n    url: http://127.0.0.1:9/alertmanager\n    timeout: 2s\n";

fn seeded() -> tempfile::TempDir {
    let project = project(&[
        ("workflows/checkout.yaml", CHECKOUT),
        ("agents/test_runner.yaml", AGENT),
        ("suites/dash.sh", SUITE),
        ("alerts/busy.yaml", BUSY),
        ("alerts/calm.yaml", CALM),
    ]);
    let config = project.path().join("config/development.yaml");
    let mut text = fs::read_to_string(&config).unwrap();
    assert!(
        !text.contains("\nmonitoring:") && !text.contains("\nnotifications:"),
        "config/development.yaml has its own monitoring or notifications section now:\n{text}"
    );
    text.push_str(CONFIG);
    fs::write(&config, text).unwrap();
    project
}

/// GET: (status, content type, headers' CSP, body).
fn get(base: &str, path: &str) -> (u16, String, String, String) {
    let reply = Api::at(base).get(path);
    let csp = reply
        .header("content-security-policy")
        .unwrap_or_default()
        .to_owned();
    (reply.status, reply.content_type, csp, reply.text)
}

#[track_caller]
fn get_json(base: &str, path: &str) -> Value {
    let (status, _, _, text) = get(base, path);
    assert_eq!(status, 200, "GET {path}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Starts a run of Checkout with `flavour` and waits for its end; returns `{"run", "steps"}`.
fn run_to_end(base: &str, flavour: &str) -> Value {
    Api::at(base).run_to_end(
        "wf_checkout",
        &json!({"parameters": {"flavour": flavour}}).to_string(),
    )
}

/// The id of the alert named `name`.
fn alert_id(base: &str, name: &str) -> String {
    eventually(&format!("alert {name} in force"), || {
        get_json(base, "/api/alerts")["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["name"] == name)
            .map(|a| a["id"].as_str().unwrap().to_owned())
    })
}

/// The artifacts of a run's steps.
fn artifacts(run: &Value) -> Vec<String> {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["artifacts"].as_array().cloned().unwrap_or_default())
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn monitoring_alerts_and_reports_pages_show_the_system_live() {
    let project = seeded();
    let (_server, base) = serve(project.path());
    let failed = run_to_end(&base, "broken");
    assert_eq!(failed["run"]["status"], "failed", "{failed}");
    let passed = run_to_end(&base, "plain");
    assert_eq!(passed["run"]["status"], "succeeded", "{passed}");
    let passed_id = passed["run"]["id"].as_str().unwrap().to_owned();
    let busy = alert_id(&base, "Busy Host");
    let calm = alert_id(&base, "Calm Load");
    // The failed delivery is recorded before the page is opened, so the page shows it.
    eventually("the webhook delivery to fail", || {
        let alert = get_json(&base, &format!("/api/alerts/{busy}"));
        (alert["notifications"]["webhook"]["outcome"]["delivered"] == false).then_some(())
    });

    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;

        // Monitoring: gauges, the charts, new points arriving live.
        browser.open(&format!("{base}/#/monitoring"), "monitoring").await;
        browser.wait_text("[data-gauge='cpu']", "%").await;
        browser.wait_text("[data-gauge='orchestrator-rss']", "B").await;
        for chart in ["cpu", "memory", "disk", "network", "load", "orchestrator-cpu", "orchestrator-rss"] {
            browser
                .wait_element(&format!("[data-plot='{chart}'] svg.chart path.line"))
                .await;
        }
        let points = |v: &Value| v.as_u64().unwrap_or(0);
        let before = points(
            &browser
                .js("return Number(document.querySelector(\"[data-plot='cpu'] svg.chart\").dataset.points);", vec![])
                .await,
        );
        let after = browser
            .wait_for(
                "the CPU chart to get new points",
                "const n = Number(document.querySelector(\"[data-plot='cpu'] svg.chart\")?.dataset.points); return n > arguments[0] + 2 ? n : null;",
                vec![json!(before)],
            )
            .await;
        assert!(points(&after) > before + 2, "{before} -> {after}");
        // The axes are labelled and the network chart has both directions.
        let ticks = browser
            .js("return document.querySelectorAll(\"[data-plot='memory'] text.y-tick\").length;", vec![])
            .await;
        assert!(points(&ticks) >= 3, "y ticks: {ticks}");
        let network = browser
            .js("return [...document.querySelectorAll(\"[data-plot='network'] path.line\")].map(p => p.dataset.series);", vec![])
            .await;
        assert_eq!(network, json!(["Received", "Sent"]));
        // Another range, and the hover read-out over a chart.
        browser.click("[data-range='1h']").await;
        browser
            .wait_element("[data-range='1h'][aria-pressed='true']")
            .await;
        browser
            .wait_element("[data-plot='cpu'] svg.chart path.line")
            .await;
        // Live samples redraw the charts, which may replace the element a pointer moved
        // over: each look moves the pointer over the chart there is now.
        let read_out = browser
            .wait_for(
                "the hover read-out",
                "const svg = document.querySelector(\"[data-plot='memory'] svg.chart\"); if (!svg) return null; const b = svg.getBoundingClientRect(); svg.querySelector('.hover-target')?.dispatchEvent(new PointerEvent('pointermove', {bubbles: true, clientX: b.left + b.width * 0.9, clientY: b.top + b.height / 2})); return svg.dataset.hoverValue || null;",
                vec![],
            )
            .await;
        assert!(
            read_out.as_str().unwrap().contains("Memory: "),
            "{read_out}"
        );
        browser.check("monitoring", "monitoring").await;

        // Alerts: the firing rule with its value per metric and its failed delivery, the
        // inactive one.
        browser.route("#/alerts", "alerts").await;
        let row = browser
            .wait_text(&format!("tr[data-alert='{busy}'][data-state='firing']"), "Busy Host")
            .await;
        assert!(row.contains("critical") && row.contains("team=qa"), "{row}");
        browser
            .wait_text(
                &format!("tr[data-alert='{busy}'] [data-metric='system.process_count']"),
                "system.process_count = ",
            )
            .await;
        let delivery = browser
            .wait_text(
                &format!("tr[data-alert='{busy}'] [data-channel='webhook'][data-delivery='failed']"),
                "webhook",
            )
            .await;
        assert!(delivery.contains("failed"), "{delivery}");
        browser
            .wait_text(&format!("tr[data-alert='{calm}'][data-state='inactive']"), "Calm Load")
            .await;
        browser.wait_text("[data-count='firing']", "1").await;
        browser.check("alerts", "alerts").await;

        // A failing alert appears without a reload.
        browser.js("window.__noReload = 'still here';", vec![]).await;
        fs::write(project.path().join("alerts/fresh.yaml"), FRESH).unwrap();
        browser
            .wait_text("tr[data-state='firing']", "Fresh Alert")
            .await;
        browser.wait_text(".toast", "Alert firing: Fresh Alert").await;
        assert_eq!(
            browser.js("return window.__noReload || null;", vec![]).await,
            json!("still here"),
            "the page was reloaded"
        );
        browser.wait_text("[data-count='firing']", "2").await;

        // A silence from the page: the API's 400 shown in the form, then created.
        browser.click(&format!("[data-silence-alert='{busy}']")).await;
        browser.wait_element("form[data-form='silence']").await;
        browser
            .click("form[data-form='silence'] button[type='submit']")
            .await;
        let error = browser
            .wait_text("form[data-form='silence'] [data-form-error]", "comment")
            .await;
        assert!(!error.trim().is_empty(), "{error}");
        browser
            .type_into("form[data-form='silence'] textarea[name='comment']", "known flake")
            .await;
        browser
            .click("form[data-form='silence'] button[type='submit']")
            .await;
        let silence = eventually("the silence in the API", || {
            get_json(&base, "/api/silences")["silences"]
                .as_array()?
                .iter()
                .find(|s| s["comment"] == "known flake")
                .cloned()
        });
        assert_eq!(silence["state"], "active", "{silence}");
        assert_eq!(silence["alerts"], json!([busy.clone()]), "{silence}");
        let silence_id = silence["id"].as_str().unwrap().to_owned();
        browser
            .wait_text(&format!("tr[data-silence='{silence_id}'][data-state='active']"), "known flake")
            .await;
        browser
            .wait_text(&format!("tr[data-alert='{busy}']"), "silenced")
            .await;
        // Expired from the page.
        browser
            .click(&format!("[data-expire='{silence_id}']"))
            .await;
        eventually("the silence to expire", || {
            get_json(&base, "/api/silences")["silences"]
                .as_array()?
                .iter()
                .find(|s| s["id"] == silence_id.as_str() && s["state"] == "expired")
                .cloned()
        });
        browser
            .wait_element(&format!("tr[data-silence='{silence_id}'][data-state='expired']"))
            .await;
        browser.assert_no_errors("alerts after the silence").await;

        // One alert: its transitions.
        browser.route(&format!("#/alerts/{busy}"), "alerts").await;
        browser.wait_text(".page-header h1", "Busy Host").await;
        browser
            .wait_element("[data-section='history'] tr[data-transition$='-firing']")
            .await;
        browser
            .wait_element("[data-alert-state='firing']")
            .await;
        browser.check("alert detail", "alert-detail").await;

        // Reports: the workflow's outcomes, trends, failing test and report links.
        browser.route("#/reports", "reports").await;
        let row = browser
            .wait_text("tr[data-workflow='wf_checkout']", "Checkout")
            .await;
        assert!(row.contains("75%"), "pass rate over both runs (3 of 4 cases): {row}");
        browser
            .wait_element("[data-section='reports'] a[data-artifact$='report.html']")
            .await;
        browser.route("#/reports/wf_checkout", "reports").await;
        browser.wait_text("[data-stat='runs']", "2").await;
        browser
            .wait_text("[data-section='failing'] tr[data-test='totals_add_up']", "1 of 2")
            .await;
        browser
            .wait_text("[data-section='slowest'] tr[data-test='loads_the_page']", "350 ms")
            .await;
        for chart in ["pass-chart", "duration-chart"] {
            browser
                .wait_element(&format!("[data-section='{chart}'] svg.chart"))
                .await;
        }
        let link = browser
            .js(
                "return document.querySelector(`tr[data-run='${arguments[0]}'] a[data-artifact$='report.html']`)?.getAttribute('href') || null;",
                vec![json!(passed_id)],
            )
            .await;
        let link = link.as_str().expect("a report link").to_owned();
        assert!(
            link.starts_with(&format!("/api/runs/{passed_id}/artifacts/reports/")),
            "{link}"
        );
        // The run's own page links the same report.
        browser.route(&format!("#/runs/{passed_id}"), "runs").await;
        browser
            .wait_element("[data-section='artifacts'] a[data-artifact$='report.html']")
            .await;
        let on_run = browser
            .js(
                "return document.querySelector(`[data-section='artifacts'] a[data-artifact$='report.html']`).getAttribute('href');",
                vec![],
            )
            .await;
        assert_eq!(on_run.as_str(), Some(link.as_str()));
        browser.route("#/reports/wf_checkout", "reports").await;
        browser.wait_text("[data-stat='runs']", "2").await;
        browser.check("reports", "reports").await;
        browser.resize((768, 1000)).await;
        browser.wait_element("[data-section='runs'] table").await;
        browser.screenshot("reports-768").await;
        browser.resize(DESKTOP).await;

        // Overview: the firing alerts (from the alerts route) and the system gauges.
        browser.route("#/overview", "overview").await;
        browser
            .wait_text(&format!("[data-section='alerts'] tr[data-alert='{busy}']"), "Busy Host")
            .await;
        browser.wait_text("[data-gauge='CPU']", "%").await;
        browser.assert_no_errors("overview").await;

        // The HTML report, opened through the artifacts route.
        browser
            .client()
            .goto(&format!("{base}{link}"))
            .await
            .expect("open the report");
        let text = browser
            .wait_for(
                "the report to show",
                "return document.body && document.body.innerText.includes('Checkout') ? document.body.innerText : null;",
                vec![],
            )
            .await;
        assert!(text.as_str().unwrap().contains("loads_the_page"), "{text}");
        browser.close().await;
    });
}

/// A raw HTTP/1.1 GET, the target sent as is (no client normalizes `..` away): (status,
/// body).
fn raw_get(base: &str, target: &str) -> (u16, String) {
    let address = base.trim_start_matches("http://");
    let head = format!("GET {target} HTTP/1.1\r\nHost: {address}\r\n");
    let reply = raw_exchange(address, &head, b"");
    (reply.status, reply.text)
}

#[test]
fn the_artifacts_route_serves_recorded_reports_and_refuses_traversal() {
    let project = seeded();
    let (_server, base) = serve(project.path());
    let run = run_to_end(&base, "broken");
    let id = run["run"]["id"].as_str().unwrap().to_owned();
    let recorded = artifacts(&run);
    let html = recorded
        .iter()
        .find(|a| a.ends_with("report.html"))
        .expect("an HTML report")
        .clone();
    // The suite writes its JUnit to a fixed path; the run keeps its own copy.
    let junit = recorded
        .iter()
        .find(|a| a.ends_with("junit-dash.xml"))
        .expect("the suite's JUnit")
        .clone();
    assert_eq!(
        junit,
        format!("reports/{id}/suite/junit-dash.xml"),
        "{recorded:?}"
    );

    let (status, content_type, csp, text) = get(&base, &format!("/api/runs/{id}/artifacts/{html}"));
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/html; charset=utf-8");
    assert!(
        csp.contains("sandbox") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(text.contains("totals_add_up"), "{text}");
    let (status, content_type, _, text) = get(&base, &format!("/api/runs/{id}/artifacts/{junit}"));
    assert_eq!(
        (status, content_type.as_str()),
        (200, "application/xml"),
        "{text}"
    );
    assert!(text.contains("<testsuite"), "{text}");

    // A file in reports/ the run did not record, and one that is not there at all.
    fs::write(project.path().join("reports/other.json"), "{}").unwrap();
    for path in ["reports/other.json", "config/development.yaml"] {
        let (status, _, _, text) = get(&base, &format!("/api/runs/{id}/artifacts/{path}"));
        assert_eq!(status, 404, "{path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("recorded no artifact"),
            "{body}"
        );
    }
    let (status, _, _, _) = get(&base, &format!("/api/runs/run_nope/artifacts/{html}"));
    assert_eq!(status, 404);

    // Traversal, sent raw: 400 with the standard error body, or a 404 from the router.
    for target in [
        format!("/api/runs/{id}/artifacts/../../etc/passwd"),
        format!("/api/runs/{id}/artifacts/reports/../../../etc/passwd"),
        format!("/api/runs/{id}/artifacts/%2e%2e/%2e%2e/etc/passwd"),
        format!("/api/runs/{id}/artifacts/reports/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd"),
        format!("/api/runs/{id}/artifacts//etc/passwd"),
        format!("/api/runs/{id}/artifacts/%2Fetc%2Fpasswd"),
        format!("/api/runs/{id}/artifacts/reports/..%5C..%5Cetc%5Cpasswd"),
    ] {
        let (status, body) = raw_get(&base, &target);
        assert!(status == 400 || status == 404, "{target}: {status} {body}");
        assert!(!body.contains("root:"), "{target} served /etc/passwd");
        let body: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{target}: {e}: {body}"));
        assert!(body["error"]["code"].is_string(), "{target}: {body}");
        if status == 400 {
            assert_eq!(body["error"]["details"]["parameter"], "path", "{body}");
        }
    }
    let (status, body) = raw_get(&base, &format!("/api/runs/{id}/artifacts/../../etc/passwd"));
    assert_eq!(status, 400, "{body}");

    // A recorded file replaced by a symlink out of reports/ is not followed.
    let copy = project.path().join(&junit);
    let outside = project.path().join("secret.txt");
    fs::write(&outside, "top secret").unwrap();
    fs::remove_file(&copy).unwrap();
    std::os::unix::fs::symlink(&outside, &copy).unwrap();
    let (status, _, _, text) = get(&base, &format!("/api/runs/{id}/artifacts/{junit}"));
    assert_eq!(status, 404, "{text}");
    assert!(!text.contains("top secret"), "{text}");
    assert!(text.contains("inside reports/"), "{text}");

    // The trends of the workflow.
    let trends = get_json(&base, "/api/workflows/wf_checkout/trends?limit=5");
    assert_eq!(trends["runs"].as_array().unwrap().len(), 1, "{trends}");
    assert_eq!(trends["outcomes"]["failed"], 1, "{trends}");
    assert_eq!(trends["pass_rate"], 0.5, "{trends}");
    assert_eq!(
        trends["failing_tests"][0]["name"], "totals_add_up",
        "{trends}"
    );
    let url = trends["runs"][0]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a["url"].as_str().filter(|u| u.ends_with("report.html")))
        .expect("the report's URL")
        .to_owned();
    assert_eq!(get(&base, &url).0, 200);
    for (path, status) in [
        ("/api/workflows/wf_checkout/trends?limit=0", 400),
        ("/api/workflows/wf_checkout/trends?limit=abc", 400),
        ("/api/workflows/wf_checkout/trends?since=1h", 400),
        ("/api/workflows/wf_nope/trends", 404),
    ] {
        let (got, content_type, _, text) = get(&base, path);
        assert_eq!(got, status, "{path}: {text}");
        assert!(content_type.starts_with("application/json"), "{path}");
    }
}
