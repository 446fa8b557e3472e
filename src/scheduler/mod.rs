//! Cron schedules: each live Schedule object fires its workflow at its due instants.
//!
//! - **A timer per due time.** The scheduler sleeps until the earliest due instant of all
//!   schedules (a tokio timer, millisecond resolution), not on a polling tick; a reconcile
//!   wakes it to re-plan.
//! - **Prepared ahead, released on time.** [`LEAD`] before a due instant the fire is made:
//!   recorded, its run created, the run's thread started, its workflow compiled and its log
//!   directory made, and the thread parked. At the instant the thread wakes by its own
//!   timer and only the run itself is left to do: no store write of the fire, no workflow
//!   expansion or compilation, no directory or thread creation at the due instant.
//! - **Recorded before it runs.** A fire is written durably (the due instant fired and the
//!   next one, with a `pending` mark) before its run is created, and the run carries the
//!   schedule and the due instant in its trigger. After a crash, a pending fire is settled
//!   once: the run is looked up by its trigger first; a fire without a run gets one, and a
//!   run created but never started (the crash came between) is started, so nothing is lost
//!   and nothing repeats.
//! - **Missed fires** (the server was down, or the schedule was suspended meanwhile) follow
//!   `catchup`: `none` skips them, `last` runs the latest one, `all` runs each (at most
//!   [`MAX_CATCHUP`]); any older than `starting_deadline` are skipped.
//! - **`concurrency_policy`** between the runs one schedule starts: `allow`, `forbid` (a fire
//!   while the previous run is active is skipped and counted), `replace` (the previous run is
//!   cancelled).
//!
//! [`plan`] is the pure core — state, spec and the current instant in, what to do out — and
//! is tested with an injected clock; [`run`] drives it on the server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::engine::run::{self, RunRequest};
use crate::events::{Event, EventKind};
use crate::manifest::Kind;
use crate::model::{RunHead, RunRecord, Trigger};
use crate::store::{ObjectRecord, Store, StoreError};

/// The state tree of schedules in the store.
pub const STATE_TREE: &str = "schedules";
/// The most missed fires `catchup: all` runs at once.
pub const MAX_CATCHUP: usize = 100;
/// How long before its due instant a fire is prepared (recorded, its run created and its
/// thread waiting for the instant).
pub const LEAD: Duration = Duration::from_millis(200);
/// How many upcoming fire instants `GET /api/scheduler/jobs` lists (`next_fires`).
pub const NEXT_FIRES: usize = 5;

/// Held while the state tree is read, changed and written back (by a scheduler pass, a
/// pause or a resume), so that none of them undoes another's write. One per process that
/// holds the store: the server's app state keeps it for the scheduler and the API.
#[derive(Debug, Default)]
pub struct StateLock(std::sync::Mutex<()>);

impl StateLock {
    fn hold(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub use crate::spec::schedule::{Catchup, Overlap, ScheduleSpec};

pub use crate::reconcile::view::schedule_spec;

/// What the store remembers of a schedule between fires and across restarts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The expression and zone the due times were computed for.
    pub timing: String,
    /// The next instant it is due.
    pub next_due: Option<DateTime<Utc>>,
    /// The last due instant fired.
    pub last_fired: Option<DateTime<Utc>>,
    /// The run of the last fire that started one.
    pub last_run: Option<String>,
    /// The last fire is recorded but its run not yet created (set durably before the run
    /// starts; a restart that finds it set starts that run, unless it exists already).
    #[serde(default)]
    pub pending: bool,
    /// While `pending`: each due instant recorded whose run may not exist yet. A pass that
    /// catches up fires several at once (`last_fired` is only the latest), so a restart
    /// settles each of them, not the latest alone. Empty in a record written before it
    /// existed: then `last_fired` is the one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_fires: Vec<DateTime<Utc>>,
    /// Fires that started a run.
    pub fires: u64,
    /// Fires skipped (missed beyond catch-up, or forbidden by the concurrency policy).
    pub skipped: u64,
    /// Why the last skip happened.
    pub last_skip: Option<String>,
    /// Paused at run time (`POST /api/scheduler/jobs/{id}/pause`, `schedule pause`): it
    /// fires nothing until resumed, whatever its manifest says. Kept across restarts.
    #[serde(default)]
    pub paused: bool,
    /// When it was paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_at: Option<DateTime<Utc>>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// Due instants to fire now, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Missed due instants skipped.
    pub skipped: u64,
    /// The next instant to wake for.
    pub next_due: Option<DateTime<Utc>>,
}

/// Decides, at `now`, which due instants of a schedule fire and when it is next due. Pure.
pub fn plan(spec: &ScheduleSpec, state: Option<&ScheduleState>, now: DateTime<Utc>) -> Plan {
    plan_ahead(spec, state, now, Duration::ZERO)
}

/// [`plan`], with the due instants up to `lead` after `now` fired too (prepared ahead, they
/// are released at their instants). Whether a fire is late (missed, past its starting
/// deadline) is still judged at `now`. Pure.
pub fn plan_ahead(
    spec: &ScheduleSpec,
    state: Option<&ScheduleState>,
    now: DateTime<Utc>,
    lead: Duration,
) -> Plan {
    let horizon = now + chrono::TimeDelta::from_std(lead).unwrap_or_default();
    let fresh = || spec.cron.next_fire(now, spec.zone);
    let Some(state) = state.filter(|s| s.timing == spec.timing) else {
        // New, or its timing changed: the next instant after now.
        return Plan {
            next_due: fresh(),
            ..Plan::default()
        };
    };
    if spec.suspend || state.paused {
        // Suspended or paused: nothing fires, and nothing accumulates for later.
        return Plan {
            next_due: fresh(),
            ..Plan::default()
        };
    }
    let Some(mut due) = state.next_due else {
        return Plan {
            next_due: fresh(),
            ..Plan::default()
        };
    };
    if due > horizon {
        return Plan {
            next_due: Some(due),
            ..Plan::default()
        };
    }
    // Every due instant up to the horizon, bounded.
    let mut missed = Vec::new();
    let mut count = 0u64;
    while due <= horizon {
        count += 1;
        if missed.len() == MAX_CATCHUP {
            missed.remove(0);
        }
        missed.push(due);
        match spec.cron.next_fire(due, spec.zone) {
            Some(next) => due = next,
            None => break,
        }
    }
    let next_due = (due > horizon).then_some(due).or_else(fresh);
    // The most recent one is due now, not missed: it fires on time whatever `catchup` says.
    let latest = missed.pop();
    let in_deadline = |at: &DateTime<Utc>| {
        spec.starting_deadline.is_none_or(|deadline| {
            // Not yet due (prepared ahead): not late at all.
            now.signed_duration_since(*at)
                .to_std()
                .map_or(true, |late| late <= deadline)
        })
    };
    let mut fire: Vec<DateTime<Utc>> = match spec.catchup {
        Catchup::All => missed.into_iter().filter(|at| in_deadline(at)).collect(),
        Catchup::Last | Catchup::None => Vec::new(),
    };
    if let Some(latest) = latest {
        // On time means within a second; later, it is a missed fire like the others and
        // `catchup: none` skips it.
        let on_time = now.signed_duration_since(latest) <= chrono::TimeDelta::seconds(1);
        if (on_time || spec.catchup != Catchup::None) && in_deadline(&latest) {
            fire.push(latest);
        }
    }
    Plan {
        skipped: count - fire.len() as u64,
        fire,
        next_due,
    }
}

/// The schedules' runtime records, by schedule id.
pub fn states(store: &Store) -> Result<BTreeMap<String, ScheduleState>, StoreError> {
    Ok(store.states(STATE_TREE, "")?.into_iter().collect())
}

/// Schedules as `GET /api/scheduler/jobs` and `schedule list` show them: the manifest's
/// fields, the next fire, the last fire and the state of its run.
pub fn jobs_json(
    objects: &BTreeMap<crate::store::ObjectKey, ObjectRecord>,
    states: &BTreeMap<String, ScheduleState>,
    run_status: impl Fn(&str) -> Option<String>,
    default_zone: &str,
) -> Vec<Value> {
    objects
        .values()
        .filter(|r| r.key.kind == Kind::Schedule && r.is_live())
        .map(|record| {
            let spec = record.spec.clone().unwrap_or_default();
            let parsed = schedule_spec(record, default_zone);
            let state = states.get(&record.key.id);
            let paused = state.is_some_and(|s| s.paused);
            let next = match (&parsed, state) {
                _ if paused => None,
                (Ok(parsed), Some(state)) if state.timing == parsed.timing && !parsed.suspend => {
                    state.next_due
                }
                (Ok(parsed), _) if !parsed.suspend => {
                    parsed.cron.next_fire(Utc::now(), parsed.zone)
                }
                _ => None,
            };
            // The next few instants from the next one on, in UTC.
            let mut next_fires: Vec<String> = Vec::new();
            if let (Ok(parsed), Some(first)) = (&parsed, next) {
                let mut at = Some(first);
                while let Some(instant) = at.filter(|_| next_fires.len() < NEXT_FIRES) {
                    next_fires.push(instant.to_rfc3339());
                    at = parsed.cron.next_fire(instant, parsed.zone);
                }
            }
            let zone = parsed.as_ref().map(|p| p.zone);
            let local = |at: DateTime<Utc>| match zone {
                Ok(zone) => at.with_timezone(&zone).to_rfc3339(),
                Err(_) => at.to_rfc3339(),
            };
            let last_run = state.and_then(|s| s.last_run.clone());
            json!({
                "id": record.key.id,
                "name": record.name,
                "schedule": spec.get("cron").or_else(|| spec.get("schedule")).cloned().unwrap_or(Value::Null),
                "timezone": spec.get("timezone").and_then(Value::as_str).unwrap_or(default_zone),
                "workflow_id": spec.get("workflow").cloned().unwrap_or(Value::Null),
                "parameters": spec.get("parameters").cloned().unwrap_or(json!({})),
                "suspend": spec.get("suspend").cloned().unwrap_or(Value::from(false)),
                "paused": paused,
                "paused_at": state.and_then(|s| s.paused_at).map(|at| at.to_rfc3339()),
                "concurrency_policy": spec.get("concurrency_policy").cloned().unwrap_or(Value::from("allow")),
                "catchup": spec.get("catchup").cloned().unwrap_or(Value::from("none")),
                "status": record.status,
                "next_fire": next.map(local),
                "next_fires": next_fires,
                "last_fired": state.and_then(|s| s.last_fired).map(local),
                "last_run": last_run.as_ref().map(|id| json!({"id": id, "status": run_status(id)})),
                "fires": state.map_or(0, |s| s.fires),
                "skipped": state.map_or(0, |s| s.skipped),
                "last_skip": state.and_then(|s| s.last_skip.clone()),
            })
        })
        .collect()
}

/// Why a schedule could not be paused or resumed.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// No live schedule has that id or name.
    #[error("no schedule `{given}`{hint} (GET /api/scheduler/jobs lists them)")]
    NotFound {
        /// The id or name asked for.
        given: String,
        /// `; did you mean ...?`, or empty.
        hint: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pauses (`paused: true`) or resumes a live schedule, found by id or name, and records it
/// durably in its state. A paused schedule fires nothing until resumed (its manifest's
/// `suspend: true` still holds it whatever this says); on resume it is next due at its
/// expression's first instant after now: what was missed while paused is not caught up.
/// Returns the schedule's id. Blocking.
pub fn set_paused(
    store: &Store,
    lock: &StateLock,
    objects: &BTreeMap<crate::store::ObjectKey, ObjectRecord>,
    given: &str,
    paused: bool,
    default_zone: &str,
) -> Result<String, PauseError> {
    let live = || {
        objects
            .values()
            .filter(|r| r.key.kind == Kind::Schedule && r.is_live())
    };
    let Some(record) = live()
        .find(|r| r.key.id == given)
        .or_else(|| live().find(|r| r.name == given))
    else {
        let ids: Vec<String> = live().map(|r| r.key.id.clone()).collect();
        let hint = crate::util::did_you_mean(given, ids.iter().map(String::as_str))
            .map(|s| format!("; did you mean `{s}`?"))
            .unwrap_or_default();
        return Err(PauseError::NotFound {
            given: given.to_owned(),
            hint,
        });
    };
    let id = record.key.id.clone();
    let _guard = lock.hold();
    let mut state: ScheduleState = store.state(STATE_TREE, &id)?.unwrap_or_default();
    if state.paused == paused {
        return Ok(id);
    }
    state.paused = paused;
    if paused {
        state.paused_at = Some(Utc::now());
    } else {
        state.paused_at = None;
        if let Ok(spec) = schedule_spec(record, default_zone) {
            if state.timing == spec.timing {
                state.next_due = spec.cron.next_fire(Utc::now(), spec.zone);
            }
        }
    }
    store.put_state(STATE_TREE, &id, &state, true)?;
    Ok(id)
}

/// The run a fire created, if it got that far: found by its trigger among the runs created
/// since the fire could be made (a [`LEAD`] before its due instant, with a minute's margin).
fn run_of_fire(store: &Store, schedule: &str, due: DateTime<Utc>) -> Option<RunHead> {
    let since = std::time::SystemTime::from(due) - LEAD - Duration::from_secs(60);
    let from = crate::engine::run::first_run_id_at(since);
    let due = due.to_rfc3339();
    store.runs_from(&from).ok()?.into_iter().rev().find(|run| {
        run.trigger.kind == "schedule"
            && run.trigger.details.get("schedule").and_then(Value::as_str) == Some(schedule)
            && run.trigger.details.get("due").and_then(Value::as_str) == Some(due.as_str())
    })
}

/// One schedule's fire: the run request for a due instant.
fn request(spec: &ScheduleSpec, due: DateTime<Utc>) -> RunRequest {
    let mut details = Map::new();
    details.insert("schedule".into(), Value::from(spec.id.clone()));
    details.insert("name".into(), Value::from(spec.name.clone()));
    details.insert("due".into(), Value::from(due.to_rfc3339()));
    RunRequest {
        workflow: spec.workflow.clone(),
        parameters: spec.parameters.clone(),
        trigger: Trigger {
            kind: "schedule".into(),
            details,
        },
    }
}

/// What the scheduler works with: the schedules in force, the store of their states, the
/// runner its fires start runs in, and where fires are published.
pub struct Scheduling {
    /// The store: schedule states and the runs of fires.
    pub store: Arc<crate::store::Store>,
    /// The objects in force (Schedules and the workflows they run).
    pub view: Arc<crate::reconcile::view::View>,
    /// Where fires and skips are published, and whence reconciles are heard.
    pub events: crate::events::EventBus,
    /// Starts, cancels and lists the runs of this process.
    pub runner: Arc<crate::engine::runner::Runner>,
    /// Held while the state tree is read, changed and written back (shared with the API's
    /// pause and resume).
    pub schedule_lock: Arc<StateLock>,
}

/// Fires what is due for every live schedule by `now` + [`LEAD`] and returns the next due
/// instant. A fire due within the lead is prepared now and its run released at the due
/// instant; this returns once every fire it made is due. Blocking: call off the async
/// threads.
pub fn tick(
    shared: &Arc<Scheduling>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let objects = shared.view.objects();
    // Until the changes are written: a pause or resume meanwhile would be undone.
    let guard = shared.schedule_lock.hold();
    let mut states = states(&shared.store)?;
    let mut earliest: Option<DateTime<Utc>> = None;
    let mut fires: Vec<(ScheduleSpec, DateTime<Utc>)> = Vec::new();
    // Runs of pending fires created by a process that stopped before starting them.
    let mut unstarted: Vec<RunRecord> = Vec::new();
    let mut changed: Vec<(String, ScheduleState)> = Vec::new();
    for (id, compiled) in &objects.schedules {
        let spec = match compiled {
            Ok(spec) => spec.clone(),
            Err(err) => {
                tracing::warn!(schedule = %id, "cannot schedule: {err}");
                continue;
            }
        };
        let mut state = states.remove(&spec.id).unwrap_or_default();
        // Compared with at the end: what changed (a pending fire settled here too) is written.
        let before = state.clone();
        // Fires recorded by a process that stopped before their runs were created.
        if let (true, Some(last)) = (state.pending, state.last_fired) {
            let recorded = if state.pending_fires.is_empty() {
                vec![last]
            } else {
                std::mem::take(&mut state.pending_fires)
            };
            for due in recorded {
                match run_of_fire(&shared.store, &spec.id, due) {
                    Some(run) => {
                        state.last_run = Some(run.id.clone());
                        let live = shared.runner.live_run_ids().contains(&run.id);
                        if run.status == crate::model::Status::Queued && !live {
                            // Created but never started: it starts now, and the fire stays
                            // pending until a later pass finds the run under way or over.
                            // The whole record (with its workflow) of the one to start.
                            if let Ok(Some(run)) = shared.store.run(&run.id) {
                                unstarted.push(run);
                            }
                            state.pending_fires.push(due);
                        }
                    }
                    None => {
                        fires.push((spec.clone(), due));
                        state.pending_fires.push(due);
                    }
                }
            }
            state.pending = !state.pending_fires.is_empty();
        }
        let planned = plan_ahead(
            &spec,
            Some(&state).filter(|s| !s.timing.is_empty()),
            now,
            LEAD,
        );
        state.timing = spec.timing.clone();
        state.next_due = planned.next_due;
        if planned.skipped > 0 {
            state.skipped += planned.skipped;
            state.last_skip = Some(format!(
                "{} missed fire(s) skipped (catchup: {:?}, starting_deadline)",
                planned.skipped, spec.catchup
            ));
        }
        for due in &planned.fire {
            state.last_fired = Some(*due);
            state.pending = true;
            state.pending_fires.push(*due);
            fires.push((spec.clone(), *due));
        }
        if state != before {
            changed.push((spec.id.clone(), state));
        }
        if let Some(next) = planned.next_due {
            earliest = Some(earliest.map_or(next, |e| e.min(next)));
        }
    }
    // Durable before any run starts: one batch and one flush for every schedule that changed.
    if !changed.is_empty() {
        shared.store.put_states(STATE_TREE, &changed, true)?;
    }
    drop(guard);
    for run in unstarted {
        match shared.store.steps(&run.id) {
            Ok(steps) => {
                tracing::warn!(run = %run.id, "starting the run of a fire that a process which ended had created but not started");
                shared.runner.spawn(run, steps);
            }
            Err(err) => {
                tracing::error!(run = %run.id, "cannot read the steps of a fire's run: {err}")
            }
        }
    }
    let started = start_fires(shared, &objects.records, &fires);
    // Released by their own timers at their due instants; the fires are told and linked
    // once the last of them is due.
    if let Some(wait) = fires
        .iter()
        .map(|(_, due)| *due)
        .max()
        .and_then(|last| last.signed_duration_since(Utc::now()).to_std().ok())
    {
        std::thread::sleep(wait);
    }
    let mut settled: BTreeMap<String, ScheduleState> = BTreeMap::new();
    // Read afresh under the lock: a pause or resume since the first write is kept.
    let guard = shared.schedule_lock.hold();
    for (id, due, result) in started {
        let state = match settled.entry(id.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(shared.store.state(STATE_TREE, &id)?.unwrap_or_default())
            }
        };
        match &result {
            Ok(run) => {
                state.fires += 1;
                state.last_run = Some(run.clone());
            }
            Err(reason) => {
                state.skipped += 1;
                state.last_skip = Some(reason.clone());
            }
        }
        state.pending_fires.retain(|pending| *pending != due);
        if state.pending_fires.is_empty() {
            state.pending = false;
        }
        let lateness = Utc::now().signed_duration_since(due).num_milliseconds();
        shared
            .events
            .publish(Event::ScheduleFired(crate::events::ScheduleFired {
                schedule: id.clone(),
                due: due.to_rfc3339(),
                lateness_ms: lateness,
                run_id: result.as_ref().ok().cloned(),
                skipped: result.as_ref().err().cloned(),
            }));
    }
    if !settled.is_empty() {
        // The runs are durable already (created in one batch): this only links them.
        let records: Vec<(String, ScheduleState)> = settled.into_iter().collect();
        shared.store.put_states(STATE_TREE, &records, false)?;
    }
    drop(guard);
    Ok(earliest)
}

/// Starts the runs of the fires, as each schedule's concurrency policy allows: the runs are
/// created in one durable batch, then each is handed over to start at its due instant. For
/// each fire, the run id or why no run started.
fn start_fires(
    shared: &Arc<Scheduling>,
    objects: &BTreeMap<crate::store::ObjectKey, ObjectRecord>,
    fires: &[(ScheduleSpec, DateTime<Utc>)],
) -> Vec<(String, DateTime<Utc>, Result<String, String>)> {
    let active = shared.runner.live_run_ids();
    let mut outcomes: Vec<(String, DateTime<Utc>, Result<String, String>)> = Vec::new();
    let mut requests: Vec<(usize, RunRequest)> = Vec::new();
    // Per schedule: its last run, and whether one of this batch's fires started a run.
    let mut previous: BTreeMap<String, (Option<String>, bool)> = BTreeMap::new();
    for (spec, due) in fires {
        let entry = previous.entry(spec.id.clone()).or_insert_with(|| {
            let state: Option<ScheduleState> =
                shared.store.state(STATE_TREE, &spec.id).ok().flatten();
            (state.and_then(|s| s.last_run), false)
        });
        let running = entry.1
            || entry
                .0
                .as_ref()
                .is_some_and(|id| active.iter().any(|a| a == id));
        match (spec.overlap, running) {
            (Overlap::Forbid, true) => {
                outcomes.push((
                    spec.id.clone(),
                    *due,
                    Err(format!(
                        "skipped the fire due {}: the previous run of this schedule is still active (concurrency_policy: forbid)",
                        due.to_rfc3339()
                    )),
                ));
                continue;
            }
            (Overlap::Replace, true) => {
                if let Some(id) = &entry.0 {
                    shared.runner.cancel(id);
                }
            }
            _ => {}
        }
        entry.1 = true;
        outcomes.push((spec.id.clone(), *due, Err(String::new())));
        requests.push((outcomes.len() - 1, request(spec, *due)));
    }
    let batch: Vec<RunRequest> = requests.iter().map(|(_, r)| r.clone()).collect();
    let created = match run::create_runs_in(&shared.store, objects, &batch) {
        Ok(created) => created,
        Err(err) => {
            for (index, _) in &requests {
                outcomes[*index].2 = Err(format!("the store failed: {err}"));
            }
            return outcomes;
        }
    };
    for ((index, _), result) in requests.iter().zip(created) {
        let due = outcomes[*index].1;
        outcomes[*index].2 = match result {
            Ok((run, steps)) => {
                let id = run.id.clone();
                shared.runner.spawn_at(run, steps, Some(due.into()));
                Ok(id)
            }
            Err(err) => Err(format!(
                "the fire due {} started no run: {err}",
                due.to_rfc3339()
            )),
        };
    }
    outcomes
}

/// Drives the schedules until `stop` resolves: sleeps until the earliest due instant, or
/// until a reconcile changes the objects.
pub async fn run(shared: Arc<Scheduling>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut events = shared.events.subscribe();
    loop {
        let ticked = {
            let shared = Arc::clone(&shared);
            tokio::task::spawn_blocking(move || tick(&shared, Utc::now())).await
        };
        let next = match ticked {
            Ok(Ok(next)) => next,
            Ok(Err(err)) => {
                tracing::error!("the scheduler could not record its state: {err}");
                Some(Utc::now() + chrono::TimeDelta::seconds(1))
            }
            Err(err) => {
                tracing::error!("the scheduler failed: {err}");
                Some(Utc::now() + chrono::TimeDelta::seconds(1))
            }
        };
        // Woken the lead before the due instant, to prepare its fires.
        let sleep = next
            .and_then(|at| at.signed_duration_since(Utc::now()).to_std().ok())
            .map_or(Duration::ZERO, |left| left.saturating_sub(LEAD));
        let timer = tokio::time::sleep(if next.is_some() {
            sleep
        } else {
            Duration::from_secs(3600)
        });
        tokio::pin!(timer);
        loop {
            tokio::select! {
                _ = &mut timer => break,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
                event = events.recv() => match event {
                    Ok(event) if event.kind == EventKind::SyncCompleted => break,
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cron::CronSchedule;

    fn spec(cron: &str, catchup: Catchup, deadline: Option<u64>) -> ScheduleSpec {
        ScheduleSpec {
            id: "sch_t".into(),
            name: "t".into(),
            cron: CronSchedule::parse(cron).unwrap(),
            zone: chrono_tz::UTC,
            workflow: "wf".into(),
            parameters: Map::new(),
            overlap: Overlap::Allow,
            catchup,
            starting_deadline: deadline.map(Duration::from_secs),
            suspend: false,
            timing: format!("{cron} UTC"),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn state(spec: &ScheduleSpec, next_due: &str) -> ScheduleState {
        ScheduleState {
            timing: spec.timing.clone(),
            next_due: Some(at(next_due)),
            ..ScheduleState::default()
        }
    }

    #[test]
    fn a_new_schedule_waits_for_its_first_due_instant() {
        let spec = spec("0 2 * * *", Catchup::None, None);
        let planned = plan(&spec, None, at("2026-05-01T10:00:00Z"));
        assert!(planned.fire.is_empty());
        assert_eq!(planned.next_due, Some(at("2026-05-02T02:00:00Z")));
    }

    #[test]
    fn a_due_instant_fires_once_and_moves_on() {
        let spec = spec("*/15 * * * *", Catchup::None, None);
        let state = state(&spec, "2026-05-01T10:15:00Z");
        let planned = plan(&spec, Some(&state), at("2026-05-01T10:15:00.004Z"));
        assert_eq!(planned.fire, vec![at("2026-05-01T10:15:00Z")]);
        assert_eq!(planned.skipped, 0);
        assert_eq!(planned.next_due, Some(at("2026-05-01T10:30:00Z")));
        // Not yet due: nothing.
        let early = plan(&spec, Some(&state), at("2026-05-01T10:14:59Z"));
        assert!(early.fire.is_empty());
        assert_eq!(early.next_due, Some(at("2026-05-01T10:15:00Z")));
    }

    #[test]
    fn a_fire_within_the_lead_is_planned_ahead_and_lateness_is_judged_at_now() {
        let spec = spec("*/15 * * * *", Catchup::None, None);
        let state = state(&spec, "2026-05-01T10:15:00Z");
        let lead = Duration::from_millis(200);
        // 150 ms early: within the lead, it is planned now.
        let ahead = plan_ahead(&spec, Some(&state), at("2026-05-01T10:14:59.850Z"), lead);
        assert_eq!(ahead.fire, vec![at("2026-05-01T10:15:00Z")]);
        assert_eq!(ahead.next_due, Some(at("2026-05-01T10:30:00Z")));
        // 300 ms early: not yet.
        let early = plan_ahead(&spec, Some(&state), at("2026-05-01T10:14:59.700Z"), lead);
        assert!(early.fire.is_empty());
        assert_eq!(early.next_due, Some(at("2026-05-01T10:15:00Z")));
        // 900 ms late is still on time (within a second of now, not of now + lead).
        let late = plan_ahead(&spec, Some(&state), at("2026-05-01T10:15:00.900Z"), lead);
        assert_eq!(late.fire, vec![at("2026-05-01T10:15:00Z")]);
        // Two seconds late under `catchup: none`: missed, skipped.
        let missed = plan_ahead(&spec, Some(&state), at("2026-05-01T10:15:02Z"), lead);
        assert!(missed.fire.is_empty());
        assert_eq!(missed.skipped, 1);
        // A starting deadline does not refuse a fire that is not due yet.
        let bounded = ScheduleSpec {
            starting_deadline: Some(Duration::from_secs(1)),
            ..spec.clone()
        };
        let ahead = plan_ahead(&bounded, Some(&state), at("2026-05-01T10:14:59.850Z"), lead);
        assert_eq!(ahead.fire, vec![at("2026-05-01T10:15:00Z")]);
    }

    #[test]
    fn missed_fires_follow_catchup() {
        // Down from 10:00 to 11:10: 10:15, 10:30, 10:45, 11:00 were missed.
        let now = at("2026-05-01T11:10:00Z");
        let none = spec("*/15 * * * *", Catchup::None, None);
        let planned = plan(&none, Some(&state(&none, "2026-05-01T10:15:00Z")), now);
        assert!(planned.fire.is_empty());
        assert_eq!(planned.skipped, 4);
        assert_eq!(planned.next_due, Some(at("2026-05-01T11:15:00Z")));

        let last = spec("*/15 * * * *", Catchup::Last, None);
        let planned = plan(&last, Some(&state(&last, "2026-05-01T10:15:00Z")), now);
        assert_eq!(planned.fire, vec![at("2026-05-01T11:00:00Z")]);
        assert_eq!(planned.skipped, 3);

        let all = spec("*/15 * * * *", Catchup::All, None);
        let planned = plan(&all, Some(&state(&all, "2026-05-01T10:15:00Z")), now);
        assert_eq!(
            planned.fire,
            vec![
                at("2026-05-01T10:15:00Z"),
                at("2026-05-01T10:30:00Z"),
                at("2026-05-01T10:45:00Z"),
                at("2026-05-01T11:00:00Z")
            ]
        );
        assert_eq!(planned.skipped, 0);

        // With a 30-minute starting deadline, only 10:45 and 11:00 are still worth running.
        let bounded = spec("*/15 * * * *", Catchup::All, Some(30 * 60));
        let planned = plan(
            &bounded,
            Some(&state(&bounded, "2026-05-01T10:15:00Z")),
            now,
        );
        assert_eq!(
            planned.fire,
            vec![at("2026-05-01T10:45:00Z"), at("2026-05-01T11:00:00Z")]
        );
        assert_eq!(planned.skipped, 2);
    }

    #[test]
    fn a_changed_expression_or_a_suspension_plans_afresh() {
        let before = spec("*/15 * * * *", Catchup::All, None);
        let old = state(&before, "2026-05-01T10:15:00Z");
        let now = at("2026-05-01T11:10:00Z");
        let after = spec("0 * * * *", Catchup::All, None);
        let planned = plan(&after, Some(&old), now);
        assert!(
            planned.fire.is_empty(),
            "no catch-up of another expression's fires"
        );
        assert_eq!(planned.next_due, Some(at("2026-05-01T12:00:00Z")));
        let mut suspended = before.clone();
        suspended.suspend = true;
        let planned = plan(&suspended, Some(&old), now);
        assert!(planned.fire.is_empty());
        assert_eq!(planned.next_due, Some(at("2026-05-01T11:15:00Z")));
    }

    #[test]
    fn catchup_all_is_bounded() {
        let all = spec("* * * * * *", Catchup::All, None);
        let planned = plan(
            &all,
            Some(&state(&all, "2026-05-01T10:00:00Z")),
            at("2026-05-01T11:00:00Z"),
        );
        assert_eq!(planned.fire.len(), MAX_CATCHUP);
        assert_eq!(planned.fire.last(), Some(&at("2026-05-01T11:00:00Z")));
        assert_eq!(planned.skipped, 3601 - MAX_CATCHUP as u64);
    }

    #[test]
    fn a_paused_schedule_fires_nothing_and_catches_nothing_up() {
        let all = spec("*/15 * * * *", Catchup::All, None);
        let mut paused = state(&all, "2026-05-01T10:15:00Z");
        paused.paused = true;
        let planned = plan(&all, Some(&paused), at("2026-05-01T11:10:00Z"));
        assert!(planned.fire.is_empty(), "{planned:?}");
        assert_eq!(planned.skipped, 0);
        assert_eq!(planned.next_due, Some(at("2026-05-01T11:15:00Z")));
    }

    #[test]
    fn fall_back_and_spring_forward_follow_the_expression_in_its_zone() {
        let mut daily = spec("30 2 * * *", Catchup::None, None);
        daily.zone = chrono_tz::Europe::Berlin;
        daily.timing = "30 2 * * * Europe/Berlin".into();
        // 2026-03-29: 02:00 → 03:00 in Berlin; the 02:30 job runs once, right after the gap.
        let planned = plan(&daily, None, at("2026-03-28T12:00:00Z"));
        let due = planned.next_due.unwrap();
        assert_eq!(
            due.with_timezone(&chrono_tz::Europe::Berlin).to_rfc3339(),
            "2026-03-29T03:00:00+02:00"
        );
    }
}
