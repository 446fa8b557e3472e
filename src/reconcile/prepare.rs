//! From a snapshot and the store to a plan, the way `diff`, `apply` and the controller need
//! it: records outside the paths asked about are left alone, and an unchanged revision
//! against unchanged records reuses the outcome of its last reconcile (the memo) instead of
//! parsing and validating every file again.
//!
//! The memo is sound because the outcome is a pure function of the snapshot (named by its
//! revision), the scope, the rules built into this release and the object records; the
//! store drops every memo whenever a record is written, and the memo key covers the rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{desired_set_checked, diff, DesiredSet, FileChecks, Plan, Surroundings};
use crate::diagnostics::Diagnostic;
use crate::manifest::Kind;
use crate::schema;
use crate::source::Snapshot;
use crate::store::{ObjectKey, ObjectRecord, Store, StoreError};

/// What to reconcile against.
#[derive(Debug, Clone, Default)]
pub struct ReconcileOptions {
    /// The source name its status is recorded under (`dir`).
    pub source: String,
    /// Paths the snapshot was limited to, as shown in records: objects last seen outside
    /// them are neither compared nor deleted. `None` means the whole source.
    pub scope: Option<Vec<String>>,
    /// Remove objects whose manifests are gone.
    pub prune: bool,
    /// Reuse the memo of an unchanged revision (on by default; off forces a full check).
    pub use_memo: bool,
}

/// A plan ready to show or apply.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The snapshot's revision.
    pub revision: String,
    /// Every diagnostic, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// What applying would change.
    pub plan: Plan,
    /// Objects the snapshot declares, valid or not.
    pub objects: usize,
    /// The plan came from the memo of this revision: no file was parsed.
    pub from_memo: bool,
    pub(super) options: ReconcileOptions,
    pub(super) memo_key: String,
    /// The parsed snapshot and every record, when the plan was computed afresh.
    pub(super) computed: Option<(DesiredSet, BTreeMap<ObjectKey, ObjectRecord>)>,
}

impl Prepared {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// The memo of one reconcile: the plan as it stands once that reconcile was applied.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Memo {
    pub(super) key: String,
    pub(super) objects: usize,
    pub(super) diagnostics: Vec<Diagnostic>,
    pub(super) plan: Plan,
}

/// Computes the plan for a snapshot, from the memo when it is valid for it.
pub fn prepare(
    store: &Store,
    snapshot: &Snapshot,
    options: &ReconcileOptions,
) -> Result<Prepared, StoreError> {
    prepare_checked(store, snapshot, options, None)
}

/// [`prepare`], parsing and validating only the files whose text `checks` does not know
/// (see [`FileChecks`]): what a long-lived reconciler calls, so that an edit re-checks the
/// edited file alone. The plan is the same as [`prepare`]'s.
pub fn prepare_checked(
    store: &Store,
    snapshot: &Snapshot,
    options: &ReconcileOptions,
    checks: Option<&FileChecks>,
) -> Result<Prepared, StoreError> {
    let memo_key = memo_key(snapshot, options.scope.as_deref());
    if options.use_memo {
        if let Some(memo) = store
            .memo(&options.source)?
            .and_then(|bytes| serde_json::from_slice::<Memo>(&bytes).ok())
            .filter(|memo| memo.key == memo_key)
            .filter(|memo| !memo.plan.has_writes(options.prune))
        {
            return Ok(Prepared {
                revision: snapshot.revision.clone(),
                diagnostics: memo.diagnostics,
                plan: memo.plan,
                objects: memo.objects,
                from_memo: true,
                options: options.clone(),
                memo_key,
                computed: None,
            });
        }
    }
    let desired = desired_set_checked(snapshot, &Surroundings::default(), checks);
    if let (Some(checks), None) = (checks, &options.scope) {
        // The whole source was read: files no longer in it are forgotten.
        checks.retain_only(&snapshot.files);
    }
    let all = store.objects()?;
    let applied = in_scope(&all, options.scope.as_deref(), &desired);
    let plan = diff(&desired, &applied);
    Ok(Prepared {
        revision: snapshot.revision.clone(),
        diagnostics: desired.diagnostics.clone(),
        plan,
        objects: desired.objects.len() + desired.invalid.len(),
        from_memo: false,
        options: options.clone(),
        memo_key,
        computed: Some((desired, all)),
    })
}

/// The records a scoped reconcile compares against: those last seen inside the scope, and
/// those the snapshot declares wherever they were seen before.
fn in_scope<'a>(
    all: &'a BTreeMap<ObjectKey, ObjectRecord>,
    scope: Option<&[String]>,
    desired: &DesiredSet,
) -> std::borrow::Cow<'a, BTreeMap<ObjectKey, ObjectRecord>> {
    let Some(scope) = scope else {
        return std::borrow::Cow::Borrowed(all);
    };
    let inside = |file: &str| {
        scope.iter().any(|s| {
            s == "."
                || file == s
                || file
                    .strip_prefix(s.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    };
    std::borrow::Cow::Owned(
        all.iter()
            .filter(|(key, record)| {
                inside(&record.source_file)
                    || desired.objects.contains_key(*key)
                    || desired.invalid.contains_key(*key)
            })
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect(),
    )
}

/// Names everything besides the records that a reconcile's outcome depends on.
fn memo_key(snapshot: &Snapshot, scope: Option<&[String]>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(env!("CARGO_PKG_VERSION"));
    for kind in Kind::ALL {
        hasher.update(Sha256::digest(schema::schema_text(kind)));
    }
    hasher.update(snapshot.revision.as_bytes());
    if let Some(content) = &snapshot.content_revision {
        hasher.update([0]);
        hasher.update(content.as_bytes());
    }
    // A limited snapshot's references resolve against the rest of the source.
    for file in &snapshot.context {
        hasher.update([2]);
        hasher.update(file.path.as_bytes());
        hasher.update([0]);
        hasher.update(Sha256::digest(file.text.as_bytes()));
    }
    match scope {
        None => hasher.update([0]),
        Some(paths) => {
            for path in paths {
                hasher.update([1]);
                hasher.update(path.as_bytes());
            }
        }
    }
    hasher
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::reconcile::apply;
    use crate::reconcile::DesiredObject;
    use crate::source::SourceFile;
    use crate::store::ObjectStatus;

    fn workflow(name: &str, command: &str) -> String {
        format!("name: {name}\nsteps:\n  - name: run\n    command: [\"{command}\"]\n")
    }

    fn file(path: &str, text: String) -> SourceFile {
        SourceFile {
            path: path.to_owned(),
            text,
        }
    }

    fn snapshot(revision: &str, files: Vec<SourceFile>) -> Snapshot {
        Snapshot {
            revision: revision.to_owned(),
            files,
            ..Snapshot::default()
        }
    }

    fn options(scope: Option<&[&str]>, prune: bool, use_memo: bool) -> ReconcileOptions {
        ReconcileOptions {
            source: "dir".to_owned(),
            scope: scope.map(|paths| paths.iter().map(|p| (*p).to_owned()).collect()),
            prune,
            use_memo,
        }
    }

    fn key(id: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Workflow,
            id: id.to_owned(),
        }
    }

    fn record(id: &str, file: &str) -> ObjectRecord {
        ObjectRecord {
            key: key(id),
            name: id.to_owned(),
            spec: Some(Arc::new(json!({}))),
            hash: Some("h".to_owned()),
            source_file: file.to_owned(),
            status: ObjectStatus::Applied,
            diagnostics: Vec::new(),
            applied_revision: Some("dir:0".to_owned()),
            attempted_revision: "dir:0".to_owned(),
            generation: 1,
            applied_at: None,
            updated_at: "2026-01-01T00:00:00Z".to_owned(),
        }
    }

    #[test]
    fn a_scope_keeps_the_records_seen_inside_it_and_those_the_snapshot_declares() {
        let all: BTreeMap<ObjectKey, ObjectRecord> = [
            ("wf_a", "workflows/a.yaml"),
            ("wf_b", "workflows/sub/b.yaml"),
            ("wf_c", "workflowsx/c.yaml"),
            ("wf_n", "schedules/n.yaml"),
            ("wf_moved", "elsewhere/moved.yaml"),
        ]
        .into_iter()
        .map(|(id, file)| (key(id), record(id, file)))
        .collect();
        let mut desired = DesiredSet::default();
        desired.objects.insert(
            key("wf_moved"),
            DesiredObject {
                key: key("wf_moved"),
                name: "moved".to_owned(),
                spec: Arc::new(json!({})),
                hash: "h".to_owned(),
                file: "workflows/moved.yaml".to_owned(),
            },
        );
        let cases: &[(Option<&[&str]>, &[&str])] = &[
            (None, &["wf_a", "wf_b", "wf_c", "wf_moved", "wf_n"]),
            (Some(&["."]), &["wf_a", "wf_b", "wf_c", "wf_moved", "wf_n"]),
            (Some(&["workflows"]), &["wf_a", "wf_b", "wf_moved"]),
            (Some(&["workflows/a.yaml"]), &["wf_a", "wf_moved"]),
            (Some(&["workflows/sub"]), &["wf_b", "wf_moved"]),
            (
                Some(&["workflowsx", "schedules"]),
                &["wf_c", "wf_moved", "wf_n"],
            ),
            (Some(&["workflows/a"]), &["wf_moved"]),
            (Some(&[]), &["wf_moved"]),
        ];
        for (scope, expected) in cases {
            let scope: Option<Vec<String>> =
                scope.map(|paths| paths.iter().map(|p| (*p).to_owned()).collect());
            let kept: Vec<String> = in_scope(&all, scope.as_deref(), &desired)
                .into_owned()
                .into_keys()
                .map(|key| key.id)
                .collect();
            assert_eq!(kept, *expected, "scope {scope:?}");
        }
    }

    #[test]
    fn a_scoped_reconcile_neither_compares_nor_deletes_objects_outside_its_paths() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let whole = snapshot(
            "dir:1",
            vec![
                file("workflows/a.yaml", workflow("A", "true")),
                file("workflows/b.yaml", workflow("B", "true")),
            ],
        );
        let prepared = prepare(&store, &whole, &options(None, false, true)).unwrap();
        apply(&store, &prepared, false, "2026-01-01T00:00:00Z").unwrap();

        // Only a.yaml, edited: B is out of scope.
        let limited = snapshot(
            "dir:2",
            vec![file("workflows/a.yaml", workflow("A", "false"))],
        );
        let scoped = prepare(
            &store,
            &limited,
            &options(Some(&["workflows/a.yaml"]), true, true),
        )
        .unwrap();
        assert_eq!(scoped.plan.update.len(), 1, "{:?}", scoped.plan);
        assert!(scoped.plan.delete.is_empty(), "{:?}", scoped.plan);
        assert!(scoped.plan.unchanged.is_empty(), "{:?}", scoped.plan);
        assert_eq!(scoped.objects, 1);

        // The same snapshot taken for the whole source deletes B.
        let unscoped = prepare(&store, &limited, &options(None, true, true)).unwrap();
        let deleted: Vec<&ObjectKey> = unscoped.plan.delete.iter().map(|c| &c.key).collect();
        assert_eq!(deleted, vec![&key("wf_b")]);
    }

    #[test]
    fn the_memo_is_reused_only_for_the_same_revision_context_scope_and_records() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let limited = |revision: &str, context: &str| Snapshot {
            context: vec![file("workflows/b.yaml", workflow("B", context))],
            ..snapshot(
                revision,
                vec![file("workflows/a.yaml", workflow("A", "true"))],
            )
        };
        let base = limited("dir:1", "true");
        let scope: &[&str] = &["workflows/a.yaml"];
        let prepared = prepare(&store, &base, &options(Some(scope), false, true)).unwrap();
        assert!(!prepared.from_memo, "nothing stored yet");
        apply(&store, &prepared, false, "2026-01-01T00:00:00Z").unwrap();

        let hit = prepare(&store, &base, &options(Some(scope), false, true)).unwrap();
        assert!(hit.from_memo);
        assert!(hit.computed.is_none(), "no file parsed");
        let fresh = prepare(&store, &base, &options(Some(scope), false, false)).unwrap();
        assert!(!fresh.from_memo, "use_memo off forces a full check");
        assert_eq!(hit.plan, fresh.plan);
        assert_eq!(hit.diagnostics, fresh.diagnostics);
        assert_eq!(hit.objects, fresh.objects);

        let content_moved = Snapshot {
            content_revision: Some("dir:other".to_owned()),
            ..base.clone()
        };
        let misses = [
            ("another revision", limited("dir:2", "true"), Some(scope)),
            ("other context", limited("dir:1", "false"), Some(scope)),
            ("another content revision", content_moved, Some(scope)),
            ("no scope", base.clone(), None),
            ("another scope", base.clone(), Some(&["workflows"][..])),
        ];
        for (what, snapshot, scope) in misses {
            let missed = prepare(&store, &snapshot, &options(scope, false, true)).unwrap();
            assert!(!missed.from_memo, "{what}");
            assert!(missed.computed.is_some(), "{what}");
        }
        // None of that wrote anything: the same request still hits.
        assert!(
            prepare(&store, &base, &options(Some(scope), false, true))
                .unwrap()
                .from_memo
        );

        // A record written behind the memo's back drops it.
        store
            .commit(&[record("wf_z", "workflows/z.yaml")], None, None)
            .unwrap();
        let dropped = prepare(&store, &base, &options(Some(scope), false, true)).unwrap();
        assert!(!dropped.from_memo);
    }

    #[test]
    fn a_memo_with_a_pending_deletion_is_not_used_by_a_pruning_reconcile() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let both = snapshot(
            "dir:1",
            vec![
                file("workflows/a.yaml", workflow("A", "true")),
                file("workflows/b.yaml", workflow("B", "true")),
            ],
        );
        let prepared = prepare(&store, &both, &options(None, false, true)).unwrap();
        apply(&store, &prepared, false, "2026-01-01T00:00:00Z").unwrap();
        let one = snapshot(
            "dir:2",
            vec![file("workflows/a.yaml", workflow("A", "true"))],
        );
        let prepared = prepare(&store, &one, &options(None, false, true)).unwrap();
        assert_eq!(prepared.plan.delete.len(), 1);
        apply(&store, &prepared, false, "2026-01-01T00:00:00Z").unwrap();

        let kept = prepare(&store, &one, &options(None, false, true)).unwrap();
        assert!(kept.from_memo);
        assert_eq!(kept.plan.delete.len(), 1, "the deletion stays pending");
        let pruning = prepare(&store, &one, &options(None, true, true)).unwrap();
        assert!(!pruning.from_memo);
        assert_eq!(pruning.plan.delete.len(), 1);
    }

    /// Reconciles a real directory twice over, with and without [`FileChecks`] (and a file
    /// index, as the controller reads the tree), through
    /// edits, creations, deletions, renames, broken files and duplicate ids: the plans,
    /// diagnostics, reports and records are the same, and only changed files are parsed.
    #[test]
    fn remembered_file_checks_give_the_same_outcome_as_a_full_check() {
        use crate::source::dir::{self, DirOptions, SourcePath};
        let project = tempfile::tempdir().unwrap();
        let workflows = project.path().join("workflows");
        std::fs::create_dir(&workflows).unwrap();
        let incremental = tempfile::tempdir().unwrap();
        let full = tempfile::tempdir().unwrap();
        let incremental = Store::open(incremental.path()).unwrap();
        let full = Store::open(full.path()).unwrap();
        let checks = FileChecks::default();
        let paths = [SourcePath {
            path: workflows.clone(),
            required: true,
        }];
        let read = DirOptions {
            root: project.path().to_owned(),
            max_file_bytes: 1 << 20,
        };
        let write = |name: &str, text: &str| std::fs::write(workflows.join(name), text).unwrap();
        let index = dir::FileIndex::default();
        let step = |what: &str, expect_parsed: usize| {
            let snapshot = dir::load(&paths, &read).unwrap();
            let indexed = dir::load_indexed(&paths, &read, Some(&index)).unwrap();
            index.retain_only(&indexed);
            assert_eq!(indexed.revision, snapshot.revision, "{what}");
            let before = checks.parsed();
            let now = format!("2026-01-01T00:00:{:02}Z", before % 60);
            let a = prepare_checked(
                &incremental,
                &indexed,
                &options(None, true, false),
                Some(&checks),
            )
            .unwrap();
            let b = prepare(&full, &snapshot, &options(None, true, false)).unwrap();
            assert_eq!(
                checks.parsed() - before,
                expect_parsed,
                "{what}: files parsed"
            );
            assert_eq!(
                checks.len(),
                snapshot.files.len(),
                "{what}: files remembered"
            );
            assert_eq!(a.plan, b.plan, "{what}");
            assert_eq!(a.diagnostics, b.diagnostics, "{what}");
            assert_eq!(a.objects, b.objects, "{what}");
            let report_a = apply(&incremental, &a, false, &now).unwrap();
            let report_b = apply(&full, &b, false, &now).unwrap();
            assert_eq!(report_a, report_b, "{what}");
            assert_eq!(
                incremental.objects().unwrap(),
                full.objects().unwrap(),
                "{what}"
            );
            report_a
        };
        for name in ["a", "b", "c", "d"] {
            write(&format!("{name}.yaml"), &workflow(name, "true"));
        }
        assert_eq!(step("cold", 4).created.len(), 4);
        assert_eq!(step("unchanged", 0).unchanged, 4);
        write("a.yaml", &workflow("a", "false"));
        assert_eq!(step("one edit", 1).updated, vec![key("wf_a")]);
        write("e.yaml", &workflow("e", "true"));
        std::fs::remove_file(workflows.join("b.yaml")).unwrap();
        let report = step("a creation and a deletion", 1);
        assert_eq!(
            (report.created, report.pruned),
            (vec![key("wf_e")], vec![key("wf_b")])
        );
        std::fs::rename(workflows.join("c.yaml"), workflows.join("renamed.yaml")).unwrap();
        step("a rename", 1);
        write("d.yaml", "name: d\nsteps: [\n");
        assert_eq!(step("a syntax error", 1).kept, vec![key("wf_d")]);
        write("dup.yaml", &workflow("e", "false"));
        let report = step("a duplicate id in a new file", 1);
        assert!(report.errors > 0, "{report:?}");
        std::fs::remove_file(workflows.join("dup.yaml")).unwrap();
        write("d.yaml", &workflow("d", "true"));
        let report = step("the duplicate gone, the syntax mended", 1);
        assert_eq!(report.errors, 0, "{report:?}");
        assert_eq!(step("unchanged again", 0).unchanged, 4);
    }

    #[test]
    fn the_memo_key_names_every_input_besides_the_records() {
        let base = Snapshot {
            context: vec![file("workflows/b.yaml", "x".to_owned())],
            ..snapshot("dir:1", Vec::new())
        };
        let with = |change: fn(&mut Snapshot)| {
            let mut snapshot = base.clone();
            change(&mut snapshot);
            snapshot
        };
        let scope = vec!["workflows".to_owned()];
        let keys = [
            memo_key(&base, None),
            memo_key(&base, Some(&scope)),
            memo_key(&base, Some(&["schedules".to_owned()])),
            memo_key(&with(|s| s.revision = "dir:2".to_owned()), None),
            memo_key(&with(|s| s.content_revision = Some("c".to_owned())), None),
            memo_key(&with(|s| s.context[0].text = "y".to_owned()), None),
            memo_key(
                &with(|s| s.context[0].path = "workflows/c.yaml".to_owned()),
                None,
            ),
            memo_key(&with(|s| s.context.clear()), None),
        ];
        let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "{keys:#?}");
        assert_eq!(
            memo_key(&base.clone(), Some(&scope)),
            keys[1],
            "deterministic"
        );
        // The files themselves are named by the revision, not hashed again.
        let other_files = Snapshot {
            files: vec![file("workflows/a.yaml", "z".to_owned())],
            ..base.clone()
        };
        assert_eq!(memo_key(&other_files, None), keys[0]);
    }
}
