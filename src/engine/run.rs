//! Creating and executing runs. A run's steps form a DAG (in listed order when no step has
//! `depends_on`); ready steps start up to `max_parallel` at a time, each in a worker thread
//! that runs its agent, with retries and backoff; timeouts and cancellation stop the step's
//! process group. Every state change is written to the store, and flushed before it is
//! reported: one flush covers all the steps that finished and started together.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::admission::{AgentSwitches, Policy, Refusal, RunAdmission};
use super::agent_logs::AgentLogs;
use super::env::{self, EnvValue};
use super::expand::{self, ConditionContext, Expanded, Scope, StepState};
use super::mask::StepLog;
use super::process::{signal_group, StepControl, StopReason};
use crate::agents::runtime::{agent_for, Outcome, ReportData, StepContext};
use crate::manifest::Kind;
use crate::model::{Attempt, RunRecord, Status, StepRecord, TestSummary, Trigger};
use crate::spec::agents::{builtin, BUILTIN_AGENTS};
use crate::spec::params;
use crate::store::{ObjectKey, ObjectRecord, Store, StoreError};

/// Where a run's files go and the limits it runs under.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The project directory: default working directory of steps.
    pub project_dir: PathBuf,
    /// `logs/`: step logs under `workflows/<run>/`, agent logs under `agents/`.
    pub log_dir: PathBuf,
    /// `reports/`.
    pub reports_dir: PathBuf,
    /// The data directory (for cancel requests from other processes).
    pub data_dir: PathBuf,
    /// Runs kept per workflow unless the workflow sets `history_limit`.
    pub history_limit: usize,
    /// Steps running at once unless the workflow sets `max_parallel`.
    pub max_parallel: usize,
    /// The runs active in this process, for `concurrency` policies.
    pub admission: Arc<RunAdmission>,
    /// Agents switched off or on while the process runs.
    pub agent_switches: Arc<AgentSwitches>,
    /// The most bytes a step's log holds; output past it is drained and dropped.
    pub max_log_bytes: u64,
    /// The agents' own logs, rotated by size.
    pub agent_logs: Arc<AgentLogs>,
}

/// Something that happened to a run, reported after it is durable.
#[derive(Debug, Clone)]
pub enum Event {
    /// A step started (or started again, for a retry).
    StepStarted {
        /// The step.
        step: StepRecord,
    },
    /// A step reached its final state.
    StepFinished {
        /// The step.
        step: StepRecord,
    },
    /// An attempt failed and will be retried.
    StepRetrying {
        /// The step.
        step: StepRecord,
        /// Seconds until the next attempt.
        delay: Duration,
    },
}

/// Why a run could not be created or executed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No such workflow.
    #[error("{0}")]
    NotFound(String),
    /// Parameters or the workflow are not acceptable; nothing ran.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Finds a live workflow by id, or by name when no id matches, among the object records.
pub fn find_workflow_in(
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    id_or_name: &str,
) -> Result<ObjectRecord, EngineError> {
    let workflows: Vec<&ObjectRecord> = objects
        .values()
        .filter(|r| r.key.kind == Kind::Workflow && r.is_live())
        .collect();
    if let Some(found) = workflows
        .iter()
        .find(|r| r.key.id == id_or_name)
        .or_else(|| workflows.iter().find(|r| r.name == id_or_name))
    {
        return Ok((*found).clone());
    }
    // A workflow whose manifest never applied is in the store as invalid: say why.
    if let Some(invalid) = objects.values().find(|r| {
        r.key.kind == Kind::Workflow
            && r.status == crate::store::ObjectStatus::Invalid
            && (r.key.id == id_or_name || r.name == id_or_name)
    }) {
        let first = invalid
            .diagnostics
            .iter()
            .find(|d| d.is_error())
            .map_or_else(
                || "see `orchestrator validate`".to_owned(),
                |d| format!("{} (at {})", d.message, d.location()),
            );
        return Err(EngineError::NotFound(format!(
            "workflow `{}` is invalid: {first}; it never applied: fix {} and apply it",
            invalid.key.id, invalid.source_file
        )));
    }
    let hint = crate::util::did_you_mean(id_or_name, workflows.iter().map(|r| r.key.id.as_str()))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(EngineError::NotFound(format!(
        "no workflow `{id_or_name}` in the store{hint} (`orchestrator workflow list` shows them; apply new manifests first)"
    )))
}

/// The step of a run named `name`, or a not-found error listing the run's steps: the one
/// lookup the API's step log and `run logs RUN STEP` share.
pub fn find_step<'a>(
    run_id: &str,
    steps: &'a [StepRecord],
    name: &str,
) -> Result<&'a StepRecord, EngineError> {
    steps.iter().find(|s| s.name == name).ok_or_else(|| {
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        EngineError::NotFound(format!(
            "run `{run_id}` has no step `{name}`; its steps: {}",
            names.join(", ")
        ))
    })
}

/// The workflow after template expansion (templates looked up among the object records),
/// with its declared parameters.
pub fn expand_workflow_in(
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    spec: &Value,
) -> Result<Expanded, EngineError> {
    expand::expand(spec, |name| {
        objects
            .values()
            .filter(|r| r.key.kind == Kind::WorkflowTemplate && r.is_live())
            .find(|r| {
                r.key.id == name
                    || r.name == name
                    || r.spec
                        .as_ref()
                        .and_then(|s| s.get("template"))
                        .and_then(Value::as_str)
                        == Some(name)
            })
            .and_then(|r| r.spec.clone())
    })
    .map_err(EngineError::Invalid)
}

/// What a new run needs.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Workflow id or name.
    pub workflow: String,
    /// Parameters given (`--params`).
    pub parameters: Map<String, Value>,
    /// What started it.
    pub trigger: Trigger,
}

/// A sortable unique run id.
pub fn new_run_id() -> String {
    format!("run_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// The smallest run id a run created at or after `at` can have (run ids sort by creation
/// time): where to start reading runs created since then.
pub fn first_run_id_at(at: std::time::SystemTime) -> String {
    let millis = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    format!(
        "run_{}",
        ulid::Ulid::from_parts(millis, 0).to_string().to_lowercase()
    )
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Creates a queued run: the workflow expanded, parameters checked, every step queued, all
/// stored durably. Nothing runs yet.
pub fn create_run(
    store: &Store,
    request: &RunRequest,
) -> Result<(RunRecord, Vec<StepRecord>), EngineError> {
    create_run_in(store, &store.objects()?, request)
}

/// A created run and its queued steps.
pub type Created = (RunRecord, Vec<StepRecord>);

/// Creates several queued runs against records already read, stored in one durable batch:
/// what a scheduler firing many schedules at once needs. One result per request.
pub fn create_runs_in(
    store: &Store,
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    requests: &[RunRequest],
) -> Result<Vec<Result<Created, EngineError>>, StoreError> {
    let created: Vec<_> = requests.iter().map(|r| prepare_run(objects, r)).collect();
    let mut any = false;
    for (run, steps) in created.iter().flatten() {
        store.save_run(Some(run), &steps.iter().collect::<Vec<_>>(), false)?;
        any = true;
    }
    if any {
        store.save_run(None, &[], true)?;
    }
    Ok(created)
}

/// [`create_run`] against records already read (the server's in-memory view).
pub fn create_run_in(
    store: &Store,
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    request: &RunRequest,
) -> Result<(RunRecord, Vec<StepRecord>), EngineError> {
    let created = prepare_run(objects, request)?;
    store.save_run(
        Some(&created.0),
        &created.1.iter().collect::<Vec<_>>(),
        true,
    )?;
    Ok(created)
}

/// [`create_run_in`] without the flush: the run is written but durable only with the
/// caller's next flush (which it must make before reporting the run).
pub fn create_run_unflushed(
    store: &Store,
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    request: &RunRequest,
) -> Result<(RunRecord, Vec<StepRecord>), EngineError> {
    let created = prepare_run(objects, request)?;
    store.save_run(
        Some(&created.0),
        &created.1.iter().collect::<Vec<_>>(),
        false,
    )?;
    Ok(created)
}

/// The run and its queued steps for a request: the workflow found and expanded, the
/// parameters checked. Nothing is written.
fn prepare_run(
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    request: &RunRequest,
) -> Result<(RunRecord, Vec<StepRecord>), EngineError> {
    let record = find_workflow_in(objects, &request.workflow)?;
    let spec = record.spec.clone().unwrap_or_default();
    let expanded = expand_workflow_in(objects, &spec)?;
    let mut given = expanded.preset.clone();
    given.extend(request.parameters.clone());
    let parameters = params::resolve(expanded.declared.as_ref(), &given).map_err(|problems| {
        EngineError::Invalid(format!(
            "parameters of {} are not valid; nothing ran:\n{problems}",
            record.key.id
        ))
    })?;
    let run = new_run(
        &record.key.id,
        &record.name,
        expanded.workflow,
        parameters,
        request.trigger.clone(),
    )?;
    let steps = initial_steps(&run)?;
    Ok((run, steps))
}

fn new_run(
    workflow_id: &str,
    workflow_name: &str,
    workflow: Value,
    parameters: Map<String, Value>,
    trigger: Trigger,
) -> Result<RunRecord, EngineError> {
    let steps: Vec<String> = workflow
        .get("steps")
        .and_then(Value::as_array)
        .map(|steps| {
            steps
                .iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if steps.is_empty() {
        return Err(EngineError::Invalid(format!(
            "workflow {workflow_id} has no steps to run"
        )));
    }
    Ok(RunRecord {
        id: new_run_id(),
        workflow_id: workflow_id.to_owned(),
        workflow_name: workflow_name.to_owned(),
        status: Status::Queued,
        parameters,
        trigger,
        workflow,
        steps,
        created_at: now(),
        started_at: None,
        finished_at: None,
        duration_ms: None,
        message: None,
        tests: TestSummary::default(),
        rerun_of: None,
        pid: None,
    })
}

/// File-system-safe form of a step name for its log file.
pub fn log_name(step: &str) -> String {
    step.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn initial_steps(run: &RunRecord) -> Result<Vec<StepRecord>, EngineError> {
    let specs = run.workflow["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    specs
        .iter()
        .enumerate()
        .map(|(index, spec)| {
            let name = spec["name"].as_str().unwrap_or_default().to_owned();
            let (agent, action) = agent_and_action(spec);
            Ok(StepRecord {
                run_id: run.id.clone(),
                index: index as u32,
                log: format!("workflows/{}/{}.log", run.id, log_name(&name)),
                name,
                agent,
                action,
                status: Status::Queued,
                attempts: Vec::new(),
                started_at: None,
                finished_at: None,
                duration_ms: None,
                exit_code: None,
                message: None,
                outputs: Map::new(),
                pgid: None,
                tests: Vec::new(),
                artifacts: Vec::new(),
            })
        })
        .collect()
}

fn agent_and_action(spec: &Value) -> (String, String) {
    let agent = spec
        .get("agent")
        .and_then(Value::as_str)
        .unwrap_or("shell")
        .to_owned();
    let action = spec
        .get("action")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| builtin(&agent).map(|b| b.actions[0].to_owned()))
        .unwrap_or_else(|| "run".to_owned());
    (agent, action)
}

/// Whether a finished run can be re-run as asked: a from-failed re-run needs something
/// that did not succeed. The local CLI and the server both ask this before re-running.
pub fn check_rerun(original: &RunRecord, from_failed: bool) -> Result<(), EngineError> {
    if !original.status.is_finished() {
        return Err(EngineError::Invalid(format!(
            "run {} is {}: wait for it to finish or cancel it first",
            original.id, original.status
        )));
    }
    if from_failed && original.status == Status::Succeeded {
        return Err(EngineError::Invalid(format!(
            "run {} succeeded: nothing failed to re-run",
            original.id
        )));
    }
    Ok(())
}

/// Creates a run that repeats an earlier one: same workflow as it ran, same parameters. With
/// `from_failed`, a step keeps its earlier result only when it succeeded and so did every
/// step upstream of it (see [`reusable_steps`]); the steps that did not succeed and
/// everything downstream of them run again.
pub fn create_rerun(
    store: &Store,
    original: &RunRecord,
    from_failed: bool,
) -> Result<(RunRecord, Vec<StepRecord>), EngineError> {
    check_rerun(original, from_failed)?;
    let mut details = Map::new();
    details.insert("run".into(), Value::from(original.id.clone()));
    details.insert("from_failed".into(), Value::from(from_failed));
    let mut run = new_run(
        &original.workflow_id,
        &original.workflow_name,
        original.workflow.clone(),
        original.parameters.clone(),
        Trigger {
            kind: "rerun".into(),
            details,
        },
    )?;
    run.rerun_of = Some(original.id.clone());
    let mut steps = initial_steps(&run)?;
    if from_failed {
        let previous = store.steps(&original.id)?;
        let agents = agent_configs(&store.objects()?);
        let reuse = reusable_steps(&run.workflow, &agents, &previous);
        for (step, reuse) in steps.iter_mut().zip(reuse) {
            let Some(old) = reuse
                .then(|| previous.iter().find(|o| o.name == step.name))
                .flatten()
            else {
                continue;
            };
            step.status = Status::Succeeded;
            step.outputs = old.outputs.clone();
            step.tests = old.tests.clone();
            step.exit_code = old.exit_code;
            step.message = Some(format!("reused from {}", original.id));
        }
    }
    store.save_run(Some(&run), &steps.iter().collect::<Vec<_>>(), true)?;
    Ok((run, steps))
}

/// Which steps of `workflow` a from-failed re-run keeps from the earlier run's `previous`
/// steps, in the workflow's order: a step that succeeded, none of whose upstream steps
/// (through `depends_on`, transitively, or every earlier step when no step has
/// `depends_on`) failed, was skipped or did not finish. Report steps never are: they
/// report on the run that holds them, so a re-run writes its own.
pub fn reusable_steps(
    workflow: &Value,
    agents: &BTreeMap<String, Value>,
    previous: &[StepRecord],
) -> Vec<bool> {
    let planned = plan(workflow, agents);
    let succeeded: Vec<bool> = workflow["steps"]
        .as_array()
        .map(|specs| {
            specs
                .iter()
                .map(|spec| {
                    let name = spec["name"].as_str().unwrap_or_default();
                    previous
                        .iter()
                        .any(|o| o.name == name && o.status == Status::Succeeded)
                })
                .collect()
        })
        .unwrap_or_default();
    planned
        .iter()
        .enumerate()
        .map(|(index, step)| {
            succeeded.get(index) == Some(&true)
                && step
                    .upstream
                    .iter()
                    .all(|&u| succeeded.get(u) == Some(&true))
                && !is_report_step(&step.agent, agents)
        })
        .collect()
}

/// Whether a step's agent writes run reports: the built-in `report_generator`, or an Agent
/// manifest of that type.
fn is_report_step(agent: &str, agents: &BTreeMap<String, Value>) -> bool {
    agent == "report_generator"
        || agents
            .get(agent)
            .and_then(|a| a.get("type"))
            .and_then(Value::as_str)
            == Some("report_generator")
}

/// Marks runs left `running` by a process that is gone as `interrupted`, kills what is left
/// of their steps' process groups, and returns their ids. Call with the store held: no other
/// process can be running them.
pub fn recover(store: &Store) -> Result<Vec<String>, StoreError> {
    let mut recovered = Vec::new();
    for id in store.run_ids_with_status(&[Status::Running])? {
        let Some(mut run) = store.run(&id)? else {
            continue;
        };
        if run.status != Status::Running {
            continue;
        }
        let at = now();
        let mut steps = store.steps(&run.id)?;
        for step in &mut steps {
            if step.status.is_finished() {
                continue;
            }
            if let Some(pgid) = step.pgid.take() {
                signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
            }
            step.status = Status::Interrupted;
            step.finished_at = Some(at.clone());
            step.message = Some("the process running this step went away".into());
        }
        run.status = Status::Interrupted;
        run.finished_at = Some(at);
        run.message = Some(format!(
            "interrupted: the process running it ({}) ended before the run finished",
            run.pid
                .map_or("unknown PID".to_owned(), |p| format!("PID {p}"))
        ));
        store.save_run(Some(&run), &steps.iter().collect::<Vec<_>>(), false)?;
        recovered.push(run.id.clone());
    }
    if !recovered.is_empty() {
        store.save_run(None, &[], true)?;
        let orphans = super::process::kill_orphaned_steps(&recovered.iter().cloned().collect());
        if orphans > 0 {
            tracing::warn!(
                "stopped {orphans} step process group(s) left running by the process that ended"
            );
        }
    }
    Ok(recovered)
}

/// Where another process asks for a run to be cancelled.
pub fn cancel_request_path(data_dir: &Path, run_id: &str) -> PathBuf {
    data_dir.join("control").join(format!("cancel-{run_id}"))
}

/// One step as the executor schedules it.
struct Planned {
    agent: String,
    /// The agent's `max_concurrent`: steps of it running at once in this process.
    max_concurrent: Option<usize>,
    spec: Value,
    deps: Vec<usize>,
    /// Transitive dependencies.
    upstream: Vec<usize>,
    timeout: Option<Duration>,
    retries: u32,
    retry_delay: Duration,
    continue_on_error: bool,
    condition: Option<String>,
}

fn duration_field(value: Option<&Value>) -> Option<Duration> {
    match value? {
        Value::Number(n) => n.as_f64().map(Duration::from_secs_f64),
        Value::String(text) => crate::duration::parse_duration(text).ok(),
        _ => None,
    }
}

fn plan(workflow: &Value, agents: &BTreeMap<String, Value>) -> Vec<Planned> {
    let specs = workflow["steps"].as_array().cloned().unwrap_or_default();
    let index: HashMap<String, usize> = specs
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s["name"].as_str().map(|n| (n.to_owned(), i)))
        .collect();
    let dag = specs.iter().any(|s| s.get("depends_on").is_some());
    let mut planned: Vec<Planned> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            let deps = if dag {
                spec.get("depends_on")
                    .and_then(Value::as_array)
                    .map(|d| {
                        d.iter()
                            .filter_map(|n| n.as_str().and_then(|n| index.get(n)).copied())
                            .collect()
                    })
                    .unwrap_or_default()
            } else if i > 0 {
                vec![i - 1]
            } else {
                Vec::new()
            };
            let (agent, action) = agent_and_action(spec);
            // The step's own timeout, else test_runner's `timeout` parameter, else the
            // agent manifest's default.
            let timeout = duration_field(spec.get("timeout"))
                .or_else(|| {
                    (agent == "test_runner" && action == "run_tests")
                        .then(|| {
                            duration_field(spec.get("parameters").and_then(|p| p.get("timeout")))
                        })
                        .flatten()
                })
                .or_else(|| duration_field(agents.get(&agent).and_then(|a| a.get("timeout"))));
            let max_concurrent = agents
                .get(&agent)
                .and_then(|a| a.get("max_concurrent"))
                .and_then(Value::as_u64)
                .map(|n| n as usize);
            Planned {
                agent,
                max_concurrent,
                deps,
                upstream: Vec::new(),
                timeout: timeout.filter(|t| !t.is_zero()),
                retries: spec.get("retries").and_then(Value::as_u64).unwrap_or(0) as u32,
                retry_delay: duration_field(spec.get("retry_delay"))
                    .unwrap_or(Duration::from_secs(1)),
                continue_on_error: spec
                    .get("continue_on_error")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                condition: spec.get("if").and_then(Value::as_str).map(str::to_owned),
                spec: spec.clone(),
            }
        })
        .collect();
    // Transitive closure; the workflow was validated acyclic, but guard anyway.
    for i in 0..planned.len() {
        let mut seen = vec![false; planned.len()];
        let mut stack = planned[i].deps.clone();
        while let Some(d) = stack.pop() {
            if d != i && !seen[d] {
                seen[d] = true;
                stack.extend(planned[d].deps.iter().copied());
            }
        }
        planned[i].upstream = (0..planned.len()).filter(|&d| seen[d]).collect();
    }
    planned
}

enum Message {
    AttemptStarted(usize, Instant),
    AttemptFailed(usize, Attempt, Duration),
    Done(usize, Box<Outcome>, Vec<Attempt>),
}

/// How a run is stopped from outside: a flag (Ctrl-C, a server's cancel) or a request file.
#[derive(Debug, Clone)]
pub struct CancelSignal {
    /// Set to cancel.
    pub flag: Arc<AtomicBool>,
}

/// Executes a created run to its end and returns it. `on_event` hears each durable change.
pub fn execute(
    store: &Store,
    config: &EngineConfig,
    run: RunRecord,
    steps: Vec<StepRecord>,
    cancel: &CancelSignal,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<RunRecord, EngineError> {
    let agents = agent_configs(&store.objects()?);
    execute_with_agents(store, config, &agents, run, steps, cancel, on_event)
}

/// [`execute`] with the Agent manifests already read (by name).
pub fn execute_with_agents(
    store: &Store,
    config: &EngineConfig,
    agents: &BTreeMap<String, Value>,
    mut run: RunRecord,
    mut steps: Vec<StepRecord>,
    cancel: &CancelSignal,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<RunRecord, EngineError> {
    let planned = plan(&run.workflow, agents);
    let run_dir = config.log_dir.join("workflows").join(&run.id);
    fs::create_dir_all(&run_dir)
        .map_err(|e| EngineError::Invalid(format!("cannot create {}: {e}", run_dir.display())))?;
    let max_parallel = run
        .workflow
        .get("max_parallel")
        .and_then(Value::as_u64)
        .map_or(config.max_parallel, |n| n as usize)
        .max(1);
    let run_deadline = duration_field(run.workflow.get("timeout"))
        .filter(|t| !t.is_zero())
        .map(|t| Instant::now() + t);
    let cancel_file = cancel_request_path(&config.data_dir, &run.id);
    let base_env = base_env(&run);
    // Held until the run ends: the workflow's concurrency policy decides when it may start.
    let _ticket = match config.admission.admit(
        &run.workflow_id,
        &run.id,
        Policy::of(&run.workflow),
        &cancel.flag,
    ) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            let status = match refusal {
                Refusal::Forbidden { .. } => Status::Skipped,
                Refusal::Cancelled => Status::Cancelled,
            };
            let at = now();
            for step in steps.iter_mut().filter(|s| !s.status.is_finished()) {
                step.status = status;
                step.finished_at = Some(at.clone());
                step.message = Some(refusal.to_string());
            }
            run.status = status;
            run.message = Some(refusal.to_string());
            run.finished_at = Some(at);
            run.duration_ms = Some(0);
            store.save_run(Some(&run), &steps.iter().collect::<Vec<_>>(), true)?;
            return Ok(run);
        }
    };
    let started = Instant::now();
    run.status = Status::Running;
    run.started_at = Some(now());
    run.pid = Some(std::process::id());
    store.save_run(Some(&run), &[], true)?;

    let mut controls: Vec<Option<Arc<StepControl>>> = vec![None; steps.len()];
    let mut deadlines: Vec<Option<Instant>> = vec![None; steps.len()];
    let mut step_started: Vec<Option<Instant>> = vec![None; steps.len()];
    // Whether each finished step counts as a success for what follows.
    let mut ok: Vec<Option<bool>> = steps
        .iter()
        .map(|s| (s.status == Status::Succeeded).then_some(true))
        .collect();
    let mut running = 0usize;
    let mut cancelled = false;
    let mut timed_out = false;
    let (sender, receiver) = mpsc::channel::<Message>();
    // Steps that finished in the last wait, written and reported with what starts next: one
    // flush per turn, "finished" events before "started" ones.
    let mut changed: Vec<usize> = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    // What conditions and substitutions see, grown as steps finish (not rebuilt per step).
    let mut step_scope = Arc::new(run_scope(&run));
    let mut in_scope = vec![false; steps.len()];
    // Steps holding one of their agent's `max_concurrent` slots.
    let mut holds_slot = vec![false; steps.len()];

    std::thread::scope(|scope| -> Result<(), EngineError> {
        loop {
            // Stop requests.
            let cancel_now =
                !cancelled && (cancel.flag.load(Ordering::SeqCst) || cancel_file.exists());
            let timeout_now = !timed_out && run_deadline.is_some_and(|d| Instant::now() >= d);
            if cancel_now || timeout_now {
                cancelled |= cancel_now;
                timed_out |= timeout_now;
                let reason = if cancel_now {
                    StopReason::Cancel
                } else {
                    StopReason::Timeout
                };
                for control in controls.iter().flatten() {
                    control.stop(reason);
                }
                let _ = fs::remove_file(&cancel_file);
            }
            for (index, deadline) in deadlines.iter_mut().enumerate() {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    *deadline = None;
                    if let Some(control) = &controls[index] {
                        control.stop(StopReason::Timeout);
                    }
                }
            }

            // Start what is ready.
            if !cancelled && !timed_out {
                for index in 0..steps.len() {
                    if running >= max_parallel {
                        break;
                    }
                    if steps[index].status != Status::Queued
                        || planned[index].deps.iter().any(|&d| ok[d].is_none())
                    {
                        continue;
                    }
                    let upstream_ok = planned[index].upstream.iter().all(|&d| ok[d] == Some(true));
                    for (finished, step) in in_scope.iter_mut().zip(&steps) {
                        if !*finished && step.status.is_finished() {
                            *finished = true;
                            Arc::make_mut(&mut step_scope).steps.insert(
                                step.name.clone(),
                                StepState {
                                    status: step.status,
                                    outputs: step.outputs.clone(),
                                },
                            );
                        }
                    }
                    let condition = planned[index].condition.as_deref().unwrap_or("success()");
                    let run_it = expand::evaluate_condition(
                        condition,
                        &step_scope,
                        ConditionContext {
                            upstream_ok,
                            cancelled: false,
                        },
                    );
                    if run_it == Ok(true) {
                        if let Some(max) = planned[index].max_concurrent {
                            if !config
                                .agent_switches
                                .try_acquire(&planned[index].agent, max)
                            {
                                // The agent is busy: the step stays queued for a later turn.
                                continue;
                            }
                            holds_slot[index] = true;
                        }
                    }
                    let step = &mut steps[index];
                    match run_it {
                        Ok(true) => {
                            step.status = Status::Running;
                            step.started_at = Some(now());
                            step_started[index] = Some(Instant::now());
                            running += 1;
                            let control = StepControl::new();
                            controls[index] = Some(Arc::clone(&control));
                            deadlines[index] = planned[index].timeout.map(|t| Instant::now() + t);
                            events.push(Event::StepStarted { step: step.clone() });
                            changed.push(index);
                            let job = StepJob {
                                index,
                                run_id: run.id.clone(),
                                workflow_id: run.workflow_id.clone(),
                                step: step.clone(),
                                planned: &planned[index],
                                scope: Arc::clone(&step_scope),
                                config,
                                agent_config: agents.get(&step.agent).cloned(),
                                base_env: &base_env,
                                control,
                                reports: is_report_step(&step.agent, agents)
                                    .then(|| report_data(store, &run, &steps))
                                    .transpose()?,
                                sender: sender.clone(),
                            };
                            scope.spawn(move || job.run());
                        }
                        Ok(false) => {
                            step.status = Status::Skipped;
                            step.finished_at = Some(now());
                            step.message = Some(if upstream_ok {
                                format!("skipped: `{condition}` is false")
                            } else {
                                "skipped: an earlier step failed".to_owned()
                            });
                            ok[index] = Some(upstream_ok);
                            events.push(Event::StepFinished { step: step.clone() });
                            changed.push(index);
                        }
                        Err(err) => {
                            step.status = Status::Failed;
                            step.finished_at = Some(now());
                            step.message = Some(format!("condition `{condition}`: {err}"));
                            ok[index] = Some(false);
                            events.push(Event::StepFinished { step: step.clone() });
                            changed.push(index);
                        }
                    }
                }
            }
            if (cancelled || timed_out) && running == 0 {
                let status = if cancelled {
                    Status::Cancelled
                } else {
                    Status::TimedOut
                };
                for (index, step) in steps.iter_mut().enumerate() {
                    if step.status == Status::Queued {
                        step.status = status;
                        step.finished_at = Some(now());
                        step.message = Some(if cancelled {
                            "cancelled before it started".into()
                        } else {
                            "the workflow timed out before it started".into()
                        });
                        ok[index] = Some(false);
                        changed.push(index);
                    }
                }
            }

            let all_done = running == 0 && steps.iter().all(|s| s.status.is_finished());
            if all_done {
                finish_run(&mut run, &steps, &planned, cancelled, timed_out, started);
                // Before the final state is stored and reported: whoever sees the run
                // finished reads reports that say so.
                rewrite_reports(store, config, agents, &run, &steps, &planned, &step_started);
            }
            if !changed.is_empty() || all_done {
                changed.sort_unstable();
                changed.dedup();
                let records: Vec<&StepRecord> = changed.iter().map(|&i| &steps[i]).collect();
                // The run record (with its whole workflow) is written only when it changes:
                // at the start above and here at the end, so a step costs the same in a
                // 10-step workflow as in a 1,000-step one.
                store.save_run(all_done.then_some(&run), &records, true)?;
                changed.clear();
                for event in events.drain(..) {
                    on_event(&event);
                }
            }
            if all_done {
                return Ok(());
            }

            // Wait for a worker, a deadline, or the next look at stop requests.
            let mut wait = Duration::from_millis(100);
            for deadline in deadlines.iter().flatten().chain(run_deadline.iter()) {
                wait = wait.min(deadline.saturating_duration_since(Instant::now()));
            }
            let mut first = match receiver.recv_timeout(wait) {
                Ok(message) => Some(message),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            };
            while let Some(message) = first.take().or_else(|| receiver.try_recv().ok()) {
                match message {
                    Message::AttemptStarted(index, at) => {
                        deadlines[index] = planned[index].timeout.map(|t| at + t);
                    }
                    Message::AttemptFailed(index, attempt, delay) => {
                        deadlines[index] = None;
                        steps[index].attempts.push(attempt);
                        store.save_run(None, &[&steps[index]], false)?;
                        on_event(&Event::StepRetrying {
                            step: steps[index].clone(),
                            delay,
                        });
                    }
                    Message::Done(index, outcome, attempts) => {
                        running -= 1;
                        if std::mem::take(&mut holds_slot[index]) {
                            config.agent_switches.release(&planned[index].agent);
                        }
                        deadlines[index] = None;
                        controls[index] = None;
                        let step = &mut steps[index];
                        let status = outcome.status.unwrap_or(Status::Failed);
                        step.attempts = attempts;
                        step.status = status;
                        step.exit_code = outcome.exit_code;
                        step.message = outcome.message;
                        step.outputs = outcome.outputs;
                        step.tests = outcome.tests;
                        step.artifacts = outcome.artifacts;
                        step.finished_at = Some(now());
                        step.duration_ms =
                            step_started[index].map(|s| s.elapsed().as_millis() as u64);
                        step.pgid = None;
                        ok[index] = Some(
                            status == Status::Succeeded
                                || (planned[index].continue_on_error
                                    && !matches!(status, Status::Cancelled)),
                        );
                        agent_log(config, step);
                        events.push(Event::StepFinished { step: step.clone() });
                        changed.push(index);
                    }
                }
            }
        }
    })?;
    let _ = fs::remove_file(&cancel_file);
    enforce_history(store, config, &run)?;
    Ok(run)
}

fn finish_run(
    run: &mut RunRecord,
    steps: &[StepRecord],
    planned: &[Planned],
    cancelled: bool,
    timed_out: bool,
    started: Instant,
) {
    let failed: Vec<&StepRecord> = steps
        .iter()
        .zip(planned)
        .filter(|(s, p)| {
            matches!(
                s.status,
                Status::Failed | Status::TimedOut | Status::Interrupted
            ) && !p.continue_on_error
        })
        .map(|(s, _)| s)
        .collect();
    let (status, message) = if cancelled {
        (Status::Cancelled, Some("cancelled".to_owned()))
    } else if timed_out {
        (
            Status::TimedOut,
            Some("the workflow's timeout ran out".to_owned()),
        )
    } else if let Some(first) = failed.first() {
        (
            Status::Failed,
            Some(format!(
                "step `{}` {}{}",
                first.name,
                first.status,
                first
                    .message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )),
        )
    } else {
        (Status::Succeeded, None)
    };
    run.status = status;
    run.message = message;
    run.finished_at = Some(now());
    run.duration_ms = Some(started.elapsed().as_millis() as u64);
    let mut tests = TestSummary::default();
    for step in steps {
        tests.add(TestSummary::of(&step.tests));
    }
    run.tests = tests;
}

/// Writes again, with the run's final state, every report a report step of this execution
/// wrote while the run was still going (steps kept from an earlier run are left alone). A
/// report that cannot be written again is logged and keeps what the step wrote.
fn rewrite_reports(
    store: &Store,
    config: &EngineConfig,
    agents: &BTreeMap<String, Value>,
    run: &RunRecord,
    steps: &[StepRecord],
    planned: &[Planned],
    started: &[Option<Instant>],
) {
    let written: Vec<usize> = (0..steps.len())
        .filter(|&i| {
            started[i].is_some()
                && steps[i].status == Status::Succeeded
                && is_report_step(&steps[i].agent, agents)
        })
        .collect();
    if written.is_empty() {
        return;
    }
    let data = match report_data(store, run, steps) {
        Ok(data) => data,
        Err(err) => {
            tracing::warn!("run {}: reports not rewritten: {err}", run.id);
            return;
        }
    };
    let mut scope = run_scope(run);
    for step in steps {
        scope.steps.insert(
            step.name.clone(),
            StepState {
                status: step.status,
                outputs: step.outputs.clone(),
            },
        );
    }
    for index in written {
        let step = &steps[index];
        let parameters = planned[index]
            .spec
            .get("parameters")
            .map(|p| expand::substitute(p, &scope))
            .transpose()
            .map(|p| p.and_then(|p| p.as_object().cloned()).unwrap_or_default());
        let result = parameters.and_then(|parameters| {
            crate::agents::runtime::write_report(
                &step.action,
                &parameters,
                &data,
                &config.reports_dir,
                &config.project_dir,
            )
        });
        if let Err(err) = result {
            tracing::warn!(
                "run {} step `{}`: report not rewritten with the final state: {err}",
                run.id,
                step.name
            );
        }
    }
}

/// The scope every step starts from: the run's parameters and `run.*`.
fn run_scope(run: &RunRecord) -> Scope {
    let mut scope = Scope {
        params: run.parameters.clone(),
        ..Scope::default()
    };
    scope.run.insert("id".into(), Value::from(run.id.clone()));
    scope
        .run
        .insert("workflow_id".into(), Value::from(run.workflow_id.clone()));
    scope.run.insert(
        "workflow_name".into(),
        Value::from(run.workflow_name.clone()),
    );
    scope
}

/// The variables every step of the run gets: the run's `ORCHESTRATOR_*`, its parameters
/// and the workflow's `env:` (unresolved: secrets are read when a step starts).
fn base_env(run: &RunRecord) -> Vec<(String, EnvValue)> {
    let mut env = vec![
        (
            "ORCHESTRATOR_RUN_ID".to_owned(),
            EnvValue::Literal(run.id.clone()),
        ),
        (
            "ORCHESTRATOR_WORKFLOW_ID".to_owned(),
            EnvValue::Literal(run.workflow_id.clone()),
        ),
    ];
    for (name, value) in &run.parameters {
        env.push((
            params::env_name(name),
            EnvValue::Literal(params::env_value(value)),
        ));
    }
    env.extend(env::declared(run.workflow.get("env")));
    env
}

/// Agent manifests by agent name.
pub fn agent_configs(objects: &BTreeMap<ObjectKey, ObjectRecord>) -> BTreeMap<String, Value> {
    objects
        .values()
        .filter(|r| r.key.kind == Kind::Agent && r.is_live())
        .filter_map(|r| r.spec.clone().map(|spec| (r.name.clone(), spec)))
        .collect()
}

fn report_data(
    store: &Store,
    run: &RunRecord,
    steps: &[StepRecord],
) -> Result<ReportData, EngineError> {
    let previous_id = store
        .workflow_run_ids(&run.workflow_id)?
        .into_iter()
        .rfind(|(id, status)| *id < run.id && status.is_finished())
        .map(|(id, _)| id);
    let previous = match previous_id {
        Some(id) => match store.run(&id)? {
            Some(previous) => {
                let steps = store.steps(&previous.id)?;
                Some((previous, steps))
            }
            None => None,
        },
        None => None,
    };
    Ok(ReportData {
        current: (run.clone(), steps.to_vec()),
        previous,
    })
}

fn agent_log(config: &EngineConfig, step: &StepRecord) {
    let path = config
        .log_dir
        .join("agents")
        .join(format!("{}.log", log_name(&step.agent)));
    config.agent_logs.append_line(
        &path,
        &format!(
            "{} {} {} {}.{} {} {}ms{}",
            now(),
            step.run_id,
            step.name,
            step.agent,
            step.action,
            step.status,
            step.duration_ms.unwrap_or(0),
            step.message
                .as_ref()
                .map(|m| format!(" {m}"))
                .unwrap_or_default()
        ),
    );
}

/// Keeps the newest runs of the workflow within its history limit; older runs go with their
/// logs and reports.
///
/// It reads the workflow's entries of the run index (ids and statuses, no run record), so
/// while other runs of the workflow are still to finish here (a burst of webhook
/// deliveries, say) it runs at most every [`HISTORY_EVERY`] per workflow rather than after
/// each run; a run with no other run of its workflow still to finish always enforces it,
/// so the history ends exactly at the limit.
fn enforce_history(
    store: &Store,
    config: &EngineConfig,
    run: &RunRecord,
) -> Result<(), StoreError> {
    {
        use std::collections::HashSet;
        use std::sync::{LazyLock, Mutex};
        /// Per workflow: when its history was last trimmed, and the runs still active that
        /// have already come this far (their final state is stored).
        type Trims = HashMap<String, (Option<Instant>, HashSet<String>)>;
        static TRIMS: LazyLock<Mutex<Trims>> = LazyLock::new(Mutex::default);
        let active = config.admission.active(&run.workflow_id);
        let mut trims = TRIMS.lock().unwrap_or_else(|e| e.into_inner());
        let (last, finished) = trims.entry(run.workflow_id.clone()).or_default();
        finished.retain(|id| active.contains(id));
        finished.insert(run.id.clone());
        let still_to_finish = active.iter().any(|id| !finished.contains(id));
        if still_to_finish && last.is_some_and(|at| at.elapsed() < HISTORY_EVERY) {
            return Ok(());
        }
        *last = Some(Instant::now());
    }
    let limit = run
        .workflow
        .get("history_limit")
        .and_then(Value::as_u64)
        .map_or(config.history_limit, |n| n as usize)
        .max(1);
    let finished: Vec<String> = store
        .workflow_run_ids(&run.workflow_id)?
        .into_iter()
        .filter(|(_, status)| status.is_finished())
        .map(|(id, _)| id)
        .collect();
    if finished.len() <= limit {
        return Ok(());
    }
    let old = &finished[..finished.len() - limit];
    store.delete_runs(&run.workflow_id, old)?;
    for id in old {
        let _ = fs::remove_dir_all(config.log_dir.join("workflows").join(id));
        let _ = fs::remove_dir_all(config.reports_dir.join(id));
    }
    Ok(())
}

/// How often a workflow's history is trimmed while several of its runs are active.
const HISTORY_EVERY: Duration = Duration::from_millis(200);

/// Everything a worker thread needs to run one step.
struct StepJob<'a> {
    index: usize,
    run_id: String,
    workflow_id: String,
    step: StepRecord,
    planned: &'a Planned,
    scope: Arc<Scope>,
    config: &'a EngineConfig,
    agent_config: Option<Value>,
    base_env: &'a [(String, EnvValue)],
    control: Arc<StepControl>,
    reports: Option<ReportData>,
    sender: mpsc::Sender<Message>,
}

impl StepJob<'_> {
    /// Whether the step's agent takes work; when it is disabled, fails the step or waits for
    /// the agent as its manifest's `when_disabled` says (a wait ends with a cancel or the
    /// step's timeout). `None` when the step may go ahead.
    fn wait_for_agent(&self, log: &StepLog) -> Option<Outcome> {
        let agent = &self.step.agent;
        let config = self.agent_config.as_ref();
        let manifest_enabled = config
            .and_then(|c| c.get("enabled"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let switches = &self.config.agent_switches;
        if switches.enabled(agent, manifest_enabled) {
            return None;
        }
        let why = if manifest_enabled {
            "stopped"
        } else {
            "disabled: enabled: false in its manifest"
        };
        let waits = config
            .and_then(|c| c.get("when_disabled"))
            .and_then(Value::as_str)
            == Some("wait");
        if !waits {
            return Some(Outcome {
                status: Some(Status::Failed),
                message: Some(format!(
                    "agent `{agent}` is {why}; its steps fail while it is (set `when_disabled: wait` in its manifest to have them wait)"
                )),
                ..Outcome::default()
            });
        }
        log.note(&format!(
            "waiting for agent `{agent}` ({why}) to be enabled (when_disabled: wait)"
        ));
        loop {
            if let Some(reason) = self.control.stopped() {
                let (status, message) = match reason {
                    StopReason::Timeout => (
                        Status::TimedOut,
                        format!("timed out waiting for agent `{agent}` to be enabled"),
                    ),
                    StopReason::Cancel => (
                        Status::Cancelled,
                        format!("cancelled while waiting for agent `{agent}` to be enabled"),
                    ),
                };
                return Some(Outcome {
                    status: Some(status),
                    message: Some(message),
                    ..Outcome::default()
                });
            }
            if switches.wait_enabled(agent, manifest_enabled, Duration::from_millis(100)) {
                log.note(&format!("agent `{agent}` is enabled again"));
                return None;
            }
        }
    }

    fn run(self) {
        let (outcome, attempts) = self.attempts();
        let _ = self
            .sender
            .send(Message::Done(self.index, Box::new(outcome), attempts));
    }

    fn attempts(&self) -> (Outcome, Vec<Attempt>) {
        let log_path = self.config.log_dir.join(&self.step.log);
        let outputs_path = log_path.with_extension("outputs");
        let log = match StepLog::open(&log_path, self.config.max_log_bytes) {
            Ok(log) => Arc::new(log),
            Err(err) => {
                return failed_before_start(format!("cannot open {}: {err}", log_path.display()))
            }
        };
        let (mut outcome, attempts) = self.attempts_logged(&log, &outputs_path);
        outcome.artifacts = keep_artifacts(
            self.config,
            &self.run_id,
            &self.step.name,
            std::mem::take(&mut outcome.artifacts),
            &log,
        );
        (outcome, attempts)
    }

    fn attempts_logged(&self, log: &Arc<StepLog>, outputs_path: &Path) -> (Outcome, Vec<Attempt>) {
        let Some(agent) = agent_for(&self.step.agent, self.agent_config.as_ref()) else {
            let known: Vec<&str> = BUILTIN_AGENTS.iter().map(|a| a.name).collect();
            return failed_before_start(format!(
                "no agent `{}`: expected {} or an Agent manifest",
                self.step.agent,
                known.join(", ")
            ));
        };
        if let Some(outcome) = self.wait_for_agent(log) {
            return (outcome, Vec::new());
        }
        let spec = &self.planned.spec;
        let substituted = spec
            .get("parameters")
            .map(|p| expand::substitute(p, &self.scope))
            .transpose()
            .and_then(|p| {
                let command = spec
                    .get("command")
                    .map(|c| expand::substitute(c, &self.scope))
                    .transpose()?;
                Ok((p, command))
            });
        let (parameters, command) = match substituted {
            Ok((p, c)) => (
                p.and_then(|p| p.as_object().cloned()).unwrap_or_default(),
                c,
            ),
            Err(err) => return failed_before_start(err),
        };
        let mut declared = self.base_env.to_vec();
        declared.push((
            "ORCHESTRATOR_STEP".into(),
            EnvValue::Literal(self.step.name.clone()),
        ));
        declared.push((
            "ORCHESTRATOR_OUTPUT".into(),
            EnvValue::Literal(outputs_path.display().to_string()),
        ));
        if let Some(vars) = spec.get("env").and_then(Value::as_object) {
            for (name, raw) in vars {
                // `{{ }}` is substituted in literals only, and its result stays a literal:
                // a parameter (a webhook's payload, say) never picks a secret or a server
                // variable to read.
                let value = match (raw, env::parse(raw)) {
                    (Value::String(_), EnvValue::Literal(_)) => {
                        let substituted =
                            expand::substitute(raw, &self.scope).unwrap_or(raw.clone());
                        EnvValue::Literal(params::env_value(&substituted))
                    }
                    (_, parsed) => parsed,
                };
                declared.push((name.clone(), value));
            }
        }
        let env = match env::resolve(&declared, &self.config.project_dir) {
            Ok(resolved) => {
                log.add_secrets(resolved.secrets);
                resolved.vars
            }
            Err(err) => {
                log.note(&err);
                return failed_before_start(err);
            }
        };
        let agent_log = self
            .config
            .log_dir
            .join("agents")
            .join(format!("{}.log", log_name(&self.step.agent)));
        self.config.agent_logs.make_room(&agent_log);
        let mut attempts = Vec::new();
        let total = self.planned.retries + 1;
        for number in 1..=total {
            let started_at = now();
            let started = Instant::now();
            let _ = self
                .sender
                .send(Message::AttemptStarted(self.index, started));
            let _ = fs::remove_file(outputs_path);
            let context = StepContext {
                run_id: &self.run_id,
                workflow_id: &self.workflow_id,
                step: &self.step.name,
                project_dir: &self.config.project_dir,
                reports_dir: &self.config.reports_dir,
                agent_log: &agent_log,
                log,
                env: &env,
                command: command.as_ref(),
                working_dir: spec.get("working_dir").and_then(Value::as_str),
                config: self.agent_config.as_ref(),
                control: &self.control,
                timeout: self.planned.timeout,
                reports: self.reports.as_ref(),
            };
            if total > 1 {
                context.note(&format!("attempt {number} of {total}"));
            }
            let mut outcome = agent.execute_action(&self.step.action, &parameters, &context);
            if let Some(reason) = self.control.stopped() {
                outcome.status = Some(match reason {
                    StopReason::Timeout => Status::TimedOut,
                    StopReason::Cancel => Status::Cancelled,
                });
                if outcome.message.is_none() || reason == StopReason::Timeout {
                    outcome.message = Some(match reason {
                        StopReason::Timeout => format!(
                            "timed out after {}; its process group was killed",
                            crate::duration::format_duration(
                                self.planned.timeout.unwrap_or_default()
                            )
                        ),
                        StopReason::Cancel => "cancelled".into(),
                    });
                }
            }
            for (key, value) in read_outputs(outputs_path) {
                outcome.outputs.insert(key, Value::from(value));
            }
            let leftovers = self.control.take_leftovers();
            if leftovers > 0 {
                let note = format!(
                    "{leftovers} process{} the step started outlived it and {} stopped",
                    if leftovers == 1 { "" } else { "es" },
                    if leftovers == 1 { "was" } else { "were" }
                );
                context.note(&note);
                outcome.message = Some(match outcome.message.take() {
                    Some(message) => format!("{message}; {note}"),
                    None => note,
                });
            }
            // Secret values never reach a record: what an agent or the step wrote back is
            // masked as its log is.
            let secrets = log.secrets();
            if !secrets.is_empty() {
                outcome.message = outcome.message.map(|m| secrets.mask_str(&m));
                for value in outcome.outputs.values_mut() {
                    if let Value::String(text) = value {
                        *text = secrets.mask_str(text);
                    }
                }
                for case in &mut outcome.tests {
                    for text in [&mut case.message, &mut case.details, &mut case.output]
                        .into_iter()
                        .flatten()
                    {
                        *text = secrets.mask_str(text);
                    }
                }
            }
            let status = outcome.status.unwrap_or(Status::Failed);
            let usage = self.control.take_usage();
            let attempt = Attempt {
                number,
                status,
                started_at,
                finished_at: now(),
                duration_ms: started.elapsed().as_millis() as u64,
                exit_code: outcome.exit_code,
                message: outcome.message.clone(),
                cpu_seconds: usage.map(|u| u.cpu_seconds),
                max_rss_bytes: usage.map(|u| u.max_rss_bytes),
                orphans_killed: (leftovers > 0).then_some(leftovers),
            };
            let retry = number < total
                && matches!(status, Status::Failed | Status::TimedOut)
                && self.control.stopped() != Some(StopReason::Cancel);
            if !retry {
                attempts.push(attempt);
                return (outcome, attempts);
            }
            let delay = self
                .planned
                .retry_delay
                .saturating_mul(1 << (number - 1).min(10));
            context.note(&format!(
                "attempt {number} {status}; retrying in {}",
                crate::duration::format_duration(delay)
            ));
            let _ = self
                .sender
                .send(Message::AttemptFailed(self.index, attempt.clone(), delay));
            attempts.push(attempt);
            self.control.clear_timeout();
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if self.control.stopped() == Some(StopReason::Cancel) {
                    return (
                        Outcome {
                            status: Some(Status::Cancelled),
                            message: Some("cancelled while waiting to retry".into()),
                            ..Outcome::default()
                        },
                        attempts,
                    );
                }
                std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// Copies the files a step recorded as artifacts into the run's own directory,
/// `<reports>/<run-id>/<step>/<file name>`, as the step ends, and returns what the run
/// records: the copies' paths (relative to the project). A later run writing the same file
/// (a suite's JUnit at a fixed path) then leaves this run's artifacts as they were. Files
/// already in the run's directory (its reports) are recorded as they are; a recorded file
/// that is missing or cannot be copied is noted in the step's log and not recorded.
fn keep_artifacts(
    config: &EngineConfig,
    run_id: &str,
    step: &str,
    artifacts: Vec<String>,
    log: &StepLog,
) -> Vec<String> {
    let run_dir = config.reports_dir.join(run_id);
    let step_dir = run_dir.join(log_name(step));
    let mut kept: Vec<String> = Vec::new();
    let mut taken: Vec<PathBuf> = Vec::new();
    for artifact in artifacts {
        let source = config.project_dir.join(&artifact);
        if source.starts_with(&run_dir) {
            kept.push(artifact);
            continue;
        }
        if !source.is_file() {
            log.note(&format!("artifact {artifact} not kept: no such file"));
            continue;
        }
        let name = source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "artifact".into());
        let mut target = step_dir.join(&name);
        let mut n = 2;
        while taken.contains(&target) {
            target = step_dir.join(format!("{n}-{name}"));
            n += 1;
        }
        match fs::create_dir_all(&step_dir).and_then(|()| fs::copy(&source, &target)) {
            Ok(_) => {
                let shown = target
                    .strip_prefix(&config.project_dir)
                    .unwrap_or(&target)
                    .display()
                    .to_string();
                log.note(&format!("kept {artifact} as {shown}"));
                kept.push(shown);
                taken.push(target);
            }
            Err(err) => log.note(&format!(
                "artifact {artifact} not kept: cannot copy it to {}: {err}",
                target.display()
            )),
        }
    }
    kept
}

/// A step that failed before any attempt started: nothing ran, `message` says why.
fn failed_before_start(message: String) -> (Outcome, Vec<Attempt>) {
    (
        Outcome {
            status: Some(Status::Failed),
            message: Some(message),
            ..Outcome::default()
        },
        Vec::new(),
    )
}

/// `key=value` lines, and GitHub's `key<<DELIMITER` blocks, from a step's output file.
pub fn read_outputs(path: &Path) -> Vec<(String, String)> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut outputs = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((key, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            for body in lines.by_ref() {
                if body == delimiter {
                    break;
                }
                value.push(body);
            }
            outputs.push((key.trim().to_owned(), value.join("\n")));
        } else if let Some((key, value)) = line.split_once('=') {
            outputs.push((key.trim().to_owned(), value.to_owned()));
        }
    }
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn previous(statuses: &[(&str, Status)]) -> Vec<StepRecord> {
        statuses
            .iter()
            .enumerate()
            .map(|(index, (name, status))| StepRecord {
                run_id: "run_1".into(),
                index: index as u32,
                name: (*name).into(),
                agent: "shell".into(),
                action: "run".into(),
                status: *status,
                attempts: Vec::new(),
                started_at: None,
                finished_at: None,
                duration_ms: None,
                exit_code: None,
                message: None,
                outputs: Map::new(),
                log: String::new(),
                pgid: None,
                tests: Vec::new(),
                artifacts: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_from_failed_rerun_keeps_only_what_succeeded_upstream_of_no_failure() {
        use Status::*;
        let dag = json!({"steps": [
            {"name": "build"},
            {"name": "unit", "depends_on": ["build"]},
            {"name": "coverage", "depends_on": ["unit"], "if": "always()"},
            {"name": "lint", "depends_on": ["build"]},
            {"name": "package", "depends_on": ["lint", "coverage"]},
            {"name": "report", "depends_on": ["lint"], "agent": "report_generator"},
        ]});
        let ran = previous(&[
            ("build", Succeeded),
            ("unit", Failed),
            ("coverage", Succeeded),
            ("lint", Succeeded),
            ("package", Skipped),
            ("report", Succeeded),
        ]);
        let agents = BTreeMap::new();
        assert_eq!(
            reusable_steps(&dag, &agents, &ran),
            [true, false, false, true, false, false],
            "coverage is downstream of unit; a report step always runs again"
        );

        // Listed order without depends_on: everything after the failure runs again.
        let chain = json!({"steps": [
            {"name": "build"}, {"name": "unit"}, {"name": "notify", "if": "always()"},
        ]});
        let ran = previous(&[
            ("build", Succeeded),
            ("unit", Failed),
            ("notify", Succeeded),
        ]);
        assert_eq!(reusable_steps(&chain, &agents, &ran), [true, false, false]);

        // An agent manifest of type report_generator writes reports too.
        let mut agents = BTreeMap::new();
        agents.insert("reports".to_owned(), json!({"type": "report_generator"}));
        let custom = json!({"steps": [{"name": "report", "agent": "reports"}]});
        let ran = previous(&[("report", Succeeded)]);
        assert_eq!(reusable_steps(&custom, &agents, &ran), [false]);
    }
}
