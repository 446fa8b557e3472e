//! `GET /api/alerts`, `GET /api/alerts/{id}`, and silences (`GET`/`POST /api/silences`,
//! `DELETE /api/silences/{id}`): the alert rules in force with their state, value, last
//! notification and the silences muting them.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::handlers::optional_json;
use super::AppState;
use crate::monitor::alerts::{self, Silence, SilenceRequest};

/// The alert rules in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertList {
    /// Each rule: `id`, `name`, `state` (`inactive`, `pending`, `firing`, `resolved`),
    /// `since`, `active_at`, `fired_at`, `resolved_at`, `value` (the condition's first
    /// metric), `values`, `no_data`, `condition`, `duration`, `severity`, `labels`,
    /// `annotations` (rendered), `actions`, `repeat_interval`, `send_resolved`, `enabled`,
    /// `last_evaluation`, `last_notification`, `notifications` (per channel, with the
    /// delivery outcome), `silenced`, `silenced_by`, `fingerprint`, `source_file`.
    #[schema(value_type = Vec<Object>)]
    alerts: Vec<Value>,
}

/// The silences kept (expired ones until they are pruned).
#[derive(Debug, Serialize, ToSchema)]
pub struct SilenceList {
    /// Each silence with its `state` (`pending`, `active`, `expired`) and the `alerts` it
    /// matches now.
    #[schema(value_type = Vec<Object>)]
    silences: Vec<Value>,
}

/// Every rule in force with its state, value, last notification and silences.
#[utoipa::path(get, path = "/api/alerts", tag = "alerts",
    responses(
        (status = 200, description = "The alert rules", body = AlertList),
        (status = 500, description = "The store failed", body = ErrorBody),
    ))]
pub async fn list_alerts(State(state): State<AppState>) -> Result<Json<AlertList>, ApiError> {
    let rules = alerts::rules(&state.view.objects().records);
    let store = std::sync::Arc::clone(&state.store);
    let (states, silences) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((alerts::load_states(&store)?, alerts::silences(&store)?))
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(AlertList {
        alerts: alerts::alerts_json(&rules, &states, &silences, Utc::now()),
    }))
}

/// One rule (by id or name) as the list shows it, with its `history` of transitions
/// (oldest first).
#[utoipa::path(get, path = "/api/alerts/{id}", tag = "alerts",
    params(("id" = String, Path, description = "Alert id (or name)")),
    responses(
        (status = 200, description = "The alert", body = Object),
        (status = 404, description = "No such alert in force", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    ))]
pub async fn show_alert(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rules = alerts::rules(&state.view.objects().records);
    let rule = alerts::find_rule(&rules, &id)
        .map_err(ApiError::not_found)?
        .clone();
    let store = std::sync::Arc::clone(&state.store);
    let alert_id = rule.id.clone();
    let (status, silences, history) = tokio::task::spawn_blocking(move || {
        Ok::<_, crate::store::StoreError>((
            store.state::<alerts::AlertStatus>(alerts::STATE_TREE, &alert_id)?,
            alerts::silences(&store)?,
            alerts::history(&store, &alert_id)?,
        ))
    })
    .await
    .map_err(ApiError::internal)??;
    let mut value = alerts::alert_json(&rule, status.as_ref(), &silences, Utc::now());
    value["history"] = json!(history);
    Ok(Json(value))
}

/// The silences kept: active, pending, and expired ones until they are pruned.
#[utoipa::path(get, path = "/api/silences", tag = "alerts",
    responses(
        (status = 200, description = "The silences", body = SilenceList),
        (status = 500, description = "The store failed", body = ErrorBody),
    ))]
pub async fn list_silences(State(state): State<AppState>) -> Result<Json<SilenceList>, ApiError> {
    let rules = alerts::rules(&state.view.objects().records);
    let store = std::sync::Arc::clone(&state.store);
    let silences = tokio::task::spawn_blocking(move || alerts::silences(&store))
        .await
        .map_err(ApiError::internal)??;
    let now = Utc::now();
    Ok(Json(SilenceList {
        silences: silences.iter().map(|s| s.to_json(&rules, now)).collect(),
    }))
}

/// Creates a silence: `201` with it once it is stored; `400` when it has no matcher, no
/// comment, no end or an end that is not in the future, or names an alert not in force.
#[utoipa::path(post, path = "/api/silences", tag = "alerts",
    request_body(content = SilenceRequest, description = "What to mute, until when, and why"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Silence),
        (status = 400, description = "The silence is not valid: the message says why, `details.field` where", body = ErrorBody),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "The body does not have the expected shape", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    ))]
pub async fn create_silence(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: SilenceRequest = optional_json(&headers, &body)?;
    let rules = alerts::rules(&state.view.objects().records);
    let silence = request
        .into_silence(&rules, Utc::now())
        .map_err(|e| ApiError::bad_request(e.message).with_details(json!({"field": e.field})))?;
    let store = std::sync::Arc::clone(&state.store);
    let stored = silence.clone();
    tokio::task::spawn_blocking(move || alerts::put_silence(&store, &stored))
        .await
        .map_err(ApiError::internal)??;
    tracing::info!(silence = %silence.id, "silence created: {}", silence.comment);
    let value = silence.to_json(&rules, Utc::now());
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, "/api/silences".to_owned())],
        Json(value),
    )
        .into_response())
}

/// Expires a silence now (it stays listed as expired until pruned).
#[utoipa::path(delete, path = "/api/silences/{id}", tag = "alerts",
    params(("id" = String, Path, description = "Silence id")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Expired", body = Silence),
        (status = 401, description = "The API token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such silence", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    ))]
pub async fn expire_silence(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rules = alerts::rules(&state.view.objects().records);
    let store = std::sync::Arc::clone(&state.store);
    let key = id.clone();
    let now = Utc::now();
    let expired = tokio::task::spawn_blocking(move || alerts::expire_silence(&store, &key, now))
        .await
        .map_err(ApiError::internal)??;
    match expired {
        Some(silence) => Ok(Json(silence.to_json(&rules, now))),
        None => Err(ApiError::not_found(format!(
            "no silence `{id}` (`GET /api/silences` lists them)"
        ))),
    }
}
