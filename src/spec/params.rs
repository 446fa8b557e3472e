//! Run parameters: `--params` checked against the parameters a workflow (or its template)
//! declares, defaults filled in, before anything runs.

use serde_json::{Map, Value};

use crate::util::did_you_mean;

/// Checks `given` against the declarations (`{name: {type, required, default, enum}}`) and
/// returns the parameters of the run, defaults filled in. No declarations accept any object.
/// Every problem is reported at once, one per line.
pub fn resolve(
    declared: Option<&Map<String, Value>>,
    given: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let Some(declared) = declared.filter(|d| !d.is_empty()) else {
        return Ok(given.clone());
    };
    let mut problems = Vec::new();
    for name in given.keys() {
        if !declared.contains_key(name) {
            let hint = did_you_mean(name, declared.keys().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            problems.push(format!(
                "unknown parameter `{name}`{hint} (declared: {})",
                declared.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    let mut resolved = Map::new();
    for (name, declaration) in declared {
        let value = match given.get(name) {
            Some(value) => value.clone(),
            None => match declaration.get("default") {
                Some(default) => default.clone(),
                None if declaration.get("required").and_then(Value::as_bool) == Some(true) => {
                    problems.push(format!(
                        "missing required parameter `{name}`{}",
                        describe(declaration)
                    ));
                    continue;
                }
                None => continue,
            },
        };
        if let Some(expected) = declaration.get("type").and_then(Value::as_str) {
            if !has_type(&value, expected) {
                problems.push(format!(
                    "parameter `{name}` must be {}, got {}",
                    article(expected),
                    short(&value)
                ));
                continue;
            }
        }
        if let Some(allowed) = declaration.get("enum").and_then(Value::as_array) {
            if !allowed.contains(&value) {
                problems.push(format!(
                    "parameter `{name}` must be one of {}, got {}",
                    allowed.iter().map(short).collect::<Vec<_>>().join(", "),
                    short(&value)
                ));
                continue;
            }
        }
        resolved.insert(name.clone(), value);
    }
    if problems.is_empty() {
        Ok(resolved)
    } else {
        Err(problems.join("\n"))
    }
}

fn describe(declaration: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(kind) = declaration.get("type").and_then(Value::as_str) {
        parts.push(kind.to_owned());
    }
    if let Some(text) = declaration.get("description").and_then(Value::as_str) {
        parts.push(text.to_owned());
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(": "))
    }
}

fn has_type(value: &Value, expected: &str) -> bool {
    match expected {
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => true,
    }
}

fn article(kind: &str) -> String {
    match kind {
        "integer" | "array" | "object" => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

/// The environment variable a parameter is visible as: `ORCHESTRATOR_PARAM_` and the name in
/// upper case.
pub fn env_name(name: &str) -> String {
    format!("ORCHESTRATOR_PARAM_{}", name.to_uppercase())
}

/// A parameter value as an environment variable's text: strings as they are, everything
/// else as JSON.
pub fn env_value(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn no_declarations_accept_anything() {
        let given = map(json!({"environment": "production"}));
        assert_eq!(resolve(None, &given).unwrap(), given);
    }

    #[test]
    fn defaults_types_required_and_hints() {
        let declared = map(json!({
            "environment": {"type": "string", "required": true, "enum": ["staging", "production"]},
            "test_tags": {"type": "array", "default": []},
            "workers": {"type": "integer"}
        }));
        let ok = resolve(Some(&declared), &map(json!({"environment": "staging"}))).unwrap();
        assert_eq!(ok, map(json!({"environment": "staging", "test_tags": []})));
        let err = resolve(
            Some(&declared),
            &map(json!({"enviroment": "x", "workers": "4"})),
        )
        .unwrap_err();
        assert!(
            err.contains("unknown parameter `enviroment`; did you mean `environment`?"),
            "{err}"
        );
        assert!(
            err.contains("missing required parameter `environment` (string)"),
            "{err}"
        );
        assert!(
            err.contains("parameter `workers` must be an integer, got \"4\""),
            "{err}"
        );
        let err = resolve(Some(&declared), &map(json!({"environment": "dev"}))).unwrap_err();
        assert!(
            err.contains("must be one of \"staging\", \"production\""),
            "{err}"
        );
    }
}
