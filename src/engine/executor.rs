//! The executor seam: the engine hands each step attempt to an [`Executor`] it does not
//! own and hears back what happened as [`AttemptEvent`]s on a channel. The executor runs
//! one attempt — prepares the step (`{{ }}` substitution, environment and secrets), runs its
//! agent, reads its outputs — and reports; retries, timeouts, `if:` conditions,
//! `continue_on_error`, cancel and every durable record stay in the engine
//! ([`super::machine`], [`super::run`]). The local executor
//! (`agents::local::LocalExecutor`) runs the built-in agents and plugins as processes of
//! this machine; `workers::dispatch::Dispatcher` runs attempts of steps with `runs_on` on
//! workers over NATS, and `workers::route::Routing` picks between them.
//!
//! ```text
//!  engine::run (driver)           Executor                  attempt
//!  machine.advance ── Start ──▶ start(StepAttempt, sender) ──▶ thread/worker
//!        ▲          ◀── AttemptStop (stop: timeout, cancel) ──┘   │
//!        └──── handle ◀── AttemptMessage {Started, Log, Finished} ◀┘
//! ```

use std::fmt;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::env::EnvValue;
use super::expand::Scope;
pub use super::process::StopReason;
use crate::model::{Attempt, RunRecord, Status, StepRecord, TestCase};
pub use crate::spec::workflow::Placement;

/// Runs step attempts and reports on them.
pub trait Executor: Send + Sync + fmt::Debug {
    /// Starts one attempt and returns at once. Every event about it goes to `events`
    /// tagged with its step and attempt number, ending with exactly one
    /// [`AttemptEvent::Finished`]. The handle returned stops it.
    fn start(&self, attempt: StepAttempt, events: Sender<AttemptMessage>) -> Arc<dyn AttemptStop>;

    /// Takes over an attempt that a process which ended had started (a controller
    /// restart, [`super::run::recover_or_resume`]): it carries on where it runs, and every
    /// event about it from now on goes to `events`, ending with exactly one
    /// [`AttemptEvent::Finished`] (what it reported while nobody listened included, once).
    /// `None` when this executor cannot: the local executor's attempts died with that
    /// process.
    fn adopt(
        &self,
        attempt: StepAttempt,
        events: Sender<AttemptMessage>,
    ) -> Option<Arc<dyn AttemptStop>> {
        let _ = (attempt, events);
        None
    }

    /// Writes again, with the run's final state, a report a report step of this executor
    /// wrote while the run was going. The error says what could not be done.
    fn rewrite_report(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        data: &ReportData,
    ) -> Result<(), String>;
}

/// Stops a running attempt: its processes are stopped, and it finishes as timed out or
/// cancelled. The first reason given is kept.
pub trait AttemptStop: Send + Sync {
    /// Tells the attempt to stop.
    fn stop(self: Arc<Self>, reason: StopReason);
}

/// One attempt of one step: everything an executor needs, owned.
#[derive(Debug, Clone)]
pub struct StepAttempt {
    /// The run.
    pub run_id: String,
    /// The run's workflow.
    pub workflow_id: String,
    /// The step's position in the run (events name it).
    pub index: usize,
    /// The step's name.
    pub step: String,
    /// The attempt's number, from 1.
    pub number: u32,
    /// Attempts the step may make in all (its retries plus one).
    pub attempts: u32,
    /// The step's agent.
    pub agent: String,
    /// The action it asks of the agent.
    pub action: String,
    /// The step as the (template-expanded) workflow declares it.
    pub spec: Arc<Value>,
    /// The Agent manifest configuring its agent, if any.
    pub agent_config: Option<Value>,
    /// What `{{ }}` in the step sees: parameters, `run.*`, the steps finished before it.
    pub scope: Arc<Scope>,
    /// The run's variables for every step (`ORCHESTRATOR_*`, parameters, the workflow's
    /// `env:`), secrets still as references.
    pub env: Arc<[(String, EnvValue)]>,
    /// The step's log, relative to the log directory.
    pub log: String,
    /// The step's time limit (the engine enforces it; agents that wait on something
    /// other than a process read it).
    pub timeout: Option<Duration>,
    /// For report steps: the run so far and the previous one.
    pub reports: Option<Arc<ReportData>>,
    /// The worker labels it needs, when it declares `runs_on`; `None`: it runs wherever
    /// the executor runs steps.
    pub placement: Option<Placement>,
}

/// An event about an attempt, tagged with the attempt.
#[derive(Debug)]
pub struct AttemptMessage {
    /// The step's position in the run.
    pub index: usize,
    /// The attempt's number.
    pub number: u32,
    /// What happened.
    pub event: AttemptEvent,
}

/// What an executor reports about an attempt.
#[derive(Debug)]
pub enum AttemptEvent {
    /// The attempt is under way (its agent is about to run): the step's timeout counts
    /// from here. Nothing else does, so an executor may leave it out for an attempt without
    /// a timeout (the local one does: a chain of steps then costs one turn per step).
    Started {
        /// When.
        at: Instant,
    },
    /// Output for the step's log, masked, from an executor whose processes write
    /// elsewhere (the local executor writes the step's log file itself).
    Log(Vec<u8>),
    /// The attempt ended; nothing follows.
    Finished(Box<AttemptFinished>),
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFinished {
    /// Its outcome: status, exit code, message, outputs, test cases, artifacts.
    pub outcome: Outcome,
    /// The attempt's record (times, exit code, CPU, peak RSS, orphans killed); `None`
    /// when the step failed before an attempt could start (no agent, a disabled agent,
    /// a substitution or a secret that failed).
    pub attempt: Option<Attempt>,
}

/// How a step ended, as its agent reports it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// Succeeded, Failed, TimedOut or Cancelled.
    pub status: Option<Status>,
    /// The exit code of the process that decided it, if one did.
    pub exit_code: Option<i32>,
    /// Why it failed, or a one-line summary.
    pub message: Option<String>,
    /// Outputs for `steps.<name>.outputs.*`.
    pub outputs: Map<String, Value>,
    /// Test cases found.
    pub tests: Vec<TestCase>,
    /// Files produced, relative to the project directory where possible (the engine
    /// copies them into the run's own directory as the step ends).
    pub artifacts: Vec<String>,
    /// The attempt's end rules out another attempt whatever the step's `retries` (a lost
    /// worker under `on_worker_lost: fail`).
    pub no_retry: bool,
}

/// The run a report step reports on, and the workflow's previous run to compare with.
#[derive(Debug, Clone)]
pub struct ReportData {
    /// The run so far.
    pub current: (RunRecord, Vec<StepRecord>),
    /// The previous run of the same workflow.
    pub previous: Option<(RunRecord, Vec<StepRecord>)>,
}
