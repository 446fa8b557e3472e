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
    apply_returning_records(store, prepared, dry_run, now).map(|(report, _)| report)
}

/// [`apply`], also returning every object record as the store holds it once the apply is
/// durable, when the plan was computed afresh (it read them all): the records it read with
/// those it wrote. `None` for a plan from the memo or a dry run.
pub fn apply_returning_records(
    store: &Store,
    prepared: &Prepared,
    dry_run: bool,
    now: &str,
) -> Result<(ApplyReport, Option<BTreeMap<ObjectKey, ObjectRecord>>), StoreError> {
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
        return Ok((report, None));
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
    let after = prepared.computed.as_ref().map(|(_, all)| {
        let mut after = all.clone();
        for record in records {
            after.insert(record.key.clone(), record);
        }
        after
    });
    Ok((report, after))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Kind;
    use crate::reconcile::prepare::{prepare, ReconcileOptions};
    use crate::source::{Snapshot, SourceFile};

    const FIRST: &str = "2026-01-01T00:00:00Z";
    const LATER: &str = "2026-01-02T00:00:00Z";

    fn workflow(name: &str, command: &str) -> String {
        format!("name: {name}\nsteps:\n  - name: run\n    command: [\"{command}\"]\n")
    }

    /// A workflow whose step has a retry count that is no number.
    fn invalid_workflow(name: &str) -> String {
        format!("name: {name}\nsteps:\n  - name: run\n    retries: many\n    command: [x]\n")
    }

    fn snapshot(revision: &str, files: &[(&str, String)]) -> Snapshot {
        Snapshot {
            revision: revision.to_owned(),
            files: files
                .iter()
                .map(|(path, text)| SourceFile {
                    path: (*path).to_owned(),
                    text: text.clone(),
                })
                .collect(),
            ..Snapshot::default()
        }
    }

    fn options(prune: bool) -> ReconcileOptions {
        ReconcileOptions {
            source: "dir".to_owned(),
            scope: None,
            prune,
            use_memo: true,
        }
    }

    fn key(id: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Workflow,
            id: id.to_owned(),
        }
    }

    fn two_workflows() -> Snapshot {
        snapshot(
            "dir:1",
            &[
                ("workflows/a.yaml", workflow("A", "true")),
                ("workflows/b.yaml", workflow("B", "true")),
            ],
        )
    }

    #[test]
    fn an_apply_is_on_disk_when_it_returns_records_status_and_memo_alike() {
        let data = tempfile::tempdir().unwrap();
        let snapshot = two_workflows();
        {
            let store = Store::open(data.path()).unwrap();
            let prepared = prepare(&store, &snapshot, &options(false)).unwrap();
            let report = apply(&store, &prepared, false, FIRST).unwrap();
            assert_eq!(report.created, vec![key("wf_a"), key("wf_b")]);
            assert_eq!(report.revision, "dir:1");
            assert_eq!((report.errors, report.dry_run), (0, false));
        }

        // What a re-open sees: the store was dropped without any further flush.
        let store = Store::open(data.path()).unwrap();
        let records = store.objects().unwrap();
        assert_eq!(records.len(), 2, "{records:#?}");
        for (key, record) in &records {
            assert_eq!(record.status, ObjectStatus::Applied, "{key:?}");
            assert_eq!(record.generation, 1, "{key:?}");
            assert_eq!(record.applied_revision.as_deref(), Some("dir:1"));
            assert_eq!(record.attempted_revision, "dir:1");
            assert_eq!(record.applied_at.as_deref(), Some(FIRST));
            assert!(record.spec.is_some() && record.hash.is_some(), "{record:?}");
            assert!(record.diagnostics.is_empty(), "{record:?}");
        }
        assert_eq!(records[&key("wf_a")].source_file, "workflows/a.yaml");
        let status = store
            .source_status("dir")
            .unwrap()
            .expect("a source status");
        assert_eq!(status.last_applied_revision.as_deref(), Some("dir:1"));
        assert_eq!(status.last_attempted_revision, "dir:1");
        assert_eq!((status.last_attempt_at.as_str(), status.errors), (FIRST, 0));
        assert!(store.memo("dir").unwrap().is_some());
        let again = prepare(&store, &snapshot, &options(false)).unwrap();
        assert!(again.from_memo);
        assert_eq!(again.plan.unchanged, vec![key("wf_a"), key("wf_b")]);
    }

    #[test]
    fn the_records_an_apply_returns_are_those_the_store_holds_after_it() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let steps = [
            two_workflows(),
            snapshot(
                "dir:2",
                &[
                    ("workflows/a.yaml", invalid_workflow("A")),
                    ("workflows/c.yaml", workflow("C", "true")),
                ],
            ),
            two_workflows(),
        ];
        for (n, snapshot) in steps.iter().enumerate() {
            let mut options = options(n == 1);
            options.use_memo = false;
            let prepared = prepare(&store, snapshot, &options).unwrap();
            let (_, after) = apply_returning_records(&store, &prepared, false, LATER).unwrap();
            assert_eq!(after, Some(store.objects().unwrap()), "step {n}");
        }
        let memo = prepare(&store, &two_workflows(), &options(false)).unwrap();
        assert!(memo.from_memo);
        let (_, after) = apply_returning_records(&store, &memo, false, LATER).unwrap();
        assert_eq!(after, None, "a plan from the memo read no record");
    }

    #[test]
    fn a_dry_run_reports_the_same_and_writes_nothing() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let prepared = prepare(&store, &two_workflows(), &options(false)).unwrap();
        let dry = apply(&store, &prepared, true, FIRST).unwrap();
        assert!(dry.dry_run);
        assert_eq!(dry.created, vec![key("wf_a"), key("wf_b")]);
        assert!(store.objects().unwrap().is_empty());
        assert_eq!(store.source_status("dir").unwrap(), None);
        assert_eq!(store.memo("dir").unwrap(), None);

        let real = apply(&store, &prepared, false, FIRST).unwrap();
        assert_eq!(
            ApplyReport {
                dry_run: true,
                ..real
            },
            dry
        );
    }

    #[test]
    fn updates_deletions_and_invalid_manifests_write_what_they_say() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let first = prepare(&store, &two_workflows(), &options(false)).unwrap();
        apply(&store, &first, false, FIRST).unwrap();

        // A edited, B gone, C new and invalid; no prune.
        let second = snapshot(
            "dir:2",
            &[
                ("workflows/a.yaml", workflow("A", "false")),
                ("workflows/c.yaml", invalid_workflow("C")),
            ],
        );
        let prepared = prepare(&store, &second, &options(false)).unwrap();
        let report = apply(&store, &prepared, false, LATER).unwrap();
        assert_eq!(report.updated, vec![key("wf_a")]);
        assert_eq!(report.not_pruned, vec![key("wf_b")]);
        assert_eq!(report.invalid, vec![key("wf_c")]);
        assert!(report.pruned.is_empty() && report.created.is_empty());
        assert!(report.errors > 0, "{report:?}");
        let records = store.objects().unwrap();
        let a = &records[&key("wf_a")];
        assert_eq!((a.generation, a.status), (2, ObjectStatus::Applied));
        assert_eq!(a.applied_revision.as_deref(), Some("dir:2"));
        assert_eq!(a.applied_at.as_deref(), Some(LATER));
        let b = &records[&key("wf_b")];
        assert_eq!((b.status, b.generation), (ObjectStatus::Applied, 1));
        assert_eq!(b.attempted_revision, "dir:1", "not pruned, not touched");
        let c = &records[&key("wf_c")];
        assert_eq!((c.status, c.generation), (ObjectStatus::Invalid, 0));
        assert_eq!((c.spec.as_ref(), c.applied_revision.as_ref()), (None, None));
        assert!(!c.diagnostics.is_empty(), "{c:?}");
        // With errors the last applied revision stays the last one without.
        let status = store.source_status("dir").unwrap().unwrap();
        assert_eq!(status.last_applied_revision.as_deref(), Some("dir:1"));
        assert_eq!(status.last_attempted_revision, "dir:2");
        assert_eq!(status.errors, report.errors);

        // The same content with prune: B is pruned, nothing else is written again.
        let pruning = prepare(&store, &second, &options(true)).unwrap();
        assert!(!pruning.from_memo, "the memo has a pending deletion");
        let report = apply(&store, &pruning, false, LATER).unwrap();
        assert_eq!(report.pruned, vec![key("wf_b")]);
        assert!(report.updated.is_empty() && report.not_pruned.is_empty());
        let b = store.object(&key("wf_b")).unwrap().unwrap();
        assert_eq!(b.status, ObjectStatus::Pruned);
        assert_eq!((b.spec, b.hash), (None, None));
        assert_eq!(b.attempted_revision, "dir:2");
    }

    #[test]
    fn an_invalid_manifest_keeps_the_last_good_spec_and_recovers_without_a_new_generation() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let good = two_workflows();
        apply(
            &store,
            &prepare(&store, &good, &options(false)).unwrap(),
            false,
            FIRST,
        )
        .unwrap();
        let before = store.object(&key("wf_a")).unwrap().unwrap();

        let broken = snapshot(
            "dir:2",
            &[
                ("workflows/a.yaml", invalid_workflow("A")),
                ("workflows/b.yaml", workflow("B", "true")),
            ],
        );
        let prepared = prepare(&store, &broken, &options(false)).unwrap();
        assert!(prepared.plan.invalid[0].last_good_in_force);
        apply(&store, &prepared, false, LATER).unwrap();
        let held = store.object(&key("wf_a")).unwrap().unwrap();
        assert_eq!(held.status, ObjectStatus::Invalid);
        assert_eq!((&held.spec, held.generation), (&before.spec, 1));
        assert!(!held.diagnostics.is_empty());

        let prepared = prepare(&store, &good, &options(false)).unwrap();
        assert_eq!(prepared.plan.recovered, vec![key("wf_a")]);
        apply(&store, &prepared, false, LATER).unwrap();
        let recovered = store.object(&key("wf_a")).unwrap().unwrap();
        assert_eq!(recovered.status, ObjectStatus::Applied);
        assert!(recovered.diagnostics.is_empty());
        assert_eq!((&recovered.spec, recovered.generation), (&before.spec, 1));
    }

    #[test]
    fn a_plan_from_the_memo_writes_only_the_source_status() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let snapshot = two_workflows();
        apply(
            &store,
            &prepare(&store, &snapshot, &options(false)).unwrap(),
            false,
            FIRST,
        )
        .unwrap();
        let records = store.objects().unwrap();

        let memo = prepare(&store, &snapshot, &options(false)).unwrap();
        assert!(memo.from_memo);
        let report = apply(&store, &memo, false, LATER).unwrap();
        assert!(report.created.is_empty() && report.updated.is_empty());
        assert_eq!(report.unchanged, 2);
        assert_eq!(
            store.objects().unwrap(),
            records,
            "no record is written again"
        );
        let status = store.source_status("dir").unwrap().unwrap();
        assert_eq!(status.last_attempt_at, LATER);
        assert!(
            prepare(&store, &snapshot, &options(false))
                .unwrap()
                .from_memo,
            "the memo survives an apply that writes no record"
        );
    }
}
