//! The workflow editor and the custom dashboards in a real browser (see `browser`): a
//! workflow is composed step by step, validated as it is typed (an error shows at its
//! field, and goes once fixed), saved, and listed, its file on disk; a dashboard of two
//! widgets is composed, saved, listed in the navigation and shown with live data, its file
//! under `dashboards/`. No console error anywhere; screenshots in `target/screenshots/`.

use std::fs;

use fantoccini::Locator;
use serde_json::json;

use crate::browser::{assert_contains_all, fill, runtime, serve, Browser, DESKTOP};
use crate::support::project;

/// Picks an option of a select by its value (a real selection: `change` fires).
async fn choose(browser: &Browser, css: &str, value: &str) {
    browser.wait_element(css).await;
    browser
        .client()
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .select_by_value(value)
        .await
        .unwrap_or_else(|e| panic!("cannot choose {value} in {css}: {e}"));
}

/// Waits until the page's validation panel says valid (`true`) or not (`false`).
async fn wait_valid(browser: &Browser, valid: bool) {
    browser
        .wait_element(&format!("[data-section='problems'] [data-valid='{valid}']"))
        .await;
}

/// How far the page is wider than the window, in pixels.
async fn overflow(browser: &Browser) -> i64 {
    browser
        .js(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
            vec![],
        )
        .await
        .as_i64()
        .unwrap_or(1)
}

#[test]
fn create_a_workflow_in_the_editor_and_see_it_validated_and_applied() {
    let project = project(&[]);
    let dir = project.path();
    let (_server, base) = serve(dir);

    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser.open(&format!("{base}/#/workflows"), "workflows").await;
        browser.press("[data-action='new-workflow']").await;
        browser.wait_ready("editor").await;
        // A new workflow has no name and no steps yet: the validation says what is missing.
        wait_valid(&browser, false).await;

        fill(&browser, "input[data-bind='name']", "Editor Flow").await;
        fill(&browser, "input[data-bind='description']", "Made in the browser").await;
        // Step 1: a shell command.
        browser.press("button[data-op='add-step']").await;
        fill(&browser, "input[data-step='0'][data-key='name']", "build").await;
        fill(
            &browser,
            "input[data-step='0'][data-key='command']",
            "echo building \"$ORCHESTRATOR_PARAM_TARGET\"",
        )
        .await;
        // Step 2: the test_runner agent's run_tests action, with a parameter, after step 1.
        browser.press("button[data-op='add-step']").await;
        fill(&browser, "input[data-step='1'][data-key='name']", "test").await;
        choose(&browser, "select[data-step='1'][data-key='agent']", "test_runner").await;
        choose(&browser, "select[data-step='1'][data-key='action']", "run_tests").await;
        browser.press("button[data-op='add-sparam'][data-index='1']").await;
        fill(
            &browser,
            "input[data-step='1'][data-sparam='0'][data-key='key']",
            "test_suite",
        )
        .await;
        fill(
            &browser,
            "input[data-step='1'][data-sparam='0'][data-key='value']",
            "api",
        )
        .await;
        browser.press("input[data-step='1'][data-dep]").await;
        // A typed workflow parameter.
        browser.press("button[data-op='add-param']").await;
        fill(&browser, "input[data-param='0'][data-key='name']", "target").await;
        browser.press("input[data-param='0'][data-key='required']").await;
        fill(&browser, "input[data-param='0'][data-key='default']", "staging").await;

        // The YAML and the graph follow.
        browser.wait_text("[data-yaml]", "depends_on: [build]").await;
        browser.wait_text("[data-yaml]", "action: run_tests").await;
        browser.wait_text("[data-yaml]", "required: true").await;
        browser
            .wait_element(".dag g.node[data-step='test']")
            .await;
        let edges = browser
            .js("return document.querySelectorAll('.dag path.edge').length;", vec![])
            .await;
        assert_eq!(edges, json!(1));
        wait_valid(&browser, true).await;
        assert!(overflow(&browser).await <= 0, "the editor is wider than the window");
        browser.check("editor, valid", "editor-valid").await;

        // An error, shown at its field; fixed, it goes.
        fill(&browser, "input[data-bind='timeout']", "soon").await;
        let message = browser
            .wait_text(".field[data-pointer='/timeout'] .field-error", "duration")
            .await;
        assert!(message.contains("soon"), "{message}");
        wait_valid(&browser, false).await;
        let invalid = browser
            .js("return document.querySelector(\"input[data-bind='timeout']\").getAttribute('aria-invalid');", vec![])
            .await;
        assert_eq!(invalid, json!("true"));
        browser
            .wait_text("[data-section='problems'] ul.diagnostics", "/timeout")
            .await;
        browser.screenshot("editor-invalid").await;
        fill(&browser, "input[data-bind='timeout']", "10m").await;
        wait_valid(&browser, true).await;
        let left = browser
            .js("return document.querySelectorAll('.field-error').length;", vec![])
            .await;
        assert_eq!(left, json!(0));

        // Saved: the workflow's page, the list, the file.
        browser.press("[data-action='save']").await;
        browser
            .wait_text("section.page[data-page='workflows'][data-ready] h1", "Editor Flow")
            .await;
        browser
            .wait_element(".dag g.node[data-step='build']")
            .await;
        let text = fs::read_to_string(dir.join("workflows/editor-flow.yaml"))
            .expect("workflows/editor-flow.yaml");
        assert_contains_all(&text, &[
            "name: Editor Flow",
            "timeout: 10m",
            "agent: test_runner",
            "test_suite: api",
            "depends_on:",
        ], "workflows/editor-flow.yaml");
        browser.route("#/workflows", "workflows").await;
        browser
            .wait_text("tr[data-workflow='wf_editor-flow']", "Editor Flow")
            .await;

        // Opened again from its page: the editor shows what was saved.
        browser.route("#/workflows/wf_editor-flow", "workflows").await;
        browser.press("[data-action='edit']").await;
        browser.wait_ready("editor").await;
        let loaded = browser
            .js("return [document.querySelector(\"input[data-bind='name']\").value, document.querySelectorAll('[data-step-card]').length, document.querySelector(\"input[data-step='1'][data-dep]\").checked];", vec![])
            .await;
        assert_eq!(loaded, json!(["Editor Flow", 2, true]));
        wait_valid(&browser, true).await;
        browser.assert_no_errors("editor").await;

        browser.resize((768, 1000)).await;
        browser.route("#/workflows", "workflows").await;
        browser.route("#/editor/wf_editor-flow", "editor").await;
        assert!(overflow(&browser).await <= 0, "the editor is wider than 768 px");
        browser.screenshot("editor-768").await;
        browser.assert_no_errors("editor at 768 px").await;
        browser.close().await;
    });
}

#[test]
fn compose_a_custom_dashboard_save_it_and_see_it_in_the_navigation() {
    let project = project(&[]);
    let dir = project.path();
    let (_server, base) = serve(dir);

    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser.open(&format!("{base}/#/dashboards"), "dashboards").await;
        browser
            .wait_text("[data-section='list']", "No dashboards yet")
            .await;
        browser.press("[data-action='new-dashboard']").await;
        browser.wait_ready("dashboards").await;
        browser.wait_element("form[data-form='dashboard']").await;

        fill(&browser, "input[data-bind='name']", "Team Board").await;
        // Widget 1 (a runs table to start with): failed runs, full width.
        choose(&browser, "select[data-widget='0'][data-option='status']", "failed").await;
        choose(&browser, "select[data-widget='0'][data-key='width']", "4").await;
        // Widget 2: a system metric chart.
        choose(&browser, "select[data-add-type]", "system_metric").await;
        browser.press("button[data-op='add']").await;
        choose(&browser, "select[data-widget='1'][data-option='metric']", "memory_percent").await;
        fill(&browser, "input[data-widget='1'][data-key='title']", "Memory").await;
        browser.wait_text("[data-yaml]", "metric: memory_percent").await;
        wait_valid(&browser, true).await;
        // An option out of range shows at its field.
        fill(&browser, "input[data-widget='0'][data-option='limit']", "500").await;
        browser
            .wait_text(
                ".field[data-pointer='/widgets/0/options/limit'] .field-error",
                "maximum of 100",
            )
            .await;
        fill(&browser, "input[data-widget='0'][data-option='limit']", "5").await;
        wait_valid(&browser, true).await;
        browser.wait_element("[data-section='preview'] [data-widget='1'][data-loaded='true']").await;
        browser.check("dashboard compose", "dashboard-compose").await;

        browser.press("[data-action='save']").await;
        browser
            .wait_text("section.page[data-page='dashboards'][data-ready] h1", "Team Board")
            .await;
        // Both widgets show live data.
        browser
            .wait_element("[data-section='widgets'] [data-widget='0'][data-loaded='true'][data-widget-type='runs_table']")
            .await;
        browser
            .wait_element("[data-section='widgets'] [data-widget='1'][data-loaded='true'] svg.chart")
            .await;
        browser
            .wait_text("[data-section='widgets'] [data-widget='1'] h2", "Memory")
            .await;
        // Listed under "Custom dashboards" in the navigation.
        browser
            .wait_text("#nav-dashboards a[data-dashboard='dash_team-board']", "Team Board")
            .await;
        let text = fs::read_to_string(dir.join("dashboards/team-board.yaml"))
            .expect("dashboards/team-board.yaml");
        assert_contains_all(&text, &[
            "name: Team Board",
            "type: runs_table",
            "status: failed",
            "width: 4",
            "type: system_metric",
            "metric: memory_percent",
        ], "dashboards/team-board.yaml");
        browser.check("dashboard view", "dashboard-view").await;

        // From the navigation, and listed.
        browser.route("#/dashboards", "dashboards").await;
        browser
            .wait_element("tr[data-dashboard-row='dash_team-board']")
            .await;
        browser.press("#nav-dashboards a[data-dashboard='dash_team-board']").await;
        browser.wait_ready("dashboards").await;
        browser
            .wait_element("[data-section='widgets'] [data-widget='1'][data-loaded='true']")
            .await;

        browser.resize((768, 1000)).await;
        browser.route("#/workflows", "workflows").await;
        browser.route("#/dashboards/dash_team-board", "dashboards").await;
        assert!(overflow(&browser).await <= 0, "the dashboard is wider than 768 px");
        // On a page shorter than the window the navigation row keeps its own height (the
        // grid once shared the spare height between it and the page, leaving a gap).
        let gap = browser
            .js(
                "const nav = document.getElementById('nav'); return nav.getBoundingClientRect().height - document.getElementById('nav-list').getBoundingClientRect().height;",
                vec![],
            )
            .await;
        assert!(gap.as_f64().unwrap() < 40.0, "the navigation row is stretched: {gap}");
        browser.screenshot("dashboard-view-768").await;
        browser.assert_no_errors("dashboards").await;
        browser.close().await;
    });
}
