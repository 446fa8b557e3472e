//! The records of a run: the run itself, its steps and their attempts, and the test cases a
//! step reported. Plain data, stored as JSON by the store and shown by the CLI and the API.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The state of a run or a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting to start (a run waiting for a concurrency slot, a step for its dependencies).
    Queued,
    /// Started and not finished.
    Running,
    /// Finished successfully.
    Succeeded,
    /// Finished unsuccessfully.
    Failed,
    /// Stopped on request.
    Cancelled,
    /// Stopped because it ran out of time.
    TimedOut,
    /// A step that did not run: its condition was false, or an earlier step failed.
    Skipped,
    /// Found unfinished after the process that ran it went away.
    Interrupted,
}

impl Status {
    /// Whether this is a final state.
    pub fn is_finished(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }

    /// Whether a step in this state counts as a success for `success()` conditions and
    /// dependencies.
    pub fn is_success(self) -> bool {
        matches!(self, Status::Succeeded | Status::Skipped)
    }

    /// Every state, in the order runs go through them.
    pub const ALL: [Status; 8] = [
        Status::Queued,
        Status::Running,
        Status::Succeeded,
        Status::Failed,
        Status::Cancelled,
        Status::TimedOut,
        Status::Skipped,
        Status::Interrupted,
    ];

    /// The state a filter names (`run list --status`, `GET /api/runs?status=`), or the
    /// message saying which names there are: the one check both give.
    pub fn parse_filter(text: &str) -> Result<Status, String> {
        Status::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "status `{text}` is not one of {}",
                    Status::ALL.map(Status::as_str).join(", ")
                )
            })
    }

    /// The lowercase name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed_out",
            Status::Skipped => "skipped",
            Status::Interrupted => "interrupted",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Trigger {
    /// `cli`, `api`, `schedule`, `webhook` or `rerun`.
    pub kind: String,
    /// Details: the schedule id, the webhook delivery, the run re-run, the user.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

/// Counts of test cases by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TestSummary {
    /// All test cases.
    pub total: u32,
    /// Passed.
    pub passed: u32,
    /// Failed an assertion.
    pub failed: u32,
    /// Errored (an exception outside an assertion).
    pub errors: u32,
    /// Skipped.
    pub skipped: u32,
    /// Failing cases that passed in the workflow's run before (or are new).
    #[serde(default)]
    pub new_failures: u32,
    /// Failing cases that failed in the run before too.
    #[serde(default)]
    pub still_failing: u32,
    /// Passing cases that failed in the run before.
    #[serde(default)]
    pub fixed: u32,
    /// Cases with a flaky result: passed and failed on the same revision, or flipping
    /// often (see `tests` in the configuration).
    #[serde(default)]
    pub flaky: u32,
    /// Failing cases a Quarantine manifest covers: they fail no step.
    #[serde(default)]
    pub quarantined: u32,
}

impl TestSummary {
    /// Counts the cases.
    pub fn of<'a>(cases: impl IntoIterator<Item = &'a TestCase>) -> TestSummary {
        let mut summary = TestSummary::default();
        for case in cases {
            summary.total += 1;
            match case.status {
                TestStatus::Passed => summary.passed += 1,
                TestStatus::Failed => summary.failed += 1,
                TestStatus::Error => summary.errors += 1,
                TestStatus::Skipped => summary.skipped += 1,
            }
            match case.class {
                Some(TestClass::NewFailure) => summary.new_failures += 1,
                Some(TestClass::StillFailing) => summary.still_failing += 1,
                Some(TestClass::Fixed) => summary.fixed += 1,
                Some(TestClass::Flaky) => summary.flaky += 1,
                Some(TestClass::Quarantined) => summary.quarantined += 1,
                Some(TestClass::Passed | TestClass::Skipped) | None => {}
            }
        }
        summary
    }

    /// Every count, for the CLI's `tests:` line: "3 total, 2 passed, 1 failed, 0 errors, 0
    /// skipped", then the classes there are ("; 1 new failure, 1 flaky").
    pub fn line(&self) -> String {
        let mut line = format!(
            "{} total, {} passed, {} failed, {} errors, {} skipped",
            self.total, self.passed, self.failed, self.errors, self.skipped
        );
        let classes: Vec<String> = [
            (self.new_failures, "new failure", "new failures"),
            (self.still_failing, "still failing", "still failing"),
            (self.fixed, "fixed", "fixed"),
            (self.flaky, "flaky", "flaky"),
            (self.quarantined, "quarantined", "quarantined"),
        ]
        .into_iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|(count, one, many)| format!("{count} {}", if count == 1 { one } else { many }))
        .collect();
        if !classes.is_empty() {
            line.push_str("; ");
            line.push_str(&classes.join(", "));
        }
        line
    }

    /// The counts as people read them: "212 passed, 2 new failures, 1 flaky, 3
    /// quarantined". Failures are told apart by class when the cases were classified;
    /// unclassified failures are said as "N failed".
    pub fn describe(&self) -> String {
        let failing = self.failed + self.errors;
        let classified_failures = self.new_failures + self.still_failing + self.quarantined;
        let mut parts = vec![format!("{} passed", self.passed)];
        let mut say = |count: u32, one: &str, many: &str| {
            if count > 0 {
                parts.push(format!("{count} {}", if count == 1 { one } else { many }));
            }
        };
        say(self.new_failures, "new failure", "new failures");
        say(self.still_failing, "still failing", "still failing");
        say(self.flaky, "flaky", "flaky");
        say(self.quarantined, "quarantined", "quarantined");
        // Failures of cases no history classified (a step whose results were not
        // recorded): flaky cases may be among the failing ones, so they are taken off too.
        say(
            failing.saturating_sub(classified_failures + self.flaky),
            "failed",
            "failed",
        );
        say(self.fixed, "fixed", "fixed");
        say(self.skipped, "skipped", "skipped");
        parts.join(", ")
    }

    /// Adds another summary to this one.
    pub fn add(&mut self, other: TestSummary) {
        self.total += other.total;
        self.passed += other.passed;
        self.failed += other.failed;
        self.errors += other.errors;
        self.skipped += other.skipped;
        self.new_failures += other.new_failures;
        self.still_failing += other.still_failing;
        self.fixed += other.fixed;
        self.flaky += other.flaky;
        self.quarantined += other.quarantined;
    }
}

/// The outcome of one test case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestStatus {
    /// Passed.
    Passed,
    /// An assertion failed (`<failure>`).
    Failed,
    /// An unexpected error (`<error>`).
    Error,
    /// Skipped (`<skipped>`).
    Skipped,
}

/// What a case's result means against its history (see `store::test_history`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestClass {
    /// Failed, and its last result in an earlier run was not a failure (or it is new).
    NewFailure,
    /// Failed, as it did in the run before.
    StillFailing,
    /// Passed after failing in the run before.
    Fixed,
    /// Passed and failed on the same revision, or flips often.
    Flaky,
    /// Failed, and a Quarantine manifest covers it: it fails no step.
    Quarantined,
    /// Passed, as before.
    Passed,
    /// Skipped.
    Skipped,
}

impl TestClass {
    /// Every class, in the order lists show them.
    pub const ALL: [TestClass; 7] = [
        TestClass::NewFailure,
        TestClass::StillFailing,
        TestClass::Fixed,
        TestClass::Flaky,
        TestClass::Quarantined,
        TestClass::Passed,
        TestClass::Skipped,
    ];

    /// The snake_case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TestClass::NewFailure => "new_failure",
            TestClass::StillFailing => "still_failing",
            TestClass::Fixed => "fixed",
            TestClass::Flaky => "flaky",
            TestClass::Quarantined => "quarantined",
            TestClass::Passed => "passed",
            TestClass::Skipped => "skipped",
        }
    }
}

/// One test case from a JUnit XML report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestCase {
    /// The enclosing `<testsuite name>`, nested suites joined with `/`; empty when absent.
    pub suite: String,
    /// `classname`; empty when absent.
    pub classname: String,
    /// `name`.
    pub name: String,
    /// The outcome.
    pub status: TestStatus,
    /// `time` in seconds; 0 when absent or unreadable.
    pub time_seconds: f64,
    /// The failure, error or skip message (`message` attribute, else the first line of the
    /// element's text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The failure or error body (stack trace), trimmed and capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// `<system-out>` and `<system-err>` of the case, capped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// What the result means against the test's history, once the run recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<TestClass>,
}

/// One attempt at a step (a step with retries has several).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub number: u32,
    /// The attempt's outcome.
    pub status: Status,
    /// RFC 3339 with milliseconds.
    pub started_at: String,
    /// RFC 3339 with milliseconds.
    pub finished_at: String,
    /// Wall time.
    pub duration_ms: u64,
    /// The process exit code, when a process ran and exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// CPU time (user + system) of the processes the attempt ran and waited for, in
    /// seconds; absent when it ran none (an `http` or `report_generator` step) and in
    /// records written before it was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// Peak resident memory of the largest process the attempt ran, in bytes; absent as
    /// `cpu_seconds` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rss_bytes: Option<u64>,
    /// Processes the attempt started that outlived it (background jobs, `setsid`
    /// daemons) and were stopped at its end; absent when there were none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphans_killed: Option<u32>,
    /// The worker that ran it (its name), when a worker did; absent for this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
}

/// One step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StepRecord {
    /// The run.
    pub run_id: String,
    /// Position in the workflow.
    pub index: u32,
    /// Step name.
    pub name: String,
    /// The agent that runs it.
    pub agent: String,
    /// The agent's action.
    pub action: String,
    /// Current state.
    pub status: Status,
    /// Every attempt so far.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// When the first attempt started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When the step reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// From the first start to the end, retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The last attempt's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, was skipped or was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `key=value` outputs the step wrote to `$ORCHESTRATOR_OUTPUT`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub outputs: Map<String, Value>,
    /// The log file, relative to the log directory.
    pub log: String,
    /// Process group of the running attempt, so a later process can stop it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<i32>,
    /// Test cases the step reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tests: Vec<TestCase>,
    /// Files the step produced (reports, a suite's JUnit), relative to the project: the
    /// run's own copies under `reports/<run-id>/`, taken as the step ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
}

impl StepRecord {
    /// A step of a new run, not started: `log` is its log's path under the logs directory.
    pub fn queued(
        run_id: &str,
        index: u32,
        name: String,
        agent: String,
        action: String,
        log: String,
    ) -> StepRecord {
        StepRecord {
            run_id: run_id.to_owned(),
            index,
            name,
            agent,
            action,
            status: Status::Queued,
            attempts: Vec::new(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            exit_code: None,
            message: None,
            outputs: Map::new(),
            log,
            pgid: None,
            tests: Vec::new(),
            artifacts: Vec::new(),
        }
    }

    /// CPU seconds of the processes all its attempts ran; `None` when no attempt measured
    /// any.
    pub fn cpu_seconds(&self) -> Option<f64> {
        self.attempts
            .iter()
            .filter_map(|a| a.cpu_seconds)
            .reduce(|a, b| a + b)
    }

    /// The peak resident memory of the largest process any attempt ran; `None` when no
    /// attempt measured any.
    pub fn max_rss_bytes(&self) -> Option<u64> {
        self.attempts.iter().filter_map(|a| a.max_rss_bytes).max()
    }
}

/// One run of a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunRecord {
    /// `run_` and a ULID: sortable by creation time.
    pub id: String,
    /// The workflow's id.
    pub workflow_id: String,
    /// The workflow's name.
    pub workflow_name: String,
    /// Current state.
    pub status: Status,
    /// The validated parameters, defaults filled in.
    pub parameters: Map<String, Value>,
    /// What started it.
    pub trigger: Trigger,
    /// The workflow as it ran: template expanded, before parameter substitution.
    pub workflow: Value,
    /// Step names in workflow order.
    pub steps: Vec<String>,
    /// When it was created.
    pub created_at: String,
    /// When its first step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Wall time from start to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed, was cancelled or was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Test cases of all steps, counted.
    #[serde(default)]
    pub tests: TestSummary,
    /// The run this one re-runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// The revision it ran at: the commit a webhook named, else the source's applied
    /// revision (`git:<sha>` or `dir:<digest>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The process executing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// A run record without its expanded workflow: what the store keeps in its `runs` tree (the
/// workflow is kept apart, written once when the run is created) and what lists of runs
/// read. [`RunHead::with_workflow`] makes the whole record again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunHead {
    /// `run_` and a ULID.
    pub id: String,
    /// The workflow's id.
    pub workflow_id: String,
    /// The workflow's name.
    pub workflow_name: String,
    /// Current state.
    pub status: Status,
    /// The validated parameters, defaults filled in.
    pub parameters: Map<String, Value>,
    /// What started it.
    pub trigger: Trigger,
    /// Step names in workflow order.
    pub steps: Vec<String>,
    /// When it was created.
    pub created_at: String,
    /// When its first step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Wall time from start to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed, was cancelled or was interrupted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Test cases of all steps, counted.
    #[serde(default)]
    pub tests: TestSummary,
    /// The run this one re-runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<String>,
    /// The revision it ran at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The process executing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl RunHead {
    /// The head, borrowed (what [`RunRecord::head`] gives of a whole record).
    pub fn borrowed(&self) -> RunHeadRef<'_> {
        RunHeadRef {
            id: &self.id,
            workflow_id: &self.workflow_id,
            workflow_name: &self.workflow_name,
            status: self.status,
            parameters: &self.parameters,
            trigger: &self.trigger,
            steps: &self.steps,
            created_at: &self.created_at,
            started_at: self.started_at.as_deref(),
            finished_at: self.finished_at.as_deref(),
            duration_ms: self.duration_ms,
            message: self.message.as_deref(),
            tests: self.tests,
            rerun_of: self.rerun_of.as_deref(),
            revision: self.revision.as_deref(),
            pid: self.pid,
        }
    }

    /// The whole record: this head and the run's expanded workflow.
    pub fn with_workflow(self, workflow: Value) -> RunRecord {
        RunRecord {
            id: self.id,
            workflow_id: self.workflow_id,
            workflow_name: self.workflow_name,
            status: self.status,
            parameters: self.parameters,
            trigger: self.trigger,
            workflow,
            steps: self.steps,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            message: self.message,
            tests: self.tests,
            rerun_of: self.rerun_of,
            revision: self.revision,
            pid: self.pid,
        }
    }
}

/// A run's head, borrowed, as the store writes it: the fields of [`RunHead`], from a
/// [`RunRecord`] or a [`RunHead`] without copying them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RunHeadRef<'a> {
    /// `run_` and a ULID.
    pub id: &'a str,
    /// The workflow's id.
    pub workflow_id: &'a str,
    /// The workflow's name.
    pub workflow_name: &'a str,
    /// Current state.
    pub status: Status,
    /// The validated parameters.
    pub parameters: &'a Map<String, Value>,
    /// What started it.
    pub trigger: &'a Trigger,
    /// Step names in workflow order.
    pub steps: &'a [String],
    /// When it was created.
    pub created_at: &'a str,
    /// When its first step started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<&'a str>,
    /// When it reached its final state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<&'a str>,
    /// Wall time from start to finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Why it failed, was cancelled or was interrupted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    /// Test cases of all steps, counted.
    pub tests: TestSummary,
    /// The run this one re-runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerun_of: Option<&'a str>,
    /// The revision it ran at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<&'a str>,
    /// The process executing it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl RunRecord {
    /// The record without its workflow.
    pub fn into_head(self) -> RunHead {
        RunHead {
            id: self.id,
            workflow_id: self.workflow_id,
            workflow_name: self.workflow_name,
            status: self.status,
            parameters: self.parameters,
            trigger: self.trigger,
            steps: self.steps,
            created_at: self.created_at,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            message: self.message,
            tests: self.tests,
            rerun_of: self.rerun_of,
            revision: self.revision,
            pid: self.pid,
        }
    }

    /// The record without its workflow, borrowed (what the store writes of a run).
    pub fn head(&self) -> RunHeadRef<'_> {
        RunHeadRef {
            id: &self.id,
            workflow_id: &self.workflow_id,
            workflow_name: &self.workflow_name,
            status: self.status,
            parameters: &self.parameters,
            trigger: &self.trigger,
            steps: &self.steps,
            created_at: &self.created_at,
            started_at: self.started_at.as_deref(),
            finished_at: self.finished_at.as_deref(),
            duration_ms: self.duration_ms,
            message: self.message.as_deref(),
            tests: self.tests,
            rerun_of: self.rerun_of.as_deref(),
            revision: self.revision.as_deref(),
            pid: self.pid,
        }
    }
}

/// A run as events and run lists show it: the record without its expanded workflow, and
/// the number of its steps.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunSummary {
    /// `run_<ulid>`.
    pub id: String,
    /// The workflow's id.
    pub workflow_id: String,
    /// The workflow's name.
    pub workflow_name: String,
    /// Where the run stands.
    pub status: Status,
    /// What started it.
    pub trigger: Trigger,
    /// Its parameters.
    pub parameters: Map<String, Value>,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// When it started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// How long it took.
    pub duration_ms: Option<u64>,
    /// Why it ended as it did.
    pub message: Option<String>,
    /// Its test cases by outcome.
    pub tests: TestSummary,
    /// The run this one re-runs.
    pub rerun_of: Option<String>,
    /// The revision it ran at.
    pub revision: Option<String>,
    /// How many steps it has.
    pub steps: usize,
}

/// The summary of a run record or head: the fields they share.
macro_rules! summary_of {
    ($run:expr) => {{
        let run = $run;
        RunSummary {
            id: run.id.clone(),
            workflow_id: run.workflow_id.clone(),
            workflow_name: run.workflow_name.clone(),
            status: run.status,
            trigger: run.trigger.clone(),
            parameters: run.parameters.clone(),
            created_at: run.created_at.clone(),
            started_at: run.started_at.clone(),
            finished_at: run.finished_at.clone(),
            duration_ms: run.duration_ms,
            message: run.message.clone(),
            tests: run.tests,
            rerun_of: run.rerun_of.clone(),
            revision: run.revision.clone(),
            steps: run.steps.len(),
        }
    }};
}

impl RunSummary {
    /// The summary of a run.
    pub fn of(run: &RunRecord) -> RunSummary {
        summary_of!(run)
    }

    /// The summary of a run's head (what lists of runs read).
    pub fn of_head(run: &RunHead) -> RunSummary {
        summary_of!(run)
    }
}

/// A step as events show it: the record without its attempts, log path and test cases,
/// with their counts.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StepSummary {
    /// The run.
    pub run_id: String,
    /// Its position in the workflow.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// Its agent.
    pub agent: String,
    /// The agent's action.
    pub action: String,
    /// Where it stands.
    pub status: Status,
    /// When it started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// How long it took.
    pub duration_ms: Option<u64>,
    /// The exit code of its last attempt.
    pub exit_code: Option<i32>,
    /// Why it ended as it did.
    pub message: Option<String>,
    /// How many attempts it made.
    pub attempts: usize,
    /// Its test cases by outcome.
    pub tests: TestSummary,
    /// What it handed back.
    pub outputs: Map<String, Value>,
}

impl StepSummary {
    /// The summary of a step.
    pub fn of(step: &StepRecord) -> StepSummary {
        StepSummary {
            run_id: step.run_id.clone(),
            index: step.index,
            name: step.name.clone(),
            agent: step.agent.clone(),
            action: step.action.clone(),
            status: step.status,
            started_at: step.started_at.clone(),
            finished_at: step.finished_at.clone(),
            duration_ms: step.duration_ms,
            exit_code: step.exit_code,
            message: step.message.clone(),
            attempts: step.attempts.len(),
            tests: TestSummary::of(&step.tests),
            outputs: step.outputs.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_tell_failures_apart_by_class() {
        let summary = TestSummary {
            total: 218,
            passed: 212,
            failed: 5,
            errors: 1,
            new_failures: 2,
            flaky: 1,
            quarantined: 3,
            ..TestSummary::default()
        };
        assert_eq!(
            summary.describe(),
            "212 passed, 2 new failures, 1 flaky, 3 quarantined"
        );
        assert_eq!(
            summary.line(),
            "218 total, 212 passed, 5 failed, 1 errors, 0 skipped; 2 new failures, 1 flaky, 3 quarantined"
        );
        let unclassified = TestSummary {
            total: 8,
            passed: 2,
            failed: 6,
            ..TestSummary::default()
        };
        assert_eq!(unclassified.describe(), "2 passed, 6 failed");
        assert_eq!(
            unclassified.line(),
            "8 total, 2 passed, 6 failed, 0 errors, 0 skipped"
        );
    }
}
