//! `GET /` and `GET /assets/{*path}`: the embedded dashboard ([`crate::dashboard`]), with the
//! API's JSON 404 for an asset that does not exist.

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::error::ErrorBody;
use super::ApiError;

/// The web dashboard.
///
/// Its HTML shell, with a strict Content-Security-Policy; the pages are JavaScript modules
/// under `/assets/`. `ETag` and `Cache-Control: no-cache`: a request with a matching
/// `If-None-Match` gets `304`.
#[utoipa::path(get, path = "/", tag = "dashboard", operation_id = "dashboard_index",
    responses(
        (status = 200, description = "The dashboard's page", body = String, content_type = "text/html"),
        (status = 304, description = "Not modified (`If-None-Match` matched the `ETag`)"),
    ))]
pub async fn index(headers: HeaderMap) -> Response {
    crate::dashboard::index(&headers)
}

/// A file of the dashboard (scripts, styles, images), embedded in the binary.
#[utoipa::path(get, path = "/assets/{*path}", tag = "dashboard", operation_id = "dashboard_asset",
    params(("path" = String, Path, description = "The file's path, e.g. `app.js` or `pages/runs.js`")),
    responses(
        (status = 200, description = "The file, with its content type (`text/javascript`, `text/css`, `image/svg+xml`, ...)",
            body = String, content_type = "text/javascript"),
        (status = 304, description = "Not modified (`If-None-Match` matched the `ETag`)"),
        (status = 404, description = "No such asset", body = ErrorBody),
    ))]
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    crate::dashboard::asset(&path, &headers).unwrap_or_else(|| {
        ApiError::not_found(format!(
            "no dashboard asset `{path}`; the dashboard is at /"
        ))
        .into_response()
    })
}
