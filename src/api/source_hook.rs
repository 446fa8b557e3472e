//! `POST /hooks/source`: a push webhook (GitHub, Gitea, GitLab with a signing proxy, or
//! anything that signs the same way) asking the server to fetch its git source now.
//!
//! With `source.git.webhook_secret` set, a delivery must carry `X-Hub-Signature-256:
//! sha256=<hex HMAC-SHA256 of the raw body>`, checked in constant time. Without a secret and
//! with an API token configured, the bearer token is required instead, so the route is never
//! less guarded than the other mutating routes; with neither, it is open like they are. A
//! delivery is answered `202 Accepted` at once: the fetch and reconcile run on the source's
//! own thread, and requests that arrive before it starts count as one.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::error::ErrorBody;
use super::{ApiError, AppState};

/// The header GitHub signs deliveries with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Checks a `sha256=<hex>` signature of `body` under `secret`; the error says what is wrong.
pub fn verify_signature(secret: &[u8], body: &[u8], header: Option<&str>) -> Result<(), String> {
    let Some(header) = header else {
        return Err("missing X-Hub-Signature-256 header: deliveries must be signed with source.git.webhook_secret".to_owned());
    };
    let Some(hex_digest) = header.trim().strip_prefix("sha256=") else {
        return Err("X-Hub-Signature-256 must be `sha256=<hex digest>`".to_owned());
    };
    let given = hex::decode(hex_digest)
        .map_err(|_| "X-Hub-Signature-256 must be `sha256=<hex digest>`".to_owned())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given).map_err(|_| {
        "the X-Hub-Signature-256 signature does not match the body: check that the webhook's secret is source.git.webhook_secret".to_owned()
    })
}

/// The branch a push delivery is about (`"ref": "refs/heads/<branch>"`), when the body says.
fn pushed_branch(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value
        .get("ref")?
        .as_str()?
        .strip_prefix("refs/heads/")
        .map(str::to_owned)
}

/// Receives a push webhook delivery: checks it, then asks the git source to fetch.
///
/// Answered at once: the fetch and reconcile run on the source's own thread, and deliveries
/// that arrive before it starts count as one. A `ping`, or a push to another branch than
/// the one followed, is answered 200 and ignored. Outside the bearer-token layer: with
/// `source.git.webhook_secret` set the delivery must be signed (`X-Hub-Signature-256`);
/// without one, the API token is needed when one is configured.
#[utoipa::path(post, path = "/hooks/source", tag = "source", operation_id = "receive_source_push",
    params(
        ("X-GitHub-Event" = Option<String>, Header,
            description = "`ping` is answered `pong`; any other event asks for a fetch"),
    ),
    request_body(content = Value, content_type = "application/json",
        description = "The delivery; a push's `ref` (`refs/heads/<branch>`) is compared with the branch followed",
        example = json!({"ref": "refs/heads/main", "after": "9fceb02d0ae598e95dc970b74767f19372d61af8"})),
    security(("webhook_signature" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "A fetch is queued", body = Object, example = json!({
            "status": "accepted", "message": "a fetch of https://github.com/example/tests.git is queued",
            "revision": "git:9fceb02d0ae598e95dc970b74767f19372d61af8"})),
        (status = 200, description = "A `ping` (`status: pong`), or a push to another branch (`status: ignored`)",
            body = Object, example = json!({"status": "ignored", "message": "a push to `dev`; the server follows `main`"})),
        (status = 401, description = "The signature is missing or does not match, or (no secret) the API token is missing", body = ErrorBody),
        (status = 404, description = "The server reads the manifest directories, not a git repository", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`", body = ErrorBody),
        (status = 408, description = "The body did not arrive whole within `server.body_read_timeout`", body = ErrorBody),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.metrics.webhook_deliveries.inc();
    // The credentials first, in either mode: nothing about the server is told to a caller
    // without them.
    if let Some(secret) = state
        .controller
        .git
        .as_ref()
        .and_then(|git| git.webhook_secret())
    {
        let signature = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        verify_signature(secret.as_bytes(), &body, signature).map_err(ApiError::unauthorized)?;
    } else if let Some(token) = state.api_token.as_deref() {
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            return Err(ApiError::unauthorized(
                "this route needs a signed delivery (set source.git.webhook_secret) or `Authorization: Bearer <token>` (the server has an API token configured)",
            ));
        }
    }
    let Some(git) = state.controller.git.as_ref() else {
        return Err(ApiError::not_found(
            "this server reads the manifest directories, not a git repository: /hooks/source is for a git source (source.git in the configuration, or start --source)",
        ));
    };
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if event == "ping" {
        return Ok((
            StatusCode::OK,
            Json(json!({"status": "pong", "message": "the webhook reaches the server"})),
        ));
    }
    let followed = git
        .source
        .branch
        .clone()
        .or_else(|| git.fetch_status().branch);
    if let (Some(pushed), Some(followed)) = (pushed_branch(&body), followed) {
        if pushed != followed {
            return Ok((
                StatusCode::OK,
                Json(json!({
                    "status": "ignored",
                    "message": format!("a push to `{pushed}`; the server follows `{followed}`"),
                })),
            ));
        }
    }
    git.request_sync("webhook");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "status": "accepted",
            "message": format!("a fetch of {} is queued", git.source.display_url()),
            "revision": git.fetch_status().revision,
        })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_example_signature_verifies() {
        // The example in GitHub's documentation on validating webhook deliveries.
        let secret = b"It's a Secret to Everybody";
        let body = b"Hello, World!";
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(verify_signature(secret, body, Some(header)), Ok(()));
        assert!(verify_signature(secret, b"Hello, World?", Some(header))
            .unwrap_err()
            .contains("does not match"));
        assert!(verify_signature(secret, body, None)
            .unwrap_err()
            .starts_with("missing X-Hub-Signature-256"));
        assert!(verify_signature(secret, body, Some("sha1=abc"))
            .unwrap_err()
            .contains("sha256=<hex digest>"));
        assert!(verify_signature(secret, body, Some("sha256=zz"))
            .unwrap_err()
            .contains("sha256=<hex digest>"));
    }

    #[test]
    fn the_pushed_branch_is_read_from_the_body() {
        assert_eq!(
            pushed_branch(br#"{"ref": "refs/heads/main", "after": "abc"}"#).as_deref(),
            Some("main")
        );
        assert_eq!(pushed_branch(br#"{"ref": "refs/tags/v1"}"#), None);
        assert_eq!(pushed_branch(b"not json"), None);
    }
}
