//! From a stored workflow to the steps a run executes: template expansion, `{{ ... }}`
//! substitution in step parameters and argv elements, and `if:` conditions.
//!
//! Substituted values are data: they become whole arguments, environment variables or JSON
//! values, never text spliced into a shell command.

use std::collections::HashMap;

use serde_json::{Map, Value};

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
        for field in ["timeout", "max_parallel", "env", "concurrency"] {
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
                    "unknown reference `{reference}`: `{other}` is not params, steps or run"
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

/// Replaces every `{{ reference }}` in strings inside `value`. A string that is exactly one
/// reference becomes the referenced value itself (an array stays an array); references
/// inside longer text are replaced by their text.
pub fn substitute(value: &Value, scope: &Scope) -> Result<Value, String> {
    Ok(match value {
        Value::String(text) => substitute_text(text, scope)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|item| substitute(item, scope))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), substitute(v, scope)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

fn substitute_text(text: &str, scope: &Scope) -> Result<Value, String> {
    if !text.contains("{{") {
        return Ok(Value::String(text.to_owned()));
    }
    let trimmed = text.trim();
    if let Some(inner) = trimmed
        .strip_prefix("{{")
        .and_then(|t| t.strip_suffix("}}"))
        .filter(|inner| !inner.contains("{{") && !inner.contains("}}"))
    {
        return scope.lookup(inner.trim());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in `{text}`"))?;
        match scope.lookup(after[..end].trim())? {
            Value::String(s) => out.push_str(&s),
            other => out.push_str(&other.to_string()),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

/// How a step's condition sees the run so far.
#[derive(Debug, Clone, Copy)]
pub struct ConditionContext {
    /// Every step this one depends on (directly or not) ended well.
    pub upstream_ok: bool,
    /// The run is being cancelled.
    pub cancelled: bool,
}

/// Evaluates an `if:` condition: `success()`, `failure()`, `always()`, `cancelled()`,
/// comparisons (`== != < <= > >=`) of references and literals, `&&`/`and`, `||`/`or`,
/// `!`/`not`, parentheses.
pub fn evaluate_condition(
    text: &str,
    scope: &Scope,
    context: ConditionContext,
) -> Result<bool, String> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens: &tokens,
        position: 0,
        scope,
        context,
        dry: false,
    };
    let value = parser.or()?;
    if parser.position != tokens.len() {
        return Err(format!(
            "unexpected `{}` in condition `{text}`",
            tokens[parser.position].text()
        ));
    }
    Ok(truthy(&value))
}

/// Checks a condition's syntax without evaluating references.
pub fn check_condition(text: &str) -> Result<(), String> {
    let scope = Scope::default();
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens: &tokens,
        position: 0,
        scope: &scope,
        context: ConditionContext {
            upstream_ok: true,
            cancelled: false,
        },
        dry: true,
    };
    parser.or()?;
    if parser.position != tokens.len() {
        return Err(format!(
            "unexpected `{}` in condition `{text}`",
            tokens[parser.position].text()
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Num(f64),
    Op(&'static str),
}

impl Token {
    fn text(&self) -> String {
        match self {
            Token::Ident(s) => s.clone(),
            Token::Str(s) => format!("'{s}'"),
            Token::Num(n) => n.to_string(),
            Token::Op(op) => (*op).to_owned(),
        }
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            let end = chars[i + 1..]
                .iter()
                .position(|&d| d == c)
                .ok_or_else(|| format!("unclosed string in condition `{text}`"))?;
            tokens.push(Token::Str(chars[i + 1..i + 1 + end].iter().collect()));
            i += end + 2;
            continue;
        }
        if c.is_ascii_digit() || (c == '-' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let literal: String = chars[start..i].iter().collect();
            tokens.push(Token::Num(literal.parse().map_err(|_| {
                format!("bad number `{literal}` in condition `{text}`")
            })?));
            continue;
        }
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '-'))
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            tokens.push(match word.as_str() {
                "and" => Token::Op("&&"),
                "or" => Token::Op("||"),
                "not" => Token::Op("!"),
                _ => Token::Ident(word),
            });
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let op = ["&&", "||", "==", "!=", "<=", ">="]
            .into_iter()
            .find(|op| *op == two);
        if let Some(op) = op {
            tokens.push(Token::Op(op));
            i += 2;
            continue;
        }
        let op = ["!", "<", ">", "(", ")"]
            .into_iter()
            .find(|op| op.starts_with(c))
            .ok_or_else(|| format!("unexpected `{c}` in condition `{text}`"))?;
        tokens.push(Token::Op(op));
        i += 1;
    }
    Ok(tokens)
}

/// The functions a condition may call.
const FUNCTIONS: [&str; 4] = ["success", "failure", "always", "cancelled"];

struct Parser<'a> {
    tokens: &'a [Token],
    position: usize,
    scope: &'a Scope,
    context: ConditionContext,
    dry: bool,
}

impl Parser<'_> {
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.tokens.get(self.position), Some(Token::Op(o)) if *o == op)
    }

    fn or(&mut self) -> Result<Value, String> {
        let mut left = self.and()?;
        while self.peek_op("||") {
            self.position += 1;
            let right = self.and()?;
            left = Value::Bool(truthy(&left) || truthy(&right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Value, String> {
        let mut left = self.not()?;
        while self.peek_op("&&") {
            self.position += 1;
            let right = self.not()?;
            left = Value::Bool(truthy(&left) && truthy(&right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Value, String> {
        if self.peek_op("!") {
            self.position += 1;
            return Ok(Value::Bool(!truthy(&self.not()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Value, String> {
        let left = self.primary()?;
        let Some(Token::Op(op)) = self.tokens.get(self.position) else {
            return Ok(left);
        };
        let op = *op;
        if !matches!(op, "==" | "!=" | "<" | "<=" | ">" | ">=") {
            return Ok(left);
        }
        self.position += 1;
        let right = self.primary()?;
        if self.dry {
            return Ok(Value::Bool(true));
        }
        let result = match op {
            "==" => loose_eq(&left, &right),
            "!=" => !loose_eq(&left, &right),
            _ => {
                let (Some(a), Some(b)) = (number(&left), number(&right)) else {
                    return Err(format!("`{op}` compares numbers, got {left} and {right}"));
                };
                match op {
                    "<" => a < b,
                    "<=" => a <= b,
                    ">" => a > b,
                    _ => a >= b,
                }
            }
        };
        Ok(Value::Bool(result))
    }

    fn primary(&mut self) -> Result<Value, String> {
        let token = self
            .tokens
            .get(self.position)
            .cloned()
            .ok_or("condition ends too early")?;
        self.position += 1;
        match token {
            Token::Str(s) => Ok(Value::String(s)),
            Token::Num(n) => Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)),
            Token::Op("(") => {
                let value = self.or()?;
                if !self.peek_op(")") {
                    return Err("missing `)` in condition".into());
                }
                self.position += 1;
                Ok(value)
            }
            Token::Op(op) => Err(format!("unexpected `{op}` in condition")),
            Token::Ident(word) => {
                if self.peek_op("(") {
                    self.position += 1;
                    if !self.peek_op(")") {
                        return Err(format!("`{word}()` takes no arguments"));
                    }
                    self.position += 1;
                    let context = self.context;
                    return match word.as_str() {
                        "success" => Ok(Value::Bool(context.upstream_ok && !context.cancelled)),
                        "failure" => Ok(Value::Bool(!context.upstream_ok && !context.cancelled)),
                        "always" => Ok(Value::Bool(true)),
                        "cancelled" => Ok(Value::Bool(context.cancelled)),
                        other => Err(format!(
                            "unknown function `{other}()`: expected success(), failure(), always() or cancelled()"
                        )),
                    };
                }
                match word.as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    "null" => Ok(Value::Null),
                    _ if self.dry => {
                        let root = word.split('.').next().unwrap_or_default();
                        if matches!(root, "params" | "steps" | "run") {
                            Ok(Value::Null)
                        } else {
                            let hint = crate::util::did_you_mean(word.as_str(), FUNCTIONS)
                                .map(|f| format!("; did you mean `{f}()`?"))
                                .unwrap_or_default();
                            Err(format!(
                                "unknown name `{word}` (expected a function: success(), failure(), always(), cancelled(); or a reference: params.*, steps.NAME.status, steps.NAME.outputs.*, run.*){hint}"
                            ))
                        }
                    }
                    _ => Ok(self.scope.lookup(&word).unwrap_or(Value::Null)),
                }
            }
        }
    }
}

fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) if !(a.is_string() && b.is_string()) => x == y,
        _ => match (a, b) {
            (Value::String(x), Value::String(y)) => x == y,
            (Value::String(x), other) | (other, Value::String(x)) => {
                *x == other.to_string().trim_matches('"')
            }
            _ => a == b,
        },
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
        assert!(check_condition("success() &&").is_err());
        assert!(check_condition("env.X == 1").is_err());
        assert!(check_condition("always() || steps.a.outputs.b == 'x'").is_ok());
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
