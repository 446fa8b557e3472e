//! Workflow, agent and test metrics over a sliding window of finished runs.
//!
//! [`RunStats`] is fed one finished run at a time ([`RunStats::record`], called where a run
//! finishes) and bootstrapped at server start from the store's runs that finished within
//! the window ([`RunStats::bootstrap`]). It keeps a compact entry per run — status,
//! duration, test outcomes, and per step its agent, outcome, duration, CPU time and peak
//! memory — and answers every `workflow.*`, `tests.*` and `agent.*` metric of the alert
//! condition language ([`RunStats::value`]) without reading the store.
//!
//! Answers come from a snapshot of aggregates built from the entries when something
//! changed (a run recorded, a health check done, an entry leaving the window), so the many
//! rules an alert evaluator asks about in one round cost a lookup each.
//!
//! # Definitions
//!
//! - A run counts when it ended `succeeded`, `failed` or `timed_out`; cancelled and
//!   interrupted runs say nothing about the workflow and are left out. `failure_rate` is
//!   (failed + timed out) / runs, `success_rate` succeeded / runs.
//! - A step is an *execution* of its agent when it ended `succeeded`, `failed` or
//!   `timed_out`; `error_rate` is (failed + timed out) / executions. CPU time and peak
//!   memory count every step whose processes were measured, cancelled ones included.
//! - Percentiles use the nearest-rank method: the p-th percentile of n sorted values is the
//!   value of rank ⌈p·n⌉.
//! - `tests.failed` counts failed and errored test cases, summed over the runs;
//!   `tests.pass_rate` is passed / (passed + failed + errors), skipped cases left out; a test
//!   case is *flaky* when, within the window, it both passed and failed (or errored) in runs
//!   of the same workflow, and `tests.flaky` counts such cases.
//! - `tests.new_failures` and `tests.quarantined` sum the runs' own classification of
//!   their cases (`RunRecord.tests`, against each test's history): cases that failed after
//!   passing (or on their first result), and failures a Quarantine manifest covered.
//! - An agent's health score, 0 to 1, is
//!   `check × (0.8 × success_rate + 0.2 × (1 − recency))`, where `check` is 0 when the
//!   agent's latest health check failed and 1 otherwise (passed, not applicable, not yet
//!   run), `success_rate` is 1 when the agent ran nothing in the window, and `recency` is
//!   `exp(−age / 15 min)` of its last error (0 without one): a failing check zeroes it,
//!   failures lower it in proportion, and an error a moment ago costs up to 0.2 more, fading
//!   over the next half hour.
//!
//! Without a label, `workflow.*` and `tests.*` pool the runs of every workflow. `agent.<suffix>`
//! without an `agent` label pools the steps of every agent (rates and percentiles over all
//! executions, `executions` summed), except `health_score`, which is the lowest score of any
//! agent: the condition `agent.health_score < 0.5` fires when any agent is unhealthy.

pub mod health;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use utoipa::ToSchema;

pub use health::{HealthCheck, HealthStatus};

use crate::lang::condition::MetricRef;
use crate::model::{RunHeadRef, Status, StepRecord, TestStatus};
use crate::store::{Store, StoreError};

/// The window when the configuration does not say (`monitoring.metrics_window`).
pub const DEFAULT_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// How many test cases the slowest and most-failing lists hold.
pub const TOP_TESTS: usize = 5;

/// How fast the weight of an agent's last error fades in its health score.
const ERROR_FADE_SECONDS: f64 = 15.0 * 60.0;

/// Workflow, agent and test metrics over a sliding window; see the [module docs](self).
///
/// Shared between the thread that finishes runs, the health checks, the API and the alert
/// evaluator: every method takes `&self`.
pub struct RunStats {
    window: TimeDelta,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// By (finished at, run id): the oldest first, a run recorded twice kept once.
    runs: BTreeMap<(DateTime<Utc>, String), RunEntry>,
    /// The latest failed or timed-out step of each agent, kept past the window.
    last_errors: HashMap<String, ErrorEntry>,
    /// The latest health check of each agent.
    health: BTreeMap<String, HealthCheck>,
    /// Aggregates of `runs`, rebuilt when `None`.
    snapshot: Option<Arc<Snapshot>>,
}

struct RunEntry {
    workflow_id: String,
    workflow_name: String,
    status: Status,
    duration_seconds: Option<f64>,
    steps: Vec<StepEntry>,
    cases: Vec<CaseEntry>,
    /// The run's new failures and quarantined failures, as it classified them.
    new_failures: u64,
    quarantined: u64,
}

struct StepEntry {
    agent: String,
    status: Status,
    duration_seconds: Option<f64>,
    cpu_seconds: Option<f64>,
    max_rss_bytes: Option<u64>,
}

struct CaseEntry {
    suite: String,
    classname: String,
    name: String,
    status: TestStatus,
    time_seconds: f64,
}

#[derive(Clone)]
struct ErrorEntry {
    at: DateTime<Utc>,
    message: String,
    run_id: String,
    step: String,
}

/// Aggregates of the entries in the window.
#[derive(Default)]
struct Snapshot {
    all_workflows: WorkflowAgg,
    workflows: BTreeMap<String, WorkflowAgg>,
    /// Workflow name to id, for labels that give the name.
    names: HashMap<String, String>,
    all_agents: AgentAgg,
    agents: BTreeMap<String, AgentAgg>,
}

#[derive(Default, Clone)]
struct WorkflowAgg {
    name: String,
    runs: u64,
    succeeded: u64,
    failed: u64,
    duration_p95: Option<f64>,
    tests_passed: u64,
    tests_failed: u64,
    tests_skipped: u64,
    flaky: u64,
    new_failures: u64,
    quarantined: u64,
    slowest: Vec<TestCaseMetrics>,
    most_failing: Vec<TestCaseMetrics>,
}

#[derive(Default, Clone)]
struct AgentAgg {
    executions: u64,
    succeeded: u64,
    failed: u64,
    duration_p50: Option<f64>,
    duration_p95: Option<f64>,
    cpu_seconds: Option<f64>,
    max_rss_bytes: Option<u64>,
}

/// A workflow's metrics over the window (`GET /api/workflows/{id}/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WorkflowMetrics {
    /// The workflow's id.
    pub workflow_id: String,
    /// Its name, as its latest run in the window recorded it (empty without one).
    pub workflow_name: String,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// Runs that ended succeeded, failed or timed out within the window.
    pub runs: u64,
    /// Of those, succeeded.
    pub succeeded: u64,
    /// Of those, failed or timed out.
    pub failed: u64,
    /// failed / runs; `null` without runs.
    pub failure_rate: Option<f64>,
    /// succeeded / runs; `null` without runs.
    pub success_rate: Option<f64>,
    /// The 95th percentile of run durations, in seconds; `null` without runs.
    pub duration_p95_seconds: Option<f64>,
    /// Test results of those runs.
    pub tests: TestMetrics,
}

/// Test results over the window.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TestMetrics {
    /// passed / (passed + failed); `null` when no test case passed or failed.
    pub pass_rate: Option<f64>,
    /// Test cases that passed, summed over the runs.
    pub passed: u64,
    /// Test cases that failed or errored, summed over the runs.
    pub failed: u64,
    /// Test cases skipped, summed over the runs.
    pub skipped: u64,
    /// Test cases that both passed and failed within the window.
    pub flaky: u64,
    /// Test cases that failed after passing (or on their first result), summed over the
    /// runs, as each run classified them.
    pub new_failures: u64,
    /// Failed test cases a Quarantine manifest covered, summed over the runs.
    pub quarantined: u64,
    /// The slowest test cases (by their longest time), at most five.
    pub slowest: Vec<TestCaseMetrics>,
    /// The test cases that failed most often, at most five.
    pub most_failing: Vec<TestCaseMetrics>,
}

/// One test case over the window.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TestCaseMetrics {
    /// `<testsuite name>`; empty when absent.
    pub suite: String,
    /// `classname`; empty when absent.
    pub classname: String,
    /// `name`.
    pub name: String,
    /// Runs that reported it.
    pub runs: u64,
    /// Runs where it failed or errored.
    pub failures: u64,
    /// Its longest time, in seconds.
    pub max_time_seconds: f64,
}

/// The last failed or timed-out step of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LastError {
    /// The step's message.
    pub message: String,
    /// When the step finished, RFC 3339.
    pub at: String,
    /// The run.
    pub run_id: String,
    /// The step.
    pub step: String,
}

/// An agent's metrics over the window (`GET /api/agents/{name}/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AgentMetrics {
    /// The agent's name.
    pub agent: String,
    /// The window, in seconds.
    pub window_seconds: u64,
    /// Steps it ran that ended succeeded, failed or timed out.
    pub executions: u64,
    /// Of those, succeeded.
    pub succeeded: u64,
    /// Of those, failed or timed out.
    pub failed: u64,
    /// succeeded / executions; `null` without executions.
    pub success_rate: Option<f64>,
    /// failed / executions; `null` without executions.
    pub error_rate: Option<f64>,
    /// The median step duration, in seconds (retries included).
    pub duration_p50_seconds: Option<f64>,
    /// The 95th percentile of step durations, in seconds.
    pub duration_p95_seconds: Option<f64>,
    /// CPU time (user + system) of the processes its steps ran, in seconds; `null` when
    /// none was measured (agents that run no process).
    pub cpu_seconds: Option<f64>,
    /// Peak resident memory of the largest process its steps ran, in bytes.
    pub max_rss_bytes: Option<u64>,
    /// 0 to 1: `check × (0.8 × success_rate + 0.2 × (1 − exp(−age of last error / 15 min)))`.
    pub health_score: f64,
    /// The latest health check; `null` before the first.
    pub health_check: Option<HealthCheck>,
    /// The last failed or timed-out step, even one older than the window.
    pub last_error: Option<LastError>,
}

fn parse_time(text: Option<&str>) -> Option<DateTime<Utc>> {
    text.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Whether a status is a decided outcome: succeeded, failed or timed out.
fn decided(status: Status) -> bool {
    matches!(
        status,
        Status::Succeeded | Status::Failed | Status::TimedOut
    )
}

fn is_failure(status: Status) -> bool {
    matches!(status, Status::Failed | Status::TimedOut)
}

/// The nearest-rank percentile (`p` in 0..=1) of unsorted values; `None` when empty.
pub fn percentile(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let rank = (p * values.len() as f64).ceil() as usize;
    Some(values[rank.clamp(1, values.len()) - 1])
}

fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl RunStats {
    /// Empty stats over `window` (at least one second).
    pub fn new(window: std::time::Duration) -> RunStats {
        let window = TimeDelta::from_std(window.max(std::time::Duration::from_secs(1)))
            .unwrap_or(TimeDelta::hours(1));
        RunStats {
            window,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Empty stats over the configured `monitoring.metrics_window` ([`DEFAULT_WINDOW`] when
    /// it does not parse).
    pub fn for_config(config: &crate::config::MonitoringConfig) -> RunStats {
        RunStats::new(config.metrics_window.duration().unwrap_or(DEFAULT_WINDOW))
    }

    /// The window.
    pub fn window(&self) -> std::time::Duration {
        self.window.to_std().unwrap_or(DEFAULT_WINDOW)
    }

    fn window_seconds(&self) -> u64 {
        self.window.num_seconds().max(0) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the runs of the store that finished within the window before `now`, with
    /// their steps. Returns how many. Called once, at server start: it reads those runs
    /// alone (through the store's index of finish times), so neither the time it takes
    /// nor the memory it leaves grows with the runs stored before the window.
    pub fn bootstrap(&self, store: &Store, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let since = now - self.window;
        let mut loaded = 0;
        for run in store.runs_finished_since(since)? {
            if !run.status.is_finished() {
                continue;
            }
            if parse_time(run.finished_at.as_deref()).is_some_and(|at| at > since) {
                let steps = store.steps(&run.id)?;
                self.record(run.borrowed(), &steps);
                loaded += 1;
            }
        }
        Ok(loaded)
    }

    /// Adds a finished run and its steps (a run not finished is ignored; one recorded again
    /// replaces its entry). Runs that left the window are dropped at the next question.
    pub fn record(&self, run: RunHeadRef<'_>, steps: &[StepRecord]) {
        if !run.status.is_finished() {
            return;
        }
        let finished = parse_time(run.finished_at).unwrap_or_else(Utc::now);
        let entry = RunEntry {
            workflow_id: run.workflow_id.to_owned(),
            workflow_name: run.workflow_name.to_owned(),
            status: run.status,
            duration_seconds: run.duration_ms.map(|ms| ms as f64 / 1000.0),
            steps: steps
                .iter()
                .filter(|s| s.status.is_finished() && s.status != Status::Skipped)
                .map(|s| StepEntry {
                    agent: s.agent.clone(),
                    status: s.status,
                    duration_seconds: s.duration_ms.map(|ms| ms as f64 / 1000.0),
                    cpu_seconds: s.cpu_seconds(),
                    max_rss_bytes: s.max_rss_bytes(),
                })
                .collect(),
            cases: steps
                .iter()
                .flat_map(|s| &s.tests)
                .map(|c| CaseEntry {
                    suite: c.suite.clone(),
                    classname: c.classname.clone(),
                    name: c.name.clone(),
                    status: c.status,
                    time_seconds: c.time_seconds,
                })
                .collect(),
            new_failures: u64::from(run.tests.new_failures),
            quarantined: u64::from(run.tests.quarantined),
        };
        let mut inner = self.lock();
        for step in steps.iter().filter(|s| is_failure(s.status)) {
            let at = parse_time(step.finished_at.as_deref()).unwrap_or(finished);
            let newer = inner
                .last_errors
                .get(&step.agent)
                .is_none_or(|e| e.at <= at);
            if newer {
                inner.last_errors.insert(
                    step.agent.clone(),
                    ErrorEntry {
                        at,
                        message: step
                            .message
                            .clone()
                            .unwrap_or_else(|| format!("step {}", step.status)),
                        run_id: run.id.to_owned(),
                        step: step.name.clone(),
                    },
                );
            }
        }
        inner.runs.insert((finished, run.id.to_owned()), entry);
        inner.snapshot = None;
    }

    /// Replaces the health check results with those of the latest round (agents not in
    /// `checks` are forgotten).
    pub fn set_health(&self, checks: Vec<(String, HealthCheck)>) {
        let mut inner = self.lock();
        inner.health = checks.into_iter().collect();
    }

    /// The latest health check of an agent.
    pub fn health(&self, agent: &str) -> Option<HealthCheck> {
        self.lock().health.get(agent).cloned()
    }

    /// Drops entries that left the window and rebuilds the snapshot when needed.
    fn snapshot(&self, inner: &mut Inner, now: DateTime<Utc>) -> Arc<Snapshot> {
        let since = now - self.window;
        let expired: Vec<(DateTime<Utc>, String)> = inner
            .runs
            .keys()
            .take_while(|(at, _)| *at <= since)
            .cloned()
            .collect();
        if !expired.is_empty() {
            for key in expired {
                inner.runs.remove(&key);
            }
            inner.snapshot = None;
        }
        if let Some(snapshot) = &inner.snapshot {
            return Arc::clone(snapshot);
        }
        let snapshot = Arc::new(build(inner.runs.values()));
        inner.snapshot = Some(Arc::clone(&snapshot));
        snapshot
    }

    /// The value of a `workflow.*`, `tests.*` or `agent.*` metric at `now`, or `None` when
    /// there is none: a rate or percentile without runs in the window, a workflow label
    /// matching no run in the window (counts are 0 then), an agent never seen, a metric of
    /// another family (`system.*`), or a label the metric does not take.
    ///
    /// The `workflow` label matches a workflow's id or its name.
    pub fn value(&self, metric: &MetricRef, now: DateTime<Utc>) -> Option<f64> {
        let name = metric.name.as_str();
        let label = |key: &str| -> Result<Option<&str>, ()> {
            let mut found = None;
            for (k, v) in &metric.labels {
                if k != key {
                    return Err(());
                }
                found = Some(v.as_str());
            }
            Ok(found)
        };
        let family = match name.strip_prefix("workflow.") {
            Some(field) => Some((false, field)),
            None => name.strip_prefix("tests.").map(|field| (true, field)),
        };
        if let Some((is_tests, field)) = family {
            let workflow = label("workflow").ok()?;
            let mut inner = self.lock();
            let snapshot = self.snapshot(&mut inner, now);
            drop(inner);
            let empty = WorkflowAgg::default();
            let agg = match workflow {
                None => &snapshot.all_workflows,
                Some(w) => snapshot
                    .workflows
                    .get(w)
                    .or_else(|| {
                        snapshot
                            .names
                            .get(w)
                            .and_then(|id| snapshot.workflows.get(id))
                    })
                    .unwrap_or(&empty),
            };
            return match (is_tests, field) {
                (false, "failure_rate") => ratio(agg.failed, agg.runs),
                (false, "success_rate") => ratio(agg.succeeded, agg.runs),
                (false, "duration_p95_seconds") => agg.duration_p95,
                (false, "runs") => Some(agg.runs as f64),
                (true, "pass_rate") => ratio(agg.tests_passed, agg.tests_passed + agg.tests_failed),
                (true, "failed") => Some(agg.tests_failed as f64),
                (true, "flaky") => Some(agg.flaky as f64),
                (true, "new_failures") => Some(agg.new_failures as f64),
                (true, "quarantined") => Some(agg.quarantined as f64),
                _ => None,
            };
        }
        let rest = name.strip_prefix("agent.")?;
        let (agent, suffix) = match rest.split_once('.') {
            Some((agent, suffix)) => {
                if !metric.labels.is_empty() {
                    return None;
                }
                (Some(agent), suffix)
            }
            None => (label("agent").ok()?, rest),
        };
        let mut inner = self.lock();
        let snapshot = self.snapshot(&mut inner, now);
        if suffix == "health_score" {
            return match agent {
                Some(agent) => self.health_score(&inner, &snapshot, agent, now),
                None => known_agents(&inner, &snapshot)
                    .into_iter()
                    .filter_map(|a| self.health_score(&inner, &snapshot, &a, now))
                    .reduce(f64::min),
            };
        }
        drop(inner);
        let empty = AgentAgg::default();
        let agg = match agent {
            None => &snapshot.all_agents,
            Some(agent) => snapshot.agents.get(agent).unwrap_or(&empty),
        };
        match suffix {
            "executions" => Some(agg.executions as f64),
            "success_rate" => ratio(agg.succeeded, agg.executions),
            "error_rate" => ratio(agg.failed, agg.executions),
            "duration_p95_seconds" => agg.duration_p95,
            _ => None,
        }
    }

    /// The health score of an agent known from a run, an error or a health check.
    fn health_score(
        &self,
        inner: &Inner,
        snapshot: &Snapshot,
        agent: &str,
        now: DateTime<Utc>,
    ) -> Option<f64> {
        let agg = snapshot.agents.get(agent);
        let check = inner.health.get(agent);
        let error = inner.last_errors.get(agent);
        if agg.is_none() && check.is_none() && error.is_none() {
            return None;
        }
        Some(health_score(
            agg.and_then(|a| ratio(a.succeeded, a.executions)),
            check.map(|c| c.status),
            error.map(|e| (now - e.at).num_milliseconds().max(0) as f64 / 1000.0),
        ))
    }

    /// A workflow's metrics, by id or name; `None` when it has no run in the window.
    pub fn workflow(&self, id_or_name: &str, now: DateTime<Utc>) -> Option<WorkflowMetrics> {
        let mut inner = self.lock();
        let snapshot = self.snapshot(&mut inner, now);
        drop(inner);
        let (id, agg) = snapshot.workflows.get_key_value(id_or_name).or_else(|| {
            snapshot
                .names
                .get(id_or_name)
                .and_then(|id| snapshot.workflows.get_key_value(id))
        })?;
        Some(self.workflow_metrics(id, agg))
    }

    /// A workflow's metrics, with zero runs when it has none in the window.
    pub fn workflow_or_empty(&self, id: &str, name: &str, now: DateTime<Utc>) -> WorkflowMetrics {
        self.workflow(id, now).unwrap_or_else(|| {
            self.workflow_metrics(
                id,
                &WorkflowAgg {
                    name: name.to_owned(),
                    ..WorkflowAgg::default()
                },
            )
        })
    }

    /// The metrics of every workflow with runs in the window, by id.
    pub fn workflows(&self, now: DateTime<Utc>) -> Vec<WorkflowMetrics> {
        let mut inner = self.lock();
        let snapshot = self.snapshot(&mut inner, now);
        drop(inner);
        snapshot
            .workflows
            .iter()
            .map(|(id, agg)| self.workflow_metrics(id, agg))
            .collect()
    }

    fn workflow_metrics(&self, id: &str, agg: &WorkflowAgg) -> WorkflowMetrics {
        WorkflowMetrics {
            workflow_id: id.to_owned(),
            workflow_name: agg.name.clone(),
            window_seconds: self.window_seconds(),
            runs: agg.runs,
            succeeded: agg.succeeded,
            failed: agg.failed,
            failure_rate: ratio(agg.failed, agg.runs),
            success_rate: ratio(agg.succeeded, agg.runs),
            duration_p95_seconds: agg.duration_p95,
            tests: TestMetrics {
                pass_rate: ratio(agg.tests_passed, agg.tests_passed + agg.tests_failed),
                passed: agg.tests_passed,
                failed: agg.tests_failed,
                skipped: agg.tests_skipped,
                flaky: agg.flaky,
                new_failures: agg.new_failures,
                quarantined: agg.quarantined,
                slowest: agg.slowest.clone(),
                most_failing: agg.most_failing.clone(),
            },
        }
    }

    /// An agent's metrics; `None` when the agent has no step in the window, no recorded
    /// error and no health check.
    pub fn agent(&self, name: &str, now: DateTime<Utc>) -> Option<AgentMetrics> {
        let mut inner = self.lock();
        let snapshot = self.snapshot(&mut inner, now);
        self.agent_metrics(&inner, &snapshot, name, now)
    }

    /// An agent's metrics, with nothing counted when it is unknown to the stats.
    pub fn agent_or_empty(&self, name: &str, now: DateTime<Utc>) -> AgentMetrics {
        self.agent(name, now).unwrap_or_else(|| AgentMetrics {
            agent: name.to_owned(),
            window_seconds: self.window_seconds(),
            executions: 0,
            succeeded: 0,
            failed: 0,
            success_rate: None,
            error_rate: None,
            duration_p50_seconds: None,
            duration_p95_seconds: None,
            cpu_seconds: None,
            max_rss_bytes: None,
            health_score: health_score(None, None, None),
            health_check: None,
            last_error: None,
        })
    }

    /// The metrics of every agent known from a step in the window, an error or a health
    /// check, by name.
    pub fn agents(&self, now: DateTime<Utc>) -> Vec<AgentMetrics> {
        let mut inner = self.lock();
        let snapshot = self.snapshot(&mut inner, now);
        known_agents(&inner, &snapshot)
            .into_iter()
            .filter_map(|name| self.agent_metrics(&inner, &snapshot, &name, now))
            .collect()
    }

    fn agent_metrics(
        &self,
        inner: &Inner,
        snapshot: &Snapshot,
        name: &str,
        now: DateTime<Utc>,
    ) -> Option<AgentMetrics> {
        let score = self.health_score(inner, snapshot, name, now)?;
        let agg = snapshot.agents.get(name).cloned().unwrap_or_default();
        Some(AgentMetrics {
            agent: name.to_owned(),
            window_seconds: self.window_seconds(),
            executions: agg.executions,
            succeeded: agg.succeeded,
            failed: agg.failed,
            success_rate: ratio(agg.succeeded, agg.executions),
            error_rate: ratio(agg.failed, agg.executions),
            duration_p50_seconds: agg.duration_p50,
            duration_p95_seconds: agg.duration_p95,
            cpu_seconds: agg.cpu_seconds,
            max_rss_bytes: agg.max_rss_bytes,
            health_score: score,
            health_check: inner.health.get(name).cloned(),
            last_error: inner.last_errors.get(name).map(|e| LastError {
                message: e.message.clone(),
                at: e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                run_id: e.run_id.clone(),
                step: e.step.clone(),
            }),
        })
    }

    /// Prometheus gauges of every agent (label `agent`) and workflow (label `workflow`, the
    /// id) over the window, in the text exposition format (see [`super::metrics`]); a value
    /// that is `None` is left out.
    pub fn prometheus(&self, now: DateTime<Utc>) -> String {
        let agents = self.agents(now);
        let workflows = self.workflows(now);
        let mut scrape = super::metrics::Scrape::default();
        let agent = |a: &AgentMetrics| a.agent.clone();
        let window = format!("over the metrics window ({} s)", self.window_seconds());
        type AgentField = fn(&AgentMetrics) -> Option<f64>;
        let agent_families: [(&str, &str, AgentField); 7] = [
            (
                "orchestrator_agent_executions",
                "Steps an agent ran that succeeded, failed or timed out",
                |a| Some(a.executions as f64),
            ),
            (
                "orchestrator_agent_success_rate",
                "Share of an agent's executions that succeeded",
                |a| a.success_rate,
            ),
            (
                "orchestrator_agent_error_rate",
                "Share of an agent's executions that failed or timed out",
                |a| a.error_rate,
            ),
            (
                "orchestrator_agent_cpu_seconds",
                "CPU seconds of the processes an agent's steps ran",
                |a| a.cpu_seconds,
            ),
            (
                "orchestrator_agent_max_rss_bytes",
                "Peak resident memory of the largest process an agent's steps ran",
                |a| a.max_rss_bytes.map(|b| b as f64),
            ),
            (
                "orchestrator_agent_health_score",
                "Agent health score, 0 to 1",
                |a| Some(a.health_score),
            ),
            (
                "orchestrator_agent_healthy",
                "1 when the agent's latest health check passed, 0 when it failed",
                |a| match a.health_check.as_ref().map(|c| c.status) {
                    Some(HealthStatus::Passed) => Some(1.0),
                    Some(HealthStatus::Failed) => Some(0.0),
                    _ => None,
                },
            ),
        ];
        for (name, help, field) in agent_families {
            let help = if name.ends_with("healthy") {
                help.to_owned()
            } else {
                format!("{help}, {window}.")
            };
            scrape.gauge_family(
                name,
                &help,
                "agent",
                agents.iter().map(|a| (agent(a), field(a))),
            );
        }
        // Gauges over the window; `/metrics` also has the histogram of every step since the
        // server started (`orchestrator_agent_step_duration_seconds`).
        scrape.gauge_family(
            "orchestrator_agent_step_duration_p50_seconds",
            &format!("Median step duration of an agent, {window}."),
            "agent",
            agents.iter().map(|a| (agent(a), a.duration_p50_seconds)),
        );
        scrape.gauge_family(
            "orchestrator_agent_step_duration_p95_seconds",
            &format!("95th percentile of an agent's step durations, {window}."),
            "agent",
            agents.iter().map(|a| (agent(a), a.duration_p95_seconds)),
        );
        let workflow = |w: &WorkflowMetrics| w.workflow_id.clone();
        type WorkflowField = fn(&WorkflowMetrics) -> Option<f64>;
        let workflow_families: [(&str, &str, WorkflowField); 9] = [
            (
                "orchestrator_workflow_runs",
                "Runs of a workflow that succeeded, failed or timed out",
                |w| Some(w.runs as f64),
            ),
            (
                "orchestrator_workflow_failure_rate",
                "Share of a workflow's runs that failed or timed out",
                |w| w.failure_rate,
            ),
            (
                "orchestrator_workflow_success_rate",
                "Share of a workflow's runs that succeeded",
                |w| w.success_rate,
            ),
            (
                "orchestrator_workflow_duration_p95_seconds",
                "95th percentile of a workflow's run durations",
                |w| w.duration_p95_seconds,
            ),
            (
                "orchestrator_workflow_tests_pass_rate",
                "Share of a workflow's test cases that passed (skipped left out)",
                |w| w.tests.pass_rate,
            ),
            (
                "orchestrator_workflow_tests_failed",
                "Test cases of a workflow that failed or errored",
                |w| Some(w.tests.failed as f64),
            ),
            (
                "orchestrator_workflow_tests_flaky",
                "Test cases of a workflow that both passed and failed",
                |w| Some(w.tests.flaky as f64),
            ),
            (
                "orchestrator_workflow_tests_new_failures",
                "Test cases of a workflow that failed after passing, by its runs' classification",
                |w| Some(w.tests.new_failures as f64),
            ),
            (
                "orchestrator_workflow_tests_quarantined",
                "Failed test cases of a workflow that a Quarantine manifest covered",
                |w| Some(w.tests.quarantined as f64),
            ),
        ];
        for (name, help, field) in workflow_families {
            scrape.gauge_family(
                name,
                &format!("{help}, {window}."),
                "workflow",
                workflows.iter().map(|w| (workflow(w), field(w))),
            );
        }
        scrape.render()
    }
}

impl super::MetricSource for RunStats {
    /// [`RunStats::value`] now.
    fn value(&self, metric: &MetricRef) -> Option<f64> {
        RunStats::value(self, metric, Utc::now())
    }
}

/// The health score of the [module docs](self): `success_rate` `None` without executions,
/// `check` `None` before the first, `error_age_seconds` `None` without an error.
pub fn health_score(
    success_rate: Option<f64>,
    check: Option<HealthStatus>,
    error_age_seconds: Option<f64>,
) -> f64 {
    let check = if check == Some(HealthStatus::Failed) {
        0.0
    } else {
        1.0
    };
    let recency = error_age_seconds.map_or(0.0, |age| (-age / ERROR_FADE_SECONDS).exp());
    let score = check * (0.8 * success_rate.unwrap_or(1.0) + 0.2 * (1.0 - recency));
    score.clamp(0.0, 1.0)
}

fn known_agents(inner: &Inner, snapshot: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .agents
        .keys()
        .chain(inner.health.keys())
        .chain(inner.last_errors.keys())
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

#[derive(Default)]
struct CaseAgg {
    runs: u64,
    passes: u64,
    failures: u64,
    max_time: f64,
}

/// Builds the aggregates of the runs in the window.
fn build<'a>(runs: impl Iterator<Item = &'a RunEntry>) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let mut durations: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut all_durations = Vec::new();
    // By workflow id, then (suite, classname, name).
    let mut cases: BTreeMap<&str, BTreeMap<(&str, &str, &str), CaseAgg>> = BTreeMap::new();
    let mut step_durations: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut all_step_durations = Vec::new();
    for run in runs {
        for step in &run.steps {
            let agg = snapshot.agents.entry(step.agent.clone()).or_default();
            for agg in [agg, &mut snapshot.all_agents] {
                if let Some(cpu) = step.cpu_seconds {
                    agg.cpu_seconds = Some(agg.cpu_seconds.unwrap_or(0.0) + cpu);
                }
                if let Some(rss) = step.max_rss_bytes {
                    agg.max_rss_bytes = Some(agg.max_rss_bytes.unwrap_or(0).max(rss));
                }
                if decided(step.status) {
                    agg.executions += 1;
                    if is_failure(step.status) {
                        agg.failed += 1;
                    } else {
                        agg.succeeded += 1;
                    }
                }
            }
            if decided(step.status) {
                if let Some(d) = step.duration_seconds {
                    step_durations.entry(&step.agent).or_default().push(d);
                    all_step_durations.push(d);
                }
            }
        }
        if !decided(run.status) {
            continue;
        }
        snapshot
            .names
            .insert(run.workflow_name.clone(), run.workflow_id.clone());
        let agg = snapshot
            .workflows
            .entry(run.workflow_id.clone())
            .or_default();
        agg.name.clone_from(&run.workflow_name);
        for agg in [agg, &mut snapshot.all_workflows] {
            agg.runs += 1;
            if is_failure(run.status) {
                agg.failed += 1;
            } else {
                agg.succeeded += 1;
            }
            agg.new_failures += run.new_failures;
            agg.quarantined += run.quarantined;
            for case in &run.cases {
                match case.status {
                    TestStatus::Passed => agg.tests_passed += 1,
                    TestStatus::Failed | TestStatus::Error => agg.tests_failed += 1,
                    TestStatus::Skipped => agg.tests_skipped += 1,
                }
            }
        }
        if let Some(d) = run.duration_seconds {
            durations.entry(&run.workflow_id).or_default().push(d);
            all_durations.push(d);
        }
        let by_case = cases.entry(&run.workflow_id).or_default();
        for case in &run.cases {
            let agg = by_case
                .entry((&case.suite, &case.classname, &case.name))
                .or_default();
            agg.runs += 1;
            match case.status {
                TestStatus::Passed => agg.passes += 1,
                TestStatus::Failed | TestStatus::Error => agg.failures += 1,
                TestStatus::Skipped => {}
            }
            agg.max_time = agg.max_time.max(case.time_seconds);
        }
    }
    for (agent, mut values) in step_durations {
        if let Some(agg) = snapshot.agents.get_mut(agent) {
            agg.duration_p50 = percentile(&mut values, 0.5);
            agg.duration_p95 = percentile(&mut values, 0.95);
        }
    }
    snapshot.all_agents.duration_p50 = percentile(&mut all_step_durations, 0.5);
    snapshot.all_agents.duration_p95 = percentile(&mut all_step_durations, 0.95);
    for (id, mut values) in durations {
        if let Some(agg) = snapshot.workflows.get_mut(id) {
            agg.duration_p95 = percentile(&mut values, 0.95);
        }
    }
    snapshot.all_workflows.duration_p95 = percentile(&mut all_durations, 0.95);
    let mut all_slowest = Vec::new();
    let mut all_failing = Vec::new();
    for (id, by_case) in cases {
        let flaky = by_case
            .values()
            .filter(|c| c.passes > 0 && c.failures > 0)
            .count() as u64;
        let listed: Vec<TestCaseMetrics> = by_case
            .iter()
            .map(|((suite, classname, name), c)| TestCaseMetrics {
                suite: (*suite).to_owned(),
                classname: (*classname).to_owned(),
                name: (*name).to_owned(),
                runs: c.runs,
                failures: c.failures,
                max_time_seconds: c.max_time,
            })
            .collect();
        let slowest = top(
            &listed,
            |c| c.max_time_seconds > 0.0,
            |a, b| b.max_time_seconds.total_cmp(&a.max_time_seconds),
        );
        let failing = top(
            &listed,
            |c| c.failures > 0,
            |a, b| b.failures.cmp(&a.failures),
        );
        all_slowest.extend(slowest.iter().cloned());
        all_failing.extend(failing.iter().cloned());
        snapshot.all_workflows.flaky += flaky;
        if let Some(agg) = snapshot.workflows.get_mut(id) {
            agg.flaky = flaky;
            agg.slowest = slowest;
            agg.most_failing = failing;
        }
    }
    snapshot.all_workflows.slowest = top(
        &all_slowest,
        |_| true,
        |a, b| b.max_time_seconds.total_cmp(&a.max_time_seconds),
    );
    snapshot.all_workflows.most_failing =
        top(&all_failing, |_| true, |a, b| b.failures.cmp(&a.failures));
    snapshot
}

/// The first [`TOP_TESTS`] cases that pass `keep`, in `order` (stable: ties keep their
/// name order).
fn top(
    cases: &[TestCaseMetrics],
    keep: impl Fn(&TestCaseMetrics) -> bool,
    order: impl Fn(&TestCaseMetrics, &TestCaseMetrics) -> std::cmp::Ordering,
) -> Vec<TestCaseMetrics> {
    let mut kept: Vec<TestCaseMetrics> = cases.iter().filter(|c| keep(c)).cloned().collect();
    kept.sort_by(|a, b| order(a, b));
    kept.truncate(TOP_TESTS);
    kept
}

#[cfg(test)]
mod tests;
