//! Accepted webhook deliveries written in batches: whatever deliveries are waiting when a
//! write can start go into the store together — each one's claim and record, its run, the
//! run's steps and workflow — in one atomic write that checks each claim
//! ([`Store::create_claimed_runs`]) and one flush, and each is answered once that flush is
//! done.
//!
//! There is no thread of its own: the handler that finds no batch being written writes
//! the batch of every delivery queued so far (its own included), and the others wait for
//! the batch that holds theirs (a group commit, like the store's flushes). Under load, a
//! batch forms while the previous one is written, so deliveries cost one lock of sled's
//! writers and one device sync per batch instead of several sled batches and a flush
//! each, which they used to share with every run's writes.
//!
//! A delivery whose id is claimed already when its batch is written writes nothing and is
//! answered with what the claim names; a second delivery of an id already in the batch
//! waits for the next batch, which finds the first's claim. Since the claim, the record
//! and the run are one atomic write, a crash leaves a delivery either wholly accepted
//! (claimed, recorded, with its run) or not at all (never answered, so redelivered and run
//! then).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use super::deliveries::{self, Seen};
use super::DeliveryRecord;
use crate::engine::runner::Runner;
use crate::model::{RunRecord, StepRecord};
use crate::store::{ClaimedRun, Store};

/// An accepted delivery, its filters and parameters passed, with its run made (not
/// written: see [`Runner::make_run`]).
#[derive(Debug)]
pub struct Acceptance {
    /// The key of its record in the deliveries tree.
    pub key: String,
    /// Its record, `accepted` (the run's id is set as it is written).
    pub record: DeliveryRecord,
    /// Its run, queued.
    pub run: RunRecord,
    /// The run's steps, queued.
    pub steps: Vec<StepRecord>,
}

/// What became of an [`Acceptance`].
#[derive(Debug)]
pub enum Accepted {
    /// Claimed, recorded and its run created, durably, and the run handed to the runner:
    /// the record as written (naming the run).
    Run(DeliveryRecord),
    /// The id was claimed before: nothing was written.
    Seen(Seen),
    /// The store failed: nothing was written.
    Failed(String),
}

/// Where the runs of accepted deliveries start: the [`Runner`].
pub trait Runs {
    /// Starts a run written durably.
    fn start(&self, run: RunRecord, steps: Vec<StepRecord>);
}

impl Runs for Arc<Runner> {
    fn start(&self, run: RunRecord, steps: Vec<StepRecord>) {
        self.spawn(run, steps);
    }
}

/// The deliveries waiting for a batch, and the batch being written.
#[derive(Default)]
pub struct Intake {
    state: Mutex<State>,
    written: Condvar,
}

#[derive(Default)]
struct State {
    /// The ticket of the next delivery handed over.
    next: u64,
    /// Deliveries waiting for a batch, first come first.
    queue: Vec<(u64, Acceptance)>,
    /// A batch is being written.
    writing: bool,
    /// What became of the deliveries of the batches written, until their handlers take it.
    answers: HashMap<u64, Accepted>,
    /// Batches written so far.
    batches: u64,
}

impl Intake {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `acceptance` in a batch (this caller's, or the one being formed) and returns
    /// what became of it once that batch is durable (blocking: call off the async threads).
    pub fn accept(&self, store: &Store, runs: &impl Runs, acceptance: Acceptance) -> Accepted {
        let mut state = self.lock();
        let ticket = state.next;
        state.next += 1;
        state.queue.push((ticket, acceptance));
        loop {
            if let Some(answer) = state.answers.remove(&ticket) {
                return answer;
            }
            if !state.writing {
                state.writing = true;
                let batch = std::mem::take(&mut state.queue);
                let tickets: Vec<u64> = batch.iter().map(|(ticket, _)| *ticket).collect();
                drop(state);
                let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    write_batch(store, runs, batch)
                }));
                state = self.lock();
                state.writing = false;
                state.batches += 1;
                match written {
                    Ok((answers, later)) => {
                        state.answers.extend(answers);
                        // Second deliveries of an id go first in the next batch.
                        let queued = std::mem::take(&mut state.queue);
                        state.queue = later.into_iter().chain(queued).collect();
                    }
                    Err(panic) => {
                        for ticket in tickets {
                            state.answers.insert(
                                ticket,
                                Accepted::Failed("the delivery could not be written".into()),
                            );
                        }
                        drop(state);
                        self.written.notify_all();
                        std::panic::resume_unwind(panic);
                    }
                }
                self.written.notify_all();
                continue;
            }
            state = self.written.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Batches written since the start.
    pub fn batches(&self) -> u64 {
        self.lock().batches
    }
}

/// Writes one batch: the answers of its deliveries, and the deliveries left for the next
/// batch (a second delivery of an id in this one). Each claim is checked in the write
/// itself, so a delivery whose id is claimed already writes nothing.
#[allow(clippy::type_complexity)]
fn write_batch(
    store: &Store,
    runs: &impl Runs,
    batch: Vec<(u64, Acceptance)>,
) -> (Vec<(u64, Accepted)>, Vec<(u64, Acceptance)>) {
    let mut answers = Vec::with_capacity(batch.len());
    let mut later = Vec::new();
    let mut made = Vec::with_capacity(batch.len());
    let mut ids = HashSet::new();
    for (ticket, acceptance) in batch {
        let id = (
            acceptance.record.trigger.clone(),
            acceptance.record.delivery.clone(),
        );
        if !ids.insert(id) {
            later.push((ticket, acceptance));
            continue;
        }
        let mut record = acceptance.record;
        record.run_id = Some(acceptance.run.id.clone());
        made.push((
            ticket,
            acceptance.key,
            record,
            acceptance.run,
            acceptance.steps,
        ));
    }
    let claimed: Vec<ClaimedRun> = made
        .iter()
        .map(|(_, key, record, run, steps)| {
            let (claim, written) = deliveries::accepted_writes(key, record);
            ClaimedRun {
                claim,
                run,
                steps,
                states: vec![written],
            }
        })
        .collect();
    let written = store.create_claimed_runs(&claimed);
    drop(claimed);
    match written {
        Ok(written) => {
            for ((ticket, _, record, run, steps), written) in made.into_iter().zip(written) {
                if written {
                    runs.start(run, steps);
                    answers.push((ticket, Accepted::Run(record)));
                    continue;
                }
                let seen = match deliveries::earlier(store, &record.trigger, &record.delivery) {
                    Ok(seen) => seen.unwrap_or(Seen {
                        record: None,
                        run_id: None,
                    }),
                    Err(err) => {
                        answers.push((ticket, Accepted::Failed(err.to_string())));
                        continue;
                    }
                };
                answers.push((ticket, Accepted::Seen(seen)));
            }
        }
        Err(err) => {
            let message = err.to_string();
            answers.extend(
                made.into_iter()
                    .map(|(ticket, ..)| (ticket, Accepted::Failed(message.clone()))),
            );
        }
    }
    (answers, later)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::triggers::deliveries::{Claim, Deliveries};
    use serde_json::json;
    use std::time::{Duration, Instant};

    /// Notes the runs started.
    #[derive(Default)]
    struct FakeRuns {
        started: Mutex<Vec<String>>,
    }

    impl Runs for FakeRuns {
        fn start(&self, run: RunRecord, _steps: Vec<StepRecord>) {
            self.started.lock().unwrap().push(run.id);
        }
    }

    /// A delivery at `trg_a` with its one-step run, as the receiver hands it over.
    fn acceptance(keys: &Deliveries, delivery: &str) -> Acceptance {
        let run: RunRecord = serde_json::from_value(json!({
            "id": crate::engine::run::new_run_id(),
            "workflow_id": "wf_a",
            "workflow_name": "A",
            "status": "queued",
            "parameters": {},
            "trigger": {"kind": "webhook", "details": {"trigger": "trg_a", "delivery": delivery}},
            "workflow": {"steps": [{"name": "a", "command": ["true"]}]},
            "steps": ["a"],
            "created_at": chrono::Utc::now().to_rfc3339(),
        }))
        .unwrap();
        Acceptance {
            key: keys.new_key("trg_a"),
            record: crate::triggers::deliveries::accepted("trg_a", delivery, None),
            run,
            steps: Vec::new(),
        }
    }

    /// Polls `done` until it holds, for at most 10 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn deliveries_arriving_together_are_written_in_one_batch_and_answered_after_its_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = Deliveries::default();
        let intake = Intake::default();
        let runs = FakeRuns::default();
        // A batch is being written: the deliveries that arrive meanwhile queue for the next.
        intake.lock().writing = true;
        let flushes_before = store.flushes();
        let answers: Vec<(Accepted, u64)> = std::thread::scope(|scope| {
            let handlers: Vec<_> = (0..5)
                .map(|i| {
                    let (intake, store, runs, keys) = (&intake, &store, &runs, &keys);
                    scope.spawn(move || {
                        let answer =
                            intake.accept(store, runs, acceptance(keys, &format!("d-{i}")));
                        (answer, store.flushes())
                    })
                })
                .collect();
            eventually("five deliveries queued", || intake.lock().queue.len() == 5);
            {
                let mut state = intake.lock();
                state.writing = false;
            }
            intake.written.notify_all();
            handlers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        // One batch, one flush, for the five; each answered once that flush was done.
        assert_eq!(intake.batches(), 1);
        assert_eq!(store.flushes(), flushes_before + 1);
        let mut run_ids = Vec::new();
        for (answer, flushes_at_answer) in answers {
            assert!(flushes_at_answer > flushes_before);
            match answer {
                Accepted::Run(record) => {
                    let run = record.run_id.clone().unwrap();
                    let seen = deliveries::earlier(&store, "trg_a", &record.delivery)
                        .unwrap()
                        .unwrap();
                    assert_eq!(seen.run_id.as_deref(), Some(run.as_str()));
                    assert_eq!(seen.record.unwrap().run_id.as_deref(), Some(run.as_str()));
                    assert!(store.run(&run).unwrap().is_some());
                    run_ids.push(run);
                }
                other => panic!("{other:?}"),
            }
        }
        run_ids.sort();
        let mut started = runs.started.lock().unwrap().clone();
        started.sort();
        assert_eq!(started, run_ids);
    }

    #[test]
    fn a_delivery_id_is_run_once_even_twice_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let keys = Deliveries::default();
        let intake = Intake::default();
        let runs = FakeRuns::default();
        intake.lock().writing = true;
        let answers: Vec<Accepted> = std::thread::scope(|scope| {
            let handlers: Vec<_> = (0..3)
                .map(|_| {
                    let (intake, store, runs, keys) = (&intake, &store, &runs, &keys);
                    scope.spawn(move || intake.accept(store, runs, acceptance(keys, "same")))
                })
                .collect();
            eventually("three deliveries queued", || intake.lock().queue.len() == 3);
            intake.lock().writing = false;
            intake.written.notify_all();
            handlers.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let ran: Vec<&DeliveryRecord> = answers
            .iter()
            .filter_map(|a| match a {
                Accepted::Run(record) => Some(record),
                _ => None,
            })
            .collect();
        assert_eq!(ran.len(), 1, "{answers:?}");
        let run = ran[0].run_id.clone();
        for answer in &answers {
            match answer {
                Accepted::Run(_) => {}
                Accepted::Seen(seen) => assert_eq!(seen.run_id, run),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(runs.started.lock().unwrap().len(), 1);
        // A later delivery of the id is seen too, through the claim the batch wrote.
        assert!(matches!(
            deliveries::claim(&store, "trg_a", "same", &keys.new_key("trg_a")).unwrap(),
            Claim::Seen(Some(_))
        ));
    }
}
