//! A Schedule manifest compiled for firing: its expression parsed once, its zone, its
//! workflow and parameters, and its policies. No IO.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::cron::CronSchedule;

/// `catchup`: what to do with fires missed while the server was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Catchup {
    /// Skip them.
    None,
    /// Run the latest one.
    Last,
    /// Run each of them.
    All,
}

/// `concurrency_policy` between the runs of one schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Runs side by side.
    Allow,
    /// A fire while the previous run is active is skipped.
    Forbid,
    /// The previous run is cancelled.
    Replace,
}

/// A Schedule object, read for firing.
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    /// Its id (`sch_...`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The expression.
    pub cron: CronSchedule,
    /// The zone the expression is read in.
    pub zone: chrono_tz::Tz,
    /// The workflow to run.
    pub workflow: String,
    /// The runs' parameters.
    pub parameters: Map<String, Value>,
    /// Between its runs.
    pub overlap: Overlap,
    /// Missed fires.
    pub catchup: Catchup,
    /// Missed fires older than this are skipped.
    pub starting_deadline: Option<Duration>,
    /// Fires nothing while set.
    pub suspend: bool,
    /// What decides the due times: the expression and the zone. When it changes, the
    /// next due instant is computed afresh from now.
    pub timing: String,
}

impl ScheduleSpec {
    /// Reads a validated Schedule manifest (the spec the store keeps) under its id and
    /// name; `default_zone` when it names none.
    pub fn new(
        id: &str,
        name: &str,
        spec: &Value,
        default_zone: &str,
    ) -> Result<ScheduleSpec, String> {
        let text = |name: &str| spec.get(name).and_then(Value::as_str);
        let expression = text("cron").or_else(|| text("schedule")).ok_or("no cron")?;
        let cron = CronSchedule::parse(expression).map_err(|e| e.to_string())?;
        let zone_name = text("timezone").unwrap_or(default_zone);
        let zone: chrono_tz::Tz = zone_name
            .parse()
            .map_err(|_| format!("unknown time zone `{zone_name}`"))?;
        Ok(ScheduleSpec {
            id: id.to_owned(),
            name: name.to_owned(),
            cron,
            zone,
            workflow: text("workflow").ok_or("no workflow")?.to_owned(),
            parameters: spec
                .get("parameters")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            overlap: match text("concurrency_policy") {
                Some("forbid") => Overlap::Forbid,
                Some("replace") => Overlap::Replace,
                _ => Overlap::Allow,
            },
            catchup: match text("catchup") {
                Some("last") => Catchup::Last,
                Some("all") => Catchup::All,
                _ => Catchup::None,
            },
            starting_deadline: match spec.get("starting_deadline") {
                Some(Value::Number(n)) => n.as_u64().map(Duration::from_secs),
                Some(Value::String(text)) => crate::duration::parse_duration(text).ok(),
                _ => None,
            },
            suspend: spec
                .get("suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            timing: format!("{expression} {zone_name}"),
        })
    }
}
