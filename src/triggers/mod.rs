//! Webhook triggers, the pure part: a Trigger manifest read into a [`TriggerSpec`], matching
//! a delivery to the triggers of its path, checking its signature ([`signature`]), its
//! filters (event, action, branch, changed paths), and the run parameters mapped from its
//! payload ([`template`]). No IO but in [`deliveries`], the records the receiver keeps in
//! the store, and [`commit_status`], the service that reports runs back to their GitHub
//! commit; the HTTP side (`api::hooks`) resolves secrets and starts the runs.

pub mod commit_status;
pub mod deliveries;
pub mod intake;
pub mod recovery;
pub mod signature;
pub mod template;

use globset::{GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

pub use crate::spec::trigger::{check_manifest, glob, HOOKS_PREFIX, SOURCE_HOOK_PATH};

/// Deliveries kept per trigger unless the trigger sets `history_limit`.
pub const DEFAULT_HISTORY_LIMIT: usize = 1000;

/// The largest delivery accepted: GitHub caps payloads at 25 MB.
pub const MAX_DELIVERY_BYTES: usize = 25 << 20;

/// Who sends the deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// GitHub: `X-GitHub-Event`, `X-GitHub-Delivery`, `X-Hub-Signature-256`.
    Github,
    /// Anything else: the headers are configurable, the signature is HMAC-SHA256 or a
    /// bearer token.
    Generic,
}

/// How a delivery proves it comes from the sender that knows the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// HMAC-SHA256 of the raw body, hex, in the signature header.
    Hmac,
    /// `Authorization: Bearer <secret>`.
    Bearer,
}

/// Reads request headers by (case-insensitive) name.
pub trait Headers {
    /// The value of a header, when present and text.
    fn header(&self, name: &str) -> Option<&str>;
}

impl Headers for axum::http::HeaderMap {
    fn header(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Headers for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// A Trigger manifest as the webhook receiver uses it, its globs compiled.
#[derive(Debug, Clone)]
pub struct TriggerSpec {
    /// The trigger's id (`trg_...`).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The URL path it listens on, under `/hooks/`.
    pub path: String,
    /// Who sends the deliveries.
    pub provider: Provider,
    /// The workflow each accepted delivery runs.
    pub workflow: String,
    /// Events accepted (empty: any; `*` in the list: any).
    pub events: Vec<String>,
    /// Branch globs accepted (empty: any).
    pub branches: Vec<String>,
    /// Actions accepted for events that carry one (empty: any).
    pub actions: Vec<String>,
    /// Globs of changed files, one of which a push must touch (empty: any).
    pub paths: Vec<String>,
    /// Reference to the secret (`env:NAME`, `file:PATH`), never the secret itself.
    pub secret: Option<String>,
    /// HMAC signature or bearer token.
    pub auth: Auth,
    /// Whether the manifest says `insecure: true`: without a secret (and without an API
    /// token on the server) deliveries are then accepted unsigned. A trigger with neither
    /// refuses every delivery.
    pub insecure: bool,
    /// The header carrying the HMAC signature.
    pub signature_header: String,
    /// The header naming the event (generic provider).
    pub event_header: Option<String>,
    /// The header carrying a delivery id to dedupe on (generic provider).
    pub delivery_header: Option<String>,
    /// Run parameters, `{{ payload.x.y }}` references mapped from the delivery.
    pub parameters: Map<String, Value>,
    /// Whether deliveries run anything.
    pub enabled: bool,
    /// Deliveries remembered for `trigger deliveries` and deduplication.
    pub history_limit: usize,
    branch_globs: Option<GlobSet>,
    path_globs: Option<GlobSet>,
}

fn glob_set(patterns: &[String]) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(glob(pattern)?);
    }
    builder.build().map(Some).map_err(|e| e.to_string())
}

fn strings(spec: &Value, field: &str) -> Vec<String> {
    spec.get(field)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

impl TriggerSpec {
    /// Reads an applied Trigger spec (already valid against `schemas/trigger.json`).
    pub fn from_spec(id: &str, name: &str, spec: &Value) -> Result<TriggerSpec, String> {
        let text = |field: &str| spec.get(field).and_then(Value::as_str).map(str::to_owned);
        let provider = match text("provider").as_deref() {
            Some("generic") => Provider::Generic,
            _ => Provider::Github,
        };
        let auth = match text("auth").as_deref() {
            Some("bearer") => Auth::Bearer,
            _ => Auth::Hmac,
        };
        let branches = strings(spec, "branches");
        let paths = strings(spec, "paths");
        Ok(TriggerSpec {
            id: id.to_owned(),
            name: name.to_owned(),
            path: text("path").unwrap_or_default(),
            provider,
            workflow: text("workflow").unwrap_or_default(),
            events: strings(spec, "events"),
            actions: strings(spec, "actions"),
            secret: text("secret"),
            auth,
            insecure: spec.get("insecure").and_then(Value::as_bool) == Some(true),
            signature_header: text("signature_header")
                .unwrap_or_else(|| signature::GITHUB_SIGNATURE_HEADER.to_owned()),
            event_header: text("event_header"),
            delivery_header: text("delivery_header"),
            parameters: spec
                .get("parameters")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            enabled: spec.get("enabled").and_then(Value::as_bool).unwrap_or(true),
            history_limit: spec
                .get("history_limit")
                .and_then(Value::as_u64)
                .map_or(DEFAULT_HISTORY_LIMIT, |n| n as usize),
            branch_globs: glob_set(&branches)?,
            path_globs: glob_set(&paths)?,
            branches,
            paths,
        })
    }

    /// The event a delivery names: `X-GitHub-Event` for GitHub (never the payload's
    /// `action`), the `event_header` for the generic provider.
    pub fn event_of(&self, headers: &(impl Headers + ?Sized)) -> Option<String> {
        let name = match self.provider {
            Provider::Github => Some("x-github-event"),
            Provider::Generic => self.event_header.as_deref(),
        }?;
        headers
            .header(name)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(|v| v.chars().take(200).collect())
    }

    /// The delivery id a sender gives (`X-GitHub-Delivery`, or the generic provider's
    /// `delivery_header`), the key deliveries are deduplicated on.
    pub fn delivery_id_of(&self, headers: &(impl Headers + ?Sized)) -> Option<String> {
        let name = match self.provider {
            Provider::Github => Some("x-github-delivery"),
            Provider::Generic => self.delivery_header.as_deref(),
        }?;
        headers
            .header(name)
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 200)
            .map(str::to_owned)
    }

    /// Why a delivery that lacks the id its sender always gives is refused: GitHub sends
    /// `X-GitHub-Delivery` with every delivery (pings too), and deduplication rests on it,
    /// so a GitHub delivery without one (or with one that is empty or over 200 bytes) is
    /// not GitHub's. `None` when the delivery is fine; the generic provider's
    /// `delivery_header` stays optional.
    pub fn missing_delivery_id(&self, headers: &(impl Headers + ?Sized)) -> Option<String> {
        (self.provider == Provider::Github && self.delivery_id_of(headers).is_none()).then(|| {
            "the delivery has no X-GitHub-Delivery header (1 to 200 bytes): GitHub sends one with every delivery, and redeliveries are recognised by it".to_owned()
        })
    }

    /// Whether the event is GitHub's `ping` (sent when a webhook is added): answered, never
    /// run.
    pub fn is_ping(&self, event: Option<&str>) -> bool {
        event == Some("ping")
    }

    /// Checks a delivery's signature. `secret` is the resolved secret, when the trigger
    /// has one; without one, `api_token` (the server's) is required as a bearer token when
    /// set, so a trigger is never less guarded than the API's mutating routes. A trigger with
    /// neither accepts unsigned deliveries only when it says `insecure: true` (validation
    /// refuses one that does not; a record applied before that rule refuses deliveries).
    pub fn verify(
        &self,
        secret: Option<&str>,
        api_token: Option<&str>,
        headers: &(impl Headers + ?Sized),
        body: &[u8],
    ) -> Result<(), String> {
        match (secret, self.auth) {
            (Some(secret), Auth::Hmac) => {
                let value = headers.header(&self.signature_header);
                match self.provider {
                    Provider::Github => {
                        signature::verify_github(secret.as_bytes(), body, value)
                    }
                    Provider::Generic => signature::verify_hmac(
                        &self.signature_header,
                        secret.as_bytes(),
                        body,
                        value,
                    ),
                }
            }
            (Some(secret), Auth::Bearer) => {
                signature::verify_bearer(secret, headers.header("authorization")).map_err(
                    |e| format!("{e} (the trigger's secret {})", self.secret_reference()),
                )
            }
            (None, _) => match api_token {
                Some(token) => signature::verify_bearer(token, headers.header("authorization"))
                    .map_err(|e| {
                        format!("{e}: this trigger has no secret, so the server's API token is required")
                    }),
                None if self.insecure => Ok(()),
                None => Err("this trigger has no secret and does not say `insecure: true`: unsigned deliveries are refused".to_owned()),
            },
        }
    }

    fn secret_reference(&self) -> &str {
        self.secret.as_deref().unwrap_or("-")
    }

    /// Checks the filters; `Err` says why the delivery runs nothing.
    pub fn filter(&self, event: Option<&str>, payload: &Value) -> Result<(), String> {
        if !self.enabled {
            return Err("the trigger is disabled (enabled: false)".into());
        }
        if !self.events.is_empty() && !self.events.iter().any(|e| e == "*") {
            match event {
                Some(event) if self.events.iter().any(|e| e == event) => {}
                Some(event) => {
                    return Err(format!(
                        "event `{event}` is not one of the trigger's events: {}",
                        self.events.join(", ")
                    ))
                }
                None => {
                    return Err(format!(
                        "the delivery names no event{}; the trigger's events: {}",
                        match (&self.provider, &self.event_header) {
                            (Provider::Generic, Some(h)) => format!(" (header {h})"),
                            _ => " (header X-GitHub-Event)".to_owned(),
                        },
                        self.events.join(", ")
                    ))
                }
            }
        }
        // Only events that carry an action are filtered on it: a push has none and passes.
        if !self.actions.is_empty() {
            if let Some(action) = payload.get("action").and_then(Value::as_str) {
                if !self.actions.iter().any(|a| a == action) {
                    return Err(format!(
                        "action `{action}` is not one of the trigger's actions: {}",
                        self.actions.join(", ")
                    ));
                }
            }
        }
        if payload.get("deleted").and_then(Value::as_bool) == Some(true) {
            let git_ref = payload.get("ref").and_then(Value::as_str).unwrap_or("?");
            return Err(format!(
                "the push deletes `{git_ref}`: there is nothing to run"
            ));
        }
        if let Some(globs) = &self.branch_globs {
            match branch_of(payload) {
                Some(branch) if globs.is_match(&branch) => {}
                Some(branch) => {
                    return Err(format!(
                        "branch `{branch}` matches none of the trigger's branches: {}",
                        self.branches.join(", ")
                    ))
                }
                None => {
                    let what = match payload.get("ref").and_then(Value::as_str) {
                        Some(r) if r.starts_with("refs/tags/") => {
                            format!("a push to tag `{}`", &r["refs/tags/".len()..])
                        }
                        _ => "the delivery".to_owned(),
                    };
                    return Err(format!(
                        "{what} names no branch; the trigger's branches: {}",
                        self.branches.join(", ")
                    ));
                }
            }
        }
        if let Some(globs) = &self.path_globs {
            // Only a push lists its changed files; other events pass.
            if let Some(changed) = changed_paths(payload) {
                if !changed.iter().any(|p| globs.is_match(p)) {
                    let mut shown: Vec<&str> = changed.iter().take(5).map(String::as_str).collect();
                    if changed.len() > 5 {
                        shown.push("...");
                    }
                    return Err(format!(
                        "no changed file matches the trigger's paths {} (changed: {})",
                        self.paths.join(", "),
                        if shown.is_empty() {
                            "none".to_owned()
                        } else {
                            shown.join(", ")
                        }
                    ));
                }
            }
        }
        Ok(())
    }

    /// The run parameters for a delivery: each of the trigger's `parameters` with its
    /// references (`{{ payload.after }}`, `{{ branch }}`, ...) replaced. A parameter that
    /// is exactly one reference to a value the delivery lacks is left out (the workflow's
    /// default applies).
    pub fn parameters_for(&self, context: &Value) -> Result<Map<String, Value>, String> {
        let mut out = Map::new();
        for (name, value) in &self.parameters {
            if let Some(mapped) = template::substitute(value, context)
                .map_err(|e| format!("parameter `{name}`: {e}"))?
            {
                out.insert(name.clone(), mapped);
            }
        }
        Ok(out)
    }

    /// The trigger as `GET /api/triggers` lists it: never the secret, only whether one is
    /// set and its kind of reference.
    pub fn summary(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "path": self.path,
            "provider": self.provider,
            "workflow": self.workflow,
            "events": self.events,
            "filters": {
                "branches": self.branches,
                "actions": self.actions,
                "paths": self.paths,
            },
            "secret": self.secret.is_some(),
            "auth": if self.secret.is_some() { json!(self.auth) } else { Value::Null },
            "parameters": self.parameters,
            "enabled": self.enabled,
            "history_limit": self.history_limit,
        })
    }
}

/// What `{{ ... }}` in a trigger's parameters can refer to for one delivery: `payload.*`,
/// `event`, `action`, `branch`, `delivery`, `trigger`.
pub fn template_context(
    trigger: &str,
    delivery: &str,
    event: Option<&str>,
    payload: &Value,
) -> Value {
    json!({
        "payload": payload,
        "event": event,
        "action": payload.get("action"),
        "branch": branch_of(payload),
        "delivery": delivery,
        "trigger": trigger,
    })
}

/// The branch a delivery is about: a push's `ref` (`refs/heads/<branch>`), a pull request's
/// base branch (`pull_request.base.ref`), else a plain `ref` or `branch` field (generic
/// senders). Tags and other refs are no branch.
pub fn branch_of(payload: &Value) -> Option<String> {
    if let Some(base) = payload
        .pointer("/pull_request/base/ref")
        .and_then(Value::as_str)
    {
        return Some(base.to_owned());
    }
    if let Some(git_ref) = payload.get("ref").and_then(Value::as_str) {
        if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
            return Some(branch.to_owned());
        }
        if git_ref.starts_with("refs/") {
            return None;
        }
        // GitHub's `create`/`delete` events give a bare name with `ref_type`.
        return match payload.get("ref_type").and_then(Value::as_str) {
            Some("branch") | None => Some(git_ref.to_owned()),
            Some(_) => None,
        };
    }
    payload
        .get("branch")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The files a push changed (`commits[].added/modified/removed`, each once, in order), or
/// `None` when the payload lists no commits (not a push).
pub fn changed_paths(payload: &Value) -> Option<Vec<String>> {
    let commits = payload.get("commits")?.as_array()?;
    let mut seen = std::collections::BTreeSet::new();
    let mut paths = Vec::new();
    let head = payload.get("head_commit").into_iter();
    for commit in commits.iter().chain(head) {
        for field in ["added", "modified", "removed"] {
            for path in commit
                .get(field)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if seen.insert(path.to_owned()) {
                    paths.push(path.to_owned());
                }
            }
        }
    }
    Some(paths)
}

/// The commit a delivery is about, as a run records it in its trigger's `commit`
/// details: the repository (`owner/name`), the head sha, the base sha a change is compared
/// with (a push's `before`, a pull request's base), and the files a push listed. `None`
/// when the payload names no commit (not a push or pull request).
pub fn commit_of(payload: &Value) -> Option<Value> {
    let text = |pointer: &str| {
        payload
            .pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let (sha, base) = match text("/pull_request/head/sha") {
        Some(head) => (head, text("/pull_request/base/sha")),
        None => (
            text("/after").or_else(|| text("/head_commit/id"))?,
            // A branch's first push has no `before` (all zeros).
            text("/before").filter(|b| b.bytes().any(|c| c != b'0')),
        ),
    };
    let mut commit = serde_json::Map::new();
    if let Some(repository) = text("/repository/full_name") {
        commit.insert("repository".into(), Value::from(repository));
    }
    commit.insert("sha".into(), Value::from(sha));
    if let Some(base) = base {
        commit.insert("base".into(), Value::from(base));
    }
    if let Some(url) = text("/repository/url").or_else(|| text("/repository/html_url")) {
        commit.insert("repository_url".into(), Value::from(url));
    }
    if let Some(changed) = changed_paths(payload) {
        commit.insert("changed_files".into(), Value::from(changed));
    }
    Some(Value::Object(commit))
}

/// What happened to one delivery at one trigger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryResult {
    /// A run was started.
    Accepted,
    /// The delivery id was seen before: nothing new ran.
    Duplicate,
    /// A filter (event, action, branch, paths, disabled) left it out.
    Filtered,
    /// The signature or token is missing or wrong.
    Rejected,
    /// GitHub's `ping`: answered, nothing run.
    Ping,
    /// The run could not be started (parameters, a workflow gone, a secret that cannot
    /// be read, the server shutting down).
    Error,
}

impl DeliveryResult {
    /// The name as records and the CLI show it.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryResult::Accepted => "accepted",
            DeliveryResult::Duplicate => "duplicate",
            DeliveryResult::Filtered => "filtered",
            DeliveryResult::Rejected => "rejected",
            DeliveryResult::Ping => "ping",
            DeliveryResult::Error => "error",
        }
    }
}

/// One delivery at one trigger, as `trigger deliveries` shows it (kept in the store's
/// `deliveries` tree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryRecord {
    /// The trigger.
    pub trigger: String,
    /// The sender's delivery id (`X-GitHub-Delivery`), or one made up when it gave none.
    pub delivery: String,
    /// The event (`push`, `pull_request`, ...).
    #[serde(default)]
    pub event: Option<String>,
    /// The payload's `action`, when it has one.
    #[serde(default)]
    pub action: Option<String>,
    /// The branch the delivery is about, when it names one.
    #[serde(default)]
    pub branch: Option<String>,
    /// What happened.
    pub result: DeliveryResult,
    /// Why, for anything but an accepted delivery.
    #[serde(default)]
    pub reason: Option<String>,
    /// The run started (for a duplicate: the run of the first delivery).
    #[serde(default)]
    pub run_id: Option<String>,
    /// When it arrived (RFC 3339).
    pub received_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: Value) -> TriggerSpec {
        let mut base = json!({
            "name": "GitHub push",
            "path": "/hooks/github",
            "provider": "github",
            "workflow": "wf_tests",
        });
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        TriggerSpec::from_spec("trg_github-push", "GitHub push", &base).unwrap()
    }

    fn push(git_ref: &str, files: &[&str]) -> Value {
        json!({
            "ref": git_ref,
            "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            "deleted": false,
            "commits": [{"id": "1", "added": files, "modified": [], "removed": []}],
        })
    }

    fn pull_request(action: &str, base: &str) -> Value {
        json!({"action": action, "number": 2, "pull_request": {"number": 2, "base": {"ref": base}, "head": {"ref": "feature"}}})
    }

    #[test]
    fn defaults_follow_github() {
        let t = spec(json!({}));
        assert_eq!(t.provider, Provider::Github);
        assert_eq!(t.auth, Auth::Hmac);
        assert_eq!(t.signature_header, "X-Hub-Signature-256");
        assert!(t.enabled);
        assert_eq!(t.history_limit, DEFAULT_HISTORY_LIMIT);
        let generic = spec(json!({"provider": "generic"}));
        assert_eq!(generic.provider, Provider::Generic);
    }

    #[test]
    fn the_github_event_comes_from_the_header_not_the_payload() {
        let t = spec(json!({}));
        let headers: &[(&str, &str)] = &[
            ("X-GitHub-Event", "pull_request"),
            ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ];
        assert_eq!(t.event_of(headers).as_deref(), Some("pull_request"));
        assert_eq!(
            t.delivery_id_of(headers).as_deref(),
            Some("72d3162e-cc78-11e3-81ab-4c9367dc0958")
        );
        let none: &[(&str, &str)] = &[];
        assert_eq!(t.event_of(none), None);
        let generic = spec(
            json!({"provider": "generic", "event_header": "X-Gitlab-Event", "delivery_header": "X-Gitlab-Event-UUID"}),
        );
        let headers: &[(&str, &str)] = &[
            ("x-gitlab-event", "Push Hook"),
            ("X-GitHub-Event", "push"),
            ("X-Gitlab-Event-UUID", "u-1"),
        ];
        assert_eq!(generic.event_of(headers).as_deref(), Some("Push Hook"));
        assert_eq!(generic.delivery_id_of(headers).as_deref(), Some("u-1"));
        let bare = spec(json!({"provider": "generic"}));
        assert_eq!(bare.event_of(headers), None);
        assert_eq!(bare.delivery_id_of(headers), None);
    }

    #[test]
    fn a_github_delivery_needs_its_delivery_id() {
        let github = spec(json!({}));
        let with: &[(&str, &str)] = &[("X-GitHub-Delivery", "d-1")];
        assert_eq!(github.missing_delivery_id(with), None);
        for headers in [
            &[] as &[(&str, &str)],
            &[("X-GitHub-Delivery", "  ")],
            &[("X-GitHub-Event", "push")],
        ] {
            let reason = github.missing_delivery_id(headers).unwrap();
            assert!(reason.contains("X-GitHub-Delivery"), "{reason}");
        }
        let long = "x".repeat(201);
        assert!(github
            .missing_delivery_id(&[("X-GitHub-Delivery", long.as_str())][..])
            .is_some());
        // The generic provider's delivery header stays optional.
        let generic = spec(json!({"provider": "generic", "delivery_header": "X-Id"}));
        assert_eq!(generic.missing_delivery_id(&[] as &[(&str, &str)]), None);
    }

    #[test]
    fn event_filter() {
        let t = spec(json!({"events": ["push", "pull_request"]}));
        assert_eq!(
            t.filter(Some("push"), &push("refs/heads/main", &[])),
            Ok(())
        );
        let reason = t.filter(Some("issues"), &json!({})).unwrap_err();
        assert!(
            reason
                .contains("event `issues` is not one of the trigger's events: push, pull_request"),
            "{reason}"
        );
        assert!(t
            .filter(None, &json!({}))
            .unwrap_err()
            .contains("names no event"));
        let any = spec(json!({"events": ["*"]}));
        assert_eq!(any.filter(Some("issues"), &json!({})), Ok(()));
        let unfiltered = spec(json!({}));
        assert_eq!(unfiltered.filter(None, &json!({})), Ok(()));
    }

    #[test]
    fn action_filter_applies_to_events_with_an_action() {
        let t =
            spec(json!({"events": ["push", "pull_request"], "actions": ["opened", "synchronize"]}));
        assert_eq!(
            t.filter(Some("pull_request"), &pull_request("opened", "main")),
            Ok(())
        );
        assert_eq!(
            t.filter(Some("pull_request"), &pull_request("synchronize", "main")),
            Ok(())
        );
        let reason = t
            .filter(Some("pull_request"), &pull_request("closed", "main"))
            .unwrap_err();
        assert_eq!(
            reason,
            "action `closed` is not one of the trigger's actions: opened, synchronize"
        );
        // A push carries no action: it passes the action filter.
        assert_eq!(
            t.filter(Some("push"), &push("refs/heads/main", &[])),
            Ok(())
        );
    }

    #[test]
    fn branch_filter_with_globs() {
        let t = spec(json!({"branches": ["main", "release/*"]}));
        assert_eq!(
            t.filter(Some("push"), &push("refs/heads/main", &[])),
            Ok(())
        );
        assert_eq!(
            t.filter(Some("push"), &push("refs/heads/release/1.2", &[])),
            Ok(())
        );
        let reason = t
            .filter(Some("push"), &push("refs/heads/release/1.2/hotfix", &[]))
            .unwrap_err();
        assert!(
            reason.contains("branch `release/1.2/hotfix` matches none"),
            "{reason}"
        );
        let reason = t
            .filter(Some("push"), &push("refs/heads/dev", &[]))
            .unwrap_err();
        assert_eq!(
            reason,
            "branch `dev` matches none of the trigger's branches: main, release/*"
        );
        let reason = t
            .filter(Some("push"), &push("refs/tags/v1.0", &[]))
            .unwrap_err();
        assert!(
            reason.starts_with("a push to tag `v1.0` names no branch"),
            "{reason}"
        );
        // A pull request is filtered on its base branch.
        assert_eq!(
            t.filter(Some("pull_request"), &pull_request("opened", "main")),
            Ok(())
        );
        assert!(t
            .filter(Some("pull_request"), &pull_request("opened", "dev"))
            .is_err());
        let all = spec(json!({"branches": ["**"]}));
        assert_eq!(
            all.filter(Some("push"), &push("refs/heads/a/b/c", &[])),
            Ok(())
        );
    }

    #[test]
    fn deleting_pushes_run_nothing() {
        let t = spec(json!({}));
        let reason = t
            .filter(
                Some("push"),
                &json!({"ref": "refs/heads/gone", "deleted": true, "commits": []}),
            )
            .unwrap_err();
        assert_eq!(
            reason,
            "the push deletes `refs/heads/gone`: there is nothing to run"
        );
    }

    #[test]
    fn path_filter_on_changed_files() {
        let t = spec(json!({"paths": ["src/**", "*.md"]}));
        assert_eq!(
            t.filter(Some("push"), &push("refs/heads/main", &["src/a/b.rs"])),
            Ok(())
        );
        assert_eq!(
            t.filter(Some("push"), &push("refs/heads/main", &["README.md"])),
            Ok(())
        );
        // `*` does not cross a `/`.
        let reason = t
            .filter(Some("push"), &push("refs/heads/main", &["docs/guide.md"]))
            .unwrap_err();
        assert_eq!(
            reason,
            "no changed file matches the trigger's paths src/**, *.md (changed: docs/guide.md)"
        );
        let reason = t
            .filter(Some("push"), &push("refs/heads/main", &[]))
            .unwrap_err();
        assert!(reason.ends_with("(changed: none)"), "{reason}");
        // Events that list no files pass.
        assert_eq!(
            t.filter(Some("pull_request"), &pull_request("opened", "main")),
            Ok(())
        );
    }

    #[test]
    fn commits_of_pushes_and_pull_requests() {
        let push = json!({"after": "b2", "before": "a1", "repository": {"full_name": "o/r"},
            "commits": [{"added": ["x"], "modified": ["y"]}]});
        assert_eq!(
            commit_of(&push),
            Some(
                json!({"repository": "o/r", "sha": "b2", "base": "a1", "changed_files": ["x", "y"]})
            )
        );
        let first = json!({"after": "b2", "before": "0000000000"});
        assert_eq!(commit_of(&first), Some(json!({"sha": "b2"})));
        let pr = json!({"action": "opened", "repository": {"full_name": "o/r"},
            "pull_request": {"head": {"sha": "h"}, "base": {"sha": "b", "ref": "main"}}});
        assert_eq!(
            commit_of(&pr),
            Some(json!({"repository": "o/r", "sha": "h", "base": "b"}))
        );
        assert_eq!(commit_of(&json!({"zen": "hi"})), None);
    }

    #[test]
    fn changed_paths_are_collected_once_each() {
        let payload = json!({"commits": [
            {"added": ["a"], "modified": ["b"], "removed": ["c"]},
            {"added": [], "modified": ["b", "d"], "removed": []},
        ], "head_commit": {"added": [], "modified": ["d"], "removed": []}});
        assert_eq!(
            changed_paths(&payload),
            Some(vec!["a".into(), "b".into(), "c".into(), "d".into()])
        );
        assert_eq!(changed_paths(&json!({"action": "opened"})), None);
    }

    #[test]
    fn branches_from_pushes_pull_requests_and_generic_payloads() {
        assert_eq!(
            branch_of(&json!({"ref": "refs/heads/a/b"})).as_deref(),
            Some("a/b")
        );
        assert_eq!(branch_of(&json!({"ref": "refs/tags/v1"})), None);
        assert_eq!(
            branch_of(&json!({"ref": "main", "ref_type": "branch"})).as_deref(),
            Some("main")
        );
        assert_eq!(branch_of(&json!({"ref": "v1", "ref_type": "tag"})), None);
        assert_eq!(branch_of(&json!({"branch": "dev"})).as_deref(), Some("dev"));
        assert_eq!(
            branch_of(&pull_request("opened", "main")).as_deref(),
            Some("main")
        );
        assert_eq!(branch_of(&json!({})), None);
    }

    #[test]
    fn disabled_triggers_run_nothing() {
        let t = spec(json!({"enabled": false}));
        assert_eq!(
            t.filter(Some("push"), &push("refs/heads/main", &[])),
            Err("the trigger is disabled (enabled: false)".into())
        );
    }

    #[test]
    fn bad_globs_are_reported() {
        let err = TriggerSpec::from_spec(
            "trg_x",
            "x",
            &json!({"path": "/hooks/x", "workflow": "wf", "paths": ["src/[a"]}),
        )
        .unwrap_err();
        assert!(err.starts_with("invalid glob `src/[a`"), "{err}");
    }

    #[test]
    fn parameters_are_mapped_from_the_payload() {
        let t = spec(json!({"parameters": {
            "commit": "{{ payload.after }}",
            "ref": "{{ payload.ref }}",
            "pr": "{{ payload.pull_request.number }}",
            "title": "build of {{ branch }} at {{ payload.after }}",
            "event": "{{ event }}",
            "fixed": 3,
        }}));
        let payload = push("refs/heads/main", &["a"]);
        let context = template_context("trg_github-push", "d-1", Some("push"), &payload);
        let params = t.parameters_for(&context).unwrap();
        assert_eq!(
            Value::Object(params),
            json!({
                "commit": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                "ref": "refs/heads/main",
                "title": "build of main at 6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                "event": "push",
                "fixed": 3,
            })
        );
        let payload = pull_request("opened", "main");
        let context = template_context("trg_github-push", "d-2", Some("pull_request"), &payload);
        let params = t.parameters_for(&context).unwrap();
        assert_eq!(params["pr"], json!(2), "a whole reference keeps its type");
        assert_eq!(params["title"], json!("build of main at "));
    }

    #[test]
    fn the_summary_never_shows_the_secret() {
        let t = spec(json!({"secret": "env:GITHUB_WEBHOOK_SECRET", "branches": ["main"]}));
        let summary = t.summary();
        assert_eq!(summary["secret"], json!(true));
        assert_eq!(summary["auth"], json!("hmac"));
        assert_eq!(summary["filters"]["branches"], json!(["main"]));
        assert!(!summary.to_string().contains("GITHUB_WEBHOOK_SECRET"));
    }

    #[test]
    fn rules_between_fields() {
        let messages = |spec: Value| -> Vec<String> {
            check_manifest(&spec)
                .into_iter()
                .map(|(p, m)| format!("{p}: {m}"))
                .collect()
        };
        assert!(messages(json!({"path": "/hooks/x", "secret": "env:S"})).is_empty());
        assert!(messages(
            json!({"provider": "generic", "auth": "bearer", "secret": "env:S",
            "event_header": "X-Event", "delivery_header": "X-Id"})
        )
        .is_empty());
        let found = messages(json!({"auth": "bearer", "secret": "env:S", "event_header": "X-E"}));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("/auth: GitHub signs deliveries"),
            "{found:?}"
        );
        assert!(found[1].starts_with("/event_header: `event_header` is for `provider: generic`"));
        let found =
            messages(json!({"provider": "generic", "signature_header": "X-Sig", "insecure": true}));
        assert_eq!(
            found,
            ["/signature_header: `signature_header` needs a `secret` (env:NAME or file:PATH) to check deliveries against"]
        );
    }

    #[test]
    fn a_trigger_without_a_secret_must_say_insecure() {
        let found = check_manifest(&json!({"path": "/hooks/x"}));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "");
        assert!(
            found[0].1.starts_with("trigger has no `secret`"),
            "{found:?}"
        );
        assert!(found[0].1.contains("insecure: true"), "{found:?}");
        assert!(check_manifest(&json!({"path": "/hooks/x", "insecure": true})).is_empty());
        assert!(!check_manifest(&json!({"path": "/hooks/x", "insecure": false})).is_empty());
        assert!(check_manifest(&json!({"path": "/hooks/x", "secret": "file:s"})).is_empty());
    }

    #[test]
    fn the_source_hook_path_is_reserved() {
        assert_eq!(
            check_manifest(&json!({"path": "/hooks/source"}))[0].0,
            "/path"
        );
        assert!(check_manifest(&json!({"path": "/hooks/github", "insecure": true})).is_empty());
    }
}
