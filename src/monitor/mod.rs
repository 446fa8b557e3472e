//! Monitoring: the system sampler and its history ([`system`]), workflow, agent and test
//! metrics computed from run records ([`stats`]), alert rules evaluated against both
//! ([`alerts`]), and the channels that deliver alert notifications ([`notify`]).
//!
//! The parts meet in two small interfaces: a [`MetricSource`] answers the value of a metric
//! an alert condition names, and an [`AlertNotification`] is what a channel delivers.

pub mod alerts;
pub mod history;
pub mod metrics;
pub mod notify;
pub mod stats;
pub mod system;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::lang::condition::MetricRef;

/// Answers the current value of a metric named in an alert condition.
pub trait MetricSource {
    /// The value now, or `None` when there is none yet (no sample taken, no run in the
    /// window). A comparison with a missing value is false.
    fn value(&self, metric: &MetricRef) -> Option<f64>;
}

/// Whether a notification reports an alert that fires or one that resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    /// The alert fires (first notification or a repeat).
    Firing,
    /// The alert resolved.
    Resolved,
}

/// One alert notification: what a channel delivers, shaped after Alertmanager's alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertNotification {
    /// The alert's id (`alert_high-cpu-usage`).
    pub alert_id: String,
    /// The alert's name as written (`High CPU Usage`).
    pub name: String,
    /// Firing or resolved.
    pub status: NotificationStatus,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// `alertname`, `severity` and the alert's own labels.
    pub labels: BTreeMap<String, String>,
    /// The alert's annotations with their templates rendered (`summary`, `description`...).
    pub annotations: BTreeMap<String, String>,
    /// The condition as written.
    pub condition: String,
    /// The value of the condition's first metric when it was last evaluated.
    pub value: Option<f64>,
    /// When the alert started firing.
    pub starts_at: DateTime<Utc>,
    /// When it resolved (resolved notifications only).
    pub ends_at: Option<DateTime<Utc>>,
    /// A link to the alert in the dashboard.
    pub generator_url: String,
    /// A stable hash of the alert id and labels, as Alertmanager's fingerprint.
    pub fingerprint: String,
}

/// What became of delivering one notification on one channel, after all its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    /// The channel name (`email`, `webhook`, `slack` or a configured name).
    pub channel: String,
    /// Whether the last attempt succeeded.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last error, when not delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the last attempt ended.
    pub at: DateTime<Utc>,
}
