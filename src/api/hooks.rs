//! `POST /hooks/{*path}`: webhook deliveries for the Trigger objects in force (the static
//! `/hooks/source` route, the git source's own webhook, wins over this one).
//!
//! A delivery goes to every live trigger whose `path` it names. For each: the signature is
//! checked (`X-Hub-Signature-256`, a generic provider's header, or a bearer token; with no
//! secret, the API token when one is configured), then `ping`, the filters and the
//! parameters; an accepted delivery goes to [`crate::triggers::intake`], which claims its id,
//! records it and creates its run in one atomic write, in a batch with the other
//! deliveries waiting, so a redelivery — after a restart too — runs nothing. Every outcome
//! is recorded for `trigger deliveries`. The answer comes once the batch is flushed: `202`
//! with the runs started (they go on in their own threads), `200` for a ping, a duplicate or a delivery no filter lets
//! through (saying why), `401` when no trigger accepts the signature, `404` when no trigger
//! has the path, `413` over 25 MB.
//!
//! Bodies are buffered under a budget shared by every delivery being received
//! ([`BODY_BUDGET_BYTES`], two of the largest): a body cannot be checked before it is read,
//! so without it a sender needing no secret could make the server hold eight 24 MB bodies
//! at once. A delivery that would go over it is answered `503` with `Retry-After` before
//! any of its body is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Map, Value};
use tokio::sync::Semaphore;

use super::error::ErrorBody;
use super::App;
use super::{ApiError, AppState};
use crate::engine::run::RunRequest;
use crate::manifest::Kind;
use crate::model::Trigger;
use crate::store::ObjectRecord;
use crate::triggers::deliveries::{self, Seen};
use crate::triggers::intake::{Acceptance, Accepted};
use crate::triggers::{
    template_context, DeliveryRecord, DeliveryResult, TriggerSpec, HOOKS_PREFIX, MAX_DELIVERY_BYTES,
};

/// The live triggers, compiled once per version of their spec.
pub fn live_triggers(state: &App) -> Vec<Arc<TriggerSpec>> {
    state
        .view
        .objects()
        .records
        .values()
        .filter(|r| r.key.kind == Kind::Trigger && r.is_live())
        .filter_map(|record| state.routes.triggers.compiled(record))
        .collect()
}

/// Trigger records as the receiver uses them, by id: a record is compiled again only when
/// its spec's hash or its name changes.
#[derive(Debug, Default)]
pub struct CompiledTriggers(Mutex<HashMap<String, CompiledTrigger>>);

/// A trigger compiled, with the spec hash and the name it was compiled from.
#[derive(Debug)]
struct CompiledTrigger {
    hash: Option<String>,
    name: String,
    spec: Arc<TriggerSpec>,
}

impl CompiledTriggers {
    /// The most kept; beyond it the cache starts over.
    const MAX: usize = 10_000;

    /// `record` compiled, or `None` (logged) when its spec does not compile.
    fn compiled(&self, record: &ObjectRecord) -> Option<Arc<TriggerSpec>> {
        let mut cache = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(compiled) = cache.get(&record.key.id) {
            if compiled.hash == record.hash && compiled.name == record.name {
                return Some(Arc::clone(&compiled.spec));
            }
        }
        match TriggerSpec::from_spec(
            &record.key.id,
            &record.name,
            record.spec.as_deref().unwrap_or(&Value::Null),
        ) {
            Ok(spec) => {
                let spec = Arc::new(spec);
                if cache.len() > Self::MAX {
                    cache.clear();
                }
                cache.insert(
                    record.key.id.clone(),
                    CompiledTrigger {
                        hash: record.hash.clone(),
                        name: record.name.clone(),
                        spec: Arc::clone(&spec),
                    },
                );
                Some(spec)
            }
            Err(err) => {
                tracing::warn!(trigger = %record.key.id, "trigger ignored: {err}");
                None
            }
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Receives a webhook delivery for the triggers listening on `/hooks/<path>`.
///
/// Every trigger with that path checks the signature (GitHub: `X-Hub-Signature-256`, the
/// HMAC-SHA256 of the raw body under the trigger's secret; generic: its
/// `signature_header`, or `Authorization: Bearer <secret>`; a trigger without a secret
/// needs the API token when the server has one), then its filters (`X-GitHub-Event`,
/// the payload's `action`, the branch, the changed paths). The delivery id
/// (`X-GitHub-Delivery`, which a GitHub delivery must carry) is remembered: a redelivery
/// runs nothing. Outside the bearer-token layer; bodies up to 25 MB.
#[utoipa::path(post, path = "/hooks/{*path}", tag = "triggers", operation_id = "receive_webhook",
    params(
        ("path" = String, Path, description = "The trigger's path after `/hooks/` (it may contain `/`)"),
        ("X-GitHub-Event" = Option<String>, Header, description = "The event (GitHub); `ping` is answered without a run"),
        ("X-GitHub-Delivery" = Option<String>, Header, description = "The delivery id (GitHub: required), deduplicated"),
    ),
    request_body(content = Value, content_type = "application/json",
        description = "The delivery's payload, signed as it is sent",
        example = json!({"ref": "refs/heads/main", "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
            "commits": [{"added": ["README.md"], "modified": [], "removed": []}]})),
    security(("trigger_signature" = []), ("trigger_token" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "Runs started (one per matching trigger); they go on asynchronously", body = Object,
            example = json!({"status": "accepted", "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "event": "push",
                "runs": [{"trigger": "trg_github-push", "run_id": "run_01jd8y2c3x4v5b6n7m8k9j0h1g"}], "skipped": []})),
        (status = 200, description = "A `ping` (`status: pong`), a delivery seen before (`status: duplicate`, with the earlier run), or one no trigger's filters let through (`status: filtered`, with the reasons)",
            body = Object, example = json!({"status": "filtered", "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958", "event": "pull_request", "runs": [],
                "skipped": [{"trigger": "trg_github-push", "result": "filtered", "reason": "action `closed` is not one of the trigger's actions: opened, synchronize"}]})),
        (status = 400, description = "The body is not JSON, or a GitHub delivery has no `X-GitHub-Delivery`", body = ErrorBody),
        (status = 401, description = "The signature (or token) is missing or does not match for every trigger of the path", body = ErrorBody),
        (status = 404, description = "No trigger listens on this path", body = ErrorBody),
        (status = 413, description = "The body is over 25 MB", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `server.body_read_timeout` (30 s)", body = ErrorBody),
        (status = 415, description = "A form-encoded body: set the webhook's content type to application/json", body = ErrorBody),
        (status = 422, description = "The run could not be started (parameters the workflow refuses, a workflow gone)", body = ErrorBody),
        (status = 500, description = "The store failed", body = ErrorBody),
        (status = 503, description = "Too many bodies are being received at once (retry after `Retry-After` seconds), or the trigger's secret is not available (the server's log says why)", body = ErrorBody),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = read_body(
        &headers,
        body,
        state.config.config.server.body_read_timeout(),
    )
    .await?;
    let path = format!("{HOOKS_PREFIX}{path}");
    let (status, value) =
        tokio::task::spawn_blocking(move || deliver(&state, &path, &headers, &body))
            .await
            .map_err(ApiError::internal)??;
    Ok((status, Json(value)))
}

/// What a sender is told when a trigger's secret cannot be resolved.
const SECRET_UNAVAILABLE: &str = "the trigger's secret is not available";

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the delivery is larger than {MAX_DELIVERY_BYTES} bytes (25 MB), the most a webhook may send"),
    )
    .with_details(json!({"max_body_bytes": MAX_DELIVERY_BYTES}))
}

/// The most delivery bytes buffered at once, all deliveries together: two of the largest.
pub const BODY_BUDGET_BYTES: usize = 2 * MAX_DELIVERY_BYTES;

/// What a delivery is answered after `Retry-After` when the budget is spent.
const RETRY_AFTER_SECONDS: u64 = 5;

/// The budget of delivery bodies being read, in KiB of [`BODY_BUDGET_BYTES`].
pub fn body_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(BODY_BUDGET_BYTES / 1024))
}

/// The `Content-Length` a request declares.
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// The body, read into one buffer of its declared size (no second copy), at most 25 MB,
/// within `timeout` (`server.body_read_timeout`: GitHub gives up on a delivery after 10 s,
/// and a sender slower than that would otherwise keep its share of the budget).
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, ApiError> {
    let declared = declared_length(headers).unwrap_or(0) as usize;
    let read = async {
        let mut buffer = Vec::with_capacity(declared.min(MAX_DELIVERY_BYTES));
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|err| {
                ApiError::bad_request(format!("the delivery's body could not be read: {err}"))
            })?;
            if buffer.len() + chunk.len() > MAX_DELIVERY_BYTES {
                return Err(too_large());
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| Err(ApiError::body_timeout(timeout)))
}

/// In front of [`receive`]: counts the delivery, refuses one whose `Content-Length` is
/// over 25 MB before reading any of it (a body without a length is cut off at 25 MB as it
/// is read), and takes the delivery's share of [`BODY_BUDGET_BYTES`] (its declared length,
/// or 25 MB without one) until it is answered, or answers `503` at once when the budget
/// is spent.
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    state.metrics.webhook_deliveries.inc();
    let declared = declared_length(request.headers());
    if declared.is_some_and(|n| n > MAX_DELIVERY_BYTES as u64) {
        return closing(too_large().into_response());
    }
    let bytes = declared.map_or(MAX_DELIVERY_BYTES, |n| n as usize);
    let kib = (bytes.div_ceil(1024).max(1)) as u32;
    let Ok(share) = Arc::clone(&state.routes.body_budget).try_acquire_many_owned(kib) else {
        tracing::debug!(bytes, "webhook delivery refused: the body budget is spent");
        let mut response = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "the server is receiving other webhook deliveries: it buffers at most {} MB of bodies at once; retry in {RETRY_AFTER_SECONDS} s",
                BODY_BUDGET_BYTES >> 20
            ),
        )
        .with_details(json!({
            "budget_bytes": BODY_BUDGET_BYTES,
            "retry_after_seconds": RETRY_AFTER_SECONDS,
        }))
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
        return closing(response);
    };
    let response = next.run(request).await;
    drop(share);
    response
}

/// An answer sent without reading the body: the connection closes after it.
fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// One trigger's part of a delivery.
struct Outcome {
    record: DeliveryRecord,
    /// For a rejected or failed delivery, the status it alone would be answered with.
    error_status: Option<StatusCode>,
    /// Whether its record is in the store already.
    written: bool,
}

impl Outcome {
    fn skipped_json(&self) -> Value {
        json!({
            "trigger": self.record.trigger,
            "result": self.record.result,
            "reason": self.record.reason,
            "run_id": self.record.run_id,
        })
    }
}

/// Everything after the body is read: blocking (the store, run creation).
fn deliver(
    state: &Arc<App>,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(StatusCode, Value), ApiError> {
    let triggers: Vec<Arc<TriggerSpec>> = live_triggers(state)
        .into_iter()
        .filter(|t| t.path == path)
        .collect();
    if triggers.is_empty() {
        return Err(ApiError::not_found(format!(
            "no trigger listens on {path}: a Trigger manifest's `path` names it (`orchestrator trigger list` shows them)"
        ))
        .with_details(json!({"path": path})));
    }
    let received_at = now();
    let made_up = format!("local-{}", ulid::Ulid::new().to_string().to_lowercase());
    let mut outcomes: Vec<Outcome> = Vec::new();
    let base =
        |trigger: &TriggerSpec, result: DeliveryResult, reason: Option<String>| DeliveryRecord {
            trigger: trigger.id.clone(),
            delivery: trigger
                .delivery_id_of(headers)
                .unwrap_or_else(|| made_up.clone()),
            event: trigger.event_of(headers),
            action: None,
            branch: None,
            result,
            reason,
            run_id: None,
            received_at: received_at.clone(),
        };

    // The signature first: nothing about the filters is told to an unsigned sender.
    let mut verified = Vec::new();
    for trigger in triggers {
        let secret = match trigger.secret.as_deref() {
            None => None,
            Some(reference) => match crate::config::secrets::resolve_named(
                &format!("trigger {}'s secret", trigger.id),
                reference,
                &state.config.project_dir,
            ) {
                Ok(secret) => Some(secret),
                Err(err) => {
                    // The detail (a variable's name, a path) is for the operator, not for
                    // whoever sends to the path.
                    tracing::error!(trigger = %trigger.id, "webhook delivery refused: {err:#}");
                    outcomes.push(Outcome {
                        record: base(
                            &trigger,
                            DeliveryResult::Error,
                            Some(format!("{SECRET_UNAVAILABLE} (the server's log says why)")),
                        ),
                        error_status: Some(StatusCode::SERVICE_UNAVAILABLE),
                        written: false,
                    });
                    continue;
                }
            },
        };
        match trigger.verify(secret.as_deref(), state.api_token.as_deref(), headers, body) {
            Ok(()) => match trigger.missing_delivery_id(headers) {
                None => verified.push(trigger),
                Some(reason) => outcomes.push(Outcome {
                    record: base(&trigger, DeliveryResult::Error, Some(reason)),
                    error_status: Some(StatusCode::BAD_REQUEST),
                    written: false,
                }),
            },
            Err(reason) => outcomes.push(Outcome {
                record: base(&trigger, DeliveryResult::Rejected, Some(reason)),
                error_status: Some(StatusCode::UNAUTHORIZED),
                written: false,
            }),
        }
    }

    let payload = if verified.is_empty() {
        None
    } else {
        match parse_payload(headers, body) {
            Ok(payload) => Some(payload),
            Err(err) => {
                for trigger in &verified {
                    outcomes.push(Outcome {
                        record: base(trigger, DeliveryResult::Error, Some(err.message.clone())),
                        error_status: Some(err.status),
                        written: false,
                    });
                }
                write_records(state, &outcomes)?;
                return Err(err);
            }
        }
    };
    let payload = payload.unwrap_or(Value::Null);

    for trigger in verified {
        let mut record = base(&trigger, DeliveryResult::Accepted, None);
        record.action = payload
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_owned);
        record.branch = crate::triggers::branch_of(&payload);
        let outcome = run_trigger(state, &trigger, record, &payload, path)?;
        outcomes.push(outcome);
    }
    write_records(state, &outcomes)?;
    answer(&outcomes)
}

/// Filters, parameters, dedup and the run, for one trigger that accepted the signature.
/// An accepted delivery's record is written here, with its run (see
/// [`crate::triggers::intake`]); the others are written by the caller.
fn run_trigger(
    state: &Arc<App>,
    trigger: &TriggerSpec,
    record: DeliveryRecord,
    payload: &Value,
    path: &str,
) -> Result<Outcome, ApiError> {
    let event = record.event.clone();
    fn finish(
        mut record: DeliveryRecord,
        result: DeliveryResult,
        reason: String,
        error_status: Option<StatusCode>,
    ) -> Result<Outcome, ApiError> {
        record.result = result;
        record.reason = Some(reason);
        Ok(Outcome {
            record,
            error_status,
            written: false,
        })
    }
    if trigger.is_ping(event.as_deref()) {
        return finish(
            record,
            DeliveryResult::Ping,
            "ping: the webhook reaches the trigger; nothing runs".into(),
            None,
        );
    }
    if let Err(reason) = trigger.filter(event.as_deref(), payload) {
        return finish(record, DeliveryResult::Filtered, reason, None);
    }
    let context = template_context(&trigger.id, &record.delivery, event.as_deref(), payload);
    let parameters = match trigger.parameters_for(&context) {
        Ok(parameters) => parameters,
        Err(reason) => {
            return finish(
                record,
                DeliveryResult::Error,
                reason,
                Some(StatusCode::UNPROCESSABLE_ENTITY),
            )
        }
    };
    fn duplicate(mut record: DeliveryRecord, earlier: Seen) -> Result<Outcome, ApiError> {
        record.run_id = earlier
            .record
            .as_ref()
            .and_then(|r| r.run_id.clone())
            .or(earlier.run_id);
        let when = earlier
            .record
            .map(|e| format!(" at {}", e.received_at))
            .unwrap_or_default();
        let run = record
            .run_id
            .as_deref()
            .map(|r| format!(" (run {r})"))
            .unwrap_or_default();
        let reason = format!(
            "delivery {} was accepted before{when}{run}: nothing new runs",
            record.delivery
        );
        finish(record, DeliveryResult::Duplicate, reason, None)
    }
    let mut details = Map::new();
    details.insert("trigger".into(), Value::from(trigger.id.clone()));
    details.insert("delivery".into(), Value::from(record.delivery.clone()));
    details.insert("path".into(), Value::from(path));
    if let Some(event) = &event {
        details.insert("event".into(), Value::from(event.clone()));
    }
    if let Some(commit) = crate::triggers::commit_of(payload) {
        details.insert("commit".into(), commit);
    }
    let request = RunRequest {
        workflow: trigger.workflow.clone(),
        parameters,
        trigger: Trigger {
            kind: "webhook".into(),
            details,
        },
    };
    // Made here (workflow found, parameters checked), written by the intake: the claim, the
    // record naming the run and the run are one atomic write, in a batch with the other
    // deliveries waiting, flushed before the answer (see `triggers::intake`).
    let (run, steps) = match state.runner.make_run(&request) {
        Ok(made) => made,
        Err(err) => {
            // A redelivery of an accepted delivery stays a duplicate, whatever its workflow
            // has become.
            if let Some(earlier) = deliveries::earlier(&state.store, &trigger.id, &record.delivery)?
            {
                return duplicate(record, earlier);
            }
            // No run, no claim: a redelivery may try again.
            let reason = format!("the run could not be started: {err}");
            let status = ApiError::from(err).status;
            return finish(record, DeliveryResult::Error, reason, Some(status));
        }
    };
    let acceptance = Acceptance {
        key: state.routes.deliveries.new_key(&trigger.id),
        record: record.clone(),
        run,
        steps,
    };
    match state
        .routes
        .intake
        .accept(&state.store, &state.runner, acceptance)
    {
        Accepted::Run(record) => {
            tracing::debug!(trigger = %trigger.id, delivery = %record.delivery, run = ?record.run_id, "webhook delivery accepted");
            Ok(Outcome {
                record,
                error_status: None,
                written: true,
            })
        }
        Accepted::Seen(earlier) => duplicate(record, earlier),
        Accepted::Failed(err) => Err(ApiError::internal(err)),
    }
}

/// The payload as JSON; a form-encoded body (GitHub's other content type) is refused with
/// the setting to change. Public for the webhook fuzz target, which runs the handler's
/// pure steps.
pub fn parse_payload(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the delivery is form-encoded: set the webhook's content type to application/json",
        ));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::new()));
    }
    serde_json::from_slice(body).map_err(|err| {
        ApiError::bad_request(format!(
            "the delivery is not JSON ({err}): set the webhook's content type to application/json"
        ))
    })
}

/// Writes the records of the outcomes not written yet (the last one durably), and prunes
/// each trigger's records now and then.
fn write_records(state: &App, outcomes: &[Outcome]) -> Result<(), ApiError> {
    let pending: Vec<&Outcome> = outcomes.iter().filter(|o| !o.written).collect();
    for (i, outcome) in pending.iter().enumerate() {
        let key = state.routes.deliveries.new_key(&outcome.record.trigger);
        deliveries::record(&state.store, &key, &outcome.record, i + 1 == pending.len())?;
    }
    let objects = state.view.objects();
    for outcome in outcomes {
        let trigger = &outcome.record.trigger;
        let keep = objects
            .records
            .get(&crate::store::ObjectKey {
                kind: Kind::Trigger,
                id: trigger.clone(),
            })
            .and_then(|record| state.routes.triggers.compiled(record))
            .map_or(crate::triggers::DEFAULT_HISTORY_LIMIT, |t| t.history_limit);
        state
            .routes
            .deliveries
            .note_delivery(&state.store, trigger, keep);
    }
    Ok(())
}

/// The answer for all the triggers of the path together: `202` when a run started; else
/// `200` for a ping, a duplicate or filtered deliveries; else the error of the first
/// trigger that failed for another reason than the signature; else `401`.
fn answer(outcomes: &[Outcome]) -> Result<(StatusCode, Value), ApiError> {
    let delivery = outcomes
        .first()
        .map(|o| o.record.delivery.clone())
        .unwrap_or_default();
    let event = outcomes.iter().find_map(|o| o.record.event.clone());
    let with = |result: DeliveryResult| -> Vec<&Outcome> {
        outcomes
            .iter()
            .filter(|o| o.record.result == result)
            .collect()
    };
    let others = |result: DeliveryResult| -> Vec<Value> {
        outcomes
            .iter()
            .filter(|o| o.record.result != result)
            .map(Outcome::skipped_json)
            .collect()
    };
    let runs = |found: &[&Outcome]| -> Vec<Value> {
        found
            .iter()
            .map(|o| json!({"trigger": o.record.trigger, "run_id": o.record.run_id}))
            .collect()
    };
    let reasons = |found: &[&Outcome]| -> String {
        found
            .iter()
            .map(|o| {
                format!(
                    "{}: {}",
                    o.record.trigger,
                    o.record.reason.as_deref().unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let accepted = with(DeliveryResult::Accepted);
    if !accepted.is_empty() {
        return Ok((
            StatusCode::ACCEPTED,
            json!({
                "status": "accepted",
                "delivery": delivery,
                "event": event,
                "runs": runs(&accepted),
                "skipped": others(DeliveryResult::Accepted),
            }),
        ));
    }
    let pings = with(DeliveryResult::Ping);
    if !pings.is_empty() {
        let names: Vec<&str> = pings.iter().map(|o| o.record.trigger.as_str()).collect();
        return Ok((
            StatusCode::OK,
            json!({
                "status": "pong",
                "delivery": delivery,
                "event": event,
                "message": format!("the webhook reaches {}; a ping runs nothing", names.join(", ")),
                "runs": [],
                "skipped": others(DeliveryResult::Ping),
            }),
        ));
    }
    let duplicates = with(DeliveryResult::Duplicate);
    if !duplicates.is_empty() {
        return Ok((
            StatusCode::OK,
            json!({
                "status": "duplicate",
                "delivery": delivery,
                "event": event,
                "message": reasons(&duplicates),
                "runs": runs(&duplicates),
                "skipped": others(DeliveryResult::Duplicate),
            }),
        ));
    }
    let filtered = with(DeliveryResult::Filtered);
    if !filtered.is_empty() {
        return Ok((
            StatusCode::OK,
            json!({
                "status": "filtered",
                "delivery": delivery,
                "event": event,
                "message": format!("no run started: {}", reasons(&filtered)),
                "runs": [],
                "skipped": others(DeliveryResult::Filtered),
            }),
        ));
    }
    let details = json!({"delivery": delivery, "outcomes": others(DeliveryResult::Accepted)});
    if let Some(failed) = outcomes.iter().find(|o| {
        o.error_status
            .is_some_and(|s| s != StatusCode::UNAUTHORIZED)
    }) {
        let status = failed
            .error_status
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = match status {
            StatusCode::UNPROCESSABLE_ENTITY => "invalid",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            s if s.is_server_error() => "internal",
            _ => "error",
        };
        return Err(ApiError::new(
            status,
            code,
            format!(
                "no run started for delivery {delivery}: {}",
                failed.record.reason.as_deref().unwrap_or_default()
            ),
        )
        .with_details(details));
    }
    Err(ApiError::unauthorized(format!(
        "the delivery is not signed for any trigger of this path: {}",
        reasons(&with(DeliveryResult::Rejected))
    ))
    .with_details(details))
}
