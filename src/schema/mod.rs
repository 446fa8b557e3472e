//! The JSON Schemas in `schemas/`, embedded and compiled once, and validation of manifests and
//! configuration against them. The schemas are the single source of truth for the shape of a
//! document; rules that a schema cannot express (references between objects, cycles, cron,
//! durations, alert conditions) live in [`semantic`]. No IO.

pub mod semantic;

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::Validator;
use serde_json::Value;

use crate::manifest::{describe_type, Kind};

/// The configuration schema, as published in `schemas/config.json`.
pub const CONFIG_SCHEMA: &str = include_str!("../../schemas/config.json");

/// The schema text of a kind, as published in `schemas/`.
pub fn schema_text(kind: Kind) -> &'static str {
    match kind {
        Kind::Workflow => include_str!("../../schemas/workflow.json"),
        Kind::WorkflowTemplate => include_str!("../../schemas/workflow-template.json"),
        Kind::Agent => include_str!("../../schemas/agent.json"),
        Kind::Schedule => include_str!("../../schemas/schedule.json"),
        Kind::Alert => include_str!("../../schemas/alert.json"),
        Kind::Trigger => include_str!("../../schemas/trigger.json"),
        Kind::Dashboard => include_str!("../../schemas/dashboard.json"),
        Kind::Quarantine => include_str!("../../schemas/quarantine.json"),
    }
}

/// The file name of a kind's schema under `schemas/`.
pub fn schema_file(kind: Kind) -> &'static str {
    match kind {
        Kind::Workflow => "workflow.json",
        Kind::WorkflowTemplate => "workflow-template.json",
        Kind::Agent => "agent.json",
        Kind::Schedule => "schedule.json",
        Kind::Alert => "alert.json",
        Kind::Trigger => "trigger.json",
        Kind::Dashboard => "dashboard.json",
        Kind::Quarantine => "quarantine.json",
    }
}

/// Every published schema as (file name, text): one per manifest kind and `config.json`.
/// `init` writes them into the project's `schemas/`, `schemas export` anywhere, and the
/// server serves them at `/schemas/<file>`. Each one's `$id` is its bare file name, a
/// relative reference resolved against wherever the document was read from, so the same
/// text names itself correctly on disk (`file:///.../schemas/workflow.json`) and when served
/// (`http://host:port/schemas/workflow.json`).
pub fn published() -> Vec<(&'static str, &'static str)> {
    let mut files: Vec<(&'static str, &'static str)> = Kind::ALL
        .iter()
        .map(|kind| (schema_file(*kind), schema_text(*kind)))
        .collect();
    files.push(("config.json", CONFIG_SCHEMA));
    files
}

/// The published schema named `file` (`workflow.json`, `config.json`, ...), if any.
pub fn published_text(file: &str) -> Option<&'static str> {
    published()
        .into_iter()
        .find(|(name, _)| *name == file)
        .map(|(_, text)| text)
}

/// Which schema to validate against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaName {
    /// A manifest kind's schema.
    Manifest(Kind),
    /// The configuration schema.
    Config,
}

/// One schema violation: where (JSON pointer), whether it concerns the key rather than the
/// value there, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer to the offending node.
    pub pointer: String,
    /// The pointer names a mapping key that should not be there: locate the key.
    pub at_key: bool,
    /// What is wrong and what was expected.
    pub message: String,
    /// For a string that failed a format: the 1-based character inside the string where
    /// the problem was found, when the format's parser knows it.
    pub inner_column: Option<u32>,
}

struct Compiled {
    schema: Value,
    validator: Validator,
}

fn compiled(name: SchemaName) -> &'static Compiled {
    static CACHE: OnceLock<Vec<Compiled>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        let mut texts: Vec<&str> = Kind::ALL.iter().map(|k| schema_text(*k)).collect();
        texts.push(CONFIG_SCHEMA);
        texts
            .into_iter()
            .map(|text| {
                // The schemas are part of the binary and covered by tests: a broken one is a
                // build defect, not an input error.
                let schema: Value = serde_json::from_str(text).expect("embedded schema is JSON");
                let validator = jsonschema::options()
                    .should_validate_formats(true)
                    .with_format("duration", |s: &str| {
                        crate::duration::parse_duration(s).is_ok()
                    })
                    .with_format("cron", |s: &str| {
                        crate::cron::CronSchedule::parse(s).is_ok()
                    })
                    .with_format("timezone", |s: &str| {
                        crate::cron::parse_time_zone(s).is_ok()
                    })
                    .with_format("condition", |s: &str| {
                        crate::lang::condition::parse_condition(s).is_ok()
                    })
                    .with_format("git-url", |s: &str| crate::spec::git::check_url(s).is_ok())
                    .with_format("git-branch", |s: &str| {
                        crate::spec::git::check_branch(s).is_ok()
                    })
                    .with_format("repository-path", |s: &str| {
                        crate::spec::git::check_path(s).is_ok()
                    })
                    .with_format("glob", |s: &str| crate::spec::trigger::glob(s).is_ok())
                    .with_format("payload-template", |s: &str| {
                        crate::lang::delivery_template::check(s).is_ok()
                    })
                    .build(&schema)
                    .expect("embedded schema compiles");
                Compiled { schema, validator }
            })
            .collect()
    });
    let index = match name {
        SchemaName::Manifest(kind) => Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0),
        SchemaName::Config => Kind::ALL.len(),
    };
    &all[index]
}

/// Validates a value against a schema, returning every violation with a message that says
/// what was expected.
pub fn validate(name: SchemaName, value: &Value) -> Vec<Violation> {
    let compiled = compiled(name);
    if compiled.validator.is_valid(value) {
        return Vec::new();
    }
    let mut formats = std::collections::HashSet::new();
    let described: Vec<(bool, Vec<Violation>)> = compiled
        .validator
        .iter_errors(value)
        .map(|error| {
            let pointer = error.instance_path().as_str().to_owned();
            if matches!(error.kind(), ValidationErrorKind::Format { .. }) {
                formats.insert(pointer.clone());
            }
            let schema_path = error.schema_path().as_str().to_owned();
            let pattern = matches!(error.kind(), ValidationErrorKind::Pattern { .. });
            let violations = describe(
                &compiled.schema,
                &schema_path,
                pointer,
                error.kind(),
                error.instance(),
                || error.to_string(),
            );
            (pattern, violations)
        })
        .collect();
    // A string that fails its format and its pattern (a date `31/01/2027`) is reported
    // once, by the format's more telling message.
    let mut violations: Vec<Violation> = described
        .into_iter()
        .filter(|(pattern, violations)| {
            !(*pattern && violations.iter().all(|v| formats.contains(&v.pointer)))
        })
        .flat_map(|(_, violations)| violations)
        .collect();
    violations.sort_by(|a, b| a.pointer.cmp(&b.pointer).then(a.message.cmp(&b.message)));
    violations.dedup();
    violations
}

/// The violations one validation error stands for: one per unknown field of an object (the
/// validator reports them together), otherwise one.
fn describe(
    schema: &Value,
    schema_path: &str,
    pointer: String,
    kind: &ValidationErrorKind,
    instance: &Value,
    fallback: impl FnOnce() -> String,
) -> Vec<Violation> {
    if let ValidationErrorKind::AdditionalProperties { unexpected } = kind {
        let allowed = allowed_properties(schema, schema_path);
        return unexpected
            .iter()
            .map(|field| {
                let hint = crate::util::did_you_mean(field, allowed.iter().map(String::as_str))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                Violation {
                    pointer: format!(
                        "{pointer}/{}",
                        crate::diagnostics::escape_pointer_segment(field)
                    ),
                    at_key: true,
                    message: format!(
                        "unknown field `{field}`{hint} (expected one of: {})",
                        allowed.join(", ")
                    ),
                    inner_column: None,
                }
            })
            .collect();
    }
    vec![describe_one(
        schema,
        schema_path,
        pointer,
        kind,
        instance,
        fallback,
    )]
}

fn describe_one(
    schema: &Value,
    schema_path: &str,
    pointer: String,
    kind: &ValidationErrorKind,
    instance: &Value,
    fallback: impl FnOnce() -> String,
) -> Violation {
    let plain = |message: String| Violation {
        pointer: pointer.clone(),
        at_key: false,
        message,
        inner_column: None,
    };
    match kind {
        ValidationErrorKind::Required { property } => {
            let field = property.as_str().unwrap_or_default();
            plain(format!("missing required field `{field}`"))
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(t) => type_name(&t.to_string()),
                TypeKind::Multiple(set) => set
                    .iter()
                    .map(|t| type_name(&t.to_string()))
                    .collect::<Vec<_>>()
                    .join(" or "),
            };
            plain(format!(
                "expected {expected}, found {}",
                describe_value(instance)
            ))
        }
        ValidationErrorKind::Enum { options } => plain(format!(
            "expected one of {}, found {}",
            list_values(options),
            describe_value(instance)
        )),
        ValidationErrorKind::Constant { expected_value } => plain(format!(
            "expected {expected_value}, found {}",
            describe_value(instance)
        )),
        ValidationErrorKind::Format { format } => {
            let text = instance.as_str().unwrap_or_default();
            let (message, inner_column) = semantic::format_message(format, text);
            Violation {
                inner_column,
                ..plain(message)
            }
        }
        ValidationErrorKind::Pattern { pattern } => plain(format!(
            "{} does not match the expected form `{pattern}`{}",
            describe_value(instance),
            pattern_hint(schema_path)
        )),
        ValidationErrorKind::MinItems { limit } => plain(format!(
            "expected at least {limit} item{}, found {}",
            if *limit == 1 { "" } else { "s" },
            instance.as_array().map_or(0, Vec::len)
        )),
        ValidationErrorKind::MinLength { limit: 1 } => plain("must not be empty".to_owned()),
        ValidationErrorKind::UniqueItems => plain(format!(
            "expected unique items, found duplicates in {}",
            describe_value(instance)
        )),
        ValidationErrorKind::OneOfNotValid { .. }
        | ValidationErrorKind::OneOfMultipleValid { .. }
            if required_alternatives(schema, schema_path).is_some() =>
        {
            let fields = required_alternatives(schema, schema_path).unwrap_or_default();
            let (canonical, aliases) = fields.split_first().unwrap_or((&"", &[]));
            let aliases = aliases
                .iter()
                .map(|a| format!("`{a}`"))
                .collect::<Vec<_>>()
                .join(" or ");
            let are_aliases = Kind::ALL.iter().any(|k| {
                crate::manifest::field_aliases(*k)
                    .iter()
                    .any(|(alias, field)| field == canonical && fields.contains(alias))
            });
            if !are_aliases {
                // Alternatives, not names of one field (a Quarantine entry's `test` or
                // `match`).
                let listed = fields
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(" or ");
                if matches!(kind, ValidationErrorKind::OneOfMultipleValid { .. }) {
                    plain(format!("set one of {listed}, not more"))
                } else {
                    plain(format!("missing required field: one of {listed}"))
                }
            } else if matches!(kind, ValidationErrorKind::OneOfMultipleValid { .. }) {
                plain(format!(
                    "both `{canonical}` and its alias {aliases} are set: keep one"
                ))
            } else {
                plain(format!(
                    "missing required field `{canonical}` (or its alias {aliases})"
                ))
            }
        }
        ValidationErrorKind::OneOfNotValid { .. } | ValidationErrorKind::AnyOf { .. } => {
            let description = sub_schema(schema, schema_path)
                .and_then(|s| s.get("description"))
                .and_then(Value::as_str)
                .map(|d| format!(": {}", lowercase_first(d)))
                .unwrap_or_default();
            plain(format!(
                "{} is not an accepted value{description}",
                describe_value(instance)
            ))
        }
        _ => plain(fallback()),
    }
}

/// The fields of a `oneOf` whose branches each only require one field (a field and its
/// aliases: exactly one of them must be set), the canonical one first.
fn required_alternatives<'a>(schema: &'a Value, schema_path: &str) -> Option<Vec<&'a str>> {
    let branches = schema.pointer(schema_path)?.as_array()?;
    branches
        .iter()
        .map(|branch| {
            let branch = branch.as_object()?;
            let required = branch.get("required")?.as_array()?;
            match (branch.len(), required.as_slice()) {
                (1, [field]) => field.as_str(),
                _ => None,
            }
        })
        .collect()
}

/// The schema node a schema path (without its last keyword) points at.
fn sub_schema<'a>(schema: &'a Value, schema_path: &str) -> Option<&'a Value> {
    let parent = schema_path.rsplit_once('/').map_or("", |(p, _)| p);
    schema.pointer(parent)
}

fn allowed_properties(schema: &Value, schema_path: &str) -> Vec<String> {
    let mut names: Vec<String> = sub_schema(schema, schema_path)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    // Fields declared in if/then/else branches of the same object count too.
    if let Some(node) = sub_schema(schema, schema_path) {
        for branch in ["then", "else"] {
            if let Some(props) = node
                .get(branch)
                .and_then(|b| b.get("properties"))
                .and_then(Value::as_object)
            {
                names.extend(props.keys().cloned());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

fn pattern_hint(schema_path: &str) -> &'static str {
    if schema_path.ends_with("/secret/pattern")
        || schema_path.ends_with("/api_token/pattern")
        || schema_path.ends_with("/webhook_secret/pattern")
        || schema_path.ends_with("/github/properties/token/pattern")
    {
        " (a reference such as env:NAME or file:PATH, never the secret itself)"
    } else if schema_path.ends_with("/api_url/pattern") {
        " (an http(s) URL: https://api.github.com, or https://HOST/api/v3 for GitHub Enterprise)"
    } else if schema_path.ends_with("/path/pattern") {
        " (a URL path under /hooks/, e.g. /hooks/github)"
    } else if schema_path.ends_with("/id/pattern") {
        " (lowercase letters, digits, `_`, `.` and `-`)"
    } else {
        ""
    }
}

fn type_name(json_type: &str) -> String {
    match json_type {
        "object" => "a mapping".to_owned(),
        "array" => "an array".to_owned(),
        "integer" => "an integer".to_owned(),
        other => format!("a {other}"),
    }
}

fn list_values(options: &Value) -> String {
    options
        .as_array()
        .map(|values| {
            values
                .iter()
                .map(|v| match v {
                    Value::String(s) => format!("`{s}`"),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// A short description of a value for messages: `"text"`, `5`, `an array`.
pub fn describe_value(value: &Value) -> String {
    match value {
        Value::String(s) if s.chars().count() <= 60 => format!("`{s}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::Bool(b) => format!("`{b}`"),
        other => describe_type(other).to_owned(),
    }
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_published_schema_names_itself_by_its_file_name() {
        let files = published();
        assert_eq!(files.len(), Kind::ALL.len() + 1);
        for (file, text) in files {
            let schema: Value = serde_json::from_str(text).unwrap();
            assert_eq!(
                schema["$id"], file,
                "{file}: a relative `$id` resolves where it is read"
            );
            assert_eq!(published_text(file), Some(text));
        }
        assert_eq!(published_text("nothing.json"), None);
    }

    #[test]
    fn every_embedded_schema_compiles() {
        for kind in Kind::ALL {
            let _ = compiled(SchemaName::Manifest(kind));
        }
        let _ = compiled(SchemaName::Config);
    }

    #[test]
    fn unknown_field_suggests_the_closest() {
        let violations = validate(
            SchemaName::Manifest(Kind::Workflow),
            &json!({"name": "a", "stesp": [], "steps": [{"name": "x"}]}),
        );
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert_eq!(violations[0].pointer, "/stesp");
        assert!(violations[0].at_key);
        assert!(
            violations[0]
                .message
                .starts_with("unknown field `stesp`; did you mean `steps`?"),
            "{}",
            violations[0].message
        );
    }

    #[test]
    fn every_unknown_field_of_an_object_is_reported() {
        let violations = validate(
            SchemaName::Manifest(Kind::Workflow),
            &json!({"name": "a", "steps": [
                {"name": "x", "command": ["true"], "depend_on": [], "timout": "5m"}
            ]}),
        );
        let pointers: Vec<&str> = violations.iter().map(|v| v.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            ["/steps/0/depend_on", "/steps/0/timout"],
            "{violations:?}"
        );
        assert!(violations[1].message.contains("did you mean `timeout`?"));
    }

    fn dashboard(value: serde_json::Value) -> Vec<String> {
        validate(SchemaName::Manifest(Kind::Dashboard), &value)
            .into_iter()
            .map(|v| format!("{} {}", v.pointer, v.message))
            .collect()
    }

    #[test]
    fn dashboards_accept_every_widget_type() {
        let valid = json!({
            "kind": "Dashboard",
            "name": "Team board",
            "description": "What the team watches",
            "widgets": [
                {"type": "system_metric", "title": "CPU", "width": 2, "options": {"metric": "cpu_percent", "since": "1h"}},
                {"type": "pass_rate", "options": {"workflow": "wf_smoke", "runs": 30}},
                {"type": "runs_table", "width": 4, "options": {"workflow": "wf_smoke", "status": "failed", "limit": 5}},
                {"type": "alerts_table", "options": {"state": "firing"}},
                {"type": "workflow_sparkline", "options": {"workflow": "wf_smoke"}},
                {"type": "agent_metrics", "width": 1, "options": {"agent": "shell"}},
                {"type": "runs_table"}
            ]
        });
        assert_eq!(dashboard(valid), Vec::<String>::new());
    }

    #[test]
    fn dashboard_problems_point_at_the_widget_field() {
        assert_eq!(
            dashboard(json!({"name": "b", "widgets": []})),
            ["/widgets expected at least 1 item, found 0"]
        );
        assert_eq!(
            dashboard(json!({"widgets": [{"type": "runs_table"}]})),
            [" missing required field `name`"]
        );
        let problems = dashboard(json!({"name": "b", "widgets": [
            {"type": "pie_chart"},
            {"type": "runs_table", "width": 5, "options": {"status": "broken", "limt": 3}},
            {"type": "workflow_sparkline"},
            {"type": "agent_metrics", "options": {}},
            {"type": "system_metric", "options": {"metric": "cpu", "since": "soon"}},
            {"type": "alerts_table", "colour": "red"}
        ]}));
        let expected_start = [
            "/widgets/0/type expected one of `system_metric`, `pass_rate`, `runs_table`, `alerts_table`, `workflow_sparkline`, `agent_metrics`, found `pie_chart`",
            "/widgets/1/options/limt unknown field `limt`; did you mean `limit`?",
            "/widgets/1/options/status expected one of `queued`",
            "/widgets/1/width ",
            "/widgets/2 missing required field `options`",
            "/widgets/3/options missing required field `agent`",
            "/widgets/4/options/metric expected one of `cpu_percent`",
            "/widgets/4/options/since ",
            "/widgets/5/colour unknown field `colour`",
        ];
        assert_eq!(problems.len(), expected_start.len(), "{problems:#?}");
        for (problem, start) in problems.iter().zip(expected_start) {
            assert!(
                problem.starts_with(start),
                "{problem:?} should start with {start:?}\n{problems:#?}"
            );
        }
    }

    #[test]
    fn type_and_required_messages_say_what_was_expected() {
        let violations = validate(
            SchemaName::Manifest(Kind::Schedule),
            &json!({"name": "a", "cron": 5}),
        );
        let messages: Vec<_> = violations
            .iter()
            .map(|v| format!("{} {}", v.pointer, v.message))
            .collect();
        assert_eq!(
            messages,
            [
                " missing required field `workflow` (or its alias `workflow_id`)",
                "/cron expected a string, found `5`"
            ]
        );
    }

    #[test]
    fn the_published_schemas_accept_the_aliases_once() {
        let schedule = |value: serde_json::Value| {
            validate(SchemaName::Manifest(Kind::Schedule), &value)
                .into_iter()
                .map(|v| v.message)
                .collect::<Vec<_>>()
        };
        let aliased = json!({"name": "a", "schedule": "0 2 * * *", "workflow_id": "wf_x"});
        assert_eq!(schedule(aliased), Vec::<String>::new());
        let both =
            json!({"name": "a", "cron": "0 2 * * *", "schedule": "0 2 * * *", "workflow": "wf_x"});
        assert_eq!(
            schedule(both),
            ["both `cron` and its alias `schedule` are set: keep one"]
        );
        let kinds = json!({"kind": "schedules", "name": "a", "cron": "@daily", "workflow": "w"});
        assert_eq!(schedule(kinds), Vec::<String>::new());
        let alerts = json!({"alerts": [{"name": "a", "condition": "system.cpu_percent > 1"}]});
        assert!(validate(SchemaName::Manifest(Kind::Alert), &alerts).is_empty());
    }

    #[test]
    fn time_zones_are_iana_names_with_a_suggestion() {
        let schedule = |zone: &str| {
            validate(
                SchemaName::Manifest(Kind::Schedule),
                &json!({"name": "a", "cron": "0 2 * * *", "workflow": "wf_a", "timezone": zone}),
            )
            .into_iter()
            .map(|v| format!("{} {}", v.pointer, v.message))
            .collect::<Vec<_>>()
        };
        for zone in [
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Australia/Lord_Howe",
        ] {
            assert_eq!(schedule(zone), Vec::<String>::new(), "{zone}");
        }
        let expected = "(expected an IANA name such as Europe/Berlin or UTC)";
        assert_eq!(
            schedule("Europe/Berln"),
            [format!(
                "/timezone unknown time zone `Europe/Berln`; did you mean `Europe/Berlin`? {expected}"
            )]
        );
        assert_eq!(
            schedule("new_york"),
            [format!(
                "/timezone unknown time zone `new_york`; did you mean `America/New_York`? {expected}"
            )]
        );
        assert_eq!(
            schedule("Mars/Olympus_Mons"),
            [format!(
                "/timezone unknown time zone `Mars/Olympus_Mons` {expected}"
            )]
        );
        assert_eq!(
            schedule(""),
            [format!("/timezone empty time zone {expected}")]
        );

        let config = validate(
            SchemaName::Config,
            &json!({"scheduler": {"timezone": "europe/berlin"}}),
        );
        assert_eq!(config.len(), 1, "{config:?}");
        assert_eq!(config[0].pointer, "/scheduler/timezone");
        assert!(
            config[0]
                .message
                .starts_with("unknown time zone `europe/berlin`; did you mean `Europe/Berlin`?"),
            "{}",
            config[0].message
        );
    }
}
