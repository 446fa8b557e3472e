//! `{{ payload.x.y }}` in a trigger's parameters, in the engine's substitution style (see
//! `engine::expand`): a string that is exactly one reference becomes the referenced value
//! itself (a number stays a number), references inside longer text are replaced by their
//! text. A delivery that lacks a value is no error — webhooks of one trigger differ by
//! event — so a whole reference to nothing leaves the parameter out, and inside text it
//! reads as empty.

use serde_json::Value;

/// The names a reference may start with.
pub const ROOTS: &[&str] = &[
    "payload", "event", "action", "branch", "delivery", "trigger",
];

/// Checks the references of a parameter value: every `{{` closed, every reference starting
/// with one of [`ROOTS`].
pub fn check(text: &str) -> Result<(), String> {
    for reference in references(text)? {
        let root = reference.split('.').next().unwrap_or_default();
        if reference.is_empty() {
            return Err(format!("empty reference `{{{{ }}}}` in `{text}`"));
        }
        if !ROOTS.contains(&root) {
            return Err(format!(
                "unknown reference `{reference}`: expected payload.<field>, {}",
                ROOTS[1..].join(", ")
            ));
        }
        if reference.split('.').any(str::is_empty) {
            return Err(format!("`{reference}` has an empty segment"));
        }
    }
    Ok(())
}

/// The trimmed references of a text, in order.
fn references(text: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in `{text}`"))?;
        found.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    Ok(found)
}

/// The value a dotted reference names in `context`, when there is one (array elements by
/// index: `payload.commits.0.id`).
pub fn lookup<'a>(context: &'a Value, reference: &str) -> Option<&'a Value> {
    let mut current = context;
    for segment in reference.split('.') {
        current = match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }?;
    }
    (!current.is_null()).then_some(current)
}

/// Replaces the references in `value` (strings inside arrays and objects too). `None` when
/// `value` is a single reference to something the delivery lacks.
pub fn substitute(value: &Value, context: &Value) -> Result<Option<Value>, String> {
    Ok(match value {
        Value::String(text) => substitute_text(text, context)?,
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|item| Ok(substitute(item, context)?.unwrap_or(Value::Null)))
                .collect::<Result<_, String>>()?,
        )),
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, context)?.unwrap_or(Value::Null))))
                .collect::<Result<_, String>>()?,
        )),
        other => Some(other.clone()),
    })
}

fn substitute_text(text: &str, context: &Value) -> Result<Option<Value>, String> {
    if !text.contains("{{") {
        return Ok(Some(Value::String(text.to_owned())));
    }
    check(text)?;
    let trimmed = text.trim();
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|t| t.strip_suffix("}}"))
        .filter(|inner| !inner.contains("{{") && !inner.contains("}}"))
    {
        return Ok(lookup(context, inner.trim()).cloned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").unwrap_or(after.len());
        match lookup(context, after[..end].trim()) {
            Some(Value::String(s)) => out.push_str(s),
            Some(other) => out.push_str(&other.to_string()),
            None => {}
        }
        rest = after.get(end + 2..).unwrap_or_default();
    }
    out.push_str(rest);
    Ok(Some(Value::String(out)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn context() -> Value {
        json!({
            "payload": {"ref": "refs/heads/main", "after": "abc", "pull_request": {"number": 7},
                        "commits": [{"id": "c1"}], "forced": false},
            "event": "push",
            "branch": "main",
            "action": null,
        })
    }

    #[test]
    fn whole_references_keep_their_type() {
        let c = context();
        assert_eq!(
            substitute(&json!("{{ payload.pull_request.number }}"), &c).unwrap(),
            Some(json!(7))
        );
        assert_eq!(
            substitute(&json!("{{payload.forced}}"), &c).unwrap(),
            Some(json!(false))
        );
        assert_eq!(
            substitute(&json!("{{ payload.commits.0.id }}"), &c).unwrap(),
            Some(json!("c1"))
        );
        assert_eq!(substitute(&json!(42), &c).unwrap(), Some(json!(42)));
    }

    #[test]
    fn text_gets_the_values_text() {
        let c = context();
        assert_eq!(
            substitute(&json!("{{ event }} of {{ branch }} at {{ payload.after }}, PR {{ payload.pull_request.number }}"), &c).unwrap(),
            Some(json!("push of main at abc, PR 7"))
        );
        assert_eq!(
            substitute(&json!("plain"), &c).unwrap(),
            Some(json!("plain"))
        );
    }

    #[test]
    fn missing_values_leave_the_parameter_out_or_read_empty() {
        let c = context();
        assert_eq!(substitute(&json!("{{ payload.nope }}"), &c).unwrap(), None);
        assert_eq!(substitute(&json!("{{ action }}"), &c).unwrap(), None);
        assert_eq!(
            substitute(&json!("pr-{{ payload.number }}"), &c).unwrap(),
            Some(json!("pr-"))
        );
        assert_eq!(
            substitute(
                &json!({"a": "{{ payload.nope }}", "b": ["{{ event }}"]}),
                &c
            )
            .unwrap(),
            Some(json!({"a": null, "b": ["push"]}))
        );
    }

    #[test]
    fn bad_references_are_errors() {
        assert!(check("{{ payload.ref").unwrap_err().starts_with("unclosed"));
        assert!(check("{{ params.x }}")
            .unwrap_err()
            .starts_with("unknown reference `params.x`"));
        assert!(check("{{ }}").unwrap_err().starts_with("empty reference"));
        assert!(check("{{ payload..x }}")
            .unwrap_err()
            .contains("empty segment"));
        assert_eq!(check("{{ payload.after }}-{{ delivery }}"), Ok(()));
        assert_eq!(check("no references"), Ok(()));
        assert!(substitute(&json!("{{ nope }}"), &context()).is_err());
    }
}
