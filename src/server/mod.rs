//! `orchestrator start`: the long-running controller, wired together. `serve` opens the
//! store, builds each subsystem with the few handles it uses (the runner, the controller,
//! the scheduler, the alert loop, the system sampler, the agents' health checks, the commit
//! statuses), binds the listener, serves the API (`http.rs`: the accept loop and its
//! connection limits) and shuts everything down in order. Nothing below this module imports it.

pub mod http;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::api::App;
use crate::config::{process_file, LoadedConfig};
use crate::controller::{Controller, GitState};
use crate::engine::log_tail::LogTailer;
use crate::engine::process;
use crate::engine::run::{self, EngineConfig};
use crate::engine::runner::{RunObserver, Runner, RunnerParts};
use crate::events::EventBus;
use crate::model::{RunRecord, StepRecord};
use crate::monitor::metrics::Metrics;
use crate::monitor::stats::RunStats;
use crate::reconcile::view::View;
use crate::store::Store;

/// The server's counters and run statistics, told of each run by the runner.
struct RunCounters {
    metrics: Arc<Metrics>,
    stats: Arc<RunStats>,
}

impl RunObserver for RunCounters {
    fn run_started(&self) {
        self.metrics.runs_started.inc();
    }

    fn run_finished(&self, run: &RunRecord, steps: &[StepRecord]) {
        self.metrics.record_run(run);
        self.metrics.record_steps(steps);
        self.stats.record(run.head(), steps);
    }

    fn run_ended_unstarted(&self, run: &RunRecord) {
        self.metrics.record_run(run);
    }

    fn error(&self) {
        self.metrics.errors.inc();
    }
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
    /// The dispatcher of steps with `runs_on` to workers (the engine's executor holds it
    /// too); it gets the store once the store is open.
    pub workers: Option<Arc<crate::workers::dispatch::Dispatcher>>,
}

/// The server assembled over its store: every subsystem built, nothing started, nothing
/// bound. [`serve`] runs it; tests drive [`router`] in-process.
pub struct Assembled {
    /// What the routes share.
    pub app: Arc<App>,
    /// The token in force, and whether it was generated.
    pub token: crate::config::api_token::ApiToken,
}

/// Opens the store, settles what a process that ended left (runs marked interrupted,
/// delivery claims linked or released) and builds every subsystem with the handles it
/// uses.
pub fn assemble(
    config: LoadedConfig,
    environment: String,
    data_dir: PathBuf,
    engine: EngineConfig,
    options: &StartOptions,
) -> anyhow::Result<Assembled> {
    use anyhow::Context as _;
    let configured_token = match &config.config.server.api_token {
        Some(reference) => Some(crate::config::secrets::resolve_api_token(
            reference,
            &config.project_dir,
        )?),
        None => None,
    };
    let token = crate::config::api_token::decide(
        configured_token,
        &options.host,
        options.insecure,
        &data_dir,
    )?;
    let api_token = token.value().map(str::to_owned);
    let git = GitState::from_config(&config, options.source.as_deref())?;
    let store = Arc::new(Store::open(&data_dir)?);
    if let Some(workers) = &options.workers {
        workers.attach_store(Arc::clone(&store));
    }
    // With workers, a run left running with remote attempts in flight is resumed: they
    // go on on their workers, and what they reported meanwhile is applied once the
    // dispatcher opens (below, after the runs are handed to the runner).
    let recovery = match &options.workers {
        Some(_) => {
            let agents = run::agent_configs(&store.objects()?);
            run::recover_or_resume(&store, &engine, &agents)?
        }
        None => run::Recovery {
            interrupted: run::recover(&store)?,
            resumed: Vec::new(),
        },
    };
    for id in &recovery.interrupted {
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
    let config = Arc::new(config);
    let view = Arc::new(View::load(&store, &config.config.scheduler.timezone)?);
    let stats = Arc::new(RunStats::for_config(&config.config.monitoring));
    stats.bootstrap(&store, chrono::Utc::now())?;
    let system = Arc::new(crate::monitor::system::SystemMonitor::open(
        Arc::clone(&store),
        &data_dir,
        crate::monitor::system::MonitorSettings::from_config(&config.config.monitoring),
    )?);
    let alerts = Arc::new(crate::monitor::alerts::Alerts::new(
        crate::monitor::notify::Notifier::new(&config.config.notifications, &config.project_dir),
    ));
    let events = EventBus::new(4096);
    let metrics = Arc::new(Metrics::default());
    let log_tail = Arc::new(LogTailer::default());
    let runner = Runner::new(RunnerParts {
        store: Arc::clone(&store),
        engine,
        events: events.clone(),
        view: Arc::clone(&view),
        log_tail: Arc::clone(&log_tail),
        observer: Arc::new(RunCounters {
            metrics: Arc::clone(&metrics),
            stats: Arc::clone(&stats),
        }),
        max_active: config.config.runs.max_active_runs(),
    });
    for id in runner.resume_running(recovery.resumed) {
        tracing::warn!(
            "run {id} was left running by a process that ended; resumed with its steps on workers"
        );
    }
    if let Some(workers) = &options.workers {
        workers.open();
    }
    let controller = Arc::new(Controller::new(
        Arc::clone(&store),
        Arc::clone(&config),
        data_dir.clone(),
        events.clone(),
        Arc::clone(&view),
        Arc::clone(&metrics),
        git,
    ));
    let worker_registry = match &options.workers {
        Some(dispatcher) => Some(crate::workers::registry::Registry::start(
            dispatcher,
            Arc::clone(&store),
            events.clone(),
        )?),
        None => None,
    };
    let app = Arc::new(App {
        store,
        config,
        environment,
        data_dir: data_dir.clone(),
        runner: Arc::clone(&runner),
        controller: Arc::clone(&controller),
        view,
        events,
        log_tail,
        metrics,
        stats,
        system,
        alerts,
        api_token,
        started: Instant::now(),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        ready: AtomicBool::new(false),
        api_log: Mutex::new(Some(api_log)),
        routes: crate::api::RouteState::default(),
        schedule_lock: Arc::default(),
        workers: options.workers.clone(),
        worker_registry,
    });

    Ok(Assembled { app, token })
}

/// The API's router behind the guard for a server listening on `address`.
pub fn router(app: &Arc<App>, address: std::net::SocketAddr) -> axum::Router {
    let guard = crate::api::guard::Guard::new(
        address,
        crate::api::guard::GuardSettings {
            token: app.api_token.clone(),
            allowed_hosts: app.config.config.server.allowed_hosts.clone(),
            allowed_origins: app.config.config.server.allowed_origins.clone(),
            metrics_auth: app.config.config.server.metrics_auth,
            hostname: sysinfo::System::host_name(),
        },
    );
    crate::api::router(Arc::clone(app), Arc::new(guard))
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
    let Assembled { app, token } =
        assemble(config, environment, data_dir.clone(), engine, &options)?;
    let runner = Arc::clone(&app.runner);
    let controller = Arc::clone(&app.controller);
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
    if let Err(err) = crate::controller::reconcile(&controller, &[], true, false, "start") {
        tracing::error!("the first reconcile failed; serving the last applied state: {err:#}");
    }
    // Acknowledged runs a process that ended left waiting: they start now, through the
    // slots, before the scheduler looks at its pending fires.
    let resumed = runner.resume_queued()?;
    if !resumed.is_empty() {
        tracing::warn!(
            runs = resumed.len(),
            first = %resumed[0],
            "starting runs left queued by a process that ended"
        );
    }
    let stop_watching = Arc::new(AtomicBool::new(false));
    let watcher = {
        let controller = Arc::clone(&controller);
        let stop = Arc::clone(&stop_watching);
        if controller.git.is_some() {
            // A git source is polled (and woken by webhooks); the directories are not watched.
            std::thread::Builder::new()
                .name("git source".into())
                .spawn(move || crate::controller::git::poll(&controller, &stop))?
        } else {
            std::thread::Builder::new()
                .name("watcher".into())
                .spawn(move || {
                    if let Err(err) = crate::controller::watch(controller, stop) {
                        tracing::error!("the manifest watcher stopped: {err:#}");
                    }
                })?
        }
    };
    // Agent health checks: now, then every minute.
    {
        let view = Arc::clone(&app.view);
        let project_dir = app.config.project_dir.clone();
        let stopping = Arc::clone(&runner);
        crate::monitor::stats::health::spawn_periodic(
            Arc::clone(&app.stats),
            crate::monitor::stats::health::CHECK_INTERVAL,
            move || (view.objects().agents.clone(), project_dir.clone()),
            move || stopping.is_stopping(),
        )?;
    }
    // After a failed write (a full disk), the store reopens itself once writes succeed again.
    Store::spawn_recovery(
        Arc::clone(&app.store),
        Arc::clone(&stop_watching),
        std::time::Duration::from_secs(1),
    )?;
    let tailer = {
        let log_tail = Arc::clone(&app.log_tail);
        let events = app.events.clone();
        let stop = Arc::clone(&stop_watching);
        std::thread::Builder::new()
            .name("log tail".into())
            .spawn(move || log_tail.run(&events, &stop))?
    };
    process_file::write(
        &data_dir,
        &process_file::ServerInfo {
            pid: std::process::id(),
            address: address.to_string(),
            started_at: app.started_at.clone(),
            environment: app.environment.clone(),
            project_dir: std::fs::canonicalize(&app.config.project_dir)
                .unwrap_or_else(|_| app.config.project_dir.clone()),
        },
    )
    .with_context(|| format!("cannot write {}", process_file::path(&data_dir).display()))?;
    app.ready.store(true, Ordering::SeqCst);
    tracing::info!(%address, "listening");
    match &token {
        crate::config::api_token::ApiToken::Generated(value) => on_ready(&address, Some(value)),
        _ => on_ready(&address, None),
    }

    let (stop_scheduling, stopped) = tokio::sync::watch::channel(false);
    let sampler = runtime.spawn(crate::monitor::system::run(
        Arc::clone(&app.system),
        app.events.clone(),
        Arc::clone(&app.metrics),
        stopped.clone(),
    ));
    let alerting = runtime.spawn(crate::monitor::alerts::run(
        Arc::new(crate::monitor::alerts::AlertContext {
            store: Arc::clone(&app.store),
            view: Arc::clone(&app.view),
            events: app.events.clone(),
            stats: Arc::clone(&app.stats),
            system: Arc::clone(&app.system),
            alerts: Arc::clone(&app.alerts),
            evaluation_interval: app
                .config
                .config
                .monitoring
                .evaluation_interval
                .duration()
                .unwrap_or_default(),
        }),
        stopped.clone(),
        format!("http://{address}"),
    ));
    let scheduler = runtime.spawn(crate::scheduler::run(
        Arc::new(crate::scheduler::Scheduling {
            store: Arc::clone(&app.store),
            view: Arc::clone(&app.view),
            events: app.events.clone(),
            runner: Arc::clone(&runner),
            schedule_lock: Arc::clone(&app.schedule_lock),
        }),
        stopped,
    ));
    // Commit statuses outlive the other services: runs cancelled at shutdown are reported
    // too, so they stop after the runs (below).
    let (stop_reporting, reporting_stopped) = tokio::sync::watch::channel(false);
    let reporting = runtime.spawn(crate::triggers::commit_status::run(
        Arc::new(crate::triggers::commit_status::Reporting {
            store: Arc::clone(&app.store),
            view: Arc::clone(&app.view),
            events: app.events.clone(),
            project_dir: app.config.project_dir.clone(),
            base_url: format!("http://{address}"),
            source_url: controller.git.as_ref().map(|git| git.source.url.clone()),
            attempts: app.config.config.notifications.retry.attempts.max(1),
            initial_backoff: app
                .config
                .config
                .notifications
                .retry
                .initial_backoff
                .duration()
                .unwrap_or(std::time::Duration::from_secs(1)),
        }),
        reporting_stopped,
    ));
    let router = router(&app, address);
    let limits = http::Limits::from_config(&app.config.config.server);
    // Connections get the grace period to finish what they are doing; the runs get what
    // is left of it, counted from the same signal.
    let shutdown_began = runtime.block_on(http::serve(
        listener,
        router,
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
    runner.stop_starting();
    stop_watching.store(true, Ordering::SeqCst);
    let deadline = shutdown_began + options.grace;
    while !runner.active_run_ids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if app.workers.is_some() {
        // Runs whose steps in flight all run on workers are left to them (still
        // `running`); the next start resumes them. The others are cancelled.
        runner.engine().detach_remote.store(true, Ordering::SeqCst);
    }
    for id in runner.active_run_ids() {
        tracing::warn!(run = %id, "still running after the grace period: cancelling");
        runner.cancel(&id);
    }
    let deadline = Instant::now() + process::KILL_GRACE + std::time::Duration::from_secs(2);
    while !runner.active_run_ids().is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = stop_reporting.send(true);
    let _ = runtime.block_on(reporting);
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
    app.store.save_run(None, &[], true)?;
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
