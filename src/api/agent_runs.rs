//! `GET /api/agents/{name}/executions`: an agent's most recent step executions, newest
//! first, each with its run, outcome, timings and the address of its log — what the
//! dashboard's agent page lists as the agent's recent log.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::manifest::Kind;
use crate::model::Status;
use crate::spec::agents::{builtin, BUILTIN_AGENTS};

/// The default number of executions.
const DEFAULT_LIMIT: usize = 20;
/// The most executions one answer holds.
const MAX_LIMIT: usize = 200;
/// The most runs one answer reads, newest first, looking for the agent's steps.
pub const MAX_SCAN: usize = 1000;

/// The query of `GET /api/agents/{name}/executions`.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExecutionsQuery {
    /// How many executions (1 to 200; default 20).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

/// One step an agent ran.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentExecution {
    /// The run.
    pub run_id: String,
    /// The run's workflow id.
    pub workflow_id: String,
    /// The run's workflow name.
    pub workflow_name: String,
    /// The step's name.
    pub step: String,
    /// The agent's action.
    pub action: String,
    /// The step's state.
    pub status: Status,
    /// How many attempts it took (so far).
    pub attempts: usize,
    /// When its first attempt started.
    pub started_at: Option<String>,
    /// When it reached its final state.
    pub finished_at: Option<String>,
    /// From the first start to the end, retries included.
    pub duration_ms: Option<u64>,
    /// The last attempt's exit code.
    pub exit_code: Option<i32>,
    /// Why it failed, was skipped or was interrupted.
    pub message: Option<String>,
    /// Where its log is: `/api/runs/{run}/logs/{step}`.
    pub log_url: String,
}

/// An agent's recent executions.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentExecutions {
    /// The agent.
    pub agent: String,
    /// Newest first.
    pub executions: Vec<AgentExecution>,
    /// How many runs were read to find them (at most 1000, newest first).
    pub scanned_runs: usize,
}

/// An agent's most recent step executions, newest first.
///
/// Read from the store: the newest runs (at most 1000) and their steps, keeping the steps
/// the agent ran or is running.
#[utoipa::path(get, path = "/api/agents/{name}/executions", tag = "agents",
    params(("name" = String, Path, description = "The agent's name"), ExecutionsQuery),
    responses(
        (status = 200, description = "The agent's recent executions", body = AgentExecutions),
        (status = 400, description = "A query parameter that does not parse, is out of range or is unknown", body = ErrorBody),
        (status = 404, description = "No such agent (the message lists them)", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn agent_executions(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<ExecutionsQuery>,
) -> Result<Json<AgentExecutions>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        ))
        .with_details(json!({"field": "limit"})));
    }
    let objects = state.view.objects();
    let declared: Vec<String> = objects
        .records
        .values()
        .filter(|r| r.key.kind == Kind::Agent && r.is_live())
        .map(|r| r.name.clone())
        .collect();
    let known = builtin(&name).is_some() || declared.contains(&name);
    let answer = tokio::task::spawn_blocking(move || -> Result<AgentExecutions, ApiError> {
        // The newest runs' heads only: no workflow is decoded.
        let runs = state
            .store
            .list_runs(&crate::store::RunFilter::default(), 0, MAX_SCAN)?
            .runs;
        let mut executions = Vec::new();
        let mut scanned = 0;
        for run in &runs {
            scanned += 1;
            for step in state.store.steps(&run.id)? {
                if step.agent != name {
                    continue;
                }
                executions.push(AgentExecution {
                    log_url: format!(
                        "/api/runs/{}/logs/{}",
                        utf8_percent_encode(&run.id),
                        utf8_percent_encode(&step.name)
                    ),
                    run_id: run.id.clone(),
                    workflow_id: run.workflow_id.clone(),
                    workflow_name: run.workflow_name.clone(),
                    action: step.action,
                    status: step.status,
                    attempts: step.attempts.len(),
                    started_at: step.started_at,
                    finished_at: step.finished_at,
                    duration_ms: step.duration_ms,
                    exit_code: step.exit_code,
                    message: step.message,
                    step: step.name,
                });
            }
            if executions.len() >= limit {
                break;
            }
        }
        // Steps of one run are in workflow order: newest first means the later step first.
        executions.sort_by(|a, b| {
            b.run_id
                .cmp(&a.run_id)
                .then_with(|| b.started_at.cmp(&a.started_at))
        });
        executions.truncate(limit);
        Ok(AgentExecutions {
            agent: name,
            executions,
            scanned_runs: scanned,
        })
    })
    .await
    .map_err(ApiError::internal)??;
    if !known && answer.executions.is_empty() {
        let mut names: Vec<&str> = BUILTIN_AGENTS.iter().map(|a| a.name).collect();
        names.extend(declared.iter().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        return Err(ApiError::not_found(format!(
            "no agent `{}`; agents: {}",
            answer.agent,
            names.join(", ")
        )));
    }
    Ok(Json(answer))
}

/// A run id or step name as one path segment.
fn utf8_percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
