//! Alert rules end to end: `orchestrator start` evaluating rules every 200 ms against its real
//! system sampler, notifying real receivers on 127.0.0.1 (the HTTP recorder for the webhook
//! and Slack, the SMTP sink for email); `alert_firing`/`alert_resolved` on `/ws`; silences
//! through the API and the CLI; a restart that remembers a firing alert without notifying
//! again; `alert list | show | silence | silences | unsilence` with and without a server.
//!
//! Conditions the tests control: `system.process_count > 0` holds as soon as the first
//! sample is taken; `system.process_count < 0` never does.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::receivers::{HttpRecorder, SmtpSink};
use crate::support::{
    cli, eventually, project, server_address, ws_next, ws_subscribe, Api, Server, Ws,
};

/// An alert that fires as soon as the first system sample is taken.
fn busy_alert(actions: &[&str], repeat: &str) -> String {
    format!(
        r#"name: Busy Host
condition: system.process_count > 0
severity: critical
labels:
  team: qa
annotations:
  summary: "{{{{ name }}}} runs {{{{ value }}}} processes"
actions: {actions:?}
repeat_interval: {repeat}
"#
    )
}

/// Appends monitoring and notification settings to the development configuration: alerts
/// evaluated every 200 ms, deliveries retried twice.
fn configure(dir: &Path, channels: &str) {
    let path = dir.join("config/development.yaml");
    let mut text = fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains("\nmonitoring:") && !text.contains("\nnotifications:"),
        "config/development.yaml has its own monitoring or notifications section now:\n{text}"
    );
    text.push_str(&format!(
        "monitoring:\n  evaluation_interval: 200ms\n  sample_interval: 1s\nnotifications:\n  retry:\n    attempts: 2\n    initial_backoff: 10ms\n{channels}"
    ));
    fs::write(&path, text).unwrap();
}

fn webhook_channel(recorder: &HttpRecorder) -> String {
    format!("  webhook:\n    url: {}/hook\n", recorder.url())
}

/// An empty project configured (see [`configure`]) with a webhook channel to a fresh
/// [`HttpRecorder`]; returns both.
fn webhook_project() -> (HttpRecorder, tempfile::TempDir) {
    let webhook = HttpRecorder::start();
    let project = project(&[]);
    configure(project.path(), &webhook_channel(&webhook));
    (webhook, project)
}

/// Expires `silence` with `alert unsilence` and asserts it says so.
#[track_caller]
fn unsilence(dir: &Path, silence: &str) {
    let expired = cli(dir, &["alert", "unsilence", silence])
        .expect_code(0)
        .stdout;
    assert!(
        expired.starts_with(&format!("{silence} expired at ")),
        "{expired}"
    );
}

/// A JSON request to the server of `dir`: (status, body).
fn request(dir: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let api = Api::of_project(dir);
    let reply = match method {
        "GET" => api.get(path),
        "DELETE" => api.delete(path),
        _ => api.post(path, &body.map(|b| b.to_string()).unwrap_or_default()),
    };
    reply.into_parts()
}

/// `GET /api/alerts/{id}`, which must answer 200.
fn alert(dir: &Path, id: &str) -> Value {
    let (status, body) = request(dir, "GET", &format!("/api/alerts/{id}"), None);
    assert_eq!(status, 200, "{body}");
    body
}

/// Writes an alert manifest.
fn write_alert(dir: &Path, file: &str, text: &str) {
    let path = dir.join("alerts").join(file);
    fs::write(path, text).unwrap();
}

/// Connects to `/ws` of the server of `dir` and narrows it to `events`.
async fn ws_connect(dir: &Path, events: &[&str]) -> Ws {
    let mut ws = crate::support::ws_connect(&server_address(dir), None).await;
    ws_subscribe(&mut ws, events).await;
    ws
}

/// The next event of one of the subscribed kinds about `alert_id`.
async fn ws_alert_event(ws: &mut Ws, alert_id: &str) -> Value {
    loop {
        let event = ws_next(ws).await;
        if event["payload"]["id"] == alert_id {
            return event;
        }
    }
}

#[test]
fn a_firing_alert_notifies_webhook_slack_and_email_and_is_reported() {
    let webhook = HttpRecorder::start();
    let slack = HttpRecorder::start();
    let smtp = SmtpSink::start();
    let project = project(&[]);
    let dir = project.path();
    configure(
        dir,
        &format!(
            "{}  slack:\n    webhook_url: {}/slack\n  email:\n    host: 127.0.0.1\n    port: {}\n    security: none\n    from: alerts@example.com\n    to: [ops@example.com]\n",
            webhook_channel(&webhook),
            slack.url(),
            smtp.port()
        ),
    );
    let server = Server::start(dir);

    // The scaffold's alerts file (the guide's, naming the built-in `log` channel), as `init`
    // wrote it, is in force: two rules, not firing.
    let (status, listed) = request(dir, "GET", "/api/alerts", None);
    assert_eq!(status, 200, "{listed}");
    let ids: Vec<&str> = listed["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alert_high-cpu-usage", "alert_workflow-failure-rate"]);
    let guide = &listed["alerts"][0];
    assert_eq!(guide["duration"], "5m", "{guide}");
    assert_eq!(guide["actions"], json!(["log"]), "{guide}");
    assert_eq!(guide["severity"], "warning", "{guide}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let firing = runtime.block_on(async {
        let mut ws = ws_connect(dir, &["alert_firing", "alert_resolved"]).await;
        // Written once the stream listens: the watcher applies it, the next evaluation fires.
        write_alert(
            dir,
            "busy.yaml",
            &busy_alert(&["webhook", "slack", "email"], "4h"),
        );
        ws_alert_event(&mut ws, "alert_busy-host").await
    });
    assert_eq!(firing["type"], "alert_firing", "{firing}");
    let payload = &firing["payload"];
    assert_eq!(payload["state"], "firing", "{payload}");
    assert_eq!(payload["severity"], "critical", "{payload}");
    let value = payload["value"].as_f64().expect("a value");
    assert!(value > 0.0, "{payload}");
    // The event reports what is stored: the API says the same.
    let shown = alert(dir, "alert_busy-host");
    assert_eq!(shown["state"], "firing", "{shown}");
    assert_eq!(shown["fired_at"], payload["fired_at"], "{shown}");

    // The webhook gets an Alertmanager v4 payload.
    let hook = webhook.wait_for(1);
    let body = &hook[0].body;
    assert_eq!(hook[0].method, "POST");
    assert_eq!(body["version"], "4", "{body}");
    assert_eq!(body["status"], "firing", "{body}");
    let sent = &body["alerts"][0];
    assert_eq!(sent["labels"]["alertname"], "Busy Host", "{body}");
    assert_eq!(sent["labels"]["severity"], "critical", "{body}");
    assert_eq!(sent["labels"]["team"], "qa", "{body}");
    let summary = sent["annotations"]["summary"].as_str().unwrap().to_owned();
    assert!(summary.starts_with("Busy Host runs "), "{summary}");
    assert!(summary.ends_with(" processes"), "{summary}");
    let link = sent["generatorURL"].as_str().unwrap_or_default();
    assert_eq!(
        link,
        format!("http://{}/api/alerts/alert_busy-host", server_address(dir)),
        "{body}"
    );
    // Slack gets its message with the summary.
    let posted = slack.wait_for(1);
    let text = posted[0].body.to_string();
    assert!(text.contains(&summary), "{text}");
    // The email arrives with the summary.
    let mail = smtp.wait_for(1);
    assert_eq!(mail[0].recipients, ["ops@example.com"]);
    assert!(
        mail[0].body().contains(&format!("Summary: {summary}")),
        "{}",
        mail[0].data
    );

    // Every outcome is recorded in the alert's status.
    let shown = eventually("the three outcomes in the status", || {
        let shown = alert(dir, "alert_busy-host");
        let outcomes = &shown["notifications"];
        ["webhook", "slack", "email"]
            .iter()
            .all(|c| outcomes[c]["outcome"]["delivered"] == true)
            .then_some(shown)
    });
    assert_eq!(shown["last_notification"]["status"], "firing", "{shown}");
    assert_eq!(shown["silenced"], false, "{shown}");
    let history = shown["history"].as_array().unwrap();
    assert_eq!(history.len(), 1, "{shown}");
    assert_eq!(history[0]["from"], "inactive");
    assert_eq!(history[0]["to"], "firing");

    // The CLI shows it through the server.
    let listed = cli(dir, &["alert", "list"]).expect_code(0).stdout;
    let line = listed
        .lines()
        .find(|l| l.starts_with("alert_busy-host"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains("firing"), "{line}");
    assert!(line.contains("critical"), "{line}");
    assert!(line.contains("3/3 delivered"), "{line}");
    let show = cli(dir, &["alert", "show", "Busy Host"])
        .expect_code(0)
        .stdout;
    assert!(
        show.contains("condition    system.process_count > 0"),
        "{show}"
    );
    assert!(show.contains("inactive -> firing"), "{show}");
    assert!(show.contains("summary: Busy Host runs"), "{show}");

    // Made false by a change of its manifest: resolved, notified, and on /ws.
    let resolved = runtime.block_on(async {
        let mut ws = ws_connect(dir, &["alert_resolved"]).await;
        write_alert(
            dir,
            "busy.yaml",
            &busy_alert(&["webhook", "slack", "email"], "4h")
                .replace("process_count > 0", "process_count < 0"),
        );
        ws_alert_event(&mut ws, "alert_busy-host").await
    });
    assert_eq!(resolved["type"], "alert_resolved", "{resolved}");
    assert_eq!(resolved["payload"]["state"], "resolved", "{resolved}");
    let hook = webhook.wait_for(2);
    assert_eq!(hook[1].body["status"], "resolved", "{}", hook[1].body);
    assert!(
        hook[1].body["alerts"][0]["endsAt"]
            .as_str()
            .is_some_and(|t| !t.starts_with("0001")),
        "{}",
        hook[1].body
    );
    drop(server);
}

#[test]
fn silences_mute_notifications_until_they_are_expired() {
    let (webhook, project) = webhook_project();
    let dir = project.path();
    write_alert(dir, "busy.yaml", &busy_alert(&["webhook"], "1s"));
    let server = Server::start(dir);
    // Firing and repeating every second.
    webhook.wait_for(2);

    // Bad silences are refused with the error body.
    let (status, refused) = request(
        dir,
        "POST",
        "/api/silences",
        Some(json!({"comment": "no matcher", "duration": "1h"})),
    );
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["code"], "bad_request", "{refused}");
    assert_eq!(
        refused["error"]["details"]["field"], "matchers",
        "{refused}"
    );
    let (status, refused) = request(
        dir,
        "POST",
        "/api/silences",
        Some(
            json!({"alert": "alert_busy-host", "comment": "past", "ends_at": "2020-01-01T00:00:00Z"}),
        ),
    );
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["details"]["field"], "ends_at", "{refused}");

    // Silenced by label from the CLI, through the server.
    let created = cli(
        dir,
        &[
            "alert",
            "silence",
            "--label",
            "team=qa",
            "--for",
            "2h",
            "--comment",
            "maintenance window",
            "-o",
            "json",
        ],
    )
    .expect_code(0)
    .stdout;
    let created: Value = serde_json::from_str(&created).unwrap();
    let silence = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["state"], "active", "{created}");
    assert_eq!(created["alerts"], json!(["alert_busy-host"]), "{created}");
    assert_eq!(
        created["matchers"],
        json!([{"name": "team", "value": "qa"}]),
        "{created}"
    );

    // A repeat comes due under the silence and is muted; after another muted one, nothing
    // more was sent than before it.
    let muted_at = eventually("a muted repeat", || {
        let shown = alert(dir, "alert_busy-host");
        let last = &shown["last_notification"];
        (last["muted_by"] == json!([silence])).then(|| last["at"].clone())
    });
    let sent = webhook.requests().len();
    eventually("a second muted repeat", || {
        let shown = alert(dir, "alert_busy-host");
        let last = &shown["last_notification"];
        (last["muted_by"] == json!([silence]) && last["at"] != muted_at).then_some(())
    });
    assert_eq!(webhook.requests().len(), sent, "sent while silenced");
    let shown = alert(dir, "alert_busy-host");
    assert_eq!(shown["state"], "firing", "{shown}");
    assert_eq!(shown["silenced"], true, "{shown}");
    assert_eq!(shown["silenced_by"], json!([silence]), "{shown}");

    let listed = cli(dir, &["alert", "list"]).expect_code(0).stdout;
    let line = listed
        .lines()
        .find(|l| l.starts_with("alert_busy-host"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.contains(&silence), "{line}");
    assert!(line.contains("muted"), "{line}");
    let silences = cli(dir, &["alert", "silences"]).expect_code(0).stdout;
    assert!(silences.contains(&silence), "{silences}");
    assert!(silences.contains("maintenance window"), "{silences}");
    assert!(silences.contains("team=qa"), "{silences}");

    // Expired: the repeats resume.
    unsilence(dir, &silence);
    webhook.wait_for(sent + 1);
    let (_, listed) = request(dir, "GET", "/api/silences", None);
    assert_eq!(listed["silences"][0]["state"], "expired", "{listed}");
    let (status, missing) = request(dir, "DELETE", "/api/silences/sil_nope", None);
    assert_eq!(status, 404, "{missing}");
    drop(server);
}

#[test]
fn a_restart_remembers_a_firing_alert_without_notifying_again() {
    let (webhook, project) = webhook_project();
    let dir = project.path();
    write_alert(dir, "busy.yaml", &busy_alert(&["webhook"], "1h"));
    let mut server = Server::start(dir);
    webhook.wait_for(1);
    let before = eventually("the delivery recorded", || {
        let shown = alert(dir, "alert_busy-host");
        (shown["notifications"]["webhook"]["outcome"]["delivered"] == true).then_some(shown)
    });
    server.stop();

    // Without a server, the CLI reads the store: same alert, same silences output.
    let local = cli(dir, &["alert", "show", "alert_busy-host", "-o", "json"])
        .expect_code(0)
        .stdout;
    let local: Value = serde_json::from_str(&local).unwrap();
    assert_eq!(local["state"], "firing", "{local}");
    assert_eq!(local["fired_at"], before["fired_at"], "{local}");
    let created = cli(
        dir,
        &[
            "alert",
            "silence",
            "Busy Host",
            "--until",
            "2099-01-01T00:00:00Z",
            "--comment",
            "created offline",
        ],
    )
    .expect_code(0)
    .stdout;
    assert!(
        created.contains("mutes alert_id=alert_busy-host until 2099-01-01T00:00:00Z"),
        "{created}"
    );
    let offline = cli(dir, &["alert", "silences"]).expect_code(0).stdout;
    assert!(offline.contains("created offline"), "{offline}");
    let silence = offline
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    unsilence(dir, &silence);
    let offline = cli(dir, &["alert", "silences"]).expect_code(0).stdout;
    let err = cli(dir, &["alert", "show", "alert_busy-hots"])
        .expect_code(2)
        .stderr;
    assert!(err.contains("did you mean `alert_busy-host`"), "{err}");

    let restarted = chrono::Utc::now();
    let _server = Server::start(dir);
    // The same output through the server.
    let online = cli(dir, &["alert", "silences"]).expect_code(0).stdout;
    assert_eq!(online, offline);
    // Evaluated twice after the restart: still firing since the same instant, and not
    // notified again (its repeat interval is an hour).
    let mut evaluations = Vec::new();
    let shown = eventually("two evaluations after the restart", || {
        let shown = alert(dir, "alert_busy-host");
        let at = shown["last_evaluation"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let after = chrono::DateTime::parse_from_rfc3339(&at).is_ok_and(|t| t > restarted);
        if after && !evaluations.contains(&at) {
            evaluations.push(at);
        }
        (evaluations.len() >= 2).then_some(shown)
    });
    assert_eq!(shown["state"], "firing", "{shown}");
    assert_eq!(shown["fired_at"], before["fired_at"], "{shown}");
    assert_eq!(
        shown["last_notification"], before["last_notification"],
        "{shown}"
    );
    assert_eq!(
        webhook.requests().len(),
        1,
        "notified again after the restart"
    );
}

/// Starts a run through the API and waits for its end; returns its status.
fn run_to_end(dir: &Path, workflow: &str) -> String {
    let shown = Api::of_project(dir).run_to_end(workflow, "");
    shown["run"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_workflow_failure_rate_fires_and_resolves_with_the_runs() {
    let (webhook, project) = webhook_project();
    let dir = project.path();
    let marker = dir.join("passing");
    fs::write(
        dir.join("workflows/flip.yaml"),
        format!(
            "name: Flip\nsteps:\n  - name: check\n    command: [\"test\", \"-e\", \"{}\"]\n",
            marker.display()
        ),
    )
    .unwrap();
    write_alert(
        dir,
        "flip.yaml",
        "name: Flip Failing\ncondition: workflow.failure_rate{workflow=\"wf_flip\"} > 0.5\nactions: [webhook]\nannotations:\n  summary: \"failure rate {{ value }}\"\n",
    );
    let _server = Server::start(dir);
    // No run in the window: no data, not firing.
    let shown = eventually("an evaluation", || {
        let shown = alert(dir, "alert_flip-failing");
        shown["last_evaluation"].is_string().then_some(shown)
    });
    assert_eq!(shown["state"], "inactive", "{shown}");
    assert_eq!(shown["no_data"], true, "{shown}");

    assert_eq!(run_to_end(dir, "wf_flip"), "failed");
    let hook = webhook.wait_for(1);
    assert_eq!(hook[0].body["status"], "firing", "{}", hook[0].body);
    assert_eq!(
        hook[0].body["alerts"][0]["annotations"]["summary"], "failure rate 1",
        "{}",
        hook[0].body
    );

    // Two passing runs bring the rate to 1/3: resolved.
    fs::write(&marker, "").unwrap();
    assert_eq!(run_to_end(dir, "wf_flip"), "succeeded");
    assert_eq!(run_to_end(dir, "wf_flip"), "succeeded");
    let hook = webhook.wait_for(2);
    assert_eq!(hook[1].body["status"], "resolved", "{}", hook[1].body);
    // The rate is 1/2 after the first passing run, which resolves the alert already; the
    // evaluation after the second may come a moment after the notification.
    let shown = eventually("an evaluation after the third run", || {
        let shown = alert(dir, "alert_flip-failing");
        let value = shown["value"].as_f64()?;
        ((value - 1.0 / 3.0).abs() < 1e-9).then_some(shown)
    });
    assert_eq!(shown["state"], "resolved", "{shown}");
}
