//! What the controller knows of its workers: [`Registry`] watches the `orch_workers` KV
//! bucket (each worker rewrites its record with every heartbeat), keeps the newest record
//! of every worker in memory with the local instant its revision last changed, and
//! publishes `worker_connected`, `worker_lost`, `worker_drained` and `worker_resumed` on
//! the event bus. Every worker that ever registered is remembered durably in the store's
//! `workers_seen` tree, so that `validate` can tell a `runs_on` no worker has ever
//! matched, and `GET /api/workers` lists workers that are gone.
//!
//! Liveness is judged as the dispatcher judges leases: by revision changes seen here, not
//! by comparing clocks. A worker whose record has not changed for the lease is `lost`
//! (one event); its next heartbeat makes it `up` again (`worker_connected`). Only the
//! records already in the bucket when the watch starts are aged by their timestamps,
//! since no change of theirs has been seen yet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::dispatch::Dispatcher;
use super::protocol::WorkerInfo;
use crate::events::{Event, EventBus};
use crate::store::{Store, StoreError};

/// A worker's labels.
pub type Labels = BTreeMap<String, String>;

/// The store tree of every worker that registered: name → [`SeenWorker`].
pub const SEEN_TREE: &str = "workers_seen";

/// A worker as the store remembers it: its last record, and when it was first and last
/// seen registering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SeenWorker {
    /// Its last record.
    pub info: WorkerInfo,
    /// When this controller first saw it, RFC 3339.
    pub first_seen: String,
    /// When it last (re)connected, RFC 3339.
    pub last_connected: String,
}

/// Whether a worker renews its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Its record changed within the lease.
    Up,
    /// No heartbeat for the lease (or it was not running while this controller ran).
    Lost,
}

/// A worker as the API, the events and the dashboard show it: its own record (the
/// running attempts left out once it is lost) and what this controller saw of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WorkerView {
    /// The worker's record, as its last heartbeat wrote it.
    #[serde(flatten)]
    pub worker: WorkerInfo,
    /// Milliseconds since its last heartbeat was seen; `null` for a worker known only from
    /// the store.
    pub heartbeat_age_ms: Option<u64>,
    /// `up`, or `lost` when its record was not renewed for the lease.
    pub state: WorkerState,
    /// When this controller first saw it register, RFC 3339.
    pub first_seen: String,
}

/// One worker in memory.
struct Known {
    info: WorkerInfo,
    revision: u64,
    /// When a change of its record was last seen here (or, for a record found at start,
    /// when its timestamp says it was written).
    beat: Option<Instant>,
    state: WorkerState,
    first_seen: String,
}

/// The controller's view of its workers.
pub struct Registry {
    lease: Duration,
    store: Arc<Store>,
    events: EventBus,
    known: Mutex<BTreeMap<String, Known>>,
    changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// A registry with the workers the store remembers (all `lost` until they beat), that
    /// watches the dispatcher's bucket on the dispatcher's runtime and judges liveness
    /// every fifth of the lease.
    pub fn start(
        dispatcher: &Dispatcher,
        store: Arc<Store>,
        events: EventBus,
    ) -> Result<Arc<Registry>, StoreError> {
        let mut known = BTreeMap::new();
        for (name, seen) in store.states::<SeenWorker>(SEEN_TREE, "")? {
            known.insert(
                name,
                Known {
                    info: seen.info,
                    revision: 0,
                    beat: None,
                    state: WorkerState::Lost,
                    first_seen: seen.first_seen,
                },
            );
        }
        let registry = Arc::new(Registry {
            lease: dispatcher.lease(),
            store,
            events,
            known: Mutex::new(known),
            changed: tokio::sync::Notify::new(),
        });
        let handle = dispatcher.runtime_handle();
        let wire = dispatcher.wire();
        let watcher = Arc::clone(&registry);
        handle.spawn(async move { watcher.watch(wire.workers).await });
        let judge = Arc::clone(&registry);
        handle.spawn(async move { judge.judge().await });
        Ok(registry)
    }

    /// The lease a worker's record must be renewed within.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Every worker that registered, by name.
    pub fn list(&self) -> Vec<WorkerView> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.iter().map(|(n, k)| view(n, k)).collect()
    }

    /// One worker.
    pub fn get(&self, name: &str) -> Option<WorkerView> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.get(name).map(|k| view(name, k))
    }

    /// Waits (at most `timeout`) until `name`'s record satisfies `done`; the worker then.
    pub async fn wait_for(
        &self,
        name: &str,
        timeout: Duration,
        done: impl Fn(&WorkerView) -> bool,
    ) -> Option<WorkerView> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            let current = self.get(name);
            if current.as_ref().is_none_or(&done) || tokio::time::Instant::now() >= deadline {
                return current;
            }
            let _ = tokio::time::timeout_at(deadline, changed).await;
        }
    }

    /// Follows the bucket: its current records first, then every change; again from the
    /// start after the watch breaks (NATS restarting).
    async fn watch(self: Arc<Self>, bucket: async_nats::jetstream::kv::Store) {
        loop {
            match bucket.watch_with_history(">").await {
                Ok(mut entries) => {
                    // The records already there come first, the last with nothing left
                    // pending after it; from then on every entry is a change seen now.
                    let mut history = true;
                    while let Some(entry) = entries.next().await {
                        match entry {
                            Ok(entry) => {
                                let last_of_history = entry.delta == 0;
                                self.apply(entry, history);
                                history &= !last_of_history;
                            }
                            Err(err) => {
                                tracing::debug!("watching the workers' records: {err}");
                                break;
                            }
                        }
                    }
                }
                Err(err) => tracing::debug!("cannot watch the workers' records yet: {err}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn apply(&self, entry: async_nats::jetstream::kv::Entry, history: bool) {
        if entry.operation != async_nats::jetstream::kv::Operation::Put {
            return;
        }
        let Ok(info) = serde_json::from_slice::<WorkerInfo>(&entry.value) else {
            return;
        };
        let name = entry.key.clone();
        let (events, remember) = {
            let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if known
                .get(&name)
                .is_some_and(|k| k.revision >= entry.revision)
            {
                // The same revision again (a watch restarted): nothing new.
                return;
            }
            // A record from before the watch started is aged by its timestamp.
            let beat = if history {
                age_of(&entry).and_then(|age| now.checked_sub(age))
            } else {
                Some(now)
            };
            let alive = beat.is_some_and(|at| at.elapsed() <= self.lease);
            let previous = known.get(&name);
            let mut events = Vec::new();
            let was_up = previous.is_some_and(|k| k.state == WorkerState::Up);
            let restarted = previous
                .is_some_and(|k| k.info.pid != info.pid || k.info.started_at != info.started_at);
            if alive && (!was_up || restarted) {
                events.push(EventKind::Connected);
            }
            if alive && was_up && !restarted {
                match (previous.map(|k| k.info.draining), info.draining) {
                    (Some(false), true) => events.push(EventKind::Drained),
                    (Some(true), false) => events.push(EventKind::Resumed),
                    _ => {}
                }
            }
            let first_seen = previous.map_or_else(now_rfc3339, |k| k.first_seen.clone());
            // Written durably when it first registers and each time it (re)connects; what
            // changes with every heartbeat (running, finished) is not.
            let remember =
                (previous.is_none() || events.contains(&EventKind::Connected)).then(|| {
                    SeenWorker {
                        info: info.clone(),
                        first_seen: first_seen.clone(),
                        last_connected: now_rfc3339(),
                    }
                });
            known.insert(
                name.clone(),
                Known {
                    info,
                    revision: entry.revision,
                    beat,
                    state: if alive {
                        WorkerState::Up
                    } else {
                        WorkerState::Lost
                    },
                    first_seen,
                },
            );
            let shown = view(&name, &known[&name]);
            (
                events
                    .into_iter()
                    .map(|e| e.event(shown.clone()))
                    .collect::<Vec<_>>(),
                remember,
            )
        };
        if let Some(seen) = remember {
            if let Err(err) = self.store.put_state(SEEN_TREE, &name, &seen, true) {
                tracing::warn!("cannot remember worker {name}: {err}");
            }
        }
        for event in events {
            self.events.publish(event);
        }
        self.changed.notify_waiters();
    }

    /// Every fifth of the lease: workers silent for the lease are lost (one event each).
    async fn judge(self: Arc<Self>) {
        let tick = (self.lease / 5).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let lost: Vec<WorkerView> = {
                let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
                let mut lost = Vec::new();
                for (name, k) in known.iter_mut() {
                    let silent = k.beat.is_none_or(|at| at.elapsed() > self.lease);
                    if k.state == WorkerState::Up && silent {
                        k.state = WorkerState::Lost;
                        lost.push(view(name, k));
                    }
                }
                lost
            };
            for worker in lost {
                tracing::warn!(
                    "worker {} lost: no heartbeat for {}",
                    worker.worker.name,
                    crate::duration::format_duration(self.lease)
                );
                self.events.publish(Event::WorkerLost(
                    serde_json::to_value(worker).unwrap_or_default(),
                ));
                self.changed.notify_waiters();
            }
        }
    }
}

/// The labels of every worker the store remembers: what `validate` checks `runs_on`
/// against.
pub fn seen_labels(store: &Store) -> Result<Vec<(String, Labels)>, StoreError> {
    Ok(store
        .states::<SeenWorker>(SEEN_TREE, "")?
        .into_iter()
        .map(|(name, seen)| (name, seen.info.labels))
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Connected,
    Drained,
    Resumed,
}

impl EventKind {
    fn event(self, worker: WorkerView) -> Event {
        let worker = serde_json::to_value(worker).unwrap_or_default();
        match self {
            EventKind::Connected => Event::WorkerConnected(worker),
            EventKind::Drained => Event::WorkerDrained(worker),
            EventKind::Resumed => Event::WorkerResumed(worker),
        }
    }
}

fn view(name: &str, k: &Known) -> WorkerView {
    let mut worker = k.info.clone();
    name.clone_into(&mut worker.name);
    if k.state != WorkerState::Up {
        worker.running.clear();
    }
    WorkerView {
        worker,
        heartbeat_age_ms: k.beat.map(|at| at.elapsed().as_millis() as u64),
        state: k.state,
        first_seen: k.first_seen.clone(),
    }
}

/// How old a record is by its timestamp (the NATS server's clock against this one): used
/// only for records written before the watch started.
fn age_of(entry: &async_nats::jetstream::kv::Entry) -> Option<Duration> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_nanos() as i128;
    let age = (now - entry.created.unix_timestamp_nanos()).max(0);
    Some(Duration::from_nanos(u64::try_from(age).unwrap_or(u64::MAX)))
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
