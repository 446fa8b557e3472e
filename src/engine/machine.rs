//! The executor loop of one run as a state machine: the steps' records, their DAG, their
//! attempts and the run's stop state in; messages (an attempt started or finished, a
//! cancel request) and the passing of time in; commands out (start attempt N of step S,
//! stop an attempt), with the steps to write in one batch, the events to report after it,
//! and at the end the run's final state. No IO, no threads, no clock: every instant and
//! timestamp is handed in ([`Moment`]), so a table of messages drives it in tests exactly
//! as attempts drive it in a run, whichever executor runs them.
//!
//! Semantics (what `engine::run` has always done):
//! - A step is ready when every step it depends on has finished (in listed order when no
//!   step has `depends_on`). Ready steps start in listed order, at most `max_parallel` in
//!   flight (a step waiting to retry counts), and at most the agent's `max_concurrent`
//!   across the process (the [`AgentSlots`]).
//! - Its `if:` (`success()` by default) is evaluated when it is ready, against the steps
//!   finished so far: false skips it (`ok` for what follows when everything upstream was
//!   ok), an error fails it.
//! - An attempt that fails or times out is retried while attempts remain, after
//!   `retry_delay` doubled per retry (up to 2^10), unless the run is stopping.
//! - A step counts as ok for what follows when it succeeded, or failed (not cancelled)
//!   with `continue_on_error`.
//! - A step's timeout counts from its attempt's start; the run's from its own start. A
//!   cancel or the run's timeout stops every attempt in flight, ends steps waiting to
//!   retry, and, once nothing is in flight, ends the steps that never started.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::executor::{AttemptFinished, StopReason};
use super::expand::{self, ConditionContext, Scope, StepState};
use crate::model::{Status, StepRecord, TestSummary};
use crate::spec::workflow::WorkflowSpec;

/// Something that happened to a run, reported after it is durable.
#[derive(Debug, Clone)]
pub enum Event {
    /// A step started (or started again, for a retry).
    StepStarted {
        /// The step.
        step: StepRecord,
    },
    /// A step reached its final state.
    StepFinished {
        /// The step.
        step: StepRecord,
    },
    /// An attempt failed and will be retried.
    StepRetrying {
        /// The step.
        step: StepRecord,
        /// Seconds until the next attempt.
        delay: Duration,
    },
}

/// One step as the machine schedules it: its spec joined with its agent's manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct StepPlan {
    /// The step's agent.
    pub agent: String,
    /// The agent's `max_concurrent`: its steps running at once in this process.
    pub max_concurrent: Option<usize>,
    /// The steps it waits for.
    pub deps: Vec<usize>,
    /// Every step upstream of it (transitive dependencies), in order.
    pub upstream: Vec<usize>,
    /// Its time limit per attempt: its own, else `run_tests`'s parameter, else the agent
    /// manifest's default; zero is none.
    pub timeout: Option<Duration>,
    /// Attempts after the first.
    pub retries: u32,
    /// The delay before the first retry.
    pub retry_delay: Duration,
    /// Whether its failure leaves what follows running as after a success.
    pub continue_on_error: bool,
    /// Its `if:`.
    pub condition: Option<String>,
    /// It declares `runs_on`: until its attempt reports started it waits for a worker,
    /// which its `queue_timeout` bounds, so its timeout counts from the start only.
    pub waits_for_worker: bool,
    /// Impact selection's decision for a `run_tests` step with `select: affected`
    /// (`engine::impact`); `None` for every other step.
    pub impact: Option<Selection>,
}

/// What impact selection decided for a step before it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// Why the step is skipped when its suite is not affected ("no change under api/**").
    pub skip: Option<String>,
    /// The line its log gets when it is ready: what was decided and from which change.
    pub note: String,
}

impl StepPlan {
    /// The deadline of an attempt handed to the executor `now`: the step's timeout, except
    /// for a step that may wait for a worker, whose deadline is set when it starts.
    fn deadline_at_start(&self, now: Instant) -> Option<Instant> {
        if self.waits_for_worker {
            return None;
        }
        self.timeout.map(|t| now + t)
    }
}

/// The plan of every step of a workflow, with the Agent manifests (by name) in force.
pub fn plan(spec: &WorkflowSpec, agents: &BTreeMap<String, Value>) -> Vec<StepPlan> {
    let position: std::collections::HashMap<&str, usize> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut planned: Vec<StepPlan> = spec
        .steps
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let deps = if spec.uses_depends_on {
                step.depends_on
                    .iter()
                    .filter_map(|name| position.get(name.as_str()).copied())
                    .collect()
            } else if i > 0 {
                vec![i - 1]
            } else {
                Vec::new()
            };
            let manifest = agents.get(&step.agent);
            let timeout = step.timeout.or_else(|| {
                crate::spec::workflow::duration_field(manifest.and_then(|a| a.get("timeout")))
            });
            StepPlan {
                agent: step.agent.clone(),
                max_concurrent: manifest
                    .and_then(|a| a.get("max_concurrent"))
                    .and_then(Value::as_u64)
                    .map(|n| n as usize),
                deps,
                upstream: Vec::new(),
                timeout: timeout.filter(|t| !t.is_zero()),
                retries: step.retries,
                retry_delay: step.retry_delay,
                continue_on_error: step.continue_on_error,
                condition: step.condition.clone(),
                waits_for_worker: step.placement.is_some(),
                impact: None,
            }
        })
        .collect();
    // Transitive closure; the workflow was validated acyclic, but guard anyway.
    for i in 0..planned.len() {
        let mut seen = vec![false; planned.len()];
        let mut stack = planned[i].deps.clone();
        while let Some(d) = stack.pop() {
            if d != i && !seen[d] {
                seen[d] = true;
                stack.extend(planned[d].deps.iter().copied());
            }
        }
        planned[i].upstream = (0..planned.len()).filter(|&d| seen[d]).collect();
    }
    planned
}

/// The present, as the driver hands it in: a monotonic instant for deadlines and
/// durations, and the wall-clock timestamp records carry.
#[derive(Debug, Clone)]
pub struct Moment {
    /// For deadlines and durations.
    pub instant: Instant,
    /// RFC 3339 with milliseconds, for records.
    pub timestamp: String,
}

/// The agents' `max_concurrent` slots, shared by the runs of the process.
pub trait AgentSlots {
    /// Takes one of `agent`'s `max` slots, or answers false when all are taken.
    fn try_acquire(&self, agent: &str, max: usize) -> bool;
    /// Gives one back.
    fn release(&self, agent: &str);
}

/// What happened, for the machine.
#[derive(Debug)]
pub enum Input {
    /// An attempt is under way.
    AttemptStarted {
        /// The step.
        index: usize,
        /// The attempt.
        number: u32,
        /// When it started.
        at: Instant,
    },
    /// An attempt ended.
    AttemptFinished {
        /// The step.
        index: usize,
        /// The attempt.
        number: u32,
        /// How.
        finished: Box<AttemptFinished>,
    },
    /// The run is to be cancelled.
    CancelRequested,
}

/// What the driver is to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Hand attempt `number` of step `index` to the executor.
    Start {
        /// The step.
        index: usize,
        /// The attempt, from 1.
        number: u32,
    },
    /// Stop the attempt in flight of step `index`.
    Stop {
        /// The step.
        index: usize,
        /// Why.
        reason: StopReason,
    },
}

/// How the run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunEnd {
    /// Succeeded, Failed, Cancelled or TimedOut.
    pub status: Status,
    /// Why, when it did not succeed.
    pub message: Option<String>,
    /// When.
    pub finished_at: String,
    /// Since it started.
    pub duration_ms: u64,
    /// The test cases of its steps, counted.
    pub tests: TestSummary,
}

/// What one turn of the loop asks of the driver, in this order: notes in step logs, the
/// commands, then (once the steps that ended are accounted for) one batch of the changed
/// steps — with the run record when the run ended — flushed, then the events.
#[derive(Debug, Default, Clone)]
pub struct Turn {
    /// Lines for steps' logs (the engine's own notes, such as a retry's delay).
    pub notes: Vec<(usize, String)>,
    /// Attempts to start and stop.
    pub commands: Vec<Command>,
    /// Steps that ended after running since the last turn (their agents' logs hear it).
    pub ended: Vec<usize>,
    /// Steps whose records changed, in order, each once.
    pub changed: Vec<usize>,
    /// Events to report once the changed steps are durable: "finished" before "started".
    pub events: Vec<Event>,
    /// Set when the run is over.
    pub run_end: Option<RunEnd>,
}

impl Turn {
    fn clear(&mut self) {
        self.notes.clear();
        self.commands.clear();
        self.ended.clear();
        self.changed.clear();
        self.events.clear();
        self.run_end = None;
    }

    /// Whether the turn has something to write.
    pub fn writes(&self) -> bool {
        !self.changed.is_empty() || self.run_end.is_some()
    }
}

/// Where a step is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Not started (queued), or finished: the record's status says which.
    Idle,
    /// Attempt `number` is in flight; its timeout fires at `deadline`.
    Attempt {
        number: u32,
        deadline: Option<Instant>,
    },
    /// Attempt `number` failed; the next starts at `at`.
    Retry { number: u32, at: Instant },
}

/// Kinds of events, materialized at the end of a turn from the records then.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Started(usize),
    Finished(usize),
    Retrying(usize, Duration),
}

/// The state of one run's execution.
#[derive(Debug)]
pub struct RunMachine {
    plan: Vec<StepPlan>,
    steps: Vec<StepRecord>,
    phase: Vec<Phase>,
    /// Whether each finished step counts as a success for what follows.
    ok: Vec<Option<bool>>,
    /// When each step started in this execution (steps kept from an earlier run never do).
    ran: Vec<Option<Instant>>,
    holds_slot: Vec<bool>,
    /// What conditions and substitutions see, grown as steps finish (not rebuilt per step).
    scope: Arc<Scope>,
    in_scope: Vec<bool>,
    max_parallel: usize,
    in_flight: usize,
    cancelled: bool,
    timed_out: bool,
    started: Instant,
    deadline: Option<Instant>,
    done: bool,
    turn: Turn,
    pending: Vec<Pending>,
}

/// An attempt in flight when a run is resumed ([`RunMachine::resume`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InFlight {
    /// The step.
    pub index: usize,
    /// The attempt.
    pub number: u32,
}

/// The instant of an RFC 3339 timestamp, as far before `now` as it is in wall-clock time;
/// `now` itself when it cannot be read (or lies ahead).
pub fn instant_of(timestamp: &str, now: &Moment) -> Instant {
    let (Ok(at), Ok(present)) = (
        chrono::DateTime::parse_from_rfc3339(timestamp),
        chrono::DateTime::parse_from_rfc3339(&now.timestamp),
    ) else {
        return now.instant;
    };
    (present - at)
        .to_std()
        .ok()
        .and_then(|age| now.instant.checked_sub(age))
        .unwrap_or(now.instant)
}

/// The limits a run executes under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Steps in flight at once (at least 1).
    pub max_parallel: usize,
    /// The run's own timeout.
    pub timeout: Option<Duration>,
}

impl RunMachine {
    /// A run starting at `started` with its steps (queued, or kept from an earlier run as
    /// succeeded) planned as `plan`, and the scope its first steps see.
    pub fn new(
        plan: Vec<StepPlan>,
        steps: Vec<StepRecord>,
        scope: Scope,
        limits: Limits,
        started: Instant,
    ) -> RunMachine {
        let n = steps.len();
        RunMachine {
            ok: steps
                .iter()
                .map(|s| (s.status == Status::Succeeded).then_some(true))
                .collect(),
            plan,
            steps,
            phase: vec![Phase::Idle; n],
            ran: vec![None; n],
            holds_slot: vec![false; n],
            scope: Arc::new(scope),
            in_scope: vec![false; n],
            max_parallel: limits.max_parallel.max(1),
            in_flight: 0,
            cancelled: false,
            timed_out: false,
            started,
            deadline: limits.timeout.map(|t| started + t),
            done: false,
            turn: Turn::default(),
            pending: Vec::new(),
        }
    }

    /// A run rebuilt from its records after the process executing it ended (a controller
    /// restart): finished steps keep their status and outputs (the scope sees them, and
    /// count as ok for what follows as when they ended), queued steps wait as before, and
    /// each `running` step has attempt `attempts + 1` in flight, its timeout counted
    /// afresh from `now` (its real start is unknown to this process). Returns the attempts
    /// in flight: the driver adopts each through its executor, or ends it (a step that ran
    /// on this machine died with the process). `started` is when the run started, for its
    /// own timeout; agents' `max_concurrent` slots are taken again for the steps in flight.
    pub fn resume(
        plan: Vec<StepPlan>,
        steps: Vec<StepRecord>,
        scope: Scope,
        limits: Limits,
        started: Instant,
        now: &Moment,
        slots: &dyn AgentSlots,
    ) -> (RunMachine, Vec<InFlight>) {
        let mut machine = RunMachine::new(plan, steps, scope, limits, started);
        let mut in_flight = Vec::new();
        for index in 0..machine.steps.len() {
            let step = &machine.steps[index];
            let plan = &machine.plan[index];
            if step.status.is_finished() {
                if step.status != Status::Skipped {
                    machine.ok[index] = Some(
                        step.status == Status::Succeeded
                            || (plan.continue_on_error && step.status != Status::Cancelled),
                    );
                }
                continue;
            }
            if step.status != Status::Running {
                continue;
            }
            let number = step.attempts.len() as u32 + 1;
            machine.ran[index] = Some(
                step.started_at
                    .as_deref()
                    .map_or(now.instant, |at| instant_of(at, now)),
            );
            machine.phase[index] = Phase::Attempt {
                number,
                deadline: plan.timeout.map(|t| now.instant + t),
            };
            if let Some(max) = plan.max_concurrent {
                // Taken even beyond the limit: the step was running already.
                machine.holds_slot[index] = slots.try_acquire(&plan.agent, max);
            }
            machine.in_flight += 1;
            in_flight.push(InFlight { index, number });
        }
        // A skipped step counts as ok when everything upstream was (its `if:` was false),
        // as when it was skipped; upstream steps may come later in the list.
        loop {
            let mut changed = false;
            for index in 0..machine.steps.len() {
                if machine.steps[index].status != Status::Skipped || machine.ok[index].is_some() {
                    continue;
                }
                let upstream = &machine.plan[index].upstream;
                if upstream.iter().all(|&d| machine.ok[d].is_some()) {
                    machine.ok[index] = Some(upstream.iter().all(|&d| machine.ok[d] == Some(true)));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        for index in 0..machine.steps.len() {
            if machine.steps[index].status == Status::Skipped && machine.ok[index].is_none() {
                machine.ok[index] = Some(false);
            }
        }
        machine.grow_scope();
        (machine, in_flight)
    }

    /// The step records as they are now.
    pub fn steps(&self) -> &[StepRecord] {
        &self.steps
    }

    /// The plan of each step.
    pub fn plan(&self) -> &[StepPlan] {
        &self.plan
    }

    /// What a step starting now sees.
    pub fn scope(&self) -> &Arc<Scope> {
        &self.scope
    }

    /// Whether the step started in this execution.
    pub fn ran(&self, index: usize) -> bool {
        self.ran[index].is_some()
    }

    /// Whether the run was cancelled.
    pub fn cancelled(&self) -> bool {
        self.cancelled
    }

    /// Whether the run is over.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// When the machine next has something to do without a message: the earliest step
    /// deadline, retry or the run's deadline.
    pub fn next_wake(&self) -> Option<Instant> {
        self.phase
            .iter()
            .filter_map(|phase| match *phase {
                Phase::Attempt { deadline, .. } => deadline,
                Phase::Retry { at, .. } => Some(at),
                Phase::Idle => None,
            })
            .chain(self.deadline.filter(|_| !self.timed_out))
            .min()
    }

    /// Whether this attempt's end, if it is attempt `number` in flight of step `index`,
    /// ends the step (no retry follows): what the driver asks before doing the step's
    /// final work (keeping its artifacts).
    pub fn ends_step(&self, index: usize, number: u32, finished: &AttemptFinished) -> bool {
        self.is_current(index, number) && self.retry_delay(index, finished).is_none()
    }

    /// Takes in one message.
    pub fn handle(&mut self, input: Input, now: &Moment, slots: &dyn AgentSlots) {
        match input {
            Input::AttemptStarted { index, number, at } => {
                if self.is_current(index, number) {
                    self.phase[index] = Phase::Attempt {
                        number,
                        deadline: self.plan[index].timeout.map(|t| at + t),
                    };
                }
            }
            Input::AttemptFinished {
                index,
                number,
                finished,
            } => {
                if self.is_current(index, number) {
                    self.attempt_finished(index, number, *finished, now, slots);
                }
            }
            Input::CancelRequested => {
                if !self.cancelled {
                    self.cancelled = true;
                    self.stop_all(StopReason::Cancel, now, slots);
                }
            }
        }
    }

    /// One turn: timeouts that fired, retries that are due, the steps that are ready,
    /// the run's end; fills `turn` (cleared first, its buffers reused from turn to turn)
    /// with what the driver is to do.
    pub fn advance(&mut self, now: &Moment, slots: &dyn AgentSlots, turn: &mut Turn) {
        turn.clear();
        if self.done {
            return;
        }
        if !self.timed_out && self.deadline.is_some_and(|d| now.instant >= d) {
            self.timed_out = true;
            self.stop_all(StopReason::Timeout, now, slots);
        }
        for index in 0..self.steps.len() {
            match self.phase[index] {
                Phase::Attempt {
                    number,
                    deadline: Some(deadline),
                } if now.instant >= deadline => {
                    self.phase[index] = Phase::Attempt {
                        number,
                        deadline: None,
                    };
                    self.turn.commands.push(Command::Stop {
                        index,
                        reason: StopReason::Timeout,
                    });
                }
                Phase::Retry { number, at } if now.instant >= at => {
                    self.phase[index] = Phase::Attempt {
                        number: number + 1,
                        deadline: self.plan[index].deadline_at_start(now.instant),
                    };
                    self.turn.commands.push(Command::Start {
                        index,
                        number: number + 1,
                    });
                }
                _ => {}
            }
        }
        if !self.cancelled && !self.timed_out {
            self.start_ready(now, slots);
        }
        if (self.cancelled || self.timed_out) && self.in_flight == 0 {
            self.end_unstarted(now);
        }
        if self.in_flight == 0 && self.steps.iter().all(|s| s.status.is_finished()) {
            self.done = true;
            self.turn.run_end = Some(self.run_end(now));
        }
        std::mem::swap(&mut self.turn, turn);
        turn.changed.sort_unstable();
        turn.changed.dedup();
        turn.events
            .extend(self.pending.drain(..).map(|pending| match pending {
                Pending::Started(i) => Event::StepStarted {
                    step: self.steps[i].clone(),
                },
                Pending::Finished(i) => Event::StepFinished {
                    step: self.steps[i].clone(),
                },
                Pending::Retrying(i, delay) => Event::StepRetrying {
                    step: self.steps[i].clone(),
                    delay,
                },
            }));
    }

    /// Whether attempt `number` of step `index` is the one the machine waits for: a late
    /// or repeated message of another attempt is ignored.
    pub fn is_current(&self, index: usize, number: u32) -> bool {
        matches!(self.phase.get(index), Some(Phase::Attempt { number: n, .. }) if *n == number)
    }

    /// The delay before the next attempt, when this attempt's end calls for one.
    fn retry_delay(&self, index: usize, finished: &AttemptFinished) -> Option<Duration> {
        let attempt = finished.attempt.as_ref()?;
        let plan = &self.plan[index];
        let status = finished.outcome.status.unwrap_or(Status::Failed);
        let retry = attempt.number < plan.retries + 1
            && matches!(status, Status::Failed | Status::TimedOut)
            && !finished.outcome.no_retry
            && !self.cancelled
            && !self.timed_out;
        retry.then(|| {
            plan.retry_delay
                .saturating_mul(1 << (attempt.number.saturating_sub(1)).min(10))
        })
    }

    fn attempt_finished(
        &mut self,
        index: usize,
        number: u32,
        finished: AttemptFinished,
        now: &Moment,
        slots: &dyn AgentSlots,
    ) {
        if let Some(delay) = self.retry_delay(index, &finished) {
            let status = finished.outcome.status.unwrap_or(Status::Failed);
            if let Some(attempt) = finished.attempt {
                self.steps[index].attempts.push(attempt);
            }
            self.phase[index] = Phase::Retry {
                number,
                at: now.instant + delay,
            };
            self.turn.notes.push((
                index,
                format!(
                    "attempt {number} {status}; retrying in {}",
                    crate::duration::format_duration(delay)
                ),
            ));
            self.pending.push(Pending::Retrying(index, delay));
            self.turn.changed.push(index);
            return;
        }
        let outcome = finished.outcome;
        let step = &mut self.steps[index];
        let status = outcome.status.unwrap_or(Status::Failed);
        step.attempts.extend(finished.attempt);
        step.status = status;
        step.exit_code = outcome.exit_code;
        step.message = outcome.message;
        step.outputs = outcome.outputs;
        step.tests = outcome.tests;
        step.artifacts = outcome.artifacts;
        self.end_in_flight(index, status, now, slots);
    }

    /// Ends a step that held an attempt or waited to retry, its record already carrying
    /// its outcome but for the status and times.
    fn end_in_flight(
        &mut self,
        index: usize,
        status: Status,
        now: &Moment,
        slots: &dyn AgentSlots,
    ) {
        self.in_flight -= 1;
        if std::mem::take(&mut self.holds_slot[index]) {
            slots.release(&self.plan[index].agent);
        }
        self.phase[index] = Phase::Idle;
        let step = &mut self.steps[index];
        step.status = status;
        step.finished_at = Some(now.timestamp.clone());
        step.duration_ms =
            self.ran[index].map(|s| now.instant.saturating_duration_since(s).as_millis() as u64);
        step.pgid = None;
        self.ok[index] = Some(
            status == Status::Succeeded
                || (self.plan[index].continue_on_error && status != Status::Cancelled),
        );
        self.turn.ended.push(index);
        self.pending.push(Pending::Finished(index));
        self.turn.changed.push(index);
    }

    /// A cancel or the run's timeout: attempts in flight are told to stop, steps waiting
    /// to retry end now.
    fn stop_all(&mut self, reason: StopReason, now: &Moment, slots: &dyn AgentSlots) {
        for index in 0..self.steps.len() {
            match self.phase[index] {
                Phase::Attempt { .. } => self.turn.commands.push(Command::Stop { index, reason }),
                Phase::Retry { .. } => {
                    let (status, message) = match reason {
                        StopReason::Cancel => {
                            (Status::Cancelled, "cancelled while waiting to retry")
                        }
                        StopReason::Timeout => (
                            Status::TimedOut,
                            "the workflow timed out while the step waited to retry",
                        ),
                    };
                    let step = &mut self.steps[index];
                    step.exit_code = None;
                    step.message = Some(message.to_owned());
                    step.outputs.clear();
                    step.tests.clear();
                    step.artifacts.clear();
                    self.end_in_flight(index, status, now, slots);
                }
                Phase::Idle => {}
            }
        }
    }

    fn grow_scope(&mut self) {
        for (finished, step) in self.in_scope.iter_mut().zip(&self.steps) {
            if !*finished && step.status.is_finished() {
                *finished = true;
                Arc::make_mut(&mut self.scope).steps.insert(
                    step.name.clone(),
                    StepState {
                        status: step.status,
                        outputs: step.outputs.clone(),
                    },
                );
            }
        }
    }

    fn start_ready(&mut self, now: &Moment, slots: &dyn AgentSlots) {
        for index in 0..self.steps.len() {
            if self.in_flight >= self.max_parallel {
                break;
            }
            let plan = &self.plan[index];
            if self.steps[index].status != Status::Queued
                || plan.deps.iter().any(|&d| self.ok[d].is_none())
            {
                continue;
            }
            let upstream_ok = plan.upstream.iter().all(|&d| self.ok[d] == Some(true));
            self.grow_scope();
            let plan = &self.plan[index];
            let condition = plan.condition.as_deref().unwrap_or("success()");
            let run_it = expand::evaluate_condition(
                condition,
                &self.scope,
                ConditionContext {
                    upstream_ok,
                    cancelled: false,
                },
            );
            if run_it == Ok(true) {
                if let Some(selection) = &plan.impact {
                    if let Some(reason) = &selection.skip {
                        // Not affected by the change: skipped as a false `if:` skips it.
                        self.turn.notes.push((index, selection.note.clone()));
                        let step = &mut self.steps[index];
                        step.status = Status::Skipped;
                        step.finished_at = Some(now.timestamp.clone());
                        step.message = Some(format!("skipped: {reason}"));
                        self.ok[index] = Some(upstream_ok);
                        self.pending.push(Pending::Finished(index));
                        self.turn.changed.push(index);
                        continue;
                    }
                }
                if let Some(max) = plan.max_concurrent {
                    if !slots.try_acquire(&plan.agent, max) {
                        // The agent is busy: the step stays queued for a later turn.
                        continue;
                    }
                    self.holds_slot[index] = true;
                }
            }
            let step = &mut self.steps[index];
            match run_it {
                Ok(true) => {
                    if let Some(selection) = &plan.impact {
                        self.turn.notes.push((index, selection.note.clone()));
                    }
                    step.status = Status::Running;
                    step.started_at = Some(now.timestamp.clone());
                    self.ran[index] = Some(now.instant);
                    self.in_flight += 1;
                    self.phase[index] = Phase::Attempt {
                        number: 1,
                        deadline: plan.deadline_at_start(now.instant),
                    };
                    self.turn.commands.push(Command::Start { index, number: 1 });
                    self.pending.push(Pending::Started(index));
                }
                Ok(false) => {
                    step.status = Status::Skipped;
                    step.finished_at = Some(now.timestamp.clone());
                    step.message = Some(if upstream_ok {
                        format!("skipped: `{condition}` is false")
                    } else {
                        "skipped: an earlier step failed".to_owned()
                    });
                    self.ok[index] = Some(upstream_ok);
                    self.pending.push(Pending::Finished(index));
                }
                Err(err) => {
                    step.status = Status::Failed;
                    step.finished_at = Some(now.timestamp.clone());
                    step.message = Some(format!("condition `{condition}`: {err}"));
                    self.ok[index] = Some(false);
                    self.pending.push(Pending::Finished(index));
                }
            }
            self.turn.changed.push(index);
        }
    }

    /// Once a stopped run has nothing in flight: the steps that never started end.
    fn end_unstarted(&mut self, now: &Moment) {
        let (status, message) = if self.cancelled {
            (Status::Cancelled, "cancelled before it started")
        } else {
            (Status::TimedOut, "the workflow timed out before it started")
        };
        for (index, step) in self.steps.iter_mut().enumerate() {
            if step.status == Status::Queued {
                step.status = status;
                step.finished_at = Some(now.timestamp.clone());
                step.message = Some(message.to_owned());
                self.ok[index] = Some(false);
                self.turn.changed.push(index);
            }
        }
    }

    fn run_end(&self, now: &Moment) -> RunEnd {
        let failed = self.steps.iter().zip(&self.plan).find(|(s, p)| {
            matches!(
                s.status,
                Status::Failed | Status::TimedOut | Status::Interrupted
            ) && !p.continue_on_error
        });
        let (status, message) = if self.cancelled {
            (Status::Cancelled, Some("cancelled".to_owned()))
        } else if self.timed_out {
            (
                Status::TimedOut,
                Some("the workflow's timeout ran out".to_owned()),
            )
        } else if let Some((first, _)) = failed {
            (
                Status::Failed,
                Some(format!(
                    "step `{}` {}{}",
                    first.name,
                    first.status,
                    first
                        .message
                        .as_ref()
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default()
                )),
            )
        } else {
            (Status::Succeeded, None)
        };
        let mut tests = TestSummary::default();
        for step in &self.steps {
            tests.add(TestSummary::of(&step.tests));
        }
        RunEnd {
            status,
            message,
            finished_at: now.timestamp.clone(),
            duration_ms: now
                .instant
                .saturating_duration_since(self.started)
                .as_millis() as u64,
            tests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::executor::Outcome;
    use crate::model::Attempt;
    use serde_json::json;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// `max_concurrent` slots counted in memory.
    #[derive(Default)]
    struct Slots(RefCell<HashMap<String, usize>>);

    impl AgentSlots for Slots {
        fn try_acquire(&self, agent: &str, max: usize) -> bool {
            let mut held = self.0.borrow_mut();
            let count = held.entry(agent.to_owned()).or_default();
            if *count >= max {
                return false;
            }
            *count += 1;
            true
        }

        fn release(&self, agent: &str) {
            *self.0.borrow_mut().entry(agent.to_owned()).or_default() -= 1;
        }
    }

    /// What a script does to the machine, between turns.
    #[derive(Debug, Clone)]
    enum Do {
        /// The current attempt of the step ends with this status.
        End(&'static str, Status),
        /// ... with these outputs.
        EndWith(
            &'static str,
            Status,
            &'static [(&'static str, &'static str)],
        ),
        /// The step's attempt reports it started.
        Started(&'static str),
        /// Time passes (seconds).
        Wait(u64),
        /// A cancel request.
        Cancel,
        /// An attempt that is not the current one ends (a stale message).
        Stale(&'static str, u32),
    }
    use Do::*;

    /// Drives a machine through a script; records every command, note and event.
    struct Harness {
        machine: RunMachine,
        names: Vec<String>,
        slots: Slots,
        t0: Instant,
        elapsed: Duration,
        current: HashMap<String, u32>,
        trace: Vec<String>,
        turns: Vec<Turn>,
    }

    fn record(index: usize, name: &str) -> StepRecord {
        StepRecord::queued(
            "run_1",
            index as u32,
            name.into(),
            "shell".into(),
            "run".into(),
            String::new(),
        )
    }

    impl Harness {
        fn new(workflow: Value, agents: Value, reused: &[&str]) -> Harness {
            Harness::with_plan(workflow, agents, reused, |_| {})
        }

        /// [`Harness::new`] with the plan edited before the machine starts.
        fn with_plan(
            workflow: Value,
            agents: Value,
            reused: &[&str],
            edit: impl FnOnce(&mut Vec<StepPlan>),
        ) -> Harness {
            let spec = WorkflowSpec::compile(&workflow);
            let agents: BTreeMap<String, Value> = agents
                .as_object()
                .map(|a| a.clone().into_iter().collect())
                .unwrap_or_default();
            let names: Vec<String> = spec.steps.iter().map(|s| s.name.clone()).collect();
            let steps = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let mut step = record(i, name);
                    if reused.contains(&name.as_str()) {
                        step.status = Status::Succeeded;
                    }
                    step
                })
                .collect();
            let t0 = Instant::now();
            let limits = Limits {
                max_parallel: spec.max_parallel.unwrap_or(4),
                timeout: spec.timeout,
            };
            let mut scope = Scope::default();
            scope.params.insert("target".into(), json!("staging"));
            let mut planned = plan(&spec, &agents);
            edit(&mut planned);
            let mut harness = Harness {
                machine: RunMachine::new(planned, steps, scope, limits, t0),
                names,
                slots: Slots::default(),
                t0,
                elapsed: Duration::ZERO,
                current: HashMap::new(),
                trace: Vec::new(),
                turns: Vec::new(),
            };
            harness.turn();
            harness
        }

        fn now(&self) -> Moment {
            Moment {
                instant: self.t0 + self.elapsed,
                timestamp: format!("t+{}", self.elapsed.as_secs()),
            }
        }

        fn index(&self, name: &str) -> usize {
            self.names.iter().position(|n| n == name).unwrap()
        }

        fn turn(&mut self) {
            let mut turn = Turn::default();
            self.machine.advance(&self.now(), &self.slots, &mut turn);
            for (index, note) in &turn.notes {
                self.trace
                    .push(format!("note {}: {note}", self.names[*index]));
            }
            for command in &turn.commands {
                self.trace.push(match *command {
                    Command::Start { index, number } => {
                        self.current.insert(self.names[index].clone(), number);
                        format!("start {}#{number}", self.names[index])
                    }
                    Command::Stop { index, reason } => {
                        format!("stop {} {reason:?}", self.names[index])
                    }
                });
            }
            if let Some(end) = &turn.run_end {
                self.trace.push(format!("run {}", end.status));
            }
            self.turns.push(turn);
        }

        fn finish(&mut self, name: &str, number: u32, status: Status, outputs: &[(&str, &str)]) {
            let index = self.index(name);
            let finished = AttemptFinished {
                outcome: Outcome {
                    status: Some(status),
                    message: (status != Status::Succeeded).then(|| format!("attempt {number}")),
                    outputs: outputs
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), json!(v)))
                        .collect(),
                    ..Outcome::default()
                },
                attempt: Some(Attempt {
                    number,
                    status,
                    started_at: String::new(),
                    finished_at: String::new(),
                    duration_ms: 0,
                    exit_code: None,
                    message: None,
                    cpu_seconds: None,
                    max_rss_bytes: None,
                    orphans_killed: None,
                    worker: None,
                }),
            };
            let input = Input::AttemptFinished {
                index,
                number,
                finished: Box::new(finished),
            };
            self.machine.handle(input, &self.now(), &self.slots);
        }

        fn play(&mut self, script: &[Do]) {
            for action in script {
                match action.clone() {
                    End(name, status) => self.finish(name, self.current[name], status, &[]),
                    EndWith(name, status, outputs) => {
                        self.finish(name, self.current[name], status, outputs)
                    }
                    Stale(name, number) => self.finish(name, number, Status::Failed, &[]),
                    Started(name) => {
                        let input = Input::AttemptStarted {
                            index: self.index(name),
                            number: self.current[name],
                            at: self.t0 + self.elapsed,
                        };
                        self.machine.handle(input, &self.now(), &self.slots);
                    }
                    Wait(seconds) => self.elapsed += Duration::from_secs(seconds),
                    Cancel => self
                        .machine
                        .handle(Input::CancelRequested, &self.now(), &self.slots),
                }
                self.turn();
            }
        }

        fn step(&self, name: &str) -> &StepRecord {
            &self.machine.steps()[self.index(name)]
        }

        fn statuses(&self) -> String {
            self.machine
                .steps()
                .iter()
                .map(|s| format!("{}={}", s.name, s.status))
                .collect::<Vec<_>>()
                .join(" ")
        }
    }

    /// One scenario: a workflow, Agent manifests, steps kept from an earlier run, a
    /// script, and what must come out: the commands (and notes and the run's end) in
    /// order, then each step's final status.
    struct Case {
        name: &'static str,
        workflow: Value,
        agents: Value,
        reused: &'static [&'static str],
        script: Vec<Do>,
        trace: &'static [&'static str],
        statuses: &'static str,
    }

    fn case(name: &'static str, workflow: Value, script: Vec<Do>) -> Case {
        Case {
            name,
            workflow,
            agents: json!({}),
            reused: &[],
            script,
            trace: &[],
            statuses: "",
        }
    }

    impl Case {
        fn expect(mut self, trace: &'static [&'static str], statuses: &'static str) -> Case {
            self.trace = trace;
            self.statuses = statuses;
            self
        }
        fn agents(mut self, agents: Value) -> Case {
            self.agents = agents;
            self
        }
        fn reused(mut self, reused: &'static [&'static str]) -> Case {
            self.reused = reused;
            self
        }
    }

    fn check(cases: Vec<Case>) {
        for case in cases {
            let mut harness = Harness::new(case.workflow, case.agents, case.reused);
            harness.play(&case.script);
            assert_eq!(harness.trace, case.trace, "{}: commands", case.name);
            assert_eq!(harness.statuses(), case.statuses, "{}: statuses", case.name);
        }
    }

    #[test]
    fn steps_start_in_dag_order_up_to_max_parallel() {
        use Status::*;
        check(vec![
            case(
                "diamond",
                json!({"steps": [
                    {"name": "a"},
                    {"name": "b", "depends_on": ["a"]},
                    {"name": "c", "depends_on": ["a"]},
                    {"name": "d", "depends_on": ["b", "c"]},
                ]}),
                vec![
                    End("a", Succeeded),
                    End("b", Succeeded),
                    End("c", Succeeded),
                    End("d", Succeeded),
                ],
            )
            .expect(
                &[
                    "start a#1",
                    "start b#1",
                    "start c#1",
                    "start d#1",
                    "run succeeded",
                ],
                "a=succeeded b=succeeded c=succeeded d=succeeded",
            ),
            case(
                "fan-out and fan-in under max_parallel 2",
                json!({"max_parallel": 2, "steps": [
                    {"name": "root"},
                    {"name": "x", "depends_on": ["root"]},
                    {"name": "y", "depends_on": ["root"]},
                    {"name": "z", "depends_on": ["root"]},
                    {"name": "join", "depends_on": ["x", "y", "z"]},
                ]}),
                vec![
                    End("root", Succeeded),
                    End("y", Succeeded),
                    End("x", Succeeded),
                    End("z", Succeeded),
                    End("join", Succeeded),
                ],
            )
            .expect(
                &[
                    "start root#1",
                    "start x#1",
                    "start y#1",
                    "start z#1",
                    "start join#1",
                    "run succeeded",
                ],
                "root=succeeded x=succeeded y=succeeded z=succeeded join=succeeded",
            ),
            case(
                "independent roots run side by side up to the limit",
                json!({"max_parallel": 2, "steps": [
                    {"name": "a", "depends_on": []},
                    {"name": "b", "depends_on": []},
                    {"name": "c", "depends_on": []},
                ]}),
                vec![
                    End("b", Succeeded),
                    End("a", Succeeded),
                    End("c", Succeeded),
                ],
            )
            .expect(
                &["start a#1", "start b#1", "start c#1", "run succeeded"],
                "a=succeeded b=succeeded c=succeeded",
            ),
            case(
                "without depends_on, listed order",
                json!({"steps": [{"name": "a"}, {"name": "b"}]}),
                vec![End("a", Succeeded), End("b", Succeeded)],
            )
            .expect(
                &["start a#1", "start b#1", "run succeeded"],
                "a=succeeded b=succeeded",
            ),
            case(
                "a failure skips what follows and fails the run",
                json!({"steps": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}),
                vec![End("a", Failed)],
            )
            .expect(&["start a#1", "run failed"], "a=failed b=skipped c=skipped"),
            case(
                "an agent's max_concurrent holds its steps back across the run",
                json!({"steps": [
                    {"name": "a", "depends_on": [], "agent": "db"},
                    {"name": "b", "depends_on": [], "agent": "db"},
                    {"name": "c", "depends_on": []},
                ]}),
                vec![
                    End("a", Succeeded),
                    End("b", Succeeded),
                    End("c", Succeeded),
                ],
            )
            .agents(json!({"db": {"type": "shell", "max_concurrent": 1}}))
            .expect(
                &["start a#1", "start c#1", "start b#1", "run succeeded"],
                "a=succeeded b=succeeded c=succeeded",
            ),
            case(
                "a from-failed re-run starts after the steps it keeps",
                json!({"steps": [
                    {"name": "build"},
                    {"name": "unit", "depends_on": ["build"]},
                    {"name": "lint", "depends_on": ["build"]},
                ]}),
                vec![End("unit", Succeeded)],
            )
            .reused(&["build", "lint"])
            .expect(
                &["start unit#1", "run succeeded"],
                "build=succeeded unit=succeeded lint=succeeded",
            ),
        ]);
    }

    #[test]
    fn retries_count_attempts_and_wait_doubling_delays() {
        use Status::*;
        check(vec![
            case(
                "retries exhausted",
                json!({"steps": [{"name": "a", "retries": 2, "retry_delay": 1}, {"name": "b"}]}),
                vec![
                    End("a", Failed),
                    Wait(1),
                    End("a", Failed),
                    Wait(1),
                    Wait(1),
                    End("a", Failed),
                ],
            )
            .expect(
                &[
                    "start a#1",
                    "note a: attempt 1 failed; retrying in 1s",
                    "start a#2",
                    "note a: attempt 2 failed; retrying in 2s",
                    "start a#3",
                    "run failed",
                ],
                "a=failed b=skipped",
            ),
            case(
                "success on a retry",
                json!({"steps": [{"name": "a", "retries": 3, "retry_delay": 5}, {"name": "b"}]}),
                vec![
                    End("a", TimedOut),
                    Wait(4),
                    Wait(1),
                    End("a", Succeeded),
                    End("b", Succeeded),
                ],
            )
            .expect(
                &[
                    "start a#1",
                    "note a: attempt 1 timed_out; retrying in 5s",
                    "start a#2",
                    "start b#1",
                    "run succeeded",
                ],
                "a=succeeded b=succeeded",
            ),
            case(
                "a cancelled attempt is not retried",
                json!({"steps": [{"name": "a", "retries": 3}]}),
                vec![Cancel, End("a", Cancelled)],
            )
            .expect(
                &["start a#1", "stop a Cancel", "run cancelled"],
                "a=cancelled",
            ),
            case(
                "a stale attempt's end is ignored",
                json!({"steps": [{"name": "a", "retries": 1, "retry_delay": 1}]}),
                vec![
                    End("a", Failed),
                    Stale("a", 1),
                    Wait(1),
                    Stale("a", 1),
                    End("a", Succeeded),
                ],
            )
            .expect(
                &[
                    "start a#1",
                    "note a: attempt 1 failed; retrying in 1s",
                    "start a#2",
                    "run succeeded",
                ],
                "a=succeeded",
            ),
        ]);
    }

    #[test]
    fn a_retried_step_keeps_every_attempt_and_reports_the_retry() {
        let mut harness = Harness::new(
            json!({"steps": [{"name": "a", "retries": 1, "retry_delay": 2}]}),
            json!({}),
            &[],
        );
        harness.play(&[End("a", Status::Failed)]);
        let retry = harness.turns.last().unwrap();
        assert_eq!(retry.changed, [0], "the attempt is written");
        assert!(matches!(
            &retry.events[..],
            [Event::StepRetrying { step, delay }]
                if step.status == Status::Running && *delay == Duration::from_secs(2)
        ));
        assert_eq!(
            harness.machine.next_wake(),
            Some(harness.t0 + Duration::from_secs(2))
        );
        harness.play(&[Wait(2), End("a", Status::Succeeded)]);
        let step = harness.step("a");
        let numbers: Vec<u32> = step.attempts.iter().map(|a| a.number).collect();
        assert_eq!(numbers, [1, 2]);
        assert_eq!(step.duration_ms, Some(2000));
        assert_eq!(step.finished_at.as_deref(), Some("t+2"));
    }

    #[test]
    fn timeouts_stop_attempts_and_end_the_run() {
        use Status::*;
        check(vec![
            case(
                "a step's timeout counts from its attempt's start",
                json!({"steps": [{"name": "a", "timeout": "5s"}]}),
                vec![Wait(2), Started("a"), Wait(4), Wait(1), End("a", TimedOut)],
            )
            .expect(
                &["start a#1", "stop a Timeout", "run failed"],
                "a=timed_out",
            ),
            case(
                "a step placed on workers: waiting for one does not count against its timeout",
                json!({"steps": [
                    {"name": "a", "timeout": "5s", "runs_on": {"os": "linux"}},
                    {"name": "b", "timeout": "5s", "runs_on": {}, "depends_on": []},
                ]}),
                vec![
                    Wait(30),
                    Started("a"),
                    Started("b"),
                    Wait(4),
                    End("a", Succeeded),
                    Wait(1),
                    End("b", TimedOut),
                ],
            )
            .expect(
                &["start a#1", "start b#1", "stop b Timeout", "run failed"],
                "a=succeeded b=timed_out",
            ),
            case(
                "a timed-out attempt is retried",
                json!({"steps": [{"name": "a", "timeout": 5, "retries": 1, "retry_delay": 1}]}),
                vec![
                    Wait(5),
                    End("a", TimedOut),
                    Wait(1),
                    Started("a"),
                    Wait(5),
                    End("a", TimedOut),
                ],
            )
            .expect(
                &[
                    "start a#1",
                    "stop a Timeout",
                    "note a: attempt 1 timed_out; retrying in 1s",
                    "start a#2",
                    "stop a Timeout",
                    "run failed",
                ],
                "a=timed_out",
            ),
            case(
                "an agent's default timeout applies; zero on the step means none",
                json!({"steps": [
                    {"name": "a", "agent": "slow", "depends_on": []},
                    {"name": "b", "agent": "slow", "timeout": 0, "depends_on": []},
                ]}),
                vec![Wait(3), End("a", TimedOut), Wait(100), End("b", Succeeded)],
            )
            .agents(json!({"slow": {"type": "shell", "timeout": "3s"}}))
            .expect(
                &["start a#1", "start b#1", "stop a Timeout", "run failed"],
                "a=timed_out b=succeeded",
            ),
            case(
                "the run's timeout stops what runs and ends what never started",
                json!({"timeout": 10, "steps": [
                    {"name": "a"},
                    {"name": "b", "retries": 2},
                    {"name": "c"},
                ]}),
                vec![End("a", Succeeded), Wait(10), End("b", TimedOut)],
            )
            .expect(
                &["start a#1", "start b#1", "stop b Timeout", "run timed_out"],
                "a=succeeded b=timed_out c=timed_out",
            ),
            case(
                "the run's timeout ends a step waiting to retry",
                json!({"timeout": 10, "steps": [{"name": "a", "retries": 1, "retry_delay": 30}]}),
                vec![Wait(5), End("a", Failed), Wait(5)],
            )
            .expect(
                &[
                    "start a#1",
                    "note a: attempt 1 failed; retrying in 30s",
                    "run timed_out",
                ],
                "a=timed_out",
            ),
        ]);
    }

    #[test]
    fn cancel_stops_running_steps_and_ends_pending_ones() {
        use Status::*;
        check(vec![
            case(
                "running steps are told to stop; pending ones end cancelled",
                json!({"steps": [
                    {"name": "a", "depends_on": []},
                    {"name": "b", "depends_on": []},
                    {"name": "c", "depends_on": ["a", "b"]},
                ]}),
                vec![Cancel, End("a", Cancelled), End("b", Cancelled)],
            )
            .expect(
                &[
                    "start a#1",
                    "start b#1",
                    "stop a Cancel",
                    "stop b Cancel",
                    "run cancelled",
                ],
                "a=cancelled b=cancelled c=cancelled",
            ),
            case(
                "nothing starts after a cancel, even once what ran succeeded",
                json!({"steps": [{"name": "a"}, {"name": "b"}]}),
                vec![Cancel, End("a", Succeeded)],
            )
            .expect(
                &["start a#1", "stop a Cancel", "run cancelled"],
                "a=succeeded b=cancelled",
            ),
            case(
                "a step waiting to retry ends cancelled at once",
                json!({"steps": [{"name": "a", "retries": 1, "retry_delay": 60}, {"name": "b"}]}),
                vec![End("a", Failed), Cancel],
            )
            .expect(
                &[
                    "start a#1",
                    "note a: attempt 1 failed; retrying in 1m",
                    "run cancelled",
                ],
                "a=cancelled b=cancelled",
            ),
            case(
                "a second cancel request changes nothing",
                json!({"steps": [{"name": "a"}]}),
                vec![Cancel, Cancel, End("a", Cancelled)],
            )
            .expect(
                &["start a#1", "stop a Cancel", "run cancelled"],
                "a=cancelled",
            ),
        ]);
    }

    #[test]
    fn continue_on_error_and_conditions_decide_what_follows() {
        use Status::*;
        check(vec![
            case(
                "continue_on_error: what follows runs and the run succeeds",
                json!({"steps": [{"name": "a", "continue_on_error": true}, {"name": "b"}]}),
                vec![End("a", Failed), End("b", Succeeded)],
            )
            .expect(&["start a#1", "start b#1", "run succeeded"], "a=failed b=succeeded"),
            case(
                "continue_on_error does not cover a cancel",
                json!({"steps": [{"name": "a", "continue_on_error": true}, {"name": "b"}]}),
                vec![End("a", Cancelled)],
            )
            .expect(&["start a#1", "run succeeded"], "a=cancelled b=skipped"),
            case(
                "always(), failure() and success() after a failure; skipped dependents",
                json!({"steps": [
                    {"name": "a"},
                    {"name": "cleanup", "depends_on": ["a"], "if": "always()"},
                    {"name": "notify", "depends_on": ["a"], "if": "failure()"},
                    {"name": "deploy", "depends_on": ["a"], "if": "success()"},
                    {"name": "after_deploy", "depends_on": ["deploy"]},
                    {"name": "after_cleanup", "depends_on": ["cleanup"]},
                ]}),
                vec![End("a", Failed), End("cleanup", Succeeded), End("notify", Succeeded)],
            )
            .expect(
                &["start a#1", "start cleanup#1", "start notify#1", "run failed"],
                "a=failed cleanup=succeeded notify=succeeded deploy=skipped after_deploy=skipped after_cleanup=skipped",
            ),
            case(
                "a false condition skips the step alone; outputs and params are seen",
                json!({"steps": [
                    {"name": "build"},
                    {"name": "prod_only", "depends_on": ["build"], "if": "params.target == 'production'"},
                    {"name": "after", "depends_on": ["prod_only"]},
                    {"name": "tagged", "depends_on": ["build"], "if": "steps.build.outputs.tag == 'v1'"},
                ]}),
                vec![EndWith("build", Succeeded, &[("tag", "v1")]), End("after", Succeeded), End("tagged", Succeeded)],
            )
            .expect(
                &["start build#1", "start after#1", "start tagged#1", "run succeeded"],
                "build=succeeded prod_only=skipped after=succeeded tagged=succeeded",
            ),
            case(
                "a condition that cannot be evaluated fails its step",
                json!({"steps": [{"name": "a", "if": "steps.a.outputs.x ==="}, {"name": "b"}]}),
                vec![],
            )
            .expect(&["run failed"], "a=failed b=skipped"),
        ]);
    }

    #[test]
    fn impact_selection_skips_an_unaffected_step_as_a_false_condition_would() {
        let mut harness = Harness::with_plan(
            json!({"steps": [
                {"name": "build"},
                {"name": "api", "depends_on": ["build"]},
                {"name": "web", "depends_on": ["build"]},
                {"name": "after_web", "depends_on": ["web"]},
                {"name": "broken", "depends_on": ["build"], "if": "failure()"},
            ]}),
            json!({}),
            &[],
            |plans| {
                plans[1].impact = Some(Selection {
                    skip: None,
                    note: "impact selection: suite `api` runs".into(),
                });
                for index in [2, 4] {
                    plans[index].impact = Some(Selection {
                        skip: Some("no change under web/**".into()),
                        note: "impact selection: suite `web` skipped".into(),
                    });
                }
            },
        );
        harness.play(&[End("build", Status::Succeeded)]);
        let turn = harness.turns.last().unwrap().clone();
        harness.play(&[
            End("api", Status::Succeeded),
            End("after_web", Status::Succeeded),
        ]);
        assert_eq!(
            harness.step("web").message.as_deref(),
            Some("skipped: no change under web/**")
        );
        assert_eq!(harness.step("web").status, Status::Skipped);
        assert_eq!(
            harness.step("broken").message.as_deref(),
            Some("skipped: `failure()` is false"),
            "a false condition wins over selection"
        );
        assert_eq!(
            turn.notes,
            [
                (1, "impact selection: suite `api` runs".to_owned()),
                (2, "impact selection: suite `web` skipped".to_owned()),
            ]
        );
        assert_eq!(harness.step("after_web").status, Status::Succeeded);
        assert_eq!(harness.step("api").status, Status::Succeeded);
    }

    #[test]
    fn a_turn_reports_finished_steps_before_started_ones_in_one_batch() {
        let mut harness = Harness::new(
            json!({"steps": [
                {"name": "a"},
                {"name": "b", "depends_on": ["a"]},
                {"name": "c", "depends_on": ["a"], "if": "failure()"},
            ]}),
            json!({}),
            &[],
        );
        harness.play(&[End("a", Status::Succeeded)]);
        let turn = harness.turns.last().unwrap();
        assert_eq!(turn.changed, [0, 1, 2], "one batch");
        assert_eq!(turn.ended, [0], "only a ran to its end");
        let kinds: Vec<String> = turn
            .events
            .iter()
            .map(|event| match event {
                Event::StepStarted { step } => format!("started {}", step.name),
                Event::StepFinished { step } => format!("finished {} {}", step.name, step.status),
                Event::StepRetrying { step, .. } => format!("retrying {}", step.name),
            })
            .collect();
        assert_eq!(
            kinds,
            ["finished a succeeded", "started b", "finished c skipped"],
            "what finished is reported before what the turn started"
        );
        assert_eq!(
            harness.step("c").message.as_deref(),
            Some("skipped: `failure()` is false")
        );
        assert!(harness.machine.scope().steps.contains_key("a"));
    }

    #[test]
    fn the_run_end_names_the_first_failure_and_counts_time() {
        let mut harness = Harness::new(
            json!({"steps": [{"name": "a", "depends_on": []}, {"name": "b", "depends_on": []}]}),
            json!({}),
            &[],
        );
        harness.play(&[Wait(3), End("b", Status::Failed), End("a", Status::Failed)]);
        let end = harness.turns.last().unwrap().run_end.clone().unwrap();
        assert_eq!(end.status, Status::Failed);
        assert_eq!(end.message.as_deref(), Some("step `a` failed: attempt 1"));
        assert_eq!((end.duration_ms, end.finished_at.as_str()), (3000, "t+3"));
        assert!(harness.machine.is_done());
        let mut after = Turn::default();
        harness
            .machine
            .advance(&harness.now(), &harness.slots, &mut after);
        assert!(after.run_end.is_none() && after.events.is_empty());
    }

    #[test]
    fn a_finish_ends_the_step_only_when_no_retry_follows() {
        let harness = Harness::new(
            json!({"steps": [{"name": "a", "retries": 1}]}),
            json!({}),
            &[],
        );
        let ended = |status| AttemptFinished {
            outcome: Outcome {
                status: Some(status),
                ..Outcome::default()
            },
            attempt: Some(Attempt {
                number: 1,
                status,
                started_at: String::new(),
                finished_at: String::new(),
                duration_ms: 0,
                exit_code: None,
                message: None,
                cpu_seconds: None,
                max_rss_bytes: None,
                orphans_killed: None,
                worker: None,
            }),
        };
        assert!(!harness.machine.ends_step(0, 1, &ended(Status::Failed)));
        assert!(harness.machine.ends_step(0, 1, &ended(Status::Succeeded)));
        assert!(
            !harness.machine.ends_step(0, 2, &ended(Status::Succeeded)),
            "not in flight"
        );
        let before_start = AttemptFinished {
            attempt: None,
            ..ended(Status::Failed)
        };
        assert!(
            harness.machine.ends_step(0, 1, &before_start),
            "nothing ran: no retry"
        );
    }

    /// A step's record for a resumed run: name, status, attempts made, outputs.
    type Kept = (
        &'static str,
        Status,
        u32,
        &'static [(&'static str, &'static str)],
    );

    /// A run rebuilt after a restart from records given as `(name, status, attempts made,
    /// outputs)`: the attempts in flight it finds, then a script, checked like [`Case`].
    struct ResumeCase {
        name: &'static str,
        workflow: Value,
        records: &'static [Kept],
        in_flight: &'static [(&'static str, u32)],
        script: Vec<Do>,
        trace: &'static [&'static str],
        statuses: &'static str,
    }

    fn resumed(case: &ResumeCase) -> Harness {
        let spec = WorkflowSpec::compile(&case.workflow);
        let names: Vec<String> = spec.steps.iter().map(|s| s.name.clone()).collect();
        let steps: Vec<StepRecord> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut step = record(i, name);
                let (_, status, made, outputs) = case
                    .records
                    .iter()
                    .find(|r| r.0 == name)
                    .copied()
                    .unwrap_or((name, Status::Queued, 0, &[]));
                step.status = status;
                step.outputs = outputs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), json!(v)))
                    .collect();
                step.attempts = (1..=made)
                    .map(|number| Attempt {
                        number,
                        status: Status::Failed,
                        started_at: String::new(),
                        finished_at: String::new(),
                        duration_ms: 0,
                        exit_code: None,
                        message: None,
                        cpu_seconds: None,
                        max_rss_bytes: None,
                        orphans_killed: None,
                        worker: None,
                    })
                    .collect();
                step
            })
            .collect();
        let t0 = Instant::now();
        let limits = Limits {
            max_parallel: spec.max_parallel.unwrap_or(4),
            timeout: spec.timeout,
        };
        let slots = Slots::default();
        let now = Moment {
            instant: t0,
            timestamp: "t+0".into(),
        };
        let (machine, in_flight) = RunMachine::resume(
            plan(&spec, &BTreeMap::new()),
            steps,
            Scope::default(),
            limits,
            t0,
            &now,
            &slots,
        );
        let found: Vec<(String, u32)> = in_flight
            .iter()
            .map(|f| (names[f.index].clone(), f.number))
            .collect();
        let expected: Vec<(String, u32)> = case
            .in_flight
            .iter()
            .map(|(n, k)| ((*n).to_owned(), *k))
            .collect();
        assert_eq!(found, expected, "{}: attempts in flight", case.name);
        let current = found.into_iter().collect();
        let mut harness = Harness {
            machine,
            names,
            slots,
            t0,
            elapsed: Duration::ZERO,
            current,
            trace: Vec::new(),
            turns: Vec::new(),
        };
        harness.turn();
        harness
    }

    #[test]
    fn a_resumed_run_goes_on_from_its_records() {
        let diamond = json!({"name": "d", "steps": [
            {"name": "a", "command": ["true"]},
            {"name": "b", "depends_on": ["a"], "retries": 1, "command": ["echo", "{{ steps.a.outputs.x }}"]},
            {"name": "c", "depends_on": ["a"], "retries": 2, "command": ["true"]},
            {"name": "d", "depends_on": ["b", "c"], "command": ["true"]},
        ]});
        let cases = vec![
            ResumeCase {
                name: "running steps are in flight, finished ones stay, queued ones wait",
                workflow: diamond.clone(),
                records: &[
                    ("a", Status::Succeeded, 0, &[("x", "1")]),
                    ("b", Status::Running, 0, &[]),
                    ("c", Status::Running, 1, &[]),
                ],
                in_flight: &[("b", 1), ("c", 2)],
                script: vec![
                    End("b", Status::Succeeded),
                    End("c", Status::Succeeded),
                    End("d", Status::Succeeded),
                ],
                trace: &["start d#1", "run succeeded"],
                statuses: "a=succeeded b=succeeded c=succeeded d=succeeded",
            },
            ResumeCase {
                name: "an attempt ended by the restart is retried while retries remain",
                workflow: diamond.clone(),
                records: &[
                    ("a", Status::Succeeded, 0, &[("x", "1")]),
                    ("b", Status::Running, 0, &[]),
                    ("c", Status::Running, 2, &[]),
                ],
                in_flight: &[("b", 1), ("c", 3)],
                script: vec![
                    End("b", Status::Failed),
                    End("c", Status::Failed),
                    Wait(1),
                    End("b", Status::Succeeded),
                ],
                trace: &[
                    "note b: attempt 1 failed; retrying in 1s",
                    "start b#2",
                    "run failed",
                ],
                statuses: "a=succeeded b=succeeded c=failed d=skipped",
            },
            ResumeCase {
                name: "a failure with continue_on_error and a skipped step count as before: what waited on them starts at once",
                workflow: json!({"name": "s", "steps": [
                    {"name": "a", "continue_on_error": true, "command": ["false"]},
                    {"name": "b", "depends_on": ["a"], "if": "false", "command": ["true"]},
                    {"name": "c", "depends_on": ["b"], "command": ["true"]},
                    {"name": "d", "depends_on": ["a"], "command": ["true"]},
                ]}),
                records: &[
                    ("a", Status::Failed, 0, &[]),
                    ("b", Status::Skipped, 0, &[]),
                    ("d", Status::Running, 0, &[]),
                ],
                in_flight: &[("d", 1)],
                script: vec![End("d", Status::Succeeded), End("c", Status::Succeeded)],
                trace: &["start c#1", "run succeeded"],
                statuses: "a=failed b=skipped c=succeeded d=succeeded",
            },
            ResumeCase {
                name: "steps in flight count against max_parallel",
                workflow: json!({"name": "p", "max_parallel": 1, "steps": [
                    {"name": "a", "depends_on": [], "command": ["true"]},
                    {"name": "b", "depends_on": [], "command": ["true"]},
                ]}),
                records: &[("a", Status::Running, 0, &[])],
                in_flight: &[("a", 1)],
                script: vec![End("a", Status::Succeeded), End("b", Status::Succeeded)],
                trace: &["start b#1", "run succeeded"],
                statuses: "a=succeeded b=succeeded",
            },
        ];
        for case in cases {
            let mut harness = resumed(&case);
            harness.play(&case.script);
            assert_eq!(harness.trace, case.trace, "{}", case.name);
            assert_eq!(harness.statuses(), case.statuses, "{}", case.name);
        }
    }

    #[test]
    fn a_resumed_run_sees_the_outputs_of_steps_finished_before_the_restart() {
        let case = ResumeCase {
            name: "scope",
            workflow: json!({"name": "o", "steps": [
                {"name": "a", "command": ["true"]},
                {"name": "b", "command": ["true"]},
            ]}),
            records: &[
                ("a", Status::Succeeded, 0, &[("token", "t7")]),
                ("b", Status::Running, 0, &[]),
            ],
            in_flight: &[("b", 1)],
            script: Vec::new(),
            trace: &[],
            statuses: "a=succeeded b=running",
        };
        let harness = resumed(&case);
        let a = &harness.machine.scope().steps["a"];
        assert_eq!(a.status, Status::Succeeded);
        assert_eq!(a.outputs["token"], json!("t7"));
        assert_eq!(harness.statuses(), case.statuses);
    }

    #[test]
    fn instants_are_read_back_from_timestamps() {
        let now = Moment {
            instant: Instant::now(),
            timestamp: "2026-01-01T00:01:00.000Z".into(),
        };
        let at = instant_of("2026-01-01T00:00:30.000Z", &now);
        assert_eq!(now.instant - at, Duration::from_secs(30));
        assert_eq!(instant_of("not a time", &now), now.instant);
        assert_eq!(
            instant_of("2026-01-01T00:02:00.000Z", &now),
            now.instant,
            "ahead"
        );
    }
}
