//! `GET /schemas/{file}`: the published JSON Schemas (`workflow.json`, `schedule.json`, ...,
//! `config.json`), the same texts `init` writes into a project's `schemas/`. They are public
//! documents, so no API token is asked for (like the dashboard's files); the Host and Origin
//! checks of the guard apply as to every route. Each schema's `$id` is its bare file name,
//! which resolves to this route's URL when read from here and to the file when read from disk.

use axum::extract::Path;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::{ApiError, ErrorBody};

/// The media type of a JSON Schema document (draft 2020-12, section 13.1).
const SCHEMA_MEDIA_TYPE: &str = "application/schema+json";

/// A published JSON Schema: `workflow.json`, `workflow-template.json`, `agent.json`,
/// `schedule.json`, `alert.json`, `trigger.json`, `dashboard.json` or `config.json`.
///
/// Public, like the dashboard's files: no API token. Its `$id` is the file name, which
/// resolves to this URL, so `# yaml-language-server: $schema=http://HOST/schemas/workflow.json`
/// works as well as `$schema=../schemas/workflow.json` in a project `init` wrote.
#[utoipa::path(get, path = "/schemas/{file}", tag = "schemas",
    params(("file" = String, Path, description = "The schema's file name, e.g. `workflow.json`")),
    responses(
        (status = 200, description = "The schema (JSON Schema draft 2020-12)",
            body = Object, content_type = "application/schema+json"),
        (status = 404, description = "No such schema; `details.schemas` lists them", body = ErrorBody),
    ))]
pub async fn published_schema(Path(file): Path<String>) -> Response {
    match crate::schema::published_text(&file) {
        Some(text) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(SCHEMA_MEDIA_TYPE),
                ),
                (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            text,
        )
            .into_response(),
        None => {
            let files: Vec<&str> = crate::schema::published()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            ApiError::not_found(format!(
                "no schema `{file}`; the schemas are {}",
                files.join(", ")
            ))
            .with_details(serde_json::json!({ "schemas": files }))
            .into_response()
        }
    }
}
