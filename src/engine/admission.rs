//! What decides, inside one process, whether a run may start and whether an agent takes
//! work: a workflow's `concurrency` policy for runs of the same workflow, and agents switched
//! off and on while the process runs.
//!
//! Policies (`concurrency` in a workflow; `allow` when absent):
//! - `allow`: runs of the workflow run side by side;
//! - `forbid`: a new run while one is active does not start; it ends `skipped`;
//! - `replace`: the active runs are cancelled, and the new one starts once they have stopped;
//! - `queue`: the new run waits, `queued`, until the runs before it have finished; queued runs
//!   start in the order they were created.
//!
//! Only one process opens a data directory, so this registry sees every active run of it.
//!
//! Over all workflows, [`RunSlots`] bounds the runs a server executes at once
//! (`runs.max_active`): a run beyond the limit waits, without a thread of its own, and takes
//! the slot of a run that ends, in the order the runs were handed over. A run takes its slot
//! before its workflow's policy is applied.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A workflow's `concurrency` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Runs side by side.
    #[default]
    Allow,
    /// A new run is skipped while one is active.
    Forbid,
    /// Active runs are cancelled for the new one.
    Replace,
    /// A new run waits for the active ones.
    Queue,
}

impl Policy {
    /// The policy a workflow declares (`allow` when it declares none).
    pub fn of(workflow: &serde_json::Value) -> Policy {
        match workflow.get("concurrency").and_then(|v| v.as_str()) {
            Some("forbid") => Policy::Forbid,
            Some("replace") => Policy::Replace,
            Some("queue") => Policy::Queue,
            _ => Policy::Allow,
        }
    }
}

/// Why a run did not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `forbid`, and another run was active.
    Forbidden {
        /// The active run.
        active: String,
    },
    /// Cancelled while it waited for its turn.
    Cancelled,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Forbidden { active } => write!(
                f,
                "skipped: run {active} of this workflow is still active (concurrency: forbid)"
            ),
            Refusal::Cancelled => f.write_str("cancelled while it waited for its turn"),
        }
    }
}

#[derive(Debug, Default)]
struct Workflows {
    /// Active runs per workflow, with their cancel flags.
    active: HashMap<String, Vec<(String, Arc<AtomicBool>)>>,
    /// Runs waiting per workflow (queue and replace), by run id: ids sort by creation.
    waiting: HashMap<String, BTreeSet<String>>,
}

/// The runs active in this process, per workflow.
#[derive(Debug, Default)]
pub struct RunAdmission {
    state: Mutex<Workflows>,
    changed: Condvar,
}

/// Held while a run is active; dropping it lets waiting runs go.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<RunAdmission>,
    workflow: String,
    run: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        if let Some(runs) = state.active.get_mut(&self.workflow) {
            runs.retain(|(id, _)| *id != self.run);
            if runs.is_empty() {
                state.active.remove(&self.workflow);
            }
        }
        drop(state);
        self.admission.changed.notify_all();
    }
}

impl RunAdmission {
    /// An empty registry.
    pub fn new() -> Arc<RunAdmission> {
        Arc::new(RunAdmission::default())
    }

    fn lock(&self) -> MutexGuard<'_, Workflows> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides whether run `run` of `workflow` may start under `policy`, waiting for its turn
    /// under `queue` and `replace`. `cancel` is the run's own cancel flag: set, it ends the
    /// wait, and while the run is active a `replace` sets it.
    pub fn admit(
        self: &Arc<Self>,
        workflow: &str,
        run: &str,
        policy: Policy,
        cancel: &Arc<AtomicBool>,
    ) -> Result<Ticket, Refusal> {
        let mut state = self.lock();
        let busy = |state: &Workflows| state.active.get(workflow).is_some_and(|r| !r.is_empty());
        match policy {
            Policy::Allow => {}
            Policy::Forbid => {
                if let Some((active, _)) = state.active.get(workflow).and_then(|r| r.first()) {
                    return Err(Refusal::Forbidden {
                        active: active.clone(),
                    });
                }
            }
            Policy::Queue | Policy::Replace => {
                state
                    .waiting
                    .entry(workflow.to_owned())
                    .or_default()
                    .insert(run.to_owned());
                loop {
                    if policy == Policy::Replace {
                        for (_, flag) in state.active.get(workflow).into_iter().flatten() {
                            flag.store(true, Ordering::SeqCst);
                        }
                    }
                    let first = state
                        .waiting
                        .get(workflow)
                        .and_then(|w| w.first())
                        .is_some_and(|w| w == run);
                    if cancel.load(Ordering::SeqCst) {
                        remove_waiting(&mut state, workflow, run);
                        drop(state);
                        self.changed.notify_all();
                        return Err(Refusal::Cancelled);
                    }
                    if first && !busy(&state) {
                        break;
                    }
                    // Cancel flags are plain atomics: look at them now and then.
                    state = self
                        .changed
                        .wait_timeout(state, Duration::from_millis(50))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                remove_waiting(&mut state, workflow, run);
            }
        }
        state
            .active
            .entry(workflow.to_owned())
            .or_default()
            .push((run.to_owned(), Arc::clone(cancel)));
        drop(state);
        self.changed.notify_all();
        Ok(Ticket {
            admission: Arc::clone(self),
            workflow: workflow.to_owned(),
            run: run.to_owned(),
        })
    }

    /// The active runs of a workflow.
    pub fn active(&self, workflow: &str) -> Vec<String> {
        self.lock()
            .active
            .get(workflow)
            .map(|runs| runs.iter().map(|(id, _)| id.clone()).collect())
            .unwrap_or_default()
    }

    /// The cancel flag of an active run, so another part of the process can stop it.
    pub fn cancel_flag(&self, run: &str) -> Option<Arc<AtomicBool>> {
        self.lock()
            .active
            .values()
            .flatten()
            .find(|(id, _)| id == run)
            .map(|(_, flag)| Arc::clone(flag))
    }
}

fn remove_waiting(state: &mut Workflows, workflow: &str, run: &str) {
    if let Some(waiting) = state.waiting.get_mut(workflow) {
        waiting.remove(run);
        if waiting.is_empty() {
            state.waiting.remove(workflow);
        }
    }
}

/// A bound on the runs executing at once, over all workflows, with the runs waiting for a
/// slot in the order they were handed over. `T` is what a waiting run needs to start.
///
/// It never blocks: [`RunSlots::enter`] either takes a slot or queues, and
/// [`RunSlots::release`] hands the freed slot to the first waiting run, so whoever ends a run
/// starts the next one.
#[derive(Debug)]
pub struct RunSlots<T> {
    limit: usize,
    state: Mutex<SlotState<T>>,
}

#[derive(Debug)]
struct SlotState<T> {
    /// Slots taken.
    taken: usize,
    /// Runs waiting for a slot, first come first.
    waiting: VecDeque<(String, T)>,
}

impl<T> RunSlots<T> {
    /// `limit` slots (at least one).
    pub fn new(limit: usize) -> RunSlots<T> {
        RunSlots {
            limit: limit.max(1),
            state: Mutex::new(SlotState {
                taken: 0,
                waiting: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many runs may execute at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a slot for run `id` when one is free and no run waits before it: `Some(item)`
    /// back, to start now. Otherwise the run waits: `None`, and `item` is kept until a slot
    /// frees ([`RunSlots::release`]) or the run leaves the queue ([`RunSlots::remove`],
    /// [`RunSlots::drain`]).
    pub fn enter(&self, id: &str, item: T) -> Option<T> {
        let mut state = self.lock();
        if state.taken < self.limit && state.waiting.is_empty() {
            state.taken += 1;
            Some(item)
        } else {
            state.waiting.push_back((id.to_owned(), item));
            None
        }
    }

    /// Gives back a slot. The first waiting run, if any, takes it over and is returned: the
    /// caller starts it (and releases again when it ends).
    pub fn release(&self) -> Option<(String, T)> {
        let mut state = self.lock();
        match state.waiting.pop_front() {
            Some(next) => Some(next),
            None => {
                state.taken = state.taken.saturating_sub(1);
                None
            }
        }
    }

    /// Takes a waiting run out of the queue (it was cancelled); `None` when it is not waiting.
    pub fn remove(&self, id: &str) -> Option<T> {
        let mut state = self.lock();
        let at = state
            .waiting
            .iter()
            .position(|(waiting, _)| waiting == id)?;
        state.waiting.remove(at).map(|(_, item)| item)
    }

    /// Takes every waiting run out of the queue, first come first (the server is stopping).
    pub fn drain(&self) -> Vec<(String, T)> {
        self.lock().waiting.drain(..).collect()
    }

    /// Whether run `id` waits for a slot.
    pub fn is_waiting(&self, id: &str) -> bool {
        self.lock().waiting.iter().any(|(waiting, _)| waiting == id)
    }

    /// The ids of the runs waiting, first come first.
    pub fn waiting_ids(&self) -> Vec<String> {
        self.lock()
            .waiting
            .iter()
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// How many runs wait for a slot.
    pub fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }

    /// How many slots are taken.
    pub fn taken(&self) -> usize {
        self.lock().taken
    }
}

/// Agents switched on or off while the process runs, over what their manifests say.
#[derive(Debug, Default)]
pub struct AgentSwitches {
    overrides: Mutex<HashMap<String, bool>>,
    changed: Condvar,
    /// Steps running per agent, for `max_concurrent`.
    busy: Mutex<HashMap<String, usize>>,
}

impl AgentSwitches {
    /// No overrides: every agent is as its manifest says.
    pub fn new() -> Arc<AgentSwitches> {
        Arc::new(AgentSwitches::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, bool>> {
        self.overrides.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Switches an agent on or off; steps waiting for it hear of it at once.
    pub fn set(&self, agent: &str, enabled: bool) {
        self.lock().insert(agent.to_owned(), enabled);
        self.changed.notify_all();
    }

    /// Whether the agent takes work: the override, else the manifest's `enabled`.
    pub fn enabled(&self, agent: &str, manifest_enabled: bool) -> bool {
        self.lock().get(agent).copied().unwrap_or(manifest_enabled)
    }

    /// Takes one of the agent's `max` slots if one is free.
    pub fn try_acquire(&self, agent: &str, max: usize) -> bool {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let count = busy.entry(agent.to_owned()).or_default();
        if *count >= max {
            return false;
        }
        *count += 1;
        true
    }

    /// Gives back a slot taken with [`AgentSwitches::try_acquire`].
    pub fn release(&self, agent: &str) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = busy.get_mut(agent) {
            *count = count.saturating_sub(1);
        }
    }

    /// Steps of the agent running now (those counted for `max_concurrent`).
    pub fn running(&self, agent: &str) -> usize {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(agent)
            .copied()
            .unwrap_or(0)
    }

    /// Waits up to `timeout` for the agent to be enabled; returns whether it is.
    pub fn wait_enabled(&self, agent: &str, manifest_enabled: bool, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |overrides| {
                !overrides.get(agent).copied().unwrap_or(manifest_enabled)
            })
            .unwrap_or_else(|e| e.into_inner());
        state.get(agent).copied().unwrap_or(manifest_enabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn flag() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    #[test]
    fn allow_admits_side_by_side() {
        let admission = RunAdmission::new();
        let a = admission
            .admit("wf", "run_a", Policy::Allow, &flag())
            .unwrap();
        let b = admission
            .admit("wf", "run_b", Policy::Allow, &flag())
            .unwrap();
        assert_eq!(admission.active("wf"), ["run_a", "run_b"]);
        drop((a, b));
        assert!(admission.active("wf").is_empty());
    }

    #[test]
    fn forbid_refuses_while_a_run_is_active_and_admits_after() {
        let admission = RunAdmission::new();
        let first = admission
            .admit("wf", "run_a", Policy::Forbid, &flag())
            .unwrap();
        let refused = admission
            .admit("wf", "run_b", Policy::Forbid, &flag())
            .unwrap_err();
        assert_eq!(
            refused,
            Refusal::Forbidden {
                active: "run_a".into()
            }
        );
        // Other workflows are not affected.
        let _other = admission
            .admit("wf2", "run_c", Policy::Forbid, &flag())
            .unwrap();
        drop(first);
        admission
            .admit("wf", "run_d", Policy::Forbid, &flag())
            .unwrap();
    }

    #[test]
    fn queue_starts_runs_one_after_another_in_creation_order() {
        let admission = RunAdmission::new();
        let first = admission
            .admit("wf", "run_1", Policy::Queue, &flag())
            .unwrap();
        let (sender, receiver) = mpsc::channel();
        let mut waiters = Vec::new();
        for run in ["run_3", "run_2"] {
            let admission = Arc::clone(&admission);
            let sender = sender.clone();
            waiters.push(std::thread::spawn(move || {
                let ticket = admission.admit("wf", run, Policy::Queue, &flag()).unwrap();
                sender.send(run).unwrap();
                drop(ticket);
            }));
        }
        // Both wait while run_1 is active.
        let deadline = Instant::now() + Duration::from_secs(5);
        while admission.lock().waiting.get("wf").map_or(0, BTreeSet::len) < 2 {
            assert!(Instant::now() < deadline, "the runs never queued");
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(receiver.try_recv().is_err(), "a queued run started early");
        drop(first);
        let order: Vec<&str> = (0..2)
            .map(|_| receiver.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        assert_eq!(order, ["run_2", "run_3"]);
        for waiter in waiters {
            waiter.join().unwrap();
        }
    }

    #[test]
    fn replace_cancels_the_active_run_and_starts_after_it_stops() {
        let admission = RunAdmission::new();
        let old_cancel = flag();
        let old = admission
            .admit("wf", "run_old", Policy::Replace, &old_cancel)
            .unwrap();
        let replacer = {
            let admission = Arc::clone(&admission);
            std::thread::spawn(move || {
                admission
                    .admit("wf", "run_new", Policy::Replace, &flag())
                    .map(|t| {
                        let active = admission.active("wf");
                        drop(t);
                        active
                    })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !old_cancel.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the old run was not cancelled");
            std::thread::sleep(Duration::from_millis(2));
        }
        // The new run waits until the old one has actually stopped.
        assert_eq!(admission.active("wf"), ["run_old"]);
        drop(old);
        assert_eq!(replacer.join().unwrap().unwrap(), ["run_new"]);
    }

    #[test]
    fn a_cancelled_waiting_run_leaves_the_queue() {
        let admission = RunAdmission::new();
        let _first = admission
            .admit("wf", "run_1", Policy::Queue, &flag())
            .unwrap();
        let cancel = flag();
        let waiter = {
            let admission = Arc::clone(&admission);
            let cancel = Arc::clone(&cancel);
            std::thread::spawn(move || admission.admit("wf", "run_2", Policy::Queue, &cancel))
        };
        cancel.store(true, Ordering::SeqCst);
        assert_eq!(waiter.join().unwrap().unwrap_err(), Refusal::Cancelled);
        assert!(admission.lock().waiting.is_empty());
    }

    #[test]
    fn run_slots_bound_the_runs_and_hand_freed_slots_over_in_order() {
        let slots: RunSlots<u32> = RunSlots::new(2);
        assert_eq!(slots.enter("run_1", 1), Some(1));
        assert_eq!(slots.enter("run_2", 2), Some(2));
        // Full: the next ones wait, in the order they came.
        assert_eq!(slots.enter("run_3", 3), None);
        assert_eq!(slots.enter("run_4", 4), None);
        assert_eq!(slots.enter("run_5", 5), None);
        assert_eq!(slots.waiting_ids(), ["run_3", "run_4", "run_5"]);
        assert_eq!((slots.taken(), slots.waiting()), (2, 3));
        // A cancelled waiting run leaves the queue; one not waiting is not found.
        assert_eq!(slots.remove("run_4"), Some(4));
        assert_eq!(slots.remove("run_4"), None);
        assert!(!slots.is_waiting("run_4") && slots.is_waiting("run_5"));
        // An ending run hands its slot to the first waiting one: still two taken.
        assert_eq!(slots.release(), Some(("run_3".to_owned(), 3)));
        assert_eq!(slots.taken(), 2);
        // A newcomer does not overtake a waiting run even when the count would allow it.
        assert_eq!(slots.release(), Some(("run_5".to_owned(), 5)));
        assert_eq!(slots.release(), None);
        assert_eq!(slots.taken(), 1);
        assert_eq!(slots.enter("run_6", 6), Some(6));
        assert_eq!(slots.enter("run_7", 7), None);
        assert_eq!(slots.drain(), [("run_7".to_owned(), 7)]);
        assert_eq!(slots.waiting(), 0);
        assert_eq!(slots.release(), None);
        assert_eq!(slots.release(), None);
        assert_eq!(slots.taken(), 0);
        assert_eq!(slots.release(), None, "no slot below zero");
        assert_eq!(slots.taken(), 0);
    }

    #[test]
    fn run_slots_hold_under_concurrent_use() {
        let slots: Arc<RunSlots<()>> = Arc::new(RunSlots::new(3));
        let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let (slots, running, most, done) = (
                    Arc::clone(&slots),
                    Arc::clone(&running),
                    Arc::clone(&most),
                    Arc::clone(&done),
                );
                std::thread::spawn(move || {
                    for n in 0..200 {
                        // Whoever holds a slot runs what it is handed, then the next.
                        let mut next = slots.enter(&format!("run_{worker}_{n}"), ()).map(|_| ());
                        while next.is_some() {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::yield_now();
                            running.fetch_sub(1, Ordering::SeqCst);
                            done.fetch_add(1, Ordering::SeqCst);
                            next = slots.release().map(|_| ());
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        assert!(most.load(Ordering::SeqCst) <= 3, "more than 3 ran at once");
        assert_eq!(done.load(Ordering::SeqCst), 1600, "a run was lost");
        assert_eq!((slots.taken(), slots.waiting()), (0, 0));
    }

    #[test]
    fn agent_switches_override_the_manifest_and_wake_waiters() {
        let switches = AgentSwitches::new();
        assert!(switches.enabled("shell", true));
        assert!(!switches.enabled("shell", false));
        switches.set("shell", false);
        assert!(!switches.enabled("shell", true));
        let waiter = {
            let switches = Arc::clone(&switches);
            std::thread::spawn(move || {
                switches.wait_enabled("shell", true, Duration::from_secs(10))
            })
        };
        let started = Instant::now();
        switches.set("shell", true);
        assert!(waiter.join().unwrap());
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!switches.wait_enabled("other", false, Duration::from_millis(10)));
    }
}
