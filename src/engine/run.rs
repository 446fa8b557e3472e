//! Creating and executing runs. Executing is a driver around the run's
//! [`RunMachine`](super::machine::RunMachine), which decides (the DAG, `max_parallel`,
//! conditions, retries with backoff, timeouts, cancel); the driver performs what it decides:
//! attempts handed to the [`Executor`] in [`EngineConfig::executor`], stops sent to them,
//! artifacts kept, and every state change written to the store and flushed before it is
//! reported — one flush covers all the steps that finished and started in a turn.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::admission::{AgentSwitches, Policy, Refusal, RunAdmission};
use super::agent_logs::AgentLogs;
use super::env::{self, EnvValue};
use super::executor::{
    AttemptEvent, AttemptFinished, AttemptMessage, AttemptStop, Executor, Outcome, ReportData,
    StepAttempt,
};
use super::expand::{self, Expanded, Scope, StepState};
pub use super::machine::Event;
use super::machine::{self, AgentSlots, Command, Input, Limits, Moment, RunMachine, Turn};
use super::mask::StepLog;
use super::process::signal_group;
use super::test_results::TestRecorder;
use crate::manifest::Kind;
use crate::model::{Attempt, RunRecord, Status, StepRecord, TestSummary, Trigger};
use crate::spec::params;
use crate::spec::workflow::{agent_and_action, WorkflowSpec};
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
    /// Runs the steps' attempts (the local executor, from the caller).
    pub executor: Arc<dyn Executor>,
    /// When each workflow's history was last trimmed.
    pub history: Arc<HistoryTrims>,
    /// Set by a controller with workers as it shuts down: a run whose steps in flight all
    /// run on workers stops driving them and is left `running` (its attempts go on), for
    /// the next start to resume ([`recover_or_resume`]).
    pub detach_remote: Arc<AtomicBool>,
    /// Test history retention and the flaky rule.
    pub tests: crate::config::TestsConfig,
    /// The git source's `path` (the manifests' directory inside the repository) when the
    /// configuration follows a git repository: impact selection reads changes from its
    /// mirror (`engine::impact`).
    pub git_source_path: Option<PathBuf>,
}

impl AgentSlots for AgentSwitches {
    fn try_acquire(&self, agent: &str, max: usize) -> bool {
        AgentSwitches::try_acquire(self, agent, max)
    }

    fn release(&self, agent: &str) {
        AgentSwitches::release(self, agent);
    }
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
            .and_then(|r| r.spec.as_deref().cloned())
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

/// The present for the run's machine, read from both clocks.
fn moment_now() -> Moment {
    Moment {
        instant: Instant::now(),
        timestamp: now(),
    }
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
    let created: Vec<_> = requests
        .iter()
        .map(|r| prepare_run(objects, r, &source_revisions(store)))
        .collect();
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
    let created = prepare_run(objects, request, &source_revisions(store))?;
    store.save_run(
        Some(&created.0),
        &created.1.iter().collect::<Vec<_>>(),
        true,
    )?;
    Ok(created)
}

/// The run and queued steps of a request, made (workflow found and expanded, parameters
/// checked) but not written: the caller writes them, with what must be durable along with
/// them, before starting the run.
pub fn make_run(
    store: &Store,
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    request: &RunRequest,
) -> Result<(RunRecord, Vec<StepRecord>), EngineError> {
    prepare_run(objects, request, &source_revisions(store))
}

/// The revision each source (`dir`, `git`) was last reconciled at, by name.
fn source_revisions(store: &Store) -> Vec<(String, String)> {
    ["dir", "git"]
        .iter()
        .filter_map(|source| {
            let status = store.source_status(source).ok().flatten()?;
            Some(((*source).to_owned(), status.last_attempted_revision))
        })
        .collect()
}

/// The run and its queued steps for a request: the workflow found and expanded, the
/// parameters checked. Nothing is written. `sources` holds the revision each source was
/// last reconciled at: a run records the one its workflow's source is at (the commit the
/// project is at, not the older one its manifest last changed in).
fn prepare_run(
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    request: &RunRequest,
    sources: &[(String, String)],
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
    let mut run = run;
    let current = record.applied_revision.as_deref().and_then(|applied| {
        let (source, _) = applied.split_once(':')?;
        sources
            .iter()
            .find(|(name, revision)| name == source && revision.starts_with(&format!("{source}:")))
            .map(|(_, revision)| revision.clone())
    });
    run.revision = run_revision(&request.trigger)
        .or(current)
        .or_else(|| record.applied_revision.clone());
    let steps = initial_steps(&run)?;
    Ok((run, steps))
}

/// The revision a trigger names: the commit of a webhook delivery (`git:<sha>`).
fn run_revision(trigger: &Trigger) -> Option<String> {
    trigger
        .details
        .get("commit")
        .and_then(|commit| commit.get("sha"))
        .and_then(Value::as_str)
        .map(|sha| format!("git:{sha}"))
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
        revision: None,
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
            let log = format!("workflows/{}/{}.log", run.id, log_name(&name));
            Ok(StepRecord::queued(
                &run.id,
                index as u32,
                name,
                agent,
                action,
                log,
            ))
        })
        .collect()
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
    run.revision = original.revision.clone();
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
    let planned = machine::plan(&WorkflowSpec::compile(workflow), agents);
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
    recover_where(store, |_, _| false)
}

/// [`recover`], leaving alone the runs with a step in flight that declares `runs_on`
/// ([`remote_in_flight`]): what a command opening the store of a project with workers
/// configured does, so that a controller that comes back resumes them
/// ([`recover_or_resume`]) instead of finding them interrupted by a `run show`.
pub fn recover_keeping_remote(store: &Store) -> Result<Vec<String>, StoreError> {
    recover_where(store, |run, steps| {
        remote_in_flight(&WorkflowSpec::compile(&run.workflow), steps)
    })
}

/// Whether a run has a step in flight that declares `runs_on` (its attempt may be going
/// on on a worker).
pub fn remote_in_flight(spec: &WorkflowSpec, steps: &[StepRecord]) -> bool {
    steps.iter().enumerate().any(|(i, step)| {
        step.status == Status::Running && spec.steps.get(i).is_some_and(|s| s.placement.is_some())
    })
}

fn recover_where(
    store: &Store,
    keep: impl Fn(&RunRecord, &[StepRecord]) -> bool,
) -> Result<Vec<String>, StoreError> {
    let mut recovered = Vec::new();
    for id in store.run_ids_with_status(&[Status::Running])? {
        let Some(run) = store.run(&id)? else {
            continue;
        };
        if run.status != Status::Running {
            continue;
        }
        let steps = store.steps(&run.id)?;
        if keep(&run, &steps) {
            continue;
        }
        interrupt(store, run, steps)?;
        recovered.push(id);
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

/// Marks a run left `running` interrupted, with its unfinished steps (not flushed).
fn interrupt(
    store: &Store,
    mut run: RunRecord,
    mut steps: Vec<StepRecord>,
) -> Result<(), StoreError> {
    let at = now();
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
    store.save_run(Some(&run), &steps.iter().collect::<Vec<_>>(), false)
}

/// Where another process asks for a run to be cancelled.
pub fn cancel_request_path(data_dir: &Path, run_id: &str) -> PathBuf {
    data_dir.join("control").join(format!("cancel-{run_id}"))
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

/// [`execute`] with the Agent manifests already read (by name): the driver of the run's
/// [`RunMachine`]. Each turn it feeds the machine what the executor reported, performs the
/// machine's commands through [`EngineConfig::executor`], writes the steps that changed in
/// one batch under one flush, then reports them.
pub fn execute_with_agents(
    store: &Store,
    config: &EngineConfig,
    agents: &BTreeMap<String, Value>,
    run: RunRecord,
    steps: Vec<StepRecord>,
    cancel: &CancelSignal,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<RunRecord, EngineError> {
    let ready = ready_to_start(config, &run)?;
    execute_ready(store, config, agents, run, steps, ready, cancel, on_event)
}

/// What starting a run needs that does not depend on the instant it starts: its workflow
/// compiled and its log directory made. Made ahead of a scheduled run's due instant
/// ([`ready_to_start`]), so that at the instant only the run itself is left to do.
pub struct ReadyToStart {
    spec: WorkflowSpec,
}

/// Compiles the run's workflow and makes its log directory.
pub fn ready_to_start(config: &EngineConfig, run: &RunRecord) -> Result<ReadyToStart, EngineError> {
    let spec = WorkflowSpec::compile(&run.workflow);
    let run_dir = config.log_dir.join("workflows").join(&run.id);
    fs::create_dir_all(&run_dir)
        .map_err(|e| EngineError::Invalid(format!("cannot create {}: {e}", run_dir.display())))?;
    Ok(ReadyToStart { spec })
}

/// [`execute_with_agents`] for a run made [`ready_to_start`] beforehand.
#[allow(clippy::too_many_arguments)]
pub fn execute_ready(
    store: &Store,
    config: &EngineConfig,
    agents: &BTreeMap<String, Value>,
    mut run: RunRecord,
    mut steps: Vec<StepRecord>,
    ready: ReadyToStart,
    cancel: &CancelSignal,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<RunRecord, EngineError> {
    let ReadyToStart { spec } = ready;
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
    let moment = moment_now();
    run.status = Status::Running;
    run.started_at = Some(moment.timestamp.clone());
    run.pid = Some(std::process::id());
    store.save_run(Some(&run), &[], true)?;

    let limits = Limits {
        max_parallel: spec.max_parallel.unwrap_or(config.max_parallel),
        timeout: spec.timeout,
    };
    let scope = run_scope(&run);
    let machine = RunMachine::new(
        planned(store, config, &run, &spec, agents, &scope),
        steps,
        scope,
        limits,
        moment.instant,
    );
    let mut driver = Driver {
        store,
        config,
        agents,
        spec: &spec,
        base_env: base_env(&run).into(),
        stops: vec![None; spec.steps.len()],
        reports: vec![None; spec.steps.len()],
        tests: TestRecorder::new(&run),
    };
    let (sender, receiver) = mpsc::channel::<AttemptMessage>();
    drive(
        &mut driver,
        run,
        machine,
        (sender, receiver),
        cancel,
        on_event,
        moment,
    )
}

/// The plan of a run's steps ([`machine::plan`]) with impact selection's decisions
/// ([`super::impact::select`]) for the steps that select affected suites.
fn planned(
    store: &Store,
    config: &EngineConfig,
    run: &RunRecord,
    spec: &WorkflowSpec,
    agents: &BTreeMap<String, Value>,
    scope: &Scope,
) -> Vec<machine::StepPlan> {
    let mut plan = machine::plan(spec, agents);
    let selections = super::impact::select(store, config, run, spec, agents, scope);
    for (planned, selection) in plan.iter_mut().zip(selections) {
        planned.impact = selection;
    }
    plan
}

/// The loop of a run's execution, from `moment`: cancel requests, the machine's turns, the
/// executor's messages, until the machine is done.
fn drive(
    driver: &mut Driver<'_>,
    mut run: RunRecord,
    mut machine: RunMachine,
    (sender, receiver): (mpsc::Sender<AttemptMessage>, mpsc::Receiver<AttemptMessage>),
    cancel: &CancelSignal,
    on_event: &(dyn Fn(&Event) + Sync),
    mut moment: Moment,
) -> Result<RunRecord, EngineError> {
    let (store, config) = (driver.store, driver.config);
    let cancel_file = cancel_request_path(&config.data_dir, &run.id);
    let slots = &*config.agent_switches;
    let mut cancel_seen = false;
    let mut turn = Turn::default();
    loop {
        // A controller shutting down leaves a run to its workers when nothing of it runs
        // here: it stays `running`, and the next start resumes it.
        if config.detach_remote.load(Ordering::SeqCst) && driver.only_remote_in_flight(&machine) {
            tracing::info!(run = %run.id, "left running on its workers");
            return Ok(run);
        }
        // Stop requests.
        if !cancel_seen && (cancel.flag.load(Ordering::SeqCst) || cancel_file.exists()) {
            // A shutdown sets both: leaving the run to its workers wins.
            if config.detach_remote.load(Ordering::SeqCst) && driver.only_remote_in_flight(&machine)
            {
                return Ok(run);
            }
            cancel_seen = true;
            machine.handle(Input::CancelRequested, &moment, slots);
            let _ = fs::remove_file(&cancel_file);
        }
        machine.advance(&moment, slots, &mut turn);
        driver.perform(&mut run, &machine, &turn, &sender, on_event)?;
        if machine.is_done() {
            break;
        }
        // Wait for the executor, a deadline, or the next look at stop requests.
        let wait = machine.next_wake().map_or(CANCEL_POLL, |at| {
            at.saturating_duration_since(Instant::now())
                .min(CANCEL_POLL)
        });
        let mut first = receiver.recv_timeout(wait).ok();
        moment = moment_now();
        while let Some(message) = first.take().or_else(|| receiver.try_recv().ok()) {
            driver.receive(&mut machine, message, &moment, slots);
        }
    }
    let _ = fs::remove_file(&cancel_file);
    enforce_history(store, config, &run)?;
    Ok(run)
}

/// A run that was executing when the process running it ended, rebuilt from its records
/// with its remote attempts adopted ([`recover_or_resume`]): [`execute_resumed`] drives it
/// on from there.
pub struct Resumed {
    /// The run, `running`.
    pub run: RunRecord,
    machine: RunMachine,
    stops: Vec<Option<Arc<dyn AttemptStop>>>,
    channel: (mpsc::Sender<AttemptMessage>, mpsc::Receiver<AttemptMessage>),
}

impl std::fmt::Debug for Resumed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumed")
            .field("run", &self.run.id)
            .finish_non_exhaustive()
    }
}

/// What [`recover_or_resume`] did with the runs a process that ended left `running`.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Runs marked interrupted.
    pub interrupted: Vec<String>,
    /// Runs to execute on, each with its attempts in flight adopted.
    pub resumed: Vec<Resumed>,
}

/// How a step attempt that ran on this machine ends when the run is resumed: its
/// processes died with (or were killed after) the process that ran them.
pub const RESTARTED_LOCAL: &str =
    "the controller restarted while this attempt ran on its machine; its processes were stopped";

/// [`recover`] for a controller whose executor can adopt attempts running elsewhere
/// (workers): a run left `running` with a step in flight that declares `runs_on` is
/// resumed instead of interrupted. Its machine is rebuilt from its records
/// ([`RunMachine::resume`]); each attempt in flight is offered to the executor
/// ([`Executor::adopt`]: a remote attempt carries on where it runs, and what its worker
/// reported meanwhile is applied once); an attempt the executor cannot adopt (a step of
/// this machine, whose processes are killed here) ends failed with [`RESTARTED_LOCAL`]
/// and is retried if its step has retries left. Other runs are interrupted as by
/// [`recover`]. Call before anything else starts runs or serves workers.
pub fn recover_or_resume(
    store: &Store,
    config: &EngineConfig,
    agents: &BTreeMap<String, Value>,
) -> Result<Recovery, EngineError> {
    let mut recovery = Recovery::default();
    for id in store.run_ids_with_status(&[Status::Running])? {
        let Some(run) = store.run(&id)? else {
            continue;
        };
        if run.status != Status::Running {
            continue;
        }
        let steps = store.steps(&run.id)?;
        let spec = WorkflowSpec::compile(&run.workflow);
        if remote_in_flight(&spec, &steps) {
            recovery
                .resumed
                .push(resume_run(store, config, agents, &spec, run, steps)?);
        } else {
            interrupt(store, run, steps)?;
            recovery.interrupted.push(id);
        }
    }
    if !recovery.interrupted.is_empty() {
        store.save_run(None, &[], true)?;
        let orphans =
            super::process::kill_orphaned_steps(&recovery.interrupted.iter().cloned().collect());
        if orphans > 0 {
            tracing::warn!(
                "stopped {orphans} step process group(s) left running by the process that ended"
            );
        }
    }
    Ok(recovery)
}

fn resume_run(
    store: &Store,
    config: &EngineConfig,
    agents: &BTreeMap<String, Value>,
    spec: &WorkflowSpec,
    run: RunRecord,
    steps: Vec<StepRecord>,
) -> Result<Resumed, EngineError> {
    let moment = moment_now();
    let started = run
        .started_at
        .as_deref()
        .map_or(moment.instant, |at| machine::instant_of(at, &moment));
    let limits = Limits {
        max_parallel: spec.max_parallel.unwrap_or(config.max_parallel),
        timeout: spec.timeout,
    };
    let scope = run_scope(&run);
    let (machine, in_flight) = RunMachine::resume(
        planned(store, config, &run, spec, agents, &scope),
        steps,
        scope,
        limits,
        started,
        &moment,
        &*config.agent_switches,
    );
    let mut driver = Driver {
        store,
        config,
        agents,
        spec,
        base_env: base_env(&run).into(),
        stops: vec![None; spec.steps.len()],
        reports: vec![None; spec.steps.len()],
        tests: TestRecorder::new(&run),
    };
    let (sender, receiver) = mpsc::channel::<AttemptMessage>();
    let mut local = std::collections::BTreeSet::new();
    for machine::InFlight { index, number } in in_flight {
        let attempt = driver.attempt(&run, &machine, index, number)?;
        match config.executor.adopt(attempt, sender.clone()) {
            Some(stop) => driver.stops[index] = Some(stop),
            None => {
                let step = &machine.steps()[index];
                local.insert((run.id.clone(), step.name.clone()));
                let _ = sender.send(restarted_locally(step, number, &moment));
            }
        }
    }
    let killed = super::process::kill_orphaned_step_processes(&local);
    if killed > 0 {
        tracing::warn!(
            "run {}: stopped {killed} process group(s) of steps that ran on this machine",
            run.id
        );
    }
    Ok(Resumed {
        run,
        machine,
        stops: driver.stops,
        channel: (sender, receiver),
    })
}

/// The end of an attempt of this machine that a restart cut off.
fn restarted_locally(step: &StepRecord, number: u32, moment: &Moment) -> AttemptMessage {
    let message = RESTARTED_LOCAL.to_owned();
    AttemptMessage {
        index: step.index as usize,
        number,
        event: AttemptEvent::Finished(Box::new(AttemptFinished {
            outcome: Outcome {
                status: Some(Status::Failed),
                message: Some(message.clone()),
                ..Outcome::default()
            },
            attempt: Some(Attempt {
                number,
                status: Status::Failed,
                started_at: step
                    .started_at
                    .clone()
                    .unwrap_or_else(|| moment.timestamp.clone()),
                finished_at: moment.timestamp.clone(),
                duration_ms: 0,
                exit_code: None,
                message: Some(message),
                cpu_seconds: None,
                max_rss_bytes: None,
                orphans_killed: None,
                worker: None,
            }),
        })),
    }
}

/// Executes a resumed run ([`recover_or_resume`]) to its end and returns it.
pub fn execute_resumed(
    store: &Store,
    config: &EngineConfig,
    agents: &BTreeMap<String, Value>,
    resumed: Resumed,
    cancel: &CancelSignal,
    on_event: &(dyn Fn(&Event) + Sync),
) -> Result<RunRecord, EngineError> {
    let Resumed {
        run,
        machine,
        stops,
        channel,
    } = resumed;
    let spec = WorkflowSpec::compile(&run.workflow);
    let run_dir = config.log_dir.join("workflows").join(&run.id);
    fs::create_dir_all(&run_dir)
        .map_err(|e| EngineError::Invalid(format!("cannot create {}: {e}", run_dir.display())))?;
    // The run was admitted by the process that ended; its ticket is taken again so that
    // the workflow's concurrency policy sees it. A refusal (another run of the workflow
    // resumed first) leaves it running: it was running already.
    let _ticket = config
        .admission
        .admit(
            &run.workflow_id,
            &run.id,
            Policy::of(&run.workflow),
            &cancel.flag,
        )
        .ok();
    let mut driver = Driver {
        store,
        config,
        agents,
        spec: &spec,
        base_env: base_env(&run).into(),
        stops,
        reports: vec![None; spec.steps.len()],
        tests: TestRecorder::new(&run),
    };
    drive(
        &mut driver,
        run,
        machine,
        channel,
        cancel,
        on_event,
        moment_now(),
    )
}

/// How often a run looks for a cancel request while nothing else wakes it.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The IO side of a run's execution: the store, the step logs, the executor.
struct Driver<'a> {
    store: &'a Store,
    config: &'a EngineConfig,
    agents: &'a BTreeMap<String, Value>,
    spec: &'a WorkflowSpec,
    base_env: Arc<[(String, EnvValue)]>,
    /// The attempt in flight of each step, to stop it.
    stops: Vec<Option<Arc<dyn AttemptStop>>>,
    /// What a report step reports on, read when it first starts.
    reports: Vec<Option<Arc<ReportData>>>,
    /// Records attempts' test cases into their history.
    tests: TestRecorder,
}

impl Driver<'_> {
    /// An executor's message, handed to the machine; a step's final attempt first has its
    /// artifacts kept.
    fn receive(
        &mut self,
        machine: &mut RunMachine,
        message: AttemptMessage,
        now: &Moment,
        slots: &dyn AgentSlots,
    ) {
        let AttemptMessage {
            index,
            number,
            event,
        } = message;
        let input = match event {
            AttemptEvent::Started { at } => Input::AttemptStarted { index, number, at },
            AttemptEvent::Log(bytes) => {
                if let Some(step) = machine.steps().get(index) {
                    self.append_log(&step.log, &bytes);
                }
                return;
            }
            AttemptEvent::Finished(mut finished) => {
                if !finished.outcome.tests.is_empty() && machine.is_current(index, number) {
                    // Before the machine judges the attempt: a quarantined failure
                    // neither fails the step nor retries it.
                    let log = machine.steps().get(index).map(|s| s.log.clone());
                    let config = self.config;
                    let note = |text: &str| {
                        let path = log.as_ref().map(|l| config.log_dir.join(l));
                        if let Some(Ok(log)) = path.map(|p| StepLog::open(&p, config.max_log_bytes))
                        {
                            log.note(text);
                        }
                    };
                    self.tests.record(
                        self.store,
                        &config.tests,
                        (index, number),
                        &mut finished,
                        &note,
                    );
                }
                if machine.ends_step(index, number, &finished)
                    && !finished.outcome.artifacts.is_empty()
                {
                    let step = &machine.steps()[index];
                    let log = StepLog::open(
                        &self.config.log_dir.join(&step.log),
                        self.config.max_log_bytes,
                    );
                    finished.outcome.artifacts = keep_artifacts(
                        self.config,
                        &step.run_id,
                        &step.name,
                        std::mem::take(&mut finished.outcome.artifacts),
                        log.ok().as_ref(),
                    );
                }
                Input::AttemptFinished {
                    index,
                    number,
                    finished,
                }
            }
        };
        machine.handle(input, now, slots);
    }

    /// One turn's work, in order: notes, what ended, commands, the run's end, one durable
    /// batch, then the events.
    fn perform(
        &mut self,
        run: &mut RunRecord,
        machine: &RunMachine,
        turn: &Turn,
        sender: &mpsc::Sender<AttemptMessage>,
        on_event: &(dyn Fn(&Event) + Sync),
    ) -> Result<(), EngineError> {
        let steps = machine.steps();
        for (index, note) in &turn.notes {
            self.note(&steps[*index].log, note);
        }
        for &index in &turn.ended {
            self.stops[index] = None;
        }
        for command in &turn.commands {
            match *command {
                Command::Stop { index, reason } => {
                    if let Some(stop) = &self.stops[index] {
                        Arc::clone(stop).stop(reason);
                    }
                }
                Command::Start { index, number } => {
                    let attempt = self.attempt(run, machine, index, number)?;
                    self.stops[index] = Some(self.config.executor.start(attempt, sender.clone()));
                }
            }
        }
        // After the starts: the next step of a chain need not wait for these lines.
        for &index in &turn.ended {
            agent_log(self.config, &steps[index]);
        }
        if let Some(end) = &turn.run_end {
            run.status = end.status;
            run.message = end.message.clone();
            run.finished_at = Some(end.finished_at.clone());
            run.duration_ms = Some(end.duration_ms);
            run.tests = end.tests;
            // Before the final state is stored and reported: whoever sees the run
            // finished reads reports that say so.
            self.rewrite_reports(run, machine);
        }
        if turn.writes() {
            let records: Vec<&StepRecord> = turn.changed.iter().map(|&i| &steps[i]).collect();
            // The run record (with its whole workflow) is written only when it changes:
            // at the start and at the end, so a step costs the same in a 10-step workflow
            // as in a 1,000-step one.
            self.store
                .save_run(turn.run_end.is_some().then_some(&*run), &records, true)?;
            for event in &turn.events {
                on_event(event);
            }
        }
        Ok(())
    }

    /// Attempt `number` of step `index`, for the executor.
    fn attempt(
        &mut self,
        run: &RunRecord,
        machine: &RunMachine,
        index: usize,
        number: u32,
    ) -> Result<StepAttempt, EngineError> {
        let step = &machine.steps()[index];
        let plan = &machine.plan()[index];
        if self.reports[index].is_none() && is_report_step(&step.agent, self.agents) {
            self.reports[index] = Some(Arc::new(report_data(self.store, run, machine.steps())?));
        }
        Ok(StepAttempt {
            run_id: run.id.clone(),
            workflow_id: run.workflow_id.clone(),
            index,
            step: step.name.clone(),
            number,
            attempts: plan.retries + 1,
            agent: step.agent.clone(),
            action: step.action.clone(),
            spec: Arc::clone(&self.spec.steps[index].raw),
            agent_config: self.agents.get(&step.agent).cloned(),
            scope: Arc::clone(machine.scope()),
            env: Arc::clone(&self.base_env),
            log: step.log.clone(),
            timeout: plan.timeout,
            reports: self.reports[index].clone(),
            placement: self.spec.steps[index].placement.clone(),
        })
    }

    /// Whether the run has steps in flight and every one of them runs on a worker (declares
    /// `runs_on` and is no report step, which always runs here).
    fn only_remote_in_flight(&self, machine: &RunMachine) -> bool {
        let mut running = machine
            .steps()
            .iter()
            .enumerate()
            .filter(|(_, step)| step.status == Status::Running)
            .peekable();
        running.peek().is_some()
            && running.all(|(index, step)| {
                self.spec.steps[index].placement.is_some()
                    && !is_report_step(&step.agent, self.agents)
            })
    }

    /// Lines of the engine's own in a step's log.
    fn note(&self, log: &str, text: &str) {
        if let Ok(log) = StepLog::open(&self.config.log_dir.join(log), self.config.max_log_bytes) {
            log.note(text);
        }
    }

    /// Output an executor sent rather than wrote, appended to the step's log (capped).
    fn append_log(&self, log: &str, bytes: &[u8]) {
        if let Ok(log) = StepLog::open(&self.config.log_dir.join(log), self.config.max_log_bytes) {
            log.write_masked(bytes);
        }
    }

    /// Writes again, with the run's final state, every report a report step of this
    /// execution wrote while the run was still going (steps kept from an earlier run are
    /// left alone). A report that cannot be written again is logged and keeps what the
    /// step wrote.
    fn rewrite_reports(&self, run: &RunRecord, machine: &RunMachine) {
        let steps = machine.steps();
        let written: Vec<usize> = (0..steps.len())
            .filter(|&i| {
                machine.ran(i)
                    && steps[i].status == Status::Succeeded
                    && is_report_step(&steps[i].agent, self.agents)
            })
            .collect();
        if written.is_empty() {
            return;
        }
        let data = match report_data(self.store, run, steps) {
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
            let parameters = self.spec.steps[index]
                .raw
                .get("parameters")
                .map(|p| expand::substitute(p, &scope))
                .transpose()
                .map(|p| p.and_then(|p| p.as_object().cloned()).unwrap_or_default());
            let result = parameters.and_then(|parameters| {
                self.config
                    .executor
                    .rewrite_report(&step.action, &parameters, &data)
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

pub use crate::reconcile::view::agent_configs;

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
    if !config
        .history
        .due(run, &config.admission.active(&run.workflow_id))
    {
        return Ok(());
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

/// Per workflow: when its history was last trimmed, and the runs still active that have
/// already come this far (their final state is stored). One per process, in
/// [`EngineConfig::history`].
#[derive(Debug, Default)]
pub struct HistoryTrims {
    trims: Mutex<HashMap<String, WorkflowTrims>>,
}

/// One workflow's entry in [`HistoryTrims`].
#[derive(Debug, Default)]
struct WorkflowTrims {
    /// When its history was last trimmed.
    last: Option<Instant>,
    /// Its active runs that have finished here.
    finished: HashSet<String>,
}

impl HistoryTrims {
    /// Whether `run`, just finished, trims its workflow's history: always when no other
    /// of the workflow's `active` runs is still to finish, else at most every
    /// [`HISTORY_EVERY`].
    fn due(&self, run: &RunRecord, active: &[String]) -> bool {
        let mut trims = self.trims.lock().unwrap_or_else(|e| e.into_inner());
        let WorkflowTrims { last, finished } = trims.entry(run.workflow_id.clone()).or_default();
        finished.retain(|id| active.contains(id));
        finished.insert(run.id.clone());
        let still_to_finish = active.iter().any(|id| !finished.contains(id));
        if still_to_finish && last.is_some_and(|at| at.elapsed() < HISTORY_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
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
    log: Option<&StepLog>,
) -> Vec<String> {
    let note = |text: &str| {
        if let Some(log) = log {
            log.note(text);
        }
    };
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
            note(&format!("artifact {artifact} not kept: no such file"));
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
                note(&format!("kept {artifact} as {shown}"));
                kept.push(shown);
                taken.push(target);
            }
            Err(err) => note(&format!(
                "artifact {artifact} not kept: cannot copy it to {}: {err}",
                target.display()
            )),
        }
    }
    kept
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
                status: *status,
                ..StepRecord::queued(
                    "run_1",
                    index as u32,
                    (*name).into(),
                    "shell".into(),
                    "run".into(),
                    String::new(),
                )
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

    /// An executor that runs nothing: each attempt reports itself started, sends one log
    /// line and finishes at once, failing the first attempt of a step called `flaky`.
    #[derive(Debug, Default)]
    struct Scripted {
        starts: Mutex<Vec<String>>,
    }

    struct Unstoppable;

    impl AttemptStop for Unstoppable {
        fn stop(self: Arc<Self>, _reason: super::super::executor::StopReason) {}
    }

    impl Executor for Scripted {
        fn start(
            &self,
            attempt: StepAttempt,
            events: mpsc::Sender<AttemptMessage>,
        ) -> Arc<dyn AttemptStop> {
            self.starts
                .lock()
                .unwrap()
                .push(format!("{}#{}", attempt.step, attempt.number));
            let fails = attempt.step == "flaky" && attempt.number == 1;
            let status = if fails {
                Status::Failed
            } else {
                Status::Succeeded
            };
            let send = |event| {
                events
                    .send(AttemptMessage {
                        index: attempt.index,
                        number: attempt.number,
                        event,
                    })
                    .unwrap()
            };
            send(AttemptEvent::Started { at: Instant::now() });
            send(AttemptEvent::Log(
                format!("{} attempt {}\n", attempt.step, attempt.number).into_bytes(),
            ));
            let mut outputs = Map::new();
            outputs.insert("seen".into(), Value::from(attempt.scope.steps.len()));
            send(AttemptEvent::Finished(Box::new(
                super::super::executor::AttemptFinished {
                    outcome: super::super::executor::Outcome {
                        status: Some(status),
                        outputs,
                        ..Default::default()
                    },
                    attempt: Some(crate::model::Attempt {
                        number: attempt.number,
                        status,
                        started_at: now(),
                        finished_at: now(),
                        duration_ms: 0,
                        exit_code: Some(i32::from(fails)),
                        message: None,
                        cpu_seconds: None,
                        max_rss_bytes: None,
                        orphans_killed: None,
                        worker: None,
                    }),
                },
            )));
            Arc::new(Unstoppable)
        }

        fn rewrite_report(
            &self,
            _action: &str,
            _parameters: &Map<String, Value>,
            _data: &ReportData,
        ) -> Result<(), String> {
            Ok(())
        }
    }

    #[test]
    fn the_driver_runs_a_workflow_through_any_executor_and_reports_only_what_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let executor = Arc::new(Scripted::default());
        let config = EngineConfig {
            project_dir: dir.path().to_owned(),
            log_dir: dir.path().join("logs"),
            reports_dir: dir.path().join("reports"),
            data_dir: dir.path().join("data"),
            history_limit: 10,
            max_parallel: 4,
            admission: RunAdmission::new(),
            agent_switches: AgentSwitches::new(),
            max_log_bytes: 1 << 20,
            agent_logs: AgentLogs::new(crate::logging::Rotation::default()),
            executor: Arc::clone(&executor) as Arc<dyn Executor>,
            history: Arc::default(),
            detach_remote: Arc::default(),
            tests: Default::default(),
            git_source_path: None,
        };
        let workflow = json!({"name": "x", "steps": [
            {"name": "build"},
            {"name": "flaky", "depends_on": ["build"], "retries": 1, "retry_delay": 0},
            {"name": "lint", "depends_on": ["build"]},
            {"name": "never", "depends_on": ["flaky"], "if": "failure()"},
        ]});
        let trigger = Trigger {
            kind: "api".into(),
            details: Map::new(),
        };
        let run = new_run("wf_x", "x", workflow, Map::new(), trigger).unwrap();
        let steps = initial_steps(&run).unwrap();
        let run_id = run.id.clone();
        let heard = Mutex::new(Vec::new());
        let on_event = |event: &Event| {
            let (kind, step) = match event {
                Event::StepStarted { step } => ("started", step),
                Event::StepFinished { step } => ("finished", step),
                Event::StepRetrying { step, .. } => ("retrying", step),
            };
            let stored = store.steps(&run_id).unwrap();
            let stored = stored.iter().find(|s| s.name == step.name).unwrap();
            assert_eq!(
                (stored.status, stored.attempts.len()),
                (step.status, step.attempts.len()),
                "{kind} {} is reported once durable",
                step.name
            );
            heard.lock().unwrap().push(format!("{kind} {}", step.name));
        };
        let cancel = CancelSignal {
            flag: Arc::new(AtomicBool::new(false)),
        };
        let finished = execute_with_agents(
            &store,
            &config,
            &BTreeMap::new(),
            run,
            steps,
            &cancel,
            &on_event,
        )
        .unwrap();

        assert_eq!(finished.status, Status::Succeeded, "{:?}", finished.message);
        assert_eq!(
            *executor.starts.lock().unwrap(),
            ["build#1", "flaky#1", "lint#1", "flaky#2"]
        );
        let heard = heard.into_inner().unwrap();
        assert_eq!(heard[..2], ["started build", "finished build"]);
        assert!(heard.contains(&"retrying flaky".to_owned()), "{heard:?}");
        assert!(
            heard.contains(&"finished never".to_owned()),
            "skipped: {heard:?}"
        );
        let stored = store.steps(&finished.id).unwrap();
        let flaky = stored.iter().find(|s| s.name == "flaky").unwrap();
        assert_eq!(flaky.attempts.len(), 2);
        assert_eq!(flaky.outputs["seen"], 1, "the scope it saw held build");
        let never = stored.iter().find(|s| s.name == "never").unwrap();
        assert_eq!(never.status, Status::Skipped);
        let log = fs::read_to_string(dir.path().join("logs").join(&flaky.log)).unwrap();
        assert!(
            log.starts_with("flaky attempt 1\n[orchestrator] attempt 1 failed; retrying in"),
            "{log}"
        );
        assert!(log.ends_with("flaky attempt 2\n"), "{log}");
        assert_eq!(
            store.run(&finished.id).unwrap().unwrap().status,
            Status::Succeeded
        );
    }
}
