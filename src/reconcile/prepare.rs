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

use super::{desired_set, diff, DesiredSet, Plan};
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
    let desired = desired_set(snapshot);
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
fn in_scope(
    all: &BTreeMap<ObjectKey, ObjectRecord>,
    scope: Option<&[String]>,
    desired: &DesiredSet,
) -> BTreeMap<ObjectKey, ObjectRecord> {
    let Some(scope) = scope else {
        return all.clone();
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
    all.iter()
        .filter(|(key, record)| {
            inside(&record.source_file)
                || desired.objects.contains_key(*key)
                || desired.invalid.contains_key(*key)
        })
        .map(|(k, r)| (k.clone(), r.clone()))
        .collect()
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
