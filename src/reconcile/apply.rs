//! Carrying out a plan: one batch of record writes and the source status, flushed before
//! anything is reported.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::prepare::{Memo, Prepared};
use super::DesiredSet;
use crate::diagnostics::count;
use crate::store::{ObjectKey, ObjectRecord, ObjectStatus, SourceStatus, Store, StoreError};

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The revision applied.
    pub revision: String,
    /// Objects created.
    pub created: Vec<ObjectKey>,
    /// Objects whose spec changed.
    pub updated: Vec<ObjectKey>,
    /// Objects removed (with `--prune`).
    pub pruned: Vec<ObjectKey>,
    /// Objects whose manifests are gone but stay, because `--prune` was not given.
    pub not_pruned: Vec<ObjectKey>,
    /// Objects that did not change.
    pub unchanged: usize,
    /// Objects with invalid manifests, their last good version kept.
    pub invalid: Vec<ObjectKey>,
    /// Objects kept because their file cannot be read now.
    pub kept: Vec<ObjectKey>,
    /// Error diagnostics found.
    pub errors: usize,
    /// Warning diagnostics found.
    pub warnings: usize,
    /// Nothing was written.
    pub dry_run: bool,
}

/// Applies a prepared plan (or with `dry_run`, reports what applying would do). `now` is the
/// RFC 3339 time recorded on what is written.
pub fn apply(
    store: &Store,
    prepared: &Prepared,
    dry_run: bool,
    now: &str,
) -> Result<ApplyReport, StoreError> {
    let plan = &prepared.plan;
    let options = &prepared.options;
    let revision = &prepared.revision;
    let (errors, warnings) = count(&prepared.diagnostics);
    let mut report = ApplyReport {
        revision: revision.clone(),
        unchanged: plan.unchanged.len(),
        errors,
        warnings,
        dry_run,
        ..ApplyReport::default()
    };
    report.invalid = plan.invalid.iter().map(|h| h.key.clone()).collect();
    report.kept = plan.kept.clone();
    for change in &plan.delete {
        if options.prune {
            report.pruned.push(change.key.clone());
        } else {
            report.not_pruned.push(change.key.clone());
        }
    }
    for change in plan.create.iter().chain(&plan.update) {
        if change.before.is_none() {
            report.created.push(change.key.clone());
        } else {
            report.updated.push(change.key.clone());
        }
    }
    if dry_run {
        return Ok(report);
    }
    let records = match &prepared.computed {
        Some((desired, applied)) => records_to_write(prepared, desired, applied, now),
        // A plan from the memo has nothing to write (`prepare` checks it).
        None => Vec::new(),
    };
    let previous_status = store.source_status(&options.source)?;
    let status = SourceStatus {
        source: options.source.clone(),
        last_applied_revision: if errors == 0 {
            Some(revision.clone())
        } else {
            previous_status.and_then(|s| s.last_applied_revision)
        },
        last_attempted_revision: revision.clone(),
        last_attempt_at: now.to_owned(),
        errors,
    };
    let memo = prepared.computed.is_some().then(|| {
        let memo = Memo {
            key: prepared.memo_key.clone(),
            objects: prepared.objects,
            diagnostics: prepared.diagnostics.clone(),
            plan: plan.settled(options.prune),
        };
        serde_json::to_vec(&memo).expect("memo serialises")
    });
    store.commit(&records, Some(&status), memo.as_deref())?;
    Ok(report)
}

/// The records an apply writes: created, updated and recovered objects, invalid ones whose
/// diagnostics changed, and with `prune` the pruned ones.
fn records_to_write(
    prepared: &Prepared,
    desired: &DesiredSet,
    applied: &BTreeMap<ObjectKey, ObjectRecord>,
    now: &str,
) -> Vec<ObjectRecord> {
    let plan = &prepared.plan;
    let revision = &prepared.revision;
    let mut records = Vec::new();
    for change in plan.create.iter().chain(&plan.update) {
        let object = &desired.objects[&change.key];
        let previous = applied.get(&change.key);
        records.push(ObjectRecord {
            key: change.key.clone(),
            name: object.name.clone(),
            spec: Some(object.spec.clone()),
            hash: Some(object.hash.clone()),
            source_file: object.file.clone(),
            status: ObjectStatus::Applied,
            diagnostics: Vec::new(),
            applied_revision: Some(revision.clone()),
            attempted_revision: revision.clone(),
            generation: previous.map_or(1, |p| p.generation + 1),
            applied_at: Some(now.to_owned()),
            updated_at: now.to_owned(),
        });
    }
    for key in &plan.recovered {
        let mut record = applied[key].clone();
        record.status = ObjectStatus::Applied;
        record.diagnostics.clear();
        record.attempted_revision = revision.clone();
        record.updated_at = now.to_owned();
        records.push(record);
    }
    for held in &plan.invalid {
        let invalid = &desired.invalid[&held.key];
        let previous = applied.get(&held.key);
        let unchanged = previous.is_some_and(|p| {
            p.status == ObjectStatus::Invalid && p.diagnostics == invalid.diagnostics
        });
        if unchanged {
            continue;
        }
        let mut record = previous.cloned().unwrap_or_else(|| ObjectRecord {
            key: held.key.clone(),
            name: invalid.name.clone(),
            spec: None,
            hash: None,
            source_file: invalid.file.clone(),
            status: ObjectStatus::Invalid,
            diagnostics: Vec::new(),
            applied_revision: None,
            attempted_revision: revision.clone(),
            generation: 0,
            applied_at: None,
            updated_at: now.to_owned(),
        });
        if record.status == ObjectStatus::Pruned {
            record.spec = None;
        }
        record.status = ObjectStatus::Invalid;
        record.diagnostics = invalid.diagnostics.clone();
        record.attempted_revision = revision.clone();
        record.updated_at = now.to_owned();
        records.push(record);
    }
    for key in &plan.forgotten {
        let mut record = applied[key].clone();
        record.status = ObjectStatus::Pruned;
        record.diagnostics.clear();
        record.attempted_revision = revision.clone();
        record.updated_at = now.to_owned();
        records.push(record);
    }
    for change in &plan.delete {
        if !prepared.options.prune {
            continue;
        }
        let mut record = applied[&change.key].clone();
        record.status = ObjectStatus::Pruned;
        record.spec = None;
        record.hash = None;
        record.diagnostics.clear();
        record.attempted_revision = revision.clone();
        record.updated_at = now.to_owned();
        records.push(record);
    }
    records
}
