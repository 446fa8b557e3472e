//! The manifest model: kinds, stable ids, and the documents of a file with the source
//! location of every node. No IO: callers hand in file names and text.

pub mod parse;

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::diagnostics::Diagnostic;
use parse::{LocatedChildren, LocatedNode, ParsedDocument};

/// The kinds of object a manifest can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A workflow of test steps.
    Workflow,
    /// A reusable, parameterised set of steps.
    WorkflowTemplate,
    /// An agent that runs steps, with its configuration.
    Agent,
    /// A cron schedule that runs a workflow.
    Schedule,
    /// An alert rule.
    Alert,
    /// A webhook trigger that runs a workflow.
    Trigger,
    /// A custom dashboard page composed of widgets.
    Dashboard,
    /// Tests whose failures fail no step, each with a reason, an owner and an expiry.
    Quarantine,
}

impl Kind {
    /// Every kind, in the order objects are listed and applied.
    pub const ALL: [Kind; 8] = [
        Kind::Agent,
        Kind::WorkflowTemplate,
        Kind::Workflow,
        Kind::Schedule,
        Kind::Trigger,
        Kind::Alert,
        Kind::Dashboard,
        Kind::Quarantine,
    ];

    /// The name used in manifests (`kind: Workflow`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Workflow => "Workflow",
            Kind::WorkflowTemplate => "WorkflowTemplate",
            Kind::Agent => "Agent",
            Kind::Schedule => "Schedule",
            Kind::Alert => "Alert",
            Kind::Trigger => "Trigger",
            Kind::Dashboard => "Dashboard",
            Kind::Quarantine => "Quarantine",
        }
    }

    /// The prefix of the ids derived from names.
    pub fn id_prefix(self) -> &'static str {
        match self {
            Kind::Workflow => "wf_",
            Kind::WorkflowTemplate => "tpl_",
            Kind::Agent => "agent_",
            Kind::Schedule => "sch_",
            Kind::Alert => "alert_",
            Kind::Trigger => "trg_",
            Kind::Dashboard => "dash_",
            Kind::Quarantine => "qua_",
        }
    }

    /// The directory whose documents are of this kind unless they say otherwise.
    pub fn directory(self) -> &'static str {
        match self {
            Kind::Workflow => "workflows",
            Kind::WorkflowTemplate => "templates",
            Kind::Agent => "agents",
            Kind::Schedule => "schedules",
            Kind::Alert => "alerts",
            Kind::Trigger => "triggers",
            Kind::Dashboard => "dashboards",
            Kind::Quarantine => "quarantine",
        }
    }

    /// The kind named by `text`, case-insensitively (`workflow`, `Workflow`, `workflows`).
    pub fn parse(text: &str) -> Option<Kind> {
        let lower = text.to_ascii_lowercase();
        Kind::ALL
            .into_iter()
            .find(|kind| lower == kind.as_str().to_ascii_lowercase() || lower == kind.directory())
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Field aliases accepted per kind, as (alias, canonical name): the guide's API calls a
/// schedule's cron `schedule` and its workflow `workflow_id`; the CLI calls a trigger's path
/// `--url`.
pub fn field_aliases(kind: Kind) -> &'static [(&'static str, &'static str)] {
    match kind {
        Kind::Schedule => &[("schedule", "cron"), ("workflow_id", "workflow")],
        Kind::Trigger => &[("url", "path"), ("workflow_id", "workflow")],
        _ => &[],
    }
}

/// One document of a file, its kind known, not yet validated.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its kind.
    pub kind: Kind,
    /// The file it came from.
    pub file: String,
    /// Where the document sits in the file, as a JSON pointer prefix (`/alerts/2`), empty
    /// for a whole document.
    pub pointer: String,
    /// The document with field aliases renamed to their canonical names; shared with the
    /// object's desired state and its record once applied, never copied.
    pub value: Arc<Value>,
    /// Where its nodes sit in the file.
    pub locations: LocatedNode,
}

impl Manifest {
    /// The declared name (`name`, or `template` for the guide's template document).
    pub fn name(&self) -> Option<&str> {
        let name = self.value.get("name").and_then(Value::as_str);
        match self.kind {
            Kind::WorkflowTemplate => name.or(self.value.get("template").and_then(Value::as_str)),
            _ => name,
        }
    }

    /// The stable id: `id` when given, otherwise the kind's prefix and a slug of the name.
    pub fn id(&self) -> Option<String> {
        if let Some(id) = self.value.get("id").and_then(Value::as_str) {
            return Some(id.to_owned());
        }
        let slug = slug(self.name()?);
        (!slug.is_empty()).then(|| format!("{}{slug}", self.kind.id_prefix()))
    }

    /// The file position of a pointer inside this document (relative to the document).
    pub fn locate(&self, pointer: &str, key_of_last: bool) -> (u32, u32) {
        self.locations.locate(pointer, key_of_last)
    }

    /// A diagnostic at a pointer inside this document.
    pub fn error_at(&self, pointer: &str, key_of_last: bool, message: String) -> Diagnostic {
        let (line, column) = self.locate(pointer, key_of_last);
        Diagnostic::error(
            &self.file,
            line,
            column,
            &format!("{}{pointer}", self.pointer),
            message,
        )
    }

    /// A warning at a pointer inside this document.
    pub fn warning_at(&self, pointer: &str, message: String) -> Diagnostic {
        let (line, column) = self.locate(pointer, false);
        Diagnostic::warning(
            &self.file,
            line,
            column,
            &format!("{}{pointer}", self.pointer),
            message,
        )
    }
}

/// Lowercase letters and digits of a name, other runs of characters folded into one `-`:
/// "API Test Suite" becomes "api-test-suite".
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if c == '_' || c == '.' {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with(['-', '.', '_']) {
        out.pop();
    }
    out
}

/// The kind implied by the nearest directory named after a kind (`workflows/`, `alerts/`...).
pub fn kind_from_path(path: &str) -> Option<Kind> {
    path.rsplit(['/', '\\'])
        .skip(1)
        .find_map(|component| Kind::ALL.into_iter().find(|k| k.directory() == component))
}

/// Splits a parsed document into manifests: infers kinds, expands the guide's
/// `{"alerts": [...]}` list, renames field aliases. Problems that make a document unusable
/// are reported and the document is left out.
pub fn extract(
    file: &str,
    document: ParsedDocument,
    document_pointer: &str,
) -> (Vec<Manifest>, Vec<Diagnostic>) {
    let mut manifests = Vec::new();
    let mut diagnostics = Vec::new();
    let ParsedDocument { value, locations } = document;
    let Value::Object(ref map) = value else {
        diagnostics.push(Diagnostic::error(
            file,
            locations.line,
            locations.column,
            document_pointer,
            format!(
                "expected a mapping with `name` and the fields of its kind at the document root, found {}",
                describe_type(&value)
            ),
        ));
        return (manifests, diagnostics);
    };
    let declared_kind = map.get("kind");
    if declared_kind.is_none() {
        if let Some(Value::Array(items)) = map.get("alerts") {
            let item_locations = match locations.child("/alerts") {
                Some(LocatedNode {
                    children: LocatedChildren::Seq(items),
                    ..
                }) => items.clone(),
                _ => Vec::new(),
            };
            for (index, item) in items.iter().enumerate() {
                // Without item locations (a JSON file whose locations could not be read),
                // the document's own: every diagnostic keeps a line in the file.
                let item_location = item_locations.get(index).cloned().unwrap_or(LocatedNode {
                    line: locations.line,
                    column: locations.column,
                    children: LocatedChildren::None,
                });
                let (more, problems) = extract_one(
                    file,
                    Kind::Alert,
                    item.clone(),
                    item_location,
                    format!("{document_pointer}/alerts/{index}"),
                );
                manifests.extend(more);
                diagnostics.extend(problems);
            }
            if map.len() > 1 {
                let extra: Vec<&String> = map.keys().filter(|k| *k != "alerts").collect();
                let (line, column) = locations.locate(&format!("/{}", extra[0]), true);
                diagnostics.push(Diagnostic::error(
                    file,
                    line,
                    column,
                    &format!("{document_pointer}/{}", extra[0]),
                    format!(
                        "unexpected field `{}` beside `alerts`: an alerts file holds only an `alerts` list",
                        extra[0]
                    ),
                ));
            }
            return (manifests, diagnostics);
        }
    }
    let kind = match declared_kind {
        Some(Value::String(text)) => match Kind::parse(text) {
            Some(kind) => kind,
            None => {
                let (line, column) = locations.locate("/kind", false);
                diagnostics.push(Diagnostic::error(
                    file,
                    line,
                    column,
                    &format!("{document_pointer}/kind"),
                    format!("unknown kind `{text}`: expected one of {}", kind_list()),
                ));
                return (manifests, diagnostics);
            }
        },
        Some(other) => {
            let (line, column) = locations.locate("/kind", false);
            diagnostics.push(Diagnostic::error(
                file,
                line,
                column,
                &format!("{document_pointer}/kind"),
                format!(
                    "expected `kind` to be a string (one of {}), found {}",
                    kind_list(),
                    describe_type(other)
                ),
            ));
            return (manifests, diagnostics);
        }
        // The guide's template document names itself with `template` and carries steps.
        None if map.contains_key("template") && map.contains_key("steps") => Kind::WorkflowTemplate,
        None => match kind_from_path(file) {
            Some(kind) => kind,
            None => {
                diagnostics.push(Diagnostic::error(
                    file,
                    locations.line,
                    locations.column,
                    document_pointer,
                    format!(
                        "cannot tell the kind of this document: add `kind:` (one of {}) or keep it in the kind's directory (workflows/, schedules/, ...)",
                        kind_list()
                    ),
                ));
                return (manifests, diagnostics);
            }
        },
    };
    let (more, problems) = extract_one(file, kind, value, locations, document_pointer.to_owned());
    manifests.extend(more);
    diagnostics.extend(problems);
    (manifests, diagnostics)
}

fn extract_one(
    file: &str,
    kind: Kind,
    mut value: Value,
    mut locations: LocatedNode,
    pointer: String,
) -> (Option<Manifest>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    if let Value::Object(map) = &mut value {
        // `kind: workflow` is accepted; the stored spec spells it the canonical way.
        if let Some(declared) = map.get_mut("kind") {
            *declared = Value::from(kind.as_str());
        }
        for (alias, canonical) in field_aliases(kind) {
            if !map.contains_key(*alias) {
                continue;
            }
            if map.contains_key(*canonical) {
                let (line, column) = locations.locate(&format!("/{alias}"), true);
                diagnostics.push(Diagnostic::error(
                    file,
                    line,
                    column,
                    &format!("{pointer}/{alias}"),
                    format!("both `{canonical}` and its alias `{alias}` are set: keep one"),
                ));
                // Reported once here; the schema would otherwise call the alias unknown.
                map.remove(*alias);
                continue;
            }
            if let Some(aliased) = map.remove(*alias) {
                map.insert((*canonical).to_owned(), aliased);
                locations.rename_key(alias, canonical);
            }
        }
    }
    let manifest = Manifest {
        kind,
        file: file.to_owned(),
        pointer,
        value: Arc::new(value),
        locations,
    };
    (Some(manifest), diagnostics)
}

fn kind_list() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// "a string", "an array"... for messages.
pub fn describe_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_stable_and_readable() {
        assert_eq!(slug("API Test Suite"), "api-test-suite");
        assert_eq!(slug("  Nightly -- Tests! "), "nightly-tests");
        assert_eq!(slug("smoke_tests.v2"), "smoke_tests.v2");
        assert_eq!(slug("!!!"), "");
    }

    #[test]
    fn kind_comes_from_the_nearest_kind_directory() {
        assert_eq!(
            kind_from_path("repo/workflows/alerts/x.yaml"),
            Some(Kind::Alert)
        );
        assert_eq!(kind_from_path("x.yaml"), None);
    }

    #[test]
    fn alerts_list_expands_to_alert_manifests() {
        let text =
            r#"{"alerts": [{"name": "A", "condition": "system.cpu_percent > 1"}, {"name": "B"}]}"#;
        let document = parse::parse_json(text).unwrap();
        let (manifests, diagnostics) = extract("x.json", document, "");
        assert!(diagnostics.is_empty());
        let ids: Vec<_> = manifests.iter().map(|m| m.id().unwrap()).collect();
        assert_eq!(ids, ["alert_a", "alert_b"]);
        assert_eq!(manifests[1].pointer, "/alerts/1");
    }

    #[test]
    fn schedule_aliases_are_renamed() {
        let text = "kind: Schedule\nname: n\nschedule: '0 2 * * *'\nworkflow_id: wf_x\n";
        let document = parse::parse_yaml(text).unwrap().remove(0);
        let (manifests, diagnostics) = extract("s.yaml", document, "");
        assert!(diagnostics.is_empty());
        assert_eq!(manifests[0].value["cron"], "0 2 * * *");
        assert_eq!(manifests[0].locate("/workflow", false), (4, 14));
    }
}
