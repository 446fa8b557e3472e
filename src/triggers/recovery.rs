//! Webhook deliveries a process that ended left half done, settled at the server's start.
//!
//! The receiver now writes a delivery's claim, its record and its run in one transaction
//! (see [`super::intake`]), which a crash leaves whole or not at all. Before it, it
//! claimed a delivery id, recorded the delivery as accepted, created its run and recorded
//! the run's id in separate writes, then flushed once: a store a crash left then may
//! still hold the claim — sled writes buffers out when any thread flushes,
//! and recovers a prefix of its writes — without the run, or with the run but without the
//! record naming it. The sender was never answered 202, so it will deliver again; without
//! this pass the claim would answer that redelivery `duplicate` with no run, and nothing
//! would ever run for it. So, before the server takes requests, each claim whose delivery
//! is not recorded as accepted with its run is settled:
//!
//! - its run exists (created by the delivery, found by the trigger and delivery id it
//!   carries): the record is completed with the run's id; a redelivery is a duplicate that
//!   names it;
//! - there is no run: the claim is released and the record says the delivery ran nothing,
//!   so a redelivery runs it.
//!
//! A claim whose record is gone because the trigger's history was pruned (claims are kept
//! apart from records, so a replayed delivery stays a duplicate) is left alone: pruned
//! records are always older than the oldest record kept.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::deliveries::{IDS_TREE, TREE};
use super::{DeliveryRecord, DeliveryResult};
use crate::store::{Store, StoreError};

/// Why a released delivery ran nothing, as its record says.
pub const RELEASED_REASON: &str =
    "the server stopped before this delivery's run was created: nothing ran, and a redelivery will run it";

/// What [`recover`] settled, as `<trigger id>/<delivery id>`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Deliveries whose run existed: their records now name it.
    pub linked: Vec<String>,
    /// Deliveries that started no run: their ids are released for a redelivery.
    pub released: Vec<String>,
}

/// Settles the delivery claims a process that ended left without a recorded run (see the
/// module documentation). Call at start, before any delivery is received. Durable when it
/// returns.
pub fn recover(store: &Store) -> Result<Recovered, StoreError> {
    // (claim key, the claim, record key, record if any)
    let mut unsettled: Vec<(String, Value, String, Option<DeliveryRecord>)> = Vec::new();
    // The oldest record kept per trigger: a missing record older than it was pruned.
    let mut oldest_kept: HashMap<String, Option<String>> = HashMap::new();
    for (claim, entry) in store.states::<Value>(IDS_TREE, "")? {
        let Some(record_key) = entry.get("record").and_then(Value::as_str) else {
            continue;
        };
        if entry.get("run_id").and_then(Value::as_str).is_some() {
            // The claim names its run: written after the run, so the run is there.
            continue;
        }
        let record_key = record_key.to_owned();
        let record: Option<DeliveryRecord> = store.state(TREE, &record_key)?;
        match &record {
            Some(r) if r.result == DeliveryResult::Accepted && r.run_id.is_some() => continue,
            Some(_) => {}
            None => {
                let Some((trigger, _)) = claim.split_once('/') else {
                    continue;
                };
                if !oldest_kept.contains_key(trigger) {
                    let first = store
                        .states::<serde::de::IgnoredAny>(TREE, &format!("{trigger}/"))?
                        .into_iter()
                        .next()
                        .map(|(key, _)| key);
                    oldest_kept.insert(trigger.to_owned(), first);
                }
                let pruned = oldest_kept[trigger]
                    .as_deref()
                    .is_some_and(|oldest| record_key.as_str() < oldest);
                if pruned {
                    continue;
                }
            }
        }
        unsettled.push((claim, entry, record_key, record));
    }
    if unsettled.is_empty() {
        return Ok(Recovered::default());
    }

    // The runs created since the earliest of these deliveries arrived (with a minute's
    // margin for clocks), by trigger and delivery id.
    let earliest = unsettled
        .iter()
        .filter_map(|(_, _, key, _)| received(key))
        .min()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let since = earliest
        .checked_sub(Duration::from_secs(60))
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut runs: BTreeMap<(String, String), String> = BTreeMap::new();
    for run in store.runs_from(&crate::engine::run::first_run_id_at(since))? {
        let text = |name: &str| run.trigger.details.get(name).and_then(Value::as_str);
        if let (true, Some(trigger), Some(delivery)) = (
            run.trigger.kind == "webhook",
            text("trigger"),
            text("delivery"),
        ) {
            runs.entry((trigger.to_owned(), delivery.to_owned()))
                .or_insert(run.id.clone());
        }
    }

    let mut recovered = Recovered::default();
    let mut records: Vec<(String, DeliveryRecord)> = Vec::new();
    let mut claims: Vec<(String, Value)> = Vec::new();
    for (claim, mut entry, record_key, record) in unsettled {
        let Some((trigger, delivery)) = claim.split_once('/') else {
            continue;
        };
        let mut record = record.unwrap_or_else(|| DeliveryRecord {
            trigger: trigger.to_owned(),
            delivery: delivery.to_owned(),
            event: None,
            action: None,
            branch: None,
            result: DeliveryResult::Accepted,
            reason: None,
            run_id: None,
            received_at: received(&record_key)
                .map(|at| chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339())
                .unwrap_or_default(),
        });
        match runs.get(&(trigger.to_owned(), delivery.to_owned())) {
            Some(run) => {
                record.result = DeliveryResult::Accepted;
                record.reason = None;
                record.run_id = Some(run.clone());
                if let Some(entry) = entry.as_object_mut() {
                    entry.insert("run_id".into(), Value::from(run.clone()));
                }
                claims.push((claim.clone(), entry));
                recovered.linked.push(claim);
            }
            None => {
                record.result = DeliveryResult::Error;
                record.reason = Some(RELEASED_REASON.to_owned());
                record.run_id = None;
                recovered.released.push(claim);
            }
        }
        records.push((record_key, record));
    }
    // The records first: a crash before the claims change leaves claims this pass settles
    // again.
    store.put_states(TREE, &records, false)?;
    store.put_states(IDS_TREE, &claims, recovered.released.is_empty())?;
    if !recovered.released.is_empty() {
        store.remove_states(IDS_TREE, &recovered.released)?;
    }
    Ok(recovered)
}

/// When a delivery arrived, from its record key (`<trigger id>/<ULID>`).
fn received(record_key: &str) -> Option<SystemTime> {
    let (_, id) = record_key.rsplit_once('/')?;
    ulid::Ulid::from_string(id).ok().map(|u| u.datetime())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunRecord;
    use crate::triggers::deliveries::{accepted, claim, record, Claim, Deliveries};

    fn webhook_run(trigger: &str, delivery: &str) -> RunRecord {
        serde_json::from_value(serde_json::json!({
            "id": crate::engine::run::new_run_id(),
            "workflow_id": "wf_a",
            "workflow_name": "A",
            "status": "queued",
            "parameters": {},
            "trigger": {"kind": "webhook", "details": {"trigger": trigger, "delivery": delivery}},
            "workflow": {"steps": [{"name": "a", "command": ["true"]}]},
            "steps": ["a"],
            "created_at": chrono::Utc::now().to_rfc3339(),
        }))
        .unwrap()
    }

    /// Claims `delivery` and records it as the receiver does before the run is created.
    fn claimed(store: &Store, keys: &Deliveries, delivery: &str, run: Option<&str>) -> String {
        let key = keys.new_key("trg_a");
        assert!(matches!(
            claim(store, "trg_a", delivery, &key).unwrap(),
            Claim::New
        ));
        record(store, &key, &accepted("trg_a", delivery, run), false).unwrap();
        key
    }

    #[test]
    fn claims_left_without_a_run_are_released_and_runs_are_linked() {
        let keys = Deliveries::default();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Complete: claimed, run created, recorded with its run.
        claimed(&store, &keys, "done", Some("run_x"));
        // Claimed and recorded, no run: the crash came before the run was written.
        let lost = claimed(&store, &keys, "lost", None);
        // Claimed, run created, the record naming it not written.
        let run = webhook_run("trg_a", "unlinked");
        store.save_run(Some(&run), &[], false).unwrap();
        let unlinked = claimed(&store, &keys, "unlinked", None);
        // Claimed only: neither record nor run.
        assert!(matches!(
            claim(&store, "trg_a", "bare", &keys.new_key("trg_a")).unwrap(),
            Claim::New
        ));

        let recovered = recover(&store).unwrap();
        assert_eq!(recovered.linked, ["trg_a/unlinked"]);
        let mut released = recovered.released.clone();
        released.sort();
        assert_eq!(released, ["trg_a/bare", "trg_a/lost"]);

        // A redelivery of a released one runs; of the others it is a duplicate naming
        // its run.
        for delivery in ["lost", "bare"] {
            assert!(matches!(
                claim(&store, "trg_a", delivery, &keys.new_key("trg_a")).unwrap(),
                Claim::New
            ));
        }
        match claim(&store, "trg_a", "unlinked", &keys.new_key("trg_a")).unwrap() {
            Claim::Seen(Some(earlier)) => {
                assert_eq!(earlier.run_id.as_deref(), Some(run.id.as_str()))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            claim(&store, "trg_a", "done", &keys.new_key("trg_a")).unwrap(),
            Claim::Seen(Some(_))
        ));
        let lost: DeliveryRecord = store.state(TREE, &lost).unwrap().unwrap();
        assert_eq!(lost.result, DeliveryResult::Error);
        assert_eq!(lost.reason.as_deref(), Some(RELEASED_REASON));
        let unlinked: DeliveryRecord = store.state(TREE, &unlinked).unwrap().unwrap();
        assert_eq!(unlinked.result, DeliveryResult::Accepted);
        assert_eq!(
            crate::triggers::deliveries::claimed_run(&store, "trg_a", "unlinked").unwrap(),
            Some(run.id.clone())
        );
        // Settled: a second pass finds nothing (the new claims above have no records yet,
        // as if in flight, so they are left out of this check).
        for delivery in ["lost", "bare"] {
            store
                .remove_states(IDS_TREE, &[format!("trg_a/{delivery}")])
                .unwrap();
        }
        assert_eq!(recover(&store).unwrap(), Recovered::default());
    }

    #[test]
    fn a_claim_whose_record_was_pruned_stays_a_duplicate() {
        let keys = Deliveries::default();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = claimed(&store, &keys, "old", Some("run_old"));
        claimed(&store, &keys, "new", Some("run_new"));
        // The history kept only the newest record; the claim of the old one stays.
        store.remove_states(TREE, &[old]).unwrap();
        assert_eq!(recover(&store).unwrap(), Recovered::default());
        assert!(matches!(
            claim(&store, "trg_a", "old", &keys.new_key("trg_a")).unwrap(),
            Claim::Seen(None)
        ));
    }
}
