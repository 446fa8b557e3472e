//! The HTTP API: JSON routes under `/api`, `/ws`, `/metrics`, `/healthz`, `/readyz`, and the
//! published JSON Schemas under `/schemas/`. Every
//! error is `{"error": {"code", "message", "details"}}` with the right 4xx or 5xx status;
//! request bodies are size-limited and must be JSON where JSON is expected. Every request
//! passes the [`guard`] first (Host, Origin, the API token, Content-Type). Each route is
//! declared once, by its handler's `#[utoipa::path]`, and registered through
//! `utoipa-axum`'s router, which gives both the axum router ([`router`]) and the OpenAPI 3.1
//! document ([`openapi()`], served at `GET /api/openapi.json`); `GET /api` lists the routes
//! from that document.

mod agent_metrics;
mod agent_runs;
mod alert_rules;
mod alerts;
mod assets;
mod error;
pub mod guard;
mod handlers;
pub mod hooks;
mod jobs;
mod manifest_save;
mod monitor;
pub mod openapi;
pub mod quarantine;
mod reports;
mod schemas;
mod source_hook;
pub mod state;
pub mod test_history;
mod triggers;
mod workers;
pub mod ws;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

pub use error::{ApiError, ApiJson, ErrorBody};

pub use state::{App, AppState};

/// What the routes keep between requests, for as long as the server runs (the app state
/// holds it).
pub struct RouteState {
    /// One manifest save at a time: validate, write and reconcile are one step.
    saving: Mutex<()>,
    /// The live triggers, compiled from their records.
    triggers: hooks::CompiledTriggers,
    /// The webhook bodies being read, all deliveries together (see
    /// [`hooks::BODY_BUDGET_BYTES`]).
    body_budget: Arc<tokio::sync::Semaphore>,
    /// The keys of delivery records, and the deliveries counted per trigger.
    deliveries: crate::triggers::deliveries::Deliveries,
    /// Accepted deliveries waiting to be written, in batches, with their runs.
    intake: crate::triggers::intake::Intake,
    /// The OpenAPI document, and the route list read from it.
    published: openapi::Published,
}

impl Default for RouteState {
    fn default() -> RouteState {
        RouteState {
            saving: Mutex::default(),
            triggers: hooks::CompiledTriggers::default(),
            body_budget: hooks::body_budget(),
            deliveries: crate::triggers::deliveries::Deliveries::default(),
            intake: crate::triggers::intake::Intake::default(),
            published: openapi::Published::new(),
        }
    }
}

/// Every route with its OpenAPI operation, declared once: each handler's
/// `#[utoipa::path]` names its method and path, and `routes!` hands both to the router and
/// to the document, so [`router`], [`openapi()`] and `GET /api` cannot disagree. In the
/// order `GET /api` lists them. Axum's catch-all `{*name}` is OpenAPI's `{name}` (see
/// [`openapi::finish`]).
///
/// `state` is for the layers that hold it (the trigger webhooks' guard); the document alone
/// is built without.
fn declared(state: Option<&AppState>) -> OpenApiRouter<AppState> {
    // Webhook triggers (`/hooks/source`, being static, wins over this): their own secrets,
    // and up to 25 MB whatever `server.max_body_bytes` says.
    let trigger_hooks =
        routes!(hooks::receive).layer(DefaultBodyLimit::max(crate::triggers::MAX_DELIVERY_BYTES));
    let trigger_hooks = match state {
        Some(state) => trigger_hooks.layer(middleware::from_fn_with_state(
            Arc::clone(state),
            hooks::guard,
        )),
        None => trigger_hooks,
    };
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(handlers::healthz))
        .routes(routes!(handlers::readyz))
        .routes(routes!(handlers::metrics))
        .routes(routes!(ws::upgrade))
        .routes(routes!(handlers::index))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(handlers::status))
        .routes(routes!(handlers::list_workflows))
        .routes(routes!(handlers::show_workflow))
        .routes(routes!(agent_metrics::workflow_metrics))
        .routes(routes!(reports::workflow_trends))
        .routes(routes!(handlers::execute_workflow))
        .routes(routes!(handlers::list_runs))
        .routes(routes!(handlers::show_run))
        .routes(routes!(handlers::run_log))
        .routes(routes!(reports::run_artifact))
        .routes(routes!(handlers::cancel_run))
        .routes(routes!(handlers::rerun))
        .routes(routes!(handlers::list_agents))
        .routes(routes!(handlers::show_agent))
        .routes(routes!(agent_metrics::agent_metrics))
        .routes(routes!(agent_runs::agent_executions))
        .routes(routes!(handlers::start_agent))
        .routes(routes!(handlers::stop_agent))
        .routes(routes!(test_history::list))
        .routes(routes!(test_history::show))
        .routes(routes!(workers::list_workers))
        .routes(routes!(workers::show_worker))
        .routes(routes!(workers::drain_worker))
        .routes(routes!(workers::resume_worker))
        .routes(routes!(handlers::list_manifests, manifest_save::save))
        .routes(routes!(manifest_save::validate))
        .routes(routes!(quarantine::list))
        .routes(routes!(alert_rules::validate_condition))
        .routes(routes!(manifest_save::list_dashboards))
        .routes(routes!(manifest_save::show_dashboard))
        .routes(routes!(manifest_save::agent_types))
        .routes(routes!(handlers::list_jobs, jobs::create_job))
        .routes(routes!(jobs::pause_job))
        .routes(routes!(jobs::resume_job))
        .routes(routes!(handlers::diff))
        .routes(routes!(handlers::apply))
        .routes(routes!(handlers::sync))
        // A webhook proves itself by its signature: the guard lets `/hooks/` through.
        .routes(routes!(source_hook::receive))
        .routes(routes!(triggers::list_triggers))
        .routes(routes!(triggers::show_trigger))
        .routes(routes!(triggers::list_deliveries))
        .routes(trigger_hooks)
        .routes(routes!(alerts::list_alerts))
        .routes(routes!(alerts::show_alert))
        .routes(routes!(alert_rules::alert_manifest))
        .routes(routes!(alert_rules::notification_channels))
        .routes(routes!(alerts::list_silences, alerts::create_silence))
        .routes(routes!(alerts::expire_silence))
        .routes(routes!(monitor::system_metrics))
        .routes(routes!(assets::index))
        .routes(routes!(assets::asset))
        .routes(routes!(schemas::published_schema))
}

/// The OpenAPI document of every route of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, document) = declared(None).split_for_parts();
    openapi::finish(document)
}

/// Every route as (method, path), in the order `GET /api` lists them: read from the
/// document, so from the routes themselves.
pub fn routes() -> Vec<(&'static str, String)> {
    openapi::operations(&openapi())
}

/// The router with every route, behind the request guard (Host, Origin, API token,
/// Content-Type: see [`guard`]).
pub fn router(state: AppState, guard: Arc<guard::Guard>) -> Router {
    let max_body = state.config.config.server.max_body_bytes as usize;
    let (routes, _) = declared(Some(&state)).split_for_parts();
    routes
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        // Inside the guard: a refused request's body is never read.
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            body_deadline,
        ))
        // Before any handler, and before the router's own 404 and 405.
        .layer(middleware::from_fn_with_state(guard, guard::guard))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            json_errors,
        ))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            access_log,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Reads a request's body whole within `server.body_read_timeout` before its handler runs:
/// a client that sends its body a byte at a time keeps its connection busy, so neither the
/// header-read nor the idle timeout would ever end it. Too slow → 408 and the connection
/// closes; over `server.max_body_bytes` → 413. Requests without a body (`GET`, `HEAD`,
/// `/ws`) pass as they are, and so do webhook deliveries to triggers, which take their
/// share of the body budget first and read their bodies under the same deadline.
async fn body_deadline(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue, Method};
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let path = request.uri().path();
    let bodiless = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if bodiless || (path.starts_with("/hooks/") && path != "/hooks/source") {
        return next.run(request).await;
    }
    let server = &state.config.config.server;
    let (timeout, max) = (server.body_read_timeout(), server.max_body_bytes);
    let (parts, body) = request.into_parts();
    let read = async {
        let mut buffer = Vec::new();
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|err| {
                ApiError::bad_request(format!("the request's body could not be read: {err}"))
            })?;
            if (buffer.len() + chunk.len()) as u64 > max {
                return Err(ApiError::payload_too_large(max));
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer)
    };
    let failed = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(bytes)) => {
            let request = Request::from_parts(parts, axum::body::Body::from(bytes));
            return next.run(request).await;
        }
        Ok(Err(error)) => error,
        Err(_) => ApiError::body_timeout(timeout),
    };
    // The rest of the body is never read: the connection cannot serve another request.
    let mut response = failed.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Keeps the promise that every error is JSON. The extractors of axum answer on their own
/// before a handler runs — a query string that does not parse, a body over
/// `server.max_body_bytes`, a path segment that is not UTF-8, `/ws` without an upgrade —
/// with a plain-text body; such an answer is rewritten into the `{"error": ...}` shape, its
/// status and headers kept and its text as the message.
async fn json_errors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
    use axum::response::IntoResponse;
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection texts are a line or two; anything longer is cut.
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
        .unwrap_or_default();
    let error = if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(state.config.config.server.max_body_bytes)
    } else {
        ApiError::from_status(status, text)
    };
    let mut rewritten = error.into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            rewritten.headers_mut().append(name.clone(), value.clone());
        }
    }
    rewritten
}

/// One line per request in `logs/api.log`: time, method, path (no query string, which may
/// carry secrets), status, duration.
async fn access_log(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let status = response.status();
    state
        .metrics
        .record_request(method.as_str(), status.as_u16());
    if status.is_server_error() {
        state.metrics.http_errors.inc();
    }
    state.log_request(&format!(
        "{method} {path} {} {:.1}ms",
        status.as_u16(),
        started.elapsed().as_secs_f64() * 1e3
    ));
    response
}
