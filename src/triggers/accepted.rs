//! Accepted webhook deliveries: durable in a journal of their own before the `202`, their
//! runs made durable in sled and started just after, and the journal replayed at start.
//!
//! sled's flushes are shared with every run (each writes its changes durably), so a
//! delivery that waited for one waited behind the runs' writes. Instead, an accepted
//! delivery's claim, record and queued run are written to sled unflushed (readers see them
//! at once), and the delivery — its record key, its record naming the run, and the run as
//! created — is appended to the delivery journal (`<data>/delivery-journal`, a
//! [`Journal`] with its own group commit: one small `fdatasync` for every delivery
//! arriving meanwhile). The `202` follows that append. The starter thread then flushes
//! sled (one flush for every delivery waiting) and only then starts the runs, so no run
//! executes before it is durable in sled.
//!
//! Beside each delivery's sled writes goes a mark in the `delivery_marks` state tree,
//! under the delivery's record key, written last: sled recovers a prefix of its writes,
//! so a mark on disk means the run, the claim and the record are too. At start, before any
//! other recovery of deliveries ([`recover`]), every journal entry without its mark gets
//! its run (created as the delivery had it, `queued`, unless sled kept it), its claim
//! naming the run and its record, all flushed; the runner's start of queued runs then
//! runs it, once. A redelivery after that is a duplicate naming the run, as the claim says.
//! The journal's segments are deleted once everything they hold is durable in sled
//! ([`Journal::settle`]), and their marks with them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::deliveries;
use super::DeliveryRecord;
use crate::engine::run;
use crate::engine::runner::Runner;
use crate::model::{RunRecord, StepRecord};
use crate::store::journal::Journal;
use crate::store::{Store, StoreError};

/// The journal's directory in the data directory.
pub const JOURNAL_DIR: &str = "delivery-journal";
/// The state tree of marks: `<record key>` → the run's id, once it is written to sled.
pub const MARKS_TREE: &str = "delivery_marks";

/// What can go wrong accepting a delivery.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The journal could not be written.
    #[error("the delivery journal could not be written: {0}")]
    Journal(#[from] std::io::Error),
}

/// One accepted delivery, as the journal keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// The key of its record in the `deliveries` tree.
    key: String,
    /// Its record, accepted, naming the run.
    record: DeliveryRecord,
    /// Its run as created, `queued`.
    run: RunRecord,
}

/// A delivery journaled, its run waiting for sled's flush to start.
struct Pending {
    segment: u64,
    key: String,
    run: RunRecord,
    steps: Vec<StepRecord>,
}

/// The journal, the marks each segment holds, and the starter thread.
pub struct Accepted {
    store: Arc<Store>,
    journal: Arc<Journal>,
    marks: Arc<Mutex<HashMap<u64, Vec<String>>>>,
    starter: Mutex<mpsc::Sender<Pending>>,
}

impl Accepted {
    /// Takes the journal [`recover`] opened and starts the starter thread (it ends when
    /// this is dropped).
    pub fn start(
        journal: Arc<Journal>,
        store: Arc<Store>,
        runner: Arc<Runner>,
    ) -> std::io::Result<Accepted> {
        let (sender, receiver) = mpsc::channel();
        let marks: Arc<Mutex<HashMap<u64, Vec<String>>>> = Arc::default();
        {
            let (store, journal, marks) =
                (Arc::clone(&store), Arc::clone(&journal), Arc::clone(&marks));
            std::thread::Builder::new()
                .name("delivery starter".into())
                .spawn(move || starter(&receiver, &store, &journal, &marks, &runner))?;
        }
        Ok(Accepted {
            store,
            journal,
            marks,
            starter: Mutex::new(sender),
        })
    }

    /// Accepts a delivery whose id `key`'s claim holds: writes the run, the claim naming it,
    /// the record and the mark to sled (unflushed), journals the delivery (durable when
    /// this returns) and hands the run to the starter, which starts it once sled has
    /// flushed. On an error nothing is journaled and the run is removed again.
    pub fn accept(
        &self,
        key: &str,
        record: &DeliveryRecord,
        run: RunRecord,
        steps: Vec<StepRecord>,
    ) -> Result<(), AcceptError> {
        let entry = Entry {
            key: key.to_owned(),
            record: record.clone(),
            run,
        };
        let run = &entry.run;
        let written = (|| {
            self.store
                .save_run(Some(run), &steps.iter().collect::<Vec<_>>(), false)?;
            deliveries::name_run(&self.store, &record.trigger, &record.delivery, key, &run.id)?;
            deliveries::record(&self.store, key, record, false)?;
            self.store.put_state(MARKS_TREE, key, &run.id, false)
        })();
        let journaled = written.map_err(AcceptError::from).and_then(|()| {
            let bytes = serde_json::to_vec(&entry).map_err(std::io::Error::other)?;
            Ok(self.journal.append(&bytes)?)
        });
        let segment = match journaled {
            Ok(segment) => segment,
            Err(err) => {
                // Not acknowledged: the run must not start at the next start either.
                if let Err(undo) = self
                    .store
                    .remove_states(MARKS_TREE, &[key.to_owned()])
                    .and_then(|()| {
                        self.store
                            .delete_runs(&run.workflow_id, std::slice::from_ref(&run.id))
                    })
                {
                    tracing::error!(run = %run.id, "an unjournaled delivery's run could not be removed: {undo}");
                }
                return Err(err);
            }
        };
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(segment)
            .or_default()
            .push(key.to_owned());
        let pending = Pending {
            segment,
            key: entry.key,
            run: entry.run,
            steps,
        };
        if self
            .starter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(pending)
            .is_err()
        {
            // Only when shutting down: the journal has it, the next start runs it.
            tracing::warn!("the delivery starter has stopped; the run starts at the next start");
        }
        Ok(())
    }
}

/// The starter thread: for each batch of journaled deliveries, one sled flush, then their
/// runs start, their journal entries are settled and the marks of deleted segments go.
fn starter(
    receiver: &mpsc::Receiver<Pending>,
    store: &Store,
    journal: &Journal,
    marks: &Mutex<HashMap<u64, Vec<String>>>,
    runner: &Arc<Runner>,
) {
    while let Ok(first) = receiver.recv() {
        let mut batch = vec![first];
        batch.extend(receiver.try_iter());
        // Until sled's flush succeeds (a full disk: the store reopens itself once it can
        // write), the runs wait, queued; a shutdown leaves them to the next start.
        loop {
            match store.flush() {
                Ok(()) => break,
                Err(err) => {
                    tracing::error!(
                        "the runs of accepted webhook deliveries wait for the store: {err}"
                    );
                    if runner.is_stopping() {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
        let mut settled: HashMap<u64, u64> = HashMap::new();
        for pending in batch {
            tracing::debug!(run = %pending.run.id, key = %pending.key, "webhook delivery's run durable");
            if !runner.is_stopping() {
                runner.spawn(pending.run, pending.steps);
            }
            *settled.entry(pending.segment).or_default() += 1;
        }
        for (segment, count) in settled {
            match journal.settle(segment, count) {
                Ok(false) => {}
                Ok(true) => {
                    let keys = marks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&segment)
                        .unwrap_or_default();
                    if let Err(err) = store.remove_states(MARKS_TREE, &keys) {
                        tracing::warn!("marks of a deleted delivery journal segment stay: {err}");
                    }
                }
                Err(err) => {
                    tracing::warn!("a settled delivery journal segment could not be deleted: {err}")
                }
            }
        }
    }
}

/// What [`recover`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Runs created from the journal (their deliveries were acknowledged, sled had lost
    /// them): `queued`, started with the other queued runs.
    pub created: Vec<String>,
    /// Deliveries whose run sled had kept and whose claim or record it had not.
    pub completed: Vec<String>,
}

/// Opens the delivery journal in `data_dir` and settles what a process that ended left in
/// it (see the module documentation): call at start, before [`super::recovery::recover`]
/// and before any delivery is received. Durable when it returns.
pub fn recover(store: &Store, data_dir: &Path) -> Result<(Arc<Journal>, Replayed), AcceptError> {
    let (journal, entries) = Journal::open(&data_dir.join(JOURNAL_DIR))?;
    let mut replayed = Replayed::default();
    for bytes in entries {
        let entry: Entry = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::error!("a delivery journal entry could not be read, skipped: {err}");
                continue;
            }
        };
        if store.state::<String>(MARKS_TREE, &entry.key)?.is_some() {
            continue;
        }
        let (trigger, delivery) = (&entry.record.trigger, &entry.record.delivery);
        if store.run_head(&entry.run.id)?.is_none() {
            let steps = match run::initial_steps(&entry.run) {
                Ok(steps) => steps,
                Err(err) => {
                    tracing::error!(run = %entry.run.id, "the run of journaled delivery {delivery} could not be made again: {err}");
                    continue;
                }
            };
            store.save_run(Some(&entry.run), &steps.iter().collect::<Vec<_>>(), false)?;
            replayed.created.push(entry.run.id.clone());
        } else {
            replayed.completed.push(entry.run.id.clone());
        }
        deliveries::name_run(store, trigger, delivery, &entry.key, &entry.run.id)?;
        deliveries::record(store, &entry.key, &entry.record, false)?;
        store.put_state(MARKS_TREE, &entry.key, &entry.run.id, false)?;
    }
    store.flush()?;
    journal.forget_earlier()?;
    // No segment of an earlier process is left: neither are its marks.
    let marks: Vec<String> = store
        .states::<serde::de::IgnoredAny>(MARKS_TREE, "")?
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    if !marks.is_empty() {
        store.remove_states(MARKS_TREE, &marks)?;
    }
    Ok((Arc::new(journal), replayed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::triggers::deliveries::{claim, Claim, Deliveries};
    use crate::triggers::DeliveryResult;

    fn entry(keys: &Deliveries, delivery: &str) -> Entry {
        let run: RunRecord = serde_json::from_value(serde_json::json!({
            "id": run::new_run_id(),
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
        Entry {
            key: keys.new_key("trg_a"),
            record: DeliveryRecord {
                trigger: "trg_a".into(),
                delivery: delivery.into(),
                event: Some("push".into()),
                action: None,
                branch: Some("main".into()),
                result: DeliveryResult::Accepted,
                reason: None,
                run_id: Some(run.id.clone()),
                received_at: chrono::Utc::now().to_rfc3339(),
            },
            run,
        }
    }

    /// What a process killed after the journal's sync and before sled's flush leaves:
    /// the entry on disk, and in sled whatever another thread's flush happened to cover.
    fn journaled(journal: &Journal, entry: &Entry) {
        journal.append(&serde_json::to_vec(entry).unwrap()).unwrap();
    }

    #[test]
    fn a_journaled_delivery_whose_run_sled_lost_gets_it_once_and_stays_a_duplicate() {
        let keys = Deliveries::default();
        let dir = tempfile::tempdir().unwrap();
        let lost = entry(&keys, "lost");
        let unlinked = entry(&keys, "unlinked");
        let settled = entry(&keys, "settled");
        {
            let store = Store::open(&dir.path().join("db")).unwrap();
            let (journal, replayed) = recover(&store, dir.path()).unwrap();
            assert_eq!(replayed, Replayed::default());
            // Sled kept nothing of `lost` (not even its claim).
            journaled(&journal, &lost);
            // Sled kept the claim and the run of `unlinked`, not its record or mark.
            assert!(matches!(
                claim(&store, "trg_a", "unlinked", &unlinked.key).unwrap(),
                Claim::New
            ));
            let steps = run::initial_steps(&unlinked.run).unwrap();
            store
                .save_run(Some(&unlinked.run), &steps.iter().collect::<Vec<_>>(), true)
                .unwrap();
            journaled(&journal, &unlinked);
            // Sled kept all of `settled`, its mark last.
            let steps = run::initial_steps(&settled.run).unwrap();
            store
                .save_run(Some(&settled.run), &steps.iter().collect::<Vec<_>>(), false)
                .unwrap();
            deliveries::name_run(&store, "trg_a", "settled", &settled.key, &settled.run.id)
                .unwrap();
            deliveries::record(&store, &settled.key, &settled.record, false).unwrap();
            store
                .put_state(MARKS_TREE, &settled.key, &settled.run.id, true)
                .unwrap();
            journaled(&journal, &settled);
        }

        let store = Store::open(&dir.path().join("db")).unwrap();
        let (_journal, replayed) = recover(&store, dir.path()).unwrap();
        assert_eq!(replayed.created, [lost.run.id.clone()]);
        assert_eq!(replayed.completed, [unlinked.run.id.clone()]);
        for entry in [&lost, &unlinked, &settled] {
            let run = store.run(&entry.run.id).unwrap().expect("the run");
            assert_eq!(run.status, crate::model::Status::Queued);
            assert_eq!(store.steps(&entry.run.id).unwrap().len(), 1);
            // A redelivery is a duplicate naming the run.
            match claim(
                &store,
                "trg_a",
                &entry.record.delivery,
                &keys.new_key("trg_a"),
            )
            .unwrap()
            {
                Claim::Seen(Some(earlier)) => {
                    assert_eq!(earlier.result, DeliveryResult::Accepted);
                    assert_eq!(earlier.run_id.as_deref(), Some(entry.run.id.as_str()));
                }
                other => panic!("{}: {other:?}", entry.record.delivery),
            }
        }
        // The claims' own recovery finds them settled; the journal and the marks are gone.
        assert_eq!(
            super::super::recovery::recover(&store).unwrap(),
            super::super::recovery::Recovered::default()
        );
        assert!(store.states::<String>(MARKS_TREE, "").unwrap().is_empty());
        drop(store);
        // Exactly once: a second start creates nothing again.
        let store = Store::open(&dir.path().join("db")).unwrap();
        let (_journal, replayed) = recover(&store, dir.path()).unwrap();
        assert_eq!(replayed, Replayed::default());
        assert_eq!(store.runs().unwrap().len(), 3);
    }
}
