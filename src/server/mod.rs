//! `orchestrator start`: the long-running controller. One process holds the store and runs
//! the source watcher (reconciling every change), the runs started through the API, and the
//! HTTP server (REST, WebSocket, metrics). Everything it reports goes through the event bus
//! once it is durable.

pub mod controller;
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
use crate::engine::model::{RunRecord, Status, StepRecord};
use crate::engine::process;
use crate::engine::run::{self, CancelSignal, EngineConfig, EngineError, Event as EngineEvent};
use crate::events::{EventBus, EventKind};
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
    /// Cancel flags of the runs executing in this process.
    pub active_runs: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Set once the first reconcile is done and the listener is bound.
    pub ready: AtomicBool,
    /// Set when shutting down: no new runs start.
    pub stopping: AtomicBool,
    /// One reconcile at a time.
    pub reconcile_lock: Mutex<()>,
    /// The API token, when one is configured.
    pub api_token: Option<String>,
    /// The git repository followed instead of the manifest directories, when one is
    /// configured (`source.git` or `start --source`).
    pub git: Option<source::GitState>,
    /// What the read routes serve, in memory.
    pub view: view::View,
    /// `run_log` events: the logs of active runs, read while clients subscribe to them.
    pub log_tail: log_tail::LogTailer,
    /// `logs/api.log`, the access log.
    pub api_log: Mutex<Option<std::fs::File>>,
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

    /// The runs executing now.
    pub fn active_run_ids(&self) -> Vec<String> {
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

    /// Asks an active run to stop; false when it is not executing here.
    pub fn cancel_run(&self, run_id: &str) -> bool {
        match self
            .active_runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(run_id)
        {
            Some(flag) => {
                flag.store(true, Ordering::SeqCst);
                true
            }
            None => false,
        }
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
        "tests": crate::engine::model::TestSummary::of(&step.tests),
        "outputs": step.outputs,
    })
}

/// Starts a created run in a thread of its own: executes it under its workflow's
/// concurrency policy, publishing each durable change. Returns at once.
pub fn spawn_run(shared: &Arc<Shared>, run: RunRecord, steps: Vec<StepRecord>) {
    let flag = Arc::new(AtomicBool::new(false));
    shared
        .active_runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(run.id.clone(), Arc::clone(&flag));
    shared.metrics.runs_started.inc();
    shared.view.record_run(&run);
    shared
        .events
        .publish(EventKind::WorkflowStarted, run_summary(&run));
    let shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("run {}", run.id))
        .spawn(move || {
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
                    shared.metrics.record_run(&finished);
                    shared.view.record_run(&finished);
                    events.publish(EventKind::WorkflowCompleted, run_summary(&finished));
                }
                Err(err) => {
                    tracing::error!(run = %id, "run failed to execute: {err}");
                    shared.metrics.errors.inc();
                }
            }
        });
    if let Err(err) = spawned {
        tracing::error!("cannot start a thread for a run: {err}");
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

/// Resolves a secret reference: `env:NAME` or `file:PATH` (relative to the project).
pub fn resolve_secret(reference: &str, project_dir: &std::path::Path) -> anyhow::Result<String> {
    resolve_secret_named("API token", reference, project_dir)
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
/// first reconcile is done and the listener accepts connections.
pub fn serve(
    config: LoadedConfig,
    environment: String,
    data_dir: PathBuf,
    engine: EngineConfig,
    options: StartOptions,
    on_ready: impl FnOnce(&std::net::SocketAddr),
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let api_token = match &config.config.server.api_token {
        Some(reference) => Some(resolve_secret(reference, &config.project_dir)?),
        None => None,
    };
    let loopback = options.host == "localhost"
        || options
            .host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback && api_token.is_none() && !options.insecure {
        anyhow::bail!(
            "refusing to listen on {} without an API token: anyone who can reach it could run workflows. Set server.api_token (env:NAME or file:PATH), or pass --insecure to accept the risk",
            options.host
        );
    }
    let git = source::GitState::from_config(&config, options.source.as_deref())?;
    let store = Arc::new(Store::open(&data_dir)?);
    for id in run::recover(&store)? {
        tracing::warn!("run {id} was left running by a process that ended; marked interrupted");
    }
    let log_dir = config.resolve(&config.config.logging.dir);
    std::fs::create_dir_all(&log_dir)
        .with_context(|| format!("cannot create {}", log_dir.display()))?;
    let api_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("api.log"))
        .with_context(|| format!("cannot open {}", log_dir.join("api.log").display()))?;
    let view = view::View::load(&store)?;
    let shared = Arc::new(Shared {
        view,
        log_tail: log_tail::LogTailer::default(),
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
    on_ready(&address);

    let (stop_scheduling, stopped) = tokio::sync::watch::channel(false);
    let scheduler = runtime.spawn(crate::scheduler::run(Arc::clone(&shared), stopped));
    let app = crate::api::router(Arc::clone(&shared));
    let served = runtime.block_on(async {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    tracing::info!("shutting down");
    // The scheduler first, so that a fire it is making still starts its run.
    let _ = stop_scheduling.send(true);
    let _ = runtime.block_on(scheduler);
    shared.stopping.store(true, Ordering::SeqCst);
    stop_watching.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + options.grace;
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
    served.context("the HTTP server failed")?;
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
