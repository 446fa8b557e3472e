//! Manifests written through the API, and the custom dashboards they can declare.
//!
//! `POST /api/validate` checks a manifest (JSON) the way `validate` and `apply` do — the
//! schema of its kind and the semantic checks, against every other manifest of the project
//! — and writes nothing. `POST /api/manifests` saves one: it is validated first (invalid: `422`
//! with the diagnostics, nothing written), then written as YAML into its file — the file the
//! object already lives in, or `<kind directory>/<slug of its name>.yaml` — atomically, and
//! the project is reconciled, like `POST /api/scheduler/jobs`. The files stay the source of
//! truth: a git-source server refuses (`409`) and says to commit the file instead, and an
//! object declared in a JSON file or beside other documents is not rewritten (`409`).
//! File names come from slugs only: nothing a client sends can leave the kind's directory.
//!
//! `GET /api/dashboards` and `GET /api/dashboards/{id}` list the `Dashboard` objects in force;
//! `GET /api/agent-types` lists the built-in agent types and their actions (for editors).

use std::path::{Component, Path as FsPath, PathBuf};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::handlers::optional_json;
use super::AppState;
use crate::diagnostics::Diagnostic;
use crate::manifest::{kind_from_path, parse, slug, Kind};
use crate::source::{Snapshot, SourceFile};
use crate::store::{ObjectKey, ObjectRecord, ObjectStatus};

/// The body of `POST /api/validate` and `POST /api/manifests`.
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ManifestBody {
    /// The kind: `Workflow`, `Dashboard`, ... (case-insensitive; `workflows` works too).
    /// The server also takes it from the manifest's own `kind` when this is left out.
    #[schema(value_type = KindName, required = true)]
    kind: Option<String>,
    /// The id of the object whose manifest this replaces (`wf_smoke`); left out to create
    /// a new object, whose id is derived from the manifest's name.
    #[schema(value_type = String, required = false, min_length = 1, max_length = 1000,
        pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$")]
    id: Option<String>,
    /// The manifest, as JSON (what would be the YAML document).
    #[schema(value_type = Object)]
    manifest: Value,
}

/// The names of the kinds the API documents: each kind, in lower case, and its directory
/// (the server reads any case). Only a schema: the body holds a string.
struct KindName;

impl utoipa::PartialSchema for KindName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let names = Kind::ALL
            .iter()
            .map(|kind| kind.as_str().to_owned())
            .chain(
                Kind::ALL
                    .iter()
                    .map(|kind| kind.as_str().to_ascii_lowercase()),
            )
            .chain(Kind::ALL.iter().map(|kind| kind.directory().to_owned()));
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "The names of the kinds the API documents: each kind, in lower case, and its \
                 directory (the server reads any case).",
            ))
            .enum_values(Some(names))
            .into()
    }
}

impl ToSchema for KindName {}

/// Where a manifest goes and what it replaces.
struct Target {
    kind: Kind,
    /// The id the manifest declares or derives (none when it has no usable name).
    id: Option<String>,
    /// Project-relative file (`workflows/smoke.yaml`).
    file: String,
    /// The object it replaces, when editing.
    existing: Option<ObjectRecord>,
    /// The file's new text.
    text: String,
}

/// Refuses ids that are not plain slugs (the only ids the manifests produce: letters of
/// any script, as `slug` keeps them).
fn check_id(id: &str) -> Result<(), ApiError> {
    let plain = !id.is_empty()
        && id.len() <= 1000
        && !id.starts_with('.')
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "`{id}` is not an object id: expected letters, digits, `_`, `-` and `.` (such as wf_smoke)"
        ))
        .with_details(json!({"field": "id"})))
    }
}

/// The longest file name stem the API writes, in bytes: file systems allow 255 per name,
/// and a name of 200 letters of a non-Latin script slugs to several bytes a letter.
const MAX_STEM_BYTES: usize = 200;

/// The file name stem for a slug: at most [`MAX_STEM_BYTES`], cut between letters (the id
/// keeps the whole slug; only the file name is shortened).
pub(super) fn file_stem(slug: &str) -> &str {
    let mut end = slug.len().min(MAX_STEM_BYTES);
    while !slug.is_char_boundary(end) {
        end -= 1;
    }
    slug[..end].trim_end_matches(['-', '.', '_'])
}

/// A project-relative path that stays inside the project.
fn inside_project(file: &str) -> bool {
    let path = FsPath::new(file);
    !file.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// The kind named by the body, checked against the manifest's own `kind`.
fn body_kind(body: &ManifestBody) -> Result<Kind, ApiError> {
    let declared = body.manifest.get("kind").and_then(Value::as_str);
    let named = body.kind.as_deref().filter(|k| !k.trim().is_empty());
    let expected = || {
        Kind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let parse = |text: &str| {
        Kind::parse(text.trim()).ok_or_else(|| {
            ApiError::bad_request(format!(
                "unknown kind `{text}`: expected one of {}",
                expected()
            ))
            .with_details(json!({"field": "kind"}))
        })
    };
    match (named, declared) {
        (Some(named), Some(declared)) => {
            let kind = parse(named)?;
            if Kind::parse(declared) != Some(kind) {
                return Err(ApiError::bad_request(format!(
                    "the body says kind `{named}` but the manifest says `{declared}`"
                ))
                .with_details(json!({"field": "kind"})));
            }
            Ok(kind)
        }
        (Some(text), None) | (None, Some(text)) => parse(text),
        (None, None) => Err(ApiError::bad_request(format!(
            "`kind` is required: expected {{\"kind\", \"manifest\", \"id\"?}} with kind one of {}",
            expected()
        ))
        .with_details(json!({"field": "kind"}))),
    }
}

/// The id a manifest declares (`id`) or derives from its name.
fn manifest_id(kind: Kind, manifest: &Value) -> Option<String> {
    if let Some(id) = manifest.get("id").and_then(Value::as_str) {
        return Some(id.to_owned());
    }
    let name = manifest.get("name").and_then(Value::as_str).or_else(|| {
        (kind == Kind::WorkflowTemplate)
            .then(|| manifest.get("template").and_then(Value::as_str))
            .flatten()
    })?;
    let slug = slug(name);
    (!slug.is_empty()).then(|| format!("{}{slug}", kind.id_prefix()))
}

/// The comment lines a file starts with (kept when the file is rewritten).
fn leading_comments(text: &str) -> String {
    text.lines()
        .take_while(|line| line.starts_with('#'))
        .map(|line| format!("{line}\n"))
        .collect()
}

/// Works out the file and text of a manifest; for an edit, checks that its file can be
/// rewritten (`409` when it cannot).
fn target(state: &AppState, body: ManifestBody) -> Result<Target, ApiError> {
    let kind = body_kind(&body)?;
    let Value::Object(mut map) = body.manifest else {
        return Err(ApiError::bad_request(format!(
            "`manifest` must be a mapping (the document's fields), found {}",
            crate::manifest::describe_type(&body.manifest)
        ))
        .with_details(json!({"field": "manifest"})));
    };
    let existing = match body.id.as_deref() {
        Some(id) => {
            check_id(id)?;
            let key = ObjectKey {
                kind,
                id: id.to_owned(),
            };
            let record = state
                .view
                .objects()
                .records
                .get(&key)
                .filter(|r| r.is_live())
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "no {kind} `{id}` in force to replace; leave `id` out to create one"
                    ))
                })?;
            Some(record)
        }
        None => None,
    };
    let id = manifest_id(kind, &Value::Object(map.clone()));
    let mut header = String::new();
    let file = match &existing {
        Some(record) => {
            if state.controller.git.is_none() {
                header = rewritable_header(state, record)?;
            } else {
                inside(record)?;
            }
            record.source_file.clone()
        }
        None => {
            if let Some(id) = &id {
                let key = ObjectKey {
                    kind,
                    id: id.clone(),
                };
                if state
                    .view
                    .objects()
                    .records
                    .get(&key)
                    .is_some_and(ObjectRecord::is_live)
                {
                    return Err(ApiError::conflict(format!(
                        "{kind} {id} exists already: edit it (send its `id`), or pick another name"
                    ))
                    .with_details(json!({"field": "name", "id": id})));
                }
            }
            let stem = id
                .as_deref()
                .map(|id| id.strip_prefix(kind.id_prefix()).unwrap_or(id))
                .map(|s| file_stem(slug(s).trim_start_matches(['.', '-', '_'])).to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "untitled".to_owned());
            header = format!(
                "# yaml-language-server: $schema=../schemas/{}\n",
                crate::schema::schema_file(kind)
            );
            format!("{}/{stem}.yaml", kind.directory())
        }
    };
    if !map.contains_key("kind") && kind_from_path(&file) != Some(kind) {
        let mut with_kind = Map::new();
        with_kind.insert("kind".into(), Value::from(kind.as_str()));
        with_kind.extend(map);
        map = with_kind;
    }
    let text = format!(
        "{header}{}",
        crate::reconcile::diff::to_yaml(&Value::Object(map))
    );
    Ok(Target {
        kind,
        id,
        file,
        existing,
        text,
    })
}

/// Refuses an object declared outside the project (`409`).
fn inside(record: &ObjectRecord) -> Result<(), ApiError> {
    let file = &record.source_file;
    if inside_project(file) {
        Ok(())
    } else {
        Err(ApiError::conflict(format!(
            "{} {} is declared in {file}, outside the project: edit that file itself",
            record.key.kind, record.key.id
        ))
        .with_details(json!({"file": file})))
    }
}

/// The leading comments of the project file `record` is declared in, once it is known that
/// saving may rewrite that file: inside the project, YAML, and holding that one document
/// (`409` saying why otherwise). Saving checks this, and so do the editors before they
/// offer to save.
pub(super) fn rewritable_header(
    state: &AppState,
    record: &ObjectRecord,
) -> Result<String, ApiError> {
    inside(record)?;
    existing_header(state, record, &record.source_file)
}

/// The leading comments of the file an edited object lives in, once it is known that the
/// file can be rewritten: a YAML file with that one document.
fn existing_header(
    state: &AppState,
    record: &ObjectRecord,
    file: &str,
) -> Result<String, ApiError> {
    let id = &record.key.id;
    let kind = record.key.kind;
    if !(file.ends_with(".yaml") || file.ends_with(".yml")) {
        return Err(ApiError::conflict(format!(
            "{kind} {id} is declared in the JSON file {file}: the editor writes YAML and would replace the file's formatting; edit {file} itself, or move the object to a YAML file"
        ))
        .with_details(json!({"file": file})));
    }
    let text = std::fs::read_to_string(state.config.project_dir.join(file)).map_err(|e| {
        ApiError::conflict(format!(
            "{kind} {id} was declared in {file}, which cannot be read now ({e}): sync first"
        ))
    })?;
    let documents = parse::parse_yaml(&text).map_err(|e| {
        ApiError::conflict(format!(
            "{file} does not parse now (line {}: {}): fix or sync it first",
            e.line, e.message
        ))
    })?;
    let single = documents.len() == 1
        && documents[0].value.get("alerts").is_none()
        && documents[0].value.is_object();
    if !single {
        return Err(ApiError::conflict(format!(
            "{kind} {id} is declared in {file} beside other documents: saving it would rewrite them too; edit {file} itself, or move the object to a file of its own"
        ))
        .with_details(json!({"file": file})));
    }
    Ok(leading_comments(&text))
}

/// The snapshot to validate against: the project's manifests with the target's file
/// replaced (a git-source server: the objects in force, one file each).
fn snapshot_with(state: &AppState, target: &Target) -> Result<Snapshot, ApiError> {
    let mut snapshot = if state.controller.git.is_some() {
        let mut files = Vec::new();
        for record in state.view.objects().records.values() {
            let Some(Value::Object(spec)) = record.spec.as_deref().filter(|_| record.is_live())
            else {
                continue;
            };
            let mut spec = spec.clone();
            spec.insert("kind".into(), Value::from(record.key.kind.as_str()));
            spec.insert("id".into(), Value::from(record.key.id.clone()));
            files.push(SourceFile {
                path: format!("{}/{}.json", record.key.kind.directory(), record.key.id),
                text: Value::Object(spec).to_string(),
            });
        }
        Snapshot {
            revision: "preview".into(),
            files,
            ..Snapshot::default()
        }
    } else {
        crate::reconcile::load_manifests(&state.config, &[])
            .map_err(ApiError::internal)?
            .0
    };
    // The object being edited is replaced, wherever it was read from.
    if let Some(record) = &target.existing {
        let synthetic = format!("{}/{}.json", record.key.kind.directory(), record.key.id);
        snapshot
            .files
            .retain(|f| f.path != record.source_file && f.path != synthetic);
    }
    snapshot.files.retain(|f| f.path != target.file);
    snapshot.files.push(SourceFile {
        path: target.file.clone(),
        text: target.text.clone(),
    });
    Ok(snapshot)
}

/// The diagnostics of the target's file, validated with every other manifest.
fn check(state: &AppState, target: &Target) -> Result<Vec<Diagnostic>, ApiError> {
    let snapshot = snapshot_with(state, target)?;
    // A Quarantine is also checked against the day and the tests there are results of.
    let surroundings = if target.kind == Kind::Quarantine {
        let tests = super::quarantine::quarantine_tests(&state.store)
            .map_err(ApiError::internal)?
            .tests;
        crate::reconcile::Surroundings {
            today: Some(chrono::Utc::now().date_naive()),
            tests: (!tests.is_empty()).then(|| tests.into_iter().map(|t| t.test).collect()),
            ..Default::default()
        }
    } else {
        crate::reconcile::Surroundings::default()
    };
    let desired = crate::reconcile::desired_set_with(&snapshot, &surroundings);
    Ok(desired
        .diagnostics
        .into_iter()
        .filter(|d| d.file == target.file)
        .collect())
}

/// The diagnostics `text` would have as the new project file `file`, validated with every
/// other manifest; nothing is written.
pub(super) fn check_new_file(
    state: &AppState,
    kind: Kind,
    file: &str,
    text: &str,
) -> Result<Vec<Diagnostic>, ApiError> {
    let target = Target {
        kind,
        id: None,
        file: file.to_owned(),
        existing: None,
        text: text.to_owned(),
    };
    check(state, &target)
}

/// Whether `file` is inside one of the configured manifest directories.
fn in_manifest_paths(state: &AppState, file: &str) -> bool {
    let project = &state.config.project_dir;
    state.config.config.manifests.paths.iter().any(|path| {
        let path = path.strip_prefix(project).unwrap_or(path);
        let path = path.strip_prefix(".").unwrap_or(path);
        FsPath::new(file).starts_with(path)
    })
}

/// The answer of `POST /api/validate`.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct Validation {
    /// No diagnostic is an error.
    valid: bool,
    /// The manifest's kind.
    kind: String,
    /// Its id (declared, or derived from its name); null without a usable name.
    id: Option<String>,
    /// The file saving would write (project-relative).
    file: String,
    /// Whether saving would replace an object in force (the body named its `id`).
    replaces: bool,
    /// Errors and warnings, with the line and column in `text` and the JSON pointer into
    /// the manifest.
    #[schema(value_type = Vec<Object>)]
    diagnostics: Vec<Diagnostic>,
    /// The YAML text saving would write.
    text: String,
    /// Whether this server writes manifests (false when it follows a git repository:
    /// commit `text` to `file` there instead).
    writable: bool,
}

/// Validates a manifest without saving it.
///
/// The manifest is checked as `validate` and `apply` check the files — its kind's schema,
/// then the rules between objects (steps and `depends_on`, agents and actions, references)
/// — together with every other manifest of the project. Nothing is written. With `id`,
/// the manifest replaces that object (so its own id is no duplicate). Works in git-source
/// mode too (against the objects in force).
#[utoipa::path(post, path = "/api/validate", tag = "manifests",
    request_body(content = ManifestBody, content_type = "application/json",
        description = "The manifest and its kind; `id` when it replaces an object",
        example = json!({"kind": "Workflow", "manifest": {"name": "Smoke", "steps": [{"name": "hello", "command": "echo hi"}]}})),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The diagnostics (valid or not)", body = Validation),
        (status = 400, description = "The body is not JSON, or has no kind, or the manifest is not a mapping, or `id` is not an id", body = ErrorBody),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 404, description = "`id` names no object of that kind", body = ErrorBody),
        (status = 409, description = "The object `id` names lives in a file that cannot be rewritten (JSON, several documents)", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "A body of the wrong shape", body = ErrorBody),
        (status = 500, description = "The manifests cannot be read", body = ErrorBody),
    ))]
pub async fn validate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Validation>, ApiError> {
    let body: ManifestBody = optional_json(&headers, &body)?;
    tokio::task::spawn_blocking(move || {
        let target = target(&state, body)?;
        let diagnostics = check(&state, &target)?;
        Ok(Json(Validation {
            valid: !diagnostics.iter().any(Diagnostic::is_error),
            kind: target.kind.as_str().to_owned(),
            id: target.id,
            file: target.file,
            replaces: target.existing.is_some(),
            diagnostics,
            text: target.text,
            writable: state.controller.git.is_none(),
        }))
    })
    .await
    .map_err(ApiError::internal)?
}

/// Writes `text` to `path` through a hidden temporary file and a rename, so a reader (the
/// watcher) sees the old file or the new one, never half of one.
fn write_atomically(path: &FsPath, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(FsPath::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary: PathBuf = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        std::fs::write(&temporary, text)?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    // On a full disk the temporary file may exist, empty or cut short: never leave it.
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// A record as saving answers it.
fn object_json(record: &ObjectRecord) -> Value {
    json!({
        "kind": record.key.kind,
        "id": record.key.id,
        "name": record.name,
        "status": record.status,
        "source_file": record.source_file,
        "spec": record.spec,
        "applied_revision": record.applied_revision,
        "generation": record.generation,
        "applied_at": record.applied_at,
    })
}

/// Saves a manifest: validates it, writes its file, reconciles.
///
/// Without `id`, creates the object: `<kind directory>/<slug of its name>.yaml` (`201`;
/// `409` when an object with its id or that file exists). With `id`, replaces that object's
/// manifest in the YAML file it is declared in, keeping the file's leading comments (`200`;
/// a new name renames it). An invalid manifest is refused with `422` and its diagnostics
/// (`details.diagnostics`, each with the JSON pointer into the manifest; `details.pointer`
/// that of the first error), and nothing is written. In git-source mode nothing is written either (`409`): commit the file instead
/// (`POST /api/validate` gives its text).
#[utoipa::path(post, path = "/api/manifests", tag = "manifests",
    request_body(content = ManifestBody, content_type = "application/json",
        description = "The manifest and its kind; `id` when it replaces an object",
        example = json!({"kind": "Dashboard", "manifest": {"name": "Team", "widgets": [{"type": "runs_table"}]}})),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Replaced and applied: `{kind, id, name, file, created, object, diagnostics}`", body = Object),
        (status = 201, description = "Created and applied: `{kind, id, name, file, created, object, diagnostics}`", body = Object,
            headers(("Location" = String, description = "The object's route, where it has one"))),
        (status = 400, description = "The body is not JSON, or has no kind, or the manifest is not a mapping, or `id` is not an id", body = ErrorBody),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 404, description = "`id` names no object of that kind", body = ErrorBody),
        (status = 409, description = "Git-source mode; or the object exists (create) or lives in a JSON or multi-document file (replace); or its directory is not among `manifests.paths`", body = ErrorBody),
        (status = 413, description = "The body is over `server.max_body_bytes`", body = ErrorBody),
        (status = 415, description = "A body without `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "The manifest is invalid: `details.diagnostics` say why, `details.pointer` is the first invalid field; nothing was written", body = ErrorBody),
        (status = 500, description = "The file or the store cannot be written", body = ErrorBody),
    ))]
pub async fn save(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let body: ManifestBody = optional_json(&headers, &body)?;
    tokio::task::spawn_blocking(move || save_blocking(&state, body))
        .await
        .map_err(ApiError::internal)?
}

fn save_blocking(state: &AppState, body: ManifestBody) -> Result<Response, ApiError> {
    let _one_at_a_time = state
        .routes
        .saving
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let target = target(state, body)?;
    if let Some(hint) =
        crate::controller::git::commit_instead_hint(&state.config, FsPath::new(&target.file))
    {
        return Err(ApiError::conflict(format!(
            "manifests cannot be saved through the API in git-source mode: {hint}"
        ))
        .with_details(json!({"file": target.file, "text": target.text})));
    }
    if !in_manifest_paths(state, &target.file) {
        return Err(ApiError::conflict(format!(
            "{} is not inside the manifest directories this project reads (manifests.paths in the configuration): add `{}` there first",
            target.file,
            target.kind.directory()
        ))
        .with_details(json!({"file": target.file})));
    }
    let diagnostics = check(state, &target)?;
    let reason = diagnostics
        .iter()
        .find(|d| d.is_error())
        .map(|d| d.message.clone());
    if let Some(reason) = reason {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!("the manifest is not valid; nothing was written: {reason}"),
        )
        .with_details(json!({
            "diagnostics": diagnostics,
            "file": target.file,
            "pointer": diagnostics.iter().find(|d| d.is_error()).map(|d| d.pointer.clone()),
        })));
    }
    let Some(id) = target.id.clone() else {
        // Validation reports a manifest without a usable name; this is a backstop.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "the manifest has no name to derive an id from; nothing was written",
        ));
    };
    let path = state.config.project_dir.join(&target.file);
    let previous = match &target.existing {
        Some(_) => Some(std::fs::read_to_string(&path).map_err(ApiError::internal)?),
        None => {
            if path.exists() {
                return Err(ApiError::conflict(format!(
                    "{} exists already: edit the object it declares, or pick another name",
                    target.file
                ))
                .with_details(json!({"file": target.file})));
            }
            None
        }
    };
    write_atomically(&path, &target.text).map_err(ApiError::internal)?;
    if previous.is_none() {
        put_back_schemas(&state.config.project_dir);
    }
    let key = ObjectKey {
        kind: target.kind,
        id: id.clone(),
    };
    let undo = || {
        let _ = match &previous {
            Some(text) => write_atomically(&path, text),
            None => std::fs::remove_file(&path),
        };
        let _ = crate::controller::reconcile(&state.controller, &[], true, false, "api");
    };
    let outcome = match crate::controller::reconcile(&state.controller, &[], true, false, "api") {
        Ok(outcome) => outcome,
        Err(err) => {
            undo();
            return Err(ApiError::from(err));
        }
    };
    let record = state.store.object(&key)?;
    let applied = record
        .as_ref()
        .filter(|r| r.is_live() && r.status == ObjectStatus::Applied);
    let Some(record) = applied else {
        undo();
        return Err(ApiError::not_applied(
            outcome.diagnostics,
            &target.file,
            "the manifest was not applied; the file is as it was",
            "the object was not applied",
        ));
    };
    let created = target.existing.is_none();
    let answer = json!({
        "kind": target.kind,
        "id": id,
        "name": record.name,
        "file": target.file,
        "created": created,
        "renamed_from": target.existing.as_ref().filter(|r| r.key.id != id).map(|r| r.key.id.clone()),
        "object": object_json(record),
        "diagnostics": diagnostics,
    });
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = match target.kind {
        Kind::Workflow => Some(format!("/api/workflows/{id}")),
        Kind::Dashboard => Some(format!("/api/dashboards/{id}")),
        _ => None,
    };
    let mut response = (status, Json(answer)).into_response();
    if let Some(location) = location.filter(|_| created) {
        if let Ok(value) = header::HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
    }
    Ok(response)
}

/// The built-in agent types and their actions.
///
/// `{"agent_types": [{"name", "actions", "summary"}]}`: what an Agent manifest's `type`
/// can be, and the actions a step of such an agent may name when the manifest does not
/// declare its own `actions` (the first is the default). The workflow editor offers these.
#[utoipa::path(get, path = "/api/agent-types", tag = "agents", responses(
    (status = 200, description = "The built-in agent types", body = Object),
))]
pub async fn agent_types() -> Json<Value> {
    Json(json!({
        "agent_types": crate::spec::agents::BUILTIN_AGENTS
            .iter()
            .map(|a| json!({"name": a.name, "actions": a.actions, "summary": a.summary}))
            .collect::<Vec<_>>(),
    }))
}

/// A dashboard as the list shows it.
fn dashboard_summary(record: &ObjectRecord) -> Value {
    let spec = record.spec.clone().unwrap_or_default();
    json!({
        "id": record.key.id,
        "name": record.name,
        "description": spec.get("description").cloned().unwrap_or(Value::Null),
        "widgets": spec.get("widgets").and_then(Value::as_array).map_or(0, Vec::len),
        "status": record.status,
        "source_file": record.source_file,
    })
}

/// The custom dashboards.
///
/// `{"dashboards": [...]}`, by name: each with `id`, `name`, `description`, `widgets` (how
/// many), `status` and `source_file`.
#[utoipa::path(get, path = "/api/dashboards", tag = "dashboard", responses(
    (status = 200, description = "The dashboards in force", body = Object),
))]
pub async fn list_dashboards(State(state): State<AppState>) -> Json<Value> {
    let objects = state.view.objects();
    let mut dashboards: Vec<&ObjectRecord> = objects
        .records
        .values()
        .filter(|r| r.key.kind == Kind::Dashboard && r.is_live() && r.spec.is_some())
        .collect();
    dashboards.sort_by_key(|r| r.name.to_lowercase());
    Json(json!({
        "dashboards": dashboards.into_iter().map(dashboard_summary).collect::<Vec<_>>(),
    }))
}

/// One custom dashboard: its summary, the `spec` in force (its widgets) and the
/// `diagnostics` of its current manifest.
#[utoipa::path(get, path = "/api/dashboards/{id}", tag = "dashboard",
    params(("id" = String, Path, description = "The dashboard's id (`dash_...`) or name")),
    responses(
        (status = 200, description = "The dashboard", body = Object),
        (status = 404, description = "No such dashboard", body = ErrorBody),
    ))]
pub async fn show_dashboard(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let objects = state.view.objects();
    let live: Vec<&ObjectRecord> = objects
        .records
        .values()
        .filter(|r| r.key.kind == Kind::Dashboard && r.is_live() && r.spec.is_some())
        .collect();
    let record = live
        .iter()
        .find(|r| r.key.id == id)
        .or_else(|| live.iter().find(|r| r.name == id))
        .ok_or_else(|| {
            let ids: Vec<&str> = live.iter().map(|r| r.key.id.as_str()).collect();
            ApiError::not_found(format!(
                "no dashboard `{id}`; dashboards: {}",
                if ids.is_empty() {
                    "none yet".to_owned()
                } else {
                    ids.join(", ")
                }
            ))
        })?;
    let mut body = dashboard_summary(record);
    body["spec"] = record.spec.as_deref().cloned().unwrap_or(Value::Null);
    body["diagnostics"] = json!(record.diagnostics);
    body["applied_revision"] = json!(record.applied_revision);
    Ok(Json(body))
}

/// Writes the published schemas a new manifest's modeline names into the project's
/// `schemas/` where they are missing; a failure only costs editors their completion, so it
/// is logged, not answered.
pub(super) fn put_back_schemas(project_dir: &std::path::Path) {
    if let Err(err) = crate::source::dir::ensure_schemas(project_dir) {
        tracing::warn!(
            "cannot write the schemas into {}: {err}",
            project_dir.join("schemas").display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_slugs() {
        for good in [
            "wf_smoke",
            "dash_team-board",
            "wf_a.b",
            "wf_café",
            "wf_اختبار-الواجهة",
        ] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "../etc",
            "wf/../../x",
            ".hidden",
            "a b",
            "wf_..",
            "/abs",
            "wf_a\0",
            "wf_a\\b",
        ] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn files_stay_in_the_project() {
        assert!(inside_project("workflows/a.yaml"));
        assert!(!inside_project("../a.yaml"));
        assert!(!inside_project("/etc/passwd"));
        assert!(!inside_project("workflows/../../a.yaml"));
    }

    #[test]
    fn names_become_safe_ids() {
        assert_eq!(
            manifest_id(Kind::Workflow, &json!({"name": "../../etc/passwd"})).as_deref(),
            Some("wf_..-..-etc-passwd")
        );
        assert_eq!(
            manifest_id(Kind::Dashboard, &json!({"name": "Team Board"})).as_deref(),
            Some("dash_team-board")
        );
        assert_eq!(manifest_id(Kind::Workflow, &json!({"name": "!!"})), None);
    }

    #[test]
    fn file_stems_fit_a_file_name() {
        assert_eq!(file_stem("smoke"), "smoke");
        let long = "é".repeat(200);
        let stem = file_stem(&long);
        assert!(stem.len() <= MAX_STEM_BYTES && stem.len() >= MAX_STEM_BYTES - 1);
        assert!(long.starts_with(stem));
        assert_eq!(
            file_stem(&format!("{}-b", "a".repeat(199))),
            "a".repeat(199)
        );
    }

    #[test]
    fn leading_comments_are_kept() {
        assert_eq!(leading_comments("# a\n# b\nname: x\n# c\n"), "# a\n# b\n");
    }
}
