//! The route handlers. Reads go to the store directly; anything that writes (runs,
//! reconciles) runs on the blocking pool, and answers only once it is durable.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::engine::run::{self, RunRequest};
use crate::engine::runner::run_summary;
use crate::manifest::Kind;
use crate::model::{RunHead, RunRecord, RunSummary, Status, StepRecord, Trigger};
use crate::reconcile::view::workflow_summary;
use crate::spec::agents::BUILTIN_AGENTS;
use crate::store::{ObjectRecord, RunFilter};

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
pub(super) fn optional_json<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
) -> ApiResult<T> {
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
    // serde reads a struct from an array too (`[]` would be every field's default): every
    // body is a JSON object, as the document says.
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!(
                "the body must be a JSON object, got {}",
                crate::manifest::describe_type(&value)
            ),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("the body does not have the expected shape: {e}"),
        )
    })
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "server",
    responses((status = 200, description = "`ok`", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Whether the server is ready.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// True once the first reconcile is done, false again while shutting down.
    ready: bool,
}

/// Readiness: the first reconcile is done, the store can be written (no write has failed
/// since it was last reopened, e.g. on a full disk) and the server is not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "server", responses(
    (status = 200, description = "Ready", body = Readiness, example = json!({"ready": true})),
    (status = 503, description = "Not ready yet, the store cannot be written, or shutting down",
        body = Readiness, example = json!({"ready": false})),
))]
pub async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(std::sync::atomic::Ordering::SeqCst)
        && !state.runner.is_stopping()
        && state.store.is_writable()
    {
        Json(Readiness { ready: true }).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Readiness { ready: false }),
        )
            .into_response()
    }
}

/// Prometheus metrics.
///
/// Counters (requests, runs started and finished by status, reconciles, webhook deliveries,
/// source fetch errors) and gauges (active runs, runs waiting for a slot, objects by kind,
/// invalid objects, uptime, resident memory) in the Prometheus text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "server", responses(
    (status = 200, description = "The metrics", body = String,
        content_type = "text/plain; version=0.0.4; charset=utf-8"),
))]
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
        state.runner.active_run_ids().len() as f64,
    ));
    gauges.push((
        "orchestrator_runs_waiting".into(),
        "Runs created and waiting for a run slot (runs.max_active).",
        state.runner.waiting_runs() as f64,
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
        "orchestrator_events_published_total".into(),
        "Events published on the bus.",
        state.events.published() as f64,
    ));
    for (name, help, value) in crate::monitor::metrics::process_gauges() {
        gauges.push((name.into(), help, value));
    }
    if let Some(sample) = state.system.latest() {
        for (name, help, value) in sample.gauges() {
            gauges.push((name.into(), help, value));
        }
    }
    let mut text = state.metrics.render(
        &gauges
            .iter()
            .map(|(n, h, v)| (n.as_str(), *h, *v))
            .collect::<Vec<_>>(),
    );
    let mut objects = crate::monitor::metrics::Scrape::default();
    objects.gauge_family(
        "orchestrator_objects",
        "Objects in force, by kind.",
        "kind",
        by_kind
            .into_iter()
            .map(|(kind, count)| (kind.to_owned(), Some(count as f64))),
    );
    text.push_str(&objects.render());
    text.push_str(&state.stats.prometheus(chrono::Utc::now()));
    text.push_str(&super::workers::prometheus(&state));
    Ok((
        [(header::CONTENT_TYPE, crate::monitor::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response())
}

/// Every route of the API.
#[derive(Debug, Serialize, ToSchema)]
pub struct RouteIndex {
    /// In the order the router declares them.
    routes: Vec<Route>,
}

/// One route.
#[derive(Debug, Serialize, ToSchema)]
pub struct Route {
    /// `GET` or `POST`.
    #[schema(example = "GET")]
    method: &'static str,
    /// With `{name}` for a path parameter.
    #[schema(example = "/api/runs/{id}")]
    path: String,
}

/// The route list.
#[utoipa::path(get, path = "/api", tag = "server", responses(
    (status = 200, description = "Every route, as method and path", body = RouteIndex),
))]
pub async fn index(State(state): State<AppState>) -> Json<RouteIndex> {
    Json(RouteIndex {
        routes: state
            .routes
            .published
            .routes
            .iter()
            .map(|(method, path)| Route {
                method,
                path: path.clone(),
            })
            .collect(),
    })
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

/// The server's status.
///
/// Version, PID, environment, start time and uptime, readiness, project and data
/// directories, the manifest source (directories, or the git source with its fetch status),
/// objects in force by kind, active runs and the agents.
#[utoipa::path(get, path = "/api/status", tag = "server", responses(
    (status = 200, description = "The status", body = Object, example = json!({
        "version": "0.1.0", "pid": 4242, "environment": "development",
        "started_at": "2026-01-01T00:00:00.000Z", "uptime_seconds": 60, "ready": true,
        "project_dir": "/srv/tests", "data_dir": "/srv/tests/data",
        "source": {"kind": "dir"}, "objects": {"Workflow": 5, "Schedule": 1},
        "active_runs": [], "agents": []})),
    (status = 500, description = "The store cannot be read", body = ErrorBody),
))]
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
        "source": state.controller.source_json()?,
        "objects": counts,
        "active_runs": state.runner.active_run_ids(),
        "agents": agents_json(&state, objects),
    })))
}

/// The query of the lists: a page, and for runs, filters. Unknown parameters are refused.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct Page {
    /// How many items (1 to 10000; default 50).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// How many items to skip (0 to 4294967295; default 0).
    #[param(minimum = 0, maximum = 4294967295_u64)]
    offset: Option<u64>,
    /// Runs of this workflow id only.
    workflow: Option<String>,
    /// Runs in this state only.
    #[param(value_type = Option<Status>)]
    status: Option<String>,
    /// Whole records (what the command line reads) instead of summaries.
    full: bool,
}

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 10_000;
/// The largest `offset` (what the document says, so a client knows before asking).
const MAX_OFFSET: u64 = u32::MAX as u64;

fn page_bounds(page: &Page) -> ApiResult<(usize, usize)> {
    let limit = page.limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        ))
        .with_details(json!({"field": "limit"})));
    }
    let offset = page.offset.unwrap_or(0);
    if offset > MAX_OFFSET {
        return Err(ApiError::bad_request(format!(
            "offset must be between 0 and {MAX_OFFSET}, got {offset}"
        ))
        .with_details(json!({"field": "offset"})));
    }
    Ok((limit, usize::try_from(offset).unwrap_or(usize::MAX)))
}

/// The workflows.
#[utoipa::path(get, path = "/api/workflows", tag = "workflows",
    params(
        ("limit" = Option<usize>, Query, minimum = 1, maximum = 10000,
            description = "How many workflows (1 to 10000; default 50)"),
        ("offset" = Option<u64>, Query, minimum = 0, maximum = 4294967295_u64,
            description = "How many to skip (0 to 4294967295; default 0)"),
    ),
    responses(
        (status = 200, description = "A page of workflows", body = WorkflowList),
        (status = 400, description = "A query parameter that does not parse, is out of range or is unknown", body = ErrorBody),
    ))]
pub async fn list_workflows(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> ApiResult<WorkflowList> {
    let (limit, offset) = page_bounds(&page)?;
    // From the in-memory view, pre-serialized: nothing is decoded or re-encoded per request.
    Ok(WorkflowList(state.view.workflow_page(offset, limit)))
}

/// A page of workflows, as `GET /api/workflows` answers it: `{"workflows": [...], "total",
/// "limit", "offset"}`, written by the in-memory view straight from the summaries it
/// serialized at reconcile time; its schema says that shape.
pub struct WorkflowList(String);

impl IntoResponse for WorkflowList {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

impl utoipa::PartialSchema for WorkflowList {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::Type;
        use utoipa::openapi::{ArrayBuilder, ObjectBuilder};
        let count = |description: &str| {
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .description(Some(description))
        };
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "A page of workflows, as `GET /api/workflows` answers it.",
            ))
            .property(
                "workflows",
                ArrayBuilder::new()
                    .items(ObjectBuilder::new().schema_type(Type::Object))
                    .description(Some(
                        "Summaries of the workflows in force (id, name, status, step count, \
                         ...), each with its `last_run` summary or null.",
                    )),
            )
            .required("workflows")
            .property("total", count("All workflows."))
            .required("total")
            .property("limit", count("The page size."))
            .required("limit")
            .property("offset", count("Items skipped."))
            .required("offset")
            .into()
    }
}

impl ToSchema for WorkflowList {}

fn find_workflow(state: &AppState, id: &str) -> ApiResult<ObjectRecord> {
    Ok(run::find_workflow_in(&state.view.objects().records, id)?)
}

/// One workflow.
///
/// Its summary, `last_run`, the `spec` in force, the `diagnostics` of its current manifest
/// and its 20 latest `runs` (summaries).
#[utoipa::path(get, path = "/api/workflows/{id}", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id (`wf_...`) or name")),
    responses(
        (status = 200, description = "The workflow", body = Object),
        (status = 404, description = "No such workflow (the message suggests close ids)", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn show_workflow(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let record = find_workflow(&state, &id)?;
    let runs: Vec<Value> = state
        .store
        .list_runs(
            &RunFilter {
                workflow: Some(record.key.id.clone()),
                status: None,
            },
            0,
            20,
        )?
        .runs
        .iter()
        .map(head_summary)
        .collect();
    let mut body = workflow_summary(&record);
    body["last_run"] = state.view.last_run(&record.key.id);
    body["spec"] = record.spec.as_deref().cloned().unwrap_or(Value::Null);
    body["diagnostics"] = json!(record.diagnostics);
    body["runs"] = json!(runs);
    Ok(Json(body))
}

/// The body of `execute` (optional).
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExecuteBody {
    /// Values of the workflow's declared parameters, checked against their declarations;
    /// defaults fill in the rest.
    parameters: Map<String, Value>,
    /// Who starts the run: `api` (default), or `cli` for the command line going through the
    /// server, so the run is recorded as it would be without one.
    trigger: ExecuteTrigger,
}

/// The trigger kinds a client may ask for.
#[derive(Debug, Serialize, Deserialize, Default, Clone, Copy, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecuteTrigger {
    #[default]
    Api,
    Cli,
}

/// `202 Accepted`: a run was created and started.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExecuteAccepted {
    /// The new run's id (`run_` and a ULID).
    run_id: String,
    /// Its workflow.
    workflow_id: String,
    /// Its state when created.
    status: Status,
    /// Its summary (the fields of a run record, `steps` as a count).
    #[schema(value_type = Object)]
    run: Value,
}

/// Runs a workflow.
///
/// The run is created durably, then started; the answer does not wait for it to finish
/// (follow it at `Location`, or on `/ws`).
#[utoipa::path(post, path = "/api/workflows/{id}/execute", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id (`wf_...`) or name")),
    request_body(content = ExecuteBody, content_type = "application/json",
        description = "Optional: no body runs with the defaults",
        example = json!({"parameters": {"environment": "staging"}})),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The run was created and started", body = ExecuteAccepted,
            headers(("Location" = String, description = "`/api/runs/{run_id}`"))),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 404, description = "No such workflow", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "A body of the wrong shape (`invalid_body`), parameters that do not match the declared ones, or the server is shutting down (`invalid`)", body = ErrorBody),
        (status = 500, description = "The store cannot be written", body = ErrorBody),
    ))]
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
                kind: match body.trigger {
                    ExecuteTrigger::Api => "api",
                    ExecuteTrigger::Cli => "cli",
                }
                .into(),
                details: Map::new(),
            },
        };
        Ok(state.runner.start_run(&request)?)
    })
    .await?;
    Ok(accepted(&run))
}

fn accepted(run: &RunRecord) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/api/runs/{}", run.id))],
        Json(ExecuteAccepted {
            run_id: run.id.clone(),
            workflow_id: run.workflow_id.clone(),
            status: run.status,
            run: run_summary(run),
        }),
    )
        .into_response()
}

/// A page of runs.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Newest first: summaries (the fields of a run record, `steps` as a count), or whole
    /// run records with `full=true`.
    #[schema(value_type = Vec<Object>)]
    runs: Vec<Value>,
    /// All runs that match the filters.
    total: usize,
    /// The page size.
    limit: usize,
    /// Items skipped.
    offset: usize,
}

/// The runs, newest first.
#[utoipa::path(get, path = "/api/runs", tag = "runs",
    params(Page),
    responses(
        (status = 200, description = "A page of runs", body = RunList),
        (status = 400, description = "A query parameter that does not parse, is out of range, is not a state or is unknown", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn list_runs(
    State(state): State<AppState>,
    Query(page): Query<Page>,
) -> ApiResult<RunListBody> {
    let (limit, offset) = page_bounds(&page)?;
    let status = match page.status.as_deref() {
        Some(text) => Some(Status::parse_filter(text).map_err(|message| {
            ApiError::bad_request(message).with_details(json!({"field": "status"}))
        })?),
        None => None,
    };
    let filter = RunFilter {
        workflow: page.workflow.clone(),
        status,
    };
    // Only the page is read (and with `full`, the page's workflows): a page costs the same
    // with a hundred runs stored or a hundred thousand. Summaries come serialized from the
    // store's cache and are written into the body as they are.
    if page.full {
        let listed = state.store.list_runs(&filter, offset, limit)?;
        let mut runs = Vec::with_capacity(listed.runs.len());
        for head in listed.runs {
            // A run deleted since it was listed is left out.
            if let Some(workflow) = state.store.run_workflow(&head.id)? {
                runs.push(
                    serde_json::to_string(&head.with_workflow(workflow))
                        .unwrap_or_else(|_| "null".to_owned()),
                );
            }
        }
        Ok(RunListBody::write(&runs, listed.total, limit, offset))
    } else {
        let listed = state.store.list_run_summaries(&filter, offset, limit)?;
        Ok(RunListBody::write(
            &listed.runs,
            listed.total,
            limit,
            offset,
        ))
    }
}

/// A [`RunList`] as `GET /api/runs` answers it, written from runs already serialized.
pub struct RunListBody(String);

impl RunListBody {
    /// `{"runs":[...],"total":..,"limit":..,"offset":..}`: the fields of [`RunList`] in
    /// its order.
    fn write<S: AsRef<str>>(runs: &[S], total: usize, limit: usize, offset: usize) -> RunListBody {
        use std::fmt::Write as _;
        let size: usize = runs.iter().map(|run| run.as_ref().len() + 1).sum();
        let mut body = String::with_capacity(size + 64);
        body.push_str("{\"runs\":[");
        for (at, run) in runs.iter().enumerate() {
            if at > 0 {
                body.push(',');
            }
            body.push_str(run.as_ref());
        }
        // Writing to a String cannot fail.
        let _ = write!(
            body,
            "],\"total\":{total},\"limit\":{limit},\"offset\":{offset}}}"
        );
        RunListBody(body)
    }
}

impl IntoResponse for RunListBody {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

/// The summary of a run's head, as lists show it.
fn head_summary(run: &RunHead) -> Value {
    serde_json::to_value(RunSummary::of_head(run)).unwrap_or(Value::Null)
}

fn load_run(state: &AppState, id: &str) -> ApiResult<RunRecord> {
    // Run ids never hold a NUL; the keys of the runs tree's index start with one.
    let found = if id.contains('\0') {
        None
    } else {
        state.store.run(id)?
    };
    found.ok_or_else(|| ApiError::not_found(format!("no run `{id}`; GET /api/runs lists them")))
}

/// A run and its steps.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetail {
    /// The run.
    run: RunRecord,
    /// Its steps in workflow order, with their attempts and test cases.
    steps: Vec<StepRecord>,
    /// What was reported to its GitHub commit (`report_to`), when it is reported.
    #[serde(skip_serializing_if = "Option::is_none")]
    commit_status: Option<crate::triggers::commit_status::CommitStatusReport>,
}

/// One run, with its steps.
#[utoipa::path(get, path = "/api/runs/{id}", tag = "runs",
    params(("id" = String, Path, description = "The run's id (`run_...`)")),
    responses(
        (status = 200, description = "The run and its steps", body = RunDetail),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn show_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDetail>> {
    let run = load_run(&state, &id)?;
    let steps = state.store.steps(&id)?;
    let commit_status = state
        .store
        .state(crate::triggers::commit_status::STATE_TREE, &id)?;
    Ok(Json(RunDetail {
        run,
        steps,
        commit_status,
    }))
}

/// A step's log.
///
/// What the step's process wrote (stdout and stderr, every attempt); empty when it has not
/// started.
#[utoipa::path(get, path = "/api/runs/{id}/logs/{step}", tag = "runs",
    params(
        ("id" = String, Path, description = "The run's id (`run_...`)"),
        ("step" = String, Path, description = "The step's name"),
    ),
    responses(
        (status = 200, description = "The log", body = String, content_type = "text/plain; charset=utf-8"),
        (status = 404, description = "No such run, or the run has no such step (the message lists its steps)", body = ErrorBody),
        (status = 500, description = "The store or the log file cannot be read", body = ErrorBody),
    ))]
pub async fn run_log(
    State(state): State<AppState>,
    Path((id, step)): Path<(String, String)>,
) -> ApiResult<Response> {
    load_run(&state, &id)?;
    let steps = state.store.steps(&id)?;
    let record = run::find_step(&id, &steps, &step)?;
    let path = state.runner.engine().log_dir.join(&record.log);
    let text = match tokio::fs::read(&path).await {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(ApiError::internal(err)),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

/// `202 Accepted`: the run was asked to stop.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelAccepted {
    /// The run.
    run_id: String,
    /// Always `cancelling`; the run ends `cancelled` once its running steps are stopped.
    #[schema(example = "cancelling")]
    status: &'static str,
}

/// Cancels a run.
///
/// Running steps are stopped (their process groups), pending ones skipped; the run ends
/// `cancelled`.
#[utoipa::path(post, path = "/api/runs/{id}/cancel", tag = "runs",
    params(("id" = String, Path, description = "The run's id (`run_...`)")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The run is being cancelled", body = CancelAccepted),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run is not executing (finished, or not in this server): nothing to cancel", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn cancel_run(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let run = load_run(&state, &id)?;
    // A run whose final state is stored is over, even in the moment before its executor
    // lets go of it.
    if !run.status.is_finished() && state.runner.cancel(&id) {
        return Ok((
            StatusCode::ACCEPTED,
            Json(CancelAccepted {
                run_id: id,
                status: "cancelling",
            }),
        )
            .into_response());
    }
    Err(
        ApiError::conflict(format!("run `{id}` is {}: nothing to cancel", run.status))
            .with_details(json!({"status": run.status})),
    )
}

/// The body of `rerun` (optional).
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RerunBody {
    /// Run again the steps that did not succeed and everything downstream of them
    /// (through `depends_on`, or listed order), keeping the result and outputs of the
    /// steps that succeeded upstream of no failure; report steps always run again. Default
    /// false: everything runs again.
    from_failed: bool,
}

/// Re-runs a finished run.
///
/// A new run of the same workflow as it ran, with the same parameters; `rerun_of` names
/// the original.
#[utoipa::path(post, path = "/api/runs/{id}/rerun", tag = "runs",
    params(("id" = String, Path, description = "The finished run's id (`run_...`)")),
    request_body(content = RerunBody, content_type = "application/json",
        description = "Optional", example = json!({"from_failed": true})),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "The new run was created and started", body = ExecuteAccepted,
            headers(("Location" = String, description = "`/api/runs/{run_id}`"))),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 404, description = "No such run", body = ErrorBody),
        (status = 409, description = "The run has not finished", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "A body of the wrong shape, or the run cannot be re-run (`from_failed` of a run that succeeded)", body = ErrorBody),
        (status = 500, description = "The store cannot be written", body = ErrorBody),
    ))]
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
    let run = blocking(move || Ok(state.runner.start_rerun(&original, body.from_failed)?)).await?;
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
            let switches = &state.runner.engine().agent_switches;
            agent["enabled"] = json!(switches.enabled(&name, manifest_enabled));
            agent["running_steps"] = json!(switches.running(&name));
            agent
        })
        .collect()
}

/// The agents.
///
/// `{"agents": [...]}` by name: the built-in agents and those declared by manifests, each
/// with `name`, `type`, `builtin`, `actions`, `description`, `enabled` (now),
/// `manifest_enabled` and `running_steps`; declared ones also `id`, `when_disabled` and
/// `max_concurrent`.
#[utoipa::path(get, path = "/api/agents", tag = "agents", responses(
    (status = 200, description = "The agents", body = Object),
))]
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

/// One agent.
#[utoipa::path(get, path = "/api/agents/{name}", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    responses(
        (status = 200, description = "The agent (the fields of an item of `GET /api/agents`)", body = Object),
        (status = 404, description = "No such agent (the message lists them)", body = ErrorBody),
    ))]
pub async fn show_agent(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(find_agent(&state, &name)?))
}

fn switch_agent(state: &AppState, name: &str, enabled: bool) -> ApiResult<Json<Value>> {
    find_agent(state, name)?;
    state.runner.engine().agent_switches.set(name, enabled);
    let agent = find_agent(state, name)?;
    state
        .events
        .publish(crate::events::Event::AgentStatusChanged(agent.clone()));
    Ok(Json(agent))
}

/// Switches an agent on.
///
/// Until the server stops: after a restart the manifest's `enabled` holds again.
/// Publishes `agent_status_changed`.
#[utoipa::path(post, path = "/api/agents/{name}/start", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The agent, switched on", body = Object),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
    ))]
pub async fn start_agent(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    switch_agent(&state, &name, true)
}

/// Switches an agent off.
///
/// Steps that use it then fail, or wait, as its `when_disabled` says; steps already running
/// finish. Until the server stops. Publishes `agent_status_changed`.
#[utoipa::path(post, path = "/api/agents/{name}/stop", tag = "agents",
    params(("name" = String, Path, description = "The agent's name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The agent, switched off", body = Object),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
    ))]
pub async fn stop_agent(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    switch_agent(&state, &name, false)
}

/// The query of `GET /api/manifests`. Unknown parameters are refused.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FullQuery {
    /// Whole records (what the command line reads) as `records`.
    full: bool,
}

/// The objects in the store and the source's status.
///
/// `{"source", "objects"}`: each object's kind, id, name, status (`applied`, `invalid`,
/// ...), source file, applied and attempted revisions, generation, time applied and
/// diagnostics; with `full=true`, `{"source", "records"}` with the whole records.
#[utoipa::path(get, path = "/api/manifests", tag = "manifests",
    params(FullQuery),
    responses(
        (status = 200, description = "The objects", body = Object),
        (status = 400, description = "A query parameter that does not parse or is unknown", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn list_manifests(
    State(state): State<AppState>,
    Query(query): Query<FullQuery>,
) -> ApiResult<Json<Value>> {
    let objects = &state.view.objects().records;
    if query.full {
        return Ok(Json(json!({
            "source": state.store.source_status(state.controller.source_name())?,
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
        "source": state.store.source_status(state.controller.source_name())?,
        "objects": items,
    })))
}

/// The schedules in force.
///
/// `{"jobs": [...]}`, each with `id`, `name`, `schedule` (cron), `workflow_id`,
/// `parameters`, `timezone`, `suspend` and `status`.
#[utoipa::path(get, path = "/api/scheduler/jobs", tag = "manifests", responses(
    (status = 200, description = "The schedules", body = Object),
))]
pub async fn list_jobs(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let objects = state.view.objects();
    let states = crate::scheduler::states(&state.store)?;
    let jobs = crate::scheduler::jobs_json(
        &objects.records,
        &states,
        |run| {
            state
                .store
                .run(run)
                .ok()
                .flatten()
                .map(|r| r.status.as_str().to_owned())
        },
        &state.config.config.scheduler.timezone,
    );
    Ok(Json(json!({"jobs": jobs})))
}

/// The body of `diff`, `apply` and `sync` (optional).
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileBody {
    /// Limit to these paths (relative to the project); all manifest directories when empty.
    #[schema(value_type = Vec<ProjectPath>, inline)]
    paths: Vec<String>,
    /// Remove objects whose manifests are gone.
    prune: Option<bool>,
}

/// A path relative to the project that stays inside it: not absolute, no `..` segment
/// (documentation only: the body holds strings).
struct ProjectPath;

impl utoipa::PartialSchema for ProjectPath {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        const SEGMENT: &str = r"([^/.][^/]*|\.|\.[^/.][^/]*|\.\.[^/]+)";
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "A path relative to the project, without `..` segments (`workflows/smoke.yaml`)",
            ))
            .pattern(Some(format!("^({SEGMENT}(/{SEGMENT}?)*)?$")))
            .into()
    }
}

impl ToSchema for ProjectPath {}

async fn reconcile_request(
    state: AppState,
    headers: HeaderMap,
    body: Bytes,
    dry_run: bool,
    default_prune: bool,
    reason: &'static str,
) -> ApiResult<Json<Value>> {
    let body: ReconcileBody = optional_json(&headers, &body)?;
    if state.controller.git.is_some() && !body.paths.is_empty() {
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
        crate::controller::reconcile(&state.controller, &paths, prune, dry_run, reason).map_err(|err| {
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

/// The answers of `POST /api/diff`, `/api/apply` and `/api/sync`, documented once.
pub struct ReconcileAnswers;

impl utoipa::IntoResponses for ReconcileAnswers {
    fn responses() -> BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder, ResponsesBuilder};
        let answer = |description: &str, schema: Ref| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(schema)).build(),
                )
                .build()
        };
        let error = |description: &str| answer(description, Ref::from_schema_name("ApiError"));
        ResponsesBuilder::new()
            .response(
                "200",
                ResponseBuilder::new()
                    .description(
                        "The reconcile's outcome: the plan (for `diff`, what would change), \
                         counts, diagnostics and revision",
                    )
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(utoipa::openapi::schema::Object::new()))
                            .build(),
                    )
                    .build(),
            )
            .response("400", error("The body is not valid JSON, or a path is absolute, leaves the project, or is given while the server follows a git repository"))
            .response("401", error("An API token is configured and the request does not carry it"))
            .response("404", error("A path does not exist in the project"))
            .response("413", error("The body is over `server.max_body_bytes`"))
            .response("415", error("A body without `Content-Type: application/json`"))
            .response("422", error("A body of the wrong shape"))
            .response("500", error("The reconcile failed (the store, reading the files)"))
            .response("502", error("The git source cannot be fetched; the last good revision stays in force"))
            .build()
            .into()
    }
}

/// What `apply` would change, without changing anything.
///
/// The plan (objects to create, update, delete, unchanged, invalid, kept) with a unified
/// diff per change. `prune` defaults to false.
#[utoipa::path(post, path = "/api/diff", tag = "manifests",
    request_body(content = ReconcileBody, content_type = "application/json",
        description = "Optional: no body means every manifest directory, prune false",
        example = json!({"paths": ["workflows/smoke.yaml"], "prune": false})),
    security(("bearer" = [])),
    responses(ReconcileAnswers),
)]
pub async fn diff(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    reconcile_request(state, headers, body, true, false, "diff").await
}

/// Reconciles the manifests into the store now.
///
/// Valid objects are written in one durable batch; invalid ones keep their last good
/// version. `prune` defaults to false. Publishes `manifest_applied`/`manifest_invalid`.
#[utoipa::path(post, path = "/api/apply", tag = "manifests",
    request_body(content = ReconcileBody, content_type = "application/json",
        description = "Optional: no body means every manifest directory, prune false",
        example = json!({"paths": ["workflows/smoke.yaml"], "prune": false})),
    security(("bearer" = [])),
    responses(ReconcileAnswers),
)]
pub async fn apply(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    reconcile_request(state, headers, body, false, false, "apply").await
}

/// Fetches the source (a git source: its branch) and reconciles, pruning.
///
/// Like `apply` with `prune` defaulting to true; with a git source, the whole repository at
/// the fetched commit. Publishes `sync_completed`.
#[utoipa::path(post, path = "/api/sync", tag = "manifests",
    request_body(content = ReconcileBody, content_type = "application/json",
        description = "Optional: no body means every manifest directory, prune true",
        example = json!({"paths": ["workflows/smoke.yaml"], "prune": false})),
    security(("bearer" = [])),
    responses(ReconcileAnswers),
)]
pub async fn sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    reconcile_request(state, headers, body, false, true, "sync").await
}
