//! `GET /` and `GET /assets/{*path}`: the embedded dashboard ([`crate::dashboard`]), with the
//! API's JSON 404 for an asset that does not exist.

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::ApiError;

/// `GET /`: the app shell.
pub async fn index(headers: HeaderMap) -> Response {
    crate::dashboard::index(&headers)
}

/// `GET /assets/{*path}`: an embedded file, or a JSON 404.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    crate::dashboard::asset(&path, &headers).unwrap_or_else(|| {
        ApiError::not_found(format!(
            "no dashboard asset `{path}`; the dashboard is at /"
        ))
        .into_response()
    })
}
