//! The plan: what applying a desired set to the applied state would change. Pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::DesiredSet;
use crate::store::{ObjectKey, ObjectRecord, ObjectStatus};

/// One object that would change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Kind and id.
    #[serde(flatten)]
    pub key: ObjectKey,
    /// The declared name.
    pub name: String,
    /// The file that declares it (for deletions: where it was last seen).
    pub file: String,
    /// The spec in force now.
    pub before: Option<std::sync::Arc<Value>>,
    /// The spec that would be in force.
    pub after: Option<std::sync::Arc<Value>>,
}

/// An object whose manifest is invalid: nothing about it changes but its status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Held {
    /// Kind and id.
    #[serde(flatten)]
    pub key: ObjectKey,
    /// The file that declares it.
    pub file: String,
    /// Whether a last good version exists and stays in force.
    pub last_good_in_force: bool,
}

/// What applying would do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Objects to create.
    pub create: Vec<Change>,
    /// Objects whose spec changes.
    pub update: Vec<Change>,
    /// Objects whose manifests are gone: removed by `apply --prune`.
    pub delete: Vec<Change>,
    /// Objects that stay as they are.
    pub unchanged: Vec<ObjectKey>,
    /// Objects with an invalid manifest: the last good version stays in force.
    pub invalid: Vec<Held>,
    /// Objects last seen in a file that cannot be read now: kept until it can.
    pub kept: Vec<ObjectKey>,
    /// Objects whose manifest is valid again with the spec already in force: only their
    /// status changes back to applied.
    pub recovered: Vec<ObjectKey>,
    /// Records of manifests that were never valid and whose files are gone: nothing of them
    /// is in force, so they are removed from listings with or without `prune`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<ObjectKey>,
}

impl Plan {
    /// Whether the desired state differs from the applied state.
    pub fn has_changes(&self) -> bool {
        !(self.create.is_empty() && self.update.is_empty() && self.delete.is_empty())
    }

    /// Whether applying would write records: creations, updates, recoveries, and with
    /// `prune` deletions. (Invalid objects are written only when their diagnostics change,
    /// which a settled plan never has.)
    pub fn has_writes(&self, prune: bool) -> bool {
        !(self.create.is_empty()
            && self.update.is_empty()
            && self.recovered.is_empty()
            && self.forgotten.is_empty()
            && (!prune || self.delete.is_empty()))
    }

    /// The plan as it stands once this one is applied: what was created, updated or
    /// recovered is unchanged, and with `prune` the deletions are gone. Equal to diffing the
    /// same desired set against the store after the apply.
    pub fn settled(&self, prune: bool) -> Plan {
        let mut unchanged: Vec<ObjectKey> = self
            .unchanged
            .iter()
            .chain(self.create.iter().map(|c| &c.key))
            .chain(self.update.iter().map(|c| &c.key))
            .chain(&self.recovered)
            .cloned()
            .collect();
        unchanged.sort();
        Plan {
            create: Vec::new(),
            update: Vec::new(),
            delete: if prune {
                Vec::new()
            } else {
                self.delete.clone()
            },
            unchanged,
            invalid: self.invalid.clone(),
            kept: self.kept.clone(),
            recovered: Vec::new(),
            forgotten: Vec::new(),
        }
    }

    /// "N to create, N to update, N to delete".
    pub fn summary(&self) -> String {
        format!(
            "{} to create, {} to update, {} to delete",
            self.create.len(),
            self.update.len(),
            self.delete.len()
        )
    }
}

/// Compares what a snapshot asks for with the records in the store.
pub fn diff(desired: &DesiredSet, applied: &BTreeMap<ObjectKey, ObjectRecord>) -> Plan {
    let mut plan = Plan::default();
    for (key, object) in &desired.objects {
        match applied.get(key).filter(|r| r.is_live()) {
            None => plan.create.push(Change {
                key: key.clone(),
                name: object.name.clone(),
                file: object.file.clone(),
                before: None,
                after: Some(object.spec.clone()),
            }),
            Some(record) if record.hash.as_deref() != Some(object.hash.as_str()) => {
                plan.update.push(Change {
                    key: key.clone(),
                    name: object.name.clone(),
                    file: object.file.clone(),
                    before: record.spec.clone(),
                    after: Some(object.spec.clone()),
                })
            }
            Some(record) if record.status == ObjectStatus::Invalid => {
                plan.recovered.push(key.clone())
            }
            Some(_) => plan.unchanged.push(key.clone()),
        }
    }
    for (key, invalid) in &desired.invalid {
        plan.invalid.push(Held {
            key: key.clone(),
            file: invalid.file.clone(),
            last_good_in_force: applied.get(key).is_some_and(ObjectRecord::is_live),
        });
    }
    for (key, record) in applied.iter() {
        if desired.objects.contains_key(key) || desired.invalid.contains_key(key) {
            continue;
        }
        if !record.is_live() {
            // Never valid (no spec) and its file gone or fixed into another object.
            let never_applied = record.status == ObjectStatus::Invalid && record.spec.is_none();
            if never_applied && !desired.damaged_files.contains(&record.source_file) {
                plan.forgotten.push(key.clone());
            }
            continue;
        }
        if desired.damaged_files.contains(&record.source_file) {
            plan.kept.push(key.clone());
            continue;
        }
        plan.delete.push(Change {
            key: key.clone(),
            name: record.name.clone(),
            file: record.source_file.clone(),
            before: record.spec.clone(),
            after: None,
        });
    }
    plan
}

/// A unified diff of one change, YAML on both sides, coloured when asked.
pub fn render_change(change: &Change, color: bool) -> String {
    let before = change.before.as_deref().map(to_yaml).unwrap_or_default();
    let after = change.after.as_deref().map(to_yaml).unwrap_or_default();
    let (old_name, new_name) = match (&change.before, &change.after) {
        (None, _) => ("/dev/null".to_owned(), format!("b/{}", change.file)),
        (_, None) => (format!("a/{}", change.file), "/dev/null".to_owned()),
        _ => (format!("a/{}", change.file), format!("b/{}", change.file)),
    };
    let text = similar::TextDiff::from_lines(&before, &after)
        .unified_diff()
        .context_radius(3)
        .header(&old_name, &new_name)
        .to_string();
    if !color {
        return text;
    }
    text.lines()
        .map(|line| {
            let code = if line.starts_with("+++") || line.starts_with("---") {
                "1"
            } else if line.starts_with('+') {
                "32"
            } else if line.starts_with('-') {
                "31"
            } else if line.starts_with("@@") {
                "36"
            } else {
                return format!("{line}\n");
            };
            format!("\x1b[{code}m{line}\x1b[0m\n")
        })
        .collect()
}

/// A spec as YAML, for diffs and `get -o yaml`.
pub fn to_yaml(value: &Value) -> String {
    serde_saphyr::to_string(value)
        .unwrap_or_else(|_| serde_json::to_string_pretty(value).unwrap_or_default() + "\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::diagnostics::Diagnostic;
    use crate::manifest::Kind;
    use crate::reconcile::{DesiredObject, InvalidObject};

    const FILE: &str = "workflows/a.yaml";

    fn key() -> ObjectKey {
        ObjectKey {
            kind: Kind::Workflow,
            id: "wf_a".to_owned(),
        }
    }

    /// What the snapshot says about the one object of a case.
    #[derive(Clone, Copy)]
    enum Declared {
        /// Not declared; its file holds no syntax error.
        Nothing,
        /// Not declared, and its file cannot be read now.
        NothingDamagedFile,
        /// A valid manifest whose spec hashes to this.
        Valid(&'static str),
        /// An invalid manifest.
        Invalid,
    }

    /// The record the store holds for it.
    #[derive(Clone, Copy)]
    enum Recorded {
        None,
        /// Applied with a spec of this hash.
        Applied(&'static str),
        /// Invalid now, its last good spec of this hash still in force.
        InvalidLastGood(&'static str),
        /// Invalid and never valid: no spec.
        InvalidNeverApplied,
        /// Removed by a prune.
        Pruned,
    }

    fn desired(declared: Declared) -> DesiredSet {
        let mut set = DesiredSet::default();
        match declared {
            Declared::Nothing => {}
            Declared::NothingDamagedFile => {
                set.damaged_files.insert(FILE.to_owned());
            }
            Declared::Valid(hash) => {
                set.objects.insert(
                    key(),
                    DesiredObject {
                        key: key(),
                        name: "A".to_owned(),
                        spec: Arc::new(json!({"name": "A", "hash": hash})),
                        hash: hash.to_owned(),
                        file: FILE.to_owned(),
                    },
                );
            }
            Declared::Invalid => {
                set.invalid.insert(
                    key(),
                    InvalidObject {
                        name: "A".to_owned(),
                        file: FILE.to_owned(),
                        diagnostics: vec![Diagnostic::error(FILE, 1, 1, "", "bad".to_owned())],
                    },
                );
            }
        }
        set
    }

    fn record(status: ObjectStatus, hash: Option<&str>) -> ObjectRecord {
        ObjectRecord {
            key: key(),
            name: "A".to_owned(),
            spec: hash.map(|h| Arc::new(json!({"name": "A", "hash": h}))),
            hash: hash.map(str::to_owned),
            source_file: FILE.to_owned(),
            status,
            diagnostics: Vec::new(),
            applied_revision: hash.map(|_| "dir:1".to_owned()),
            attempted_revision: "dir:1".to_owned(),
            generation: u64::from(hash.is_some()),
            applied_at: None,
            updated_at: "2026-01-01T00:00:00Z".to_owned(),
        }
    }

    fn applied(recorded: Recorded) -> BTreeMap<ObjectKey, ObjectRecord> {
        let record = match recorded {
            Recorded::None => return BTreeMap::new(),
            Recorded::Applied(hash) => record(ObjectStatus::Applied, Some(hash)),
            Recorded::InvalidLastGood(hash) => record(ObjectStatus::Invalid, Some(hash)),
            Recorded::InvalidNeverApplied => record(ObjectStatus::Invalid, None),
            Recorded::Pruned => record(ObjectStatus::Pruned, None),
        };
        BTreeMap::from([(key(), record)])
    }

    /// The categories of a plan the one object appears in, by name.
    fn categories(plan: &Plan) -> Vec<&'static str> {
        let key = key();
        let has = |changes: &[Change]| changes.iter().any(|c| c.key == key);
        let mut found = Vec::new();
        for (name, present) in [
            ("create", has(&plan.create)),
            ("update", has(&plan.update)),
            ("delete", has(&plan.delete)),
            ("unchanged", plan.unchanged.contains(&key)),
            ("invalid", plan.invalid.iter().any(|h| h.key == key)),
            ("kept", plan.kept.contains(&key)),
            ("recovered", plan.recovered.contains(&key)),
            ("forgotten", plan.forgotten.contains(&key)),
        ] {
            if present {
                found.push(name);
            }
        }
        found
    }

    #[test]
    fn every_pair_of_declared_and_recorded_lands_in_one_category() {
        use Declared as D;
        use Recorded as R;
        let cases: &[(&str, Declared, Recorded, &[&str])] = &[
            ("new object", D::Valid("h1"), R::None, &["create"]),
            (
                "pruned, declared again",
                D::Valid("h1"),
                R::Pruned,
                &["create"],
            ),
            (
                "invalid never applied, now valid",
                D::Valid("h1"),
                R::InvalidNeverApplied,
                &["create"],
            ),
            (
                "spec changed",
                D::Valid("h2"),
                R::Applied("h1"),
                &["update"],
            ),
            (
                "same spec",
                D::Valid("h1"),
                R::Applied("h1"),
                &["unchanged"],
            ),
            (
                "valid again with the spec in force",
                D::Valid("h1"),
                R::InvalidLastGood("h1"),
                &["recovered"],
            ),
            (
                "valid again with another spec",
                D::Valid("h2"),
                R::InvalidLastGood("h1"),
                &["update"],
            ),
            ("invalid, new", D::Invalid, R::None, &["invalid"]),
            (
                "invalid, last good",
                D::Invalid,
                R::Applied("h1"),
                &["invalid"],
            ),
            ("manifest gone", D::Nothing, R::Applied("h1"), &["delete"]),
            (
                "invalid with last good, manifest gone",
                D::Nothing,
                R::InvalidLastGood("h1"),
                &["delete"],
            ),
            (
                "file unreadable now",
                D::NothingDamagedFile,
                R::Applied("h1"),
                &["kept"],
            ),
            (
                "never valid, file gone",
                D::Nothing,
                R::InvalidNeverApplied,
                &["forgotten"],
            ),
            (
                "never valid, file unreadable",
                D::NothingDamagedFile,
                R::InvalidNeverApplied,
                &[],
            ),
            ("pruned, still gone", D::Nothing, R::Pruned, &[]),
            ("nothing at all", D::Nothing, R::None, &[]),
        ];
        for (name, declared, recorded, expected) in cases {
            let plan = diff(&desired(*declared), &applied(*recorded));
            assert_eq!(categories(&plan), *expected, "{name}: {plan:#?}");
        }
    }

    #[test]
    fn changes_carry_the_spec_before_and_after() {
        let plan = diff(
            &desired(Declared::Valid("h2")),
            &applied(Recorded::Applied("h1")),
        );
        let change = &plan.update[0];
        assert_eq!(
            change.before.as_deref(),
            Some(&json!({"name": "A", "hash": "h1"}))
        );
        assert_eq!(
            change.after.as_deref(),
            Some(&json!({"name": "A", "hash": "h2"}))
        );
        assert_eq!((change.name.as_str(), change.file.as_str()), ("A", FILE));

        let plan = diff(
            &desired(Declared::Nothing),
            &applied(Recorded::Applied("h1")),
        );
        let change = &plan.delete[0];
        assert_eq!(
            change.before.as_deref(),
            Some(&json!({"name": "A", "hash": "h1"}))
        );
        assert_eq!(change.after, None);

        let plan = diff(&desired(Declared::Valid("h1")), &applied(Recorded::None));
        assert_eq!(plan.create[0].before, None);
    }

    #[test]
    fn an_invalid_object_says_whether_a_last_good_version_stays_in_force() {
        for (recorded, in_force) in [
            (Recorded::None, false),
            (Recorded::Applied("h1"), true),
            (Recorded::InvalidLastGood("h1"), true),
            (Recorded::InvalidNeverApplied, false),
            (Recorded::Pruned, false),
        ] {
            let plan = diff(&desired(Declared::Invalid), &applied(recorded));
            assert_eq!(plan.invalid.len(), 1, "{plan:#?}");
            assert_eq!(plan.invalid[0].last_good_in_force, in_force, "{plan:#?}");
        }
    }

    #[test]
    fn writes_changes_and_the_settled_plan() {
        // (declared, recorded, has_changes, has_writes without and with prune)
        let cases = [
            (Declared::Valid("h1"), Recorded::None, true, (true, true)),
            (
                Declared::Valid("h1"),
                Recorded::Applied("h1"),
                false,
                (false, false),
            ),
            (
                Declared::Valid("h1"),
                Recorded::InvalidLastGood("h1"),
                false,
                (true, true),
            ),
            (
                Declared::Nothing,
                Recorded::Applied("h1"),
                true,
                (false, true),
            ),
            (
                Declared::Nothing,
                Recorded::InvalidNeverApplied,
                false,
                (true, true),
            ),
            (
                Declared::Invalid,
                Recorded::Applied("h1"),
                false,
                (false, false),
            ),
        ];
        for (declared, recorded, changes, (writes, writes_pruning)) in cases {
            let plan = diff(&desired(declared), &applied(recorded));
            assert_eq!(plan.has_changes(), changes, "{plan:#?}");
            assert_eq!(plan.has_writes(false), writes, "{plan:#?}");
            assert_eq!(plan.has_writes(true), writes_pruning, "{plan:#?}");
            for prune in [false, true] {
                let settled = plan.settled(prune);
                assert!(!settled.has_writes(prune), "{settled:#?}");
                assert!(settled.create.is_empty() && settled.update.is_empty());
                assert_eq!(settled.delete.is_empty(), prune || plan.delete.is_empty());
                assert_eq!(settled.invalid, plan.invalid);
                assert_eq!(settled.kept, plan.kept);
            }
        }
    }

    #[test]
    fn several_objects_are_sorted_into_their_categories_in_key_order() {
        let workflow = |id: &str| ObjectKey {
            kind: Kind::Workflow,
            id: id.to_owned(),
        };
        let mut set = DesiredSet::default();
        let mut records = BTreeMap::new();
        for id in ["wf_b", "wf_a", "wf_c"] {
            set.objects.insert(
                workflow(id),
                DesiredObject {
                    key: workflow(id),
                    name: id.to_owned(),
                    spec: Arc::new(json!({})),
                    hash: "same".to_owned(),
                    file: format!("workflows/{id}.yaml"),
                },
            );
            let mut record = record(ObjectStatus::Applied, Some("same"));
            record.key = workflow(id);
            records.insert(workflow(id), record);
        }
        let plan = diff(&set, &records);
        assert_eq!(
            plan.unchanged,
            vec![workflow("wf_a"), workflow("wf_b"), workflow("wf_c")]
        );
        assert_eq!(plan.summary(), "0 to create, 0 to update, 0 to delete");
    }
}
