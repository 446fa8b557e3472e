//! The reconcile memo: an unchanged revision against unchanged records reuses the outcome of
//! its last reconcile, and that outcome is always the one a full recomputation gives.

use std::fs;
use std::path::Path;

use orchestrator::manifest::Kind;
use orchestrator::reconcile::{self, Prepared, ReconcileOptions};
use orchestrator::source::dir::{self, DirOptions, SourcePath};
use orchestrator::store::Store;

fn prepare(store: &Store, project: &Path, prune: bool, use_memo: bool) -> Prepared {
    let paths: Vec<SourcePath> = Kind::ALL
        .iter()
        .map(|k| SourcePath {
            path: project.join(k.directory()),
            required: false,
        })
        .collect();
    let snapshot = dir::load(
        &paths,
        &DirOptions {
            root: project.to_owned(),
            max_file_bytes: 1 << 20,
        },
    )
    .unwrap();
    reconcile::prepare(
        store,
        &snapshot,
        &ReconcileOptions {
            source: "dir".into(),
            scope: None,
            prune,
            use_memo,
        },
    )
    .unwrap()
}

/// Applies, then checks that the memo written is used next time and agrees with a fresh
/// computation of the same revision.
fn apply_and_check(store: &Store, project: &Path, prune: bool) {
    let prepared = prepare(store, project, prune, true);
    reconcile::apply(store, &prepared, false, "2026-01-01T00:00:00Z").unwrap();
    let memo = prepare(store, project, prune, true);
    let fresh = prepare(store, project, prune, false);
    assert!(memo.from_memo, "the unchanged revision reuses its memo");
    assert!(!fresh.from_memo);
    assert_eq!(memo.plan, fresh.plan);
    assert_eq!(memo.diagnostics, fresh.diagnostics);
    assert_eq!(memo.objects, fresh.objects);
    assert_eq!(memo.revision, fresh.revision);
}

#[test]
fn the_memo_always_agrees_with_a_full_reconcile() {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    fs::create_dir_all(root.join("workflows")).unwrap();
    fs::create_dir_all(root.join("schedules")).unwrap();
    let workflow = |name: &str, command: &str| {
        format!("name: {name}\nsteps:\n  - name: run\n    command: [{command}]\n")
    };
    fs::write(root.join("workflows/a.yaml"), workflow("A", "\"true\"")).unwrap();
    fs::write(root.join("workflows/b.yaml"), workflow("B", "\"true\"")).unwrap();
    fs::write(
        root.join("schedules/nightly.yaml"),
        "name: Nightly\ncron: \"0 2 * * *\"\nworkflow: wf_a\n",
    )
    .unwrap();
    apply_and_check(&store, root, false);

    // An edit: a new revision, so no memo, then a memo again.
    fs::write(root.join("workflows/a.yaml"), workflow("A", "\"false\"")).unwrap();
    let edited = prepare(&store, root, false, true);
    assert!(!edited.from_memo);
    assert_eq!(edited.plan.update.len(), 1);
    apply_and_check(&store, root, false);

    // An invalid manifest keeps its last good version; the memo carries the diagnostic.
    fs::write(
        root.join("workflows/b.yaml"),
        "name: B\nsteps:\n  - name: run\n    retries: many\n    command: [x]\n",
    )
    .unwrap();
    apply_and_check(&store, root, false);
    let held = prepare(&store, root, false, true);
    assert!(held.from_memo);
    assert!(held.has_errors());
    assert_eq!(held.plan.invalid.len(), 1);
    assert!(held.plan.invalid[0].last_good_in_force);

    // A deletion without --prune stays a pending deletion in the memo...
    fs::remove_file(root.join("schedules/nightly.yaml")).unwrap();
    apply_and_check(&store, root, false);
    assert_eq!(prepare(&store, root, false, true).plan.delete.len(), 1);
    // ...and a memo with a pending deletion is not used by a pruning reconcile.
    let pruning = prepare(&store, root, true, true);
    assert!(!pruning.from_memo);
    apply_and_check(&store, root, true);
    assert!(prepare(&store, root, true, true).plan.delete.is_empty());

    // A record written behind the memo's back (here, by applying a scoped subset with other
    // content) invalidates it.
    let other = tempfile::tempdir().unwrap();
    fs::create_dir_all(other.path().join("workflows")).unwrap();
    fs::write(
        other.path().join("workflows/a.yaml"),
        workflow("A", "\"echo\""),
    )
    .unwrap();
    let elsewhere = prepare(&store, other.path(), false, true);
    reconcile::apply(&store, &elsewhere, false, "2026-01-01T00:00:00Z").unwrap();
    let after = prepare(&store, root, false, true);
    assert!(!after.from_memo, "a record write drops the memo");
    assert_eq!(after.plan.update.len(), 1, "{:?}", after.plan);
}

#[test]
fn a_manifest_that_was_never_valid_is_forgotten_once_its_file_goes() {
    let project = tempfile::tempdir().unwrap();
    let root = project.path();
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    fs::create_dir_all(root.join("workflows")).unwrap();
    fs::write(
        root.join("workflows/ghost.yaml"),
        "name: Ghost\nsteps:\n  - name: run\n    retries: many\n    command: [x]\n",
    )
    .unwrap();
    apply_and_check(&store, root, false);
    let status_of_ghost = || {
        store
            .objects()
            .unwrap()
            .into_values()
            .find(|record| record.name == "Ghost")
            .map(|record| record.status)
    };
    assert_eq!(
        status_of_ghost(),
        Some(orchestrator::store::ObjectStatus::Invalid)
    );

    // Its file goes: with nothing of it ever in force, it leaves the listings without prune.
    fs::remove_file(root.join("workflows/ghost.yaml")).unwrap();
    let prepared = prepare(&store, root, false, true);
    assert_eq!(prepared.plan.forgotten.len(), 1, "{:?}", prepared.plan);
    assert!(prepared.plan.delete.is_empty());
    apply_and_check(&store, root, false);
    assert_eq!(
        status_of_ghost(),
        Some(orchestrator::store::ObjectStatus::Pruned)
    );
    assert!(prepare(&store, root, false, true).plan.forgotten.is_empty());
}
