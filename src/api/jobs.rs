//! `POST /api/scheduler/jobs`, the guide's way to create a schedule: the server writes a
//! Schedule manifest into `schedules/` and reconciles it, so the files stay the source of
//! truth (a git-source server refuses and says to commit the file instead).
//!
//! `POST /api/scheduler/jobs/{id}/pause` and `/resume` switch a schedule off and on at run
//! time: a flag in the scheduler's durable state, not in the manifest (a manifest's
//! `suspend: true` holds the schedule whatever the flag says).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::error::ApiError;
use super::handlers::optional_json;
use super::AppState;
use crate::manifest::{slug, Kind};
use crate::store::{ObjectKey, ObjectStatus};

/// The guide's body: `{"name", "schedule", "workflow_id", "parameters"}`.
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJob {
    /// The schedule's name; its id is `sch_` and the name's slug.
    #[serde(default)]
    #[schema(required = true, min_length = 1)]
    name: String,
    /// Crontab expression (`0 2 * * *`); `cron` is accepted too.
    #[serde(alias = "cron", default)]
    #[schema(required = true, min_length = 1)]
    schedule: String,
    /// The workflow to run.
    #[serde(alias = "workflow", default)]
    #[schema(required = true, min_length = 1)]
    workflow_id: String,
    /// Parameters for each run.
    #[serde(default)]
    #[schema(value_type = Object)]
    parameters: Map<String, Value>,
    /// IANA time zone (default from the configuration).
    #[serde(default)]
    timezone: Option<String>,
}

/// Creates a schedule: `201` with it, `409` when one with that id exists, `422` when the
/// manifest would be invalid (nothing is left behind).
#[utoipa::path(post, path = "/api/scheduler/jobs", tag = "manifests",
    request_body(content = CreateJob, description = "The schedule to create"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created and applied", body = Object),
        (status = 400, description = "The body is malformed or a field is missing", body = super::error::ErrorBody),
        (status = 401, description = "The API token is missing or wrong", body = super::error::ErrorBody),
        (status = 409, description = "A schedule with this id exists, or the server follows a git repository", body = super::error::ErrorBody),
        (status = 413, description = "The body is too large", body = super::error::ErrorBody),
        (status = 415, description = "The body is not JSON", body = super::error::ErrorBody),
        (status = 422, description = "The schedule is invalid: the diagnostics say why", body = super::error::ErrorBody),
        (status = 500, description = "Internal error", body = super::error::ErrorBody),
    ))]
pub async fn create_job(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let job: CreateJob = optional_json(&headers, &body)?;
    for (field, value) in [
        ("name", &job.name),
        ("schedule", &job.schedule),
        ("workflow_id", &job.workflow_id),
    ] {
        if value.trim().is_empty() {
            return Err(ApiError::bad_request(format!(
                "`{field}` is required: expected {{\"name\", \"schedule\", \"workflow_id\", \"parameters\"}}"
            ))
            .with_details(json!({"field": field})));
        }
    }
    if let Some(hint) = crate::controller::git::commit_instead_hint(
        &state.config,
        &std::path::Path::new("schedules").join(format!("{}.yaml", slug(&job.name))),
    ) {
        return Err(ApiError::conflict(format!(
            "schedules cannot be created through the API in git-source mode: {hint}"
        )));
    }
    let slug = slug(&job.name);
    if slug.is_empty() {
        return Err(ApiError::bad_request(format!(
            "the name `{}` has no letters or digits to derive an id from",
            job.name
        ))
        .with_details(json!({"field": "name"})));
    }
    let id = format!("sch_{slug}");
    // The file name is cut to fit a file system's limit; the id keeps the whole slug.
    let slug = super::manifest_save::file_stem(&slug).to_owned();
    let key = ObjectKey {
        kind: Kind::Schedule,
        id: id.clone(),
    };
    if state
        .view
        .objects()
        .records
        .get(&key)
        .is_some_and(|r| r.is_live())
    {
        return Err(ApiError::conflict(format!(
            "schedule {id} exists already: edit its manifest, or pick another name"
        )));
    }
    let dir = state.config.project_dir.join("schedules");
    let path = dir.join(format!("{slug}.yaml"));
    if path.exists() {
        return Err(ApiError::conflict(format!(
            "schedules/{slug}.yaml exists already: edit it, or pick another name"
        )));
    }
    let mut manifest = Map::new();
    manifest.insert("kind".into(), Value::from("Schedule"));
    manifest.insert("name".into(), Value::from(job.name.clone()));
    manifest.insert("cron".into(), Value::from(job.schedule.clone()));
    manifest.insert("workflow".into(), Value::from(job.workflow_id.clone()));
    if let Some(timezone) = &job.timezone {
        manifest.insert("timezone".into(), Value::from(timezone.clone()));
    }
    if !job.parameters.is_empty() {
        manifest.insert("parameters".into(), Value::Object(job.parameters.clone()));
    }
    let text = format!(
        "# yaml-language-server: $schema=../schemas/schedule.json\n# Created through POST /api/scheduler/jobs.\n{}",
        crate::reconcile::diff::to_yaml(&Value::Object(manifest))
    );
    let outcome = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        // Checked before anything is written: a schedule that would be invalid leaves no
        // file and no record behind.
        let file = format!(
            "schedules/{}",
            path.file_name().unwrap_or_default().to_string_lossy()
        );
        let diagnostics =
            super::manifest_save::check_new_file(&state, Kind::Schedule, &file, &text)?;
        if diagnostics
            .iter()
            .any(crate::diagnostics::Diagnostic::is_error)
        {
            return Err(ApiError::not_applied(
                diagnostics,
                &file,
                "the schedule is not valid; nothing was created",
                "the schedule was not applied",
            ));
        }
        std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
        std::fs::write(&path, text).map_err(ApiError::internal)?;
        super::manifest_save::put_back_schemas(&state.config.project_dir);
        let outcome = crate::controller::reconcile(&state.controller, &[], true, false, "api")?;
        let record = state.store.object(&key)?;
        let applied = record
            .as_ref()
            .is_some_and(|r| r.is_live() && r.status == ObjectStatus::Applied);
        if !applied {
            // Nothing is left behind: the file goes, and the reconcile forgets it.
            let _ = std::fs::remove_file(&path);
            let _ = crate::controller::reconcile(&state.controller, &[], true, false, "api");
            let file = format!(
                "schedules/{}",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            return Err(ApiError::not_applied(
                outcome.diagnostics,
                &file,
                "the schedule is not valid; nothing was created",
                "the schedule was not applied",
            ));
        }
        Ok(record)
    })
    .await
    .map_err(ApiError::internal)??;
    let spec = outcome.and_then(|r| r.spec).unwrap_or_default();
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, "/api/scheduler/jobs".to_owned())],
        Json(json!({
            "id": id,
            "name": job.name,
            "schedule": spec.get("cron").cloned().unwrap_or(Value::Null),
            "workflow_id": spec.get("workflow").cloned().unwrap_or(Value::Null),
            "parameters": spec.get("parameters").cloned().unwrap_or(json!({})),
            "timezone": spec.get("timezone").cloned().unwrap_or(Value::Null),
            "file": format!("schedules/{slug}.yaml"),
        })),
    )
        .into_response())
}

/// Pauses a schedule: it fires nothing until resumed, across restarts too. `paused` in the
/// answer (and in `GET /api/scheduler/jobs`) is this switch; `suspend` is the manifest's.
#[utoipa::path(post, path = "/api/scheduler/jobs/{id}/pause", tag = "manifests",
    params(("id" = String, Path, description = "The schedule's id (`sch_...`) or name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Paused (or paused already): the schedule as `GET /api/scheduler/jobs` lists it", body = Object),
        (status = 401, description = "The API token is missing or wrong", body = super::error::ErrorBody),
        (status = 404, description = "No such schedule (the message suggests close ids)", body = super::error::ErrorBody),
        (status = 500, description = "Internal error", body = super::error::ErrorBody),
    ))]
pub async fn pause_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    switch_job(state, id, true).await
}

/// Resumes a paused schedule: it is next due at its expression's first instant from now;
/// what was due while it was paused is not caught up.
#[utoipa::path(post, path = "/api/scheduler/jobs/{id}/resume", tag = "manifests",
    params(("id" = String, Path, description = "The schedule's id (`sch_...`) or name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Resumed (or not paused): the schedule as `GET /api/scheduler/jobs` lists it", body = Object),
        (status = 401, description = "The API token is missing or wrong", body = super::error::ErrorBody),
        (status = 404, description = "No such schedule (the message suggests close ids)", body = super::error::ErrorBody),
        (status = 500, description = "Internal error", body = super::error::ErrorBody),
    ))]
pub async fn resume_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    switch_job(state, id, false).await
}

/// Sets the pause switch durably, then answers with the schedule as listed.
async fn switch_job(state: AppState, given: String, paused: bool) -> Result<Json<Value>, ApiError> {
    tokio::task::spawn_blocking(move || {
        let objects = state.view.objects();
        let zone = &state.config.config.scheduler.timezone;
        let id = crate::scheduler::set_paused(
            &state.store,
            &state.schedule_lock,
            &objects.records,
            &given,
            paused,
            zone,
        )
        .map_err(|err| match err {
            crate::scheduler::PauseError::NotFound { .. } => ApiError::not_found(err.to_string()),
            crate::scheduler::PauseError::Store(err) => ApiError::internal(err),
        })?;
        let states = crate::scheduler::states(&state.store)?;
        let job = crate::scheduler::jobs_json(
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
            zone,
        )
        .into_iter()
        .find(|job| job["id"] == id.as_str())
        .ok_or_else(|| ApiError::not_found(format!("schedule `{id}` is gone")))?;
        Ok(Json(job))
    })
    .await
    .map_err(ApiError::internal)?
}
