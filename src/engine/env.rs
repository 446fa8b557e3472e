//! What a manifest's `env:` declares (on a workflow, a step, an agent): each variable is a
//! literal (a string, number or boolean), a secret reference `{secret: "env:NAME"}` or
//! `{secret: "file:PATH"}`, or a variable of the server's environment passed through as it
//! is, `{from_env: NAME}`. Records keep the declaration; values are resolved when a step
//! starts, and secret values go to the step's log masker, never into a record.

use std::path::Path;

use serde_json::{Map, Value};

/// One declared variable's value, unresolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvValue {
    /// The text as it is.
    Literal(String),
    /// `env:NAME` or `file:PATH` (relative to the project): masked wherever output goes.
    Secret(String),
    /// A variable of the server's environment, passed through unmasked; left unset when
    /// the server has none.
    FromEnv(String),
}

/// The variables of an `env:` mapping, in order. Anything but the forms the schema allows
/// becomes its JSON text, as literals always have.
pub fn declared(env: Option<&Value>) -> Vec<(String, EnvValue)> {
    let Some(map) = env.and_then(Value::as_object) else {
        return Vec::new();
    };
    map.iter()
        .map(|(name, value)| (name.clone(), parse(value)))
        .collect()
}

/// One variable's declared value.
pub fn parse(value: &Value) -> EnvValue {
    let single = |key: &str, map: &Map<String, Value>| {
        (map.len() == 1)
            .then(|| map.get(key).and_then(Value::as_str).map(str::to_owned))
            .flatten()
    };
    match value {
        Value::Object(map) => {
            if let Some(reference) = single("secret", map) {
                EnvValue::Secret(reference)
            } else if let Some(name) = single("from_env", map) {
                EnvValue::FromEnv(name)
            } else {
                EnvValue::Literal(value.to_string())
            }
        }
        other => EnvValue::Literal(crate::spec::params::env_value(other)),
    }
}

/// Declared variables resolved for a process: the variables, and the secret values among
/// them (to mask).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// Name and value, in declaration order (a later one overrides an earlier one).
    pub vars: Vec<(String, String)>,
    /// The values of secret references.
    pub secrets: Vec<String>,
}

/// Resolves declared variables. A secret reference that cannot be resolved is an error
/// naming the variable and the reference (never a value).
pub fn resolve(declared: &[(String, EnvValue)], project_dir: &Path) -> Result<Resolved, String> {
    let mut resolved = Resolved::default();
    for (name, value) in declared {
        match value {
            EnvValue::Literal(text) => resolved.vars.push((name.clone(), text.clone())),
            EnvValue::FromEnv(from) => {
                if let Some(text) = std::env::var_os(from).and_then(|v| v.into_string().ok()) {
                    resolved.vars.push((name.clone(), text));
                }
            }
            EnvValue::Secret(reference) => {
                let value = resolve_secret(reference, project_dir).map_err(|why| {
                    format!("env variable `{name}`: the secret `{reference}` {why}")
                })?;
                resolved.secrets.push(value.clone());
                resolved.vars.push((name.clone(), value));
            }
        }
    }
    Ok(resolved)
}

/// `env:NAME` is the variable's value as it is; `file:PATH` the file's text (relative to
/// the project) without its trailing line break.
fn resolve_secret(reference: &str, project_dir: &Path) -> Result<String, String> {
    use crate::config::secrets::{read, SecretError};
    match read(reference, project_dir) {
        Ok(text) if reference.starts_with("file:") => {
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        Ok(text) => Ok(text),
        Err(SecretError::Unset(name)) => Err(format!(
            "names the environment variable {name}, which the server does not have"
        )),
        Err(SecretError::Unreadable(path, err)) => Err(format!(
            "names {}, which cannot be read: {err}",
            path.display()
        )),
        Err(SecretError::NotAReference) => {
            Err("is not a secret reference: expected env:NAME or file:PATH".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literals_secrets_and_pass_through_are_told_apart() {
        let env = json!({
            "A": "text",
            "B": 3,
            "C": {"secret": "env:X"},
            "D": {"from_env": "HTTP_PROXY"},
        });
        assert_eq!(
            declared(Some(&env)),
            vec![
                ("A".into(), EnvValue::Literal("text".into())),
                ("B".into(), EnvValue::Literal("3".into())),
                ("C".into(), EnvValue::Secret("env:X".into())),
                ("D".into(), EnvValue::FromEnv("HTTP_PROXY".into())),
            ]
        );
    }

    #[test]
    fn file_secrets_lose_their_line_break_and_errors_name_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "s3cret\n").unwrap();
        let resolved = resolve(
            &[("T".into(), EnvValue::Secret("file:token".into()))],
            dir.path(),
        )
        .unwrap();
        assert_eq!(resolved.vars, vec![("T".into(), "s3cret".into())]);
        assert_eq!(resolved.secrets, vec!["s3cret".to_owned()]);
        let err = resolve(
            &[("T".into(), EnvValue::Secret("file:missing".into()))],
            dir.path(),
        )
        .unwrap_err();
        assert!(
            err.starts_with("env variable `T`: the secret `file:missing` names "),
            "{err}"
        );
        let err = resolve(
            &[(
                "U".into(),
                EnvValue::Secret("env:ORCHESTRATOR_TEST_SURELY_UNSET".into()),
            )],
            dir.path(),
        )
        .unwrap_err();
        assert!(
            err.contains("`env:ORCHESTRATOR_TEST_SURELY_UNSET`"),
            "{err}"
        );
    }
}
