//! Notification channels end to end: a [`Notifier`] delivering to real receivers on
//! 127.0.0.1 — the HTTP recorder for webhook and Slack, the SMTP sink for email — with
//! retries, answers that are not retried, dead ports, timeouts and configuration problems.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use orchestrator::config::NotificationsConfig;
use orchestrator::monitor::notify::Notifier;
use orchestrator::monitor::{AlertNotification, NotificationStatus};
use serde_json::{json, Value};

use crate::receivers::{HttpRecorder, SmtpSink};

fn notification(status: NotificationStatus) -> AlertNotification {
    AlertNotification {
        alert_id: "alert_high-cpu-usage".into(),
        name: "High CPU Usage".into(),
        status,
        severity: "critical".into(),
        labels: BTreeMap::from([
            ("alertname".to_owned(), "High CPU Usage".to_owned()),
            ("severity".to_owned(), "critical".to_owned()),
            ("team".to_owned(), "infra".to_owned()),
        ]),
        annotations: BTreeMap::from([
            ("summary".to_owned(), "CPU usage is 93.2%".to_owned()),
            (
                "description".to_owned(),
                "CPU above 80% for 5 minutes".to_owned(),
            ),
        ]),
        condition: "system.cpu_percent > 80".into(),
        value: Some(93.2),
        starts_at: Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap(),
        ends_at: (status == NotificationStatus::Resolved)
            .then(|| Utc.with_ymd_and_hms(2024, 5, 1, 10, 30, 0).unwrap()),
        generator_url: "http://127.0.0.1:8080/alerts/alert_high-cpu-usage".into(),
        fingerprint: "5d1e0c3f9a2b7e41".into(),
    }
}

/// A notifier for `channels` (the `notifications:` mapping as JSON), retrying `attempts`
/// times with a 10 ms initial backoff.
fn notifier(dir: &Path, attempts: u32, channels: Value) -> Notifier {
    let mut config = channels;
    config["retry"] = json!({"attempts": attempts, "initial_backoff": "10ms"});
    let config: NotificationsConfig = serde_json::from_value(config).expect("notifications");
    let notifier = Notifier::new(&config, dir);
    assert_eq!(notifier.problems(), Vec::<String>::new());
    notifier
}

/// A port nothing listens on: bound, then released.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn webhook_sends_an_alertmanager_v4_payload_with_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hook-token"), "s3cret-token\n").unwrap();
    let recorder = HttpRecorder::start();
    let notifier = notifier(
        dir.path(),
        3,
        json!({"webhook": {
            "url": format!("{}/alerts/hook", recorder.url()),
            "bearer_token": "file:hook-token",
        }}),
    );
    assert!(notifier.is_configured("webhook"));

    let outcome = notifier
        .deliver("webhook", &notification(NotificationStatus::Firing))
        .await;
    assert!(outcome.delivered, "{outcome:?}");
    assert_eq!(outcome.attempts, 1);
    assert_eq!(outcome.channel, "webhook");
    assert_eq!(outcome.error, None);

    let requests = recorder.wait_for(1);
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/alerts/hook");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Bearer s3cret-token"));

    let body = &request.body;
    let top: Vec<&str> = body
        .as_object()
        .expect("a JSON object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        top,
        [
            "receiver",
            "status",
            "alerts",
            "groupLabels",
            "commonLabels",
            "commonAnnotations",
            "externalURL",
            "version",
            "groupKey",
            "truncatedAlerts"
        ]
    );
    assert_eq!(body["version"], "4");
    assert_eq!(body["groupKey"], r#"{}:{alertname="High CPU Usage"}"#);
    assert_eq!(body["truncatedAlerts"], 0);
    assert_eq!(body["status"], "firing");
    assert_eq!(body["receiver"], "webhook");
    assert_eq!(body["groupLabels"], json!({"alertname": "High CPU Usage"}));
    assert_eq!(
        body["commonLabels"],
        json!({"alertname": "High CPU Usage", "severity": "critical", "team": "infra"})
    );
    assert_eq!(
        body["commonAnnotations"],
        json!({"description": "CPU above 80% for 5 minutes", "summary": "CPU usage is 93.2%"})
    );
    // Without an explicit external URL, the dashboard's origin stands in.
    assert_eq!(body["externalURL"], "http://127.0.0.1:8080");
    let alerts = body["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1);
    let alert = &alerts[0];
    let fields: Vec<&str> = alert
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint"
        ]
    );
    assert_eq!(alert["status"], "firing");
    assert_eq!(alert["labels"], body["commonLabels"]);
    assert_eq!(alert["annotations"]["summary"], "CPU usage is 93.2%");
    assert_eq!(alert["startsAt"], "2024-05-01T10:00:00Z");
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert_eq!(
        alert["generatorURL"],
        "http://127.0.0.1:8080/alerts/alert_high-cpu-usage"
    );
    assert_eq!(alert["fingerprint"], "5d1e0c3f9a2b7e41");
}

#[tokio::test]
async fn webhook_of_a_resolved_alert_names_a_custom_receiver_and_the_external_url() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = HttpRecorder::start();
    let notifier = notifier(
        dir.path(),
        1,
        json!({"ops-hook": {"type": "webhook", "url": recorder.url()}}),
    )
    .with_external_url("https://orchestrator.example.com");
    let outcome = notifier
        .deliver("ops-hook", &notification(NotificationStatus::Resolved))
        .await;
    assert!(outcome.delivered, "{outcome:?}");
    let body = &recorder.wait_for(1)[0].body;
    assert_eq!(body["receiver"], "ops-hook");
    assert_eq!(body["status"], "resolved");
    assert_eq!(body["externalURL"], "https://orchestrator.example.com");
    assert_eq!(body["alerts"][0]["status"], "resolved");
    assert_eq!(body["alerts"][0]["endsAt"], "2024-05-01T10:30:00Z");
    assert_eq!(recorder.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn webhook_is_retried_after_server_errors_until_it_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = HttpRecorder::with_statuses(&[500, 500, 200]);
    let notifier = notifier(dir.path(), 5, json!({"webhook": {"url": recorder.url()}}));
    let outcome = notifier
        .deliver("webhook", &notification(NotificationStatus::Firing))
        .await;
    assert!(outcome.delivered, "{outcome:?}");
    assert_eq!(outcome.attempts, 3);
    assert_eq!(outcome.error, None);
    let answered: Vec<u16> = recorder.requests().iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 500, 200]);
    // Each retry sends the same payload.
    let requests = recorder.requests();
    assert_eq!(requests[0].body, requests[2].body);
}

#[tokio::test]
async fn webhook_retries_too_many_requests_but_not_a_bad_request() {
    let dir = tempfile::tempdir().unwrap();
    let throttled = HttpRecorder::with_statuses(&[429, 408, 204]);
    let rejecting = HttpRecorder::with_statuses(&[400]);
    let notifier = notifier(
        dir.path(),
        5,
        json!({
            "throttled": {"type": "webhook", "url": throttled.url()},
            "rejecting": {"type": "webhook", "url": rejecting.url()},
        }),
    );
    let firing = notification(NotificationStatus::Firing);

    let outcome = notifier.deliver("throttled", &firing).await;
    assert!(outcome.delivered, "{outcome:?}");
    assert_eq!(outcome.attempts, 3);

    let outcome = notifier.deliver("rejecting", &firing).await;
    assert!(!outcome.delivered);
    assert_eq!(outcome.attempts, 1, "a 400 is not retried: {outcome:?}");
    let error = outcome.error.expect("an error");
    assert!(error.contains("HTTP 400"), "{error}");
    assert!(error.contains("scripted status 400"), "{error}");
    assert!(error.contains("not retried"), "{error}");
    // deliver has returned: no retry can still be on its way.
    assert_eq!(rejecting.requests().len(), 1);
}

#[tokio::test]
async fn webhook_to_a_dead_port_fails_after_every_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{}/hook", dead_port());
    let notifier = notifier(dir.path(), 3, json!({"webhook": {"url": url}}));
    let started = Instant::now();
    let outcome = notifier
        .deliver("webhook", &notification(NotificationStatus::Firing))
        .await;
    assert!(!outcome.delivered);
    assert_eq!(outcome.attempts, 3);
    let error = outcome.error.expect("an error");
    assert!(error.contains("the request failed"), "{error}");
    // Backoff 10 ms then 20 ms: at least 30 ms went by between the attempts.
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[tokio::test]
async fn webhook_attempts_are_bounded_by_the_channel_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = HttpRecorder::slow(Duration::from_secs(5));
    let notifier = notifier(
        dir.path(),
        2,
        json!({"webhook": {"url": recorder.url(), "timeout": "200ms"}}),
    );
    let started = Instant::now();
    let outcome = notifier
        .deliver("webhook", &notification(NotificationStatus::Firing))
        .await;
    let elapsed = started.elapsed();
    assert!(!outcome.delivered);
    assert_eq!(outcome.attempts, 2);
    assert!(
        elapsed < Duration::from_secs(3),
        "two 200 ms attempts took {elapsed:?}"
    );
    let error = outcome.error.expect("an error");
    assert!(
        error.contains("200ms") || error.to_lowercase().contains("timeout"),
        "{error}"
    );
    assert_eq!(recorder.wait_for(2).len(), 2);
}

#[tokio::test]
async fn slack_posts_an_incoming_webhook_payload() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = HttpRecorder::start();
    std::fs::write(
        dir.path().join("slack-url"),
        format!("{}/services/T000/B000/XXXX\n", recorder.url()),
    )
    .unwrap();
    let notifier = notifier(
        dir.path(),
        2,
        json!({"slack": {"webhook_url": "file:slack-url", "channel": "#ops-alerts"}}),
    );
    let outcome = notifier
        .deliver("slack", &notification(NotificationStatus::Firing))
        .await;
    assert!(outcome.delivered, "{outcome:?}");
    let request = &recorder.wait_for(1)[0];
    assert_eq!(request.path, "/services/T000/B000/XXXX");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body = &request.body;
    assert_eq!(
        body["text"],
        "[FIRING] High CPU Usage (critical): CPU usage is 93.2%"
    );
    assert_eq!(body["channel"], "#ops-alerts");
    let attachment = &body["attachments"][0];
    assert_eq!(attachment["color"], "#d00000");
    let blocks = attachment["blocks"].to_string();
    for expected in [
        "High CPU Usage",
        "*Severity*\\ncritical",
        "*Status*\\nfiring",
        "*Value*\\n93.2",
        "CPU usage is 93.2%",
        "http://127.0.0.1:8080/alerts/alert_high-cpu-usage",
    ] {
        assert!(blocks.contains(expected), "{expected} in {blocks}");
    }
}

#[tokio::test]
async fn email_arrives_with_subject_recipients_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::start();
    let notifier = notifier(
        dir.path(),
        2,
        json!({"email": {
            "host": "127.0.0.1",
            "port": sink.port(),
            "security": "none",
            "from": "Orchestrator <alerts@example.com>",
            "to": ["ops@example.com", "oncall@example.com"],
        }}),
    );
    let outcome = notifier
        .deliver("email", &notification(NotificationStatus::Firing))
        .await;
    assert!(outcome.delivered, "{outcome:?}");
    assert_eq!(outcome.attempts, 1);

    let messages = sink.wait_for(1);
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.from, "alerts@example.com");
    assert_eq!(
        message.recipients,
        ["ops@example.com", "oncall@example.com"]
    );
    assert_eq!(message.auth, None);
    assert_eq!(
        message.header("Subject").as_deref(),
        Some("[FIRING] High CPU Usage (critical)")
    );
    assert_eq!(
        message.header("To").as_deref(),
        Some("ops@example.com, oncall@example.com")
    );
    let body = message.body();
    for expected in [
        "Summary: CPU usage is 93.2%",
        "Description: CPU above 80% for 5 minutes",
        "Condition: system.cpu_percent > 80",
        "Value: 93.2",
        "Labels: alertname=High CPU Usage, severity=critical, team=infra",
        "Started: 2024-05-01T10:00:00Z",
        "Link: http://127.0.0.1:8080/alerts/alert_high-cpu-usage",
    ] {
        assert!(body.contains(expected), "{expected} in\n{body}");
    }

    let outcome = notifier
        .deliver("email", &notification(NotificationStatus::Resolved))
        .await;
    assert!(outcome.delivered, "{outcome:?}");
    let resolved = &sink.wait_for(2)[1];
    assert_eq!(
        resolved.header("Subject").as_deref(),
        Some("[RESOLVED] High CPU Usage (critical)")
    );
    assert!(resolved.body().contains("Ended: 2024-05-01T10:30:00Z"));
}

#[tokio::test]
async fn email_authenticates_with_referenced_credentials() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("smtp-user"), "mailer\n").unwrap();
    std::fs::write(dir.path().join("smtp-password"), "hunter2\n").unwrap();
    std::fs::write(dir.path().join("wrong-password"), "guess\n").unwrap();
    let sink = SmtpSink::requiring("mailer", "hunter2");
    let channel = |password: &str| {
        json!({
            "type": "email",
            "host": "127.0.0.1",
            "port": sink.port(),
            "security": "none",
            "username": "file:smtp-user",
            "password": password,
            "from": "alerts@example.com",
            "to": ["ops@example.com"],
        })
    };
    let notifier = notifier(
        dir.path(),
        3,
        json!({"mail": channel("file:smtp-password"), "badmail": channel("file:wrong-password")}),
    );
    let firing = notification(NotificationStatus::Firing);

    let outcome = notifier.deliver("mail", &firing).await;
    assert!(outcome.delivered, "{outcome:?}");
    let message = &sink.wait_for(1)[0];
    assert_eq!(
        message.auth,
        Some(("mailer".to_owned(), "hunter2".to_owned()))
    );

    // Wrong credentials are a permanent answer (535): one attempt, not three.
    let outcome = notifier.deliver("badmail", &firing).await;
    assert!(!outcome.delivered);
    assert_eq!(outcome.attempts, 1, "{outcome:?}");
    let error = outcome.error.expect("an error");
    assert!(error.contains("535"), "{error}");
    assert!(
        error.contains(&format!("127.0.0.1:{}", sink.port())),
        "{error}"
    );
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(
        sink.auth_attempts().last().cloned(),
        Some(("mailer".to_owned(), "guess".to_owned(), false))
    );
}

#[tokio::test]
async fn email_is_retried_after_a_transient_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let sink = SmtpSink::failing_first(1);
    let notifier = notifier(
        dir.path(),
        3,
        json!({"email": {
            "host": "127.0.0.1",
            "port": sink.port(),
            "security": "none",
            "from": "alerts@example.com",
            "to": ["ops@example.com"],
        }}),
    );
    let outcome = notifier
        .deliver("email", &notification(NotificationStatus::Firing))
        .await;
    assert!(outcome.delivered, "{outcome:?}");
    assert_eq!(outcome.attempts, 2);
    assert_eq!(sink.wait_for(1).len(), 1);
}

#[tokio::test]
async fn an_unconfigured_channel_fails_at_once_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = HttpRecorder::start();
    let notifier = notifier(dir.path(), 5, json!({"webhook": {"url": recorder.url()}}));
    assert!(!notifier.is_configured("slack"));
    let started = Instant::now();
    let outcome = notifier
        .deliver("slack", &notification(NotificationStatus::Firing))
        .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!outcome.delivered);
    assert_eq!(outcome.attempts, 0);
    assert_eq!(outcome.channel, "slack");
    let error = outcome.error.expect("an error");
    assert!(
        error.contains("`slack` is not configured in notifications:"),
        "{error}"
    );
    assert!(error.contains("configured: webhook"), "{error}");
    assert!(recorder.requests().is_empty());
}

#[tokio::test]
async fn a_channel_with_problems_reports_them_and_does_not_deliver() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = HttpRecorder::start();
    let config: NotificationsConfig = serde_json::from_value(json!({
        "webhook": {"url": recorder.url(), "bearer_token": "file:no-such-token"},
        "email": {"host": "127.0.0.1", "from": "alerts@example.com", "to": ["nobody"]},
    }))
    .unwrap();
    let notifier = Notifier::new(&config, dir.path());
    let problems = notifier.problems();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0]
            .starts_with("notifications channel `email`: to `nobody` is not an email address"),
        "{problems:#?}"
    );
    assert!(
        problems[1].starts_with(
            "notifications channel `webhook`: the bearer_token reference `file:no-such-token`"
        ),
        "{problems:#?}"
    );
    assert!(notifier.is_configured("webhook"));
    let outcome = notifier
        .deliver("webhook", &notification(NotificationStatus::Firing))
        .await;
    assert!(!outcome.delivered);
    assert_eq!(outcome.attempts, 0);
    let error = outcome.error.expect("an error");
    assert!(error.contains("no-such-token"), "{error}");
    assert!(recorder.requests().is_empty());
}
