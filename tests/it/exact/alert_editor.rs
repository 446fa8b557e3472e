//! Alert rules created and edited in the dashboard, saved as `Alert` manifests.
//!
//! Against a real server in an `init`ed project with two notification channels configured:
//! the routes the editor reads (`POST /api/validate/condition`, whose message and column are
//! validation's own; `GET /api/notification-channels`, names and types only;
//! `GET /api/alerts/{id}/manifest`), saving through `POST /api/manifests` (bad input is a
//! 422 pointing at the field and writes nothing; a new rule lands in `alerts/`, is applied
//! and listed; an edit goes back into its own file with its comments; a rule of a JSON,
//! `{"alerts": [...]}` or multi-document file is refused and its file left alone), a git
//! source that writes nothing, the request guard in front of the new routes, and the page
//! itself in headless chromium: a rule typed in, its bad condition caught as it is typed,
//! saved, listed, and its file on disk.

use std::fs;
use std::path::Path;

use fantoccini::Locator;
use serde_json::{json, Value};

use crate::browser::{assert_contains_all, fill, runtime, serve, Browser, DESKTOP};
use crate::support::{
    edit_config, eventually, follow_main, init_repo, project, raw_exchange, Api, Server,
};

/// Two channels: `webhook` (its type from its name) and `ops` (a webhook by `type`).
const CHANNELS: &str = "notifications:\n  webhook:\n    url: http://127.0.0.1:9/alerts\n    bearer_token: env:NOT_SENT_ANYWHERE\n  ops:\n    type: webhook\n    url: http://127.0.0.1:9/ops-secret-path\n";

/// An `init`ed project with [`CHANNELS`] configured, and `files`.
fn alert_project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let project = project(files);
    let config = project.path().join("config/development.yaml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, format!("{text}{CHANNELS}")).unwrap();
    project
}

/// The files under `alerts/` with their contents, sorted.
fn alert_files(dir: &Path) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = fs::read_dir(dir.join("alerts"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    files.sort();
    files
}

/// A rule as the editor sends it.
fn rule(name: &str, condition: &str) -> Value {
    json!({
        "name": name,
        "description": "Made in the alert editor",
        "condition": condition,
        "duration": "5m",
        "severity": "critical",
        "labels": {"team": "qa"},
        "actions": ["ops"],
    })
}

/// The rule `id` as `GET /api/alerts` lists it, once it is there.
fn listed(api: &Api, id: &str) -> Value {
    eventually(&format!("{id} in the alert list"), || {
        let list = api.get("/api/alerts").expect(200);
        list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == id)
            .cloned()
    })
}

#[test]
fn conditions_are_checked_with_validations_own_message_and_column() {
    let project = alert_project(&[]);
    let server = Server::start(project.path());
    let api = server.api();

    let bad = "system.cpu_percent >> 80";
    let checked = api
        .post(
            "/api/validate/condition",
            &json!({"condition": bad}).to_string(),
        )
        .expect(200);
    assert_eq!(checked["valid"], false, "{checked}");
    let column = checked["column"].as_u64().expect("a column");
    let message = checked["message"].as_str().expect("a message");
    assert!(
        message.starts_with(&format!("invalid condition at column {column}: ")),
        "{checked}"
    );
    // The very words and column validation reports for the manifest's /condition.
    let validated = api
        .post(
            "/api/validate",
            &json!({"kind": "Alert", "manifest": rule("Busy", bad)}).to_string(),
        )
        .expect(200);
    let at_condition: Vec<&Value> = validated["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["pointer"] == "/condition")
        .collect();
    assert_eq!(at_condition.len(), 1, "{validated}");
    assert_eq!(at_condition[0]["message"], message, "{validated}");

    let unknown = api
        .post(
            "/api/validate/condition",
            &json!({"condition": "system.cpu_precent > 80"}).to_string(),
        )
        .expect(200);
    assert_eq!(unknown["valid"], false);
    assert_eq!(unknown["column"], 1, "{unknown}");
    assert!(
        unknown["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `system.cpu_percent`"),
        "{unknown}"
    );

    let good = api
        .post(
            "/api/validate/condition",
            &json!({"condition": "system.cpu_percent > 80 and tests.failed{workflow=\"wf_api-test-suite\"} > 0"}).to_string(),
        )
        .expect(200);
    assert_eq!(good["valid"], true, "{good}");
    assert_eq!(good["column"], Value::Null);
    assert_eq!(
        good["metrics"],
        json!([
            "system.cpu_percent",
            "tests.failed{workflow=\"wf_api-test-suite\"}"
        ])
    );

    // Bodies without a condition string: 400 at the field.
    for body in ["{}", r#"{"condition": 80}"#, ""] {
        let refused = api.post("/api/validate/condition", body);
        let text = refused.text.clone();
        refused.expect_error(400, "bad_request");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            error["error"]["details"]["field"], "condition",
            "{body}: {text}"
        );
    }
    api.post(
        "/api/validate/condition",
        r#"{"condition": "a > 1", "x": 1}"#,
    )
    .expect_error(422, "invalid_body");
}

#[test]
fn the_channels_offered_are_the_configured_ones_without_their_settings() {
    let project = alert_project(&[]);
    let server = Server::start(project.path());
    let api = server.api();
    let reply = api.get("/api/notification-channels");
    let text = reply.text.clone();
    let channels = reply.expect(200);
    assert_eq!(
        channels["channels"],
        json!([
            {"name": "log", "type": "log"},
            {"name": "ops", "type": "webhook"},
            {"name": "webhook", "type": "webhook"}
        ]),
        "{channels}"
    );
    assert_eq!(channels["environment"], "development");
    for secret in ["127.0.0.1:9", "ops-secret-path", "NOT_SENT_ANYWHERE"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}

#[test]
fn a_rule_is_saved_in_alerts_applied_listed_and_edited_in_its_own_file() {
    let project = alert_project(&[]);
    let dir = project.path();
    let server = Server::start(dir);
    let api = server.api();
    let before = alert_files(dir);

    // Bad input: 422 pointing at the field, nothing written.
    for (field, value, pointer) in [
        ("condition", json!("system.cpu_percent >> 80"), "/condition"),
        ("duration", json!("soon"), "/duration"),
        ("severity", json!("urgent"), "/severity"),
        ("labels", json!({"team": 7}), "/labels/team"),
        ("name", json!(""), "/name"),
    ] {
        let mut manifest = rule("Disk filling up", "system.disk_percent > 90");
        manifest[field] = value;
        let reply = api.post(
            "/api/manifests",
            &json!({"kind": "Alert", "manifest": manifest}).to_string(),
        );
        let text = reply.text.clone();
        reply.expect_error(422, "invalid");
        let error: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            error["error"]["details"]["pointer"], pointer,
            "{field}: {text}"
        );
        assert!(
            error["error"]["details"]["diagnostics"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["pointer"] == pointer),
            "{text}"
        );
        assert_eq!(alert_files(dir), before, "{field}: a file was written");
    }

    // Created: alerts/<slug>.yaml, applied, listed with what was set.
    let reply = api.post(
        "/api/manifests",
        &json!({"kind": "Alert", "manifest": rule("Disk filling up", "system.disk_percent > 90")})
            .to_string(),
    );
    let saved = reply.expect(201);
    assert_eq!(saved["id"], "alert_disk-filling-up", "{saved}");
    assert_eq!(saved["file"], "alerts/disk-filling-up.yaml");
    let text = fs::read_to_string(dir.join("alerts/disk-filling-up.yaml")).unwrap();
    assert_contains_all(
        &text,
        &[
            "# yaml-language-server: $schema=../schemas/alert.json",
            "name: Disk filling up",
            "condition: system.disk_percent > 90",
            "duration: 5m",
            "severity: critical",
            "team: qa",
            "ops",
        ],
        "alerts/disk-filling-up.yaml",
    );
    let shown = listed(&api, "alert_disk-filling-up");
    assert_eq!(shown["severity"], "critical", "{shown}");
    assert_eq!(shown["actions"], json!(["ops"]));
    assert_eq!(shown["labels"]["team"], "qa");
    assert_eq!(shown["duration"], "5m");

    // The editor loads it back: the manifest, its file, saving allowed.
    let loaded = api
        .get("/api/alerts/alert_disk-filling-up/manifest")
        .expect(200);
    assert_eq!(loaded["editable"], true, "{loaded}");
    assert_eq!(loaded["reason"], Value::Null);
    assert_eq!(loaded["file"], "alerts/disk-filling-up.yaml");
    assert_eq!(loaded["manifest"]["condition"], "system.disk_percent > 90");
    // By name too, as the other alert routes; an unknown one is a 404.
    let by_name = api
        .get("/api/alerts/Disk%20filling%20up/manifest")
        .expect(200);
    assert_eq!(by_name["id"], "alert_disk-filling-up");
    api.get("/api/alerts/alert_nothing/manifest")
        .expect_error(404, "not_found");

    // Edited in place: its own file, its comments kept, the change applied.
    let path = dir.join("alerts/disk-filling-up.yaml");
    fs::write(&path, format!("# Owned by the QA team.\n{text}")).unwrap();
    eventually("the commented file reconciled", || {
        let loaded = api
            .get("/api/alerts/alert_disk-filling-up/manifest")
            .expect(200);
        (loaded["editable"] == true).then_some(())
    });
    let mut manifest = loaded["manifest"].clone();
    manifest["condition"] = json!("system.disk_percent > 95");
    manifest["actions"] = json!(["ops", "webhook"]);
    let edited = api
        .post(
            "/api/manifests",
            &json!({"kind": "Alert", "id": "alert_disk-filling-up", "manifest": manifest})
                .to_string(),
        )
        .expect(200);
    assert_eq!(edited["file"], "alerts/disk-filling-up.yaml", "{edited}");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# Owned by the QA team.\n"), "{text}");
    assert!(text.contains("system.disk_percent > 95"), "{text}");
    eventually("the edit in force", || {
        let shown = listed(&api, "alert_disk-filling-up");
        (shown["condition"] == "system.disk_percent > 95").then_some(())
    });
    let names: Vec<String> = alert_files(dir).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["alerts.json", "disk-filling-up.yaml"]);
}

#[test]
fn rules_of_json_grouped_or_multi_document_files_are_refused_and_left_alone() {
    let pair = "# Two rules in one file.\nname: Memory high\ncondition: system.memory_percent > 90\n---\n# The second.\nname: Load high\ncondition: system.load_1m > 8\n";
    let grouped = "# Grouped the guide's way, in YAML.\nalerts:\n  - name: Failing tests\n    condition: tests.failed > 0\n";
    let project = alert_project(&[("alerts/pair.yaml", pair), ("alerts/grouped.yaml", grouped)]);
    let dir = project.path();
    let server = Server::start(dir);
    let api = server.api();
    let before = alert_files(dir);

    // `init` writes the guide's {"alerts": [...]} JSON file.
    for (id, file, why) in [
        (
            "alert_high-cpu-usage",
            "alerts/alerts.json",
            "JSON file alerts/alerts.json",
        ),
        (
            "alert_memory-high",
            "alerts/pair.yaml",
            "beside other documents",
        ),
        (
            "alert_failing-tests",
            "alerts/grouped.yaml",
            "beside other documents",
        ),
    ] {
        let loaded = api.get(&format!("/api/alerts/{id}/manifest")).expect(200);
        assert_eq!(loaded["editable"], false, "{loaded}");
        assert_eq!(loaded["file"], file, "{loaded}");
        let reason = loaded["reason"].as_str().expect("a reason");
        assert!(reason.contains(why), "{reason}");
        let mut manifest = loaded["manifest"].clone();
        manifest["condition"] = json!("system.cpu_percent > 99");
        let message = api
            .post(
                "/api/manifests",
                &json!({"kind": "Alert", "id": id, "manifest": manifest}).to_string(),
            )
            .expect_error(409, "conflict");
        assert_eq!(message, reason, "saving says what loading said");
        assert_eq!(alert_files(dir), before, "{file} was rewritten");
    }
}

#[test]
fn a_git_source_server_gives_the_rule_to_commit_and_writes_nothing() {
    let repository = tempfile::tempdir().unwrap();
    init_repo(repository.path());
    let project = alert_project(&[]);
    let dir = project.path();
    follow_main(dir, repository.path());
    let server = Server::start(dir);
    let api = server.api();
    let loaded = eventually("the repository's rules in force", || {
        let reply = api.get("/api/alerts/alert_high-cpu-usage/manifest");
        (reply.status == 200).then(|| reply.expect(200))
    });
    assert_eq!(loaded["editable"], false, "{loaded}");
    assert!(
        loaded["reason"]
            .as_str()
            .unwrap()
            .contains("git repository"),
        "{loaded}"
    );

    let checked = api
        .post(
            "/api/validate",
            &json!({"kind": "Alert", "manifest": rule("Git rule", "system.cpu_percent > 80")})
                .to_string(),
        )
        .expect(200);
    assert_eq!(checked["valid"], true, "{checked}");
    assert_eq!(checked["writable"], false);
    assert_eq!(checked["file"], "alerts/git-rule.yaml");
    let reply = api.post(
        "/api/manifests",
        &json!({"kind": "Alert", "manifest": rule("Git rule", "system.cpu_percent > 80")})
            .to_string(),
    );
    let text = reply.text.clone();
    let message = reply.expect_error(409, "conflict");
    assert!(message.contains("git-source mode"), "{message}");
    assert!(message.contains("commit alerts/git-rule.yaml"), "{message}");
    let error: Value = serde_json::from_str(&text).unwrap();
    assert!(
        error["error"]["details"]["text"]
            .as_str()
            .unwrap()
            .contains("name: Git rule"),
        "{text}"
    );
    assert!(!dir.join("alerts/git-rule.yaml").exists());
    assert!(!repository.path().join("alerts/git-rule.yaml").exists());
}

/// Sends one request exactly as written (`head`: request line and headers, CRLF each) and
/// returns the status.
fn status_of(address: &str, head: &str, body: &str) -> u16 {
    raw_exchange(address, head, body.as_bytes()).status
}

#[test]
fn the_alert_editor_routes_sit_behind_the_request_guard() {
    const TOKEN: &str = "alert-editor-token-0123456789";
    let project = alert_project(&[]);
    let dir = project.path();
    edit_config(
        dir,
        "  port: 8080\n",
        "  port: 8080\n  api_token: env:TEST_TOKEN\n",
    );
    let server = Server::start_with(dir, &[("TEST_TOKEN", TOKEN)]);
    let address = server.address.clone();
    let port = address.rsplit(':').next().unwrap();
    let body = r#"{"condition": "system.cpu_percent > 80"}"#;
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let routes = [
        ("POST", "/api/validate/condition", body),
        ("GET", "/api/notification-channels", ""),
        ("GET", "/api/alerts/alert_high-cpu-usage/manifest", ""),
    ];
    for (method, path, body) in routes {
        let json = if method == "POST" {
            "Content-Type: application/json\r\n"
        } else {
            ""
        };
        let own = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n{json}");
        // Everything right: answered.
        assert_eq!(
            status_of(&address, &format!("{own}{bearer}"), body),
            200,
            "{path}"
        );
        // No token, or a wrong one: 401.
        assert_eq!(
            status_of(&address, &own, body),
            401,
            "{path} without the token"
        );
        assert_eq!(
            status_of(
                &address,
                &format!("{own}Authorization: Bearer wrong-{TOKEN}\r\n"),
                body
            ),
            401,
            "{path} with a wrong token"
        );
        // A foreign Host (DNS rebinding): 421, even with the token.
        let foreign = format!(
            "{method} {path} HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\n{json}{bearer}"
        );
        assert_eq!(
            status_of(&address, &foreign, body),
            421,
            "{path} foreign Host"
        );
    }
    // The state-changing route: another page's Origin 403, a body not said to be JSON 415.
    let post = format!("POST /api/validate/condition HTTP/1.1\r\nHost: {address}\r\n{bearer}");
    assert_eq!(
        status_of(
            &address,
            &format!("{post}Origin: http://evil.example\r\nContent-Type: application/json\r\n"),
            body
        ),
        403
    );
    assert_eq!(
        status_of(
            &address,
            &format!("{post}Content-Type: text/plain\r\n"),
            body
        ),
        415
    );
    assert_eq!(status_of(&address, &post, body), 415, "no Content-Type");
}

#[test]
fn create_an_alert_rule_in_the_dashboard_see_its_condition_checked_and_the_rule_listed() {
    let project = alert_project(&[]);
    let dir = project.path();
    let (_server, base) = serve(dir);

    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser.open(&format!("{base}/#/alerts"), "alerts").await;
        browser.press("[data-action='new-alert']").await;
        browser.wait_ready("alerts").await;
        browser.wait_element("[data-form='alert-editor']").await;
        // The configured channels are offered.
        browser.wait_element("input[data-channel='ops']").await;
        browser.wait_element("input[data-channel='webhook']").await;

        fill(&browser, "input[data-bind='name']", "Disk filling up").await;
        fill(&browser, "input[data-bind='description']", "Made in the browser").await;
        // A bad condition: the server's message and a caret under its column, as it is typed.
        fill(&browser, "textarea[data-bind='condition']", "system.disk_percent >> 90").await;
        let message = browser
            .wait_text("[data-condition-check] [data-condition-error]", "invalid condition at column")
            .await;
        let column = browser
            .js("return document.querySelector('[data-condition-error]').dataset.column;", vec![])
            .await;
        assert!(message.contains(&format!("column {}", column.as_str().unwrap())), "{message}");
        let invalid = browser
            .js("return document.querySelector(\"textarea[data-bind='condition']\").getAttribute('aria-invalid');", vec![])
            .await;
        assert_eq!(invalid, json!("true"));
        // The whole rule, checked by the server too, says the same at /condition.
        let listed = browser
            .wait_text("[data-section='problems'] ul.diagnostics", &message)
            .await;
        assert!(listed.contains("/condition"), "{listed}");
        browser
            .wait_element("[data-section='problems'] [data-valid='false']")
            .await;
        browser.screenshot("alert-editor-invalid").await;

        // Fixed, it goes; the rest of the rule.
        fill(&browser, "textarea[data-bind='condition']", "system.disk_percent > 90").await;
        browser
            .wait_element("[data-condition-check][data-valid='true']")
            .await;
        fill(&browser, "input[data-bind='duration']", "5m").await;
        browser
            .client()
            .find(Locator::Css("select[data-bind='severity']"))
            .await
            .expect("severity")
            .select_by_value("critical")
            .await
            .expect("critical");
        browser.press("button[data-op='add-label']").await;
        fill(&browser, "input[data-label='0'][data-key='key']", "team").await;
        fill(&browser, "input[data-label='0'][data-key='value']", "qa").await;
        browser.press("input[data-channel='ops']").await;
        browser.wait_text("[data-yaml]", "severity: critical").await;
        browser.wait_text("[data-yaml]", "actions: [ops]").await;
        browser
            .wait_element("[data-section='problems'] [data-valid='true']")
            .await;
        browser.check("alert editor, valid", "alert-editor-valid").await;

        // Saved: the list shows it, the file is in alerts/.
        browser.press("[data-action='save']").await;
        browser
            .wait_text("tr[data-alert='alert_disk-filling-up']", "Disk filling up")
            .await;
        browser.screenshot("alert-editor-saved").await;
        let text = fs::read_to_string(dir.join("alerts/disk-filling-up.yaml"))
            .expect("alerts/disk-filling-up.yaml");
        assert_contains_all(
            &text,
            &[
                "name: Disk filling up",
                "condition: system.disk_percent > 90",
                "duration: 5m",
                "severity: critical",
                "team: qa",
                "actions:\n- ops",
            ],
            "alerts/disk-filling-up.yaml",
        );

        // Edit from the list: the form shows what was saved.
        browser.press("[data-edit-alert='alert_disk-filling-up']").await;
        browser.wait_element("[data-form='alert-editor']").await;
        let loaded = browser
            .wait_for(
                "the saved rule in the form",
                "const n = document.querySelector(\"input[data-bind='name']\"); const c = document.querySelector(\"input[data-channel='ops']\"); return n && c && n.value === 'Disk filling up' && c.checked && document.querySelector(\"textarea[data-bind='condition']\").value;",
                vec![],
            )
            .await;
        assert_eq!(loaded, json!("system.disk_percent > 90"));
        browser.assert_no_errors("alert editor").await;

        // A rule of the guide's {"alerts": [...]} file: shown with why it cannot be saved
        // here, its YAML offered to copy, no Save.
        browser
            .route("#/alerts/alert_high-cpu-usage/edit", "alerts")
            .await;
        browser
            .wait_text("[data-section='locked']", "JSON file alerts/alerts.json")
            .await;
        let save = browser
            .js("return document.querySelectorAll(\"[data-action='save']\").length;", vec![])
            .await;
        assert_eq!(save, json!(0));
        browser.wait_element("[data-action='copy']").await;
        browser.assert_no_errors("a rule that cannot be saved here").await;

        // Readable at 768 pixels: nothing wider than the window.
        browser.resize((768, 1000)).await;
        browser.route("#/alerts/new", "alerts").await;
        browser.wait_element("[data-form='alert-editor']").await;
        let overflow = browser
            .js(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            )
            .await;
        assert!(overflow.as_i64().unwrap_or(1) <= 0, "the alert editor is wider than 768 px");
        browser.screenshot("alert-editor-768").await;
        browser.close().await;
    });
}
