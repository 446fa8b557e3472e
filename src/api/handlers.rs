//! The route handlers. Reads go to the store directly; anything that writes (runs,
//! reconciles) runs on the blocking pool, and answers only once it is durable.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{ApiError, AppState, ROUTES};
use crate::agents::BUILTIN_AGENTS;
use crate::engine::model::{RunRecord, Status, Trigger};
use crate::engine::run::{self, RunRequest};
use crate::events::EventKind;
use crate::manifest::Kind;
use crate::server::view::workflow_summary;
use crate::server::{self, controller, run_summary};
use crate::store::ObjectRecord;

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking work (store writes, processes) off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(ApiError::internal)?
}

/// A JSON body that may be left out entirely (then `T::default()`); a body that is there
/// must be JSON, with the JSON content type, of the expected shape.
fn optional_json<T: DeserializeOwned + Default>(headers: &HeaderMap, body: &Bytes) -> ApiResult<T> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.split(';').next().unwrap_or("").trim();
            v == "application/json" || v.ends_with("+json")
        });
    if !json_type {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a JSON body with `Content-Type: application/json`",
        ));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the body does not have the expected shape: {e}"),
        )
    })
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(std::sync::atomic::Ordering::SeqCst)
        && !state.stopping.load(std::sync::atomic::Ordering::SeqCst)
    {
        Json(json!({"ready": true})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false})),
        )
            .into_response()
    }
}

pub async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let objects = &state.view.objects().records;
    let mut gauges: Vec<(String, &str, f64)> = Vec::new();
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    let mut invalid = 0usize;
    for record in objects.values().filter(|r| r.is_live()) {
        *by_kind.entry(record.key.kind.as_str()).or_default() += 1;
        if record.status == crate::store::ObjectStatus::Invalid {
            invalid += 1;
        }
    }
    gauges.push((
        "orchestrator_active_runs".into(),
        "Runs executing now.",
        state.active_run_ids().len() as f64,
    ));
    gauges.push((
        "orchestrator_invalid_objects".into(),
        "Objects whose current manifest is invalid.",
        invalid as f64,
    ));
    gauges.push((
        "orchestrator_uptime_seconds".into(),
        "Seconds since the server started.",
        state.started.elapsed().as_secs_f64(),
    ));
    gauges.push((
        "orchestrator_events_published".into(),
        "Events published on the bus.",
        state.events.published() as f64,
    ));
    if let Some(rss) = resident_bytes() {
        gauges.push((
            "process_resident_memory_bytes".into(),
            "Resident memory of the server.",
            rss as f64,
        ));
    }
    let mut text = state.metrics.render(
        &gauges
            .iter()
            .map(|(n, h, v)| (n.as_str(), *h, *v))
            .collect::<Vec<_>>(),
    );
    text.push_str(
        "# HELP orchestrator_objects Objects in force, by kind.\n# TYPE orchestrator_objects gauge\n",
    );
    for (kind, count) in by_kind {
        text.push_str(&format!(
            "orchestrator_objects{{kind=\"{kind}\"}} {count}\n"
        ));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Resident set size from /proc (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub async fn index() -> Json<Value> {
    Json(json!({
        "routes": ROUTES.iter().map(|(m, p)| json!({"method": m, "path": p})).collect::<Vec<_>>()
    }))
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route; GET /api lists the routes")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; GET /api lists the routes and their methods",
    )
}

pub async fn status(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let objects = &state.view.objects().records;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for record in objects.values().filter(|r| r.is_live()) {
        *counts.entry(record.key.kind.as_str()).or_default() += 1;
    }
    Ok(Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "environment": state.environment,
        "started_at": state.started_at,
        "uptime_seconds": state.started.elapsed().as_secs(),
        "ready": state.ready.load(std::sync::atomic::Ordering::SeqCst),
        "project_dir": state.config.project_dir,
        "data_dir": state.data_dir,
        "source": state.source_json()?,
        "objects": counts,
        "active_runs": state.active_run_ids(),
        "agents": agents_json(&state, objects),
    })))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Page {
    limit: Option<usize>,
    offset: Option<usize>,
    workflow: Option<String>,
    status: Option<String>,
    /// Whole records (what the command line reads) instead of summaries.
    full: bool,
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 10_000;

fn page_bounds(page: &Page) -> ApiResult<(usize, usize)> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        ))
        .with_details(json!({"field": "limit"})));
    }
    Ok((limit, page.offset.unwrap_or(0)))
}

pub async fn list_workflows(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> ApiResult<Json<Value>> {
    let (limit, offset) = page_bounds(&page)?;
    // From the in-memory view: nothing is decoded per request.
    let objects = state.view.objects();
    let items: Vec<Value> = objects
        .workflows
        .iter()
        .skip(offset)
        .take(limit)
        .map(|(id, summary)| {
            let mut item = summary.clone();
            item["last_run"] = state.view.last_run(id);
            item
        })
        .collect();
    Ok(Json(json!({
        "workflows": items,
        "total": objects.workflows.len(),
        "limit": limit,
        "offset": offset,
    })))
}

fn find_workflow(state: &AppState, id: &str) -> ApiResult<ObjectRecord> {
    Ok(run::find_workflow_in(&state.view.objects().records, id)?)
}

pub async fn show_workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let record = find_workflow(&state, &id)?;
    let runs: Vec<Value> = state
        .store
        .runs()?
        .iter()
        .rev()
        .filter(|r| r.workflow_id == record.key.id)
        .take(20)
        .map(run_summary)
        .collect();
    let mut body = workflow_summary(&record);
    body["last_run"] = state.view.last_run(&record.key.id);
    body["spec"] = record.spec.clone().unwrap_or(Value::Null);
    body["diagnostics"] = json!(record.diagnostics);
    body["runs"] = json!(runs);
    Ok(Json(body))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExecuteBody {
    parameters: Map<String, Value>,
}

pub async fn execute_workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let body: ExecuteBody = optional_json(&headers, &body)?;
    let run = blocking(move || {
        let request = RunRequest {
            workflow: id,
            parameters: body.parameters,
            trigger: Trigger {
                kind: "api".into(),
                details: Map::new(),
            },
        };
        Ok(server::start_run(&state, &request)?)
    })
    .await?;
    Ok(accepted(&run))
}

fn accepted(run: &RunRecord) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/runs/{}", run.id))],
        Json(json!({
            "run_id": run.id,
            "workflow_id": run.workflow_id,
            "status": run.status,
            "run": run_summary(run),
        })),
    )
        .into_response()
}

pub async fn list_runs(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> ApiResult<Json<Value>> {
    let (limit, offset) = page_bounds(&page)?;
    let status = match page.status.as_deref() {
        Some(text) => Some(
            serde_json::from_value::<Status>(Value::from(text)).map_err(|_| {
                ApiError::bad_request(format!(
                    "status `{text}` is not one of queued, running, succeeded, failed, cancelled, timed_out, skipped, interrupted"
                ))
                .with_details(json!({"field": "status"}))
            })?,
        ),
        None => None,
    };
    let runs: Vec<RunRecord> = state
        .store
        .runs()?
        .into_iter()
        .rev()
        .filter(|r| page.workflow.as_ref().is_none_or(|w| &r.workflow_id == w))
        .filter(|r| status.is_none_or(|s| r.status == s))
        .collect();
    let page_of = runs.iter().skip(offset).take(limit);
    let items: Vec<Value> = if page.full {
        page_of
            .map(|r| serde_json::to_value(r).unwrap_or_default())
            .collect()
    } else {
        page_of.map(run_summary).collect()
    };
    Ok(Json(json!({
        "runs": items,
        "total": runs.len(),
        "limit": limit,
        "offset": offset,
    })))
}

fn load_run(state: &AppState, id: &str) -> ApiResult<RunRecord> {
    state
        .store
        .run(id)?
        .ok_or_else(|| ApiError::not_found(format!("no run `{id}`; GET /api/runs lists them")))
}

pub async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let run = load_run(&state, &id)?;
    let steps = state.store.steps(&id)?;
    Ok(Json(json!({"run": run, "steps": steps})))
}

pub async fn run_log(
    State(state): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult<Response> {
    load_run(&state, &id)?;
    let steps = state.store.steps(&id)?;
    let Some(record) = steps.iter().find(|s| s.name == step) else {
        let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
        return Err(ApiError::not_found(format!(
            "run `{id}` has no step `{step}`; its steps: {}",
            names.join(", ")
        )));
    };
    let path = state.engine.log_dir.join(&record.log);
    let text = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(ApiError::internal(err)),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

pub async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let run = load_run(&state, &id)?;
    if state.cancel_run(&id) {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"run_id": id, "status": "cancelling"})),
        )
            .into_response());
    }
    Err(
        ApiError::conflict(format!("run `{id}` is {}: nothing to cancel", run.status))
            .with_details(json!({"status": run.status})),
    )
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RerunBody {
    from_failed: bool,
}

pub async fn rerun(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let body: RerunBody = optional_json(&headers, &body)?;
    let original = load_run(&state, &id)?;
    if !original.status.is_finished() {
        return Err(ApiError::conflict(format!(
            "run `{id}` is {}: wait for it to finish or cancel it first",
            original.status
        )));
    }
    let run =
        blocking(move || Ok(server::start_rerun(&state, &original, body.from_failed)?)).await?;
    Ok(accepted(&run))
}

fn agents_json(
    state: &AppState,
    objects: &BTreeMap<crate::store::ObjectKey, ObjectRecord>,
) -> Vec<Value> {
    let mut agents: BTreeMap<String, Value> = BTreeMap::new();
    for builtin in BUILTIN_AGENTS {
        agents.insert(
            builtin.name.to_owned(),
            json!({"name": builtin.name, "type": builtin.name, "builtin": true,
                   "actions": builtin.actions, "description": builtin.summary, "manifest_enabled": true}),
        );
    }
    for record in objects
        .values()
        .filter(|r| r.key.kind == Kind::Agent && r.is_live())
    {
        let spec = record.spec.clone().unwrap_or_default();
        agents.insert(
            record.name.clone(),
            json!({
                "name": record.name,
                "id": record.key.id,
                "type": spec.get("type").cloned().unwrap_or(Value::Null),
                "builtin": false,
                "actions": spec.get("actions").cloned().unwrap_or(Value::Null),
                "description": spec.get("description").cloned().unwrap_or(Value::Null),
                "manifest_enabled": spec.get("enabled").and_then(Value::as_bool).unwrap_or(true),
                "when_disabled": spec.get("when_disabled").cloned().unwrap_or(Value::from("fail")),
                "max_concurrent": spec.get("max_concurrent").cloned().unwrap_or(Value::Null),
            }),
        );
    }
    agents
        .into_values()
        .map(|mut agent| {
            let name = agent["name"].as_str().unwrap_or_default().to_owned();
            let manifest_enabled = agent["manifest_enabled"].as_bool().unwrap_or(true);
            let switches = &state.engine.agent_switches;
            agent["enabled"] = json!(switches.enabled(&name, manifest_enabled));
            agent["running_steps"] = json!(switches.running(&name));
            agent
        })
        .collect()
}

pub async fn list_agents(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let objects = &state.view.objects().records;
    Ok(Json(json!({"agents": agents_json(&state, objects)})))
}

fn find_agent(state: &AppState, name: &str) -> ApiResult<Value> {
    let objects = &state.view.objects().records;
    let agents = agents_json(state, objects);
    let names: Vec<String> = agents
        .iter()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect();
    agents
        .into_iter()
        .find(|a| a["name"] == name)
        .ok_or_else(|| {
            ApiError::not_found(format!("no agent `{name}`; agents: {}", names.join(", ")))
        })
}

pub async fn show_agent(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(find_agent(&state, &name)?))
}

fn switch_agent(state: &AppState, name: &str, enabled: bool) -> ApiResult<Json<Value>> {
    find_agent(state, name)?;
    state.engine.agent_switches.set(name, enabled);
    let agent = find_agent(state, name)?;
    state
        .events
        .publish(EventKind::AgentStatusChanged, agent.clone());
    Ok(Json(agent))
}

pub async fn start_agent(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    switch_agent(&state, &name, true)
}

pub async fn stop_agent(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    switch_agent(&state, &name, false)
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct FullQuery {
    /// Whole records (what the command line reads) as `records`.
    full: bool,
}

pub async fn list_manifests(
    State(state): State<AppState>,
    Query(query): Query<FullQuery>,
) -> ApiResult<Json<Value>> {
    let objects = &state.view.objects().records;
    if query.full {
        return Ok(Json(json!({
            "source": state.store.source_status(state.source_name())?,
            "records": objects.values().collect::<Vec<_>>(),
        })));
    }
    let items: Vec<Value> = objects
        .values()
        .map(|r| {
            json!({
                "kind": r.key.kind,
                "id": r.key.id,
                "name": r.name,
                "status": r.status,
                "source_file": r.source_file,
                "applied_revision": r.applied_revision,
                "attempted_revision": r.attempted_revision,
                "generation": r.generation,
                "applied_at": r.applied_at,
                "diagnostics": r.diagnostics,
            })
        })
        .collect();
    Ok(Json(json!({
        "source": state.store.source_status(state.source_name())?,
        "objects": items,
    })))
}

pub async fn list_jobs(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let objects = &state.view.objects().records;
    let jobs: Vec<Value> = objects
        .values()
        .filter(|r| r.key.kind == Kind::Schedule && r.is_live())
        .map(|r| {
            let spec = r.spec.clone().unwrap_or_default();
            json!({
                "id": r.key.id,
                "name": r.name,
                "schedule": spec.get("cron").or_else(|| spec.get("schedule")).cloned().unwrap_or(Value::Null),
                "workflow_id": spec.get("workflow").cloned().unwrap_or(Value::Null),
                "parameters": spec.get("parameters").cloned().unwrap_or(json!({})),
                "timezone": spec.get("timezone").cloned().unwrap_or(Value::Null),
                "suspend": spec.get("suspend").cloned().unwrap_or(Value::from(false)),
                "status": r.status,
            })
        })
        .collect();
    Ok(Json(json!({"jobs": jobs})))
}

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileBody {
    /// Limit to these paths (relative to the project); all manifest directories when empty.
    paths: Vec<String>,
    /// Remove objects whose manifests are gone.
    prune: Option<bool>,
}

async fn reconcile_request(
    state: AppState,
    headers: HeaderMap,
    body: Bytes,
    dry_run: bool,
    default_prune: bool,
    reason: &'static str,
) -> ApiResult<Json<Value>> {
    let body: ReconcileBody = optional_json(&headers, &body)?;
    if state.git.is_some() && !body.paths.is_empty() {
        return Err(ApiError::bad_request(
            "the server follows a git repository: it reconciles the whole repository at its branch's commit, not paths",
        )
        .with_details(json!({"field": "paths"})));
    }
    let project = state.config.project_dir.clone();
    let mut paths = Vec::new();
    for path in &body.paths {
        let relative = std::path::Path::new(path);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ApiError::bad_request(format!(
                "path `{path}` must be relative to the project and stay inside it"
            ))
            .with_details(json!({"field": "paths"})));
        }
        let full = project.join(relative);
        if !full.exists() {
            return Err(ApiError::not_found(format!(
                "path `{path}` does not exist in the project"
            ))
            .with_details(json!({"field": "paths"})));
        }
        paths.push(full);
    }
    let prune = body.prune.unwrap_or(default_prune);
    let outcome = blocking(move || {
        controller::reconcile(&state, &paths, prune, dry_run, reason).map_err(|err| {
            match err.downcast_ref::<crate::source::git::GitError>() {
                Some(fetch) => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "source_unavailable",
                    format!("the git source cannot be fetched; the last good revision stays in force: {fetch}"),
                ),
                None => ApiError::from(err),
            }
        })
    })
    .await?;
    Ok(Json(
        serde_json::to_value(outcome).map_err(ApiError::internal)?,
    ))
}

pub async fn diff(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    reconcile_request(state, headers, body, true, false, "diff").await
}

pub async fn apply(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    reconcile_request(state, headers, body, false, false, "apply").await
}

pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    reconcile_request(state, headers, body, false, true, "sync").await
}
