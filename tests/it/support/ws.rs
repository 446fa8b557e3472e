//! The `/ws` event stream from a test: connect (with the token), subscribe, and read JSON
//! messages within the deadline.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use super::DEADLINE;

/// An open `/ws` connection.
pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text message as JSON, within the deadline.
pub(crate) async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a message within the deadline")
            .expect("the connection is open")
            .expect("a well-formed frame");
        match message {
            Message::Text(text) => {
                return serde_json::from_str(text.as_str())
                    .unwrap_or_else(|e| panic!("{e}: {}", text.as_str()))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected message {other:?}"),
        }
    }
}

pub(crate) async fn ws_send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string()))
        .await
        .expect("send");
}

/// Reads messages until one matches; returns it.
pub(crate) async fn ws_until(ws: &mut Ws, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let message = ws_next(ws).await;
        if wanted(&message) {
            return message;
        }
    }
}

/// Narrows the stream to `events` and reads up to the `subscribed` answer (events published
/// before the request was read may come first).
pub(crate) async fn ws_subscribe(ws: &mut Ws, events: &[&str]) {
    ws_send(ws, json!({"type": "subscribe", "events": events})).await;
    let subscribed = ws_until(ws, "the subscription", |message| {
        assert!(
            message.get("sequence").is_some() || message["type"] == "subscribed",
            "{message}"
        );
        message["type"] == "subscribed"
    })
    .await;
    let mut wanted: Vec<&str> = events.to_vec();
    wanted.sort_unstable();
    assert_eq!(
        subscribed["payload"]["events"],
        json!(wanted),
        "{subscribed}"
    );
}

/// Connects to `/ws` and reads the `connected` hello.
pub(crate) async fn ws_connect(address: &str, token: Option<&str>) -> Ws {
    let mut request = format!("ws://{address}/ws").into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("connect to /ws");
    let hello = ws_next(&mut ws).await;
    assert_eq!(hello["type"], "connected", "{hello}");
    let kinds = hello["payload"]["events"].as_array().unwrap();
    assert!(kinds.contains(&json!("workflow_completed")), "{hello}");
    ws
}
