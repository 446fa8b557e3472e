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
    pub before: Option<Value>,
    /// The spec that would be in force.
    pub after: Option<Value>,
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
    let before = change.before.as_ref().map(to_yaml).unwrap_or_default();
    let after = change.after.as_ref().map(to_yaml).unwrap_or_default();
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
