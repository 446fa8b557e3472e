//! `GET /api/workers`, `GET /api/workers/{name}`, `POST /api/workers/{name}/drain` and
//! `POST /api/workers/{name}/resume`: the workers of this controller as its registry
//! knows them (every worker that ever registered, `up` or `lost`), and the control
//! messages that drain and resume one. Without workers configured the list says
//! `"enabled": false` and the controls answer 409 `workers_disabled`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::workers::protocol::{self, Control};
use crate::workers::registry::{Registry, WorkerState, WorkerView};

/// How long drain and resume wait for the worker's next record to show the change before
/// they answer with what is known.
const CONFIRM_WAIT: Duration = Duration::from_secs(3);

/// The workers of this controller.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    /// Whether this server dispatches steps to workers (`--nats` or `distributed.nats`);
    /// without, `workers` is empty.
    enabled: bool,
    /// The lease: a worker whose record is not renewed within it is `lost`.
    lease_ms: Option<u64>,
    /// Every worker that registered, by name.
    workers: Vec<WorkerView>,
}

/// The workers that registered with this controller, `up` or `lost`.
///
/// Each: name, labels, slots, the attempts it runs (run id, step, attempt), whether it is
/// draining, version, host, pid, when it started, attempts finished, the age of its last
/// heartbeat, and `state`. Without workers configured: `{"enabled": false, "workers": []}`.
#[utoipa::path(get, path = "/api/workers", tag = "workers",
    responses(
        (status = 200, description = "The workers", body = WorkerList, example = json!({
            "enabled": true, "lease_ms": 15000, "workers": [{
                "name": "rig-07", "labels": {"os": "linux", "browser": "chromium"}, "slots": 4,
                "running": [{"key": "run_01J.2.1", "run_id": "run_01J", "step": "e2e", "attempt": 1}],
                "draining": false, "version": "0.1.0", "host": "rig-07", "pid": 4242,
                "started_at": "2026-01-01T10:00:00.000Z", "finished": 12,
                "heartbeat_age_ms": 1800, "state": "up", "first_seen": "2026-01-01T10:00:00.120Z"}]})),
    ))]
pub async fn list_workers(State(state): State<AppState>) -> Json<WorkerList> {
    Json(match &state.worker_registry {
        Some(registry) => WorkerList {
            enabled: true,
            lease_ms: Some(registry.lease().as_millis() as u64),
            workers: registry.list(),
        },
        None => WorkerList {
            enabled: false,
            lease_ms: None,
            workers: Vec::new(),
        },
    })
}

/// One worker.
#[utoipa::path(get, path = "/api/workers/{name}", tag = "workers",
    params(("name" = String, Path, description = "The worker's name: 1 to 64 letters, digits, `-` or `_`",
        pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    responses(
        (status = 200, description = "The worker", body = WorkerView),
        (status = 400, description = "Not a worker name (letters, digits, `-`, `_`)", body = ErrorBody),
        (status = 404, description = "No such worker has registered, or workers are not enabled", body = ErrorBody),
    ))]
pub async fn show_worker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<WorkerView>, ApiError> {
    let registry = registry(&state, &name, "show").map_err(|err| {
        if err.code == "workers_disabled" {
            ApiError::not_found(err.message)
        } else {
            err
        }
    })?;
    Ok(Json(find(registry, &name)?))
}

/// Drains a worker: it finishes the attempts it runs and takes no new ones.
///
/// Sends `drain` on its control subject and answers 202 with the worker, once its next
/// record shows it draining (or after 3 s, as known then). Publishes `worker_drained`.
#[utoipa::path(post, path = "/api/workers/{name}/drain", tag = "workers",
    params(("name" = String, Path, description = "The worker's name: 1 to 64 letters, digits, `-` or `_`",
        pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Told to drain; the worker as known after", body = WorkerView),
        (status = 400, description = "Not a worker name", body = ErrorBody),
        (status = 404, description = "No such worker has registered", body = ErrorBody),
        (status = 409, description = "Workers are not enabled (`workers_disabled`), or the worker is lost (`worker_lost`)", body = ErrorBody),
    ))]
pub async fn drain_worker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let worker = steer(&state, &name, Control::Drain).await?;
    Ok((StatusCode::ACCEPTED, Json(worker)).into_response())
}

/// Resumes a drained worker: it takes work again.
///
/// Sends `resume` on its control subject and answers with the worker, once its next
/// record shows it taking work (or after 3 s, as known then). Publishes `worker_resumed`.
#[utoipa::path(post, path = "/api/workers/{name}/resume", tag = "workers",
    params(("name" = String, Path, description = "The worker's name: 1 to 64 letters, digits, `-` or `_`",
        pattern = r"^[A-Za-z0-9_-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Told to resume; the worker as known after", body = WorkerView),
        (status = 400, description = "Not a worker name", body = ErrorBody),
        (status = 404, description = "No such worker has registered", body = ErrorBody),
        (status = 409, description = "Workers are not enabled (`workers_disabled`), or the worker is lost (`worker_lost`)", body = ErrorBody),
    ))]
pub async fn resume_worker(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<WorkerView>, ApiError> {
    Ok(Json(steer(&state, &name, Control::Resume).await?))
}

/// The registry, after the name is checked: 400 for a name no worker can have, 409
/// `workers_disabled` without workers.
fn registry<'a>(state: &'a AppState, name: &str, what: &str) -> Result<&'a Registry, ApiError> {
    if !protocol::valid_worker_name(name) {
        return Err(ApiError::bad_request(format!(
            "`{name}` is not a worker name: expected 1 to 64 letters, digits, `-` or `_`"
        ))
        .with_details(json!({"field": "name"})));
    }
    state.worker_registry.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "workers_disabled",
            format!(
                "cannot {what} worker `{name}`: this server runs every step itself; workers need `orchestrator start --nats URL` or `distributed.nats` in the configuration"
            ),
        )
    })
}

fn find(registry: &Registry, name: &str) -> Result<WorkerView, ApiError> {
    if let Some(worker) = registry.get(name) {
        return Ok(worker);
    }
    let names: Vec<String> = registry.list().into_iter().map(|w| w.worker.name).collect();
    let hint = crate::util::did_you_mean(name, names.iter().map(String::as_str))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(ApiError::not_found(format!(
        "no worker `{name}` has registered{hint} (`GET /api/workers` lists them)"
    )))
}

/// Sends a control message to a live worker and waits for its record to show it.
async fn steer(state: &AppState, name: &str, control: Control) -> Result<WorkerView, ApiError> {
    let what = if control == Control::Drain {
        "drain"
    } else {
        "resume"
    };
    let registry = registry(state, name, what)?;
    let worker = find(registry, name)?;
    if worker.state == WorkerState::Lost {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "worker_lost",
            format!(
                "cannot {what} worker `{name}`: it is lost (no heartbeat for {}), so it would not hear it",
                crate::duration::format_duration(registry.lease())
            ),
        ));
    }
    let Some(dispatcher) = state.workers.as_ref().map(Arc::clone) else {
        return Err(ApiError::internal("a worker registry without a dispatcher"));
    };
    let target = name.to_owned();
    let message = control.clone();
    tokio::task::spawn_blocking(move || dispatcher.control(&target, &message))
        .await
        .map_err(ApiError::internal)?
        .map_err(|err| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "nats_unavailable",
                format!("cannot reach worker `{name}` over NATS: {err}"),
            )
        })?;
    let draining = control == Control::Drain;
    let seen = registry
        .wait_for(name, CONFIRM_WAIT, |w| w.worker.draining == draining)
        .await;
    Ok(seen.unwrap_or(worker))
}

/// The workers' part of `/metrics`: per worker, its running attempts, slots, heartbeat
/// age and whether it is up; the dispatcher's counters. Empty without workers.
pub fn prometheus(state: &AppState) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let (Some(registry), Some(dispatcher)) = (&state.worker_registry, &state.workers) else {
        return String::new();
    };
    let workers = registry.list();
    let mut scrape = crate::monitor::metrics::Scrape::default();
    let per_worker = |value: fn(&WorkerView) -> Option<f64>| {
        workers
            .iter()
            .map(move |w| (w.worker.name.clone(), value(w)))
            .collect::<Vec<_>>()
    };
    scrape
        .gauge_family(
            "orchestrator_worker_up",
            "Whether a worker renews its record within the lease (1) or is lost (0).",
            "worker",
            per_worker(|w| Some(if w.state == WorkerState::Up { 1.0 } else { 0.0 })),
        )
        .gauge_family(
            "orchestrator_worker_slots",
            "Step attempts a worker runs at once.",
            "worker",
            per_worker(|w| Some(f64::from(w.worker.slots))),
        )
        .gauge_family(
            "orchestrator_worker_running_attempts",
            "Step attempts a worker runs now.",
            "worker",
            per_worker(|w| Some(w.worker.running.len() as f64)),
        )
        .gauge_family(
            "orchestrator_worker_heartbeat_age_seconds",
            "Seconds since a worker's last heartbeat was seen.",
            "worker",
            per_worker(|w| w.heartbeat_age_ms.map(|ms| ms as f64 / 1000.0)),
        );
    let counters = dispatcher.counters();
    for (name, help, value) in [
        (
            "orchestrator_worker_attempts_published_total",
            "Step attempts published for workers.",
            &counters.published,
        ),
        (
            "orchestrator_worker_claims_granted_total",
            "Claims of attempts granted to workers.",
            &counters.granted,
        ),
        (
            "orchestrator_worker_claims_refused_total",
            "Claims of attempts refused (already claimed, or no longer waiting).",
            &counters.refused,
        ),
        (
            "orchestrator_worker_reports_stale_total",
            "Worker reports dropped for a fencing token that was not current.",
            &counters.stale,
        ),
        (
            "orchestrator_worker_attempts_lost_total",
            "Attempts whose worker sent no heartbeat for the lease.",
            &counters.lost,
        ),
        (
            "orchestrator_worker_queue_timeouts_total",
            "Attempts no worker took within their queue timeout.",
            &counters.queue_timeouts,
        ),
        (
            "orchestrator_worker_log_gaps_total",
            "Log chunks of remote attempts missing when they finished.",
            &counters.log_gaps,
        ),
    ] {
        scrape.figure(name, help, value.load(Relaxed) as f64);
    }
    scrape.render()
}
