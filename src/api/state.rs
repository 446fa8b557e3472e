//! What the handlers share: the handles of the subsystems the routes read and drive. The
//! server builds it once (`server::serve`); no subsystem below the API sees it.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::config::LoadedConfig;
use crate::controller::Controller;
use crate::engine::log_tail::LogTailer;
use crate::engine::runner::Runner;
use crate::events::EventBus;
use crate::monitor::alerts::Alerts;
use crate::monitor::metrics::Metrics;
use crate::monitor::stats::RunStats;
use crate::monitor::system::SystemMonitor;
use crate::reconcile::view::View;
use crate::store::Store;

/// The application state handlers see.
pub type AppState = Arc<App>;

/// The handles behind the routes.
pub struct App {
    /// The store (this process holds it).
    pub store: Arc<Store>,
    /// The effective configuration.
    pub config: Arc<LoadedConfig>,
    /// The environment's name.
    pub environment: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Runs: start, cancel, the runs executing and waiting.
    pub runner: Arc<Runner>,
    /// Reconciles and the manifest source.
    pub controller: Arc<Controller>,
    /// What the read routes serve, in memory.
    pub view: Arc<View>,
    /// The event bus `/ws` streams.
    pub events: EventBus,
    /// `run_log` events: the logs of active runs, read while clients subscribe to them.
    pub log_tail: Arc<LogTailer>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Workflow, agent and test metrics over `monitoring.metrics_window`, and the agents'
    /// health checks.
    pub stats: Arc<RunStats>,
    /// System metrics: the latest sample, recent samples and the persisted history.
    pub system: Arc<SystemMonitor>,
    /// Alert evaluation: the notification channels, and the lock of the alerts' states.
    pub alerts: Arc<Alerts>,
    /// The API token in force: configured (`server.api_token`) or generated for a
    /// non-loopback address (see [`crate::config::api_token`]).
    pub api_token: Option<String>,
    /// When the server started.
    pub started: Instant,
    /// The same, as RFC 3339.
    pub started_at: String,
    /// Set once the first reconcile is done and the listener is bound.
    pub ready: AtomicBool,
    /// `logs/api.log`, the access log.
    pub api_log: Mutex<Option<crate::logging::RotatingFile>>,
    /// What the routes keep between requests (save lock, compiled triggers, webhook body
    /// budget, delivery keys, the published document).
    pub routes: super::RouteState,
    /// Held while the schedules' state tree is read, changed and written back: shared with
    /// the scheduler, so a pause or resume never undoes a pass's write.
    pub schedule_lock: Arc<crate::scheduler::StateLock>,
    /// The dispatcher of steps to workers, when `distributed.nats` or `--nats` is set.
    pub workers: Option<Arc<crate::workers::dispatch::Dispatcher>>,
    /// What the controller knows of its workers, with the dispatcher.
    pub worker_registry: Option<Arc<crate::workers::registry::Registry>>,
}

impl App {
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
}
