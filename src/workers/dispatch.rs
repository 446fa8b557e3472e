//! The controller's side of workers: [`Dispatcher`] is the executor for steps with
//! `runs_on`. It publishes each attempt to its selector's subject, grants the first claim
//! (durably, in the store's `worker_claims` tree, with a fencing token), applies what the
//! claimant reports while its token is current, judges its lease, and fails or retries
//! the attempt when no worker takes it in time or its worker goes silent.
//!
//! Invariants:
//! - an attempt is granted to one worker at most: the claim record is written once
//!   (compare-and-swap) and flushed before the grant is sent;
//! - a report counts only with the token of the attempt's live claim; any other (a worker
//!   declared lost, a claim refused) is dropped and counted in [`Counters::stale`];
//! - an attempt ends once: whatever ends it (finished, lost, queue timeout, stopped before
//!   a claim, too many deliveries) removes it from the pending table under its lock
//!   first, and then deletes its work message and purges its lease;
//! - a worker is declared lost only on what this controller saw: a lease it cannot read
//!   (NATS away) is not judged, its clock starts again once it can be read;
//! - a worker claiming an attempt it was granted already (the answer was lost) gets the
//!   same token; a stop for a claimed attempt is sent again until the attempt ends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::protocol::{self, ClaimReply, ClaimRequest, Control, Finished, Wire, WorkItem};
use super::snapshot;
use crate::agents::local::{failed_before_start, prepare};
use crate::config::DistributedConfig;
use crate::engine::executor::{
    AttemptEvent, AttemptFinished, AttemptMessage, AttemptStop, Outcome, StepAttempt, StopReason,
};
use crate::model::{Attempt, Status};
use crate::store::Store;

/// How often a stop is sent again to a worker that has not ended the attempt yet.
const STOP_RESEND: Duration = Duration::from_secs(1);

/// The store tree of claims: attempt key → [`Claim`].
pub const CLAIMS_TREE: &str = "worker_claims";

/// A granted claim, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claim {
    /// The worker.
    pub worker: String,
    /// The fencing token.
    pub token: u64,
    /// `running`, `finished`, `lost`.
    pub state: String,
}

/// What the dispatcher has seen, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct Counters {
    /// Attempts published.
    pub published: AtomicU64,
    /// Claims granted.
    pub granted: AtomicU64,
    /// Claims refused.
    pub refused: AtomicU64,
    /// Reports dropped for a token that was not current.
    pub stale: AtomicU64,
    /// Attempts whose worker was lost.
    pub lost: AtomicU64,
    /// Attempts no worker took in time.
    pub queue_timeouts: AtomicU64,
    /// Log chunks missing when an attempt finished.
    pub log_gaps: AtomicU64,
}

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The project directory (snapshots; credentials' `file:` references).
    pub project_dir: PathBuf,
    /// Left out of snapshots: data, logs, reports.
    pub skip: Vec<PathBuf>,
    /// Where remote artifacts are put before the engine keeps them.
    pub staging_dir: PathBuf,
    /// How long a worker may stay silent.
    pub lease: Duration,
    /// How long an attempt may wait for a worker, unless its step says.
    pub queue_timeout: Duration,
    /// Deliveries of an attempt before it is given up.
    pub max_deliver: u32,
}

impl DispatchSettings {
    /// The settings of a `distributed:` configuration.
    pub fn from_config(
        config: &DistributedConfig,
        project_dir: PathBuf,
        skip: Vec<PathBuf>,
        staging_dir: PathBuf,
    ) -> DispatchSettings {
        let duration = |setting: &Option<crate::config::DurationSetting>, default: u64| {
            setting
                .as_ref()
                .and_then(|s| s.duration().ok())
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(default))
        };
        DispatchSettings {
            project_dir,
            skip,
            staging_dir,
            lease: duration(&config.lease, 15),
            queue_timeout: duration(&config.queue_timeout, 30 * 60),
            max_deliver: config.max_deliver.unwrap_or(5).max(1),
        }
    }
}

/// An attempt published and not yet ended.
struct Pending {
    index: usize,
    number: u32,
    step: String,
    labels: BTreeMap<String, String>,
    fail_when_lost: bool,
    events: Sender<AttemptMessage>,
    queue_deadline: Instant,
    stream_sequence: Option<u64>,
    claim: Option<Granted>,
    stop: Option<StopReason>,
    stop_sent: Option<Instant>,
    log_next: u64,
    log_hash: Sha256,
    log_gaps: u64,
    /// Adopted after a restart: the log chunks before the first one seen were applied by
    /// the process that ended (set until that first chunk).
    log_resync: bool,
    /// Adopted mid-log: the log's hash covers only part of it and is not compared.
    log_partial: bool,
}

struct Granted {
    worker: String,
    token: u64,
    at: Instant,
    started_at: String,
    lease_revision: u64,
    lease_seen: Instant,
}

/// The controller's executor for steps that run on workers.
pub struct Dispatcher {
    inner: Arc<Inner>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

struct Inner {
    client: async_nats::Client,
    wire: Wire,
    store: std::sync::OnceLock<Arc<Store>>,
    settings: DispatchSettings,
    handle: tokio::runtime::Handle,
    pending: Mutex<HashMap<String, Pending>>,
    snapshots: tokio::sync::Mutex<Snapshots>,
    consumers: tokio::sync::Mutex<HashSet<String>>,
    counters: Counters,
    /// Set by [`Dispatcher::open`]: until then no claim is answered and no report applied,
    /// so that a restarted controller adopts its attempts first.
    opened: tokio::sync::watch::Sender<bool>,
}

impl Dispatcher {
    /// Connects to NATS, opens the streams and buckets, and starts serving claims and
    /// applying reports on a runtime of its own.
    pub fn connect(
        config: &DistributedConfig,
        settings: DispatchSettings,
    ) -> Result<Dispatcher, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dispatch")
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the dispatcher's runtime: {err}"))?;
        let handle = runtime.handle().clone();
        let nats = config.nats.clone();
        let project_dir = settings.project_dir.clone();
        let (client, wire) = runtime.block_on(async move {
            let client = protocol::connect(&nats, &project_dir, "orchestrator-controller").await?;
            let wire = Wire::open(&client).await?;
            Ok::<_, String>((client, wire))
        })?;
        let inner = Arc::new(Inner {
            client,
            wire,
            store: std::sync::OnceLock::new(),
            settings,
            handle,
            pending: Mutex::new(HashMap::new()),
            snapshots: tokio::sync::Mutex::new(Snapshots::default()),
            consumers: tokio::sync::Mutex::new(HashSet::new()),
            counters: Counters::default(),
            opened: tokio::sync::watch::Sender::new(false),
        });
        runtime.block_on(Arc::clone(&inner).start_services())?;
        Ok(Dispatcher {
            inner,
            runtime: Some(runtime),
        })
    }

    /// Gives it the store claims are recorded in: until then every claim is refused (the
    /// worker asks again).
    pub fn attach_store(&self, store: Arc<Store>) {
        let _ = self.inner.store.set(store);
    }

    /// What it has counted.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// How long a worker may stay silent.
    pub fn lease(&self) -> Duration {
        self.inner.settings.lease
    }

    /// Its runtime, for tasks that use its connection (the worker registry's watch).
    pub fn runtime_handle(&self) -> tokio::runtime::Handle {
        self.inner.handle.clone()
    }

    /// Its streams and buckets.
    pub fn wire(&self) -> Wire {
        self.inner.wire.clone()
    }

    /// Sends a control message to a worker and waits until NATS has it. It blocks: call
    /// it from a thread outside any async runtime (the API uses `spawn_blocking`).
    pub fn control(&self, worker: &str, control: &Control) -> Result<(), String> {
        let inner = Arc::clone(&self.inner);
        let subject = protocol::control_subject(worker);
        let payload = serde_json::to_vec(control).unwrap_or_default();
        self.inner.handle.block_on(async move {
            inner
                .client
                .publish(subject, payload.into())
                .await
                .map_err(|err| err.to_string())?;
            inner.client.flush().await.map_err(|err| err.to_string())
        })
    }

    /// Starts an attempt on a worker; see [`crate::engine::executor::Executor::start`].
    pub fn start(
        &self,
        attempt: StepAttempt,
        events: Sender<AttemptMessage>,
    ) -> Arc<dyn AttemptStop> {
        let key = protocol::attempt_key(&attempt.run_id, attempt.index, attempt.number);
        let stop = Arc::new(RemoteStop {
            inner: Arc::clone(&self.inner),
            key: key.clone(),
        });
        let send_finished = |finished: AttemptFinished| {
            let _ = events.send(AttemptMessage {
                index: attempt.index,
                number: attempt.number,
                event: AttemptEvent::Finished(Box::new(finished)),
            });
        };
        let placement =
            attempt
                .placement
                .clone()
                .unwrap_or_else(|| crate::spec::workflow::Placement {
                    labels: BTreeMap::new(),
                    fail_when_lost: false,
                    queue_timeout: None,
                });
        let prepared = match prepare(&attempt, &self.inner.settings.project_dir) {
            Ok(prepared) => prepared,
            Err(err) => {
                send_finished(failed_before_start(err));
                return stop;
            }
        };
        let queue_timeout = placement
            .queue_timeout
            .unwrap_or(self.inner.settings.queue_timeout);
        self.inner.pending.lock().unwrap().insert(
            key.clone(),
            Pending {
                index: attempt.index,
                number: attempt.number,
                step: attempt.step.clone(),
                labels: placement.labels.clone(),
                fail_when_lost: placement.fail_when_lost,
                events,
                queue_deadline: Instant::now() + queue_timeout,
                stream_sequence: None,
                claim: None,
                stop: None,
                stop_sent: None,
                log_next: 0,
                log_hash: Sha256::new(),
                log_gaps: 0,
                log_resync: false,
                log_partial: false,
            },
        );
        let item = WorkItem {
            key: key.clone(),
            labels: placement.labels,
            step: prepared,
            snapshot: None,
        };
        let inner = Arc::clone(&self.inner);
        self.inner.handle.spawn(async move {
            if let Err(err) = Arc::clone(&inner).publish(item).await {
                inner.end(
                    &key,
                    |_| true,
                    |_| AttemptFinished {
                        outcome: Outcome {
                            status: Some(Status::Failed),
                            message: Some(format!("could not hand the step to a worker: {err}")),
                            ..Outcome::default()
                        },
                        attempt: None,
                    },
                );
            }
        });
        stop
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The project snapshots handed out: each run's (its retries run in the same files), and
/// the last one packed with the fingerprint of the files it was packed from, so a run
/// whose project did not change reads no file.
#[derive(Default)]
struct Snapshots {
    of_run: HashMap<String, String>,
    last: Option<(String, String)>,
}

/// Stops a remote attempt: before a claim, it ends at once; after, its worker is told.
struct RemoteStop {
    inner: Arc<Inner>,
    key: String,
}

impl AttemptStop for RemoteStop {
    fn stop(self: Arc<Self>, reason: StopReason) {
        let (status, text) = match reason {
            StopReason::Timeout => (Status::TimedOut, "timed out waiting for a worker"),
            StopReason::Cancel => (Status::Cancelled, "cancelled before a worker took it"),
        };
        let ended = self.inner.end(
            &self.key,
            |p| p.claim.is_none(),
            |_| AttemptFinished {
                outcome: Outcome {
                    status: Some(status),
                    message: Some(text.to_owned()),
                    ..Outcome::default()
                },
                attempt: None,
            },
        );
        if ended.is_some() {
            return;
        }
        // Claimed: its worker is told now, and again while the attempt has not ended (a
        // control message is not kept for a worker that is away; the worker also keeps a
        // stop that arrives while its claim is still being answered).
        let worker = {
            let mut pending = self.inner.pending.lock().unwrap();
            let Some(p) = pending.get_mut(&self.key) else {
                return;
            };
            let reason = *p.stop.get_or_insert(reason);
            p.stop_sent = Some(Instant::now());
            p.claim.as_ref().map(|c| (c.worker.clone(), reason))
        };
        if let Some((worker, reason)) = worker {
            let inner = Arc::clone(&self.inner);
            let key = self.key.clone();
            self.inner
                .handle
                .spawn(async move { inner.send_stop(&worker, &key, reason).await });
        }
    }
}

impl Inner {
    async fn start_services(self: Arc<Self>) -> Result<(), String> {
        let claims = self
            .client
            .queue_subscribe(protocol::CLAIM_SUBJECT, "controllers".into())
            .await
            .map_err(|err| format!("cannot serve claims: {err}"))?;
        let results = self
            .wire
            .results
            .get_or_create_consumer(
                protocol::RESULT_CONSUMER,
                jetstream::consumer::pull::Config {
                    durable_name: Some(protocol::RESULT_CONSUMER.into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: protocol::ACK_WAIT,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| format!("cannot read worker reports: {err}"))?;
        let advisories = self
            .client
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
                protocol::WORK_STREAM
            ))
            .await
            .map_err(|err| format!("cannot watch deliveries: {err}"))?;
        let me = Arc::clone(&self);
        tokio::spawn(async move { me.serve_claims(claims).await });
        let me = Arc::clone(&self);
        tokio::spawn(async move { me.apply_results(results).await });
        let me = Arc::clone(&self);
        tokio::spawn(async move { me.watch_deliveries(advisories).await });
        let me = Arc::clone(&self);
        tokio::spawn(async move { me.judge_leases().await });
        Ok(())
    }

    /// Publishes an attempt (after its run's snapshot and its selector's consumer).
    async fn publish(self: Arc<Self>, mut item: WorkItem) -> Result<(), String> {
        let run_id = item.step.run_id.clone();
        item.snapshot = Some(self.snapshot(&run_id).await?);
        let selector = protocol::selector(&item.labels);
        if !self.consumers.lock().await.contains(&selector) {
            self.wire
                .selector_consumer(&selector, i64::from(self.settings.max_deliver))
                .await?;
            let labels = serde_json::to_vec(&item.labels).unwrap_or_default();
            self.wire
                .selectors
                .put(&selector, labels.into())
                .await
                .map_err(|err| format!("cannot register the selector: {err}"))?;
            self.consumers.lock().await.insert(selector.clone());
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", item.key.as_str());
        let payload = serde_json::to_vec(&item).map_err(|err| err.to_string())?;
        let mut delay = Duration::from_millis(50);
        loop {
            let sent = async {
                self.wire
                    .js
                    .publish_with_headers(
                        protocol::work_subject(&selector),
                        headers.clone(),
                        payload.clone().into(),
                    )
                    .await
                    .map_err(|err| err.to_string())?
                    .await
                    .map_err(|err| err.to_string())
            }
            .await;
            match sent {
                Ok(ack) => {
                    self.counters.published.fetch_add(1, Ordering::Relaxed);
                    let waiting = match self.pending.lock().unwrap().get_mut(&item.key) {
                        Some(p) => {
                            p.stream_sequence = Some(ack.sequence);
                            true
                        }
                        None => false,
                    };
                    if !waiting {
                        // It ended (stopped, timed out) while it was being published.
                        let _ = self.wire.work.delete_message(ack.sequence).await;
                    }
                    return Ok(());
                }
                Err(err) => {
                    let wanted = self
                        .pending
                        .lock()
                        .unwrap()
                        .get(&item.key)
                        .is_some_and(|p| p.queue_deadline > Instant::now());
                    if !wanted {
                        return Err(err);
                    }
                    tracing::warn!("publishing {} failed, retrying: {err}", item.key);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The snapshot of the project for a run: the same for all its attempts; packed again
    /// only when the files' fingerprint changed, uploaded once per content.
    async fn snapshot(&self, run_id: &str) -> Result<String, String> {
        let mut snapshots = self.snapshots.lock().await;
        if let Some(name) = snapshots.of_run.get(run_id) {
            return Ok(name.clone());
        }
        let project_dir = self.settings.project_dir.clone();
        let skip = self.settings.skip.clone();
        let fingerprint = {
            let (project_dir, skip) = (project_dir.clone(), skip.clone());
            tokio::task::spawn_blocking(move || snapshot::fingerprint(&project_dir, &skip))
                .await
                .map_err(|err| err.to_string())?
                .map_err(|err| format!("cannot read the project: {err}"))?
        };
        let name = match &snapshots.last {
            // Nothing changed since the last pack: its object serves this run too.
            Some((seen, name)) if *seen == fingerprint => name.clone(),
            _ => {
                let packed =
                    tokio::task::spawn_blocking(move || snapshot::pack(&project_dir, &skip))
                        .await
                        .map_err(|err| err.to_string())?
                        .map_err(|err| format!("cannot pack the project: {err}"))?;
                if self.wire.files.info(&packed.name).await.is_err() {
                    let mut bytes = packed.bytes.as_slice();
                    self.wire
                        .files
                        .put(packed.name.as_str(), &mut bytes)
                        .await
                        .map_err(|err| format!("cannot upload the project snapshot: {err}"))?;
                }
                snapshots.last = Some((fingerprint, packed.name.clone()));
                packed.name
            }
        };
        if snapshots.of_run.len() > 1000 {
            snapshots.of_run.clear();
        }
        snapshots.of_run.insert(run_id.to_owned(), name.clone());
        Ok(name)
    }

    async fn serve_claims(self: Arc<Self>, mut claims: async_nats::Subscriber) {
        self.until_open().await;
        while let Some(message) = claims.next().await {
            let Some(reply) = message.reply.clone() else {
                continue;
            };
            // Each claim on a task of its own: their durable writes overlap (the store's
            // flushes of claims in flight together), and one slow flush holds up no other.
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let answer = match serde_json::from_slice::<ClaimRequest>(&message.payload) {
                    Ok(request) => {
                        let deciding = Arc::clone(&me);
                        tokio::task::spawn_blocking(move || deciding.claim(&request))
                            .await
                            .unwrap_or_else(|err| ClaimReply {
                                token: None,
                                refused: Some(err.to_string()),
                                retry: true,
                            })
                    }
                    Err(err) => ClaimReply {
                        token: None,
                        refused: Some(format!("not a claim: {err}")),
                        retry: false,
                    },
                };
                let payload = serde_json::to_vec(&answer).unwrap_or_default();
                let _ = me.client.publish(reply, payload.into()).await;
            });
        }
    }

    /// Grants the first claim of a pending attempt, durably.
    fn claim(&self, request: &ClaimRequest) -> ClaimReply {
        let refuse_as = |why: String, retry: bool| {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            ClaimReply {
                token: None,
                refused: Some(why),
                retry,
            }
        };
        let refuse = |why: String| refuse_as(why, false);
        let pending = self.pending.lock().unwrap();
        let Some(p) = pending.get(&request.key) else {
            return refuse("the attempt is no longer waiting for a worker".into());
        };
        if let Some(claim) = &p.claim {
            if claim.worker == request.worker {
                // The same worker asking again: the answer to its first claim was lost (a
                // request timed out, NATS restarted) and the attempt came back to it. It
                // gets the same token; a worker never runs a key it already runs.
                return ClaimReply {
                    token: Some(claim.token),
                    refused: None,
                    retry: false,
                };
            }
            return refuse(format!("already claimed by {}", claim.worker));
        }
        let mut token = 0u64;
        while token == 0 {
            let mut bytes = [0u8; 8];
            if getrandom::fill(&mut bytes).is_err() {
                return refuse_as("no randomness for a token".into(), true);
            }
            token = u64::from_le_bytes(bytes);
        }
        let claim = Claim {
            worker: request.worker.clone(),
            token,
            state: "running".into(),
        };
        let Some(store) = self.store.get() else {
            return refuse_as("the controller is starting".into(), true);
        };
        // The durable write without the pending table's lock: the store's compare-and-swap
        // decides between concurrent claims, so the engine, the reports and other claims go
        // on while it is flushed.
        drop(pending);
        match store.insert_state_once(CLAIMS_TREE, &request.key, &claim, true) {
            Ok(true) => {}
            Ok(false) => {
                return match store.state::<Claim>(CLAIMS_TREE, &request.key) {
                    Ok(Some(first)) if first.worker == request.worker => ClaimReply {
                        token: Some(first.token),
                        refused: None,
                        retry: false,
                    },
                    _ => refuse("already claimed".into()),
                }
            }
            Err(err) => {
                return refuse_as(
                    format!("the controller cannot record the claim: {err}"),
                    true,
                )
            }
        }
        let mut pending = self.pending.lock().unwrap();
        let Some(p) = pending.get_mut(&request.key).filter(|p| p.claim.is_none()) else {
            // It ended (stopped, timed out) while its claim was written.
            return refuse("the attempt is no longer waiting for a worker".into());
        };
        p.claim = Some(Granted {
            worker: request.worker.clone(),
            token,
            at: Instant::now(),
            started_at: now(),
            lease_revision: 0,
            lease_seen: Instant::now(),
        });
        self.counters.granted.fetch_add(1, Ordering::Relaxed);
        ClaimReply {
            token: Some(token),
            refused: None,
            retry: false,
        }
    }

    async fn apply_results(
        self: Arc<Self>,
        consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    ) {
        self.until_open().await;
        loop {
            let mut messages = match consumer.messages().await {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!("reading worker reports: {err}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            while let Some(message) = messages.next().await {
                let Ok(message) = message else {
                    break;
                };
                self.apply(&message).await;
                let _ = message.ack().await;
            }
        }
    }

    async fn apply(&self, message: &jetstream::Message) {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let (Some(kind), Some(key), Some(token)) = (
            header(protocol::KIND_HEADER),
            header(protocol::KEY_HEADER),
            header(protocol::TOKEN_HEADER).and_then(|t| t.parse::<u64>().ok()),
        ) else {
            return;
        };
        let current = |p: &Pending| p.claim.as_ref().is_some_and(|c| c.token == token);
        let from = message
            .subject
            .as_str()
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let stale = || self.stale(&kind, &key, &from);
        match kind.as_str() {
            "started" => {
                let pending = self.pending.lock().unwrap();
                match pending.get(&key).filter(|p| current(p)) {
                    Some(p) => send(p, AttemptEvent::Started { at: Instant::now() }),
                    None => stale(),
                }
            }
            "log" => {
                let seq = header(protocol::SEQ_HEADER)
                    .and_then(|s| s.parse::<u64>().ok())
                    .unwrap_or(0);
                let mut pending = self.pending.lock().unwrap();
                match pending.get_mut(&key).filter(|p| current(p)) {
                    Some(p) if p.log_resync => {
                        p.log_resync = false;
                        p.log_partial = seq > 0;
                        p.log_next = seq + 1;
                        p.log_hash.update(&message.payload);
                        send(p, AttemptEvent::Log(message.payload.to_vec()));
                    }
                    Some(p) if seq < p.log_next => {}
                    Some(p) => {
                        if seq > p.log_next {
                            p.log_gaps += seq - p.log_next;
                        }
                        p.log_next = seq + 1;
                        p.log_hash.update(&message.payload);
                        send(p, AttemptEvent::Log(message.payload.to_vec()));
                    }
                    None => stale(),
                }
            }
            "finished" => {
                let Ok(finished) = serde_json::from_slice::<Finished>(&message.payload) else {
                    return;
                };
                if !self.pending.lock().unwrap().get(&key).is_some_and(current) {
                    stale();
                    return;
                }
                if finished.lost {
                    // The worker fenced itself off: it could not renew its lease, stopped
                    // the step and says so. A lost worker, as if its lease had run out.
                    let why = finished
                        .message
                        .clone()
                        .unwrap_or_else(|| format!("worker {from} could not renew its lease"));
                    if !self.lose(&key, &from, token, &why).await {
                        stale();
                    }
                    return;
                }
                let artifacts = self.fetch_artifacts(&key, &finished.artifacts).await;
                let claim = Claim {
                    worker: String::new(),
                    token,
                    state: "finished".into(),
                };
                let counters = &self.counters;
                let store = self.store.get();
                let claim_key = key.clone();
                let ended = self.end(&key, current, move |p| {
                    let worker = p.claim.as_ref().map(|c| c.worker.clone()).unwrap_or_default();
                    if let Some(store) = store {
                        let _ = store.put_state(
                            CLAIMS_TREE,
                            &claim_key,
                            &Claim {
                                worker: worker.clone(),
                                ..claim
                            },
                            false,
                        );
                    }
                    let mut message = finished.message.clone();
                    let received = p.log_hash.clone().finalize();
                    let missing = if p.log_resync {
                        0
                    } else {
                        p.log_gaps + finished.log_chunks.saturating_sub(p.log_next)
                    };
                    let unverifiable = p.log_resync || p.log_partial;
                    if missing > 0
                        || (!unverifiable && hex::encode(received) != finished.log_sha256)
                    {
                        counters.log_gaps.fetch_add(missing.max(1), Ordering::Relaxed);
                        let note = format!(
                            "the step's log from worker {worker} is incomplete: {missing} of {} chunks missing",
                            finished.log_chunks
                        );
                        send(p, AttemptEvent::Log(format!("[orchestrator] {note}\n").into_bytes()));
                        message = Some(message.map_or(note.clone(), |m| format!("{m}; {note}")));
                    }
                    let mut attempt = finished.attempt.clone();
                    if let Some(attempt) = &mut attempt {
                        attempt.message.clone_from(&message);
                    }
                    AttemptFinished {
                        outcome: Outcome {
                            status: finished.status,
                            exit_code: finished.exit_code,
                            message,
                            outputs: finished.outputs.clone(),
                            tests: finished.tests.clone(),
                            artifacts: artifacts.clone(),
                            no_retry: false,
                        },
                        attempt,
                    }
                });
                if ended.is_none() {
                    // Lost (or stopped) while its artifacts were fetched.
                    stale();
                }
            }
            _ => {}
        }
    }

    /// Downloads a finished attempt's artifacts into the staging directory; their paths
    /// there, for the engine to keep.
    async fn fetch_artifacts(&self, key: &str, artifacts: &[(String, String)]) -> Vec<String> {
        let mut kept = Vec::new();
        for (path, object) in artifacts {
            let name = std::path::Path::new(path)
                .file_name()
                .map_or_else(|| "artifact".into(), |n| n.to_string_lossy().into_owned());
            let target = self.settings.staging_dir.join(key).join(&name);
            let Ok(mut reader) = self.wire.files.get(object).await else {
                continue;
            };
            let mut bytes = Vec::new();
            if tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes)
                .await
                .is_err()
            {
                continue;
            }
            let written = target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&target, &bytes));
            if written.is_ok() {
                kept.push(target.display().to_string());
            }
            let _ = self.wire.files.delete(object).await;
        }
        kept
    }

    /// Drops a report whose token is not the attempt's current one (its worker was
    /// declared lost, or the attempt ended otherwise), and counts it.
    fn stale(&self, kind: &str, key: &str, worker: &str) {
        self.counters.stale.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            "dropped a stale `{kind}` report of attempt {key} from worker {worker}: its claim is no longer current"
        );
    }

    /// Ends a pending attempt if `pending` holds for it: removes it, and sends what
    /// `finished` makes of it. Returns it when it ended here.
    fn end(
        &self,
        key: &str,
        pending: impl FnOnce(&Pending) -> bool,
        finished: impl FnOnce(&mut Pending) -> AttemptFinished,
    ) -> Option<Pending> {
        let mut table = self.pending.lock().unwrap();
        if !table.get(key).is_some_and(pending) {
            return None;
        }
        let mut p = table.remove(key)?;
        drop(table);
        let result = finished(&mut p);
        send(&p, AttemptEvent::Finished(Box::new(result)));
        // Whatever ended it, nothing of it stays on the wire: its message (still queued
        // when it ended unclaimed; acked already otherwise) and its lease.
        let wire = self.wire.clone();
        let (sequence, claimed) = (p.stream_sequence, p.claim.is_some());
        let key = key.to_owned();
        self.handle.spawn(async move {
            if let Some(sequence) = sequence {
                let _ = wire.work.delete_message(sequence).await;
            }
            if claimed {
                let _ = wire.leases.purge(&key).await;
            }
        });
        Some(p)
    }

    async fn watch_deliveries(self: Arc<Self>, mut advisories: async_nats::Subscriber) {
        while let Some(message) = advisories.next().await {
            let Ok(advisory) = serde_json::from_slice::<Value>(&message.payload) else {
                continue;
            };
            let Some(sequence) = advisory.get("stream_seq").and_then(Value::as_u64) else {
                continue;
            };
            let deliveries = advisory
                .get("deliveries")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let key = {
                let pending = self.pending.lock().unwrap();
                pending
                    .iter()
                    .find(|(_, p)| p.stream_sequence == Some(sequence) && p.claim.is_none())
                    .map(|(k, _)| k.clone())
            };
            if let Some(key) = key {
                self.end(
                    &key,
                    |p| p.claim.is_none(),
                    |_| failure(format!(
                        "delivered to workers {deliveries} times and never claimed (max_deliver {}); given up",
                        self.settings.max_deliver
                    )),
                );
            }
        }
    }

    /// Every tick: attempts past their queue timeout fail; claimed attempts whose lease
    /// has not been renewed for the lease time are lost.
    async fn judge_leases(self: Arc<Self>) {
        let tick =
            (self.settings.lease / 5).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            let now = Instant::now();
            let (claimed, overdue): (Vec<String>, Vec<String>) = {
                let pending = self.pending.lock().unwrap();
                let claimed = pending
                    .iter()
                    .filter(|(_, p)| p.claim.is_some())
                    .map(|(k, _)| k.clone())
                    .collect();
                let overdue = pending
                    .iter()
                    .filter(|(_, p)| p.claim.is_none() && p.queue_deadline <= now)
                    .map(|(k, _)| k.clone())
                    .collect();
                (claimed, overdue)
            };
            for key in overdue {
                let workers = self.workers().await;
                let ended = self.end(
                    &key,
                    |p| p.claim.is_none(),
                    |p| {
                        let labels: Vec<String> =
                            p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        let matching = workers
                            .iter()
                            .filter(|(w, _)| protocol::satisfies(&w.labels, &p.labels))
                            .count();
                        failure(format!(
                            "queue_timeout: no worker took step `{}` within its queue timeout; it needs labels {{{}}}, which {matching} of {} known worker(s) have",
                            p.step,
                            labels.join(", "),
                            workers.len()
                        ))
                    },
                );
                if ended.is_some() {
                    self.counters.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                }
            }
            for key in claimed {
                // A lease this controller cannot read (NATS away, restarting) is not judged:
                // its clock starts again once it can be seen, so a controller cut off from
                // NATS declares no worker lost for it.
                let revision = match self.wire.leases.entry(&key).await {
                    Ok(Some(entry)) => Some(entry.revision),
                    Ok(None) => Some(0),
                    Err(_) => None,
                };
                let (lost, stop) = {
                    let mut pending = self.pending.lock().unwrap();
                    let Some(p) = pending.get_mut(&key) else {
                        continue;
                    };
                    // A stop not yet obeyed is sent again every second.
                    let stop = match (p.stop, &p.claim) {
                        (Some(reason), Some(claim))
                            if p.stop_sent.is_none_or(|at| at.elapsed() >= STOP_RESEND) =>
                        {
                            p.stop_sent = Some(Instant::now());
                            Some((claim.worker.clone(), reason))
                        }
                        _ => None,
                    };
                    let Some(claim) = p.claim.as_mut() else {
                        continue;
                    };
                    match revision {
                        None => claim.lease_seen = Instant::now(),
                        Some(revision) if revision != claim.lease_revision => {
                            claim.lease_revision = revision;
                            claim.lease_seen = Instant::now();
                        }
                        Some(_) => {}
                    }
                    let lost = (claim.lease_seen.elapsed() > self.settings.lease)
                        .then(|| (claim.worker.clone(), claim.token));
                    (lost, stop)
                };
                if let Some((worker, reason)) = stop {
                    self.send_stop(&worker, &key, reason).await;
                }
                if let Some((worker, token)) = lost {
                    let why = format!(
                        "worker {worker} sent no heartbeat for {}",
                        crate::duration::format_duration(self.settings.lease)
                    );
                    self.lose(&key, &worker, token, &why).await;
                }
            }
        }
    }

    /// Tells a worker to stop an attempt.
    async fn send_stop(&self, worker: &str, key: &str, reason: StopReason) {
        let control = Control::Stop {
            key: key.to_owned(),
            timeout: reason == StopReason::Timeout,
        };
        let payload = serde_json::to_vec(&control).unwrap_or_default();
        let _ = self
            .client
            .publish(protocol::control_subject(worker), payload.into())
            .await;
    }

    /// Declares an attempt's worker lost (`why`): the claim is fenced off durably, the
    /// worker is told to stop it, and the attempt ends failed (retried under
    /// `on_worker_lost: retry` while retries remain). Whether it ended here.
    async fn lose(&self, key: &str, worker: &str, token: u64, why: &str) -> bool {
        let store = self.store.get();
        let ended = self.end(
            key,
            |p| p.claim.as_ref().is_some_and(|c| c.token == token),
            |p| {
                if let Some(store) = store {
                    let _ = store.put_state(
                        CLAIMS_TREE,
                        key,
                        &Claim {
                            worker: worker.to_owned(),
                            token,
                            state: "lost".into(),
                        },
                        true,
                    );
                }
                let claim = p.claim.as_ref();
                let message = format!(
                    "worker_lost: {why}; {}",
                    if p.fail_when_lost {
                        "the step fails (on_worker_lost: fail)"
                    } else {
                        "the attempt is retried if retries remain (on_worker_lost: retry)"
                    }
                );
                let started_at = claim.map_or_else(now, |c| c.started_at.clone());
                AttemptFinished {
                    outcome: Outcome {
                        status: Some(Status::Failed),
                        message: Some(message.clone()),
                        no_retry: p.fail_when_lost,
                        ..Outcome::default()
                    },
                    attempt: Some(Attempt {
                        number: p.number,
                        status: Status::Failed,
                        started_at,
                        finished_at: now(),
                        duration_ms: claim.map_or(0, |c| c.at.elapsed().as_millis() as u64),
                        exit_code: None,
                        message: Some(message),
                        cpu_seconds: None,
                        max_rss_bytes: None,
                        orphans_killed: None,
                        worker: Some(worker.to_owned()),
                    }),
                }
            },
        );
        if ended.is_some() {
            self.counters.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("worker {worker} lost with attempt {key}: {why}");
            self.send_stop(worker, key, StopReason::Cancel).await;
        }
        ended.is_some()
    }

    async fn workers(&self) -> Vec<(protocol::WorkerInfo, Duration)> {
        let mut found = Vec::new();
        let Ok(mut keys) = self.wire.workers.keys().await else {
            return found;
        };
        let mut names = Vec::new();
        while let Some(Ok(key)) = keys.next().await {
            names.push(key);
        }
        for name in names {
            if let Ok(Some(entry)) = self.wire.workers.entry(&name).await {
                if let Ok(info) = serde_json::from_slice::<protocol::WorkerInfo>(&entry.value) {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i128);
                    let age = Duration::from_nanos(
                        (now - entry.created.unix_timestamp_nanos()).max(0) as u64,
                    );
                    found.push((info, age));
                }
            }
        }
        found
    }
}

fn send(pending: &Pending, event: AttemptEvent) {
    let _ = pending.events.send(AttemptMessage {
        index: pending.index,
        number: pending.number,
        event,
    });
}

fn failure(message: String) -> AttemptFinished {
    AttemptFinished {
        outcome: Outcome {
            status: Some(Status::Failed),
            message: Some(message),
            ..Outcome::default()
        },
        attempt: None,
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A restarted controller takes its attempts back: what the process that ended had
/// published or granted is adopted before any claim is answered or report applied
/// ([`Dispatcher::open`]), so that what workers reported meanwhile, queued in the results
/// stream, is applied once, in order, with the token of the attempt's claim.
impl Dispatcher {
    /// Takes over an attempt a controller that ended had started; see
    /// [`crate::engine::executor::Executor::adopt`]. By its claim in the store: granted
    /// and `running` (or `finished`, a report the process that ended applied but the run
    /// never recorded) → pending again with its worker and token, its lease judged afresh
    /// from now; none → published again under the same message id (the stream
    /// deduplicates it while the first copy waits; a copy claimed twice is refused by the
    /// claim record); `lost` → the process that ended declared its worker lost but the
    /// run never recorded it, so it ends failed here (retried if retries remain).
    pub fn adopt(
        &self,
        attempt: StepAttempt,
        events: Sender<AttemptMessage>,
    ) -> Arc<dyn AttemptStop> {
        let key = protocol::attempt_key(&attempt.run_id, attempt.index, attempt.number);
        let claim = self
            .inner
            .store
            .get()
            .and_then(|store| store.state::<Claim>(CLAIMS_TREE, &key).ok().flatten());
        let Some(claim) = claim else {
            return self.start(attempt, events);
        };
        let stop = Arc::new(RemoteStop {
            inner: Arc::clone(&self.inner),
            key: key.clone(),
        });
        // `finished`: the process that ended applied the worker's `finished` report but the
        // run never recorded it. Unacknowledged, the report is delivered again and applied
        // here; acknowledged, it is gone, and the lease (purged by the worker) runs out:
        // the attempt ends lost and is retried under `on_worker_lost: retry`.
        if claim.state == "lost" {
            let message = format!(
                "worker_lost: the controller declared worker {} lost with attempt {} just before it restarted; the attempt counts as failed",
                claim.worker, attempt.number
            );
            let _ = events.send(AttemptMessage {
                index: attempt.index,
                number: attempt.number,
                event: AttemptEvent::Finished(Box::new(AttemptFinished {
                    outcome: Outcome {
                        status: Some(Status::Failed),
                        message: Some(message.clone()),
                        ..Outcome::default()
                    },
                    attempt: Some(Attempt {
                        number: attempt.number,
                        status: Status::Failed,
                        started_at: now(),
                        finished_at: now(),
                        duration_ms: 0,
                        exit_code: None,
                        message: Some(message),
                        cpu_seconds: None,
                        max_rss_bytes: None,
                        orphans_killed: None,
                        worker: Some(claim.worker),
                    }),
                })),
            });
            return stop;
        }
        let placement =
            attempt
                .placement
                .clone()
                .unwrap_or_else(|| crate::spec::workflow::Placement {
                    labels: BTreeMap::new(),
                    fail_when_lost: false,
                    queue_timeout: None,
                });
        let queue_timeout = placement
            .queue_timeout
            .unwrap_or(self.inner.settings.queue_timeout);
        tracing::info!(
            "attempt {key} on worker {} adopted after a restart",
            claim.worker
        );
        self.inner.pending.lock().unwrap().insert(
            key,
            Pending {
                index: attempt.index,
                number: attempt.number,
                step: attempt.step.clone(),
                labels: placement.labels,
                fail_when_lost: placement.fail_when_lost,
                events,
                queue_deadline: Instant::now() + queue_timeout,
                stream_sequence: None,
                claim: Some(Granted {
                    worker: claim.worker,
                    token: claim.token,
                    at: Instant::now(),
                    started_at: now(),
                    lease_revision: 0,
                    lease_seen: Instant::now(),
                }),
                stop: None,
                stop_sent: None,
                log_next: 0,
                log_hash: Sha256::new(),
                log_gaps: 0,
                log_resync: true,
                log_partial: false,
            },
        );
        stop
    }

    /// Starts answering claims and applying reports: call once the attempts of a
    /// restarted controller are adopted (at once when there are none). Until then a
    /// worker's claim waits (and is asked again) and reports stay in the stream.
    pub fn open(&self) {
        self.inner.opened.send_replace(true);
    }
}

impl Inner {
    async fn until_open(&self) {
        let mut opened = self.opened.subscribe();
        let _ = opened.wait_for(|open| *open).await;
    }
}
