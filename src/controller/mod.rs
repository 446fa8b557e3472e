//! The controller: keeps the store in step with the manifests. `sync.rs` reconciles the
//! manifest directories (or the git source's tip) and publishes what changed once it is
//! durable, and watches the directories (notify, debounce, periodic resync); `git.rs` is the
//! git source in a running server: fetch status, the poll loop (interval, webhook wake-ups,
//! capped exponential backoff) and the status `GET /api/status` shows.

pub mod git;
pub mod sync;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::config::LoadedConfig;
use crate::events::EventBus;
use crate::monitor::metrics::Metrics;
use crate::reconcile::view::View;
use crate::reconcile::FileChecks;
use crate::source::dir::FileIndex;
use crate::store::{Store, StoreError};

pub use git::GitState;
pub use sync::{reconcile, watch, ReconcileOutcome};

/// What the controller works with: the few handles a reconcile reads and writes.
pub struct Controller {
    /// The store (this process holds it).
    pub store: Arc<Store>,
    /// The effective configuration: where the manifests are.
    pub config: Arc<LoadedConfig>,
    /// The data directory (the git source's mirror and checkouts live under it).
    pub data_dir: PathBuf,
    /// Where reconciles are published.
    pub events: EventBus,
    /// The objects in force, refreshed after each durable reconcile.
    pub view: Arc<View>,
    /// Reconcile and fetch counters.
    pub metrics: Arc<Metrics>,
    /// The git repository followed instead of the manifest directories, when one is
    /// configured (`source.git` or `start --source`).
    pub git: Option<GitState>,
    /// One reconcile at a time.
    reconcile_lock: Mutex<()>,
    /// Each manifest file's own check, by path and text: a reconcile after an edit parses
    /// and validates the edited files alone.
    file_checks: FileChecks,
    /// Each manifest file's stamp and text, by path: a reconcile reads the changed files
    /// alone.
    file_index: FileIndex,
}

impl Controller {
    /// A controller over these handles.
    pub fn new(
        store: Arc<Store>,
        config: Arc<LoadedConfig>,
        data_dir: PathBuf,
        events: EventBus,
        view: Arc<View>,
        metrics: Arc<Metrics>,
        git: Option<GitState>,
    ) -> Controller {
        Controller {
            store,
            config,
            data_dir,
            events,
            view,
            metrics,
            git,
            reconcile_lock: Mutex::new(()),
            file_checks: FileChecks::default(),
            file_index: FileIndex::default(),
        }
    }

    /// The `source` object of `GET /api/status`: `kind` (`dir` or `git`), where manifests
    /// come from and the stored status of that source (see [`git::status_json`]).
    pub fn source_json(&self) -> Result<Value, StoreError> {
        git::status_json(self)
    }

    /// The name the store keeps the status of the source in use under: `git` or `dir`
    /// (for `store.source_status(...)`).
    pub fn source_name(&self) -> &'static str {
        if self.git.is_some() {
            git::GIT_SOURCE
        } else {
            "dir"
        }
    }
}
