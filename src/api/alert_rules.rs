//! The routes behind the dashboard's alert rule editor. Rules themselves are saved as
//! `Alert` manifests through `POST /api/manifests`, like every other kind; these answer what
//! the editor needs around that:
//!
//! - `POST /api/validate/condition` checks one alert condition with the parser the server
//!   evaluates with, and answers the column and the message validation would report, so a
//!   form can show them as the user types;
//! - `GET /api/notification-channels` lists the channels the running configuration defines
//!   (names and types only: never a URL, an address or a credential);
//! - `GET /api/alerts/{id}/manifest` gives the manifest in force of one rule, the file it is
//!   declared in, and whether saving can rewrite that file (and why not: a git source, a
//!   JSON file, a file of several documents such as `{"alerts": [...]}`).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::handlers::optional_json;
use super::AppState;
use crate::manifest::Kind;
use crate::monitor::alerts;
use crate::store::ObjectKey;

/// The body of `POST /api/validate/condition`.
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConditionBody {
    /// The condition, as an Alert manifest's `condition` would say it
    /// (`system.cpu_percent > 80 and system.memory_percent > 90`).
    #[serde(default)]
    #[schema(value_type = String, required = true)]
    condition: Option<Value>,
}

/// The answer of `POST /api/validate/condition`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct ConditionCheck {
    /// Whether the condition parses and names known metrics.
    valid: bool,
    /// The condition checked.
    condition: String,
    /// The 1-based character column of the first problem; null when valid.
    column: Option<usize>,
    /// What is wrong, in the words validation uses for the manifest's `condition`
    /// (`invalid condition at column 19: ...`); null when valid.
    message: Option<String>,
    /// The metrics the condition reads (with their label selectors), when valid.
    metrics: Vec<String>,
}

/// Checks an alert condition without saving anything.
///
/// The condition is parsed as the alert evaluator parses it; a problem comes back with its
/// column and the same message `validate` reports for the manifest's `/condition`. A
/// condition that does not parse is an answer (`valid: false`), not an error.
#[utoipa::path(post, path = "/api/validate/condition", tag = "alerts",
    request_body(content = ConditionBody, content_type = "application/json",
        description = "The condition to check",
        example = json!({"condition": "system.cpu_percent > 80"})),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The condition's check, valid or not", body = ConditionCheck),
        (status = 400, description = "The body is not JSON, or has no `condition` string", body = ErrorBody),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "A body with other fields than `condition`", body = ErrorBody),
    ))]
pub async fn validate_condition(
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ConditionCheck>, ApiError> {
    let body: ConditionBody = optional_json(&headers, &body)?;
    let condition =
        match body.condition {
            Some(Value::String(text)) => text,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "`condition` must be a string such as \"system.cpu_percent > 80\", found {}",
                    crate::manifest::describe_type(&other)
                ))
                .with_details(json!({"field": "condition"})))
            }
            None => return Err(ApiError::bad_request(
                "`condition` is required: expected {\"condition\": \"system.cpu_percent > 80\"}",
            )
            .with_details(json!({"field": "condition"}))),
        };
    Ok(Json(check_condition(condition)))
}

/// The check of one condition.
fn check_condition(condition: String) -> ConditionCheck {
    match crate::lang::condition::parse_condition(&condition) {
        Ok(parsed) => ConditionCheck {
            valid: true,
            metrics: parsed.metrics().iter().map(ToString::to_string).collect(),
            condition,
            column: None,
            message: None,
        },
        Err(error) => ConditionCheck {
            valid: false,
            condition,
            column: Some(error.column),
            message: Some(error.validation_message()),
            metrics: Vec::new(),
        },
    }
}

/// The notification channels of the running configuration.
///
/// `{"environment", "channels": [{"name", "type"}]}`, by name: what an Alert's `actions`
/// may name. Only names and types: the channels' settings (URLs, addresses, credentials)
/// stay on the server.
#[utoipa::path(get, path = "/api/notification-channels", tag = "alerts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The configured channels", body = Object),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
    ))]
pub async fn notification_channels(State(state): State<AppState>) -> Json<Value> {
    let notifications = &state.config.config.notifications;
    let channels: Vec<Value> = notifications
        .channels
        .keys()
        .map(|name| {
            let kind = notifications.channel(name).and_then(|c| c.kind);
            json!({"name": name, "type": kind})
        })
        .collect();
    Json(json!({
        "environment": state.config.config.environment,
        "channels": channels,
    }))
}

/// The manifest of one alert rule, for editing.
///
/// `{"id", "name", "file", "manifest", "editable", "reason"}`: the manifest in force (the
/// document as applied), the project file it is declared in, and whether
/// `POST /api/manifests` with this `id` may rewrite that file. When it may not, `reason`
/// says why in the words saving would use: the server follows a git repository (commit the
/// file instead), or the file is JSON or holds other documents too (an `{"alerts": [...]}`
/// file, several YAML documents), which saving would rewrite.
#[utoipa::path(get, path = "/api/alerts/{id}/manifest", tag = "alerts",
    params(("id" = String, Path, description = "Alert id (or name)")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The rule's manifest and whether it can be saved in place", body = Object),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 404, description = "No such alert in force", body = ErrorBody),
    ))]
pub async fn alert_manifest(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let objects = state.view.objects();
    let rules = alerts::rules(&objects.records);
    let rule = alerts::find_rule(&rules, &id).map_err(ApiError::not_found)?;
    let key = ObjectKey {
        kind: Kind::Alert,
        id: rule.id.clone(),
    };
    let record = objects
        .records
        .get(&key)
        .filter(|r| r.is_live())
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no alert `{id}` in force")))?;
    tokio::task::spawn_blocking(move || {
        let refusal = match &state.controller.git {
            Some(_) => Some(format!(
                "this server follows a git repository: commit the change to {} there instead",
                record.source_file
            )),
            None => super::manifest_save::rewritable_header(&state, &record)
                .err()
                .map(|e| e.message),
        };
        Ok(Json(json!({
            "id": record.key.id,
            "name": record.name,
            "file": record.source_file,
            "manifest": record.spec,
            "editable": refusal.is_none(),
            "reason": refusal,
        })))
    })
    .await
    .map_err(ApiError::internal)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_check_gives_the_validation_message_and_column() {
        let bad = check_condition("system.cpu_percent >> 80".into());
        assert!(!bad.valid);
        let error =
            crate::lang::condition::parse_condition("system.cpu_percent >> 80").unwrap_err();
        assert_eq!(bad.column, Some(error.column));
        assert_eq!(
            bad.message.as_deref(),
            Some(error.validation_message().as_str())
        );
        assert!(bad
            .message
            .unwrap()
            .starts_with("invalid condition at column"));

        let good = check_condition("system.cpu_percent > 80 and tests.failed > 0".into());
        assert!(good.valid && good.column.is_none() && good.message.is_none());
        assert_eq!(good.metrics, ["system.cpu_percent", "tests.failed"]);
    }
}
