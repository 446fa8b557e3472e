//! Secret references, `env:NAME` or `file:PATH` (relative to the project), read where they
//! are used and nowhere else: the API token, webhook and notification secrets (trimmed), and
//! the secrets a step declares in `env:` (the file's text without its trailing line break).

use std::path::{Path, PathBuf};

/// Why a reference did not give a value.
#[derive(Debug)]
pub enum SecretError {
    /// `env:NAME` names a variable this process does not have.
    Unset(String),
    /// `file:PATH` names a file that cannot be read.
    Unreadable(PathBuf, std::io::Error),
    /// Neither `env:` nor `file:`.
    NotAReference,
}

/// The text a reference names, as it is: the variable's value, or the whole file.
pub fn read(reference: &str, project_dir: &Path) -> Result<String, SecretError> {
    if let Some(name) = reference.strip_prefix("env:") {
        return std::env::var(name).map_err(|_| SecretError::Unset(name.to_owned()));
    }
    if let Some(path) = reference.strip_prefix("file:") {
        let path = project_dir.join(path);
        return std::fs::read_to_string(&path).map_err(|err| SecretError::Unreadable(path, err));
    }
    Err(SecretError::NotAReference)
}

/// The API token's reference resolved. An empty or blank token is an error.
pub fn resolve_api_token(reference: &str, project_dir: &Path) -> anyhow::Result<String> {
    crate::config::api_token::check_not_blank(
        resolve_named("API token", reference, project_dir)?,
        reference,
    )
}

/// A service secret (webhook, notification channel) resolved and trimmed; `what` names it in
/// errors.
pub fn resolve_named(what: &str, reference: &str, project_dir: &Path) -> anyhow::Result<String> {
    match read(reference, project_dir) {
        Ok(value) => Ok(value.trim().to_owned()),
        Err(SecretError::Unset(name)) => anyhow::bail!(
            "the {what} reference `{reference}` names the environment variable {name}, which is not set"
        ),
        Err(SecretError::Unreadable(path, err)) => Err(anyhow::Error::new(err).context(format!(
            "the {what} reference `{reference}` names {}, which cannot be read",
            path.display()
        ))),
        Err(SecretError::NotAReference) => anyhow::bail!(
            "`{reference}` is not a secret reference: expected env:NAME or file:PATH"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_variables_or_project_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("s"), "value\n").expect("write");
        assert_eq!(read("file:s", dir.path()).expect("file"), "value\n");
        assert_eq!(
            resolve_named("webhook secret", "file:s", dir.path()).expect("trimmed"),
            "value"
        );
        assert!(matches!(
            read("env:ORCHESTRATOR_TEST_SURELY_UNSET", dir.path()),
            Err(SecretError::Unset(name)) if name == "ORCHESTRATOR_TEST_SURELY_UNSET"
        ));
        assert!(matches!(
            read("plain", dir.path()),
            Err(SecretError::NotAReference)
        ));
        let message = format!(
            "{:#}",
            resolve_named("API token", "file:missing", dir.path()).unwrap_err()
        );
        assert!(
            message.starts_with("the API token reference `file:missing` names "),
            "{message}"
        );
    }
}
