//! From a stored workflow to the steps a run executes: template expansion, and what the
//! run's `{{ ... }}` substitutions (in step parameters and argv elements) and `if:`
//! conditions see: the [`Scope`] of parameters, run and finished steps. The languages
//! themselves are [`crate::lang::template`] (strict here) and [`crate::lang::if_condition`].
//!
//! Substituted values are data: they become whole arguments, environment variables or JSON
//! values, never text spliced into a shell command.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::lang::if_condition::{self, Function, IfContext, Names};
use crate::lang::template::{self, Mode};
use crate::model::Status;

/// A workflow ready to run: its steps, the parameters it declares, and the values its
/// manifest gives them (for a workflow that uses a template).
#[derive(Debug, Clone, PartialEq)]
pub struct Expanded {
    /// The workflow as it runs: the manifest with the template's steps in place.
    pub workflow: Value,
    /// The declared parameters (`{name: {type, required, default, enum}}`), if any.
    pub declared: Option<Map<String, Value>>,
    /// Parameter values set by the manifest itself.
    pub preset: Map<String, Value>,
}

/// Expands a workflow spec. `find_template` looks a template up by name or id.
pub fn expand(
    spec: &Value,
    find_template: impl Fn(&str) -> Option<Value>,
) -> Result<Expanded, String> {
    let Some(name) = spec.get("template").and_then(Value::as_str) else {
        return Ok(Expanded {
            workflow: spec.clone(),
            declared: spec.get("parameters").and_then(Value::as_object).cloned(),
            preset: Map::new(),
        });
    };
    let template = find_template(name).ok_or_else(|| {
        format!("template `{name}` is not in the store: apply its manifest first")
    })?;
    let mut workflow = spec.clone();
    if let Value::Object(map) = &mut workflow {
        map.remove("template");
        map.remove("parameters");
        map.insert(
            "steps".to_owned(),
            template
                .get("steps")
                .cloned()
                .unwrap_or(Value::Array(Vec::new())),
        );
        for field in ["timeout", "max_parallel", "env", "concurrency", "select"] {
            if !map.contains_key(field) {
                if let Some(value) = template.get(field) {
                    map.insert(field.to_owned(), value.clone());
                }
            }
        }
        map.insert("expanded_from".to_owned(), Value::from(name));
    }
    Ok(Expanded {
        workflow,
        declared: template
            .get("parameters")
            .and_then(Value::as_object)
            .cloned(),
        preset: spec
            .get("parameters")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default(),
    })
}

/// What `{{ ... }}` and conditions can refer to.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `params.*`.
    pub params: Map<String, Value>,
    /// `run.*`: id, workflow_id, workflow_name.
    pub run: Map<String, Value>,
    /// `steps.<name>.status` and `steps.<name>.outputs.*`, for finished steps.
    pub steps: HashMap<String, StepState>,
}

/// A finished step as conditions and substitutions see it.
#[derive(Debug, Clone)]
pub struct StepState {
    /// Its final state.
    pub status: Status,
    /// Its outputs.
    pub outputs: Map<String, Value>,
}

impl Scope {
    /// The value of a dotted reference such as `params.environment` or
    /// `steps.build.outputs.version`.
    pub fn lookup(&self, reference: &str) -> Result<Value, String> {
        let mut parts = reference.split('.');
        let root = parts.next().unwrap_or_default();
        let rest: Vec<&str> = parts.collect();
        let (base, path): (Value, &[&str]) = match root {
            "params" => (Value::Object(self.params.clone()), &rest[..]),
            "run" => (Value::Object(self.run.clone()), &rest[..]),
            "steps" => {
                let Some((step, path)) = rest.split_first() else {
                    return Err("`steps` needs a step name: steps.NAME.outputs.KEY".into());
                };
                let Some(state) = self.steps.get(*step) else {
                    return Err(format!(
                        "`{reference}`: step `{step}` has not finished before this step (add it to depends_on)"
                    ));
                };
                let mut value = Map::new();
                value.insert("status".into(), Value::from(state.status.as_str()));
                value.insert("outputs".into(), Value::Object(state.outputs.clone()));
                (Value::Object(value), path)
            }
            other => {
                return Err(format!(
                    "unknown reference `{reference}`: `{other}` is not params, steps or run{}",
                    template::root_hint(other, if_condition::REFERENCE_ROOTS)
                ))
            }
        };
        let mut current = &base;
        for segment in path {
            current = match current {
                Value::Object(map) => map.get(*segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            }
            .ok_or_else(|| format!("`{reference}` is not set"))?;
        }
        Ok(current.clone())
    }
}

/// Replaces every `{{ reference }}` in strings inside `value`, strictly: a reference that
/// names nothing is an error. A string that is exactly one reference becomes the referenced
/// value itself (an array stays an array); references inside longer text are replaced by
/// their text.
pub fn substitute(value: &Value, scope: &Scope) -> Result<Value, String> {
    let resolve = |reference: &str| scope.lookup(reference).map(Some);
    template::render_value(value, &resolve, Mode::Strict).map(|found| found.unwrap_or(Value::Null))
}

/// How a step's condition sees the run so far.
#[derive(Debug, Clone, Copy)]
pub struct ConditionContext {
    /// Every step this one depends on (directly or not) ended well.
    pub upstream_ok: bool,
    /// The run is being cancelled.
    pub cancelled: bool,
}

/// Evaluates an `if:` condition (the language: [`crate::lang::if_condition`]) with the
/// references of `scope` (an unset one is `null`) and the functions of `context`.
pub fn evaluate_condition(
    text: &str,
    scope: &Scope,
    context: ConditionContext,
) -> Result<bool, String> {
    if_condition::parse(text, Names::Any)?.evaluate(&RunState { scope, context })
}

/// The scope and the run's state, as a condition reads them.
struct RunState<'a> {
    scope: &'a Scope,
    context: ConditionContext,
}

impl IfContext for RunState<'_> {
    fn reference(&self, name: &str) -> Value {
        self.scope.lookup(name).unwrap_or(Value::Null)
    }

    fn call(&self, function: Function) -> bool {
        let ConditionContext {
            upstream_ok,
            cancelled,
        } = self.context;
        match function {
            Function::Success => upstream_ok && !cancelled,
            Function::Failure => !upstream_ok && !cancelled,
            Function::Always => true,
            Function::Cancelled => cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        let mut scope = Scope {
            params: json!({"environment": "production", "tags": ["a", "b"]})
                .as_object()
                .unwrap()
                .clone(),
            ..Scope::default()
        };
        scope.run.insert("id".into(), json!("run_1"));
        scope.steps.insert(
            "build".into(),
            StepState {
                status: Status::Succeeded,
                outputs: json!({"version": "1.2.3", "count": "3"})
                    .as_object()
                    .unwrap()
                    .clone(),
            },
        );
        scope
    }

    #[test]
    fn substitution_keeps_types_and_never_evaluates_text() {
        let scope = scope();
        let value = json!({
            "tags": "{{ params.tags }}",
            "label": "deploy {{ steps.build.outputs.version }} to {{params.environment}}",
            "argv": ["echo", "{{ run.id }}"],
        });
        assert_eq!(
            substitute(&value, &scope).unwrap(),
            json!({"tags": ["a", "b"], "label": "deploy 1.2.3 to production", "argv": ["echo", "run_1"]})
        );
        let mut hostile = scope.clone();
        hostile
            .params
            .insert("environment".into(), json!("\"; touch pwned; {{ run.id }}"));
        assert_eq!(
            substitute(&json!("{{ params.environment }}"), &hostile).unwrap(),
            json!("\"; touch pwned; {{ run.id }}"),
            "a substituted value is not substituted again"
        );
        let err = substitute(&json!("{{ steps.test.outputs.x }}"), &scope).unwrap_err();
        assert!(err.contains("step `test` has not finished"), "{err}");
    }

    #[test]
    fn conditions() {
        let scope = scope();
        let ok = ConditionContext {
            upstream_ok: true,
            cancelled: false,
        };
        let failed = ConditionContext {
            upstream_ok: false,
            cancelled: false,
        };
        let eval = |text: &str, context| evaluate_condition(text, &scope, context).unwrap();
        assert!(eval("success()", ok));
        assert!(!eval("success()", failed));
        assert!(eval("failure()", failed));
        assert!(eval("always()", failed));
        assert!(eval("steps.build.status == 'succeeded'", ok));
        assert!(eval(
            "steps.build.outputs.count >= 3 && params.environment != 'staging'",
            ok
        ));
        assert!(eval(
            "not (params.environment == 'staging') or failure()",
            ok
        ));
        assert!(evaluate_condition("bogus()", &scope, ok).is_err());
        assert!(if_condition::check("success() &&").is_err());
        assert!(if_condition::check("env.X == 1").is_err());
        assert!(if_condition::check("always() || steps.a.outputs.b == 'x'").is_ok());
    }

    #[test]
    fn templates_expand_with_their_declarations() {
        let template = json!({"name": "suite", "parameters": {"environment": {"type": "string", "required": true}},
                              "steps": [{"name": "setup", "command": ["echo", "{{ params.environment }}"]}]});
        let spec = json!({"name": "Prod", "template": "suite", "parameters": {"environment": "production"}});
        let expanded = expand(&spec, |name| (name == "suite").then(|| template.clone())).unwrap();
        assert_eq!(expanded.workflow["steps"], template["steps"]);
        assert_eq!(expanded.preset["environment"], "production");
        assert!(expanded.declared.unwrap().contains_key("environment"));
        assert!(expand(&spec, |_| None)
            .unwrap_err()
            .contains("template `suite`"));
    }
}
