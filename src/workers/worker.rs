//! `orchestrator worker`: a process that runs step attempts for a controller over NATS.
//!
//! It registers itself and renews its leases with every heartbeat (a third of the lease),
//! pulls from every selector its labels satisfy while it has a free slot, claims each
//! attempt before it acks it, runs it in a workspace holding the project at the run's
//! revision, and reports on `orch.result.<name>`: `started`, log chunks (≤ 32 KiB, at
//! least every 100 ms, numbered, resent until acknowledged — the step's log file on disk
//! is the spool), and `finished` with the chunk count and the log's SHA-256.
//!
//! Failures it handles itself:
//! - an attempt whose lease it could not renew for the lease time (cut off from NATS,
//!   frozen) is stopped and never renewed again — checked before every renewal and by a
//!   watch of its own — and reported `lost`: the controller retries it elsewhere;
//! - a stop that arrives before the answer to its claim is kept and applied then;
//! - the step's `timeout` is enforced here too, from the step's start;
//! - one worker per work directory (`worker.lock`); every step process carries
//!   `ORCHESTRATOR_WORKER_DIR`, so a worker started on the directory of one killed
//!   outright stops the steps it left running before it takes work (steps also get
//!   `ORCHESTRATOR_WORKER`, the worker's name);
//! - SIGTERM (or a first Ctrl-C) drains: nothing new is pulled, what runs finishes, and it
//!   exits once nothing runs and no claim is in flight; a second Ctrl-C stops what runs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::protocol::{
    self, ClaimReply, ClaimRequest, Control, Finished, Lease, RunningAttempt, Wire, WorkItem,
    WorkerInfo,
};
use super::snapshot;
use crate::agents::local::{failed_before_start, run_prepared, Place};
use crate::config::NatsConfig;
use crate::engine::agent_logs::AgentLogs;
use crate::engine::executor::StopReason;
use crate::engine::mask::StepLog;
use crate::engine::process::StepControl;
use crate::logging::Rotation;

/// How a worker is started.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The NATS server and credentials.
    pub nats: NatsConfig,
    /// Its name (unique among workers).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Attempts it runs at once.
    pub slots: u32,
    /// Where workspaces, logs and reports go.
    pub work_dir: PathBuf,
    /// How long it may go without renewing its leases before it stops its steps.
    pub lease: Duration,
    /// Base of `file:` credential references.
    pub base_dir: PathBuf,
}

/// The variable naming, in every step process a worker starts, the worker's name.
pub const WORKER_VARIABLE: &str = "ORCHESTRATOR_WORKER";
/// The variable marking every step process a worker starts with its work directory, so
/// that the next worker started on that directory finds what a killed one left running.
pub const WORK_DIR_VARIABLE: &str = "ORCHESTRATOR_WORKER_DIR";

/// How long a stop for an attempt this worker does not run is kept (it may overtake the
/// answer to the claim).
const EARLY_STOP_KEPT: Duration = Duration::from_secs(600);

/// An attempt this worker runs.
struct Running {
    info: RunningAttempt,
    token: u64,
    control: Arc<StepControl>,
    /// Since when its lease is known renewed: the claim's request, then each renewal.
    renewed: Instant,
    /// Why the worker stopped it itself, when it did.
    ended_by: Arc<Mutex<Option<EndedBy>>>,
}

/// Why a worker stopped an attempt of its own accord.
#[derive(Debug, Clone, Copy, PartialEq)]
enum EndedBy {
    /// Its lease could not be renewed for this long: the worker may be cut off, and the
    /// controller retries the attempt elsewhere.
    Fenced(Duration),
    /// The worker was interrupted twice (Ctrl-C).
    Interrupted,
}

/// The attempts a worker runs, and stops that came for attempts it does not run (yet).
#[derive(Default)]
struct Attempts {
    running: HashMap<String, Running>,
    stops: HashMap<String, (StopReason, Instant)>,
}

struct Worker {
    options: WorkerOptions,
    client: async_nats::Client,
    wire: Wire,
    slots: Arc<Semaphore>,
    attempts: Mutex<Attempts>,
    draining: AtomicBool,
    finished: AtomicU64,
    started_at: String,
    workspaces: tokio::sync::Mutex<()>,
    agent_logs: Arc<AgentLogs>,
    idle: tokio::sync::Notify,
}

/// Runs a worker until it is drained (SIGTERM, or a first SIGINT) or stopped (a second
/// SIGINT cancels what runs, reports it and exits).
pub fn run(options: WorkerOptions) -> Result<(), String> {
    if !protocol::valid_worker_name(&options.name) {
        return Err(format!(
            "worker name `{}`: expected 1 to 64 letters, digits, `-` or `_`",
            options.name
        ));
    }
    let mut options = options;
    std::fs::create_dir_all(&options.work_dir)
        .map_err(|err| format!("cannot create {}: {err}", options.work_dir.display()))?;
    options.work_dir = options
        .work_dir
        .canonicalize()
        .map_err(|err| format!("cannot read {}: {err}", options.work_dir.display()))?;
    // One worker per work directory: the lock is held for the process's life.
    let _lock = lock_work_dir(&options.work_dir)?;
    // A previous worker on this directory killed outright (kill -9, a crash) left its
    // steps running: their attempts are being retried elsewhere, so they are stopped.
    let left = crate::engine::process::kill_marked_steps(
        WORK_DIR_VARIABLE,
        &options.work_dir.display().to_string(),
    );
    if left > 0 {
        eprintln!(
            "worker {}: stopped {left} step process group(s) a previous worker left running in {}",
            options.name,
            options.work_dir.display()
        );
    }
    crate::engine::process::become_subreaper();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("worker")
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start a runtime: {err}"))?;
    runtime.block_on(serve(options))
}

async fn serve(options: WorkerOptions) -> Result<(), String> {
    let client = protocol::connect(
        &options.nats,
        &options.base_dir,
        &format!("orchestrator-worker-{}", options.name),
    )
    .await?;
    let wire = Wire::open(&client).await?;
    let worker = Arc::new(Worker {
        slots: Arc::new(Semaphore::new(options.slots.max(1) as usize)),
        options,
        client,
        wire,
        attempts: Mutex::new(Attempts::default()),
        draining: AtomicBool::new(false),
        finished: AtomicU64::new(0),
        started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        workspaces: tokio::sync::Mutex::new(()),
        agent_logs: AgentLogs::new(Rotation {
            max_file_bytes: 10 << 20,
            max_files: 3,
        }),
        idle: tokio::sync::Notify::new(),
    });
    worker.heartbeat().await;
    let control = worker
        .client
        .subscribe(protocol::control_subject(&worker.options.name))
        .await
        .map_err(|err| format!("cannot subscribe to control messages: {err}"))?;
    tokio::spawn(Arc::clone(&worker).listen(control));
    tokio::spawn(Arc::clone(&worker).beat());
    tokio::spawn(Arc::clone(&worker).watch_leases());
    tokio::spawn(Arc::clone(&worker).follow_selectors());
    tracing::info!(
        "worker {} ready: labels {:?}, {} slot(s)",
        worker.options.name,
        worker.options.labels,
        worker.options.slots
    );
    eprintln!(
        "worker {} connected to {} with {} slot(s)",
        worker.options.name, worker.options.nats.url, worker.options.slots
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| err.to_string())?;
    let mut interrupts = 0;
    let mut exiting = false;
    loop {
        tokio::select! {
            _ = term.recv() => {
                exiting = true;
                worker.draining.store(true, Ordering::SeqCst);
                eprintln!("worker {}: draining (SIGTERM): finishing what runs, taking nothing new", worker.options.name);
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                exiting = true;
                worker.draining.store(true, Ordering::SeqCst);
                if interrupts == 1 {
                    eprintln!("worker {}: draining (Ctrl-C again cancels what runs)", worker.options.name);
                } else {
                    eprintln!("worker {}: cancelling what runs", worker.options.name);
                    for running in worker.attempts.lock().unwrap().running.values() {
                        running.ended_by.lock().unwrap().get_or_insert(EndedBy::Interrupted);
                        running.control.stop(StopReason::Cancel);
                    }
                }
            }
            _ = worker.idle.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        // Done when nothing runs and no attempt is being taken (a claim in flight holds
        // a slot).
        let free = worker.slots.available_permits() == worker.options.slots.max(1) as usize;
        if exiting && free && worker.attempts.lock().unwrap().running.is_empty() {
            worker.draining.store(true, Ordering::SeqCst);
            worker.heartbeat().await;
            let _ = worker.client.flush().await;
            eprintln!("worker {}: drained, exiting", worker.options.name);
            return Ok(());
        }
    }
}

impl Worker {
    fn info(&self) -> WorkerInfo {
        WorkerInfo {
            name: self.options.name.clone(),
            labels: self.options.labels.clone(),
            slots: self.options.slots,
            running: self
                .attempts
                .lock()
                .unwrap()
                .running
                .values()
                .map(|r| r.info.clone())
                .collect(),
            draining: self.draining.load(Ordering::SeqCst),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            host: sysinfo::System::host_name().unwrap_or_default(),
            pid: std::process::id(),
            started_at: self.started_at.clone(),
            finished: self.finished.load(Ordering::Relaxed),
        }
    }

    /// Writes this worker's record and renews the lease of every attempt it runs. An
    /// attempt whose lease has not been renewed for the lease time is stopped first and
    /// not renewed: the controller may have given it to another worker meanwhile (this
    /// worker was cut off, or stopped: SIGSTOP, a frozen VM), so renewing it now would
    /// be a lie.
    async fn heartbeat(&self) -> bool {
        self.fence_silent();
        let began = Instant::now();
        let info = serde_json::to_vec(&self.info()).unwrap_or_default();
        if self
            .wire
            .workers
            .put(&self.options.name, info.into())
            .await
            .is_err()
        {
            return false;
        }
        let leases: Vec<(String, u64)> = self
            .attempts
            .lock()
            .unwrap()
            .running
            .iter()
            .filter(|(_, r)| r.ended_by.lock().unwrap().is_none())
            .map(|(k, r)| (k.clone(), r.token))
            .collect();
        for (key, token) in leases {
            let lease = Lease {
                worker: self.options.name.clone(),
                token,
            };
            let value = serde_json::to_vec(&lease).unwrap_or_default();
            if self.wire.leases.put(&key, value.into()).await.is_err() {
                return false;
            }
            // Renewed no earlier than when this heartbeat began: what the controller
            // saw may be that old.
            if let Some(r) = self.attempts.lock().unwrap().running.get_mut(&key) {
                r.renewed = r.renewed.max(began);
            }
        }
        true
    }

    /// Stops every attempt whose lease has gone unrenewed for the lease time: the
    /// controller declares its worker lost and retries it elsewhere, so it must not go
    /// on here.
    fn fence_silent(&self) {
        let attempts = self.attempts.lock().unwrap();
        for (key, r) in &attempts.running {
            let silent = r.renewed.elapsed();
            if silent <= self.options.lease {
                continue;
            }
            let mut ended_by = r.ended_by.lock().unwrap();
            if ended_by.is_none() {
                *ended_by = Some(EndedBy::Fenced(silent));
                eprintln!(
                    "worker {}: the lease of {key} was not renewed for {}; stopping its step: it is being retried elsewhere",
                    self.options.name,
                    crate::duration::format_duration(silent),
                );
            }
            r.control.stop(StopReason::Cancel);
        }
    }

    /// Heartbeats every third of the lease.
    async fn beat(self: Arc<Self>) {
        let every = (self.options.lease / 3).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            let _ = tokio::time::timeout(self.options.lease, self.heartbeat()).await;
        }
    }

    /// Looks for leases gone silent even while a heartbeat hangs (NATS away).
    async fn watch_leases(self: Arc<Self>) {
        let every = (self.options.lease / 6).max(Duration::from_millis(50));
        loop {
            tokio::time::sleep(every).await;
            self.fence_silent();
        }
    }

    async fn listen(self: Arc<Self>, mut control: async_nats::Subscriber) {
        while let Some(message) = control.next().await {
            match serde_json::from_slice::<Control>(&message.payload) {
                Ok(Control::Stop { key, timeout }) => {
                    let reason = if timeout {
                        StopReason::Timeout
                    } else {
                        StopReason::Cancel
                    };
                    let mut attempts = self.attempts.lock().unwrap();
                    if let Some(r) = attempts.running.get(&key) {
                        r.control.stop(reason);
                    } else {
                        // Not running (yet): the stop may have overtaken the answer to
                        // this worker's claim of it, so it is kept for a while.
                        attempts
                            .stops
                            .retain(|_, (_, at)| at.elapsed() < EARLY_STOP_KEPT);
                        attempts.stops.insert(key, (reason, Instant::now()));
                    }
                }
                Ok(Control::Drain) => self.draining.store(true, Ordering::SeqCst),
                Ok(Control::Resume) => self.draining.store(false, Ordering::SeqCst),
                Err(_) => {}
            }
            self.heartbeat().await;
        }
    }

    /// Starts a puller for each selector this worker satisfies, as selectors appear.
    async fn follow_selectors(self: Arc<Self>) {
        let mut pulling = HashSet::new();
        loop {
            if let Ok(mut keys) = self.wire.selectors.keys().await {
                let mut found = Vec::new();
                while let Some(Ok(key)) = keys.next().await {
                    found.push(key);
                }
                for selector in found {
                    if pulling.contains(&selector) {
                        continue;
                    }
                    let Ok(Some(value)) = self.wire.selectors.get(&selector).await else {
                        continue;
                    };
                    let Ok(labels) = serde_json::from_slice::<BTreeMap<String, String>>(&value)
                    else {
                        continue;
                    };
                    pulling.insert(selector.clone());
                    if protocol::satisfies(&self.options.labels, &labels) {
                        tokio::spawn(Arc::clone(&self).pull(selector));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Pulls one selector's attempts while a slot is free.
    async fn pull(self: Arc<Self>, selector: String) {
        let consumer = loop {
            match self
                .wire
                .work
                .get_consumer::<jetstream::consumer::pull::Config>(&protocol::selector_consumer(
                    &selector,
                ))
                .await
            {
                Ok(consumer) => break consumer,
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };
        loop {
            if self.draining.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            if self.draining.load(Ordering::SeqCst) {
                // Drained while waiting for the slot.
                continue;
            }
            let batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut batch = match batch {
                Ok(batch) => batch,
                Err(_) => {
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            // One message at most; none (the fetch expired): the slot is free again.
            if let Some(Ok(message)) = batch.next().await {
                let me = Arc::clone(&self);
                tokio::spawn(async move {
                    me.take(message).await;
                    drop(permit);
                    me.idle.notify_one();
                });
            }
        }
    }

    /// Claims a delivered attempt, acks it, runs it.
    async fn take(self: &Arc<Self>, message: jetstream::Message) {
        let item = match serde_json::from_slice::<WorkItem>(&message.payload) {
            Ok(item) => item,
            Err(err) => {
                tracing::warn!("dropping an unreadable attempt: {err}");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        if self.draining.load(Ordering::SeqCst) {
            let _ = message.ack_with(AckKind::Nak(None)).await;
            return;
        }
        if self
            .attempts
            .lock()
            .unwrap()
            .running
            .contains_key(&item.key)
        {
            // Delivered again while this worker runs it (its ack was lost).
            let _ = message.ack().await;
            return;
        }
        let requested = Instant::now();
        let request = ClaimRequest {
            key: item.key.clone(),
            worker: self.options.name.clone(),
        };
        let payload = serde_json::to_vec(&request).unwrap_or_default();
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            self.client.request(protocol::CLAIM_SUBJECT, payload.into()),
        )
        .await;
        let reply = match reply {
            Ok(Ok(reply)) => serde_json::from_slice::<ClaimReply>(&reply.payload).ok(),
            _ => None,
        };
        let token = match reply {
            // No controller answered, or it cannot decide now: let the attempt be
            // delivered again.
            None | Some(ClaimReply { retry: true, .. }) => {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
            Some(ClaimReply {
                token: Some(token), ..
            }) => token,
            Some(ClaimReply { refused, .. }) => {
                tracing::info!(
                    "attempt {} not for this worker: {}",
                    item.key,
                    refused.unwrap_or_default()
                );
                let _ = message.ack().await;
                return;
            }
        };
        // Acked once granted; an ack that never arrives brings the message back after the
        // delivery wait, and its claim is then refused as taken.
        let _ = message.ack().await;
        let control = StepControl::new();
        let ended_by = Arc::new(Mutex::new(None));
        {
            let mut attempts = self.attempts.lock().unwrap();
            if attempts.running.contains_key(&item.key) {
                return;
            }
            if let Some((reason, _)) = attempts.stops.remove(&item.key) {
                // Stopped while the claim was answered: it ends at once.
                control.stop(reason);
            }
            attempts.running.insert(
                item.key.clone(),
                Running {
                    info: RunningAttempt {
                        key: item.key.clone(),
                        run_id: item.step.run_id.clone(),
                        step: item.step.step.clone(),
                        attempt: item.step.number,
                    },
                    token,
                    control: Arc::clone(&control),
                    renewed: requested,
                    ended_by: Arc::clone(&ended_by),
                },
            );
        }
        // The attempt's first lease is written beside its start, not before it: the
        // controller counts the lease from its grant, and the periodic heartbeat renews it
        // (and the worker's record) from then on.
        tokio::join!(
            self.renew_lease(&item.key, token),
            self.execute(&item, token, control, &ended_by)
        );
        self.attempts.lock().unwrap().running.remove(&item.key);
        self.finished.fetch_add(1, Ordering::Relaxed);
        let leases = self.wire.leases.clone();
        let key = item.key.clone();
        tokio::spawn(async move {
            let _ = leases.purge(&key).await;
        });
    }

    /// Writes one attempt's lease (at its start; the heartbeat renews them all).
    async fn renew_lease(&self, key: &str, token: u64) {
        let began = Instant::now();
        let lease = Lease {
            worker: self.options.name.clone(),
            token,
        };
        let value = serde_json::to_vec(&lease).unwrap_or_default();
        if self.wire.leases.put(key, value.into()).await.is_ok() {
            if let Some(r) = self.attempts.lock().unwrap().running.get_mut(key) {
                r.renewed = r.renewed.max(began);
            }
        }
    }

    async fn execute(
        self: &Arc<Self>,
        item: &WorkItem,
        token: u64,
        control: Arc<StepControl>,
        ended_by: &Mutex<Option<EndedBy>>,
    ) {
        let logs = self.options.work_dir.join("logs");
        let log_path = logs.join("steps").join(format!("{}.log", item.key));
        let outputs_path = log_path.with_extension("outputs");
        let _ = std::fs::create_dir_all(log_path.parent().unwrap_or(&logs));
        let _ = std::fs::remove_file(&log_path);
        let log = match StepLog::open(&log_path, 100 << 20) {
            Ok(log) => Arc::new(log),
            Err(err) => {
                self.report_finished(
                    item,
                    token,
                    failed(format!("worker cannot open its log: {err}")),
                    0,
                    String::new(),
                )
                .await;
                return;
            }
        };
        let workspace = match self.workspace(item.snapshot.as_deref()).await {
            Ok(workspace) => workspace,
            Err(err) => {
                self.report_finished(
                    item,
                    token,
                    failed(format!("worker {}: {err}", self.options.name)),
                    0,
                    String::new(),
                )
                .await;
                return;
            }
        };
        let (started_tx, mut started_rx) = tokio::sync::oneshot::channel::<()>();
        let mut prepared = item.step.clone();
        prepared
            .env
            .push((WORKER_VARIABLE.into(), self.options.name.clone()));
        prepared.env.push((
            WORK_DIR_VARIABLE.into(),
            self.options.work_dir.display().to_string(),
        ));
        let timeout = prepared.timeout_ms.map(Duration::from_millis);
        let stopper = Arc::clone(&control);
        let name = self.options.name.clone();
        let reports_dir = self.options.work_dir.join("reports");
        let agent_logs = Arc::clone(&self.agent_logs);
        let step_log = Arc::clone(&log);
        let outputs = outputs_path.clone();
        let job = tokio::task::spawn_blocking(move || {
            let place = Place {
                project_dir: &workspace,
                reports_dir: &reports_dir,
                log_dir: &logs,
                agent_logs: &agent_logs,
                worker: Some(&name),
            };
            let finished = run_prepared(
                &prepared,
                &place,
                &step_log,
                &outputs,
                &control,
                None,
                || {
                    let _ = started_tx.send(());
                },
            );
            (finished, workspace)
        });
        tokio::pin!(job);
        let mut sender = LogSender::new(log_path.clone());
        let mut started_sent = false;
        // The step's timeout is kept here too, from the step's start, so that it holds
        // while the controller or NATS is away (the controller's stop may come first).
        let mut deadline: Option<tokio::time::Instant> = None;
        let (finished, workspace) = loop {
            let until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                done = &mut job => break done.unwrap_or_else(|err| {
                    (failed_before_start(format!("the step's thread failed: {err}")), PathBuf::new())
                }),
                _ = &mut started_rx, if !started_sent => {
                    started_sent = true;
                    deadline = timeout.map(|t| tokio::time::Instant::now() + t);
                    self.report(item, token, "started", None, Vec::new()).await;
                }
                _ = tokio::time::sleep_until(until), if deadline.is_some() => {
                    deadline = None;
                    stopper.stop(StopReason::Timeout);
                }
                _ = tokio::time::sleep(protocol::LOG_FLUSH) => {
                    sender.send_new(self, item, token).await;
                }
            }
        };
        if !started_sent && started_rx.try_recv().is_ok() {
            self.report(item, token, "started", None, Vec::new()).await;
        }
        drop(log);
        sender.send_new(self, item, token).await;
        let (chunks, sha) = sender.finish();
        let mut artifacts = Vec::new();
        for (i, path) in finished.outcome.artifacts.iter().enumerate() {
            let source = workspace.join(path);
            let Ok(bytes) = tokio::fs::read(&source).await else {
                continue;
            };
            let object = format!("artifact-{}-{i}", item.key);
            let mut reader = bytes.as_slice();
            if self
                .wire
                .files
                .put(object.as_str(), &mut reader)
                .await
                .is_ok()
            {
                artifacts.push((path.clone(), object));
            }
        }
        let mut wire = Finished {
            status: finished.outcome.status,
            exit_code: finished.outcome.exit_code,
            message: finished.outcome.message.clone(),
            outputs: finished.outcome.outputs.clone(),
            tests: finished.outcome.tests.clone(),
            artifacts,
            attempt: finished.attempt.clone(),
            log_chunks: chunks,
            log_sha256: sha,
            lost: false,
        };
        let name = &self.options.name;
        match *ended_by.lock().unwrap() {
            Some(EndedBy::Fenced(silent)) => {
                wire.lost = true;
                wire.status = Some(crate::model::Status::Failed);
                wire.message = Some(format!(
                    "worker {name} could not renew its lease for {} (cut off from NATS, or stopped) and stopped the step itself",
                    crate::duration::format_duration(silent)
                ));
            }
            Some(EndedBy::Interrupted) => {
                wire.message = Some(format!(
                    "cancelled: worker {name} was interrupted twice (Ctrl-C) and stopped the step"
                ));
            }
            None => {}
        }
        if let (Some(attempt), Some(message)) = (&mut wire.attempt, &wire.message) {
            if ended_by.lock().unwrap().is_some() {
                attempt.message = Some(message.clone());
                if let Some(status) = wire.status {
                    attempt.status = status;
                }
            }
        }
        self.report_finished(item, token, wire, chunks, String::new())
            .await;
    }

    /// The workspace of a snapshot: fetched and unpacked once per snapshot.
    async fn workspace(&self, snapshot: Option<&str>) -> Result<PathBuf, String> {
        let Some(name) = snapshot else {
            let empty = self.options.work_dir.join("workspaces").join("empty");
            let _ = std::fs::create_dir_all(&empty);
            return Ok(empty);
        };
        let target = self.options.work_dir.join("workspaces").join(name);
        if target.is_dir() {
            return Ok(target);
        }
        let _guard = self.workspaces.lock().await;
        if target.is_dir() {
            return Ok(target);
        }
        let mut object = self
            .wire
            .files
            .get(name)
            .await
            .map_err(|err| format!("cannot fetch the project snapshot {name}: {err}"))?;
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut bytes)
            .await
            .map_err(|err| format!("cannot read the project snapshot {name}: {err}"))?;
        let unpack_to = target.clone();
        tokio::task::spawn_blocking(move || snapshot::unpack(bytes.as_slice(), &unpack_to))
            .await
            .map_err(|err| err.to_string())?
            .map_err(|err| format!("cannot unpack the project snapshot {name}: {err}"))?;
        Ok(target)
    }

    /// Publishes a report until the stream acknowledges it (NATS may be restarting).
    async fn report(
        &self,
        item: &WorkItem,
        token: u64,
        kind: &str,
        seq: Option<u64>,
        payload: Vec<u8>,
    ) {
        let mut headers = HeaderMap::new();
        headers.insert(protocol::KIND_HEADER, kind);
        headers.insert(protocol::KEY_HEADER, item.key.as_str());
        headers.insert(protocol::TOKEN_HEADER, token.to_string().as_str());
        let mut id = format!("{}.{kind}", item.key);
        if let Some(seq) = seq {
            headers.insert(protocol::SEQ_HEADER, seq.to_string().as_str());
            id.push_str(&format!(".{seq}"));
        }
        headers.insert("Nats-Msg-Id", format!("{id}.{token}").as_str());
        let subject = protocol::result_subject(&self.options.name);
        let mut delay = Duration::from_millis(50);
        loop {
            let sent = async {
                self.wire
                    .js
                    .publish_with_headers(subject.clone(), headers.clone(), payload.clone().into())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            }
            .await;
            match sent {
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!("report {kind} of {} not sent yet: {err}", item.key);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn report_finished(
        &self,
        item: &WorkItem,
        token: u64,
        mut finished: Finished,
        chunks: u64,
        sha: String,
    ) {
        if finished.log_sha256.is_empty() {
            finished.log_chunks = chunks;
            finished.log_sha256 = if sha.is_empty() {
                hex::encode(Sha256::digest(b""))
            } else {
                sha
            };
        }
        let payload = serde_json::to_vec(&finished).unwrap_or_default();
        self.report(item, token, "finished", None, payload).await;
    }
}

/// Sends a step's log file as numbered chunks, from where the last acknowledged one ended.
struct LogSender {
    path: PathBuf,
    offset: u64,
    seq: u64,
    hash: Sha256,
}

impl LogSender {
    fn new(path: PathBuf) -> LogSender {
        LogSender {
            path,
            offset: 0,
            seq: 0,
            hash: Sha256::new(),
        }
    }

    async fn send_new(&mut self, worker: &Worker, item: &WorkItem, token: u64) {
        loop {
            let chunk = read_chunk(&self.path, self.offset);
            if chunk.is_empty() {
                return;
            }
            worker
                .report(item, token, "log", Some(self.seq), chunk.clone())
                .await;
            self.hash.update(&chunk);
            self.offset += chunk.len() as u64;
            self.seq += 1;
        }
    }

    fn finish(self) -> (u64, String) {
        (self.seq, hex::encode(self.hash.finalize()))
    }
}

fn read_chunk(path: &Path, offset: u64) -> Vec<u8> {
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if file.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut chunk = vec![0u8; protocol::LOG_CHUNK_BYTES];
    let mut filled = 0;
    while filled < chunk.len() {
        match file.read(&mut chunk[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    chunk.truncate(filled);
    chunk
}

fn failed(message: String) -> Finished {
    Finished {
        status: Some(crate::model::Status::Failed),
        exit_code: None,
        message: Some(message),
        outputs: serde_json::Map::new(),
        tests: Vec::new(),
        artifacts: Vec::new(),
        attempt: None,
        log_chunks: 0,
        log_sha256: String::new(),
        lost: false,
    }
}

/// Locks a work directory for this worker (`worker.lock` in it) for as long as the lock
/// lives; refused when another worker holds it.
fn lock_work_dir(work_dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, String> {
    let path = work_dir.join("worker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| {
        format!(
            "the work directory {} is used by another worker: give each worker a work directory of its own",
            work_dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_directory_takes_one_worker_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_work_dir(dir.path()).unwrap();
        let refused = lock_work_dir(dir.path()).unwrap_err();
        assert!(refused.contains("used by another worker"), "{refused}");
        drop(held);
        assert!(lock_work_dir(dir.path()).is_ok());
    }
}
