//! `GET /api/agents/{name}/metrics` and `GET /api/workflows/{id}/metrics`: an agent's and a
//! workflow's metrics over `monitoring.metrics_window`, from the server's in-memory
//! [`RunStats`](crate::monitor::stats::RunStats) (no store read).

use axum::extract::{Path, State};
use axum::Json;
use chrono::Utc;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::engine::run::find_workflow_in;
use crate::manifest::Kind;
use crate::monitor::stats::{AgentMetrics, WorkflowMetrics};
use crate::spec::agents::{builtin, BUILTIN_AGENTS};

/// An agent's metrics.
///
/// Over the metrics window (`monitoring.metrics_window`, 1 h by default): steps it ran
/// (`executions`: those that succeeded, failed or timed out), success and error rates, the
/// median and 95th percentile of step durations, the CPU seconds and peak resident memory
/// of the processes its steps ran (`null` for agents that run none, such as `http`), its
/// `health_score`, its latest `health_check` and its `last_error` (kept past the window).
#[utoipa::path(get, path = "/api/agents/{name}/metrics", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    responses(
        (status = 200, description = "The agent's metrics", body = AgentMetrics),
        (status = 404, description = "No such agent (the message lists them)", body = ErrorBody),
    ))]
pub async fn agent_metrics(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<AgentMetrics>, ApiError> {
    let now = Utc::now();
    let objects = state.view.objects();
    let declared: Vec<&str> = objects
        .records
        .values()
        .filter(|r| r.key.kind == Kind::Agent && r.is_live())
        .map(|r| r.name.as_str())
        .collect();
    if builtin(&name).is_some() || declared.contains(&name.as_str()) {
        return Ok(Json(state.stats.agent_or_empty(&name, now)));
    }
    // An agent no manifest declares any more, whose steps are still in the window.
    if let Some(metrics) = state.stats.agent(&name, now) {
        return Ok(Json(metrics));
    }
    let mut names: Vec<&str> = BUILTIN_AGENTS.iter().map(|a| a.name).collect();
    names.extend(declared);
    names.sort_unstable();
    names.dedup();
    Err(ApiError::not_found(format!(
        "no agent `{name}`; agents: {}",
        names.join(", ")
    )))
}

/// A workflow's metrics.
///
/// Over the metrics window (`monitoring.metrics_window`, 1 h by default): `runs` (those
/// that succeeded, failed or timed out; cancelled and interrupted runs are left out),
/// failure and success rates, the 95th percentile of run durations, and its test results:
/// pass rate, failed and flaky test cases, the slowest and the most failing cases.
#[utoipa::path(get, path = "/api/workflows/{id}/metrics", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id (`wf_...`) or name")),
    responses(
        (status = 200, description = "The workflow's metrics", body = WorkflowMetrics),
        (status = 404, description = "No such workflow (the message suggests close ids)", body = ErrorBody),
    ))]
pub async fn workflow_metrics(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WorkflowMetrics>, ApiError> {
    let now = Utc::now();
    let found = find_workflow_in(&state.view.objects().records, &id);
    match found {
        Ok(record) => Ok(Json(state.stats.workflow_or_empty(
            &record.key.id,
            &record.name,
            now,
        ))),
        // A workflow removed since, whose runs are still in the window.
        Err(err) => match state.stats.workflow(&id, now) {
            Some(metrics) => Ok(Json(metrics)),
            None => Err(err.into()),
        },
    }
}
