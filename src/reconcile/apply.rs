//! Carrying out a plan: one batch of record writes and the source status, flushed before
//! anything is reported.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{DesiredSet, Plan};
use crate::diagnostics::count;
use crate::store::{ObjectKey, ObjectRecord, ObjectStatus, SourceStatus, Store, StoreError};

/// How to apply.
#[derive(Debug, Clone, Default)]
pub struct ApplyOptions {
    /// Remove objects whose manifests are gone.
    pub prune: bool,
    /// Compute and report, write nothing.
    pub dry_run: bool,
    /// The source name recorded in the status (`dir`).
    pub source: String,
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
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

/// Applies a plan computed from `desired` against `applied` (the store's records).
pub fn apply(
    store: &Store,
    desired: &DesiredSet,
    applied: &BTreeMap<ObjectKey, ObjectRecord>,
    plan: &Plan,
    options: &ApplyOptions,
    now: &str,
) -> Result<ApplyReport, StoreError> {
    let (errors, warnings) = count(&desired.diagnostics);
    let mut report = ApplyReport {
        revision: desired.revision.clone(),
        unchanged: plan.unchanged.len(),
        errors,
        warnings,
        dry_run: options.dry_run,
        ..ApplyReport::default()
    };
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
            applied_revision: Some(desired.revision.clone()),
            attempted_revision: desired.revision.clone(),
            generation: previous.map_or(1, |p| p.generation + 1),
            applied_at: Some(now.to_owned()),
            updated_at: now.to_owned(),
        });
        if change.before.is_none() {
            report.created.push(change.key.clone());
        } else {
            report.updated.push(change.key.clone());
        }
    }
    for key in &plan.recovered {
        let mut record = applied[key].clone();
        record.status = ObjectStatus::Applied;
        record.diagnostics.clear();
        record.attempted_revision = desired.revision.clone();
        record.updated_at = now.to_owned();
        records.push(record);
    }
    for held in &plan.invalid {
        let invalid = &desired.invalid[&held.key];
        report.invalid.push(held.key.clone());
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
            attempted_revision: desired.revision.clone(),
            generation: 0,
            applied_at: None,
            updated_at: now.to_owned(),
        });
        if record.status == ObjectStatus::Pruned {
            record.spec = None;
        }
        record.status = ObjectStatus::Invalid;
        record.diagnostics = invalid.diagnostics.clone();
        record.attempted_revision = desired.revision.clone();
        record.updated_at = now.to_owned();
        records.push(record);
    }
    for change in &plan.delete {
        if !options.prune {
            report.not_pruned.push(change.key.clone());
            continue;
        }
        let mut record = applied[&change.key].clone();
        record.status = ObjectStatus::Pruned;
        record.spec = None;
        record.hash = None;
        record.diagnostics.clear();
        record.attempted_revision = desired.revision.clone();
        record.updated_at = now.to_owned();
        records.push(record);
        report.pruned.push(change.key.clone());
    }
    report.kept = plan.kept.clone();
    if options.dry_run {
        return Ok(report);
    }
    let previous_status = store.source_status(&options.source)?;
    let status = SourceStatus {
        source: options.source.clone(),
        last_applied_revision: if errors == 0 {
            Some(desired.revision.clone())
        } else {
            previous_status.and_then(|s| s.last_applied_revision)
        },
        last_attempted_revision: desired.revision.clone(),
        last_attempt_at: now.to_owned(),
        errors,
    };
    store.commit(&records, Some(&status))?;
    Ok(report)
}
