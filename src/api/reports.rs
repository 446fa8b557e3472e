//! Reports and analytics: `GET /api/runs/{id}/artifacts/{*path}` serves the files a run
//! recorded as artifacts (its HTML, JUnit and JSON reports), and
//! `GET /api/workflows/{id}/trends` gives a workflow's recent finished runs for charts —
//! durations, test pass rates and outcomes — with the slowest and the most failing test
//! cases over them.
//!
//! An artifact is served only when the run recorded exactly that path, the path is relative
//! and has no `..`, and the file it resolves to (symlinks followed) lies inside the
//! project's `reports/` directory or the run's log directory; anything else is refused with
//! the standard error body.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::engine::run::find_workflow_in;
use crate::model::{RunRecord, Status, StepRecord, TestStatus, TestSummary};

/// The policy artifacts are served under: a report is a document to read, so it gets no
/// script, no plugin and an opaque origin (`sandbox`); its own inline styles and data
/// images are allowed.
pub const ARTIFACT_CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox";

/// The content type of an artifact by its extension.
pub fn artifact_content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "xml" => "application/xml",
        "json" => "application/json",
        "txt" | "log" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

/// Checks a requested artifact path: relative, `/`-separated, without `.`, `..` or empty
/// segments, backslashes or NUL. Returns it as a relative path.
pub fn safe_relative(path: &str) -> Result<PathBuf, ApiError> {
    let refuse = |why: &str| {
        ApiError::bad_request(format!(
            "artifact path `{path}` {why}; expected a path relative to the project, as the run recorded it (such as reports/run_.../report.html)"
        ))
        .with_details(json!({"parameter": "path", "value": path}))
    };
    if path.is_empty() {
        return Err(refuse("is empty"));
    }
    if path.starts_with('/') {
        return Err(refuse("is absolute"));
    }
    if path.contains('\\') || path.contains('\0') {
        return Err(refuse("contains a backslash or a NUL"));
    }
    let mut out = PathBuf::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => return Err(refuse("has an empty or `.` segment")),
            ".." => return Err(refuse("leaves its directory (`..`)")),
            other => out.push(other),
        }
    }
    // What `Path` makes of it must be plain names too (no prefix or root on any platform).
    if !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(refuse("is not a plain relative path"));
    }
    Ok(out)
}

/// Resolves `relative` under `project` (symlinks followed) and checks the file lies inside
/// one of `roots`. `Ok(None)` when there is no such file.
pub fn resolve_inside(
    project: &Path,
    relative: &Path,
    roots: &[PathBuf],
) -> std::io::Result<Option<Result<PathBuf, ()>>> {
    let file = match project.join(relative).canonicalize() {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let inside = roots
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .any(|root| file.starts_with(&root));
    Ok(Some(if inside && file.is_file() {
        Ok(file)
    } else {
        Err(())
    }))
}

/// Percent-encodes a path segment for a URL (unreserved characters kept).
fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The URL of a run's artifact, `None` when it cannot be served (an absolute path).
pub fn artifact_url(run_id: &str, path: &str) -> Option<String> {
    safe_relative(path).ok()?;
    let encoded: Vec<String> = path.split('/').map(encode_segment).collect();
    Some(format!(
        "/api/runs/{}/artifacts/{}",
        encode_segment(run_id),
        encoded.join("/")
    ))
}

/// A file a run recorded as an artifact.
///
/// Only the paths the run's steps recorded (`GET /api/runs/{id}` lists them under each
/// step's `artifacts`), relative to the project, resolved inside the project's `reports/`
/// directory or the run's log directory. HTML is sent with a sandboxing
/// Content-Security-Policy (no scripts).
#[utoipa::path(get, path = "/api/runs/{id}/artifacts/{*path}", tag = "runs",
    params(
        ("id" = String, Path, description = "The run's id (`run_...`)"),
        ("path" = String, Path, description = "The artifact's path as the run recorded it, e.g. `reports/run_.../report.html`: relative, `/`-separated, no segment empty or starting with `.`, no backslash or NUL",
            pattern = r"^[^/\\\x00.][^/\\\x00]*(/[^/\\\x00.][^/\\\x00]*)*$"),
    ),
    responses(
        (status = 200, description = "The file, with its content type (`text/html`, `application/xml`, `application/json`, ...)",
            body = String, content_type = "text/html"),
        (status = 400, description = "The path is absolute, has `..`, `.` or empty segments, a backslash or a NUL", body = ErrorBody),
        (status = 404, description = "No such run, the run recorded no such artifact, its file is gone, or it lies outside `reports/` and the run's log directory", body = ErrorBody),
        (status = 500, description = "The store or the file cannot be read", body = ErrorBody),
    ))]
pub async fn run_artifact(
    State(state): State<AppState>,
    UrlPath((id, path)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    let relative = safe_relative(&path)?;
    let store = std::sync::Arc::clone(&state.store);
    let run_id = id.clone();
    let (run, steps) = tokio::task::spawn_blocking(move || {
        // Run ids never hold a NUL; the keys of the runs tree's index start with one.
        let run = match run_id.contains('\0') {
            true => None,
            false => store.run(&run_id)?,
        };
        Ok::<_, crate::store::StoreError>((run, store.steps(&run_id)?))
    })
    .await
    .map_err(ApiError::internal)??;
    if run.is_none() {
        return Err(ApiError::not_found(format!(
            "no run `{id}`; GET /api/runs lists them"
        )));
    }
    let recorded: Vec<&str> = steps
        .iter()
        .flat_map(|s| s.artifacts.iter().map(String::as_str))
        .collect();
    if !recorded
        .iter()
        .any(|a| safe_relative(a).ok().as_ref() == Some(&relative))
    {
        let listed = if recorded.is_empty() {
            "it recorded none".to_owned()
        } else {
            format!("its artifacts: {}", recorded.join(", "))
        };
        return Err(ApiError::not_found(format!(
            "run `{id}` recorded no artifact `{path}`; {listed}"
        ))
        .with_details(json!({"run_id": id, "path": path})));
    }
    let engine = state.runner.engine();
    let roots = [
        engine.reports_dir.clone(),
        engine.log_dir.join("workflows").join(&id),
    ];
    let project = engine.project_dir.clone();
    let resolved = tokio::task::spawn_blocking(move || resolve_inside(&project, &relative, &roots))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let file = match resolved {
        None => {
            return Err(ApiError::not_found(format!(
                "run `{id}` recorded `{path}`, but the file is gone"
            ))
            .with_details(json!({"run_id": id, "path": path})))
        }
        Some(Err(())) => {
            return Err(ApiError::not_found(format!(
                "run `{id}` recorded `{path}`, but it is not a file inside reports/ or the run's log directory; only those are served"
            ))
            .with_details(json!({"run_id": id, "path": path})))
        }
        Some(Ok(file)) => file,
    };
    let bytes = tokio::fs::read(&file).await.map_err(ApiError::internal)?;
    let mut response = (
        [(header::CONTENT_TYPE, artifact_content_type(&path))],
        bytes,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(ARTIFACT_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// How many recent runs.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrendsQuery {
    /// The most recent finished runs to look at, 1 to 200 (default 30).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<usize>,
}

/// A file a run recorded.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunArtifact {
    /// The step that recorded it.
    pub step: String,
    /// Its path as recorded (relative to the project where possible).
    pub path: String,
    /// Where `GET /api/runs/{id}/artifacts/{path}` serves it; `null` for an absolute path.
    pub url: Option<String>,
}

/// One finished run, as the trends chart it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TrendRun {
    /// The run.
    pub id: String,
    /// How it ended.
    pub status: Status,
    /// When it was created.
    pub created_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// Wall time.
    pub duration_ms: Option<u64>,
    /// Its test cases, counted.
    pub tests: TestSummary,
    /// Its test cases as people read them: "212 passed, 2 new failures, 1 flaky, 3
    /// quarantined" (empty without test cases).
    pub tests_text: String,
    /// passed / (passed + failed + errors); `null` without such cases.
    pub pass_rate: Option<f64>,
    /// Files its steps recorded.
    pub artifacts: Vec<RunArtifact>,
}

/// A test case over the runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TestTrend {
    /// `<testsuite name>`.
    pub suite: String,
    /// `classname`.
    pub classname: String,
    /// `name`.
    pub name: String,
    /// Runs it ran in (skipped cases left out).
    pub runs: u32,
    /// Runs it failed or errored in.
    pub failures: u32,
    /// Mean time, seconds.
    pub mean_seconds: f64,
    /// Longest time, seconds.
    pub max_seconds: f64,
    /// Its outcome in the latest run it ran in.
    pub last_status: TestStatus,
    /// The latest run it failed in.
    pub last_failed_run: Option<String>,
    /// The message of its latest failure.
    pub last_message: Option<String>,
}

/// Figures of the runs' durations, milliseconds.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DurationFigures {
    /// Mean.
    pub mean_ms: u64,
    /// Median.
    pub p50_ms: u64,
    /// 95th percentile (nearest rank).
    pub p95_ms: u64,
    /// Longest.
    pub max_ms: u64,
}

/// A workflow's recent finished runs.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkflowTrends {
    /// The workflow's id.
    pub workflow_id: String,
    /// Its name.
    pub workflow_name: String,
    /// The limit asked for.
    pub limit: usize,
    /// The runs, oldest first (at most `limit`, the most recent).
    pub runs: Vec<TrendRun>,
    /// How many of them ended in each state (`succeeded`, `failed`, `timed_out`, ...).
    pub outcomes: BTreeMap<String, u32>,
    /// The runs' test cases together: passed / (passed + failed + errors).
    pub pass_rate: Option<f64>,
    /// The runs' durations; `null` without runs.
    pub duration: Option<DurationFigures>,
    /// Up to 10 test cases by mean time, longest first.
    pub slowest_tests: Vec<TestTrend>,
    /// Up to 10 test cases that failed, most failures first.
    pub failing_tests: Vec<TestTrend>,
}

/// The most runs a trend looks at.
pub const MAX_TREND_RUNS: usize = 200;
/// Runs a trend looks at by default.
pub const DEFAULT_TREND_RUNS: usize = 30;
/// Test cases in each top list.
const TOP_TESTS: usize = 10;

fn pass_rate(tests: &TestSummary) -> Option<f64> {
    let counted = tests.passed + tests.failed + tests.errors;
    (counted > 0).then(|| f64::from(tests.passed) / f64::from(counted))
}

/// The trends of `runs` (oldest first, with their steps): the last `limit` finished ones.
pub fn trends(
    workflow_id: &str,
    workflow_name: &str,
    limit: usize,
    runs: &[(RunRecord, Vec<StepRecord>)],
) -> WorkflowTrends {
    let finished: Vec<&(RunRecord, Vec<StepRecord>)> = runs
        .iter()
        .filter(|(r, _)| r.status.is_finished())
        .collect();
    let recent = &finished[finished.len().saturating_sub(limit)..];
    let mut outcomes = BTreeMap::new();
    let mut all_tests = TestSummary::default();
    let mut durations = Vec::new();
    // (suite, classname, name) -> (runs, failures, total time, max time, last status, last failed run, message)
    type Key = (String, String, String);
    let mut cases: BTreeMap<Key, TestTrend> = BTreeMap::new();
    let mut out_runs = Vec::with_capacity(recent.len());
    for (run, steps) in recent {
        let status = serde_json::to_value(run.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        *outcomes.entry(status).or_insert(0) += 1;
        all_tests.add(run.tests);
        if let Some(ms) = run.duration_ms {
            durations.push(ms);
        }
        for case in steps.iter().flat_map(|s| &s.tests) {
            if case.status == TestStatus::Skipped {
                continue;
            }
            let key = (
                case.suite.clone(),
                case.classname.clone(),
                case.name.clone(),
            );
            let entry = cases.entry(key).or_insert_with(|| TestTrend {
                suite: case.suite.clone(),
                classname: case.classname.clone(),
                name: case.name.clone(),
                runs: 0,
                failures: 0,
                mean_seconds: 0.0,
                max_seconds: 0.0,
                last_status: case.status,
                last_failed_run: None,
                last_message: None,
            });
            entry.runs += 1;
            // A running sum; divided by `runs` below.
            entry.mean_seconds += case.time_seconds;
            entry.max_seconds = entry.max_seconds.max(case.time_seconds);
            entry.last_status = case.status;
            if matches!(case.status, TestStatus::Failed | TestStatus::Error) {
                entry.failures += 1;
                entry.last_failed_run = Some(run.id.clone());
                entry.last_message = case.message.clone();
            }
        }
        out_runs.push(TrendRun {
            id: run.id.clone(),
            status: run.status,
            created_at: run.created_at.clone(),
            finished_at: run.finished_at.clone(),
            duration_ms: run.duration_ms,
            tests: run.tests,
            tests_text: if run.tests.total > 0 {
                run.tests.describe()
            } else {
                String::new()
            },
            pass_rate: pass_rate(&run.tests),
            artifacts: steps
                .iter()
                .flat_map(|s| {
                    s.artifacts.iter().map(|path| RunArtifact {
                        step: s.name.clone(),
                        path: path.clone(),
                        url: artifact_url(&run.id, path),
                    })
                })
                .collect(),
        });
    }
    let mut cases: Vec<TestTrend> = cases
        .into_values()
        .map(|mut c| {
            c.mean_seconds /= f64::from(c.runs.max(1));
            c
        })
        .collect();
    let duration = (!durations.is_empty()).then(|| {
        durations.sort_unstable();
        let rank = |q: f64| {
            let index = ((q * durations.len() as f64).ceil() as usize).clamp(1, durations.len());
            durations[index - 1]
        };
        DurationFigures {
            mean_ms: durations.iter().sum::<u64>() / durations.len() as u64,
            p50_ms: rank(0.5),
            p95_ms: rank(0.95),
            max_ms: *durations.last().unwrap_or(&0),
        }
    });
    cases.sort_by(|a, b| {
        b.mean_seconds
            .total_cmp(&a.mean_seconds)
            .then_with(|| a.name.cmp(&b.name))
    });
    let slowest_tests: Vec<TestTrend> = cases.iter().take(TOP_TESTS).cloned().collect();
    cases.retain(|c| c.failures > 0);
    cases.sort_by(|a, b| {
        b.failures
            .cmp(&a.failures)
            .then_with(|| a.name.cmp(&b.name))
    });
    cases.truncate(TOP_TESTS);
    WorkflowTrends {
        workflow_id: workflow_id.to_owned(),
        workflow_name: workflow_name.to_owned(),
        limit,
        runs: out_runs,
        outcomes,
        pass_rate: pass_rate(&all_tests),
        duration,
        slowest_tests,
        failing_tests: cases,
    }
}

/// A workflow's trends over its recent finished runs.
///
/// For each of the last `limit` finished runs (oldest first): its status, duration, test
/// counts and pass rate, and the files it recorded with the URL serving each; over them,
/// the count of each outcome, the overall pass rate, duration figures, and the slowest and
/// the most failing test cases. Unlike `GET /api/workflows/{id}/metrics` it is not bounded
/// by the metrics window: it reads the runs kept in the store.
#[utoipa::path(get, path = "/api/workflows/{id}/trends", tag = "workflows",
    params(("id" = String, Path, description = "The workflow's id (`wf_...`) or name"), TrendsQuery),
    responses(
        (status = 200, description = "The workflow's recent runs and figures over them", body = WorkflowTrends),
        (status = 400, description = "`limit` is out of range or does not parse, or a parameter is unknown", body = ErrorBody),
        (status = 404, description = "No such workflow, and no runs of one by that id", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn workflow_trends(
    State(state): State<AppState>,
    UrlPath(id): UrlPath<String>,
    Query(query): Query<TrendsQuery>,
) -> Result<Json<WorkflowTrends>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_TREND_RUNS);
    if !(1..=MAX_TREND_RUNS).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_TREND_RUNS}; got {limit}"
        ))
        .with_details(json!({"parameter": "limit", "value": limit})));
    }
    let found = find_workflow_in(&state.view.objects().records, &id);
    let store = std::sync::Arc::clone(&state.store);
    let (workflow_id, name) = match &found {
        Ok(record) => (record.key.id.clone(), Some(record.name.clone())),
        Err(_) => (id.clone(), None),
    };
    let lookup = workflow_id.clone();
    let runs = tokio::task::spawn_blocking(move || {
        let ids = store.workflow_run_ids(&lookup)?;
        let mut finished: Vec<String> = ids
            .into_iter()
            .filter(|(_, s)| s.is_finished())
            .map(|(id, _)| id)
            .collect();
        finished.drain(..finished.len().saturating_sub(limit));
        let mut runs = Vec::with_capacity(finished.len());
        for run_id in finished {
            if let Some(run) = store.run(&run_id)? {
                let steps = store.steps(&run_id)?;
                runs.push((run, steps));
            }
        }
        Ok::<_, crate::store::StoreError>(runs)
    })
    .await
    .map_err(ApiError::internal)??;
    let name = match (name, runs.last()) {
        (Some(name), _) => name,
        // A workflow removed since, whose runs are kept.
        (None, Some((run, _))) => run.workflow_name.clone(),
        (None, None) => {
            return Err(found
                .err()
                .map(ApiError::from)
                .unwrap_or_else(|| ApiError::not_found(format!("no workflow `{id}`"))))
        }
    };
    Ok(Json(trends(&workflow_id, &name, limit, &runs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TestCase, Trigger};

    #[test]
    fn paths_that_leave_their_directory_are_refused() {
        for bad in [
            "../../etc/passwd",
            "reports/../../etc/passwd",
            "/etc/passwd",
            "reports//x.html",
            "./reports/x.html",
            "reports/x\\..\\y",
            "reports/x\0",
            "",
            "..",
        ] {
            let err = safe_relative(bad).unwrap_err();
            assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(err.details["parameter"], "path");
        }
        assert_eq!(
            safe_relative("reports/run_1/report.html").unwrap(),
            PathBuf::from("reports/run_1/report.html")
        );
        // `..` inside a name is a name.
        assert!(safe_relative("reports/a..b.html").is_ok());
    }

    #[test]
    fn resolution_follows_symlinks_and_keeps_inside_the_roots() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path();
        let reports = project.join("reports");
        std::fs::create_dir_all(reports.join("run_1")).unwrap();
        std::fs::write(reports.join("run_1/report.html"), "<p>ok</p>").unwrap();
        std::fs::write(project.join("secret.txt"), "no").unwrap();
        std::os::unix::fs::symlink(project.join("secret.txt"), reports.join("link.txt")).unwrap();
        let roots = [reports.clone()];
        let ok = resolve_inside(project, Path::new("reports/run_1/report.html"), &roots).unwrap();
        assert!(matches!(ok, Some(Ok(_))));
        let out = resolve_inside(project, Path::new("reports/link.txt"), &roots).unwrap();
        assert_eq!(out, Some(Err(())), "a symlink out of reports/ is refused");
        let outside = resolve_inside(project, Path::new("secret.txt"), &roots).unwrap();
        assert_eq!(outside, Some(Err(())));
        assert_eq!(
            resolve_inside(project, Path::new("reports/gone.html"), &roots).unwrap(),
            None
        );
        let a_dir = resolve_inside(project, Path::new("reports/run_1"), &roots).unwrap();
        assert_eq!(a_dir, Some(Err(())), "a directory is not served");
    }

    #[test]
    fn urls_encode_each_segment_and_content_types_follow_the_extension() {
        assert_eq!(
            artifact_url("run_1", "reports/run_1/my report.html").as_deref(),
            Some("/api/runs/run_1/artifacts/reports/run_1/my%20report.html")
        );
        assert_eq!(artifact_url("run_1", "/tmp/x.xml"), None);
        assert_eq!(
            artifact_content_type("a/b.HTML"),
            "text/html; charset=utf-8"
        );
        assert_eq!(artifact_content_type("junit.xml"), "application/xml");
        assert_eq!(artifact_content_type("r.json"), "application/json");
        assert_eq!(artifact_content_type("blob"), "application/octet-stream");
    }

    fn case(name: &str, status: TestStatus, time: f64) -> TestCase {
        TestCase {
            suite: "s".into(),
            classname: "c".into(),
            name: name.into(),
            status,
            time_seconds: time,
            message: (status == TestStatus::Failed).then(|| format!("{name} broke")),
            details: None,
            output: None,
            class: None,
        }
    }

    fn run(
        id: &str,
        status: Status,
        ms: u64,
        cases: Vec<TestCase>,
    ) -> (RunRecord, Vec<StepRecord>) {
        let step: StepRecord = serde_json::from_value(json!({
            "run_id": id, "index": 0, "name": "suite", "agent": "test_runner", "action": "run_tests",
            "status": status, "log": "x.log", "artifacts": [format!("reports/{id}/report.html")],
        }))
        .unwrap();
        let step = StepRecord {
            tests: cases.clone(),
            ..step
        };
        let record = RunRecord {
            id: id.into(),
            workflow_id: "wf_x".into(),
            workflow_name: "X".into(),
            status,
            parameters: Default::default(),
            trigger: Trigger {
                kind: "api".into(),
                details: Default::default(),
            },
            workflow: json!({}),
            steps: vec!["suite".into()],
            created_at: "2025-01-31T12:00:00.000Z".into(),
            started_at: None,
            finished_at: None,
            duration_ms: Some(ms),
            message: None,
            tests: TestSummary::of(&cases),
            rerun_of: None,
            revision: None,
            pid: None,
        };
        (record, vec![step])
    }

    #[test]
    fn trends_count_outcomes_rates_and_the_worst_tests_of_the_last_runs() {
        let runs = vec![
            run(
                "run_1",
                Status::Succeeded,
                1000,
                vec![
                    case("a", TestStatus::Passed, 0.1),
                    case("b", TestStatus::Passed, 2.0),
                ],
            ),
            run(
                "run_2",
                Status::Failed,
                3000,
                vec![
                    case("a", TestStatus::Failed, 0.3),
                    case("b", TestStatus::Passed, 4.0),
                ],
            ),
            run(
                "run_3",
                Status::Failed,
                2000,
                vec![
                    case("a", TestStatus::Failed, 0.2),
                    case("b", TestStatus::Skipped, 0.0),
                ],
            ),
            run("run_4", Status::Running, 0, vec![]),
        ];
        let all = trends("wf_x", "X", 10, &runs);
        assert_eq!(all.runs.len(), 3, "a running run is left out");
        assert_eq!(all.outcomes["succeeded"], 1);
        assert_eq!(all.outcomes["failed"], 2);
        assert_eq!(all.runs[1].pass_rate, Some(0.5));
        assert_eq!(all.runs[2].pass_rate, Some(0.0));
        assert_eq!(all.runs[1].tests_text, "1 passed, 1 failed");
        assert_eq!(all.runs[2].tests_text, "0 passed, 1 failed, 1 skipped");
        // 3 passed of 5 counted (a skipped case does not count).
        assert_eq!(all.pass_rate, Some(0.6));
        let d = all.duration.unwrap();
        assert_eq!(
            (d.mean_ms, d.p50_ms, d.p95_ms, d.max_ms),
            (2000, 2000, 3000, 3000)
        );
        assert_eq!(all.slowest_tests[0].name, "b");
        assert_eq!(all.slowest_tests[0].mean_seconds, 3.0);
        assert_eq!(all.slowest_tests[0].runs, 2);
        assert_eq!(all.failing_tests.len(), 1);
        let a = &all.failing_tests[0];
        assert_eq!((a.name.as_str(), a.failures, a.runs), ("a", 2, 3));
        assert_eq!(a.last_failed_run.as_deref(), Some("run_3"));
        assert_eq!(a.last_message.as_deref(), Some("a broke"));
        assert_eq!(
            all.runs[0].artifacts[0].url.as_deref(),
            Some("/api/runs/run_1/artifacts/reports/run_1/report.html")
        );
        // The last two only.
        let last = trends("wf_x", "X", 2, &runs);
        assert_eq!(
            last.runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["run_2", "run_3"]
        );
        assert_eq!(last.outcomes.get("succeeded"), None);
        let none = trends("wf_x", "X", 5, &[]);
        assert!(none.duration.is_none() && none.pass_rate.is_none() && none.runs.is_empty());
    }
}
