//! What `{{ ... }}` in a trigger's parameters names in a delivery: `payload.x.y` (array
//! elements by index: `payload.commits.0.id`), `event`, `action`, `branch`, `delivery`,
//! `trigger` (the names and their check: [`crate::lang::delivery_template`]). The language
//! is [`crate::lang::template`], lenient here: a delivery that lacks a value is no error —
//! webhooks of one trigger differ by event — so a whole reference to nothing leaves the
//! parameter out, and inside text it reads as empty.

use serde_json::Value;

use crate::lang::template::{self, Mode};

use crate::lang::delivery_template::check;

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
    let resolve = |reference: &str| Ok(lookup(context, reference).cloned());
    let checked = |text: &str| {
        if text.contains("{{") {
            check(text)?;
        }
        Ok(())
    };
    check_strings(value, &checked)?;
    template::render_value(value, &resolve, Mode::Lenient)
}

/// Runs `check` on every string inside `value`.
fn check_strings(value: &Value, check: &dyn Fn(&str) -> Result<(), String>) -> Result<(), String> {
    match value {
        Value::String(text) => check(text),
        Value::Array(items) => items.iter().try_for_each(|item| check_strings(item, check)),
        Value::Object(map) => map.values().try_for_each(|item| check_strings(item, check)),
        _ => Ok(()),
    }
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
