//! The rules of a Trigger manifest that its schema cannot say (a `secret` or
//! `insecure: true`, GitHub's fixed headers, the reserved source hook path) and its path
//! globs, which validation and the trigger compiler share. No IO.

use globset::{Glob, GlobBuilder};
use serde_json::Value;

/// Where webhook triggers listen: every trigger's `path` is under it.
pub const HOOKS_PREFIX: &str = "/hooks/";

/// The path of the git source's own webhook, which no trigger may take.
pub const SOURCE_HOOK_PATH: &str = "/hooks/source";

/// A glob as triggers use them: `*` and `?` stop at `/`, `**` crosses it, `[...]` and
/// `{a,b}` as usual (GitHub Actions' filter patterns work the same way).
pub fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("invalid glob `{pattern}`: {}", e.kind()))
}

/// Checks a Trigger manifest beyond its schema — the rules between fields: the path is not
/// the git source's webhook; `auth`, `signature_header`, `event_header` and
/// `delivery_header` belong to the generic provider (GitHub's headers are fixed); a bearer
/// token or a signature header needs a `secret`; a trigger without a `secret` must say
/// `insecure: true`, since anyone who can reach the server could otherwise start its
/// workflow with a payload of their choosing. Returns (JSON pointer, message) pairs.
pub fn check_manifest(spec: &Value) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if spec.get("path").and_then(Value::as_str) == Some(SOURCE_HOOK_PATH) {
        problems.push((
            "/path".to_owned(),
            format!("{SOURCE_HOOK_PATH} is the git source's webhook: pick another path under {HOOKS_PREFIX}"),
        ));
    }
    let generic = spec.get("provider").and_then(Value::as_str) == Some("generic");
    if !generic {
        if spec.get("auth").and_then(Value::as_str) == Some("bearer") {
            problems.push((
                "/auth".to_owned(),
                "GitHub signs deliveries (X-Hub-Signature-256): `auth: bearer` is for `provider: generic`".to_owned(),
            ));
        }
        for field in ["signature_header", "event_header", "delivery_header"] {
            if spec.get(field).is_some() {
                problems.push((
                    format!("/{field}"),
                    format!("`{field}` is for `provider: generic`: GitHub's headers are X-GitHub-Event, X-GitHub-Delivery and X-Hub-Signature-256"),
                ));
            }
        }
    }
    if spec.get("secret").is_none() {
        if spec.get("insecure").and_then(Value::as_bool) != Some(true) {
            problems.push((
                String::new(),
                "trigger has no `secret`: anyone who can reach the server could start its workflow with a payload of their choosing; set `secret: env:NAME` (or `file:PATH`) holding the secret the sender signs deliveries with, or say `insecure: true` to accept unsigned deliveries".to_owned(),
            ));
        }
        for field in ["auth", "signature_header"] {
            if spec.get(field).is_some() {
                problems.push((
                    format!("/{field}"),
                    format!("`{field}` needs a `secret` (env:NAME or file:PATH) to check deliveries against"),
                ));
            }
        }
    }
    problems
}
