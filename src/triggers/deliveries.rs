//! What the webhook receiver remembers, in two of the store's runtime state trees (the only
//! part of `triggers` that touches the store):
//!
//! - `deliveries`, `<trigger id>/<ulid>` → a [`DeliveryRecord`] for every delivery at every
//!   trigger (accepted, duplicate, filtered, rejected, ping, error); the keys sort by
//!   arrival, so the newest come last.
//! - `delivery_ids`, `<trigger id>/<delivery id>` → the key of the accepted delivery's
//!   record (and, once created, its run): claimed once ([`Store::insert_state_once`])
//!   before its run is created, so a redelivery — even after a restart or a crash — finds
//!   it and runs nothing.
//!
//! Each trigger's history is bounded in three parts, `history_limit` records each: the
//! accepted deliveries (those that started a run), the rejected ones (no valid signature
//! or token: anyone can send those), and the rest (duplicates, filtered, pings, errors).
//! So a sender without the secret, however many times it sends, never pushes a run's
//! delivery out of the history. Apart from the records, the ids of the newest
//! `history_limit` accepted deliveries are kept: nothing pushes a claim out. Older ones
//! go.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::DeliveryRecord;
use crate::store::{StateWrite, Store, StoreError};

/// The tree of delivery records.
pub const TREE: &str = "deliveries";
/// The tree of delivery ids seen, for deduplication.
pub const IDS_TREE: &str = "delivery_ids";

/// Records are pruned every this many deliveries per trigger (and at the first after a
/// start).
const PRUNE_EVERY: u64 = 100;

#[derive(Debug, Serialize, Deserialize)]
struct IdEntry {
    /// Key of the accepted delivery's record in [`TREE`].
    record: String,
    /// The run it started, once there is one: a redelivery still names it after the
    /// record has left the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    run_id: Option<String>,
}

/// What the receiver of deliveries keeps between them, for as long as it receives: the
/// generator of record keys, the deliveries counted per trigger since the start, and the
/// prunes due.
pub struct Deliveries {
    keys: Mutex<ulid::Generator>,
    counts: Mutex<HashMap<String, u64>>,
    prunes: Arc<Prunes>,
}

/// Prunes due, by trigger (the history kept), and whether a thread is pruning them.
#[derive(Default)]
struct Prunes {
    due: Mutex<(bool, BTreeMap<String, usize>)>,
    /// Held by the pruning thread while it prunes (tests hold it to see a delivery noted
    /// without waiting for its prune).
    #[cfg(test)]
    gate: Mutex<()>,
}

impl Default for Deliveries {
    fn default() -> Deliveries {
        Deliveries {
            keys: Mutex::new(ulid::Generator::new()),
            counts: Mutex::default(),
            prunes: Arc::default(),
        }
    }
}

impl Deliveries {
    /// A new record key for a delivery at `trigger`: later deliveries sort after earlier
    /// ones (a monotonic ULID, so even two in one millisecond keep their order).
    pub fn new_key(&self, trigger: &str) -> String {
        let ulid = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generate()
            .unwrap_or_else(|_| ulid::Ulid::new());
        format!("{trigger}/{ulid}")
    }

    /// Counts deliveries per trigger and prunes a trigger's records to `keep` now and then
    /// (every [`PRUNE_EVERY`], and at the first after a start). A prune reads every record
    /// and claim of the trigger, so it is not the delivery's to wait for: it is handed to a
    /// thread (one at a time, each trigger's latest `keep`), and this returns at once.
    pub fn note_delivery(&self, store: &Arc<Store>, trigger: &str, keep: usize) {
        let due = {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.entry(trigger.to_owned()).or_insert(0);
            *count += 1;
            *count % PRUNE_EVERY == 1
        };
        if !due {
            return;
        }
        let mut state = self.prunes.due.lock().unwrap_or_else(|e| e.into_inner());
        state.1.insert(trigger.to_owned(), keep);
        if state.0 {
            return;
        }
        state.0 = true;
        drop(state);
        let (prunes, store) = (Arc::clone(&self.prunes), Arc::clone(store));
        let spawned = std::thread::Builder::new()
            .name("delivery prune".into())
            .spawn(move || prunes.prune_due(&store));
        if let Err(err) = spawned {
            tracing::warn!("no thread to prune webhook deliveries: {err}");
            self.prunes.due.lock().unwrap_or_else(|e| e.into_inner()).0 = false;
        }
    }
}

impl Prunes {
    /// Prunes the triggers due until none is left.
    fn prune_due(&self, store: &Store) {
        loop {
            let next = {
                let mut state = self.due.lock().unwrap_or_else(|e| e.into_inner());
                match state.1.pop_first() {
                    Some(next) => next,
                    None => {
                        state.0 = false;
                        return;
                    }
                }
            };
            #[cfg(test)]
            let _gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            let (trigger, keep) = next;
            if let Err(err) = prune(store, &trigger, keep) {
                tracing::warn!(trigger = %trigger, "webhook deliveries not pruned: {err}");
            }
        }
    }
}

/// Writes (or rewrites) a delivery record.
pub fn record(
    store: &Store,
    key: &str,
    record: &DeliveryRecord,
    durable: bool,
) -> Result<(), StoreError> {
    store.put_state(TREE, key, record, durable)
}

/// What claiming a delivery id found.
#[derive(Debug)]
pub enum Claim {
    /// The id is new: it is now remembered (not yet flushed: the flush of the run's
    /// creation, which follows, covers it).
    New,
    /// The id was accepted before; the record of that delivery, when still kept.
    Seen(Option<DeliveryRecord>),
}

/// Claims a delivery id for `trigger`, pointing at the record under `key`.
pub fn claim(store: &Store, trigger: &str, delivery: &str, key: &str) -> Result<Claim, StoreError> {
    let id_key = format!("{trigger}/{delivery}");
    let entry = IdEntry {
        record: key.to_owned(),
        run_id: None,
    };
    if store.insert_state_once(IDS_TREE, &id_key, &entry, false)? {
        return Ok(Claim::New);
    }
    Ok(Claim::Seen(
        earlier(store, trigger, delivery)?.and_then(|seen| seen.record),
    ))
}

/// A delivery id claimed before: the record of that delivery, when still kept (naming
/// its run), and the run its claim names.
#[derive(Debug)]
pub struct Seen {
    /// The earlier delivery's record, while the history keeps it.
    pub record: Option<DeliveryRecord>,
    /// The run the claim names, if any.
    pub run_id: Option<String>,
}

/// What the store remembers of an earlier delivery with this id at `trigger`: `None`
/// when the id is not claimed.
pub fn earlier(store: &Store, trigger: &str, delivery: &str) -> Result<Option<Seen>, StoreError> {
    let Some(entry) = store.state::<IdEntry>(IDS_TREE, &format!("{trigger}/{delivery}"))? else {
        return Ok(None);
    };
    let record = store
        .state::<DeliveryRecord>(TREE, &entry.record)?
        .map(|mut record| {
            record.run_id = record.run_id.or_else(|| entry.run_id.clone());
            record
        });
    Ok(Some(Seen {
        record,
        run_id: entry.run_id,
    }))
}

/// What an accepted delivery whose record names its run writes with that run, in one
/// atomic write ([`Store::create_claimed_runs`]): its claim, naming the run and the record
/// under `key`, and the record.
pub fn accepted_writes(key: &str, record: &DeliveryRecord) -> (StateWrite, StateWrite) {
    let entry = IdEntry {
        record: key.to_owned(),
        run_id: record.run_id.clone(),
    };
    (
        StateWrite::new(
            IDS_TREE,
            format!("{}/{}", record.trigger, record.delivery),
            &entry,
        ),
        StateWrite::new(TREE, key.to_owned(), record),
    )
}

/// The run an accepted delivery started, remembered with its claim (not flushed: the
/// flush of the run's creation covers it).
pub fn name_run(
    store: &Store,
    trigger: &str,
    delivery: &str,
    key: &str,
    run_id: &str,
) -> Result<(), StoreError> {
    let entry = IdEntry {
        record: key.to_owned(),
        run_id: Some(run_id.to_owned()),
    };
    store.put_state(IDS_TREE, &format!("{trigger}/{delivery}"), &entry, false)
}

/// The run a claimed delivery id started, as its claim remembers it (the record may have
/// left the history).
pub fn claimed_run(
    store: &Store,
    trigger: &str,
    delivery: &str,
) -> Result<Option<String>, StoreError> {
    Ok(store
        .state::<IdEntry>(IDS_TREE, &format!("{trigger}/{delivery}"))?
        .and_then(|entry| entry.run_id))
}

/// Forgets a claimed id (its run could not be created: a redelivery may try again).
pub fn release(store: &Store, trigger: &str, delivery: &str) -> Result<(), StoreError> {
    store.remove_states(IDS_TREE, &[format!("{trigger}/{delivery}")])
}

/// The records of a trigger, newest first, at most `limit`, and how many are kept.
pub fn list(
    store: &Store,
    trigger: &str,
    limit: usize,
) -> Result<(Vec<DeliveryRecord>, usize), StoreError> {
    let keys = store.states::<serde::de::IgnoredAny>(TREE, &format!("{trigger}/"))?;
    let total = keys.len();
    let mut records = Vec::with_capacity(limit.min(total));
    for (key, _) in keys.iter().rev().take(limit) {
        if let Some(record) = store.state::<DeliveryRecord>(TREE, key)? {
            records.push(record);
        }
    }
    Ok((records, total))
}

/// The part of the history a record counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Accepted,
    Rejected,
    Other,
}

/// Only what pruning reads of a record.
#[derive(Deserialize)]
struct ResultOf {
    #[serde(default)]
    result: String,
}

impl Part {
    fn of(result: &str) -> Part {
        match result {
            "accepted" => Part::Accepted,
            "rejected" => Part::Rejected,
            _ => Part::Other,
        }
    }
}

/// Removes a trigger's oldest records beyond `keep` in each part of its history
/// (accepted, rejected, the rest), and its oldest claimed ids beyond `keep` accepted
/// deliveries; returns how many records went.
///
/// Claims are bounded apart from the records: if a record leaving the history took its
/// claim along, a replay of that delivery repeated more than `keep` times would run again.
pub fn prune(store: &Store, trigger: &str, keep: usize) -> Result<usize, StoreError> {
    let prefix = format!("{trigger}/");
    let mut claims = store.states::<IdEntry>(IDS_TREE, &prefix)?;
    if claims.len() > keep {
        // Record keys are monotonic ULIDs: the oldest claims sort first.
        claims.sort_by(|a, b| a.1.record.cmp(&b.1.record));
        let old: Vec<String> = claims[..claims.len() - keep]
            .iter()
            .map(|(key, _)| key.clone())
            .collect();
        store.remove_states(IDS_TREE, &old)?;
    }
    let records = store.states::<ResultOf>(TREE, &prefix)?;
    if records.len() <= keep {
        return Ok(0);
    }
    // Newest first (keys sort by arrival): each part keeps its first `keep`.
    let mut seen = [0usize; 3];
    let mut old = Vec::new();
    for (key, record) in records.into_iter().rev() {
        let part = Part::of(&record.result) as usize;
        seen[part] += 1;
        if seen[part] > keep {
            old.push(key);
        }
    }
    store.remove_states(TREE, &old)?;
    Ok(old.len())
}

/// A push delivery's record with this result, naming no run, for the delivery modules' tests.
#[cfg(test)]
pub(crate) fn record_of(
    trigger: &str,
    delivery: &str,
    result: super::DeliveryResult,
) -> DeliveryRecord {
    DeliveryRecord {
        trigger: trigger.into(),
        delivery: delivery.into(),
        event: Some("push".into()),
        action: None,
        branch: Some("main".into()),
        result,
        reason: None,
        run_id: None,
        received_at: "2025-01-01T00:00:00Z".into(),
    }
}

/// An accepted push delivery's record, received now, naming `run`.
#[cfg(test)]
pub(crate) fn accepted(trigger: &str, delivery: &str, run: Option<&str>) -> DeliveryRecord {
    DeliveryRecord {
        run_id: run.map(str::to_owned),
        received_at: chrono::Utc::now().to_rfc3339(),
        ..record_of(trigger, delivery, super::DeliveryResult::Accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::triggers::DeliveryResult;

    #[test]
    fn claims_dedupe_and_survive_a_reopen() {
        let keys = Deliveries::default();
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let key = keys.new_key("trg_a");
            assert!(matches!(
                claim(&store, "trg_a", "d-1", &key).unwrap(),
                Claim::New
            ));
            let mut accepted = record_of("trg_a", "d-1", DeliveryResult::Accepted);
            accepted.run_id = Some("run_1".into());
            record(&store, &key, &accepted, true).unwrap();
            // Another trigger on the same path has its own ids.
            assert!(matches!(
                claim(&store, "trg_b", "d-1", &keys.new_key("trg_b")).unwrap(),
                Claim::New
            ));
        }
        let store = Store::open(dir.path()).unwrap();
        match claim(&store, "trg_a", "d-1", &keys.new_key("trg_a")).unwrap() {
            Claim::Seen(Some(earlier)) => assert_eq!(earlier.run_id.as_deref(), Some("run_1")),
            other => panic!("{other:?}"),
        }
        release(&store, "trg_a", "d-1").unwrap();
        assert!(matches!(
            claim(&store, "trg_a", "d-1", &keys.new_key("trg_a")).unwrap(),
            Claim::New
        ));
    }

    #[test]
    fn lists_newest_first_and_prunes_the_oldest() {
        let keys = Deliveries::default();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..10 {
            let key = keys.new_key("trg_a");
            let delivery = format!("d-{i}");
            assert!(matches!(
                claim(&store, "trg_a", &delivery, &key).unwrap(),
                Claim::New
            ));
            record(
                &store,
                &key,
                &record_of("trg_a", &delivery, DeliveryResult::Accepted),
                false,
            )
            .unwrap();
        }
        // A trigger whose id starts like another's is not mixed in.
        record(
            &store,
            &keys.new_key("trg_ab"),
            &record_of("trg_ab", "x", DeliveryResult::Filtered),
            false,
        )
        .unwrap();
        let (records, total) = list(&store, "trg_a", 3).unwrap();
        assert_eq!(total, 10);
        let ids: Vec<&str> = records.iter().map(|r| r.delivery.as_str()).collect();
        assert_eq!(ids, ["d-9", "d-8", "d-7"]);
        assert_eq!(prune(&store, "trg_a", 4).unwrap(), 6);
        let (records, total) = list(&store, "trg_a", 100).unwrap();
        assert_eq!(total, 4);
        assert_eq!(records.last().unwrap().delivery, "d-6");
        // The pruned deliveries' ids are forgotten; the kept ones are still duplicates.
        assert!(matches!(
            claim(&store, "trg_a", "d-0", &keys.new_key("trg_a")).unwrap(),
            Claim::New
        ));
        assert!(matches!(
            claim(&store, "trg_a", "d-9", &keys.new_key("trg_a")).unwrap(),
            Claim::Seen(Some(_))
        ));
        assert_eq!(list(&store, "trg_ab", 10).unwrap().1, 1);
    }

    #[test]
    fn a_delivery_noted_does_not_wait_for_its_prune() {
        let keys = Deliveries::default();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        for i in 0..5 {
            record(
                &store,
                &keys.new_key("trg_a"),
                &record_of("trg_a", &format!("d-{i}"), DeliveryResult::Filtered),
                false,
            )
            .unwrap();
        }
        // The pruning thread cannot prune while the gate is held: the first delivery after
        // the start, whose prune is due, is noted all the same.
        let gate = keys.prunes.gate.lock().unwrap();
        keys.note_delivery(&store, "trg_a", 2);
        assert_eq!(list(&store, "trg_a", 100).unwrap().1, 5);
        drop(gate);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while list(&store, "trg_a", 100).unwrap().1 != 2 {
            assert!(std::time::Instant::now() < deadline, "never pruned");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn rejected_deliveries_have_their_own_part_of_the_history() {
        let keys = Deliveries::default();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let put = |delivery: &str, result: DeliveryResult| {
            record(
                &store,
                &keys.new_key("trg_a"),
                &record_of("trg_a", delivery, result),
                false,
            )
            .unwrap();
        };
        put("a-1", DeliveryResult::Accepted);
        put("a-2", DeliveryResult::Accepted);
        put("f-1", DeliveryResult::Filtered);
        for i in 0..20 {
            put(&format!("r-{i}"), DeliveryResult::Rejected);
        }
        put("a-3", DeliveryResult::Accepted);
        assert_eq!(prune(&store, "trg_a", 2).unwrap(), 18 + 1);
        let (records, total) = list(&store, "trg_a", 100).unwrap();
        assert_eq!(total, 5);
        let ids: Vec<&str> = records.iter().map(|r| r.delivery.as_str()).collect();
        assert_eq!(ids, ["a-3", "r-19", "r-18", "f-1", "a-2"]);
    }

    #[test]
    fn duplicates_filling_the_history_keep_the_claim() {
        let keys = Deliveries::default();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = keys.new_key("trg_a");
        assert!(matches!(
            claim(&store, "trg_a", "d-1", &key).unwrap(),
            Claim::New
        ));
        record(
            &store,
            &key,
            &record_of("trg_a", "d-1", DeliveryResult::Accepted),
            false,
        )
        .unwrap();
        for _ in 0..10 {
            let key = keys.new_key("trg_a");
            assert!(matches!(
                claim(&store, "trg_a", "d-1", &key).unwrap(),
                Claim::Seen(_)
            ));
            let duplicate = record_of("trg_a", "d-1", DeliveryResult::Duplicate);
            record(&store, &key, &duplicate, false).unwrap();
            prune(&store, "trg_a", 3).unwrap();
        }
        // The duplicates keep three of their own; the accepted record stays beside them.
        assert_eq!(list(&store, "trg_a", 100).unwrap().1, 4);
        name_run(&store, "trg_a", "d-1", &key, "run_1").unwrap();
        assert!(matches!(
            claim(&store, "trg_a", "d-1", &keys.new_key("trg_a")).unwrap(),
            Claim::Seen(Some(_))
        ));
        assert_eq!(
            claimed_run(&store, "trg_a", "d-1").unwrap().as_deref(),
            Some("run_1")
        );
    }
}
