//! Alert rules: each live Alert object is evaluated against the metrics every
//! `monitoring.evaluation_interval`, and notifies its channels when it fires, repeats and
//! resolves.
//!
//! - **Prometheus semantics.** A rule whose condition is true is `pending` until the
//!   condition has held for its `duration` (Prometheus' `for`), then `firing`; a false
//!   evaluation takes a pending alert back to `inactive` without a word, and a firing one to
//!   `resolved` (notified when `send_resolved`), which reads as `inactive` again after
//!   [`RESOLVED_RETENTION`]. A metric without a value makes its comparison false; the status
//!   says "no data". A firing alert notifies again every `repeat_interval`.
//! - **Durable.** The state of every rule lives in the `alert_states` tree, its transitions in
//!   `alert_history` (the newest [`HISTORY_LIMIT`]), and silences in `silences`; all are
//!   written before an event reports them or a notification leaves, so a restart neither
//!   notifies twice nor forgets a firing alert. Rules removed from the manifests lose their
//!   state.
//! - **Silences** mute notifications of the alerts they match (by id, name or labels) until
//!   they end; the alerts still change state. As with Alertmanager, what a silence muted is
//!   owed when it ends: an alert still firing then notifies at the next evaluation unless a
//!   notification went out within its `repeat_interval` (muted repeats are recorded every
//!   `repeat_interval` meanwhile, so the status shows them).
//! - **After a start**, rules wait for the first system sample (at most [`STARTUP_GRACE`]),
//!   so that a firing alert on a system metric is not resolved for want of data.
//!
//! [`evaluate`] is the pure core — rules, states, metric values, silences and the current
//! instant in; new states, transitions and the notifications due out — tested with an
//! injected clock; [`run`] drives it on the server and hands notifications to the
//! [`Notifier`](super::notify::Notifier).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{AlertNotification, DeliveryOutcome, MetricSource, NotificationStatus};
use crate::events::{Event, EventKind};
use crate::lang::condition::MetricRef;
use crate::lang::template::{self, Mode};
use crate::store::{Store, StoreError};

/// The state tree of the rules' states, by alert id.
pub const STATE_TREE: &str = "alert_states";
/// The state tree of the rules' transition histories, by alert id.
pub const HISTORY_TREE: &str = "alert_history";
/// The state tree of silences, by silence id.
pub const SILENCE_TREE: &str = "silences";
/// Transitions kept per alert.
pub const HISTORY_LIMIT: usize = 100;
/// How long a resolved alert shows as `resolved` before it reads as `inactive` (as
/// Prometheus keeps resolved alerts for 15 minutes).
pub const RESOLVED_RETENTION: TimeDelta = TimeDelta::minutes(15);
/// How long an expired silence is kept, shown as expired, before it is removed (as
/// Alertmanager's default retention of 120 hours).
pub const SILENCE_RETENTION: TimeDelta = TimeDelta::hours(120);
/// How long the server waits for its first system sample before it evaluates rules anyway.
pub const STARTUP_GRACE: Duration = Duration::from_secs(10);
pub use crate::spec::alert::{AlertRule, DEFAULT_REPEAT_INTERVAL, DEFAULT_SUMMARY};

impl AlertRule {
    /// The labels notifications carry: the rule's own, `alertname` and `severity`.
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert("alertname".to_owned(), self.name.clone());
        labels.insert("severity".to_owned(), self.severity.clone());
        labels
    }

    /// Alertmanager's fingerprint of the labels notifications carry ([`Self::all_labels`]):
    /// see [`fingerprint`].
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.all_labels())
    }

    /// The annotations with their templates rendered for `value`.
    pub fn render_annotations(&self, value: Option<f64>) -> BTreeMap<String, String> {
        self.annotations
            .iter()
            .map(|(key, template)| (key.clone(), self.render(template, value)))
            .collect()
    }

    /// Renders `{{ name }}`, `{{ id }}`, `{{ value }}`, `{{ condition }}`, `{{ severity }}`
    /// and `{{ labels.KEY }}` (the template language, [`crate::lang::template`], keeping
    /// what it cannot fill as written): any other reference is left as written.
    pub fn render(&self, template: &str, value: Option<f64>) -> String {
        let resolve = |reference: &str| {
            let text = match reference {
                "name" => Some(self.name.clone()),
                "id" => Some(self.id.clone()),
                "value" => Some(format_value(value)),
                "condition" => Some(self.condition_text.clone()),
                "severity" => Some(self.severity.clone()),
                other => other
                    .strip_prefix("labels.")
                    .map(|key| self.labels.get(key).cloned().unwrap_or_default()),
            };
            Ok(text.map(Value::String))
        };
        // Verbatim rendering fails only where the context does, and this one never does.
        template::render_text(template, &resolve, Mode::Verbatim)
            .unwrap_or_else(|_| template.to_owned())
    }
}

/// A metric value as texts show it: up to four decimals, `no data` when there is none.
pub fn format_value(value: Option<f64>) -> String {
    match value {
        None => "no data".to_owned(),
        Some(v) if v.is_finite() => {
            let text = format!("{v:.4}");
            let text = text.trim_end_matches('0').trim_end_matches('.');
            if text == "-0" {
                "0".to_owned()
            } else {
                text.to_owned()
            }
        }
        Some(v) => v.to_string(),
    }
}

pub use crate::reconcile::view::alert_rules as rules;

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    /// The condition is false (or the rule is disabled).
    #[default]
    Inactive,
    /// The condition is true, for less than the rule's duration so far.
    Pending,
    /// The condition has held for the rule's duration.
    Firing,
    /// It fired and the condition is false again (for [`RESOLVED_RETENTION`]).
    Resolved,
}

impl AlertState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
            AlertState::Resolved => "resolved",
        }
    }
}

/// The last notification of one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelDelivery {
    /// Firing or resolved.
    pub status: NotificationStatus,
    /// When it was handed to the channel.
    pub queued_at: DateTime<Utc>,
    /// What became of it after all attempts; `None` while it is being delivered.
    pub outcome: Option<DeliveryOutcome>,
}

/// The last notification an alert was due, sent or muted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastNotification {
    /// Firing or resolved.
    pub status: NotificationStatus,
    /// When it was due.
    pub at: DateTime<Utc>,
    /// Whether it repeated a firing notification.
    pub repeat: bool,
    /// The channels it went to (none when muted).
    pub channels: Vec<String>,
    /// The silences that muted it (empty when it was sent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub muted_by: Vec<String>,
}

/// What the store keeps about one rule between evaluations and across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertStatus {
    /// Inactive, pending, firing or resolved.
    pub state: AlertState,
    /// When the current state began.
    pub since: Option<DateTime<Utc>>,
    /// When the condition became true (Prometheus' activeAt), while pending or firing.
    pub active_at: Option<DateTime<Utc>>,
    /// When it last started firing.
    pub fired_at: Option<DateTime<Utc>>,
    /// When it last resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// The value of the condition's first metric at the last evaluation.
    pub value: Option<f64>,
    /// Every metric of the condition and its value at the last evaluation.
    #[serde(default)]
    pub values: BTreeMap<String, Option<f64>>,
    /// The condition could not be decided at the last evaluation: a metric had no value.
    #[serde(default)]
    pub no_data: bool,
    /// When it was last evaluated.
    pub last_evaluation: Option<DateTime<Utc>>,
    /// When the last firing notification of this episode was due (sent or muted): muted
    /// repeats count from it.
    pub notified_at: Option<DateTime<Utc>>,
    /// When the last firing notification of this episode was sent (not muted): repeats
    /// count from it, so that one a silence muted is sent once the silence ends.
    #[serde(default)]
    pub sent_at: Option<DateTime<Utc>>,
    /// Whether a firing notification of this episode went out (a resolved one follows only
    /// then).
    #[serde(default)]
    pub notified_firing: bool,
    /// The last notification due.
    pub last_notification: Option<LastNotification>,
    /// The last notification of each channel and its outcome.
    #[serde(default)]
    pub notifications: BTreeMap<String, ChannelDelivery>,
    /// The silences that matched at the last evaluation.
    #[serde(default)]
    pub silenced_by: Vec<String>,
}

/// One change of state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// The alert.
    pub alert_id: String,
    /// The state before.
    pub from: AlertState,
    /// The state after.
    pub to: AlertState,
    /// When.
    pub at: DateTime<Utc>,
    /// The value then.
    pub value: Option<f64>,
    /// Why, when it is not the condition (`rule disabled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A notification to deliver on some channels.
#[derive(Debug, Clone, PartialEq)]
pub struct DueNotification {
    /// The notification.
    pub notification: AlertNotification,
    /// The channels.
    pub channels: Vec<String>,
    /// When it was due (the `queued_at` of its channel records).
    pub at: DateTime<Utc>,
}

/// What one evaluation decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evaluation {
    /// The state of every rule after it.
    pub states: BTreeMap<String, AlertStatus>,
    /// The changes of state, in rule order.
    pub transitions: Vec<Transition>,
    /// The notifications to send now.
    pub notifications_due: Vec<DueNotification>,
    /// States of rules that no longer exist, to remove.
    pub removed: Vec<String>,
}

/// Evaluates every rule at `now` against the metric values of `source`. Pure.
pub fn evaluate(
    rules: &[AlertRule],
    states: &BTreeMap<String, AlertStatus>,
    source: &dyn MetricSource,
    silences: &[Silence],
    now: DateTime<Utc>,
) -> Evaluation {
    let mut evaluation = Evaluation {
        removed: states
            .keys()
            .filter(|id| !rules.iter().any(|r| &r.id == *id))
            .cloned()
            .collect(),
        ..Evaluation::default()
    };
    for rule in rules {
        let before = states.get(&rule.id).cloned().unwrap_or_default();
        let (status, transitions, due) = step(rule, before, source, silences, now);
        evaluation.transitions.extend(transitions);
        evaluation.notifications_due.extend(due);
        evaluation.states.insert(rule.id.clone(), status);
    }
    evaluation
}

/// One rule's evaluation.
fn step(
    rule: &AlertRule,
    mut status: AlertStatus,
    source: &dyn MetricSource,
    silences: &[Silence],
    now: DateTime<Utc>,
) -> (AlertStatus, Vec<Transition>, Option<DueNotification>) {
    let mut values = BTreeMap::new();
    let lookup = |metric: &MetricRef| source.value(metric);
    for metric in rule.condition.metrics() {
        values
            .entry(metric.to_string())
            .or_insert_with(|| lookup(metric));
    }
    let result = if rule.enabled {
        rule.condition.evaluate(&lookup)
    } else {
        Some(false)
    };
    status.value = rule
        .condition
        .metrics()
        .first()
        .and_then(|m| values.get(&m.to_string()).copied().flatten());
    status.values = values;
    status.no_data = result.is_none();
    status.last_evaluation = Some(now);
    status.silenced_by = silences
        .iter()
        .filter(|s| s.is_active(now) && s.matches(rule))
        .map(|s| s.id.clone())
        .collect();
    let active = result == Some(true);
    let from = status.state;
    let mut transitions = Vec::new();
    let mut move_to = |status: &mut AlertStatus, to: AlertState, note: Option<&str>| {
        transitions.push(Transition {
            alert_id: rule.id.clone(),
            from: status.state,
            to,
            at: now,
            value: status.value,
            note: note.map(str::to_owned),
        });
        status.state = to;
        status.since = Some(now);
    };
    let mut resolved = false;
    match (from, active) {
        (AlertState::Inactive | AlertState::Resolved, true) => {
            status.active_at = Some(now);
            if rule.duration.is_zero() {
                fire(&mut status, now);
                move_to(&mut status, AlertState::Firing, None);
            } else {
                move_to(&mut status, AlertState::Pending, None);
            }
        }
        (AlertState::Pending, true) => {
            let since = status.active_at.unwrap_or(now);
            if now.signed_duration_since(since) >= delta(rule.duration) {
                fire(&mut status, now);
                move_to(&mut status, AlertState::Firing, None);
            }
        }
        (AlertState::Pending, false) => {
            status.active_at = None;
            let note = (!rule.enabled).then_some("rule disabled");
            move_to(&mut status, AlertState::Inactive, note);
        }
        (AlertState::Firing, false) if !rule.enabled => {
            // Disabling a rule silences it for good: no resolved notification.
            status.active_at = None;
            status.resolved_at = Some(now);
            move_to(&mut status, AlertState::Inactive, Some("rule disabled"));
        }
        (AlertState::Firing, false) => {
            status.active_at = None;
            status.resolved_at = Some(now);
            move_to(&mut status, AlertState::Resolved, None);
            resolved = true;
        }
        (AlertState::Resolved, false) => {
            let since = status.resolved_at.unwrap_or(now);
            if !rule.enabled || now.signed_duration_since(since) >= RESOLVED_RETENTION {
                // Quietly: the alert resolved already.
                status.state = AlertState::Inactive;
                status.since = Some(now);
            }
        }
        (AlertState::Firing, true) | (AlertState::Inactive, false) => {}
    }
    let due = if status.state == AlertState::Firing {
        let elapsed = |at: Option<DateTime<Utc>>| {
            at.is_none_or(|at| now.signed_duration_since(at) >= delta(rule.repeat_interval))
        };
        // Sent notifications set the pace; under a silence, the muted ones do, so that the
        // status records a muted repeat per interval rather than one per evaluation.
        let (owed, repeat) = if status.silenced_by.is_empty() {
            (elapsed(status.sent_at), status.sent_at.is_some())
        } else {
            (elapsed(status.notified_at), status.notified_at.is_some())
        };
        owed.then(|| notify(rule, &mut status, NotificationStatus::Firing, repeat, now))
            .flatten()
    } else if resolved && rule.send_resolved && status.notified_firing {
        notify(rule, &mut status, NotificationStatus::Resolved, false, now)
    } else {
        None
    };
    if resolved {
        status.notified_at = None;
        status.sent_at = None;
        status.notified_firing = false;
    }
    (status, transitions, due)
}

/// Enters the firing state: a new episode, not notified yet.
fn fire(status: &mut AlertStatus, now: DateTime<Utc>) {
    status.fired_at = Some(now);
    status.resolved_at = None;
    status.notified_at = None;
    status.sent_at = None;
    status.notified_firing = false;
}

/// Records a notification due now and returns it, unless a silence mutes it.
fn notify(
    rule: &AlertRule,
    status: &mut AlertStatus,
    kind: NotificationStatus,
    repeat: bool,
    now: DateTime<Utc>,
) -> Option<DueNotification> {
    if kind == NotificationStatus::Firing {
        status.notified_at = Some(now);
    }
    let muted = !status.silenced_by.is_empty();
    let channels = if muted {
        Vec::new()
    } else {
        rule.actions.clone()
    };
    status.last_notification = Some(LastNotification {
        status: kind,
        at: now,
        repeat,
        channels: channels.clone(),
        muted_by: status.silenced_by.clone(),
    });
    if muted || channels.is_empty() {
        return None;
    }
    if kind == NotificationStatus::Firing {
        status.notified_firing = true;
        status.sent_at = Some(now);
    }
    for channel in &channels {
        status.notifications.insert(
            channel.clone(),
            ChannelDelivery {
                status: kind,
                queued_at: now,
                outcome: None,
            },
        );
    }
    Some(DueNotification {
        notification: notification(rule, status, kind),
        channels,
        at: now,
    })
}

/// The notification of an alert in its current status.
pub fn notification(
    rule: &AlertRule,
    status: &AlertStatus,
    kind: NotificationStatus,
) -> AlertNotification {
    AlertNotification {
        alert_id: rule.id.clone(),
        name: rule.name.clone(),
        status: kind,
        severity: rule.severity.clone(),
        labels: rule.all_labels(),
        annotations: rule.render_annotations(status.value),
        condition: rule.condition_text.clone(),
        value: status.value,
        starts_at: status
            .fired_at
            .or(status.active_at)
            .or(status.last_evaluation)
            .unwrap_or_else(Utc::now),
        ends_at: match kind {
            NotificationStatus::Resolved => status.resolved_at,
            NotificationStatus::Firing => None,
        },
        generator_url: format!("/api/alerts/{}", rule.id),
        fingerprint: rule.fingerprint(),
    }
}

/// Alertmanager's fingerprint of a label set (`model.LabelSet.Fingerprint` in
/// prometheus/common): 64-bit FNV-1a over the pairs in name order, each name and each value
/// followed by a 0xFF byte, as 16 lowercase hex digits. Receivers deduplicate and group by
/// it, so it must be the same number Alertmanager would send for the same labels.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    use std::hash::Hasher;
    const SEPARATOR: [u8; 1] = [0xff];
    let mut hasher = fnv::FnvHasher::default();
    for (name, value) in labels {
        hasher.write(name.as_bytes());
        hasher.write(&SEPARATOR);
        hasher.write(value.as_bytes());
        hasher.write(&SEPARATOR);
    }
    format!("{:016x}", hasher.finish())
}

fn delta(duration: Duration) -> TimeDelta {
    TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX)
}

/// Records the outcome of a delivery on the channel it was for, unless a newer
/// notification has been queued on that channel since.
pub fn record_outcome(
    status: &mut AlertStatus,
    queued_at: DateTime<Utc>,
    outcome: DeliveryOutcome,
) -> bool {
    match status.notifications.get_mut(&outcome.channel) {
        Some(delivery) if delivery.queued_at == queued_at => {
            delivery.outcome = Some(outcome);
            true
        }
        _ => false,
    }
}

/// One label matcher of a silence: the label `name` equals `value`. `alertname` is the
/// alert's name, `alert_id` its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Matcher {
    /// The label (`alertname`, `alert_id`, `severity` or one of the alert's labels).
    pub name: String,
    /// The value it must equal.
    pub value: String,
}

/// A silence: mutes the notifications of the alerts it matches from `starts_at` until
/// `ends_at`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Silence {
    /// Its id (`sil_` and a ULID).
    pub id: String,
    /// Every matcher must match.
    pub matchers: Vec<Matcher>,
    /// When it starts muting.
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: DateTime<Utc>,
    /// When it ends (set to the moment it was expired, when expired early).
    #[schema(value_type = String, format = DateTime)]
    pub ends_at: DateTime<Utc>,
    /// Why.
    pub comment: String,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    /// When it was last changed (expired early).
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
}

impl Silence {
    /// Whether it mutes at `now`.
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.starts_at <= now && now < self.ends_at
    }

    /// `pending`, `active` or `expired` at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }

    /// Whether every matcher matches the rule.
    pub fn matches(&self, rule: &AlertRule) -> bool {
        let labels = rule.all_labels();
        !self.matchers.is_empty()
            && self.matchers.iter().all(|m| match m.name.as_str() {
                "alert_id" => m.value == rule.id,
                name => labels.get(name) == Some(&m.value),
            })
    }

    /// The silence as lists show it: its fields, `state` and the alerts it matches now.
    pub fn to_json(&self, rules: &[AlertRule], now: DateTime<Utc>) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["state"] = json!(self.state(now));
        value["alerts"] = json!(rules
            .iter()
            .filter(|r| self.matches(r))
            .map(|r| r.id.clone())
            .collect::<Vec<_>>());
        value
    }
}

/// A silence as asked for (API body, CLI flags).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceRequest {
    /// An alert to silence, by id or name (becomes an `alert_id` matcher).
    #[schema(value_type = String, required = false, min_length = 1)]
    #[serde(default)]
    pub alert: Option<String>,
    /// Label equalities to match (`{"severity": "critical"}`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Matchers, as stored (at least one when given; a silence needs `alert`, `labels` or
    /// `matchers`).
    #[schema(min_items = 1)]
    #[serde(default)]
    pub matchers: Vec<Matcher>,
    /// When it starts (default now).
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default)]
    pub starts_at: Option<DateTime<Utc>>,
    /// When it ends (RFC 3339); or give `duration`.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default)]
    pub ends_at: Option<DateTime<Utc>>,
    /// How long from its start (`2h`, `30m`), instead of `ends_at`.
    #[serde(default)]
    pub duration: Option<String>,
    /// Why (required).
    #[schema(required = true, min_length = 1, pattern = r"\S")]
    pub comment: String,
    /// Who asks (default `api`).
    #[serde(default)]
    pub created_by: Option<String>,
}

/// Why a silence was refused: the field and what was expected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct SilenceError {
    /// The field at fault.
    pub field: &'static str,
    /// What is wrong and what was expected.
    pub message: String,
}

impl SilenceRequest {
    /// The silence it asks for, checked against the rules in force at `now`.
    pub fn into_silence(
        self,
        rules: &[AlertRule],
        now: DateTime<Utc>,
    ) -> Result<Silence, SilenceError> {
        let error = |field, message: String| SilenceError { field, message };
        let mut matchers = self.matchers;
        if let Some(alert) = self.alert.as_deref().map(str::trim) {
            let Some(rule) = rules
                .iter()
                .find(|r| r.id == alert)
                .or_else(|| rules.iter().find(|r| r.name == alert))
            else {
                let hint = crate::util::did_you_mean(alert, rules.iter().map(|r| r.id.as_str()))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                return Err(error(
                    "alert",
                    format!("no alert `{alert}` in force{hint}: expected an alert id or name (`alert list` shows them)"),
                ));
            };
            matchers.push(Matcher {
                name: "alert_id".into(),
                value: rule.id.clone(),
            });
        }
        for (name, value) in self.labels {
            matchers.push(Matcher { name, value });
        }
        if matchers.is_empty() {
            return Err(error(
                "matchers",
                "a silence needs at least one matcher: an alert (id or name) or a label such as severity=critical".into(),
            ));
        }
        if let Some(m) = matchers.iter().find(|m| m.name.trim().is_empty()) {
            return Err(error(
                "matchers",
                format!("a matcher has an empty label name (value `{}`)", m.value),
            ));
        }
        if self.comment.trim().is_empty() {
            return Err(error(
                "comment",
                "a silence needs a comment saying why".into(),
            ));
        }
        let starts_at = self.starts_at.unwrap_or(now).max(now);
        let ends_at = match (self.ends_at, self.duration.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(error(
                    "ends_at",
                    "give either ends_at or duration, not both".into(),
                ))
            }
            (Some(at), None) => at,
            (None, Some(text)) => {
                let length = crate::duration::parse_duration(text)
                    .map_err(|e| error("duration", format!("duration `{text}`: {e}")))?;
                starts_at + delta(length)
            }
            (None, None) => {
                return Err(error(
                    "ends_at",
                    "a silence needs an end: ends_at (RFC 3339) or duration (such as 2h)".into(),
                ))
            }
        };
        if ends_at <= now {
            return Err(error(
                "ends_at",
                format!(
                    "the silence would end at {}, which is not after now ({}): expected an end in the future",
                    ends_at.to_rfc3339(),
                    now.to_rfc3339()
                ),
            ));
        }
        if ends_at <= starts_at {
            return Err(error(
                "ends_at",
                "the silence would end before it starts".into(),
            ));
        }
        Ok(Silence {
            id: format!("sil_{}", ulid::Ulid::new().to_string().to_lowercase()),
            matchers,
            starts_at,
            ends_at,
            comment: self.comment.trim().to_owned(),
            created_by: self
                .created_by
                .filter(|c| !c.trim().is_empty())
                .unwrap_or_else(|| "api".to_owned()),
            created_at: now,
            updated_at: now,
        })
    }
}

/// One line of an alert's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// The state before.
    pub from: AlertState,
    /// The state after.
    pub to: AlertState,
    /// The value then.
    pub value: Option<f64>,
    /// Why, when it is not the condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The stored states, by alert id.
pub fn load_states(store: &Store) -> Result<BTreeMap<String, AlertStatus>, StoreError> {
    Ok(store.states(STATE_TREE, "")?.into_iter().collect())
}

/// An alert's transitions, oldest first.
pub fn history(store: &Store, alert_id: &str) -> Result<Vec<HistoryEntry>, StoreError> {
    Ok(store.state(HISTORY_TREE, alert_id)?.unwrap_or_default())
}

/// Every silence kept, oldest first.
pub fn silences(store: &Store) -> Result<Vec<Silence>, StoreError> {
    let mut all: Vec<Silence> = store
        .states(SILENCE_TREE, "")?
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    all.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(all)
}

/// Stores a silence, durably.
pub fn put_silence(store: &Store, silence: &Silence) -> Result<(), StoreError> {
    store.put_state(SILENCE_TREE, &silence.id, silence, true)
}

/// Ends a silence now (durably); `None` when there is no such silence. A silence already
/// expired is left as it is.
pub fn expire_silence(
    store: &Store,
    id: &str,
    now: DateTime<Utc>,
) -> Result<Option<Silence>, StoreError> {
    let Some(mut silence) = store.state::<Silence>(SILENCE_TREE, id)? else {
        return Ok(None);
    };
    if silence.ends_at > now {
        silence.ends_at = now;
        if silence.starts_at > now {
            silence.starts_at = now;
        }
        silence.updated_at = now;
        put_silence(store, &silence)?;
    }
    Ok(Some(silence))
}

/// Removes silences expired for longer than [`SILENCE_RETENTION`].
pub fn prune_silences(store: &Store, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut all = silences(store)?;
    let before = all.len();
    drop_expired_silences(store, &mut all, now)?;
    Ok(before - all.len())
}

/// Removes from the store and from `silences` those expired for longer than
/// [`SILENCE_RETENTION`].
fn drop_expired_silences(
    store: &Store,
    silences: &mut Vec<Silence>,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let old: Vec<String> = silences
        .iter()
        .filter(|s| now.signed_duration_since(s.ends_at) > SILENCE_RETENTION)
        .map(|s| s.id.clone())
        .collect();
    if !old.is_empty() {
        store.remove_states(SILENCE_TREE, &old)?;
        silences.retain(|s| !old.contains(&s.id));
    }
    Ok(())
}

/// Whether two states differ in more than what every evaluation refreshes (the values and
/// the time of the evaluation).
fn significant(a: &AlertStatus, b: &AlertStatus) -> bool {
    let strip = |s: &AlertStatus| AlertStatus {
        value: None,
        values: BTreeMap::new(),
        no_data: false,
        last_evaluation: None,
        ..s.clone()
    };
    strip(a) != strip(b)
}

/// Writes what an evaluation changed: states (durably when more than values changed),
/// history, and the removal of states of rules that are gone. When this returns, whatever
/// the evaluation's transitions and notifications report is on disk.
pub fn persist(
    store: &Store,
    before: &BTreeMap<String, AlertStatus>,
    evaluation: &Evaluation,
) -> Result<(), StoreError> {
    let mut durable = !evaluation.transitions.is_empty();
    let mut changed = Vec::new();
    for (id, status) in &evaluation.states {
        match before.get(id) {
            Some(old) if old == status => {}
            Some(old) => {
                durable |= significant(old, status);
                changed.push((id.clone(), status.clone()));
            }
            None => {
                durable = true;
                changed.push((id.clone(), status.clone()));
            }
        }
    }
    let mut histories: BTreeMap<&str, Vec<HistoryEntry>> = BTreeMap::new();
    for transition in &evaluation.transitions {
        let entries = match histories.entry(&transition.alert_id) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(history(store, &transition.alert_id)?)
            }
        };
        entries.push(HistoryEntry {
            at: transition.at,
            from: transition.from,
            to: transition.to,
            value: transition.value,
            note: transition.note.clone(),
        });
        if entries.len() > HISTORY_LIMIT {
            let excess = entries.len() - HISTORY_LIMIT;
            entries.drain(..excess);
        }
    }
    if !histories.is_empty() {
        let records: Vec<(String, Vec<HistoryEntry>)> = histories
            .into_iter()
            .map(|(id, entries)| (id.to_owned(), entries))
            .collect();
        store.put_states(HISTORY_TREE, &records, false)?;
    }
    if !changed.is_empty() || durable {
        store.put_states(STATE_TREE, &changed, durable)?;
    }
    if !evaluation.removed.is_empty() {
        store.remove_states(STATE_TREE, &evaluation.removed)?;
        store.remove_states(HISTORY_TREE, &evaluation.removed)?;
    }
    Ok(())
}

/// An alert as `GET /api/alerts` and `alert list` show it: the rule's fields, its state,
/// since when, the current value, the last notification and the silences muting it now.
pub fn alert_json(
    rule: &AlertRule,
    status: Option<&AlertStatus>,
    silences: &[Silence],
    now: DateTime<Utc>,
) -> Value {
    let default = AlertStatus::default();
    let status = status.unwrap_or(&default);
    let silenced_by: Vec<&str> = silences
        .iter()
        .filter(|s| s.is_active(now) && s.matches(rule))
        .map(|s| s.id.as_str())
        .collect();
    let format = |d: Duration| crate::duration::format_duration(d);
    json!({
        "id": rule.id,
        "name": rule.name,
        "description": rule.description,
        "state": status.state,
        "since": status.since,
        "active_at": status.active_at,
        "fired_at": status.fired_at,
        "resolved_at": status.resolved_at,
        "value": status.value,
        "values": status.values,
        "no_data": status.no_data,
        "condition": rule.condition_text,
        "duration": format(rule.duration),
        "severity": rule.severity,
        "labels": rule.all_labels(),
        "annotations": rule.render_annotations(status.value),
        "actions": rule.actions,
        "repeat_interval": format(rule.repeat_interval),
        "send_resolved": rule.send_resolved,
        "enabled": rule.enabled,
        "last_evaluation": status.last_evaluation,
        "last_notification": status.last_notification,
        "notifications": status.notifications,
        "silenced": !silenced_by.is_empty(),
        "silenced_by": silenced_by,
        "fingerprint": rule.fingerprint(),
        "source_file": rule.source_file,
    })
}

/// Every rule in force as [`alert_json`] shows it, in id order.
pub fn alerts_json(
    rules: &[AlertRule],
    states: &BTreeMap<String, AlertStatus>,
    silences: &[Silence],
    now: DateTime<Utc>,
) -> Vec<Value> {
    rules
        .iter()
        .map(|rule| alert_json(rule, states.get(&rule.id), silences, now))
        .collect()
}

/// Finds a rule by id, or by name when no id matches; the error says what exists.
pub fn find_rule<'a>(rules: &'a [AlertRule], id: &str) -> Result<&'a AlertRule, String> {
    rules
        .iter()
        .find(|r| r.id == id)
        .or_else(|| rules.iter().find(|r| r.name == id))
        .ok_or_else(|| {
            let hint = crate::util::did_you_mean(id, rules.iter().map(|r| r.id.as_str()))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            format!("no alert `{id}` in force{hint} (`alert list` shows them)")
        })
}

/// The alerts' part of the server: the channels, and one lock so that evaluations and
/// delivery outcomes update the stored states one at a time.
pub struct Alerts {
    /// The notification channels.
    pub notifier: Arc<super::notify::Notifier>,
    lock: Mutex<()>,
}

impl Alerts {
    /// The alerts' part of a server with this configuration.
    pub fn new(notifier: super::notify::Notifier) -> Alerts {
        Alerts {
            notifier: Arc::new(notifier),
            lock: Mutex::new(()),
        }
    }

    /// Holds the states for a read-modify-write.
    fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the alert loop works with: the rules in force, the store of their states, the
/// metric sources, the channels and where transitions are published.
pub struct AlertContext {
    /// The store: alert states, history and silences.
    pub store: Arc<Store>,
    /// The objects in force (the Alert rules).
    pub view: Arc<crate::reconcile::view::View>,
    /// Where `alert_firing`/`alert_resolved` go, and whence reconciles are heard.
    pub events: crate::events::EventBus,
    /// Workflow, agent and test metrics.
    pub stats: Arc<super::stats::RunStats>,
    /// System metrics.
    pub system: Arc<super::system::SystemMonitor>,
    /// The channels and the lock of the alerts' states.
    pub alerts: Arc<Alerts>,
    /// `monitoring.evaluation_interval` (zero: every 10 s).
    pub evaluation_interval: Duration,
}

/// What the server's metrics answer: system metrics from the latest sample, the others
/// from the run statistics.
struct ServerMetrics<'a> {
    shared: &'a AlertContext,
}

impl MetricSource for ServerMetrics<'_> {
    fn value(&self, metric: &MetricRef) -> Option<f64> {
        if metric.name.starts_with("system.") {
            self.shared.system.value(metric)
        } else {
            self.shared.stats.value(metric, Utc::now())
        }
    }
}

/// One evaluation on the server: reads the rules in force, the stored states and the
/// silences, evaluates at `now` and stores the result (durably when anything reportable
/// changed). Silences expired beyond their retention are removed. Blocking: call off the
/// async threads.
pub fn tick(
    shared: &AlertContext,
    now: DateTime<Utc>,
) -> Result<(Vec<AlertRule>, Vec<Silence>, Evaluation), StoreError> {
    let _held = shared.alerts.hold();
    let rules = shared.view.objects().alerts.clone();
    let before = load_states(&shared.store)?;
    let mut silences = silences(&shared.store)?;
    drop_expired_silences(&shared.store, &mut silences, now)?;
    let evaluation = evaluate(&rules, &before, &ServerMetrics { shared }, &silences, now);
    persist(&shared.store, &before, &evaluation)?;
    Ok((rules, silences, evaluation))
}

/// Records what became of a delivery in the alert's stored status, durably.
fn record_delivery(
    shared: &AlertContext,
    alert_id: &str,
    queued_at: DateTime<Utc>,
    outcome: DeliveryOutcome,
) -> Result<(), StoreError> {
    let _held = shared.alerts.hold();
    let Some(mut status) = shared.store.state::<AlertStatus>(STATE_TREE, alert_id)? else {
        return Ok(());
    };
    if record_outcome(&mut status, queued_at, outcome) {
        shared
            .store
            .put_state(STATE_TREE, alert_id, &status, true)?;
    }
    Ok(())
}

/// Publishes the transitions that fire or resolve an alert (their states are durable).
fn publish(
    shared: &AlertContext,
    rules: &[AlertRule],
    silences: &[Silence],
    evaluation: &Evaluation,
    now: DateTime<Utc>,
) {
    for transition in &evaluation.transitions {
        let event: fn(Value) -> Event = match (transition.from, transition.to) {
            (_, AlertState::Firing) => Event::AlertFiring,
            // Disabling a firing rule ends it too (straight to inactive, without notifying).
            (AlertState::Firing, AlertState::Resolved | AlertState::Inactive) => {
                Event::AlertResolved
            }
            _ => continue,
        };
        let Some(rule) = rules.iter().find(|r| r.id == transition.alert_id) else {
            continue;
        };
        let status = evaluation.states.get(&rule.id);
        shared
            .events
            .publish(event(alert_json(rule, status, silences, now)));
    }
}

/// Hands each due notification to its channels, each delivery on a task of its own; the
/// outcome is stored in the alert's status when the delivery ends.
fn dispatch(shared: &Arc<AlertContext>, base_url: &str, due: Vec<DueNotification>) {
    for DueNotification {
        mut notification,
        channels,
        at,
    } in due
    {
        notification.generator_url = format!("{base_url}{}", notification.generator_url);
        let notification = Arc::new(notification);
        for channel in channels {
            let shared = Arc::clone(shared);
            let notification = Arc::clone(&notification);
            tokio::spawn(async move {
                let notifier = Arc::clone(&shared.alerts.notifier);
                let outcome = notifier.deliver(&channel, &notification).await;
                if outcome.delivered {
                    tracing::info!(alert = %notification.alert_id, channel = %channel, attempts = outcome.attempts, "notification delivered");
                } else {
                    tracing::warn!(alert = %notification.alert_id, channel = %channel, attempts = outcome.attempts, error = outcome.error.as_deref().unwrap_or(""), "notification not delivered");
                }
                let alert_id = notification.alert_id.clone();
                let recorded = tokio::task::spawn_blocking(move || {
                    record_delivery(&shared, &alert_id, at, outcome)
                })
                .await;
                match recorded {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::error!("cannot record a delivery outcome: {err}"),
                    Err(err) => tracing::error!("recording a delivery outcome failed: {err}"),
                }
            });
        }
    }
}

/// Evaluates the alert rules every `monitoring.evaluation_interval`, and at once after a
/// reconcile, until `stop` turns true. `base_url` (`http://host:port`) prefixes the
/// notifications' links.
pub async fn run(
    shared: Arc<AlertContext>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    base_url: String,
) {
    let interval = if shared.evaluation_interval.is_zero() {
        Duration::from_secs(10)
    } else {
        shared.evaluation_interval
    };
    for problem in shared.alerts.notifier.problems() {
        tracing::warn!("notifications: {problem}");
    }
    let mut events = shared.events.subscribe();
    let started = tokio::time::Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            event = events.recv() => match event {
                Ok(event) if event.kind == EventKind::SyncCompleted => {}
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
        // Until the first system sample is taken, every system metric has no value, which
        // would resolve the alerts a restart found firing.
        if shared.system.latest().is_none() && started.elapsed() < STARTUP_GRACE {
            continue;
        }
        let ticked = {
            let shared = Arc::clone(&shared);
            tokio::task::spawn_blocking(move || {
                let now = Utc::now();
                tick(&shared, now).map(|result| (result, now))
            })
            .await
        };
        match ticked {
            Ok(Ok(((rules, silences, evaluation), now))) => {
                publish(&shared, &rules, &silences, &evaluation, now);
                dispatch(&shared, &base_url, evaluation.notifications_due);
            }
            Ok(Err(err)) => tracing::error!("alert evaluation could not use the store: {err}"),
            Err(err) => tracing::error!("alert evaluation failed: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::RwLock;

    use super::*;

    /// Metric values the test sets, by metric text.
    #[derive(Default)]
    struct Values(RwLock<HashMap<String, f64>>);

    impl Values {
        fn set(&self, metric: &str, value: f64) {
            self.0.write().unwrap().insert(metric.to_owned(), value);
        }
        fn clear(&self, metric: &str) {
            self.0.write().unwrap().remove(metric);
        }
    }

    impl MetricSource for Values {
        fn value(&self, metric: &MetricRef) -> Option<f64> {
            self.0.read().unwrap().get(&metric.to_string()).copied()
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect()
    }

    #[test]
    fn fingerprints_are_alertmanagers() {
        // Alertmanager 0.25's fingerprint of these labels.
        let cpu = labels(&[
            ("alertname", "CPU Always"),
            ("severity", "critical"),
            ("team", "qa"),
        ]);
        assert_eq!(fingerprint(&cpu), "48525fe1cfc801a2");
        // No labels: FNV-1a's offset basis, as Alertmanager's empty label set.
        assert_eq!(fingerprint(&BTreeMap::new()), "cbf29ce484222325");
        // The separator keeps `a=bc` and `ab=c` apart.
        assert_ne!(
            fingerprint(&labels(&[("a", "bc")])),
            fingerprint(&labels(&[("ab", "c")]))
        );
        // A rule's fingerprint is that of the labels its notifications carry.
        let rule = AlertRule::from_spec(
            "alert_cpu-always",
            &serde_json::json!({
                "name": "CPU Always",
                "condition": "system.cpu_percent >= 0",
                "severity": "critical",
                "labels": {"team": "qa"},
            }),
        )
        .unwrap();
        assert_eq!(rule.fingerprint(), "48525fe1cfc801a2");
    }

    fn rule(spec: Value) -> AlertRule {
        let name = spec["name"].as_str().unwrap();
        AlertRule::from_spec(&format!("alert_{}", crate::manifest::slug(name)), &spec).unwrap()
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-05-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + TimeDelta::seconds(seconds)
    }

    /// Evaluates and keeps the new states; returns the evaluation.
    struct Clocked {
        rules: Vec<AlertRule>,
        states: BTreeMap<String, AlertStatus>,
        silences: Vec<Silence>,
    }

    impl Clocked {
        fn new(rules: Vec<AlertRule>) -> Clocked {
            Clocked {
                rules,
                states: BTreeMap::new(),
                silences: Vec::new(),
            }
        }

        fn tick(&mut self, values: &Values, now: DateTime<Utc>) -> Evaluation {
            let evaluation = evaluate(&self.rules, &self.states, values, &self.silences, now);
            self.states = evaluation.states.clone();
            evaluation
        }

        fn state(&self, id: &str) -> AlertState {
            self.states[id].state
        }
    }

    fn cpu_rule() -> AlertRule {
        rule(json!({
            "name": "High CPU",
            "condition": "system.cpu_percent > 80",
            "duration": "5m",
            "repeat_interval": "1h",
            "actions": ["webhook", "email"],
            "labels": {"team": "infra"},
            "annotations": {"description": "CPU of {{ labels.team }} at {{ value }}%"}
        }))
    }

    #[test]
    fn defaults_follow_the_schema() {
        let r = rule(json!({"name": "Plain", "condition": "system.load_average > 4"}));
        assert_eq!(r.severity, "warning");
        assert_eq!(r.duration, Duration::ZERO);
        assert_eq!(r.repeat_interval, Duration::from_secs(4 * 3600));
        assert!(r.send_resolved && r.enabled);
        assert!(r.actions.is_empty());
        assert_eq!(r.annotations["summary"], DEFAULT_SUMMARY);
        assert_eq!(
            r.render(&r.annotations["summary"], Some(4.5)),
            "Plain: system.load_average > 4 (value 4.5)"
        );
        assert_eq!(
            r.render("{{ value }} {{ unknown }} {{ severity }}", None),
            "no data {{ unknown }} warning"
        );
        // Seconds as a number, a duration string otherwise.
        let r = rule(
            json!({"name": "N", "condition": "system.load_average > 4", "duration": 90, "repeat_interval": "10m"}),
        );
        assert_eq!(r.duration, Duration::from_secs(90));
        assert_eq!(r.repeat_interval, Duration::from_secs(600));
    }

    #[test]
    fn pending_then_firing_after_the_duration_then_resolved() {
        let values = Values::default();
        let mut clock = Clocked::new(vec![cpu_rule()]);
        let id = "alert_high-cpu";

        // No sample yet: false, reported as no data.
        let e = clock.tick(&values, at(0));
        assert_eq!(clock.state(id), AlertState::Inactive);
        assert!(clock.states[id].no_data);
        assert!(e.transitions.is_empty() && e.notifications_due.is_empty());

        values.set("system.cpu_percent", 95.0);
        let e = clock.tick(&values, at(10));
        assert_eq!(clock.state(id), AlertState::Pending);
        assert_eq!(clock.states[id].active_at, Some(at(10)));
        assert!(!clock.states[id].no_data);
        assert_eq!(e.transitions.len(), 1);
        assert!(e.notifications_due.is_empty(), "pending does not notify");

        // Still short of five minutes.
        let e = clock.tick(&values, at(10 + 299));
        assert_eq!(clock.state(id), AlertState::Pending);
        assert!(e.transitions.is_empty() && e.notifications_due.is_empty());

        // Five minutes held: firing, and both channels are due.
        let e = clock.tick(&values, at(10 + 300));
        assert_eq!(clock.state(id), AlertState::Firing);
        assert_eq!(e.transitions[0].from, AlertState::Pending);
        assert_eq!(e.transitions[0].to, AlertState::Firing);
        assert_eq!(e.notifications_due.len(), 1);
        let due = &e.notifications_due[0];
        assert_eq!(due.channels, ["webhook", "email"]);
        let n = &due.notification;
        assert_eq!(n.status, NotificationStatus::Firing);
        assert_eq!(n.value, Some(95.0));
        assert_eq!(n.starts_at, at(310));
        assert_eq!(n.labels["alertname"], "High CPU");
        assert_eq!(n.labels["severity"], "warning");
        assert_eq!(n.labels["team"], "infra");
        assert_eq!(
            n.annotations["summary"],
            "High CPU: system.cpu_percent > 80 (value 95)"
        );
        assert_eq!(n.annotations["description"], "CPU of infra at 95%");
        assert_eq!(n.fingerprint.len(), 16);
        assert_eq!(clock.states[id].notifications["email"].outcome, None);

        // Still firing: no new notification until the repeat interval.
        let e = clock.tick(&values, at(400));
        assert!(e.notifications_due.is_empty());

        // Back under the threshold: resolved, notified, with its end.
        values.set("system.cpu_percent", 20.0);
        let e = clock.tick(&values, at(500));
        assert_eq!(clock.state(id), AlertState::Resolved);
        assert_eq!(e.transitions[0].to, AlertState::Resolved);
        let n = &e.notifications_due[0].notification;
        assert_eq!(n.status, NotificationStatus::Resolved);
        assert_eq!(n.ends_at, Some(at(500)));
        assert_eq!(n.starts_at, at(310));

        // Resolved reads as inactive after the retention.
        clock.tick(&values, at(500 + 899));
        assert_eq!(clock.state(id), AlertState::Resolved);
        let e = clock.tick(&values, at(500 + 900));
        assert_eq!(clock.state(id), AlertState::Inactive);
        assert!(e.notifications_due.is_empty());
    }

    #[test]
    fn a_false_evaluation_while_pending_returns_to_inactive_without_notifying() {
        let values = Values::default();
        let mut clock = Clocked::new(vec![cpu_rule()]);
        values.set("system.cpu_percent", 90.0);
        clock.tick(&values, at(0));
        values.set("system.cpu_percent", 10.0);
        let e = clock.tick(&values, at(60));
        assert_eq!(clock.state("alert_high-cpu"), AlertState::Inactive);
        assert!(e.notifications_due.is_empty());
        // The clock of `duration` starts again.
        values.set("system.cpu_percent", 90.0);
        clock.tick(&values, at(120));
        clock.tick(&values, at(120 + 299));
        assert_eq!(clock.state("alert_high-cpu"), AlertState::Pending);
        // A metric that goes missing counts as false.
        values.clear("system.cpu_percent");
        let e = clock.tick(&values, at(450));
        assert_eq!(clock.state("alert_high-cpu"), AlertState::Inactive);
        assert!(clock.states["alert_high-cpu"].no_data);
        assert!(e.notifications_due.is_empty());
    }

    #[test]
    fn a_firing_alert_repeats_after_its_repeat_interval() {
        let values = Values::default();
        let mut clock = Clocked::new(vec![rule(json!({
            "name": "Now", "condition": "system.process_count > 0",
            "actions": ["slack"], "repeat_interval": "10m", "send_resolved": false
        }))]);
        values.set("system.process_count", 3.0);
        // Duration 0: fires at once.
        let e = clock.tick(&values, at(0));
        assert_eq!(clock.state("alert_now"), AlertState::Firing);
        assert_eq!(e.notifications_due.len(), 1);
        let mut sent = vec![0];
        for t in (30..=1800).step_by(30) {
            let e = clock.tick(&values, at(t));
            if !e.notifications_due.is_empty() {
                assert_eq!(
                    clock.states["alert_now"]
                        .last_notification
                        .as_ref()
                        .map(|n| n.repeat),
                    Some(true)
                );
                sent.push(t);
            }
        }
        assert_eq!(sent, [0, 600, 1200, 1800]);
        // send_resolved: false.
        values.set("system.process_count", 0.0);
        let e = clock.tick(&values, at(1830));
        assert_eq!(clock.state("alert_now"), AlertState::Resolved);
        assert!(e.notifications_due.is_empty());
    }

    fn silence(matchers: &[(&str, &str)], from: i64, to: i64) -> Silence {
        Silence {
            id: format!("sil_{from}_{to}"),
            matchers: matchers
                .iter()
                .map(|(n, v)| Matcher {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            starts_at: at(from),
            ends_at: at(to),
            comment: "maintenance".into(),
            created_by: "test".into(),
            created_at: at(from),
            updated_at: at(from),
        }
    }

    #[test]
    fn a_silence_mutes_notifications_but_not_states() {
        let values = Values::default();
        let mut clock = Clocked::new(vec![rule(json!({
            "name": "Now", "condition": "system.process_count > 0",
            "actions": ["webhook"], "repeat_interval": "10m",
            "labels": {"team": "qa"}
        }))]);
        // Label matchers: all must match.
        assert!(silence(&[("team", "qa"), ("alertname", "Now")], 0, 1).matches(&clock.rules[0]));
        assert!(
            !silence(&[("team", "qa"), ("severity", "critical")], 0, 1).matches(&clock.rules[0])
        );
        assert!(silence(&[("alert_id", "alert_now")], 0, 1).matches(&clock.rules[0]));
        clock.silences = vec![silence(&[("team", "qa")], 0, 900)];
        values.set("system.process_count", 3.0);
        let e = clock.tick(&values, at(0));
        assert_eq!(clock.state("alert_now"), AlertState::Firing);
        assert_eq!(e.transitions.len(), 1, "the state changes");
        assert!(e.notifications_due.is_empty(), "but nothing is sent");
        let status = &clock.states["alert_now"];
        assert_eq!(status.silenced_by, ["sil_0_900"]);
        let last = status.last_notification.as_ref().unwrap();
        assert_eq!(last.muted_by, ["sil_0_900"]);
        assert!(last.channels.is_empty());
        // The repeat at 600 is muted too, and recorded as such (once, not per evaluation).
        let mut sent = Vec::new();
        let mut muted = Vec::new();
        for t in (60..=1500).step_by(60) {
            let e = clock.tick(&values, at(t));
            let last = clock.states["alert_now"].last_notification.clone().unwrap();
            if !last.muted_by.is_empty() && last.at == at(t) {
                muted.push(t);
            }
            if !e.notifications_due.is_empty() {
                assert_eq!(last.repeat, t != 900, "at {t}");
                sent.push(t);
            }
        }
        assert_eq!(muted, [600]);
        // The silence ends at 900: what it muted is owed, as with Alertmanager, and is sent
        // at once (not a repeat: nothing went out before); repeats count from there.
        assert_eq!(sent, [900, 1500]);
        assert!(clock.states["alert_now"].silenced_by.is_empty());
        // A resolve under a silence is muted as well.
        clock.silences = vec![silence(&[("alertname", "Now")], 1500, 3000)];
        values.set("system.process_count", 0.0);
        let e = clock.tick(&values, at(1560));
        assert_eq!(clock.state("alert_now"), AlertState::Resolved);
        assert!(e.notifications_due.is_empty());
    }

    #[test]
    fn disabled_rules_stay_inactive_and_removed_rules_are_pruned() {
        let values = Values::default();
        values.set("system.process_count", 3.0);
        let mut clock = Clocked::new(vec![rule(json!({
            "name": "Now", "condition": "system.process_count > 0", "actions": ["webhook"]
        }))]);
        clock.tick(&values, at(0));
        assert_eq!(clock.state("alert_now"), AlertState::Firing);
        clock.rules = vec![rule(json!({
            "name": "Now", "condition": "system.process_count > 0", "actions": ["webhook"],
            "enabled": false
        }))];
        let e = clock.tick(&values, at(10));
        assert_eq!(clock.state("alert_now"), AlertState::Inactive);
        assert_eq!(e.transitions[0].note.as_deref(), Some("rule disabled"));
        assert!(e.notifications_due.is_empty());
        clock.tick(&values, at(20));
        assert_eq!(clock.state("alert_now"), AlertState::Inactive);
        clock.rules.clear();
        let e = clock.tick(&values, at(30));
        assert_eq!(e.removed, ["alert_now"]);
        assert!(e.states.is_empty());
    }

    #[test]
    fn a_restart_in_the_middle_neither_renotifies_nor_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let values = Values::default();
        values.set("system.cpu_percent", 95.0);
        let rules = vec![
            cpu_rule(),
            rule(
                json!({"name": "Now", "condition": "system.cpu_percent > 1", "actions": ["webhook"], "repeat_interval": "1h"}),
            ),
        ];
        {
            let store = Store::open(dir.path()).unwrap();
            let mut states = load_states(&store).unwrap();
            // `Now` fires at once; `High CPU` is pending.
            for t in [0, 60] {
                let e = evaluate(&rules, &states, &values, &[], at(t));
                persist(&store, &states, &e).unwrap();
                if t == 0 {
                    assert_eq!(e.notifications_due.len(), 1);
                }
                states = e.states;
            }
            let status = states.get_mut("alert_now").unwrap();
            let queued = status.notifications["webhook"].queued_at;
            let outcome = DeliveryOutcome {
                channel: "webhook".into(),
                delivered: true,
                attempts: 1,
                error: None,
                at: at(1),
            };
            assert!(record_outcome(status, queued, outcome.clone()));
            store
                .put_state(STATE_TREE, "alert_now", &*status, true)
                .unwrap();
        }
        // A new process: the states come back from the store.
        let store = crate::store::Store::open(dir.path()).unwrap();
        let states = load_states(&store).unwrap();
        assert_eq!(states["alert_now"].state, AlertState::Firing);
        assert_eq!(states["alert_now"].fired_at, Some(at(0)));
        assert!(states["alert_now"].notifications["webhook"]
            .outcome
            .as_ref()
            .is_some_and(|o| o.delivered));
        assert_eq!(states["alert_high-cpu"].state, AlertState::Pending);
        assert_eq!(states["alert_high-cpu"].active_at, Some(at(0)));
        // Firing is remembered: no notification again; pending keeps its start, so it fires
        // five minutes after the first true evaluation, not after the restart.
        let e = evaluate(&rules, &states, &values, &[], at(120));
        assert!(e.notifications_due.is_empty(), "{:?}", e.notifications_due);
        persist(&store, &states, &e).unwrap();
        let e2 = evaluate(&rules, &e.states, &values, &[], at(300));
        assert_eq!(e2.states["alert_high-cpu"].state, AlertState::Firing);
        assert_eq!(e2.notifications_due.len(), 1);
        assert_eq!(
            e2.notifications_due[0].notification.alert_id,
            "alert_high-cpu"
        );
        persist(&store, &e.states, &e2).unwrap();
        // The history holds the transitions in order.
        let history = history(&store, "alert_high-cpu").unwrap();
        let steps: Vec<(AlertState, AlertState)> = history.iter().map(|h| (h.from, h.to)).collect();
        assert_eq!(
            steps,
            [
                (AlertState::Inactive, AlertState::Pending),
                (AlertState::Pending, AlertState::Firing)
            ]
        );
        // A rule removed from the manifests loses its state and history.
        let e3 = evaluate(&rules[..1], &e2.states, &values, &[], at(310));
        persist(&store, &e2.states, &e3).unwrap();
        let states = load_states(&store).unwrap();
        assert!(!states.contains_key("alert_now"));
        assert!(super::history(&store, "alert_now").unwrap().is_empty());
    }

    #[test]
    fn the_guides_alerts_file_loads_into_two_rules() {
        let text = include_str!("../../tests/fixtures/guide/alerts/alerts.json");
        let document = crate::manifest::parse::parse_json(text).unwrap();
        let (manifests, diagnostics) = crate::manifest::extract("alerts/alerts.json", document, "");
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        for manifest in &manifests {
            let problems = crate::schema::semantic::check_object(manifest);
            assert!(problems.is_empty(), "{problems:?}");
        }
        let rules: Vec<AlertRule> = manifests
            .iter()
            .map(|m| AlertRule::from_spec(&m.id().unwrap(), &m.value).unwrap())
            .collect();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].id, "alert_high-cpu-usage");
        assert_eq!(rules[0].condition_text, "system.cpu_percent > 80");
        assert_eq!(rules[0].duration, Duration::from_secs(300));
        assert_eq!(rules[0].actions, ["email", "webhook"]);
        assert_eq!(rules[1].id, "alert_workflow-failure-rate");
        assert_eq!(rules[1].duration, Duration::from_secs(600));
        assert_eq!(rules[1].actions, ["slack", "email"]);
        assert_eq!(rules[1].severity, "warning");
    }

    #[test]
    fn silences_are_validated_expired_and_pruned() {
        let rules = vec![cpu_rule()];
        let now = at(0);
        let request = |body: Value| serde_json::from_value::<SilenceRequest>(body).unwrap();
        let err = request(json!({"comment": "x", "duration": "1h"}))
            .into_silence(&rules, now)
            .unwrap_err();
        assert_eq!(err.field, "matchers");
        let err = request(
            json!({"alert": "High CPU", "comment": "x", "ends_at": "2026-05-01T09:00:00Z"}),
        )
        .into_silence(&rules, now)
        .unwrap_err();
        assert_eq!(err.field, "ends_at");
        assert!(err.message.contains("not after now"), "{err}");
        let err = request(json!({"alert": "alert_high-cp", "comment": "x", "duration": "1h"}))
            .into_silence(&rules, now)
            .unwrap_err();
        assert!(
            err.message.contains("did you mean `alert_high-cpu`"),
            "{err}"
        );
        // A missing comment is refused when the body is read; a blank one here.
        assert!(serde_json::from_value::<SilenceRequest>(
            json!({"labels": {"team": "infra"}, "duration": "1h"})
        )
        .is_err());
        let err = request(json!({"labels": {"team": "infra"}, "comment": " ", "duration": "1h"}))
            .into_silence(&rules, now)
            .unwrap_err();
        assert_eq!(err.field, "comment");
        let silence = request(json!({"alert": "High CPU", "labels": {"team": "infra"}, "comment": " deploy ", "duration": "2h"}))
            .into_silence(&rules, now)
            .unwrap();
        assert_eq!(silence.ends_at, at(7200));
        assert_eq!(silence.comment, "deploy");
        assert!(silence.matches(&rules[0]));
        assert_eq!(silence.to_json(&rules, now)["state"], "active");

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        put_silence(&store, &silence).unwrap();
        let expired = expire_silence(&store, &silence.id, at(60))
            .unwrap()
            .unwrap();
        assert_eq!(expired.ends_at, at(60));
        assert_eq!(expired.state(at(61)), "expired");
        assert!(expire_silence(&store, "sil_nope", at(60))
            .unwrap()
            .is_none());
        assert_eq!(prune_silences(&store, at(60 + 3600)).unwrap(), 0);
        assert_eq!(silences(&store).unwrap().len(), 1);
        assert_eq!(
            prune_silences(&store, at(61) + SILENCE_RETENTION).unwrap(),
            1
        );
        assert!(silences(&store).unwrap().is_empty());
    }
}
