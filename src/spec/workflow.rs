//! [`WorkflowSpec`] and [`StepSpec`]: what the engine reads of a validated (and
//! template-expanded) workflow, compiled once per run from the `serde_json::Value` the run
//! record keeps. The record stays the source: on disk a run still carries the expanded
//! workflow as it was, and this is a view of it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// A workflow as the engine runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowSpec {
    /// The steps, in listed order.
    pub steps: Vec<StepSpec>,
    /// Whether any step declares `depends_on`. When none does, each step waits for the one
    /// listed before it.
    pub uses_depends_on: bool,
    /// `max_parallel`: steps running at once.
    pub max_parallel: Option<usize>,
    /// `timeout` of the whole run (zero means none).
    pub timeout: Option<Duration>,
    /// `history_limit`: runs kept.
    pub history_limit: Option<usize>,
}

/// One step as the engine schedules it.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSpec {
    /// `name`.
    pub name: String,
    /// `agent` (`shell` when absent).
    pub agent: String,
    /// `action`, else the agent's first action, else `run`.
    pub action: String,
    /// `depends_on`: names of the steps it waits for.
    pub depends_on: Vec<String>,
    /// `if`: the condition it runs under (`success()` when absent).
    pub condition: Option<String>,
    /// `retries`: attempts after the first.
    pub retries: u32,
    /// `retry_delay` before the first retry (doubled for each next one); 1 s by default.
    pub retry_delay: Duration,
    /// The step's own `timeout`, else a `test_runner` `run_tests` step's `timeout`
    /// parameter. Zero is kept: it means no timeout, not the agent's default.
    pub timeout: Option<Duration>,
    /// `continue_on_error`: a failure does not fail what follows.
    pub continue_on_error: bool,
    /// The step as the workflow declares it (parameters, command, env and working_dir
    /// are read from here when an attempt starts, with `{{ }}` substituted then).
    pub raw: Arc<Value>,
    /// Where it runs when workers are configured: `runs_on` (its own, else the
    /// workflow's), `on_worker_lost`, `queue_timeout`. `None`: on this machine.
    pub placement: Option<Placement>,
}

/// A step meant for a worker: the labels it needs and what happens when no worker takes it
/// or its worker is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Labels a worker must have, every one (empty: any worker).
    pub labels: BTreeMap<String, String>,
    /// `on_worker_lost: fail`: a lost worker fails the step instead of retrying it.
    pub fail_when_lost: bool,
    /// `queue_timeout`: how long it may wait for a worker (the configured default when
    /// absent).
    pub queue_timeout: Option<Duration>,
}

impl Placement {
    /// The placement a step declares, or inherits from its workflow's `runs_on`.
    pub fn of(step: &Value, workflow_runs_on: Option<&Value>) -> Option<Placement> {
        let labels = step.get("runs_on").or(workflow_runs_on)?.as_object()?;
        Some(Placement {
            labels: labels
                .iter()
                .map(|(k, v)| {
                    let value = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                    (k.clone(), value)
                })
                .collect(),
            fail_when_lost: step.get("on_worker_lost").and_then(Value::as_str) == Some("fail"),
            queue_timeout: duration_field(step.get("queue_timeout")).filter(|d| !d.is_zero()),
        })
    }
}

impl WorkflowSpec {
    /// The spec of a validated, expanded workflow. Fields of the wrong type (which
    /// validation rejects) read as absent.
    pub fn compile(workflow: &Value) -> WorkflowSpec {
        let steps: Vec<StepSpec> = workflow
            .get("steps")
            .and_then(Value::as_array)
            .map(|steps| {
                steps
                    .iter()
                    .map(|step| {
                        let mut compiled = StepSpec::compile(step);
                        compiled.placement = Placement::of(step, workflow.get("runs_on"));
                        compiled
                    })
                    .collect()
            })
            .unwrap_or_default();
        let uses_depends_on = workflow
            .get("steps")
            .and_then(Value::as_array)
            .is_some_and(|steps| steps.iter().any(|s| s.get("depends_on").is_some()));
        WorkflowSpec {
            steps,
            uses_depends_on,
            max_parallel: count(workflow.get("max_parallel")),
            timeout: duration_field(workflow.get("timeout")).filter(|t| !t.is_zero()),
            history_limit: count(workflow.get("history_limit")),
        }
    }

    /// The position of the step named `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.name == name)
    }
}

impl StepSpec {
    /// The spec of one step of a validated workflow (its placement from its own `runs_on`
    /// only: [`WorkflowSpec::compile`] adds the workflow's).
    pub fn compile(step: &Value) -> StepSpec {
        let (agent, action) = agent_and_action(step);
        let timeout = duration_field(step.get("timeout")).or_else(|| {
            (agent == "test_runner" && action == "run_tests")
                .then(|| duration_field(step.get("parameters").and_then(|p| p.get("timeout"))))
                .flatten()
        });
        StepSpec {
            name: step
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            depends_on: step
                .get("depends_on")
                .and_then(Value::as_array)
                .map(|names| {
                    names
                        .iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            condition: step.get("if").and_then(Value::as_str).map(str::to_owned),
            retries: step.get("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
            retry_delay: duration_field(step.get("retry_delay")).unwrap_or(Duration::from_secs(1)),
            timeout,
            continue_on_error: step
                .get("continue_on_error")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            placement: Placement::of(step, None),
            agent,
            action,
            raw: Arc::new(step.clone()),
        }
    }
}

/// A step's agent (`shell` by default) and action (its agent's first when absent, `run`
/// for an agent the catalog does not know).
pub fn agent_and_action(step: &Value) -> (String, String) {
    let agent = step
        .get("agent")
        .and_then(Value::as_str)
        .unwrap_or("shell")
        .to_owned();
    let action = step
        .get("action")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| crate::spec::agents::builtin(&agent).map(|b| b.actions[0].to_owned()))
        .unwrap_or_else(|| "run".to_owned());
    (agent, action)
}

/// A duration field: seconds as a number, or text such as `90s` or `1h30m`.
pub fn duration_field(value: Option<&Value>) -> Option<Duration> {
    match value? {
        Value::Number(n) => n.as_f64().map(Duration::from_secs_f64),
        Value::String(text) => crate::duration::parse_duration(text).ok(),
        _ => None,
    }
}

fn count(value: Option<&Value>) -> Option<usize> {
    value.and_then(Value::as_u64).map(|n| n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_step_reads_its_fields_and_defaults() {
        let spec = WorkflowSpec::compile(&json!({
            "max_parallel": 3, "timeout": "1m", "history_limit": 5,
            "steps": [
                {"name": "plain", "command": ["true"]},
                {"name": "tests", "agent": "test_runner", "action": "run_tests",
                 "parameters": {"test_suite": "unit", "timeout": "30s"},
                 "depends_on": ["plain"], "if": "always()", "retries": 2,
                 "retry_delay": 5, "continue_on_error": true},
                {"name": "report", "agent": "report_generator", "timeout": 0},
            ],
        }));
        assert!(spec.uses_depends_on);
        assert_eq!(spec.max_parallel, Some(3));
        assert_eq!(spec.timeout, Some(Duration::from_secs(60)));
        assert_eq!(spec.history_limit, Some(5));
        let plain = &spec.steps[0];
        assert_eq!(
            (plain.agent.as_str(), plain.action.as_str()),
            ("shell", "run")
        );
        assert_eq!(
            (plain.retries, plain.retry_delay),
            (0, Duration::from_secs(1))
        );
        assert_eq!((plain.timeout, plain.condition.as_deref()), (None, None));
        let tests = &spec.steps[1];
        assert_eq!(tests.depends_on, ["plain"]);
        assert_eq!(tests.condition.as_deref(), Some("always()"));
        assert_eq!(
            (tests.retries, tests.retry_delay),
            (2, Duration::from_secs(5))
        );
        assert_eq!(
            tests.timeout,
            Some(Duration::from_secs(30)),
            "run_tests's parameter"
        );
        assert!(tests.continue_on_error);
        let report = &spec.steps[2];
        assert_eq!(
            report.action, "generate_html_report",
            "the agent's first action"
        );
        assert_eq!(
            report.timeout,
            Some(Duration::ZERO),
            "zero is kept: no timeout"
        );
        assert_eq!(spec.position("report"), Some(2));
    }

    #[test]
    fn a_workflow_without_depends_on_runs_in_listed_order() {
        let spec = WorkflowSpec::compile(&json!({"steps": [{"name": "a"}, {"name": "b"}]}));
        assert!(!spec.uses_depends_on);
        assert_eq!(spec.timeout, None);
    }
}
