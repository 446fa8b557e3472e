//! An Alert manifest compiled for evaluation: its condition parsed once, durations read,
//! labels and annotation templates. How a rule is evaluated and notified lives in
//! `monitor::alerts`. No IO.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::lang::condition::{parse_condition, Condition};

/// The summary of an alert whose manifest gives none.
pub const DEFAULT_SUMMARY: &str = "{{ name }}: {{ condition }} (value {{ value }})";
/// The repeat interval of an alert whose manifest gives none.
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);

/// An Alert object, read for evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    /// Its id (`alert_high-cpu-usage`).
    pub id: String,
    /// Its name as written.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// The condition as written.
    pub condition_text: String,
    /// The parsed condition.
    pub condition: Condition,
    /// How long the condition must hold before the alert fires (default 0).
    pub duration: Duration,
    /// The notification channels to notify.
    pub actions: Vec<String>,
    /// `info`, `warning` (default) or `critical`.
    pub severity: String,
    /// Its own labels.
    pub labels: BTreeMap<String, String>,
    /// Its annotation templates (`summary` always present).
    pub annotations: BTreeMap<String, String>,
    /// How often a firing alert notifies again (default 4h).
    pub repeat_interval: Duration,
    /// Whether resolving notifies (default true).
    pub send_resolved: bool,
    /// Whether it is evaluated at all (default true).
    pub enabled: bool,
    /// The file it was declared in.
    pub source_file: Option<String>,
}

impl AlertRule {
    /// Reads an Alert manifest (the spec the store keeps) under its id.
    pub fn from_spec(id: &str, spec: &Value) -> Result<AlertRule, String> {
        let text = |field: &str| spec.get(field).and_then(Value::as_str);
        let name = text("name").ok_or("no name")?.to_owned();
        let condition_text = text("condition").ok_or("no condition")?.to_owned();
        let condition = parse_condition(&condition_text)
            .map_err(|e| format!("condition `{condition_text}`: {e}"))?;
        let duration_of = |field: &str, default: Duration| -> Result<Duration, String> {
            match spec.get(field) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .map(Duration::from_secs)
                    .ok_or_else(|| format!("{field}: expected whole seconds, got {n}")),
                Some(Value::String(s)) => {
                    crate::duration::parse_duration(s).map_err(|e| format!("{field}: {e}"))
                }
                Some(other) => Err(format!("{field}: expected a duration, got {other}")),
            }
        };
        let strings = |field: &str| -> BTreeMap<String, String> {
            spec.get(field)
                .and_then(Value::as_object)
                .map(|map| {
                    map.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut annotations = strings("annotations");
        annotations
            .entry("summary".to_owned())
            .or_insert_with(|| DEFAULT_SUMMARY.to_owned());
        Ok(AlertRule {
            id: id.to_owned(),
            name,
            description: text("description").map(str::to_owned),
            condition_text,
            condition,
            duration: duration_of("duration", Duration::ZERO)?,
            actions: spec
                .get("actions")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            severity: text("severity").unwrap_or("warning").to_owned(),
            labels: strings("labels"),
            annotations,
            repeat_interval: duration_of("repeat_interval", DEFAULT_REPEAT_INTERVAL)?,
            send_resolved: spec
                .get("send_resolved")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            enabled: spec.get("enabled").and_then(Value::as_bool).unwrap_or(true),
            source_file: None,
        })
    }
}
