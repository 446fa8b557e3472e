//! The OpenAPI 3.1 document of the API: [`ApiDoc`] gives what is not a route (the info,
//! the shared schemas, the security schemes, the tags); the operations come with the routes
//! themselves, from the handlers' `#[utoipa::path]` attributes as [`super::router`]
//! registers them; [`finish`] adds what the guard answers everywhere. Served at
//! `GET /api/openapi.json`.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Required;
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::AppState;
use super::{alerts, handlers, jobs, monitor, triggers};
use crate::model::{
    Attempt, RunRecord, Status, StepRecord, TestCase, TestStatus, TestSummary, Trigger,
};

/// The API's OpenAPI document: `ApiDoc::openapi()`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "orchestrator",
        version = env!("CARGO_PKG_VERSION"),
        description = "The API of `orchestrator start`: workflows and their runs, agents, \
            manifests and reconciles, the server's status, the git source's webhook and the \
            `/ws` event stream.\n\nEvery error is `{\"error\": {\"code\", \"message\", \
            \"details\"}}` (the `ApiError` schema) with the right 4xx or 5xx status; request \
            bodies are limited to `server.max_body_bytes` and must be JSON where JSON is \
            expected.\n\nBefore any handler, every request passes a guard: its `Host` must be one \
            of the server's names (`localhost`, `127.0.0.1`, `[::1]`, the bound address, the \
            machine's name, `server.allowed_hosts`; else `421 host_not_allowed`), a request that \
            changes something or opens `/ws` from a web page must come from one of the server's \
            own origins or `server.allowed_origins` (else `403 origin_not_allowed`), and every \
            `POST` and `DELETE` says `Content-Type: application/json`, even with an empty body \
            (else `415 unsupported_media_type`). A request's body must arrive whole within \
            `server.body_read_timeout` (else `408 timeout`). With an API token in force (`server.api_token`, \
            or the one generated for a non-loopback address), every `/api` route and `/ws` need \
            `Authorization: Bearer <token>` (the `bearer` scheme), reads included; `/healthz`, \
            `/readyz`, the dashboard's files and the schemas under `/schemas/` stay open, `/metrics` too unless \
            `server.metrics_auth`. Webhook receivers under `/hooks/` skip the guard: they check \
            their signatures.",
        license(name = "MIT", identifier = "MIT"),
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        handlers::ExecuteBody,
        handlers::RerunBody,
        handlers::ReconcileBody,
        jobs::CreateJob,
        super::manifest_save::ManifestBody,
        super::manifest_save::Validation,
        super::alert_rules::ConditionBody,
        super::alert_rules::ConditionCheck,
        handlers::ExecuteAccepted,
        handlers::CancelAccepted,
        handlers::RunList,
        handlers::RunDetail,
        crate::triggers::commit_status::CommitStatusReport,
        crate::triggers::commit_status::StatusUpdate,
        handlers::Readiness,
        handlers::RouteIndex,
        handlers::Route,
        handlers::WorkflowList,
        RunRecord,
        StepRecord,
        Attempt,
        Trigger,
        Status,
        TestSummary,
        TestCase,
        TestStatus,
        crate::monitor::stats::AgentMetrics,
        super::agent_runs::AgentExecutions,
        super::agent_runs::AgentExecution,
        crate::monitor::stats::WorkflowMetrics,
        crate::monitor::stats::TestMetrics,
        crate::monitor::stats::TestCaseMetrics,
        crate::monitor::stats::LastError,
        crate::monitor::stats::HealthCheck,
        crate::monitor::stats::HealthStatus,
        triggers::TriggerList,
        triggers::DeliveryList,
        crate::triggers::DeliveryRecord,
        crate::triggers::DeliveryResult,
        monitor::SystemMetrics,
        crate::monitor::system::SystemSample,
        crate::monitor::history::HistoryPoint,
        alerts::AlertList,
        alerts::SilenceList,
        crate::monitor::alerts::Silence,
        crate::monitor::alerts::Matcher,
        crate::monitor::alerts::SilenceRequest,
        super::reports::WorkflowTrends,
        super::reports::TrendRun,
        super::reports::RunArtifact,
        super::reports::TestTrend,
        super::reports::DurationFigures,
    )),
    modifiers(&SecuritySchemes),
    tags(
        (name = "workflows", description = "Workflows in force, and running them"),
        (name = "runs", description = "Runs, their steps and logs; cancel and re-run"),
        (name = "agents", description = "Agents, switched on and off at run time"),
        (name = "tests", description = "Every test case's history: flaky, failing, new, slow and quarantined tests, and one test's timeline"),
        (name = "workers", description = "Workers that run steps over NATS: their state, drain and resume"),
        (name = "manifests", description = "Objects in the store, schedules, and reconciles"),
        (name = "server", description = "Health, readiness, status, metrics and this document"),
        (name = "events", description = "The `/ws` event stream"),
        (name = "source", description = "The git source's push webhook"),
        (name = "triggers", description = "Webhook triggers: deliveries that start runs, and what happened to them"),
        (name = "monitoring", description = "System metrics and their history"),
        (name = "alerts", description = "Alert rules, their state and notifications, and silences"),
        (name = "dashboard", description = "The web dashboard: its page and embedded assets"),
        (name = "schemas", description = "The JSON Schemas of manifests and configuration"),
    ),
)]
pub struct ApiDoc;

/// The security schemes the operations name: the API token, and the webhook's signature.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <token>` (the scheme in any case) with the \
                         server's API token: `server.api_token`, or the one generated in the data \
                         directory's `api-token` when the server listens on a non-loopback \
                         address without one. Needed by every `/api` route and `/ws` (reads \
                         included) while a token is in force, and by `/metrics` with \
                         `server.metrics_auth`; without a token they are open (only on a loopback \
                         address, or with `--insecure`).",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "webhook_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Hub-Signature-256",
                "`sha256=<hex HMAC-SHA256 of the raw body>` under `source.git.webhook_secret` \
                 (GitHub's signature). Needed by `POST /hooks/source` when a webhook secret is \
                 configured; without one, that route takes the bearer token instead.",
            ))),
        );
        components.add_security_scheme(
            "trigger_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Hub-Signature-256",
                "`sha256=<hex HMAC-SHA256 of the raw body>` under the trigger's `secret` \
                 (GitHub's signature; a generic trigger names its own header in \
                 `signature_header`, the `sha256=` prefix optional). Needed by \
                 `POST /hooks/{path}` for a trigger with a secret.",
            ))),
        );
        components.add_security_scheme(
            "trigger_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "`Authorization: Bearer <secret>` with the trigger's `secret`, for a \
                         generic trigger with `auth: bearer`. A trigger without a secret takes \
                         the server's API token (the `bearer` scheme) when one is configured.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The operations whose body says what to create or check: an empty body is refused
/// there, so the document marks it required.
pub const REQUIRED_BODIES: [&str; 5] = [
    "/api/validate",
    "/api/validate/condition",
    "/api/manifests",
    "/api/scheduler/jobs",
    "/api/silences",
];

/// Every other request body of this API may be left out (an empty body reads as the type's
/// defaults), which the generated operations do not say on their own.
struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if REQUIRED_BODIES.contains(&path.as_str()) {
                continue;
            }
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                if let Some(body) = operation.request_body.as_mut() {
                    body.required = Some(Required::False);
                }
            }
        }
    }
}

/// What the request guard (`api::guard`) adds to every operation: the `bearer` scheme on
/// every `/api` route and `/ws` (optional on `/metrics`) with its 401, the 421 of a Host the
/// server does not answer to, and on routes that change things (and `/ws`) the 403 of a
/// foreign Origin, the 415 of a missing JSON content type and the 408 of a body that did not
/// arrive in time. `/hooks/` is left as it is.
struct GuardAnswers;

impl Modify for GuardAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ApiError")))
                            .build(),
                    )
                    .build(),
            )
        };
        let bearer = || SecurityRequirement::new("bearer", Vec::<String>::new());
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path.starts_with("/hooks/") {
                continue;
            }
            let api = path == "/api" || path.starts_with("/api/") || path == "/ws";
            let probe = path == "/healthz" || path == "/readyz";
            for (changes, operation) in [
                (false, &mut item.get),
                (true, &mut item.put),
                (true, &mut item.post),
                (true, &mut item.delete),
                (true, &mut item.patch),
            ] {
                let Some(operation) = operation.as_mut() else {
                    continue;
                };
                let responses = &mut operation.responses.responses;
                if api {
                    operation.security = Some(vec![bearer()]);
                    responses.entry("401".into()).or_insert_with(|| {
                        error("An API token is in force and the request does not carry it")
                    });
                } else if path == "/metrics" {
                    // Open unless `server.metrics_auth`.
                    operation.security = Some(vec![SecurityRequirement::default(), bearer()]);
                    responses.entry("401".into()).or_insert_with(|| {
                        error("`server.metrics_auth` is on and the request does not carry the API token")
                    });
                }
                if !probe {
                    responses.entry("421".into()).or_insert_with(|| {
                        error("The Host is not a name the server answers to (`host_not_allowed`; `server.allowed_hosts`)")
                    });
                }
                if changes || path == "/ws" {
                    responses.entry("403".into()).or_insert_with(|| {
                        error("Sent by a web page of a foreign origin (`origin_not_allowed`; `server.allowed_origins`)")
                    });
                }
                if changes {
                    responses.entry("415".into()).or_insert_with(|| {
                        error(
                            "No `Content-Type: application/json` (needed even with an empty body)",
                        )
                    });
                    responses.entry("408".into()).or_insert_with(|| {
                        error("The body did not arrive whole within `server.body_read_timeout` (`timeout`)")
                    });
                }
            }
        }
    }
}

/// Completes the document of the routes: axum's catch-all `{*name}` is written as
/// OpenAPI's `{name}`, bodies are optional but where [`REQUIRED_BODIES`] says, and every
/// operation gets the guard's answers ([`GuardAnswers`]).
pub(super) fn finish(mut document: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let paths = std::mem::take(&mut document.paths.paths);
    document.paths.paths = paths
        .into_iter()
        .map(|(path, item)| (path.replace("{*", "{"), item))
        .collect();
    OptionalBodies.modify(&mut document);
    GuardAnswers.modify(&mut document);
    document
}

/// Every operation of `document` as (method, path), paths in their order.
pub(super) fn operations(document: &utoipa::openapi::OpenApi) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for (path, item) in document.paths.paths.iter() {
        for (method, operation) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ] {
            if operation.is_some() {
                found.push((method, path.clone()));
            }
        }
    }
    found
}

/// The document as it is served, and the routes `GET /api` lists: both made once, from the
/// routes, when the server starts.
pub(super) struct Published {
    /// The document, serialized (cloned per request without a copy).
    pub json: axum::body::Bytes,
    /// Every route as (method, path).
    pub routes: Vec<(&'static str, String)>,
}

impl Published {
    pub(super) fn new() -> Published {
        let document = super::openapi();
        Published {
            routes: operations(&document),
            json: document
                .to_json()
                .expect("the OpenAPI document serializes")
                .into(),
        }
    }
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "server", responses(
    (status = 200, description = "The OpenAPI 3.1 document of the API", body = Object),
))]
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.routes.published.json.clone(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn document() -> Value {
        serde_json::to_value(crate::api::openapi()).unwrap()
    }

    /// (METHOD, path) of every operation in the document.
    fn operations(doc: &Value) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if item.get(method).is_some() {
                    found.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        found
    }

    #[test]
    fn the_routes_are_the_operations_of_the_document_each_once() {
        let doc = document();
        let routes = crate::api::routes();
        let listed: BTreeSet<(String, String)> = routes
            .iter()
            .map(|(m, p)| (m.to_string(), p.clone()))
            .collect();
        assert_eq!(listed.len(), routes.len(), "a route is listed twice");
        assert_eq!(listed, operations(&doc));
        // The routes of more than one method, and axum's catch-alls written as OpenAPI's.
        for route in [
            ("GET", "/api/manifests"),
            ("POST", "/api/manifests"),
            ("DELETE", "/api/silences/{id}"),
            ("GET", "/"),
            ("GET", "/assets/{path}"),
            ("GET", "/api/runs/{id}/artifacts/{path}"),
            ("POST", "/hooks/{path}"),
            ("POST", "/hooks/source"),
        ] {
            assert!(
                listed.contains(&(route.0.to_owned(), route.1.to_owned())),
                "{route:?} in {listed:?}"
            );
        }
        assert!(
            !doc.to_string().contains("{*"),
            "a catch-all left as axum writes it"
        );
        // What is served is this document.
        let served: Value = serde_json::from_slice(&super::Published::new().json).unwrap();
        assert_eq!(served, doc);
    }

    #[test]
    fn operation_ids_are_unique() {
        let doc = document();
        let mut seen = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                if let Some(id) = item.get(method).map(|o| &o["operationId"]) {
                    let id = id
                        .as_str()
                        .unwrap_or_else(|| panic!("{method} {path}: no id"));
                    assert!(seen.insert(id.to_owned()), "{method} {path}: `{id}` twice");
                }
            }
        }
    }

    #[test]
    fn the_document_is_openapi_3_1_and_describes_the_api() {
        let doc = document();
        assert!(
            doc["openapi"].as_str().unwrap().starts_with("3.1."),
            "{}",
            doc["openapi"]
        );
        assert_eq!(doc["info"]["title"], "orchestrator");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer", "{schemes}");
        assert_eq!(schemes["webhook_signature"]["in"], "header", "{schemes}");
        // Every schema a `$ref` names is defined.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let text = doc.to_string();
        for piece in text.split("\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in METHODS {
                let Some(operation) = item.get(method) else {
                    continue;
                };
                let here = format!("{} {path}", method.to_uppercase());
                let responses = operation["responses"].as_object().unwrap();
                assert!(
                    responses
                        .keys()
                        .any(|status| status.starts_with('2') || status == "101"),
                    "{here}: no success response"
                );
                // Every error answer is described by the error body.
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        let schema = &response["content"]["application/json"]["schema"];
                        let expected = if path == "/readyz" {
                            "#/components/schemas/Readiness"
                        } else {
                            "#/components/schemas/ApiError"
                        };
                        assert_eq!(schema["$ref"], expected, "{here} {status}");
                    }
                }
                if let Some(body) = operation.get("requestBody") {
                    let required = super::REQUIRED_BODIES.contains(&path.as_str());
                    assert_eq!(body["required"], required, "{here}: required or optional");
                    assert!(
                        body["content"]["application/json"]["schema"].is_object(),
                        "{here}: a JSON body"
                    );
                }
                // A path parameter is declared for every `{name}` of the path.
                let declared: BTreeSet<&str> = operation["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .filter(|p| p["in"] == "path")
                            .filter_map(|p| p["name"].as_str())
                            .collect()
                    })
                    .unwrap_or_default();
                let in_path: BTreeSet<&str> = path
                    .split('/')
                    .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
                    .collect();
                assert_eq!(declared, in_path, "{here}: path parameters");
                // What the bearer token guards says so: every `/api` route and `/ws`, reads
                // included, and `/metrics` optionally; the webhook receivers name their own.
                let security = operation["security"].to_string();
                if path == "/api" || path.starts_with("/api/") || path == "/ws" {
                    assert_eq!(
                        operation["security"],
                        serde_json::json!([{"bearer": []}]),
                        "{here}"
                    );
                    assert!(responses.contains_key("401"), "{here}: no 401");
                } else if path == "/metrics" {
                    assert_eq!(
                        operation["security"],
                        serde_json::json!([{}, {"bearer": []}]),
                        "{here}"
                    );
                } else if path.starts_with("/hooks/") {
                    assert!(security.contains("\"bearer\""), "{here}: {security}");
                    assert!(responses.contains_key("401"), "{here}: no 401");
                } else {
                    assert_eq!(operation.get("security"), None, "{here}");
                }
                // The guard's answers: a foreign Host, a foreign Origin, no JSON type (the
                // webhook receivers, which it lets through, declare their own).
                if path.starts_with("/hooks/") {
                    continue;
                }
                let probe = path == "/healthz" || path == "/readyz";
                assert_eq!(responses.contains_key("421"), !probe, "{here}: 421");
                let changes = method != "get";
                assert_eq!(
                    responses.contains_key("403"),
                    changes || path == "/ws",
                    "{here}: 403"
                );
                assert_eq!(responses.contains_key("415"), changes, "{here}: 415");
                assert_eq!(responses.contains_key("408"), changes, "{here}: 408");
            }
        }
    }
}
