//! The web dashboard end to end: `orchestrator start` in a seeded project, the dashboard
//! opened in a real headless chromium (see `browser`). Every page loads with no console
//! error and shows the seeded data; a run started from the Run form is followed live (its
//! step states, log and test cases arrive over /ws, without a reload); the theme toggle;
//! the API token asked for once; and over plain HTTP, the assets' types, ETags and policy.
//!
//! Screenshots of each page go to `target/screenshots/`.

use std::fs;

use serde_json::{json, Value};

use crate::browser::{assert_contains_all, runtime, serve, Browser, DESKTOP};
use crate::support::{
    edit_config, project, server_url, ws_connect, ws_next, ws_subscribe, Api, Server,
};

/// A workflow with typed parameters: a shell step that writes to its log (and, with
/// `hold`, waits for a `release` file in the project), then a JUnit suite through the
/// test_runner agent, which fails a case when `flavour` is `broken`.
const CHECKOUT: &str = r#"name: Checkout
description: Greets, then runs the dashboard suite
parameters:
  greeting: {type: string, required: true, description: Who to greet}
  hold: {type: boolean, default: false, description: Wait for a release file}
  flavour: {type: string, enum: [plain, broken], default: plain}
  cases: {type: integer, default: 2}
steps:
  - name: greet
    command: ["sh", "-c", "echo \"hello $1\"; if [ \"$2\" = true ]; then n=0; while [ ! -f release ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; echo released; fi", "greet", "{{ params.greeting }}", "{{ params.hold }}"]
  - name: suite
    depends_on: [greet]
    agent: test_runner
    action: run_tests
    parameters: {test_suite: dash, tags: "{{ params.flavour }}"}
"#;

/// The test_runner agent with the `dash` suite beside what the scaffold's workflows use (its
/// `api` suite and environments), so every manifest of the project is valid.
const AGENT: &str = r#"name: test_runner
type: test_runner
description: Runs the dashboard suite
environments:
  staging:
    command: ["sh", "suites/setup.sh", "staging"]
  production:
    command: ["sh", "suites/setup.sh", "production"]
suites:
  api:
    command: ["sh", "suites/api.sh", "reports/junit-api.xml"]
    junit: reports/junit-api.xml
  dash:
    command: ["sh", "suites/dash.sh"]
    junit: reports/junit-dash.xml
"#;

const SUITE: &str = r#"#!/bin/sh
out="${ORCHESTRATOR_JUNIT:?}"
mkdir -p "$(dirname "$out")"
echo "dashboard suite ($ORCHESTRATOR_TEST_TAGS)"
if [ "$ORCHESTRATOR_TEST_TAGS" = broken ]; then
  second='<testcase classname="dash" name="totals_add_up" time="0.02"><failure message="expected 3, got 4">assertion failed at totals.rs:12</failure></testcase>'
  code=1
else
  second='<testcase classname="dash" name="totals_add_up" time="0.02"/>'
  code=0
fi
printf '<?xml version="1.0"?>\n<testsuite name="dashboard" tests="2"><testcase classname="dash" name="loads_the_page" time="0.01"/>%s</testsuite>\n' "$second" > "$out"
exit $code
"#;

/// A seeded project: the Checkout workflow and its agent and suite.
fn seeded() -> tempfile::TempDir {
    project(&[
        ("workflows/checkout.yaml", CHECKOUT),
        ("agents/test_runner.yaml", AGENT),
        ("suites/dash.sh", SUITE),
    ])
}

#[test]
fn every_page_loads_without_errors_and_shows_the_seeded_data() {
    let project = seeded();
    let (_server, base) = serve(project.path());
    let failed = Api::at(&base).run_to_end(
        "wf_checkout",
        &json!({"parameters": {"greeting": "seed", "flavour": "broken", "cases": 3}}).to_string(),
    );
    assert_eq!(failed["run"]["status"], "failed", "{failed}");
    let failed_id = failed["run"]["id"].as_str().unwrap().to_owned();
    let passed = Api::at(&base).run_to_end(
        "wf_checkout",
        &json!({"parameters": {"greeting": "again"}}).to_string(),
    );
    assert_eq!(passed["run"]["status"], "succeeded", "{passed}");

    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser.open(&format!("{base}/"), "overview").await;
        // The header: the directory source, its revision, in sync; the live connection.
        browser.wait_text("#source-status", "in sync").await;
        browser
            .wait_text("#connection[data-state='live']", "Live")
            .await;
        // Recent failures name the failed run.
        browser
            .wait_text("[data-section='failures']", &failed_id)
            .await;
        browser
            .wait_text("[data-section='server']", "Workflow")
            .await;
        // Every page of the issue is in the navigation.
        let nav = browser.text("#nav").await;
        assert_contains_all(
            &nav,
            &[
                "Overview",
                "Workflows",
                "Runs",
                "Schedules",
                "Agents",
                "Monitoring",
                "Alerts",
                "Reports and analytics",
                "Manifests",
                "Custom dashboards",
            ],
            "the navigation",
        );
        browser.check("overview", "overview").await;

        browser.route("#/workflows", "workflows").await;
        let row = browser
            .wait_text("tr[data-workflow='wf_checkout']", "Checkout")
            .await;
        assert!(row.contains("succeeded"), "last run status: {row}");
        // The sparkline has one bar per run, coloured by status.
        let bars = browser
            .js(
                "return [...document.querySelectorAll(\"tr[data-workflow='wf_checkout'] svg.sparkline rect\")].map(r => r.getAttribute('class'));",
                vec![],
            )
            .await;
        assert_eq!(bars, json!(["c-failed", "c-succeeded"]));
        browser.check("workflows", "workflows").await;

        browser.route("#/workflows/wf_checkout", "workflows").await;
        // The step graph: both steps, the edge between them.
        browser
            .wait_element(".dag g.node[data-step='greet']")
            .await;
        browser
            .wait_element(".dag g.node[data-step='suite']")
            .await;
        let edges = browser
            .js("return document.querySelectorAll('.dag path.edge').length;", vec![])
            .await;
        assert_eq!(edges, json!(1));
        browser.click("[data-tab='manifest']").await;
        browser
            .wait_text("[data-manifest]", "test_suite: dash")
            .await;
        browser.click("[data-tab='history']").await;
        browser.wait_text("#panel-history", &failed_id).await;
        // The Run form has a control of the right kind for each typed parameter.
        browser.click("[data-action='run']").await;
        let kinds = browser
            .js(
                "const f = document.querySelector(\"form[data-form='run']\"); return ['greeting','hold','flavour','cases'].map(n => { const c = f.elements[n]; return c.tagName.toLowerCase() + ':' + (c.type || '') + ':' + c.required; });",
                vec![],
            )
            .await;
        assert_eq!(
            kinds,
            json!([
                "input:text:true",
                "input:checkbox:false",
                "select:select-one:false",
                "input:number:false"
            ])
        );
        browser.check("workflow detail", "workflow-detail").await;

        browser.route("#/runs", "runs").await;
        browser
            .wait_element(&format!("tr[data-run='{failed_id}'][data-status='failed']"))
            .await;
        let rows = browser
            .js("return document.querySelectorAll('tr[data-run]').length;", vec![])
            .await;
        assert_eq!(rows, json!(2));
        browser.screenshot("runs").await;
        // Filtered by status, from the filter form.
        browser.route("#/runs?status=failed", "runs").await;
        let rows = browser
            .js("return [...document.querySelectorAll('tr[data-run]')].map(r => r.dataset.run);", vec![])
            .await;
        assert_eq!(rows, json!([failed_id]));
        browser.assert_no_errors("runs").await;

        browser
            .route(&format!("#/runs/{failed_id}"), "runs")
            .await;
        browser
            .wait_element("[data-run-status='failed']")
            .await;
        // The failed test case is expanded with its message; the passed one is not.
        browser
            .wait_text("details.test-case[open][data-test='totals_add_up']", "expected 3, got 4")
            .await;
        let passed_open = browser
            .js("return document.querySelector(\"details.test-case[data-test='loads_the_page']\").open;", vec![])
            .await;
        assert_eq!(passed_open, json!(false));
        browser.wait_text("pre[data-log='greet']", "hello seed").await;
        browser.wait_text("pre[data-log='suite']", "dashboard suite (broken)").await;
        browser
            .wait_element(".dag g.node.n-failed[data-step='suite']")
            .await;
        browser
            .wait_text("[data-section='artifacts']", "/suite/junit-dash.xml")
            .await;
        // Finished and failed: re-run, and re-run from failed, not cancel.
        let buttons = browser
            .js("return ['cancel','rerun','rerun-failed'].map(a => !document.querySelector(`[data-action='${a}']`).hidden);", vec![])
            .await;
        assert_eq!(buttons, json!([false, true, true]));
        browser.check("run detail", "run-detail").await;

        // Every page of the navigation is built: each loads, none is a placeholder.
        for page in [
            "tests",
            "schedules",
            "agents",
            "workers",
            "monitoring",
            "alerts",
            "reports",
            "manifests",
            "dashboards",
        ] {
            browser.route(&format!("#/{page}"), page).await;
            let placeholders = browser
                .js("return document.querySelectorAll('[data-placeholder]').length;", vec![])
                .await;
            assert_eq!(placeholders, json!(0), "#/{page} is a placeholder");
        }
        browser.assert_no_errors("every page").await;

        // 768 pixels wide: nothing overflows sideways.
        browser.resize((768, 1000)).await;
        for (hash, page, name) in [
            ("#/", "overview", "overview-768"),
            (&*format!("#/runs/{failed_id}"), "runs", "run-detail-768"),
            ("#/workflows", "workflows", "workflows-768"),
        ] {
            browser.route(hash, page).await;
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

#[test]
fn a_run_started_from_the_dashboard_is_followed_live() {
    let project = seeded();
    let dir = project.path();
    let (_server, base) = serve(dir);
    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser.open(&format!("{base}/#/workflows"), "workflows").await;
        browser
            .wait_text("#connection[data-state='live']", "Live")
            .await;
        browser
            .click("tr[data-workflow='wf_checkout'] a.button")
            .await;
        browser.wait_ready("workflows").await;
        browser
            .type_into("form[data-form='run'] input[name='greeting']", "from the dashboard")
            .await;
        browser
            .click("form[data-form='run'] input[name='hold']")
            .await;
        browser
            .click("form[data-form='run'] button[type='submit']")
            .await;
        let hash = browser
            .wait_for(
                "the run page",
                "return /^#\\/runs\\/run_/.test(location.hash) && document.querySelector(\"section.page[data-page='runs'][data-ready]\") ? location.hash : null;",
                vec![],
            )
            .await;
        let run = hash.as_str().unwrap().trim_start_matches("#/runs/").to_owned();
        // From here on the page is never reloaded: this mark would be gone.
        browser.js("window.__sameDocument = true;", vec![]).await;
        // Held: running, its first log line already streamed.
        browser.wait_element("[data-run-status='running']").await;
        browser
            .wait_text("pre[data-log='greet']", "hello from the dashboard")
            .await;
        browser
            .wait_element(".dag g.node.n-running[data-step='greet']")
            .await;
        browser.screenshot("run-live").await;
        fs::write(dir.join("release"), "").unwrap();
        browser.wait_element("[data-run-status='succeeded']").await;
        browser.wait_text("pre[data-log='greet']", "released").await;
        browser
            .wait_text("pre[data-log='suite']", "dashboard suite (plain)")
            .await;
        browser
            .wait_element("details.test-case[data-test='totals_add_up'][data-test-status='passed']")
            .await;
        browser.wait_text("[data-tests-summary]", "2/2 passed").await;
        browser
            .wait_element(".dag g.node.n-succeeded[data-step='suite']")
            .await;
        // Each line once: the file read at the start and the stream joined without repeats.
        let log = browser.text("pre[data-log='greet']").await;
        assert_eq!(log.matches("hello from the dashboard").count(), 1, "{log}");
        assert_eq!(log.matches("released").count(), 1, "{log}");
        let same = browser.js("return window.__sameDocument === true;", vec![]).await;
        assert_eq!(same, json!(true), "the page was reloaded");
        let summary = browser.text("[data-section='summary']").await;
        assert!(summary.contains("from the dashboard"), "{summary}");
        // The server has the run as the page showed it.
        let shown: Value = Api::at(&base).get(&format!("/api/runs/{run}")).json_or_text();
        assert_eq!(shown["run"]["status"], "succeeded", "{shown}");
        assert_eq!(shown["run"]["parameters"]["greeting"], "from the dashboard");
        assert_eq!(shown["run"]["parameters"]["hold"], true);
        assert_eq!(shown["run"]["parameters"]["cases"], 2, "the default");
        browser.check("live run", "run-finished").await;
        browser.close().await;
    });
}

#[test]
fn the_theme_toggle_switches_to_dark_and_is_remembered() {
    let project = seeded();
    let (_server, base) = serve(project.path());
    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser.open(&format!("{base}/"), "overview").await;
        let background =
            "return [document.documentElement.dataset.theme, getComputedStyle(document.body).backgroundColor];";
        let light = browser.js(background, vec![]).await;
        assert_eq!(light[0], "light", "headless chromium prefers light: {light}");
        browser.click("#theme-toggle").await;
        let dark = browser.js(background, vec![]).await;
        assert_eq!(dark[0], "dark", "{dark}");
        assert_ne!(dark[1], light[1], "the background did not change");
        let pressed = browser
            .js("return document.getElementById('theme-toggle').getAttribute('aria-pressed');", vec![])
            .await;
        assert_eq!(pressed, json!("true"));
        // Kept across a reload.
        browser.client().refresh().await.unwrap();
        browser.wait_ready("overview").await;
        let again = browser.js(background, vec![]).await;
        assert_eq!(again, dark);
        browser.route("#/workflows", "workflows").await;
        browser.screenshot("workflows-dark").await;
        // Keyboard: the skip link is the first stop and moves focus to the content.
        browser
            .js("document.activeElement.blur(); window.scrollTo(0, 0);", vec![])
            .await;
        browser
            .client()
            .active_element()
            .await
            .unwrap()
            .send_keys("\u{E004}")
            .await
            .unwrap();
        let focused = browser.js("return document.activeElement.id;", vec![]).await;
        assert_eq!(focused, json!("skip-link"));
        browser
            .client()
            .active_element()
            .await
            .unwrap()
            .send_keys("\u{E007}")
            .await
            .unwrap();
        let focused = browser.js("return document.activeElement.id;", vec![]).await;
        assert_eq!(focused, json!("main"));
        browser.assert_no_errors("dark theme").await;
        browser.close().await;
    });
}

#[test]
fn with_an_api_token_the_dashboard_asks_for_it_once() {
    let project = seeded();
    let dir = project.path();
    edit_config(
        dir,
        "  port: 8080\n",
        "  port: 8080\n  api_token: env:DASHBOARD_TOKEN\n",
    );
    let _server = Server::start_with(dir, &[("DASHBOARD_TOKEN", "open sesame/+=")]);
    let base = server_url(dir);
    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser
            .client()
            .goto(&format!("{base}/#/workflows/wf_checkout"))
            .await
            .expect("go to the page");
        // Reads and the event stream need the token: the dialog asks for it, once.
        browser.wait_element("#token-dialog[open]").await;
        browser.screenshot("token-dialog").await;
        browser.type_into("#token-input", "open sesame/+=").await;
        browser.click("#token-form button[value='ok']").await;
        browser.wait_ready("workflows").await;
        browser
            .wait_text("#connection[data-state='live']", "Live")
            .await;
        // Kept: running the workflow asks no more.
        browser.click("[data-action='run']").await;
        browser
            .type_into(
                "form[data-form='run'] input[name='greeting']",
                "token holder",
            )
            .await;
        browser
            .click("form[data-form='run'] button[type='submit']")
            .await;
        browser.wait_ready("runs").await;
        browser.wait_element("[data-run-status='succeeded']").await;
        browser
            .wait_text("pre[data-log='greet']", "hello token holder")
            .await;
        let open = browser
            .js(
                "return document.getElementById('token-dialog').open;",
                vec![],
            )
            .await;
        assert_eq!(open, json!(false));
        let kept = browser
            .js(
                "return sessionStorage.getItem('orchestrator.apiToken');",
                vec![],
            )
            .await;
        assert_eq!(kept, json!("open sesame/+="));
        browser.assert_no_errors("token").await;
        browser.close().await;
    });
}

#[test]
fn assets_are_served_with_types_etags_and_a_strict_policy() {
    let project = project(&[]);
    let (_server, base) = serve(project.path());
    let api = Api::at(&base);
    let get = |path: &str, etag: Option<&str>| {
        let mut request = api.request("GET", path);
        if let Some(etag) = etag {
            request = request.header("If-None-Match", etag);
        }
        let reply = request.send();
        let header = |name: &str| reply.header(name).unwrap_or_default().to_owned();
        let (ctype, etag, cache, csp) = (
            header("content-type"),
            header("etag"),
            header("cache-control"),
            header("content-security-policy"),
        );
        (reply.status, ctype, etag, cache, csp, reply.text)
    };

    let (status, ctype, etag, cache, csp, body) = get("/", None);
    assert_eq!(status, 200);
    assert_eq!(ctype, "text/html; charset=utf-8");
    assert_eq!(cache, "no-cache");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(
        body.contains("<script type=\"module\" src=\"/assets/app.js\">"),
        "{body}"
    );
    assert!(
        body.contains(r#"<meta name="dashboard-pages" content="overview,workflows,runs"#),
        "{body}"
    );
    let (status, _, again, _, _, body) = get("/", Some(&etag));
    assert_eq!((status, body.as_str(), again), (304, "", etag.clone()));
    let (status, _, _, _, _, _) = get("/", Some("\"stale\""));
    assert_eq!(status, 200);

    for (path, expected) in [
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/pages/runs.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
        ("/assets/favicon.svg", "image/svg+xml"),
    ] {
        let (status, ctype, etag, cache, _, body) = get(path, None);
        assert_eq!((status, ctype.as_str()), (200, expected), "{path}");
        assert_eq!(cache, "no-cache", "{path}");
        assert!(!body.is_empty() && etag.starts_with('"'), "{path}");
        assert_eq!(get(path, Some(&etag)).0, 304, "{path}");
    }

    let (status, ctype, _, _, _, body) = get("/assets/pages/nope.js", None);
    assert_eq!(status, 404);
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "not_found", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("pages/nope.js"),
        "{error}"
    );
    // The API's own 404s stay as they were.
    let (status, _, _, _, _, body) = get("/api/nope", None);
    assert_eq!(status, 404);
    assert!(body.contains("GET /api"), "{body}");
}

/// The run page joins a step's log file and its streamed lines by byte offset: each
/// `run_log` event says where its text starts in the file.
#[test]
fn run_log_events_say_where_their_text_starts_in_the_log_file() {
    let project = project(&[(
        "workflows/talk.yaml",
        "name: Talk\nsteps:\n  - name: speak\n    command: [\"sh\", \"-c\", \"echo one; sleep 0.3; echo two; sleep 0.3; echo three\"]\n",
    )]);
    let (_server, base) = serve(project.path());
    let address = base.trim_start_matches("http://").to_owned();
    runtime().block_on(async {
        let mut ws = ws_connect(&address, None).await;
        ws_subscribe(&mut ws, &["run_log", "workflow_completed"]).await;
        let accepted = Api::at(&base)
            .post("/api/workflows/wf_talk/execute", "")
            .json_or_text();
        let run = accepted["run_id"].as_str().unwrap().to_owned();
        let mut joined = String::new();
        loop {
            let event = ws_next(&mut ws).await;
            let payload = &event["payload"];
            match event["type"].as_str() {
                Some("run_log") if payload["run_id"] == run.as_str() => {
                    assert_eq!(payload["offset"], json!(joined.len()), "{event}");
                    joined.push_str(payload["text"].as_str().unwrap());
                }
                Some("workflow_completed") if payload["id"] == run.as_str() => break,
                _ => {}
            }
        }
        assert_eq!(joined, "one\ntwo\nthree\n");
        let log = Api::at(&base).get(&format!("/api/runs/{run}/logs/speak"));
        assert_eq!(log.text, joined);
    });
}
