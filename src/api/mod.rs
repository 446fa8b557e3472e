//! The HTTP API: JSON routes under `/api`, `/ws`, `/metrics`, `/healthz`, `/readyz`, and the
//! published JSON Schemas under `/schemas/`. Every
//! error is `{"error": {"code", "message", "details"}}` with the right 4xx or 5xx status;
//! request bodies are size-limited and must be JSON where JSON is expected. Every request
//! passes the [`guard`] first (Host, Origin, the API token, Content-Type). The OpenAPI 3.1
//! document of all of it is generated from the handlers ([`ApiDoc`]) and served at
//! `GET /api/openapi.json`.

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
mod reports;
mod schemas;
mod source_hook;
pub mod state;
mod triggers;
pub mod ws;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;

pub use error::{ApiError, ApiJson};
pub use openapi::ApiDoc;

pub use state::{App, AppState};

/// Every route, as (method, path) — the OpenAPI test and `/api` index read this.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/ws"),
    ("GET", "/api"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/status"),
    ("GET", "/api/workflows"),
    ("GET", "/api/workflows/{id}"),
    ("GET", "/api/workflows/{id}/metrics"),
    ("GET", "/api/workflows/{id}/trends"),
    ("POST", "/api/workflows/{id}/execute"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/{id}"),
    ("GET", "/api/runs/{id}/logs/{step}"),
    ("GET", "/api/runs/{id}/artifacts/{path}"),
    ("POST", "/api/runs/{id}/cancel"),
    ("POST", "/api/runs/{id}/rerun"),
    ("GET", "/api/agents"),
    ("GET", "/api/agents/{name}"),
    ("GET", "/api/agents/{name}/metrics"),
    ("GET", "/api/agents/{name}/executions"),
    ("POST", "/api/agents/{name}/start"),
    ("POST", "/api/agents/{name}/stop"),
    ("GET", "/api/manifests"),
    ("POST", "/api/manifests"),
    ("POST", "/api/validate"),
    ("POST", "/api/validate/condition"),
    ("GET", "/api/dashboards"),
    ("GET", "/api/dashboards/{id}"),
    ("GET", "/api/agent-types"),
    ("GET", "/api/scheduler/jobs"),
    ("POST", "/api/scheduler/jobs"),
    ("POST", "/api/scheduler/jobs/{id}/pause"),
    ("POST", "/api/scheduler/jobs/{id}/resume"),
    ("POST", "/api/diff"),
    ("POST", "/api/apply"),
    ("POST", "/api/sync"),
    ("POST", "/hooks/source"),
    ("GET", "/api/triggers"),
    ("GET", "/api/triggers/{id}"),
    ("GET", "/api/triggers/{id}/deliveries"),
    ("POST", "/hooks/{path}"),
    ("GET", "/api/alerts"),
    ("GET", "/api/alerts/{id}"),
    ("GET", "/api/alerts/{id}/manifest"),
    ("GET", "/api/notification-channels"),
    ("GET", "/api/silences"),
    ("POST", "/api/silences"),
    ("DELETE", "/api/silences/{id}"),
    ("GET", "/api/system/metrics"),
    ("GET", "/"),
    ("GET", "/assets/{path}"),
    ("GET", "/schemas/{file}"),
];

/// The router with every route, behind the request guard (Host, Origin, API token,
/// Content-Type: see [`guard`]).
pub fn router(state: AppState, guard: Arc<guard::Guard>) -> Router {
    let max_body = state.config.config.server.max_body_bytes as usize;
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/ws", get(ws::upgrade))
        .route("/api", get(handlers::index))
        .route("/api/openapi.json", get(openapi::openapi_json))
        .route("/api/status", get(handlers::status))
        .route("/api/workflows", get(handlers::list_workflows))
        .route("/api/workflows/{id}", get(handlers::show_workflow))
        .route(
            "/api/workflows/{id}/metrics",
            get(agent_metrics::workflow_metrics),
        )
        .route(
            "/api/workflows/{id}/execute",
            post(handlers::execute_workflow),
        )
        .route("/api/runs", get(handlers::list_runs))
        .route("/api/runs/{id}", get(handlers::show_run))
        .route("/api/runs/{id}/logs/{step}", get(handlers::run_log))
        .route(
            "/api/runs/{id}/artifacts/{*path}",
            get(reports::run_artifact),
        )
        .route("/api/workflows/{id}/trends", get(reports::workflow_trends))
        .route("/api/runs/{id}/cancel", post(handlers::cancel_run))
        .route("/api/runs/{id}/rerun", post(handlers::rerun))
        .route("/api/agents", get(handlers::list_agents))
        .route("/api/agents/{name}", get(handlers::show_agent))
        .route(
            "/api/agents/{name}/metrics",
            get(agent_metrics::agent_metrics),
        )
        .route(
            "/api/agents/{name}/executions",
            get(agent_runs::agent_executions),
        )
        .route("/api/agents/{name}/start", post(handlers::start_agent))
        .route("/api/agents/{name}/stop", post(handlers::stop_agent))
        .route(
            "/api/manifests",
            get(handlers::list_manifests).post(manifest_save::save),
        )
        .route("/api/validate", post(manifest_save::validate))
        .route(
            "/api/validate/condition",
            post(alert_rules::validate_condition),
        )
        .route("/api/dashboards", get(manifest_save::list_dashboards))
        .route("/api/dashboards/{id}", get(manifest_save::show_dashboard))
        .route("/api/agent-types", get(manifest_save::agent_types))
        .route(
            "/api/scheduler/jobs",
            get(handlers::list_jobs).post(jobs::create_job),
        )
        .route("/api/scheduler/jobs/{id}/pause", post(jobs::pause_job))
        .route("/api/scheduler/jobs/{id}/resume", post(jobs::resume_job))
        .route("/api/diff", post(handlers::diff))
        .route("/api/apply", post(handlers::apply))
        .route("/api/sync", post(handlers::sync))
        .route("/api/triggers", get(triggers::list_triggers))
        .route("/api/triggers/{id}", get(triggers::show_trigger))
        .route(
            "/api/triggers/{id}/deliveries",
            get(triggers::list_deliveries),
        )
        .route("/api/system/metrics", get(monitor::system_metrics))
        .route("/api/alerts", get(alerts::list_alerts))
        .route("/api/alerts/{id}", get(alerts::show_alert))
        .route(
            "/api/alerts/{id}/manifest",
            get(alert_rules::alert_manifest),
        )
        .route(
            "/api/notification-channels",
            get(alert_rules::notification_channels),
        )
        .route(
            "/api/silences",
            get(alerts::list_silences).post(alerts::create_silence),
        )
        .route("/api/silences/{id}", delete(alerts::expire_silence))
        .route("/", get(assets::index))
        .route("/assets/{*path}", get(assets::asset))
        .route("/schemas/{file}", get(schemas::published_schema))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        // A webhook proves itself by its signature: the guard lets `/hooks/` through.
        .route("/hooks/source", post(source_hook::receive))
        // Webhook triggers (`/hooks/source` above, being static, wins over this): their
        // own secrets, and up to 25 MB whatever `server.max_body_bytes` says.
        .route(
            "/hooks/{*path}",
            post(hooks::receive)
                .layer(DefaultBodyLimit::max(crate::triggers::MAX_DELIVERY_BYTES))
                .layer(middleware::from_fn_with_state(
                    Arc::clone(&state),
                    hooks::guard,
                )),
        )
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
