//! The runner: every run this process executes goes through it. It admits a created run,
//! queues it while `runs.max_active` runs execute, gives each a thread of its own when a slot
//! frees, cancels and interrupts runs, and resumes the runs a process that ended left
//! `queued`. The API, the scheduler and webhook triggers start runs here; what happens to
//! each run is published on the event bus once it is durable, and told to a [`RunObserver`]
//! (the server's metrics and run statistics).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;

use super::admission::RunSlots;
use super::log_tail::LogTailer;
use super::run::{self, CancelSignal, EngineConfig, EngineError, Event as EngineEvent};
use crate::events::{Event, EventBus, StepRetrying};
use crate::model::{RunRecord, RunSummary, Status, StepRecord, StepSummary};
use crate::reconcile::view::View;
use crate::store::{Store, StoreError};

/// What the runner tells whoever counts runs (the server's metrics and statistics). Each
/// call comes after the change it reports is durable.
pub trait RunObserver: Send + Sync {
    /// A run begins to execute.
    fn run_started(&self);
    /// A run executed to its end, with its final steps.
    fn run_finished(&self, run: &RunRecord, steps: &[StepRecord]);
    /// A run ended without executing (cancelled or interrupted while it waited for a slot).
    fn run_ended_unstarted(&self, run: &RunRecord);
    /// Something failed that only the log tells (the log line is written by the runner).
    fn error(&self);
}

/// A run waiting for a run slot: only what is needed to start it. Its record and steps
/// stay in the store (it is durably `queued`) and are read when a slot frees, so that ten
/// thousand waiting runs cost their ids, not their expanded workflows.
#[derive(Debug)]
pub struct WaitingRun {
    flag: Arc<AtomicBool>,
    /// Not before this instant (a schedule's fire prepared ahead of its due instant).
    not_before: Option<SystemTime>,
}

/// A run about to execute in a slot it holds: its record and queued steps, its cancel flag.
#[derive(Debug)]
struct PendingRun {
    run: RunRecord,
    steps: Vec<StepRecord>,
    flag: Arc<AtomicBool>,
    /// Not before this instant (a schedule's fire prepared ahead of its due instant).
    not_before: Option<SystemTime>,
}

/// A run's record and its steps, read from the store.
type Loaded = (RunRecord, Vec<StepRecord>);

const SHUTDOWN_BEFORE_START: &str =
    "interrupted: the server shut down before the run started (it was waiting for a run slot, runs.max_active)";
const CANCELLED_WAITING: &str = "cancelled while it waited for a run slot (runs.max_active)";

/// The runs of this process: executing, or waiting for a run slot.
pub struct Runner {
    store: Arc<Store>,
    engine: EngineConfig,
    events: EventBus,
    view: Arc<View>,
    log_tail: Arc<LogTailer>,
    observer: Arc<dyn RunObserver>,
    /// Cancel flags of the runs handed over to this process: executing, or waiting for a
    /// run slot.
    active: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// The limit on runs executing at once (`runs.max_active`) and the runs waiting for a
    /// slot.
    slots: RunSlots<WaitingRun>,
    /// Set when shutting down: no new runs start.
    stopping: AtomicBool,
}

/// What a [`Runner`] is made of.
pub struct RunnerParts {
    /// The store (this process holds it).
    pub store: Arc<Store>,
    /// Where runs put their files, admission and the agent switches.
    pub engine: EngineConfig,
    /// Where run and step changes are published.
    pub events: EventBus,
    /// The objects in force: workflows runs are created from, agents steps run with.
    pub view: Arc<View>,
    /// `run_log` events of the runs executing.
    pub log_tail: Arc<LogTailer>,
    /// Who counts runs.
    pub observer: Arc<dyn RunObserver>,
    /// `runs.max_active`.
    pub max_active: usize,
}

impl Runner {
    /// A runner with no runs.
    pub fn new(parts: RunnerParts) -> Arc<Runner> {
        Arc::new(Runner {
            slots: RunSlots::new(parts.max_active),
            store: parts.store,
            engine: parts.engine,
            events: parts.events,
            view: parts.view,
            log_tail: parts.log_tail,
            observer: parts.observer,
            active: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        })
    }

    /// Where runs put their files, admission and the agent switches.
    pub fn engine(&self) -> &EngineConfig {
        &self.engine
    }

    /// The limit on runs executing at once and the runs waiting for a slot.
    pub fn slots(&self) -> &RunSlots<WaitingRun> {
        &self.slots
    }

    /// Whether the process is shutting down (no new runs start).
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The runs executing now (not those waiting for a run slot).
    pub fn active_run_ids(&self) -> Vec<String> {
        let waiting: std::collections::HashSet<String> =
            self.slots.waiting_ids().into_iter().collect();
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
        let mut ids: Vec<String> = self.active().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// How many runs wait for a run slot.
    pub fn waiting_runs(&self) -> usize {
        self.slots.waiting()
    }

    fn active(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicBool>>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks a run of this process to stop; false when it is not here. A run waiting for a
    /// slot ends `cancelled` at once (durably), without starting.
    pub fn cancel(&self, run_id: &str) -> bool {
        let flag = self.active().get(run_id).cloned();
        let Some(flag) = flag else {
            return false;
        };
        // Set first: a run leaving the queue right now sees it before it starts.
        flag.store(true, Ordering::SeqCst);
        if self.slots.remove(run_id).is_some() {
            self.end_unstarted(
                vec![(run_id.to_owned(), None)],
                Status::Cancelled,
                CANCELLED_WAITING,
            );
        }
        true
    }

    /// Creates a run and starts it; returns the queued run (blocking: call off the async
    /// threads).
    pub fn start_run(
        self: &Arc<Self>,
        request: &run::RunRequest,
    ) -> Result<RunRecord, EngineError> {
        self.refuse_when_stopping()?;
        let (run, steps) = run::create_run_in(&self.store, &self.view.objects().records, request)?;
        self.spawn(run.clone(), steps);
        Ok(run)
    }

    /// The run of a request made but not written ([`run::make_run`]): the caller writes it
    /// durably, with what goes along with it, then hands it to [`Runner::spawn`]. Refused
    /// once the process is stopping.
    pub fn make_run(
        &self,
        request: &run::RunRequest,
    ) -> Result<(RunRecord, Vec<StepRecord>), EngineError> {
        self.refuse_when_stopping()?;
        run::make_run(&self.store, &self.view.objects().records, request)
    }

    /// Creates a re-run of a finished run and starts it.
    pub fn start_rerun(
        self: &Arc<Self>,
        original: &RunRecord,
        from_failed: bool,
    ) -> Result<RunRecord, EngineError> {
        let (run, steps) = run::create_rerun(&self.store, original, from_failed)?;
        self.spawn(run.clone(), steps);
        Ok(run)
    }

    fn refuse_when_stopping(&self) -> Result<(), EngineError> {
        if self.is_stopping() {
            return Err(EngineError::Invalid(
                "the server is shutting down: no new runs start".into(),
            ));
        }
        Ok(())
    }

    /// Starts a created run: executes it under the limit on runs executing at once
    /// (`runs.max_active`) and its workflow's concurrency policy, publishing each durable
    /// change. Returns at once: with a slot free the run starts in a thread; otherwise it
    /// waits, `queued`, and starts in the order it came as slots free.
    pub fn spawn(self: &Arc<Self>, run: RunRecord, steps: Vec<StepRecord>) {
        self.spawn_at(run, steps, None);
    }

    /// [`Runner::spawn`] for a run that must not start before `not_before`: its thread is
    /// ready beforehand (the scheduler prepares a fire ahead of its due instant), so that at
    /// the instant only the run itself is left to do.
    pub fn spawn_at(
        self: &Arc<Self>,
        run: RunRecord,
        steps: Vec<StepRecord>,
        not_before: Option<SystemTime>,
    ) {
        let flag = Arc::new(AtomicBool::new(false));
        self.active().insert(run.id.clone(), Arc::clone(&flag));
        self.view.record_run(&run);
        let waiting = WaitingRun {
            flag: Arc::clone(&flag),
            not_before,
        };
        // Queued, the run keeps only its id and flag: the record and steps are dropped here
        // and read back from the store when its slot comes.
        if self.slots.enter(&run.id, waiting).is_some() {
            self.start_worker(PendingRun {
                run,
                steps,
                flag,
                not_before,
            });
        }
    }

    /// Starts, through the run slots and in creation order, the runs a process that ended
    /// left `queued`: runs created through the API, a webhook or a schedule that were
    /// waiting for a slot (or for their workflow's `queue` policy) when it stopped. Each was
    /// acknowledged, so it runs now, once: the scheduler sees these as live and does not
    /// start a pending fire's run again. A schedule's run prepared ahead of its due instant
    /// still waits for it. Call at start, after [`run::recover`] and before the scheduler
    /// runs; returns their ids.
    pub fn resume_queued(self: &Arc<Self>) -> Result<Vec<String>, StoreError> {
        let live: std::collections::HashSet<String> = self.live_run_ids().into_iter().collect();
        let mut resumed = Vec::new();
        for id in self.store.run_ids_with_status(&[Status::Queued])? {
            if live.contains(&id) {
                continue;
            }
            let Some(run) = self.store.run(&id)? else {
                continue;
            };
            if run.status != Status::Queued {
                continue;
            }
            let not_before = (run.trigger.kind == "schedule")
                .then(|| run.trigger.details.get("due").and_then(Value::as_str))
                .flatten()
                .and_then(|due| chrono::DateTime::parse_from_rfc3339(due).ok())
                .map(SystemTime::from)
                .filter(|due| *due > SystemTime::now());
            let steps = self.store.steps(&id)?;
            self.spawn_at(run, steps, not_before);
            resumed.push(id);
        }
        Ok(resumed)
    }

    /// Executes on the runs [`run::recover_or_resume`] resumed after a restart, each in a
    /// thread of its own at once: they were executing when the process that ended died, so
    /// each takes a run slot when one is free and runs beyond `runs.max_active` otherwise
    /// (the limit may have been lowered meanwhile). Returns their ids.
    pub fn resume_running(self: &Arc<Self>, resumed: Vec<run::Resumed>) -> Vec<String> {
        let mut ids = Vec::with_capacity(resumed.len());
        for resumed in resumed {
            let id = resumed.run.id.clone();
            let flag = Arc::new(AtomicBool::new(false));
            self.active().insert(id.clone(), Arc::clone(&flag));
            self.view.record_run(&resumed.run);
            let waiting = WaitingRun {
                flag: Arc::clone(&flag),
                not_before: None,
            };
            let holds_slot = self.slots.enter(&id, waiting).is_some();
            if !holds_slot {
                self.slots.remove(&id);
            }
            let worker = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("run worker".into())
                .spawn(move || {
                    worker.execute(Execution::Resumed(Box::new(resumed)), flag);
                    if holds_slot {
                        let mut next = worker.next_waiting();
                        while let Some(pending) = next.take() {
                            worker.execute_pending(pending);
                            next = worker.next_waiting();
                        }
                    }
                });
            if let Err(err) = spawned {
                // The run stays `running` in the store: the next start resumes it.
                tracing::error!(run = %id, "cannot start a thread for a resumed run: {err}");
                self.observer.error();
                self.active().remove(&id);
                if holds_slot {
                    if let Some(next) = self.next_waiting() {
                        self.start_worker(next);
                    }
                }
                continue;
            }
            ids.push(id);
        }
        ids
    }

    /// No new runs start from now on; every run waiting for a slot ends `interrupted`, in
    /// one durable batch. Runs executing go on (the caller cancels them after its grace).
    pub fn stop_starting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let waiting: Vec<(String, Option<Loaded>)> = self
            .slots
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
        self.end_unstarted(waiting, Status::Interrupted, SHUTDOWN_BEFORE_START);
    }

    /// A thread that executes `first` in the slot it holds, then each waiting run the slot
    /// is handed to as runs end, until none waits.
    fn start_worker(self: &Arc<Self>, first: PendingRun) {
        let worker = Arc::clone(self);
        // Kept to end the run if no thread can be had.
        let fallback = (first.run.clone(), first.steps.clone());
        let spawned = std::thread::Builder::new()
            .name("run worker".into())
            .spawn(move || {
                let mut next = Some(first);
                while let Some(pending) = next.take() {
                    worker.execute_pending(pending);
                    next = worker.next_waiting();
                }
            });
        if let Err(err) = spawned {
            tracing::error!("cannot start a thread for a run: {err}");
            self.observer.error();
            let message = format!("the server could not start a thread for this run: {err}");
            self.end_unstarted(
                vec![(fallback.0.id.clone(), Some(fallback))],
                Status::Failed,
                &message,
            );
            // The slot goes to the next waiting run, which tries again.
            if let Some(next) = self.next_waiting() {
                self.start_worker(next);
            }
        }
    }

    /// Gives back the slot of a run that ended; the first waiting run that is still wanted
    /// takes it, its record and steps read from the store. Runs cancelled while they
    /// waited, and every waiting run once the process is stopping, end here without
    /// starting.
    fn next_waiting(&self) -> Option<PendingRun> {
        loop {
            let (id, waiting) = self.slots.release()?;
            if self.is_stopping() {
                self.end_unstarted(vec![(id, None)], Status::Interrupted, SHUTDOWN_BEFORE_START);
                continue;
            }
            if waiting.flag.load(Ordering::SeqCst) {
                self.end_unstarted(vec![(id, None)], Status::Cancelled, CANCELLED_WAITING);
                continue;
            }
            match self.load_queued(&id) {
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
                    self.active().remove(&id);
                }
                Err(err) => {
                    tracing::error!(run = %id, "cannot read a waiting run to start it: {err}");
                    self.observer.error();
                    self.active().remove(&id);
                }
            }
        }
    }

    /// A waiting run's record and steps, when it is still `queued` in the store.
    fn load_queued(&self, id: &str) -> Result<Option<Loaded>, StoreError> {
        match self.store.run(id)? {
            Some(run) if run.status == Status::Queued => {
                let steps = self.store.steps(id)?;
                Ok(Some((run, steps)))
            }
            _ => Ok(None),
        }
    }

    /// Ends runs that never started (cancelled or interrupted while they waited for a
    /// slot): written in one durable batch, then each is reported complete. Each run comes
    /// by id, with its record and steps when they are at hand (read from the store
    /// otherwise).
    fn end_unstarted(&self, pending: Vec<(String, Option<Loaded>)>, status: Status, message: &str) {
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
                None => match self.load_queued(&id) {
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
            if let Err(err) = self.store.save_run(Some(&run), &records, false) {
                tracing::error!(run = %run.id, "cannot record that the run never started: {err}");
                failed = true;
            }
            ended.push(run);
        }
        if let Err(err) = self.store.save_run(None, &[], true) {
            tracing::error!("cannot record that runs never started: {err}");
            failed = true;
        }
        if failed {
            self.observer.error();
        }
        let mut active = self.active();
        for id in ended.iter().map(|run| &run.id).chain(&gone) {
            active.remove(id);
        }
        drop(active);
        for run in ended {
            self.observer.run_ended_unstarted(&run);
            self.view.record_run(&run);
            self.events
                .publish(Event::WorkflowCompleted(RunSummary::of(&run)));
        }
    }

    /// Executes a run that holds a slot, in the calling thread, to its end.
    fn execute_pending(&self, pending: PendingRun) {
        let PendingRun {
            run,
            steps,
            flag,
            not_before,
        } = pending;
        let mut ready = None;
        if let Some(at) = not_before {
            // Ready ahead of time: the workflow compiled and the log directory made (or, if
            // that fails, tried again and reported at the instant), then wait for the
            // instant itself.
            ready = run::ready_to_start(&self.engine, &run).ok();
            if let Ok(wait) = at.duration_since(SystemTime::now()) {
                std::thread::sleep(wait);
            }
        }
        self.execute(Execution::Created(Box::new(run), steps, ready), flag);
    }

    /// Executes a run in the calling thread to its end, publishing each durable change.
    fn execute(&self, execution: Execution, flag: Arc<AtomicBool>) {
        let id = match &execution {
            Execution::Created(run, ..) => run.id.clone(),
            Execution::Resumed(resumed) => resumed.run.id.clone(),
        };
        let events = self.events.clone();
        let run_dir = self.engine.log_dir.join("workflows").join(&id);
        self.log_tail.add(&id, run_dir);
        let on_event = |event: &EngineEvent| match event {
            EngineEvent::StepStarted { step } => {
                events.publish(Event::StepStarted(StepSummary::of(step)))
            }
            EngineEvent::StepFinished { step } => {
                events.publish(Event::StepCompleted(StepSummary::of(step)))
            }
            EngineEvent::StepRetrying { step, delay } => {
                events.publish(Event::StepRetrying(StepRetrying {
                    step: StepSummary::of(step),
                    retry_in_ms: delay.as_millis() as u64,
                }))
            }
        };
        // Only the agents: a long run does not keep a stale snapshot of every record.
        let agents = self.view.objects().agents.clone();
        let cancel = CancelSignal { flag };
        let result = match execution {
            Execution::Created(run, steps, ready) => {
                self.observer.run_started();
                events.publish(Event::WorkflowStarted(RunSummary::of(&run)));
                // Made ready now unless it was ahead of its instant.
                match ready.map_or_else(|| run::ready_to_start(&self.engine, &run), Ok) {
                    Ok(ready) => run::execute_ready(
                        &self.store,
                        &self.engine,
                        &agents,
                        *run,
                        steps,
                        ready,
                        &cancel,
                        &on_event,
                    ),
                    Err(err) => Err(err),
                }
            }
            // Started by the process that ended, and reported started then.
            Execution::Resumed(resumed) => run::execute_resumed(
                &self.store,
                &self.engine,
                &agents,
                *resumed,
                &cancel,
                &on_event,
            ),
        };
        // Every line is published before the run is reported complete.
        self.log_tail.finish(&id, &events);
        let result = result.and_then(|finished| {
            if self.is_stopping() && finished.status == Status::Cancelled {
                Ok(interrupted_by_shutdown(&self.store, finished)?)
            } else {
                Ok(finished)
            }
        });
        self.active().remove(&id);
        match result {
            Ok(left) if left.status == Status::Running => {
                // Left to its workers at shutdown (`EngineConfig::detach_remote`).
                self.view.record_run(&left);
            }
            Ok(finished) => {
                let steps = self.store.steps(&id).unwrap_or_default();
                self.observer.run_finished(&finished, &steps);
                self.view.record_run(&finished);
                events.publish(Event::WorkflowCompleted(RunSummary::of(&finished)));
            }
            Err(err) => {
                tracing::error!(run = %id, "run failed to execute: {err}");
                self.observer.error();
            }
        }
    }
}

/// A run to execute: created (its steps queued, made ready to start ahead of its instant
/// or not), or resumed after a restart.
enum Execution {
    Created(Box<RunRecord>, Vec<StepRecord>, Option<run::ReadyToStart>),
    Resumed(Box<run::Resumed>),
}

/// A run stopped because the process shut down is `interrupted`, not `cancelled`: nobody
/// asked for it to stop, and a re-run is what it needs.
fn interrupted_by_shutdown(store: &Store, mut run: RunRecord) -> Result<RunRecord, StoreError> {
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

/// A run as the API lists it (without the expanded workflow): [`RunSummary`] as JSON.
pub fn run_summary(run: &RunRecord) -> Value {
    serde_json::to_value(RunSummary::of(run)).unwrap_or(Value::Null)
}
