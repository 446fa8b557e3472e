//! `/ws`: the event stream. Each message is `{"type", "payload", "timestamp", "sequence"}`.
//! A client narrows what it gets with `{"type": "subscribe", "events": [...]}` (no
//! subscription: every kind but `run_log`), widens it again with `unsubscribe`, and may send
//! `{"type": "ping"}` for a `pong`. A client that falls behind loses the oldest events and
//! gets `{"type": "lagged", "payload": {"missed": N}}` instead: it never slows the server
//! or the other clients.

use std::collections::HashSet;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, AppState, ErrorBody};
use crate::events::EventKind;

/// What a client sends is a few small requests (`subscribe`, `ping`): a small read buffer
/// instead of tungstenite's 128 KiB, allocated up front for every client, keeps two
/// thousand idle clients at a few MB rather than 250.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// The event stream (WebSocket).
///
/// Messages are `{"type", "payload", "timestamp", "sequence"}`: `workflow_started`,
/// `workflow_completed`, `step_started`, `step_completed`, `step_retrying`,
/// `agent_status_changed`, `manifest_applied`, `manifest_invalid`, `sync_completed`, ...
/// The first is `connected`, listing the kinds. `{"type": "subscribe", "events": [...]}`
/// narrows what the client gets, `unsubscribe` widens it again, `ping` answers `pong`; a
/// client that falls behind gets `{"type": "lagged", "payload": {"missed": N}}`.
///
/// A request that is no WebSocket handshake gets the JSON error of what is missing; `HEAD`
/// gets the answer `GET` would get (no body), which for a complete handshake is a 400,
/// since `HEAD` cannot switch protocols.
#[utoipa::path(get, path = "/ws", tag = "events", operation_id = "websocket",
    params(("token" = Option<String>, Query,
        description = "The API token, for clients that cannot set the `Authorization` header (browsers); only `/ws` reads it"),
        // The handshake (RFC 6455): without it the answer is 400.
        ("Upgrade" = String, Header, description = "`websocket`", pattern = "^[Ww][Ee][Bb][Ss][Oo][Cc][Kk][Ee][Tt]$"),
        ("Connection" = String, Header, description = "Includes `Upgrade`", pattern = "[Uu][Pp][Gg][Rr][Aa][Dd][Ee]"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`", pattern = "^13$"),
        ("Sec-WebSocket-Key" = String, Header, description = "16 random bytes in base64",
            pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$")),
    security(("bearer" = [])),
    responses(
        (status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, description = "Not a WebSocket handshake", body = ErrorBody),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
    ))]
pub async fn upgrade(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    let head = parts.method == Method::HEAD;
    if head {
        parts.method = Method::GET;
    }
    match WebSocketUpgrade::from_request_parts(&mut parts, &state).await {
        Ok(_) if head => ApiError::bad_request(
            "a WebSocket handshake is a GET request: HEAD cannot switch protocols",
        )
        .into_response(),
        Ok(upgrade) => upgrade
            .read_buffer_size(READ_BUFFER_BYTES)
            .on_upgrade(move |socket| serve(state, socket)),
        Err(rejection) => {
            ApiError::from_status(rejection.status(), rejection.body_text()).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    events: Vec<String>,
}

/// What a client asked for: `None` is the default set.
struct Subscription(Option<HashSet<EventKind>>);

impl Subscription {
    fn wants(&self, kind: EventKind) -> bool {
        match &self.0 {
            Some(kinds) => kinds.contains(&kind),
            None => kind.sent_by_default(),
        }
    }
}

fn notice(kind: &str, payload: Value) -> Message {
    Message::Text(
        json!({
            "type": kind,
            "payload": payload,
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
        .to_string()
        .into(),
    )
}

async fn serve(state: AppState, socket: WebSocket) {
    let mut events = state.events.subscribe();
    let (mut sink, mut stream) = socket.split();
    let mut subscription = Subscription(None);
    let mut reading_logs = false;
    let hello = notice(
        "connected",
        json!({
            "events": crate::events::EventKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            "sequence": state.events.published(),
        }),
    );
    if sink.send(hello).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            event = events.recv() => {
                let message = match event {
                    Ok(event) => {
                        if !subscription.wants(event.kind) {
                            continue;
                        }
                        match serde_json::to_string(&*event) {
                            Ok(text) => Message::Text(text.into()),
                            Err(_) => continue,
                        }
                    }
                    Err(RecvError::Lagged(missed)) => notice("lagged", json!({"missed": missed})),
                    Err(RecvError::Closed) => break,
                };
                if sink.send(message).await.is_err() {
                    break;
                }
            }
            incoming = stream.next() => {
                let Some(Ok(message)) = incoming else { break };
                let text = match message {
                    Message::Text(text) => text.to_string(),
                    Message::Close(_) => break,
                    _ => continue,
                };
                let reply = match serde_json::from_str::<ClientMessage>(&text) {
                    Ok(request) => {
                        let reply = handle(&mut subscription, request);
                        // Logs are read from disk only while some client wants them.
                        let wants_logs = subscription.wants(EventKind::RunLog);
                        if wants_logs != reading_logs {
                            if wants_logs {
                                state.log_tail.listeners().add();
                            } else {
                                state.log_tail.listeners().remove();
                            }
                            reading_logs = wants_logs;
                        }
                        reply
                    }
                    Err(err) => Some(notice(
                        "error",
                        json!({"message": format!("expected {{\"type\": \"subscribe\"|\"unsubscribe\"|\"ping\", \"events\": [...]}}: {err}")}),
                    )),
                };
                if let Some(reply) = reply {
                    if sink.send(reply).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    if reading_logs {
        state.log_tail.listeners().remove();
    }
}

fn handle(subscription: &mut Subscription, request: ClientMessage) -> Option<Message> {
    match request.kind.as_str() {
        "ping" => Some(notice("pong", Value::Null)),
        "subscribe" | "unsubscribe" => {
            let mut kinds = Vec::new();
            let mut unknown = Vec::new();
            for name in &request.events {
                match EventKind::parse(name) {
                    Some(kind) => kinds.push(kind),
                    None => unknown.push(name.clone()),
                }
            }
            if !unknown.is_empty() {
                return Some(notice(
                    "error",
                    json!({
                        "message": format!("unknown event type(s): {}", unknown.join(", ")),
                        "expected": EventKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>(),
                    }),
                ));
            }
            if request.kind == "subscribe" {
                let set = subscription.0.get_or_insert_with(HashSet::new);
                if kinds.is_empty() {
                    // `subscribe` with no list: everything, run logs included.
                    set.extend(EventKind::ALL);
                } else {
                    set.extend(kinds);
                }
            } else {
                let set = subscription.0.get_or_insert_with(|| {
                    EventKind::ALL
                        .into_iter()
                        .filter(|k| k.sent_by_default())
                        .collect()
                });
                if kinds.is_empty() {
                    set.clear();
                } else {
                    for kind in kinds {
                        set.remove(&kind);
                    }
                }
            }
            let mut current: Vec<&str> = subscription
                .0
                .iter()
                .flatten()
                .map(|k| k.as_str())
                .collect();
            current.sort_unstable();
            Some(notice("subscribed", json!({"events": current})))
        }
        other => Some(notice(
            "error",
            json!({"message": format!("unknown message type `{other}`: expected subscribe, unsubscribe or ping")}),
        )),
    }
}
