//! `orchestrator start`: the long-running controller. One process holds the store and runs
//! the source watcher (reconciling every change), the runs started through the API, and the
//! HTTP server (REST, WebSocket, metrics). Everything it reports goes through the event bus
//! once it is durable.

pub mod controller;
pub mod http;
pub mod log_tail;
pub mod metrics;
pub mod process_file;
pub mod source;
pub mod view;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};

use crate::config::LoadedConfig;
use crate::engine::process;
use crate::engine::run::{self, CancelSignal, EngineConfig, EngineError, Event as EngineEvent};
use crate::events::{EventBus, EventKind};
use crate::model::{RunRecord, Status, StepRecord};
use crate::store::Store;

/// What every part of the server shares.
pub struct Shared {
    /// The store (this process holds it).
    pub store: Arc<Store>,
    /// The effective configuration.
    pub config: LoadedConfig,
    /// The environment's name.
    pub environment: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Where runs put their files, and the in-process admission and agent switches.
    pub engine: EngineConfig,
    /// The event bus.
    pub events: EventBus,
    /// Counters for `/metrics`.
    pub metrics: metrics::Metrics,
    /// When the server started.
    pub started: Instant,
    /// The same, as RFC 3339.
    pub started_at: String,
    /// Cancel flags of the runs handed over to this process: executing, or waiting for a
    /// run slot.
    pub active_runs: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// The limit on runs executing at once (`runs.max_active`) and the runs waiting for a
    /// slot.
    pub run_slots: crate::engine::admission::RunSlots<WaitingRun>,
    /// Set once the first reconcile is done and the listener is bound.
    pub ready: AtomicBool,
    /// Set when shutting down: no new runs start.
    pub stopping: AtomicBool,
    /// One reconcile at a time.
    pub reconcile_lock: Mutex<()>,
    /// The API token in force: configured (`server.api_token`) or generated for a
    /// non-loopback address (see [`crate::config::api_token`]).
    pub api_token: Option<String>,
    /// The git repository followed instead of the manifest directories, when one is
    /// configured (`source.git` or `start --source`).
    pub git: Option<source::GitState>,
    /// What the read routes serve, in memory.
    pub view: view::View,
    /// `run_log` events: the logs of active runs, read while clients subscribe to them.
    pub log_tail: log_tail::LogTailer,
    /// `logs/api.log`, the access log.
    pub api_log: Mutex<Option<crate::logging::RotatingFile>>,
    /// Workflow, agent and test metrics over `monitoring.metrics_window`, and the agents'
    /// health checks.
    pub stats: Arc<crate::monitor::stats::RunStats>,
    /// System metrics: the latest sample, recent samples and the persisted history.
    pub system: Arc<crate::monitor::system::SystemMonitor>,
    /// Alert evaluation: the notification channels, and the lock of the alerts' states.
    pub alerts: crate::monitor::alerts::Alerts,
    /// What the HTTP routes keep between requests (save lock, compiled triggers, webhook body budget, delivery keys).
    pub routes: crate::api::RouteState,
    /// Held while the schedules' state tree is read, changed and written back (scheduler pass, pause, resume).
    pub schedule_lock: crate::scheduler::StateLock,
}

impl Shared {
    /// Appends a line to the access log.
    pub fn log_request(&self, line: &str) {
        use std::io::Write;
        if let Some(file) = self
            .api_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let _ = writeln!(file, "{now} {line}");
        }
    }

    /// The `source` object of `GET /api/status`: `kind` (`dir` or `git`), where manifests
    /// come from and the stored status of that source (see [`source::status_json`]).
    pub fn source_json(&self) -> Result<Value, crate::store::StoreError> {
        source::status_json(self)
    }

    /// The name the store keeps the status of the source in use under: `git` or `dir`
    /// (for `store.source_status(...)`).
    pub fn source_name(&self) -> &'static str {
        if self.git.is_some() {
            source::GIT_SOURCE
        } else {
            "dir"
        }
    }

    /// The runs executing now (not those waiting for a run slot).
    pub fn active_run_ids(&self) -> Vec<String> {
        let waiting: std::collections::HashSet<String> =
            self.run_slots.waiting_ids().into_iter().collect();
        let mut ids: Vec<String> = self
            .live_run_ids()
            .into_iter()
            .filter(|id| !waiting.contains(id))
            .collect();
        ids.sort();
        ids
    }

    /// The runs this process holds: executing, or waiting for a run slot.
    pub fn live_run_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .active_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }

    /// How many runs wait for a run slot.
    pub fn waiting_runs(&self) -> usize {
        self.run_slots.waiting()
    }

    /// Asks a run of this process to stop; false when it is not here. A run waiting for a
    /// slot ends `cancelled` at once (durably), without starting.
    pub fn cancel_run(&self, run_id: &str) -> bool {
        let flag = self
            .active_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
            .cloned();
        let Some(flag) = flag else {
            return false;
        };
        // Set first: a run leaving the queue right now sees it before it starts.
        flag.store(true, Ordering::SeqCst);
        if self.run_slots.remove(run_id).is_some() {
            end_unstarted(
                self,
                vec![(run_id.to_owned(), None)],
                Status::Cancelled,
                CANCELLED_WAITING,
            );
        }
        true
    }
}

/// A run as events and the API show it (without the expanded workflow).
pub fn run_summary(run: &RunRecord) -> Value {
    json!({
        "id": run.id,
        "workflow_id": run.workflow_id,
        "workflow_name": run.workflow_name,
        "status": run.status,
        "trigger": run.trigger,
        "parameters": run.parameters,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_ms": run.duration_ms,
        "message": run.message,
        "tests": run.tests,
        "rerun_of": run.rerun_of,
        "steps": run.steps.len(),
    })
}

fn step_summary(step: &StepRecord) -> Value {
    json!({
        "run_id": step.run_id,
        "index": step.index,
        "name": step.name,
        "agent": step.agent,
        "action": step.action,
        "status": step.status,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "duration_ms": step.duration_ms,
        "exit_code": step.exit_code,
        "message": step.message,
        "attempts": step.attempts.len(),
        "tests": crate::model::TestSummary::of(&step.tests),
        "outputs": step.outputs,
    })
}

/// A run waiting for a run slot: only what is needed to start it. Its record and steps
/// stay in the store (it is durably `queued`) and are read when a slot frees, so that ten
/// thousand waiting runs cost their ids, not their expanded workflows.
#[derive(Debug)]
pub struct WaitingRun {
    flag: Arc<AtomicBool>,
    /// Not before this instant (a schedule's fire prepared ahead of its due instant).
    not_before: Option<std::time::SystemTime>,
}

/// A run about to execute in a slot it holds: its record and queued steps, its cancel flag.
#[derive(Debug)]
struct PendingRun {
    run: RunRecord,
    steps: Vec<StepRecord>,
    flag: Arc<AtomicBool>,
    /// Not before this instant (a schedule's fire prepared ahead of its due instant).
    not_before: Option<std::time::SystemTime>,
}

/// Starts a created run: executes it under the server-wide limit on runs executing at once
/// (`runs.max_active`) and its workflow's concurrency policy, publishing each durable
/// change. Returns at once: with a slot free the run starts in a thread; otherwise it waits,
/// `queued`, and starts in the order it came as slots free.
pub fn spawn_run(shared: &Arc<Shared>, run: RunRecord, steps: Vec<StepRecord>) {
    spawn_run_at(shared, run, steps, None);
}

/// [`spawn_run`] for a run that must not start before `not_before`: its thread is ready
/// beforehand (the scheduler prepares a fire ahead of its due instant), so that at the
/// instant only the run itself is left to do.
pub fn spawn_run_at(
    shared: &Arc<Shared>,
    run: RunRecord,
    steps: Vec<StepRecord>,
    not_before: Option<std::time::SystemTime>,
) {
    let flag = Arc::new(AtomicBool::new(false));
    shared
        .active_runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run.id.clone(), Arc::clone(&flag));
    shared.view.record_run(&run);
    let waiting = WaitingRun {
        flag: Arc::clone(&flag),
        not_before,
    };
    // Queued, the run keeps only its id and flag: the record and steps are dropped here
    // and read back from the store when its slot comes.
    if shared.run_slots.enter(&run.id, waiting).is_some() {
        start_worker(
            shared,
            PendingRun {
                run,
                steps,
                flag,
                not_before,
            },
        );
    }
}

/// Starts, through the run slots and in creation order, the runs a process that ended left
/// `queued`: runs created through the API, a webhook or a schedule that were waiting for a
/// slot (or for their workflow's `queue` policy) when it stopped. Each was acknowledged, so
/// it runs now, once: the scheduler sees these as live and does not start a pending fire's
/// run again. A schedule's run prepared ahead of its due instant still waits for it. Call
/// at start, after [`run::recover`] and before the scheduler runs; returns their ids.
pub fn resume_queued_runs(shared: &Arc<Shared>) -> Result<Vec<String>, crate::store::StoreError> {
    let live: std::collections::HashSet<String> = shared.live_run_ids().into_iter().collect();
    let mut resumed = Vec::new();
    for id in shared.store.run_ids_with_status(&[Status::Queued])? {
        if live.contains(&id) {
            continue;
        }
        let Some(run) = shared.store.run(&id)? else {
            continue;
        };
        if run.status != Status::Queued {
            continue;
        }
        let not_before = (run.trigger.kind == "schedule")
            .then(|| run.trigger.details.get("due").and_then(Value::as_str))
            .flatten()
            .and_then(|due| chrono::DateTime::parse_from_rfc3339(due).ok())
            .map(std::time::SystemTime::from)
            .filter(|due| *due > std::time::SystemTime::now());
        let steps = shared.store.steps(&id)?;
        spawn_run_at(shared, run, steps, not_before);
        resumed.push(id);
    }
    Ok(resumed)
}

/// A thread that executes `first` in the slot it holds, then each waiting run the slot is
/// handed to as runs end, until none waits.
fn start_worker(shared: &Arc<Shared>, first: PendingRun) {
    let worker = Arc::clone(shared);
    // Kept to end the run if no thread can be had.
    let fallback = (first.run.clone(), first.steps.clone());
    let spawned = std::thread::Builder::new()
        .name("run worker".into())
        .spawn(move || {
            let mut next = Some(first);
            while let Some(pending) = next.take() {
                execute_pending(&worker, pending);
                next = next_waiting(&worker);
            }
        });
    if let Err(err) = spawned {
        tracing::error!("cannot start a thread for a run: {err}");
        shared.metrics.errors.inc();
        let message = format!("the server could not start a thread for this run: {err}");
        end_unstarted(
            shared,
            vec![(fallback.0.id.clone(), Some(fallback))],
            Status::Failed,
            &message,
        );
        // The slot goes to the next waiting run, which tries again.
        if let Some(next) = next_waiting(shared) {
            start_worker(shared, next);
        }
    }
}

/// Gives back the slot of a run that ended; the first waiting run that is still wanted
/// takes it, its record and steps read from the store. Runs cancelled while they waited,
/// and every waiting run once the server is stopping, end here without starting.
fn next_waiting(shared: &Shared) -> Option<PendingRun> {
    loop {
        let (id, waiting) = shared.run_slots.release()?;
        if shared.stopping.load(Ordering::SeqCst) {
            end_unstarted(
                shared,
                vec![(id, None)],
                Status::Interrupted,
                SHUTDOWN_BEFORE_START,
            );
            continue;
        }
        if waiting.flag.load(Ordering::SeqCst) {
            end_unstarted(
                shared,
                vec![(id, None)],
                Status::Cancelled,
                CANCELLED_WAITING,
            );
            continue;
        }
        match load_queued(shared, &id) {
            Ok(Some((run, steps))) => {
                return Some(PendingRun {
                    run,
                    steps,
                    flag: waiting.flag,
                    not_before: waiting.not_before,
                })
            }
            Ok(None) => {
                // Gone from the store, or no longer queued: nothing to start.
                forget_run(shared, &id);
            }
            Err(err) => {
                tracing::error!(run = %id, "cannot read a waiting run to start it: {err}");
                shared.metrics.errors.inc();
                forget_run(shared, &id);
            }
        }
    }
}

/// A run's record and its steps, read from the store.
type Loaded = (RunRecord, Vec<StepRecord>);

/// A waiting run's record and steps, when it is still `queued` in the store.
fn load_queued(shared: &Shared, id: &str) -> Result<Option<Loaded>, crate::store::StoreError> {
    match shared.store.run(id)? {
        Some(run) if run.status == Status::Queued => {
            let steps = shared.store.steps(id)?;
            Ok(Some((run, steps)))
        }
        _ => Ok(None),
    }
}

/// Drops a run from the runs this process holds.
fn forget_run(shared: &Shared, id: &str) {
    shared
        .active_runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id);
}

const SHUTDOWN_BEFORE_START: &str =
    "interrupted: the server shut down before the run started (it was waiting for a run slot, runs.max_active)";
const CANCELLED_WAITING: &str = "cancelled while it waited for a run slot (runs.max_active)";

/// Ends runs that never started (cancelled or interrupted while they waited for a slot):
/// written in one durable batch, then each is reported complete. Each run comes by id,
/// with its record and steps when they are at hand (read from the store otherwise).
fn end_unstarted(
    shared: &Shared,
    pending: Vec<(String, Option<Loaded>)>,
    status: Status,
    message: &str,
) {
    if pending.is_empty() {
        return;
    }
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut ended = Vec::with_capacity(pending.len());
    let mut gone = Vec::new();
    let mut failed = false;
    for (id, loaded) in pending {
        let loaded = match loaded {
            Some(loaded) => Some(loaded),
            None => match load_queued(shared, &id) {
                Ok(loaded) => loaded,
                Err(err) => {
                    tracing::error!(run = %id, "cannot read a waiting run to end it: {err}");
                    failed = true;
                    None
                }
            },
        };
        let Some((mut run, mut steps)) = loaded else {
            gone.push(id);
            continue;
        };
        for step in steps.iter_mut().filter(|s| !s.status.is_finished()) {
            step.status = status;
            step.finished_at = Some(at.clone());
            step.message = Some(message.to_owned());
        }
        run.status = status;
        run.message = Some(message.to_owned());
        run.finished_at = Some(at.clone());
        run.duration_ms = Some(0);
        let records: Vec<&StepRecord> = steps.iter().collect();
        if let Err(err) = shared.store.save_run(Some(&run), &records, false) {
            tracing::error!(run = %run.id, "cannot record that the run never started: {err}");
            failed = true;
        }
        ended.push(run);
    }
    if let Err(err) = shared.store.save_run(None, &[], true) {
        tracing::error!("cannot record that runs never started: {err}");
        failed = true;
    }
    if failed {
        shared.metrics.errors.inc();
    }
    let mut active = shared.active_runs.lock().unwrap_or_else(|e| e.into_inner());
    for id in ended.iter().map(|run| &run.id).chain(&gone) {
        active.remove(id);
    }
    drop(active);
    for run in ended {
        shared.metrics.record_run(&run);
        shared.view.record_run(&run);
        shared
            .events
            .publish(EventKind::WorkflowCompleted, run_summary(&run));
    }
}

/// Ends every run waiting for a slot as `interrupted` (the server is stopping: no new runs
/// start), in one durable batch.
pub fn interrupt_waiting_runs(shared: &Shared) {
    let waiting: Vec<(String, Option<Loaded>)> = shared
        .run_slots
        .drain()
        .into_iter()
        .map(|(id, _)| (id, None))
        .collect();
    if !waiting.is_empty() {
        tracing::warn!(
            runs = waiting.len(),
            "shutting down: runs waiting for a slot end interrupted"
        );
    }
    end_unstarted(shared, waiting, Status::Interrupted, SHUTDOWN_BEFORE_START);
}

/// Executes a run that holds a slot, in the calling thread, to its end.
fn execute_pending(shared: &Arc<Shared>, pending: PendingRun) {
    let PendingRun {
        run,
        steps,
        flag,
        not_before,
    } = pending;
    let id = run.id.clone();
    let events = shared.events.clone();
    let run_dir = shared.engine.log_dir.join("workflows").join(&id);
    shared.log_tail.add(&id, run_dir);
    let on_event = |event: &EngineEvent| match event {
        EngineEvent::StepStarted { step } => {
            events.publish(EventKind::StepStarted, step_summary(step))
        }
        EngineEvent::StepFinished { step } => {
            events.publish(EventKind::StepCompleted, step_summary(step))
        }
        EngineEvent::StepRetrying { step, delay } => {
            let mut payload = step_summary(step);
            payload["retry_in_ms"] = json!(delay.as_millis() as u64);
            events.publish(EventKind::StepRetrying, payload)
        }
    };
    let agents = run::agent_configs(&shared.view.objects().records);
    let summary = run_summary(&run);
    if let Some(at) = not_before {
        // Ready ahead of time: wait for the instant itself.
        if let Ok(wait) = at.duration_since(std::time::SystemTime::now()) {
            std::thread::sleep(wait);
        }
    }
    shared.metrics.runs_started.inc();
    events.publish(EventKind::WorkflowStarted, summary);
    let result = run::execute_with_agents(
        &shared.store,
        &shared.engine,
        &agents,
        run,
        steps,
        &CancelSignal { flag },
        &on_event,
    );
    // Every line is published before the run is reported complete.
    shared.log_tail.finish(&id, &events);
    let result = result.and_then(|finished| {
        if shared.stopping.load(Ordering::SeqCst) && finished.status == Status::Cancelled {
            Ok(interrupted_by_shutdown(&shared.store, finished)?)
        } else {
            Ok(finished)
        }
    });
    shared
        .active_runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    match result {
        Ok(finished) => {
            let steps = shared.store.steps(&id).unwrap_or_default();
            shared.metrics.record_run(&finished);
            shared.metrics.record_steps(&steps);
            shared.stats.record(&finished, &steps);
            shared.view.record_run(&finished);
            events.publish(EventKind::WorkflowCompleted, run_summary(&finished));
        }
        Err(err) => {
            tracing::error!(run = %id, "run failed to execute: {err}");
            shared.metrics.errors.inc();
        }
    }
}

/// A run stopped because the server shut down is `interrupted`, not `cancelled`: nobody
/// asked for it to stop, and a re-run is what it needs.
fn interrupted_by_shutdown(
    store: &Store,
    mut run: RunRecord,
) -> Result<RunRecord, crate::store::StoreError> {
    let mut steps = store.steps(&run.id)?;
    for step in steps.iter_mut().filter(|s| s.status == Status::Cancelled) {
        step.status = Status::Interrupted;
        step.message = Some("the server shut down before this step finished".into());
    }
    run.status = Status::Interrupted;
    run.message = Some(
        "interrupted: the server shut down before the run finished; its steps were stopped after the grace period"
            .into(),
    );
    store.save_run(Some(&run), &steps.iter().collect::<Vec<_>>(), true)?;
    Ok(run)
}

/// Creates a run and starts it; returns the queued run (blocking: call off the async
/// threads).
pub fn start_run(
    shared: &Arc<Shared>,
    request: &run::RunRequest,
) -> Result<RunRecord, EngineError> {
    if shared.stopping.load(Ordering::SeqCst) {
        return Err(EngineError::Invalid(
            "the server is shutting down: no new runs start".into(),
        ));
    }
    let (run, steps) = run::create_run_in(&shared.store, &shared.view.objects().records, request)?;
    spawn_run(shared, run.clone(), steps);
    Ok(run)
}

/// [`start_run`] with one flush for the run and what the caller writes with it: the run is
/// created unflushed, `record` writes what must be durable along with it (a webhook
/// delivery's record naming the run) and flushes, and only then does the run start. A
/// run whose `record` fails does not start (it stays `queued` in the store, unacknowledged).
pub fn start_run_recorded(
    shared: &Arc<Shared>,
    request: &run::RunRequest,
    record: impl FnOnce(&RunRecord) -> Result<(), crate::store::StoreError>,
) -> Result<RunRecord, EngineError> {
    if shared.stopping.load(Ordering::SeqCst) {
        return Err(EngineError::Invalid(
            "the server is shutting down: no new runs start".into(),
        ));
    }
    let (run, steps) =
        run::create_run_unflushed(&shared.store, &shared.view.objects().records, request)?;
    record(&run)?;
    spawn_run(shared, run.clone(), steps);
    Ok(run)
}

/// Creates a re-run of a finished run and starts it.
pub fn start_rerun(
    shared: &Arc<Shared>,
    original: &RunRecord,
    from_failed: bool,
) -> Result<RunRecord, EngineError> {
    let (run, steps) = run::create_rerun(&shared.store, original, from_failed)?;
    spawn_run(shared, run.clone(), steps);
    Ok(run)
}

/// How `start` was asked to run.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// Address to bind.
    pub host: String,
    /// Port to bind (0: any free port).
    pub port: u16,
    /// Allow a non-loopback address without an API token.
    pub insecure: bool,
    /// How long running steps get to finish at shutdown before they are stopped.
    pub grace: std::time::Duration,
    /// `--source URL[#branch]`: follow this git repository instead of what the
    /// configuration says.
    pub source: Option<String>,
}

/// Resolves the API token's reference: `env:NAME` or `file:PATH` (relative to the
/// project). An empty or blank token is an error.
pub fn resolve_secret(reference: &str, project_dir: &std::path::Path) -> anyhow::Result<String> {
    crate::config::api_token::check_not_blank(
        resolve_secret_named("API token", reference, project_dir)?,
        reference,
    )
}

/// [`resolve_secret`] for a secret other than the API token: `what` names it in errors.
pub fn resolve_secret_named(
    what: &str,
    reference: &str,
    project_dir: &std::path::Path,
) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if let Some(name) = reference.strip_prefix("env:") {
        let value = std::env::var(name)
            .with_context(|| format!("the {what} reference `{reference}` names the environment variable {name}, which is not set"))?;
        return Ok(value.trim().to_owned());
    }
    if let Some(path) = reference.strip_prefix("file:") {
        let path = project_dir.join(path);
        let value = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "the {what} reference `{reference}` names {}, which cannot be read",
                path.display()
            )
        })?;
        return Ok(value.trim().to_owned());
    }
    anyhow::bail!("`{reference}` is not a secret reference: expected env:NAME or file:PATH")
}

/// Runs the server until SIGINT or SIGTERM. `on_ready` hears the bound address once the
/// first reconcile is done and the listener accepts connections, and the token when the
/// server generated one (a non-loopback address without `server.api_token`): the caller
/// shows it to the person who started the server, and nowhere else.
pub fn serve(
    config: LoadedConfig,
    environment: String,
    data_dir: PathBuf,
    engine: EngineConfig,
    options: StartOptions,
    on_ready: impl FnOnce(&std::net::SocketAddr, Option<&str>),
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let configured_token = match &config.config.server.api_token {
        Some(reference) => Some(resolve_secret(reference, &config.project_dir)?),
        None => None,
    };
    let token = crate::config::api_token::decide(
        configured_token,
        &options.host,
        options.insecure,
        &data_dir,
    )?;
    let api_token = token.value().map(str::to_owned);
    let git = source::GitState::from_config(&config, options.source.as_deref())?;
    let store = Arc::new(Store::open(&data_dir)?);
    for id in run::recover(&store)? {
        tracing::warn!("run {id} was left running by a process that ended; marked interrupted");
    }
    // Webhook deliveries claimed without a recorded run: linked to their run, or released
    // so that a redelivery runs them.
    let deliveries = crate::triggers::recovery::recover(&store)?;
    for delivery in &deliveries.released {
        tracing::warn!("webhook delivery {delivery} was claimed by a process that ended before creating its run; released for a redelivery");
    }
    // Runs left `queued` are started once the first reconcile is done (below).
    let log_dir = config.resolve(&config.config.logging.dir);
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let api_log =
        crate::logging::rotating_file(&log_dir.join("api.log"), config.config.logging.rotation())?;
    let view = view::View::load(&store)?;
    let stats = Arc::new(crate::monitor::stats::RunStats::for_config(
        &config.config.monitoring,
    ));
    stats.bootstrap(&store, chrono::Utc::now())?;
    let system = Arc::new(crate::monitor::system::SystemMonitor::open(
        Arc::clone(&store),
        &data_dir,
        crate::monitor::system::MonitorSettings::from_config(&config.config.monitoring),
    )?);
    let alerts = crate::monitor::alerts::Alerts::new(crate::monitor::notify::Notifier::new(
        &config.config.notifications,
        &config.project_dir,
    ));
    let shared = Arc::new(Shared {
        view,
        log_tail: log_tail::LogTailer::default(),
        run_slots: crate::engine::admission::RunSlots::new(config.config.runs.max_active_runs()),
        store,
        config,
        environment,
        data_dir: data_dir.clone(),
        engine,
        events: EventBus::new(4096),
        metrics: metrics::Metrics::default(),
        started: Instant::now(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        active_runs: Mutex::new(HashMap::new()),
        ready: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        reconcile_lock: Mutex::new(()),
        api_token,
        git,
        api_log: Mutex::new(Some(api_log)),
        stats,
        system,
        alerts,
        routes: crate::api::RouteState::default(),
        schedule_lock: crate::scheduler::StateLock::default(),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let listener = runtime.block_on(async {
        tokio::net::TcpListener::bind((options.host.as_str(), options.port)).await
    });
    let listener = match listener {
        Ok(listener) => listener,
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "port {} on {} is already in use (another orchestrator or program holds it); start on another port, e.g. `orchestrator start --port {}`",
            options.port,
            options.host,
            options.port.saturating_add(1)
        ),
        Err(err) => {
            return Err(err).with_context(|| {
                format!("cannot listen on {}:{}", options.host, options.port)
            })
        }
    };
    let address = listener.local_addr()?;

    // The first reconcile, before the server says it is ready.
    if let Err(err) = controller::reconcile(&shared, &[], true, false, "start") {
        tracing::error!("the first reconcile failed; serving the last applied state: {err:#}");
    }
    // Acknowledged runs a process that ended left waiting: they start now, through the
    // slots, before the scheduler looks at its pending fires.
    let resumed = resume_queued_runs(&shared)?;
    if !resumed.is_empty() {
        tracing::warn!(
            runs = resumed.len(),
            first = %resumed[0],
            "starting runs left queued by a process that ended"
        );
    }
    let stop_watching = Arc::new(AtomicBool::new(false));
    let watcher = {
        let shared = Arc::clone(&shared);
        let stop = Arc::clone(&stop_watching);
        if shared.git.is_some() {
            // A git source is polled (and woken by webhooks); the directories are not watched.
            std::thread::Builder::new()
                .name("git source".into())
                .spawn(move || source::poll(&shared, &stop))?
        } else {
            std::thread::Builder::new()
                .name("watcher".into())
                .spawn(move || {
                    if let Err(err) = controller::watch(shared, stop) {
                        tracing::error!("the manifest watcher stopped: {err:#}");
                    }
                })?
        }
    };
    // Agent health checks: now, then every minute.
    crate::monitor::stats::health::spawn_for_server(&shared)?;
    // After a failed write (a full disk), the store reopens itself once writes succeed again.
    Store::spawn_recovery(
        Arc::clone(&shared.store),
        Arc::clone(&stop_watching),
        std::time::Duration::from_secs(1),
    )?;
    let tailer = {
        let shared = Arc::clone(&shared);
        let stop = Arc::clone(&stop_watching);
        std::thread::Builder::new()
            .name("log tail".into())
            .spawn(move || shared.log_tail.run(&shared.events, &stop))?
    };
    process_file::write(
        &data_dir,
        &process_file::ServerInfo {
            pid: std::process::id(),
            address: address.to_string(),
            started_at: shared.started_at.clone(),
            environment: shared.environment.clone(),
            project_dir: std::fs::canonicalize(&shared.config.project_dir)
                .unwrap_or_else(|_| shared.config.project_dir.clone()),
        },
    )
    .with_context(|| format!("cannot write {}", process_file::path(&data_dir).display()))?;
    shared.ready.store(true, Ordering::SeqCst);
    tracing::info!(%address, "listening");
    match &token {
        crate::config::api_token::ApiToken::Generated(value) => on_ready(&address, Some(value)),
        _ => on_ready(&address, None),
    }

    let (stop_scheduling, stopped) = tokio::sync::watch::channel(false);
    let sampler = runtime.spawn(crate::monitor::system::run(
        Arc::clone(&shared),
        stopped.clone(),
    ));
    let alerting = runtime.spawn(crate::monitor::alerts::run(
        Arc::clone(&shared),
        stopped.clone(),
        format!("http://{address}"),
    ));
    let scheduler = runtime.spawn(crate::scheduler::run(Arc::clone(&shared), stopped));
    let guard = crate::api::guard::Guard::new(
        address,
        crate::api::guard::GuardSettings {
            token: shared.api_token.clone(),
            allowed_hosts: shared.config.config.server.allowed_hosts.clone(),
            allowed_origins: shared.config.config.server.allowed_origins.clone(),
            metrics_auth: shared.config.config.server.metrics_auth,
            hostname: sysinfo::System::host_name(),
        },
    );
    let app = crate::api::router(Arc::clone(&shared), Arc::new(guard));
    let limits = http::Limits::from_config(&shared.config.config.server);
    // Connections get the grace period to finish what they are doing; the runs get what
    // is left of it, counted from the same signal.
    let shutdown_began = runtime.block_on(http::serve(
        listener,
        app,
        limits,
        shutdown_signal(),
        options.grace,
    ));
    tracing::info!("shutting down");
    // The scheduler first, so that a fire it is making still starts its run.
    let _ = stop_scheduling.send(true);
    let _ = runtime.block_on(scheduler);
    // The sampler writes the history's bucket in progress as it stops.
    let _ = runtime.block_on(sampler);
    let _ = runtime.block_on(alerting);
    shared.stopping.store(true, Ordering::SeqCst);
    interrupt_waiting_runs(&shared);
    stop_watching.store(true, Ordering::SeqCst);
    let deadline = shutdown_began + options.grace;
    while !shared.active_run_ids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for id in shared.active_run_ids() {
        tracing::warn!(run = %id, "still running after the grace period: cancelling");
        shared.cancel_run(&id);
    }
    let deadline = Instant::now() + process::KILL_GRACE + std::time::Duration::from_secs(2);
    while !shared.active_run_ids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A git fetch in progress may wait on the network: give it a while, not forever.
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while !watcher.is_finished() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if watcher.is_finished() {
        let _ = watcher.join();
        let _ = tailer.join();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    process_file::remove(&data_dir);
    shared.store.save_run(None, &[], true)?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}
