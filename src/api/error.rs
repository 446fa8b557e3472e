//! API errors as `{"error": {"code", "message", "details"}}`, and a JSON body extractor
//! whose rejections say what was expected in that same shape.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::engine::run::EngineError;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `not_found`.
    pub code: &'static str,
    /// What is wrong and what was expected.
    pub message: String,
    /// Anything more: the field, the diagnostics, the allowed values.
    pub details: Value,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    /// With details.
    pub fn with_details(mut self, details: Value) -> ApiError {
        self.details = details;
        self
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 409.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 422 for a manifest written by the API that the reconcile did not apply: the
    /// diagnostics of its `file`, the first one's message after `summary` (`fallback` when
    /// there is none).
    pub fn not_applied(
        diagnostics: Vec<crate::diagnostics::Diagnostic>,
        file: &str,
        summary: &str,
        fallback: &str,
    ) -> ApiError {
        let diagnostics: Vec<_> = diagnostics.into_iter().filter(|d| d.file == file).collect();
        let reason = diagnostics
            .first()
            .map_or_else(|| fallback.to_owned(), |d| d.message.clone());
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("{summary}: {reason}"),
        )
        .with_details(serde_json::json!({"diagnostics": diagnostics, "file": file}))
    }

    /// 401.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 413: the body is over `server.max_body_bytes`.
    pub fn payload_too_large(max_body_bytes: u64) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is larger than the server accepts: at most {max_body_bytes} bytes (server.max_body_bytes)"
            ),
        )
        .with_details(json!({"max_body_bytes": max_body_bytes}))
    }

    /// 408: a request's body did not arrive within `server.body_read_timeout`.
    pub fn body_timeout(timeout: std::time::Duration) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request's body did not arrive within {} (server.body_read_timeout)",
                crate::duration::format_duration(timeout)
            ),
        )
        .with_details(json!({"body_read_timeout_seconds": timeout.as_secs_f64()}))
    }

    /// An error with the code its status implies (for answers produced outside the
    /// handlers, e.g. by axum's extractors).
    pub fn from_status(status: StatusCode, message: impl Into<String>) -> ApiError {
        let code = match status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
            status if status.is_server_error() => "internal",
            _ => "error",
        };
        let mut message = message.into();
        if message.is_empty() {
            message = status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_owned();
        }
        ApiError::new(status, code, message)
    }

    /// 500, logged.
    pub fn internal(err: impl std::fmt::Display) -> ApiError {
        tracing::error!("internal error answering a request: {err}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {err}"),
        )
    }
}

/// The body of every error answer, `{"error": {"code", "message", "details"}}`: what
/// [`ApiError`] is sent as, and the `ApiError` schema of the OpenAPI document.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = ApiError)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `bad_request`, `malformed_json`, `invalid_body`,
    /// `invalid`, `unauthorized`, `host_not_allowed`, `origin_not_allowed`, `not_found`,
    /// `method_not_allowed`, `conflict`, `payload_too_large`, `unsupported_media_type`,
    /// `source_unavailable`, `internal`, ...
    #[schema(example = "not_found")]
    pub code: &'static str,
    /// What is wrong and what was expected, for a person.
    pub message: String,
    /// Anything more (the field, the diagnostics, the allowed values), or null.
    pub details: Value,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> ApiError {
        match err {
            EngineError::NotFound(message) => ApiError::not_found(message),
            EngineError::Invalid(message) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            }
            EngineError::Store(err) => ApiError::internal(err),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> ApiError {
        ApiError::internal(err)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(err: anyhow::Error) -> ApiError {
        ApiError::internal(format!("{err:#}"))
    }
}

/// A JSON body; a missing or wrong content type, malformed JSON, a body of the wrong shape
/// or one over the size limit is answered with an [`ApiError`] that says which.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(rejection_error(rejection)),
        }
    }
}

fn rejection_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a JSON body with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(err) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("the body is not valid JSON: {}", source_text(&err)),
        ),
        JsonRejection::JsonDataError(err) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!(
                "the body does not have the expected shape: {}",
                source_text(&err)
            ),
        ),
        JsonRejection::BytesRejection(err) => {
            let status = err.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "payload_too_large",
                    "the body is larger than the server accepts (server.max_body_bytes)",
                )
            } else {
                ApiError::new(status, "bad_body", err.body_text())
            }
        }
        other => ApiError::new(other.status(), "bad_body", other.body_text()),
    }
}

/// The innermost cause's text (serde's message with line and column).
fn source_text(err: &dyn std::error::Error) -> String {
    let mut current: &dyn std::error::Error = err;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}
