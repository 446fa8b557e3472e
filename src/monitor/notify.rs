//! Notification channels: delivering an [`AlertNotification`] by webhook (an Alertmanager
//! version 4 payload), Slack incoming webhook, email (SMTP) or a log file (one JSON line per
//! notification appended, [`log_line`]), with retries.
//!
//! A [`Notifier`] is built once from the environment's `notifications:` configuration. It
//! resolves secret references and checks addresses up front, so configuration problems show in
//! [`Notifier::problems`] before any alert fires, and a delivery on a broken channel fails at
//! once with the same explanation. [`Notifier::deliver`] makes `retry.attempts` attempts in
//! all, each bounded by the channel's timeout, waiting `retry.initial_backoff` before the
//! second and doubling up to five minutes. Answers that will not get better on a retry (an
//! HTTP 4xx other than 408 and 429, a permanent SMTP 5xx) end the delivery early.
//!
//! The payload builders ([`alertmanager_payload`], [`slack_payload`], [`email_message`]) are
//! plain functions of their inputs. HTTP goes through ureq on the blocking pool; SMTP through
//! lettre's tokio transport.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{json, Map, Value};

use super::{AlertNotification, DeliveryOutcome, NotificationStatus};
use crate::config::{ChannelConfig, NotificationsConfig};
use crate::util::{clip, http_failure};

/// How long one delivery attempt may take when the channel does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The `endsAt` Alertmanager sends for an alert that still fires (Go's zero time).
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Delivers alert notifications on the configured channels. Cheap to share in an `Arc`.
pub struct Notifier {
    channels: BTreeMap<String, Channel>,
    problems: Vec<String>,
    attempts: u32,
    initial_backoff: Duration,
    external_url: Option<String>,
    /// Appends to `log` channels' files and their rotation, one at a time.
    appending: Arc<std::sync::Mutex<()>>,
}

impl Notifier {
    /// Builds the channels of `config`, resolving `env:`/`file:` references relative to
    /// `project_dir`. Problems do not fail the build: they are listed by [`Notifier::problems`]
    /// and make deliveries on the channel concerned fail.
    pub fn new(config: &NotificationsConfig, project_dir: &Path) -> Notifier {
        let mut channels = BTreeMap::new();
        let mut problems = Vec::new();
        for name in config.channels.keys() {
            let Some(mut channel_config) = config.channel(name) else {
                continue;
            };
            // `channel` fills in the name as the type; only the three kinds' names may do that.
            if !matches!(name.as_str(), "email" | "webhook" | "slack" | "log")
                && config.channels[name].kind.is_none()
            {
                channel_config.kind = None;
            }
            let (channel, channel_problems) = Channel::build(name, &channel_config, project_dir);
            problems.extend(channel_problems);
            channels.insert(name.clone(), channel);
        }
        let initial_backoff = match config.retry.initial_backoff.duration() {
            Ok(duration) => duration,
            Err(err) => {
                problems.push(format!(
                    "notifications.retry.initial_backoff is not a duration ({err}); using 1s"
                ));
                Duration::from_secs(1)
            }
        };
        Notifier {
            channels,
            problems,
            attempts: config.retry.attempts.max(1),
            initial_backoff,
            external_url: None,
            appending: Arc::default(),
        }
    }

    /// Sets the `externalURL` of webhook payloads (the server's own address). Without it, the
    /// origin of the notification's `generator_url` is used.
    pub fn with_external_url(mut self, url: impl Into<String>) -> Notifier {
        self.external_url = Some(url.into());
        self
    }

    /// Configuration problems found when the notifier was built, each naming its channel.
    pub fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }

    /// Whether `channel` is configured under `notifications:` (even if it has problems).
    pub fn is_configured(&self, channel: &str) -> bool {
        self.channels.contains_key(channel)
    }

    /// Delivers `notification` on `channel`, retrying failed attempts. Never fails: what
    /// became of the delivery is in the outcome, and each failed attempt is logged.
    pub async fn deliver(
        &self,
        channel: &str,
        notification: &AlertNotification,
    ) -> DeliveryOutcome {
        let outcome = |delivered: bool, attempts: u32, error: Option<String>| DeliveryOutcome {
            channel: channel.to_owned(),
            delivered,
            attempts,
            error,
            at: Utc::now(),
        };
        let Some(entry) = self.channels.get(channel) else {
            let error = format!(
                "the channel `{channel}` is not configured in notifications: of the \
                 environment's configuration (configured: {})",
                self.configured_names()
            );
            tracing::warn!(channel, error = %error, "notification not delivered");
            return outcome(false, 0, Some(error));
        };
        if let Kind::Unusable(problem) = &entry.kind {
            let error = format!("the channel `{channel}` cannot deliver: {problem}");
            tracing::warn!(channel, error = %error, "notification not delivered");
            return outcome(false, 0, Some(error));
        }
        let mut backoff = self.initial_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match tokio::time::timeout(
                entry.timeout,
                self.attempt(channel, entry, notification),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(Failure::retry(format!(
                    "no answer within {}",
                    describe(entry.timeout)
                ))),
            };
            match result {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(channel, attempt, "notification delivered after retries");
                    }
                    return outcome(true, attempt, None);
                }
                Err(failure) => {
                    tracing::warn!(
                        channel,
                        attempt,
                        attempts = self.attempts,
                        error = %failure.message,
                        "notification delivery failed"
                    );
                    if !failure.retry || attempt >= self.attempts {
                        let error = if failure.retry {
                            failure.message
                        } else {
                            format!("{} (not retried)", failure.message)
                        };
                        return outcome(false, attempt, Some(error));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn attempt(
        &self,
        channel: &str,
        entry: &Channel,
        notification: &AlertNotification,
    ) -> Result<(), Failure> {
        match &entry.kind {
            Kind::Webhook { url, bearer_token } => {
                let external_url = self
                    .external_url
                    .clone()
                    .unwrap_or_else(|| origin(&notification.generator_url).to_owned());
                let payload = alertmanager_payload(
                    channel,
                    &external_url,
                    std::slice::from_ref(notification),
                );
                post_json(url.clone(), bearer_token.clone(), payload, entry.timeout).await
            }
            Kind::Slack {
                url,
                channel: override_channel,
            } => {
                let payload = slack_payload(override_channel.as_deref(), notification);
                post_json(url.clone(), None, payload, entry.timeout).await
            }
            Kind::Email {
                transport,
                server,
                from,
                to,
            } => {
                let message = email_message(from, to, notification).map_err(|err| {
                    Failure::permanent(format!("the message cannot be built: {err}"))
                })?;
                match transport.send(message).await {
                    Ok(_) => Ok(()),
                    Err(err) => Err(Failure {
                        retry: !err.is_permanent(),
                        message: format!("the SMTP server {server}: {err}"),
                    }),
                }
            }
            Kind::Log { path } => {
                append_log_line(path, channel, notification, Arc::clone(&self.appending)).await
            }
            Kind::Unusable(problem) => Err(Failure::permanent(problem.clone())),
        }
    }

    fn configured_names(&self) -> String {
        if self.channels.is_empty() {
            "none".to_owned()
        } else {
            self.channels
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        }
    }
}

impl fmt::Debug for Notifier {
    // Secrets (bearer tokens, Slack URLs, SMTP credentials) stay out of debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let channels: BTreeMap<&str, &str> = self
            .channels
            .iter()
            .map(|(name, channel)| (name.as_str(), channel.kind.label()))
            .collect();
        f.debug_struct("Notifier")
            .field("channels", &channels)
            .field("problems", &self.problems)
            .field("attempts", &self.attempts)
            .field("initial_backoff", &self.initial_backoff)
            .finish()
    }
}

/// The Alertmanager webhook payload (version 4) for `notifications` sent to `receiver`: the
/// group is keyed by `alertname`; `status` is firing while any alert fires.
pub fn alertmanager_payload(
    receiver: &str,
    external_url: &str,
    notifications: &[AlertNotification],
) -> Value {
    let labels: Vec<BTreeMap<String, String>> = notifications.iter().map(alert_labels).collect();
    let annotations: Vec<&BTreeMap<String, String>> =
        notifications.iter().map(|n| &n.annotations).collect();
    let common_labels = common(labels.iter());
    let common_annotations = common(annotations.iter().copied());
    let mut group_labels = Map::new();
    if let Some(alertname) = common_labels.get("alertname") {
        group_labels.insert("alertname".into(), alertname.clone());
    }
    let group_key = format!(
        "{{}}:{{{}}}",
        group_labels
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let firing = notifications
        .iter()
        .any(|n| n.status == NotificationStatus::Firing);
    let alerts: Vec<Value> = notifications
        .iter()
        .zip(&labels)
        .map(|(notification, labels)| {
            json!({
                "status": status_text(notification.status),
                "labels": labels,
                "annotations": notification.annotations,
                "startsAt": timestamp(&notification.starts_at),
                "endsAt": notification.ends_at.as_ref().map_or_else(|| ZERO_TIME.to_owned(), timestamp),
                "generatorURL": notification.generator_url,
                "fingerprint": notification.fingerprint,
            })
        })
        .collect();
    json!({
        "receiver": receiver,
        "status": if firing { "firing" } else { "resolved" },
        "alerts": alerts,
        "groupLabels": group_labels,
        "commonLabels": common_labels,
        "commonAnnotations": common_annotations,
        "externalURL": external_url,
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
    })
}

/// The Slack incoming-webhook payload for `notification`: a `text` fallback and a coloured
/// attachment whose blocks give the name, status, severity, summary, value, condition and a
/// link to the dashboard; `channel` overrides the webhook's channel when set.
pub fn slack_payload(channel: Option<&str>, notification: &AlertNotification) -> Value {
    let title = email_subject(notification);
    let summary = notification.annotations.get("summary");
    let text = match summary {
        Some(summary) => format!("{title}: {summary}"),
        None => title.clone(),
    };
    let heading = if notification.generator_url.is_empty() {
        format!("*{}*", slack_escape(&title))
    } else {
        format!(
            "*<{}|{}>*",
            notification.generator_url,
            slack_escape(&title).replace('|', "¦")
        )
    };
    let mut headline = heading;
    if let Some(summary) = summary {
        headline.push('\n');
        headline.push_str(&slack_escape(&clip(summary, 1500)));
    }
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": headline},
    })];
    let value = notification
        .value
        .map_or_else(|| "none".to_owned(), format_value);
    blocks.push(json!({
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": format!("*Status*\n{}", status_text(notification.status))},
            {"type": "mrkdwn", "text": format!("*Severity*\n{}", slack_escape(&notification.severity))},
            {"type": "mrkdwn", "text": format!("*Value*\n{value}")},
            {"type": "mrkdwn", "text": format!("*Condition*\n`{}`", slack_escape(&clip(&notification.condition, 500)))},
        ],
    }));
    if let Some(description) = notification.annotations.get("description") {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": slack_escape(&clip(description, 2500))},
        }));
    }
    let mut context = format!("Started {}", timestamp(&notification.starts_at));
    if let Some(ends_at) = &notification.ends_at {
        context.push_str(&format!(" · resolved {}", timestamp(ends_at)));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{"type": "mrkdwn", "text": context}],
    }));
    if notification.generator_url.starts_with("http://")
        || notification.generator_url.starts_with("https://")
    {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": {"type": "plain_text", "text": "Open in dashboard"},
                "url": notification.generator_url,
            }],
        }));
    }
    let mut payload = json!({
        "text": text,
        "attachments": [{
            "color": slack_color(notification),
            "fallback": text,
            "blocks": blocks,
        }],
    });
    if let Some(channel) = channel {
        payload["channel"] = Value::from(channel);
    }
    payload
}

/// The email for `notification` from `from` to every address in `to`: subject from
/// [`email_subject`], plain-text body from [`email_body`].
///
/// # Errors
///
/// Fails when `to` is empty.
pub fn email_message(
    from: &Mailbox,
    to: &[Mailbox],
    notification: &AlertNotification,
) -> Result<Message, lettre::error::Error> {
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(email_subject(notification))
        .header(ContentType::TEXT_PLAIN);
    for recipient in to {
        builder = builder.to(recipient.clone());
    }
    builder.body(email_body(notification))
}

/// `[FIRING] High CPU Usage (critical)` or `[RESOLVED] High CPU Usage (critical)`.
pub fn email_subject(notification: &AlertNotification) -> String {
    let status = match notification.status {
        NotificationStatus::Firing => "FIRING",
        NotificationStatus::Resolved => "RESOLVED",
    };
    format!(
        "[{status}] {} ({})",
        notification.name, notification.severity
    )
}

/// The plain-text body of the email: summary, description, condition, value, other
/// annotations, labels, start and end, and the dashboard link.
pub fn email_body(notification: &AlertNotification) -> String {
    let mut body = String::new();
    let mut line = |name: &str, value: &str| {
        body.push_str(name);
        body.push_str(": ");
        body.push_str(value);
        body.push('\n');
    };
    line("Alert", &notification.name);
    line("Status", status_text(notification.status));
    line("Severity", &notification.severity);
    if let Some(summary) = notification.annotations.get("summary") {
        line("Summary", summary);
    }
    if let Some(description) = notification.annotations.get("description") {
        line("Description", description);
    }
    line("Condition", &notification.condition);
    line(
        "Value",
        &notification
            .value
            .map_or_else(|| "none".to_owned(), format_value),
    );
    for (name, value) in &notification.annotations {
        if name != "summary" && name != "description" {
            line(name, value);
        }
    }
    let labels = notification
        .labels
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join(", ");
    line("Labels", &labels);
    line("Started", &timestamp(&notification.starts_at));
    if let Some(ends_at) = &notification.ends_at {
        line("Ended", &timestamp(ends_at));
    }
    if !notification.generator_url.is_empty() {
        line("Link", &notification.generator_url);
    }
    line("Fingerprint", &notification.fingerprint);
    body
}

/// One configured channel, ready to deliver (or why it cannot).
struct Channel {
    timeout: Duration,
    kind: Kind,
}

enum Kind {
    Webhook {
        url: String,
        bearer_token: Option<String>,
    },
    Slack {
        url: String,
        channel: Option<String>,
    },
    Email {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        /// `host:port`, for error messages.
        server: String,
        from: Mailbox,
        to: Vec<Mailbox>,
    },
    /// One JSON line per notification appended to a file.
    Log { path: std::path::PathBuf },
    /// Configured with problems; they are the reason.
    Unusable(String),
}

impl Kind {
    fn label(&self) -> &'static str {
        match self {
            Kind::Webhook { .. } => "webhook",
            Kind::Slack { .. } => "slack",
            Kind::Email { .. } => "email",
            Kind::Log { .. } => "log",
            Kind::Unusable(_) => "unusable",
        }
    }
}

impl Channel {
    /// The channel `name` and its problems, each prefixed with the channel's name.
    fn build(name: &str, config: &ChannelConfig, project_dir: &Path) -> (Channel, Vec<String>) {
        let mut problems = Vec::new();
        let timeout = match &config.timeout {
            None => DEFAULT_TIMEOUT,
            Some(setting) => match setting.duration() {
                Ok(duration) if !duration.is_zero() => duration,
                Ok(_) => {
                    problems.push("timeout must be more than zero; using 10s".to_owned());
                    DEFAULT_TIMEOUT
                }
                Err(err) => {
                    problems.push(format!("timeout is not a duration ({err}); using 10s"));
                    DEFAULT_TIMEOUT
                }
            },
        };
        let kind = match config.kind.as_deref() {
            Some("webhook") => webhook(config, project_dir, &mut problems),
            Some("slack") => slack(config, project_dir, &mut problems),
            Some("email") => email(config, project_dir, timeout, &mut problems),
            Some("log") => Some(log_file(config, project_dir)),
            Some(other) => {
                problems.push(format!(
                    "type `{other}` is not a channel type: expected email, webhook, slack or log"
                ));
                None
            }
            None => {
                problems.push(
                    "has no type: expected email, webhook, slack or log (only channels named \
                     email, webhook, slack or log may leave it out)"
                        .to_owned(),
                );
                None
            }
        };
        let kind = match kind {
            Some(kind) if problems.is_empty() => kind,
            _ => Kind::Unusable(problems.join("; ")),
        };
        let problems = problems
            .into_iter()
            .map(|problem| format!("notifications channel `{name}`: {problem}"))
            .collect();
        (Channel { timeout, kind }, problems)
    }
}

/// The file of a `log` channel: its `path` relative to the project, or `logs/alerts.log`.
fn log_file(config: &ChannelConfig, project_dir: &Path) -> Kind {
    let path = config
        .path
        .clone()
        .unwrap_or_else(|| Path::new("logs").join("alerts.log"));
    Kind::Log {
        path: project_dir.join(path),
    }
}

/// The line a `log` channel appends for `notification`: the time it was written, the
/// channel, then the notification's own fields.
pub fn log_line(channel: &str, notification: &AlertNotification, at: DateTime<Utc>) -> String {
    let mut line = Map::new();
    line.insert("time".into(), Value::from(timestamp(&at)));
    line.insert("channel".into(), Value::from(channel));
    if let Ok(Value::Object(fields)) = serde_json::to_value(notification) {
        line.extend(fields);
    }
    let mut text = Value::Object(line).to_string();
    text.push('\n');
    text
}

/// Appends one line to a `log` channel's file (created with its directory if missing), in
/// one write to a file opened for appending, so lines of concurrent notifications do not
/// interleave. The file rotates by size like the other logs (10 MiB, five files kept).
async fn append_log_line(
    path: &Path,
    channel: &str,
    notification: &AlertNotification,
    appending: Arc<std::sync::Mutex<()>>,
) -> Result<(), Failure> {
    let line = log_line(channel, notification, Utc::now());
    let target = path.to_path_buf();
    let written = tokio::task::spawn_blocking(move || {
        let _held = appending.lock().unwrap_or_else(|e| e.into_inner());
        append_rotating(&target, &line)
    })
    .await
    .map_err(|err| Failure::retry(format!("{}: {err}", path.display())))?;
    written.map_err(|err| Failure::retry(format!("{}: {err}", path.display())))
}

fn append_rotating(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    // The caller holds the notifier's lock: rotation and appends are serialized.
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::logging::rotate_if_over(path, crate::logging::Rotation::default())?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?
        .write_all(line.as_bytes())
}

fn webhook(config: &ChannelConfig, project_dir: &Path, problems: &mut Vec<String>) -> Option<Kind> {
    let url = match &config.url {
        Some(url) => check_url("url", url, problems),
        None => {
            problems.push("url is missing (the receiver's http:// or https:// URL)".to_owned());
            None
        }
    };
    let bearer_token = config
        .bearer_token
        .as_deref()
        .map(|reference| resolve("bearer_token", reference, project_dir, problems));
    Some(Kind::Webhook {
        url: url?,
        bearer_token: match bearer_token {
            Some(token) => Some(token?),
            None => None,
        },
    })
}

fn slack(config: &ChannelConfig, project_dir: &Path, problems: &mut Vec<String>) -> Option<Kind> {
    let Some(setting) = &config.webhook_url else {
        problems.push(
            "webhook_url is missing (the incoming-webhook URL, or env:NAME or file:PATH)"
                .to_owned(),
        );
        return None;
    };
    let url = if setting.starts_with("env:") || setting.starts_with("file:") {
        resolve("webhook_url", setting, project_dir, problems)?
    } else {
        setting.clone()
    };
    // The URL carries Slack's secret: problems name where it came from, never the URL.
    if !(url.starts_with("https://") || url.starts_with("http://"))
        || url.parse::<ureq::http::Uri>().is_err()
    {
        problems.push(format!(
            "webhook_url{} is not an http:// or https:// URL",
            if url == *setting {
                String::new()
            } else {
                format!(" (from `{setting}`)")
            }
        ));
        return None;
    }
    Some(Kind::Slack {
        url,
        channel: config.channel.clone().filter(|c| !c.is_empty()),
    })
}

fn email(
    config: &ChannelConfig,
    project_dir: &Path,
    timeout: Duration,
    problems: &mut Vec<String>,
) -> Option<Kind> {
    let before = problems.len();
    let host = config
        .host
        .as_deref()
        .filter(|host| !host.trim().is_empty());
    if host.is_none() {
        problems.push("host is missing (the SMTP server)".to_owned());
    }
    let security = config.security.as_deref().unwrap_or("starttls");
    let default_port = match security {
        "none" => 25,
        "starttls" => 587,
        "tls" => 465,
        other => {
            problems.push(format!(
                "security `{other}` is not one of none, starttls or tls"
            ));
            587
        }
    };
    let port = config.port.unwrap_or(default_port);
    let credentials = match (&config.username, &config.password) {
        (Some(username), Some(password)) => {
            let username = resolve("username", username, project_dir, problems);
            let password = resolve("password", password, project_dir, problems);
            match (username, password) {
                (Some(username), Some(password)) => Some(Credentials::new(username, password)),
                _ => None,
            }
        }
        (Some(_), None) => {
            problems.push("username is set but password is not: give both or neither".to_owned());
            None
        }
        (None, Some(_)) => {
            problems.push("password is set but username is not: give both or neither".to_owned());
            None
        }
        (None, None) => None,
    };
    let from = match &config.from {
        Some(from) => match from.parse::<Mailbox>() {
            Ok(mailbox) => Some(mailbox),
            Err(err) => {
                problems.push(format!("from `{from}` is not an email address ({err})"));
                None
            }
        },
        None => {
            problems.push("from is missing (the sender address)".to_owned());
            None
        }
    };
    if config.to.is_empty() {
        problems.push("to is missing or empty (the recipient addresses)".to_owned());
    }
    let mut to = Vec::new();
    for address in &config.to {
        match address.parse::<Mailbox>() {
            Ok(mailbox) => to.push(mailbox),
            Err(err) => problems.push(format!("to `{address}` is not an email address ({err})")),
        }
    }
    let host = host?;
    if problems.len() > before {
        return None;
    }
    let builder = match security {
        "none" => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
            host,
        )),
        "tls" => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
        _ => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
    };
    let mut builder = match builder {
        Ok(builder) => builder.port(port).timeout(Some(timeout)),
        Err(err) => {
            problems.push(format!("TLS to {host} cannot be set up ({err})"));
            return None;
        }
    };
    if let Some(credentials) = credentials {
        builder = builder.credentials(credentials);
    }
    Some(Kind::Email {
        transport: Box::new(builder.build()),
        server: format!("{host}:{port}"),
        from: from?,
        to,
    })
}

fn check_url(field: &str, url: &str, problems: &mut Vec<String>) -> Option<String> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .parse::<ureq::http::Uri>()
            .is_ok_and(|uri| uri.host().is_some_and(|host| !host.is_empty()));
    if ok {
        Some(url.to_owned())
    } else {
        problems.push(format!("{field} `{url}` is not an http:// or https:// URL"));
        None
    }
}

fn resolve(
    field: &str,
    reference: &str,
    project_dir: &Path,
    problems: &mut Vec<String>,
) -> Option<String> {
    match crate::config::secrets::resolve_named(field, reference, project_dir) {
        Ok(value) if value.is_empty() => {
            problems.push(format!("the {field} reference `{reference}` is empty"));
            None
        }
        Ok(value) => Some(value),
        Err(err) => {
            problems.push(format!("{err:#}"));
            None
        }
    }
}

/// Why one attempt failed, and whether another could do better.
#[derive(Debug)]
struct Failure {
    message: String,
    retry: bool,
}

impl Failure {
    fn retry(message: String) -> Failure {
        Failure {
            message,
            retry: true,
        }
    }

    fn permanent(message: String) -> Failure {
        Failure {
            message,
            retry: false,
        }
    }
}

/// POSTs `payload` as JSON on the blocking pool. Any 2xx is success; 408, 429 and 5xx are
/// worth retrying, other answers are not. Errors never name the URL: Slack's is a secret.
async fn post_json(
    url: String,
    bearer_token: Option<String>,
    payload: Value,
    timeout: Duration,
) -> Result<(), Failure> {
    let task = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let mut request = agent.post(&url).header("content-type", "application/json");
        if let Some(token) = &bearer_token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut response = request
            .send(payload.to_string())
            .map_err(|err| Failure::retry(format!("the request failed: {err}")))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let (message, retry) = http_failure(&mut response, "the receiver");
        Err(Failure { message, retry })
    });
    match task.await {
        Ok(result) => result,
        Err(err) => Err(Failure::retry(format!("the delivery task failed: {err}"))),
    }
}

fn alert_labels(notification: &AlertNotification) -> BTreeMap<String, String> {
    let mut labels = notification.labels.clone();
    labels
        .entry("alertname".to_owned())
        .or_insert_with(|| notification.name.clone());
    labels
}

/// The pairs every map holds with the same value.
fn common<'a>(mut maps: impl Iterator<Item = &'a BTreeMap<String, String>>) -> Map<String, Value> {
    let Some(first) = maps.next() else {
        return Map::new();
    };
    let mut shared = first.clone();
    for map in maps {
        shared.retain(|name, value| map.get(name) == Some(value));
    }
    shared
        .into_iter()
        .map(|(name, value)| (name, Value::String(value)))
        .collect()
}

fn status_text(status: NotificationStatus) -> &'static str {
    match status {
        NotificationStatus::Firing => "firing",
        NotificationStatus::Resolved => "resolved",
    }
}

fn timestamp(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `scheme://authority` of `url`, or the empty string when it has none.
fn origin(url: &str) -> &str {
    let Some(scheme_end) = url.find("://") else {
        return "";
    };
    let rest = &url[scheme_end + 3..];
    match rest.find('/') {
        Some(slash) => &url[..scheme_end + 3 + slash],
        None => url,
    }
}

/// A metric value for people, as alert statuses show it: integers as such, others to at
/// most four decimals.
fn format_value(value: f64) -> String {
    super::alerts::format_value(Some(value))
}

fn describe(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn slack_color(notification: &AlertNotification) -> &'static str {
    match (notification.status, notification.severity.as_str()) {
        (NotificationStatus::Resolved, _) => "#2eb886",
        (_, "critical") => "#d00000",
        (_, "warning") => "#f2a900",
        _ => "#439fe0",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn notification(status: NotificationStatus) -> AlertNotification {
        let labels = BTreeMap::from([
            ("alertname".to_owned(), "High CPU Usage".to_owned()),
            ("severity".to_owned(), "critical".to_owned()),
            ("team".to_owned(), "infra".to_owned()),
        ]);
        let annotations = BTreeMap::from([
            ("summary".to_owned(), "CPU at 91.5%".to_owned()),
            (
                "description".to_owned(),
                "CPU above 80% for 5m <host & co>".to_owned(),
            ),
        ]);
        AlertNotification {
            alert_id: "alert_high-cpu-usage".into(),
            name: "High CPU Usage".into(),
            status,
            severity: "critical".into(),
            labels,
            annotations,
            condition: "system.cpu_percent > 80".into(),
            value: Some(91.5),
            starts_at: Utc.with_ymd_and_hms(2024, 5, 1, 10, 0, 0).unwrap(),
            ends_at: (status == NotificationStatus::Resolved)
                .then(|| Utc.with_ymd_and_hms(2024, 5, 1, 10, 30, 0).unwrap()),
            generator_url: "http://localhost:8080/alerts/alert_high-cpu-usage".into(),
            fingerprint: "3f1c2a9b7d004e11".into(),
        }
    }

    #[test]
    fn a_log_line_is_one_json_object_with_the_time_and_channel_first() {
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 10, 5, 0).unwrap();
        let line = log_line("log", &notification(NotificationStatus::Firing), at);
        assert!(line.ends_with('\n'));
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let value: Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(&keys[..4], ["time", "channel", "alert_id", "name"]);
        assert_eq!(value["time"], "2024-05-01T10:05:00Z");
        assert_eq!(value["status"], "firing");
        assert_eq!(value["labels"]["team"], "infra");
    }

    #[tokio::test]
    async fn a_log_channel_appends_a_line_per_notification() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NotificationsConfig::default();
        config.add_log_channel(Path::new("logs"));
        let notifier = Notifier::new(&config, dir.path());
        assert!(notifier.problems().is_empty(), "{:?}", notifier.problems());
        for status in [NotificationStatus::Firing, NotificationStatus::Resolved] {
            let outcome = notifier.deliver("log", &notification(status)).await;
            assert!(outcome.delivered, "{outcome:?}");
        }
        let text = std::fs::read_to_string(dir.path().join("logs/alerts.log")).unwrap();
        let statuses: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["status"].to_string())
            .collect();
        assert_eq!(statuses, ["\"firing\"", "\"resolved\""]);
    }

    #[test]
    fn alertmanager_payload_has_the_version_4_shape() {
        let payload = alertmanager_payload(
            "webhook",
            "http://localhost:8080",
            &[notification(NotificationStatus::Firing)],
        );
        let keys: Vec<&str> = payload
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
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
        assert_eq!(payload["version"], "4");
        assert_eq!(payload["status"], "firing");
        assert_eq!(payload["receiver"], "webhook");
        assert_eq!(payload["truncatedAlerts"], 0);
        assert_eq!(payload["groupKey"], r#"{}:{alertname="High CPU Usage"}"#);
        assert_eq!(
            payload["groupLabels"],
            json!({"alertname": "High CPU Usage"})
        );
        assert_eq!(payload["commonLabels"]["team"], "infra");
        assert_eq!(payload["commonAnnotations"]["summary"], "CPU at 91.5%");
        assert_eq!(payload["externalURL"], "http://localhost:8080");
        let alert = &payload["alerts"][0];
        let keys: Vec<&str> = alert
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
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
        assert_eq!(alert["startsAt"], "2024-05-01T10:00:00Z");
        assert_eq!(alert["endsAt"], ZERO_TIME);
        assert_eq!(alert["labels"]["severity"], "critical");
        assert_eq!(alert["fingerprint"], "3f1c2a9b7d004e11");
        assert_eq!(
            alert["generatorURL"],
            "http://localhost:8080/alerts/alert_high-cpu-usage"
        );
    }

    #[test]
    fn alertmanager_payload_of_a_resolved_alert_has_its_end() {
        let payload =
            alertmanager_payload("ops", "", &[notification(NotificationStatus::Resolved)]);
        assert_eq!(payload["status"], "resolved");
        assert_eq!(payload["alerts"][0]["status"], "resolved");
        assert_eq!(payload["alerts"][0]["endsAt"], "2024-05-01T10:30:00Z");
    }

    #[test]
    fn alertmanager_payload_keeps_only_common_labels_and_fires_while_any_fires() {
        let first = notification(NotificationStatus::Resolved);
        let mut second = notification(NotificationStatus::Firing);
        second.labels.insert("team".into(), "web".into());
        second
            .annotations
            .insert("summary".into(), "CPU at 99%".into());
        let payload = alertmanager_payload("webhook", "", &[first, second]);
        assert_eq!(payload["status"], "firing");
        assert_eq!(
            payload["commonLabels"],
            json!({"alertname": "High CPU Usage", "severity": "critical"})
        );
        assert!(payload["commonAnnotations"].get("summary").is_none());
        assert_eq!(payload["alerts"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn alert_labels_always_name_the_alert() {
        let mut unnamed = notification(NotificationStatus::Firing);
        unnamed.labels.clear();
        let payload = alertmanager_payload("webhook", "", &[unnamed]);
        assert_eq!(
            payload["alerts"][0]["labels"]["alertname"],
            "High CPU Usage"
        );
        assert_eq!(payload["groupLabels"]["alertname"], "High CPU Usage");
    }

    #[test]
    fn slack_payload_carries_text_fields_link_and_channel() {
        let payload = slack_payload(Some("#ops"), &notification(NotificationStatus::Firing));
        assert_eq!(payload["channel"], "#ops");
        assert_eq!(
            payload["text"],
            "[FIRING] High CPU Usage (critical): CPU at 91.5%"
        );
        let attachment = &payload["attachments"][0];
        assert_eq!(attachment["color"], "#d00000");
        let blocks = attachment["blocks"].as_array().unwrap();
        let all = serde_json::to_string(blocks).unwrap();
        assert!(all.contains("<http://localhost:8080/alerts/alert_high-cpu-usage|[FIRING] High CPU Usage (critical)>"), "{all}");
        assert!(all.contains("*Severity*\\ncritical"), "{all}");
        assert!(all.contains("*Value*\\n91.5"), "{all}");
        assert!(all.contains("system.cpu_percent &gt; 80"), "{all}");
        assert!(all.contains("&lt;host &amp; co&gt;"), "{all}");
        let button = blocks.last().unwrap();
        assert_eq!(button["type"], "actions");
        assert_eq!(
            button["elements"][0]["url"],
            "http://localhost:8080/alerts/alert_high-cpu-usage"
        );
    }

    #[test]
    fn slack_payload_without_override_has_no_channel_and_resolved_is_green() {
        let payload = slack_payload(None, &notification(NotificationStatus::Resolved));
        assert!(payload.get("channel").is_none());
        assert_eq!(payload["attachments"][0]["color"], "#2eb886");
        assert!(payload["text"]
            .as_str()
            .unwrap()
            .starts_with("[RESOLVED] High CPU Usage"));
    }

    #[test]
    fn email_has_subject_recipients_and_body() {
        let from: Mailbox = "Orchestrator <alerts@example.com>".parse().unwrap();
        let to: Vec<Mailbox> = vec![
            "ops@example.com".parse().unwrap(),
            "oncall@example.com".parse().unwrap(),
        ];
        let firing = notification(NotificationStatus::Firing);
        assert_eq!(email_subject(&firing), "[FIRING] High CPU Usage (critical)");
        let message = email_message(&from, &to, &firing).unwrap();
        let envelope = message.envelope();
        assert_eq!(envelope.to().len(), 2);
        assert_eq!(envelope.from().unwrap().to_string(), "alerts@example.com");
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert!(
            raw.contains("Subject: [FIRING] High CPU Usage (critical)"),
            "{raw}"
        );
        assert!(raw.contains("Summary: CPU at 91.5%"), "{raw}");
        assert!(raw.contains("Condition: system.cpu_percent > 80"), "{raw}");
        assert!(raw.contains("Value: 91.5"), "{raw}");
        assert!(raw.contains("Started: 2024-05-01T10:00:00Z"), "{raw}");
        assert!(!raw.contains("Ended:"), "{raw}");
        assert!(raw.contains("Link: http://localhost:8080/alerts/alert_high-cpu-usage"));

        let resolved = notification(NotificationStatus::Resolved);
        assert_eq!(
            email_subject(&resolved),
            "[RESOLVED] High CPU Usage (critical)"
        );
        assert!(email_body(&resolved).contains("Ended: 2024-05-01T10:30:00Z"));
        assert!(email_message(&from, &[], &resolved).is_err());
    }

    #[test]
    fn values_read_well() {
        assert_eq!(format_value(80.0), "80");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(2.0 / 3.0), "0.6667");
        assert_eq!(format_value(-1.5), "-1.5");
    }

    #[test]
    fn origin_is_scheme_and_authority() {
        assert_eq!(origin("http://h:8080/alerts/x"), "http://h:8080");
        assert_eq!(origin("https://h"), "https://h");
        assert_eq!(origin("/alerts/x"), "");
    }

    fn config(yaml: &str) -> NotificationsConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn problems_name_the_channel_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let notifier = Notifier::new(
            &config(
                "webhook:\n  url: http://127.0.0.1:1/hook\n  bearer_token: env:ORCHESTRATOR_TEST_UNSET_TOKEN\n\
                 email:\n  host: smtp.example.com\n  from: not an address\n  to: [ops@example.com]\n\
                 slack:\n  webhook_url: file:missing-slack-url\n\
                 pager:\n  url: http://x\n",
            ),
            dir.path(),
        );
        let problems = notifier.problems();
        let joined = problems.join("\n");
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("notifications channel `webhook`")
                    && p.contains("ORCHESTRATOR_TEST_UNSET_TOKEN")),
            "{joined}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("notifications channel `email`")
                    && p.contains("from `not an address` is not an email address")),
            "{joined}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("notifications channel `slack`")
                    && p.contains("missing-slack-url")),
            "{joined}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("notifications channel `pager`") && p.contains("no type")),
            "{joined}"
        );
        assert!(notifier.is_configured("pager"));
        assert!(!notifier.is_configured("sms"));
    }

    #[test]
    fn a_sound_configuration_has_no_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("slack-url"),
            "https://hooks.slack.com/services/T/B/X\n",
        )
        .unwrap();
        let notifier = Notifier::new(
            &config(
                "retry:\n  attempts: 3\n  initial_backoff: 50ms\n\
                 webhook:\n  url: https://alerts.example.com/hook\n\
                 slack:\n  webhook_url: file:slack-url\n  channel: '#ops'\n\
                 email:\n  host: smtp.example.com\n  security: tls\n  from: alerts@example.com\n  to: [ops@example.com]\n",
            ),
            dir.path(),
        );
        assert_eq!(notifier.problems(), Vec::<String>::new());
        let debug = format!("{notifier:?}");
        assert!(!debug.contains("hooks.slack.com"), "{debug}");
    }

    #[test]
    fn notifier_is_send_and_sync() {
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<Notifier>();
    }
}
