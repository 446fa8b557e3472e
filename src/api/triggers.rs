//! `GET /api/triggers`, `GET /api/triggers/{id}`, `GET /api/triggers/{id}/deliveries`: the
//! webhook triggers in force (never their secrets) and what happened to their deliveries.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::hooks::live_triggers;
use super::{ApiError, AppState};
use crate::triggers::deliveries;
use crate::triggers::{DeliveryRecord, TriggerSpec};

/// The triggers in force.
#[derive(Debug, Serialize, ToSchema)]
pub struct TriggerList {
    /// Each trigger: `id`, `name`, `path`, `provider`, `workflow`, `events`, `filters`
    /// (`branches`, `actions`, `paths`), `secret` (whether one is set: the secret and its
    /// reference are never shown), `auth`, `parameters`, `enabled`, `history_limit`.
    #[schema(value_type = Vec<Object>)]
    triggers: Vec<Value>,
}

/// A trigger's deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryList {
    /// The trigger's id.
    trigger: String,
    /// The deliveries, newest first.
    deliveries: Vec<DeliveryRecord>,
    /// Deliveries kept (each trigger keeps its newest `history_limit`).
    total: usize,
    /// The page size asked for.
    limit: usize,
}

/// How many deliveries to list.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveriesQuery {
    /// How many deliveries (1 to 100000; default 50).
    #[param(minimum = 1, maximum = 100000)]
    limit: Option<usize>,
}

/// A trigger by id, or by name when no id matches.
pub fn find(state: &AppState, id: &str) -> Result<std::sync::Arc<TriggerSpec>, ApiError> {
    let triggers = live_triggers(state);
    if let Some(found) = triggers
        .iter()
        .find(|t| t.id == id)
        .or_else(|| triggers.iter().find(|t| t.name == id))
    {
        return Ok(std::sync::Arc::clone(found));
    }
    let hint = crate::util::did_you_mean(id, triggers.iter().map(|t| t.id.as_str()))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(ApiError::not_found(format!(
        "no trigger `{id}` in force{hint} (`GET /api/triggers` lists them)"
    )))
}

/// The webhook triggers in force.
///
/// Secrets are never shown, nor their references: `secret` says whether one is set.
#[utoipa::path(get, path = "/api/triggers", tag = "triggers",
    responses(
        (status = 200, description = "The triggers", body = TriggerList, example = json!({"triggers": [{
            "id": "trg_github-push", "name": "GitHub push", "path": "/hooks/github", "provider": "github",
            "workflow": "wf_api-test-suite", "events": ["push", "pull_request"],
            "filters": {"branches": ["main"], "actions": [], "paths": []}, "secret": true, "auth": "hmac",
            "parameters": {}, "enabled": true, "history_limit": 1000}]})),
    ))]
pub async fn list_triggers(State(state): State<AppState>) -> Json<TriggerList> {
    Json(TriggerList {
        triggers: live_triggers(&state).iter().map(|t| t.summary()).collect(),
    })
}

/// One trigger, with its newest deliveries (`recent_deliveries`, at most 10) and how many
/// are kept (`deliveries`).
#[utoipa::path(get, path = "/api/triggers/{id}", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id (or name)")),
    responses(
        (status = 200, description = "The trigger", body = Object),
        (status = 404, description = "No such trigger in force", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    ))]
pub async fn show_trigger(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let trigger = find(&state, &id)?;
    let store = std::sync::Arc::clone(&state.store);
    let id = trigger.id.clone();
    let (recent, total) = tokio::task::spawn_blocking(move || deliveries::list(&store, &id, 10))
        .await
        .map_err(ApiError::internal)??;
    let mut value = trigger.summary();
    value["deliveries"] = json!(total);
    value["recent_deliveries"] = json!(recent);
    Ok(Json(value))
}

/// A trigger's deliveries, newest first: delivery id, event, action, branch, result
/// (`accepted`, `duplicate`, `filtered`, `rejected`, `ping`, `error`), the reason, the
/// run started and when it arrived.
#[utoipa::path(get, path = "/api/triggers/{id}/deliveries", tag = "triggers",
    params(("id" = String, Path, description = "Trigger id (or name)"), DeliveriesQuery),
    responses(
        (status = 200, description = "The deliveries", body = DeliveryList),
        (status = 400, description = "A query parameter is not valid", body = ErrorBody),
        (status = 404, description = "No such trigger in force", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
    ))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<DeliveriesQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=100_000).contains(&limit) {
        return Err(
            ApiError::bad_request(format!("limit must be 1 to 100000, got {limit}"))
                .with_details(json!({"field": "limit"})),
        );
    }
    // A trigger no longer in force still shows the deliveries it kept.
    let (id, missing) = match find(&state, &id) {
        Ok(trigger) => (trigger.id.clone(), None),
        Err(err) => (id, Some(err)),
    };
    let store = std::sync::Arc::clone(&state.store);
    let key = id.clone();
    let (records, total) =
        tokio::task::spawn_blocking(move || deliveries::list(&store, &key, limit))
            .await
            .map_err(ApiError::internal)??;
    if let (Some(err), 0) = (missing, total) {
        return Err(err);
    }
    Ok(Json(DeliveryList {
        trigger: id,
        deliveries: records,
        total,
        limit,
    }))
}
