//! A step attempt's test cases, recorded into their tests' history as the attempt ends
//! (see `store::test_history`): each case gets its class, and an attempt that failed only
//! because of failures a Quarantine manifest covers succeeds instead, with
//! `quarantined_failures` among its outputs. Its results are still recorded and shown.

use chrono::Utc;
use serde_json::json;

use super::executor::AttemptFinished;
use crate::config::TestsConfig;
use crate::model::{RunRecord, Status, TestClass, TestStatus};
use crate::spec::quarantine::{QuarantineSet, TestFields};
use crate::store::test_history::{quarantine_set, test_id, ResultSource};
use crate::store::Store;

/// What a run's attempts' test results are recorded with.
#[derive(Debug)]
pub struct TestRecorder {
    run_id: String,
    workflow_id: String,
    workflow_name: String,
    revision: String,
    /// The live Quarantine manifests, read when a case first fails.
    quarantine: Option<QuarantineSet>,
}

impl TestRecorder {
    /// The recorder of a run.
    pub fn new(run: &RunRecord) -> TestRecorder {
        TestRecorder {
            run_id: run.id.clone(),
            workflow_id: run.workflow_id.clone(),
            workflow_name: run.workflow_name.clone(),
            // A run with no revision is its own: only its retries share one.
            revision: run.revision.clone().unwrap_or_else(|| run.id.clone()),
            quarantine: None,
        }
    }

    /// Classifies and records the attempt's cases, and lets an attempt that failed only
    /// through quarantined failures succeed. `note` writes a line to the step's log. When
    /// the store cannot record, the log says so and the quarantine still applies.
    pub fn record(
        &mut self,
        store: &Store,
        settings: &TestsConfig,
        (step, number): (usize, u32),
        finished: &mut AttemptFinished,
        note: &dyn Fn(&str),
    ) {
        let outcome = &mut finished.outcome;
        if outcome.tests.is_empty() {
            return;
        }
        let failing = |status| matches!(status, TestStatus::Failed | TestStatus::Error);
        if self.quarantine.is_none() && outcome.tests.iter().any(|c| failing(c.status)) {
            self.quarantine = Some(load_quarantine(store));
        }
        let today = Utc::now().date_naive();
        let quarantine = self.quarantine.as_ref();
        let covered = |id: &str, case: &crate::model::TestCase| {
            quarantine.is_some_and(|set| {
                set.covering(
                    &TestFields {
                        id,
                        workflow: &self.workflow_id,
                        workflow_name: &self.workflow_name,
                        suite: &case.suite,
                        classname: &case.classname,
                        name: &case.name,
                    },
                    today,
                )
                .is_some()
            })
        };
        let source = ResultSource {
            workflow: &self.workflow_id,
            run_id: &self.run_id,
            step: step as u32,
            attempt: number,
            revision: &self.revision,
            worker: finished.attempt.as_ref().and_then(|a| a.worker.as_deref()),
        };
        if let Err(err) = store.record_test_results(&source, &mut outcome.tests, settings, &covered)
        {
            tracing::warn!(run = %self.run_id, error = %err, "test results not recorded");
            note(&format!("test results not recorded in the history: {err}"));
            // A quarantine applies without the history: its failures still fail nothing.
            let workflow = self.workflow_id.clone();
            for case in &mut outcome.tests {
                let id = test_id(&workflow, &case.suite, &case.classname, &case.name);
                case.class =
                    (failing(case.status) && covered(&id, case)).then_some(TestClass::Quarantined);
            }
        }
        note(&format!(
            "tests: {}",
            crate::model::TestSummary::of(&outcome.tests).describe()
        ));
        let quarantined = outcome
            .tests
            .iter()
            .filter(|c| c.class == Some(TestClass::Quarantined))
            .count();
        if quarantined == 0 {
            return;
        }
        outcome
            .outputs
            .insert("quarantined_failures".into(), json!(quarantined));
        let others_failing = outcome
            .tests
            .iter()
            .any(|c| failing(c.status) && c.class != Some(TestClass::Quarantined));
        // Only a test process's own failure is forgiven: not a timeout, a cancel, or a
        // failure that no failing case accounts for (a crash before any test ran).
        let failed_by_tests =
            outcome.status == Some(Status::Failed) && outcome.exit_code.is_some_and(|c| c != 0);
        if failed_by_tests && !others_failing {
            outcome.status = Some(Status::Succeeded);
            let text = format!(
                "{quarantined} quarantined test failure{} did not fail the step",
                if quarantined == 1 { "" } else { "s" }
            );
            note(&text);
            outcome.message = Some(match outcome.message.take() {
                Some(message) => format!("{message}; {text}"),
                None => text,
            });
        }
    }
}

/// The live Quarantine manifests, compiled; none when the store cannot be read.
fn load_quarantine(store: &Store) -> QuarantineSet {
    match store.objects() {
        Ok(objects) => quarantine_set(&objects),
        Err(err) => {
            tracing::warn!(error = %err, "quarantines not read; none apply");
            QuarantineSet::default()
        }
    }
}
