//! `GET /api/tests` and `GET /api/tests/{id}`: every test case's history as the store keeps
//! it (`store::test_history`), listed by what a team asks about (flaky, failing, new
//! failures, slowest, quarantined) and, for one test, its timeline across runs and
//! revisions with each failure's group. The queries are plain functions of the store and
//! the object records ([`list_tests`], [`show_test`]): the routes call them with the
//! server's view, and `orchestrator tests list | show` with the store it opened, so both
//! print the same.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::model::{TestClass, TestStatus};
use crate::spec::quarantine::{QuarantineEntry, TestFields};
use crate::store::test_history::{
    quarantine_set, workflow_names, FailureGroup, TestRecord, TestResult,
};
use crate::store::{ObjectKey, ObjectRecord, Store, StoreError};

/// Which tests a list holds, and in what order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TestFilter {
    /// Flaky now (passed and failed on one revision, or flipping often), most flips first.
    Flaky,
    /// Whose last result failed or errored, most failures first.
    Failing,
    /// Whose last result was a new failure, newest first.
    New,
    /// Every test, slowest mean duration first.
    Slow,
    /// Covered by a Quarantine entry in force today.
    Quarantined,
}

impl TestFilter {
    /// Every filter, in the order help texts list them.
    pub const ALL: [TestFilter; 5] = [
        TestFilter::Flaky,
        TestFilter::Failing,
        TestFilter::New,
        TestFilter::Slow,
        TestFilter::Quarantined,
    ];

    /// The name the API and the command line use.
    pub fn as_str(self) -> &'static str {
        match self {
            TestFilter::Flaky => "flaky",
            TestFilter::Failing => "failing",
            TestFilter::New => "new",
            TestFilter::Slow => "slow",
            TestFilter::Quarantined => "quarantined",
        }
    }

    /// Reads a filter's name; an unknown one is an error listing the valid ones.
    pub fn parse(text: &str) -> Result<TestFilter, String> {
        TestFilter::ALL
            .into_iter()
            .find(|f| f.as_str() == text)
            .ok_or_else(|| {
                let hint = crate::util::did_you_mean(text, TestFilter::ALL.map(TestFilter::as_str))
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                format!(
                    "unknown test status `{text}`{hint}: expected one of {}",
                    TestFilter::ALL.map(TestFilter::as_str).join(", ")
                )
            })
    }
}

impl fmt::Display for TestFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Quarantine entry, as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuarantineView {
    /// The Quarantine manifest's id.
    pub manifest: String,
    /// The entry's position in the manifest's `entries`.
    pub index: usize,
    /// What it covers: `test tc_…`, or its globs (`workflow=wf_x, name=test_*`).
    pub covers: String,
    /// Why.
    pub reason: String,
    /// Who is to fix it.
    pub owner: String,
    /// The last day it applies (`YYYY-MM-DD`, UTC).
    pub until: String,
    /// Whether it applies today (not past `until`).
    pub active: bool,
    /// The known tests it covers (with `status=flaky`, which reads only the flaky tests, the
    /// flaky ones it covers).
    pub tests: usize,
}

impl QuarantineView {
    fn of(entry: &QuarantineEntry, today: NaiveDate, tests: usize) -> QuarantineView {
        QuarantineView {
            manifest: entry.manifest.clone(),
            index: entry.index,
            covers: entry.describe(),
            reason: entry.reason.clone(),
            owner: entry.owner.clone(),
            until: entry.until.to_string(),
            active: entry.active_on(today),
            tests,
        }
    }
}

/// One test in a list: its names, last result and what its history says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestItem {
    /// `tc_` and 16 hex digits.
    pub id: String,
    /// The workflow's id.
    pub workflow: String,
    /// The JUnit suite.
    pub suite: String,
    /// The JUnit classname.
    pub classname: String,
    /// The case's name.
    pub name: String,
    /// Its last result.
    pub last_status: TestStatus,
    /// What its last result meant.
    pub last_class: TestClass,
    /// The run of its last result.
    pub last_run: String,
    /// The revision of its last result.
    pub last_revision: String,
    /// Its last results, oldest first: `P` passed, `F` failed or errored, `S` skipped.
    pub recent: String,
    /// Whether it is flaky now.
    pub flaky: bool,
    /// Why, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaky_reason: Option<String>,
    /// Pass/fail flips in `recent`.
    pub flips: u32,
    /// Results recorded, ever.
    pub results: u64,
    /// Failed or errored results, ever.
    pub failures: u64,
    /// `failures / results` (0 to 1).
    pub failure_rate: f64,
    /// Mean duration of its recent results, in milliseconds.
    pub mean_duration_ms: f64,
    /// Its last duration, in milliseconds.
    pub last_duration_ms: u64,
    /// Its last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_message: Option<String>,
    /// The Quarantine entry in force that covers it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<QuarantineView>,
}

/// A list of tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestList {
    /// The filter asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TestFilter>,
    /// The workflow asked for (its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The tests, in the filter's order (by id without one), at most `limit`.
    pub tests: Vec<TestItem>,
    /// Every test that matches.
    pub total: usize,
    /// The most listed.
    pub limit: usize,
    /// Every entry of the live Quarantine manifests (expired ones too, `active: false`),
    /// each with the tests it covers among those the list read.
    pub quarantines: Vec<QuarantineView>,
}

/// One stored result of a test, as its timeline shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimelineEntry {
    /// The stored result: run, attempt, status, class, duration, revision, worker and
    /// failure digest.
    #[serde(flatten)]
    pub result: TestResult,
    /// When the run was created (RFC 3339, from its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    /// The group's normalised message (numbers, addresses and temporary paths taken out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_message: Option<String>,
}

/// A failure group in a test's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TimelineGroup {
    /// The group.
    #[serde(flatten)]
    pub group: FailureGroup,
    /// Its results in the timeline.
    pub count: usize,
}

/// One test: its record, the Quarantine entry covering it, and its timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestDetail {
    /// Its record: the summary of its history.
    pub test: TestRecord,
    /// Pass/fail flips in `recent`.
    pub flips: u32,
    /// `failures / results` (0 to 1).
    pub failure_rate: f64,
    /// The Quarantine entry that covers it: one in force first, else an expired one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<QuarantineView>,
    /// Its stored results, newest first, at most `limit`.
    pub timeline: Vec<TimelineEntry>,
    /// The failure groups of the timeline, most frequent first.
    pub failure_groups: Vec<TimelineGroup>,
}

/// What [`list_tests`] is asked.
#[derive(Debug, Clone, Default)]
pub struct TestQuery {
    /// A workflow's id or name.
    pub workflow: Option<String>,
    /// The filter.
    pub status: Option<TestFilter>,
    /// The most listed.
    pub limit: usize,
}

/// Default and largest `limit`s.
pub const DEFAULT_LIMIT: usize = 50;
/// See [`DEFAULT_LIMIT`].
pub const MAX_LIMIT: usize = 10_000;

/// The tests the query asks for, read from the store; `objects` are the object records
/// (for the Quarantine manifests and workflow names), `today` the date quarantines are
/// judged on.
pub fn list_tests(
    store: &Store,
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    query: &TestQuery,
    today: NaiveDate,
) -> Result<TestList, StoreError> {
    let names = workflow_names(objects);
    let quarantine = quarantine_set(objects);
    let workflow = query.workflow.as_ref().map(|w| {
        if names.contains_key(w.as_str()) {
            return w.clone();
        }
        names
            .iter()
            .find(|(_, name)| **name == w.as_str())
            .map_or_else(|| w.clone(), |(id, _)| (*id).to_owned())
    });
    // The flaky tests have an index of their own: that list reads only them.
    let records = match query.status {
        Some(TestFilter::Flaky) => store.test_records_in("flaky")?,
        _ => store.test_records()?,
    };
    let mut covered = vec![0usize; quarantine.entries.len()];
    // What is kept, sorted, and cut to the limit before any item is built: (record, its
    // flips, the entry in force that covers it).
    let mut kept: Vec<(&TestRecord, u32, Option<usize>)> = Vec::new();
    for record in &records {
        let fields = fields(record, &names);
        let mut in_force = None;
        for (n, entry) in quarantine.entries.iter().enumerate() {
            if entry.matches(&fields) {
                covered[n] += 1;
                if in_force.is_none() && entry.active_on(today) {
                    in_force = Some(n);
                }
            }
        }
        if workflow.as_ref().is_some_and(|w| &record.workflow != w) {
            continue;
        }
        let keep = match query.status {
            None | Some(TestFilter::Slow) => true,
            Some(TestFilter::Flaky) => record.flaky,
            Some(TestFilter::Failing) => failing(record.last_status),
            Some(TestFilter::New) => record.last_class == TestClass::NewFailure,
            Some(TestFilter::Quarantined) => in_force.is_some(),
        };
        if keep {
            kept.push((record, record.flips(), in_force));
        }
    }
    match query.status {
        Some(TestFilter::Flaky) => kept.sort_by(|(a, fa, _), (b, fb, _)| {
            fb.cmp(fa)
                .then(b.failures.cmp(&a.failures))
                .then(a.id.cmp(&b.id))
        }),
        Some(TestFilter::Failing) => kept.sort_by(|(a, ..), (b, ..)| {
            b.failures
                .cmp(&a.failures)
                .then(rate(b).total_cmp(&rate(a)))
                .then(a.id.cmp(&b.id))
        }),
        Some(TestFilter::New) => kept.sort_by(|(a, ..), (b, ..)| b.last_run.cmp(&a.last_run)),
        Some(TestFilter::Slow) => kept.sort_by(|(a, ..), (b, ..)| {
            b.mean_duration_ms
                .total_cmp(&a.mean_duration_ms)
                .then(a.id.cmp(&b.id))
        }),
        Some(TestFilter::Quarantined) | None => {}
    }
    let total = kept.len();
    kept.truncate(query.limit);
    let items = kept
        .into_iter()
        .map(|(record, _, entry)| {
            let view = entry.map(|n| QuarantineView::of(&quarantine.entries[n], today, covered[n]));
            item(record, view)
        })
        .collect();
    let quarantines = quarantine
        .entries
        .iter()
        .zip(covered)
        .map(|(entry, tests)| QuarantineView::of(entry, today, tests))
        .collect();
    Ok(TestList {
        status: query.status,
        workflow,
        tests: items,
        total,
        limit: query.limit,
        quarantines,
    })
}

/// One test with its timeline (at most `limit` results), or `None` for an unknown id.
pub fn show_test(
    store: &Store,
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    id: &str,
    limit: usize,
    today: NaiveDate,
) -> Result<Option<TestDetail>, StoreError> {
    let Some(record) = store.test_record(id)? else {
        return Ok(None);
    };
    let names = workflow_names(objects);
    let quarantine = quarantine_set(objects);
    let fields = fields(&record, &names);
    let matching: Vec<&QuarantineEntry> = quarantine
        .entries
        .iter()
        .filter(|e| e.matches(&fields))
        .collect();
    let entry = matching
        .iter()
        .find(|e| e.active_on(today))
        .or(matching.first());
    let quarantine_view = match entry {
        // An entry by id covers this one test; one by globs is counted over the tests.
        Some(e) if e.test.is_some() => Some(QuarantineView::of(e, today, 1)),
        Some(e) => {
            let covered = store
                .test_records()?
                .iter()
                .filter(|r| e.matches(&self::fields(r, &names)))
                .count();
            Some(QuarantineView::of(e, today, covered))
        }
        None => None,
    };
    let mut groups: HashMap<String, Option<FailureGroup>> = HashMap::new();
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut timeline = Vec::new();
    for result in store.test_results(id, limit)? {
        let failure_message = match &result.failure {
            Some(digest) => {
                *counts.entry(digest.clone()).or_default() += 1;
                if !groups.contains_key(digest) {
                    groups.insert(digest.clone(), store.failure_group(digest)?);
                }
                groups[digest].as_ref().map(|g| g.normalised.clone())
            }
            None => None,
        };
        timeline.push(TimelineEntry {
            at: run_time(&result.run_id),
            result,
            failure_message,
        });
    }
    let mut failure_groups: Vec<TimelineGroup> = groups
        .into_iter()
        .filter_map(|(digest, group)| {
            Some(TimelineGroup {
                count: counts.get(&digest).copied().unwrap_or(0),
                group: group?,
            })
        })
        .collect();
    failure_groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.group.digest.cmp(&b.group.digest))
    });
    Ok(Some(TestDetail {
        flips: record.flips(),
        failure_rate: rate(&record),
        quarantine: quarantine_view,
        test: record,
        timeline,
        failure_groups,
    }))
}

/// What `GET /api/tests` reads from its query.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Tests of this workflow only (its id or name).
    workflow: Option<String>,
    /// Which tests: `flaky`, `failing` (last result failed or errored), `new` (last result
    /// a new failure), `slow` (every test, slowest first) or `quarantined` (covered by a
    /// Quarantine entry in force).
    #[param(value_type = Option<TestFilter>)]
    status: Option<String>,
    /// How many tests (1 to 10000; default 50).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// The tests whose results the store keeps, filtered.
///
/// Each: its id and names, last status and class, whether it is flaky and why, its flips,
/// failure rate and mean duration, and the Quarantine entry covering it. `quarantines`
/// lists every entry of the live Quarantine manifests with its owner, reason, expiry and
/// the number of known tests it covers.
#[utoipa::path(get, path = "/api/tests", tag = "tests", operation_id = "list_tests",
    params(ListParams),
    responses(
        (status = 200, description = "The tests", body = TestList, example = json!({
            "status": "flaky", "total": 1, "limit": 50, "quarantines": [],
            "tests": [{"id": "tc_0123456789abcdef", "workflow": "wf_api_tests", "suite": "pytest",
                "classname": "tests.test_api", "name": "test_login", "last_status": "failed",
                "last_class": "flaky", "last_run": "run_01j…", "last_revision": "git:1a2b…",
                "recent": "PPFP", "flaky": true,
                "flaky_reason": "passed and failed on git:1a2b…", "flips": 2, "results": 4,
                "failures": 1, "failure_rate": 0.25, "mean_duration_ms": 12.5,
                "last_duration_ms": 11}]})),
        (status = 400, description = "A query parameter that does not parse, is out of range, is not a status or is unknown", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<TestList>, ApiError> {
    let status = match params.status.as_deref() {
        Some(text) => Some(TestFilter::parse(text).map_err(|message| {
            ApiError::bad_request(message).with_details(json!({
                "field": "status",
                "expected": TestFilter::ALL.map(TestFilter::as_str),
            }))
        })?),
        None => None,
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        ))
        .with_details(json!({"field": "limit"})));
    }
    let query = TestQuery {
        workflow: params.workflow,
        status,
        limit,
    };
    let list = tokio::task::spawn_blocking(move || {
        let objects = state.view.objects();
        list_tests(
            &state.store,
            &objects.records,
            &query,
            Utc::now().date_naive(),
        )
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(list))
}

/// What `GET /api/tests/{id}` reads from its query.
#[derive(Debug, Deserialize, Default, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ShowParams {
    /// How many results of its timeline (1 to 10000; default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// One test: its record, the Quarantine entry covering it, and its timeline.
///
/// The timeline holds its stored results, newest first: run, when, attempt, status, class,
/// duration, revision, worker, and the failure's group with its normalised message;
/// `failure_groups` counts the groups.
#[utoipa::path(get, path = "/api/tests/{id}", tag = "tests", operation_id = "show_test",
    params(("id" = String, Path, description = "The test's id (`tc_` and 16 hex digits)"), ShowParams),
    responses(
        (status = 200, description = "The test", body = TestDetail),
        (status = 400, description = "A query parameter that does not parse, is out of range or is unknown", body = ErrorBody),
        (status = 404, description = "No such test has results", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(params): Query<ShowParams>,
) -> Result<Json<TestDetail>, ApiError> {
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        ))
        .with_details(json!({"field": "limit"})));
    }
    let asked = id.clone();
    let detail = tokio::task::spawn_blocking(move || {
        let objects = state.view.objects();
        show_test(
            &state.store,
            &objects.records,
            &asked,
            limit,
            Utc::now().date_naive(),
        )
    })
    .await
    .map_err(ApiError::internal)??;
    detail
        .map(Json)
        .ok_or_else(|| ApiError::not_found(unknown_test(&id)))
}

/// The message for an id with no record.
pub fn unknown_test(id: &str) -> String {
    let shaped =
        id.len() == 19 && id.starts_with("tc_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit());
    if shaped {
        format!("no test `{id}` has results (`GET /api/tests` lists them)")
    } else {
        format!(
            "no test `{id}`: test ids are `tc_` and 16 hex digits (`GET /api/tests` lists them)"
        )
    }
}

fn failing(status: TestStatus) -> bool {
    matches!(status, TestStatus::Failed | TestStatus::Error)
}

fn rate(record: &TestRecord) -> f64 {
    if record.results == 0 {
        0.0
    } else {
        record.failures as f64 / record.results as f64
    }
}

fn item(record: &TestRecord, quarantine: Option<QuarantineView>) -> TestItem {
    TestItem {
        id: record.id.clone(),
        workflow: record.workflow.clone(),
        suite: record.suite.clone(),
        classname: record.classname.clone(),
        name: record.name.clone(),
        last_status: record.last_status,
        last_class: record.last_class,
        last_run: record.last_run.clone(),
        last_revision: record.last_revision.clone(),
        recent: record.recent.clone(),
        flaky: record.flaky,
        flaky_reason: record.flaky_reason.clone(),
        flips: record.flips(),
        results: record.results,
        failures: record.failures,
        failure_rate: rate(record),
        mean_duration_ms: record.mean_duration_ms,
        last_duration_ms: record.last_duration_ms,
        last_failure_message: record.last_failure_message.clone(),
        quarantine,
    }
}

fn fields<'a>(record: &'a TestRecord, names: &HashMap<&str, &'a str>) -> TestFields<'a> {
    let workflow_name = names
        .get(record.workflow.as_str())
        .copied()
        .unwrap_or(record.workflow.as_str());
    TestFields {
        id: &record.id,
        workflow: &record.workflow,
        workflow_name,
        suite: &record.suite,
        classname: &record.classname,
        name: &record.name,
    }
}

/// A run's creation time, read from its ULID.
fn run_time(run_id: &str) -> Option<String> {
    let ulid = crate::store::test_history::run_ulid(run_id)?;
    let ms = i64::try_from(ulid.timestamp_ms()).ok()?;
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_is_read_by_name_and_a_wrong_one_lists_the_valid_ones() {
        for filter in TestFilter::ALL {
            assert_eq!(TestFilter::parse(filter.as_str()), Ok(filter));
        }
        let err = TestFilter::parse("flakey").unwrap_err();
        assert!(err.contains("did you mean `flaky`"), "{err}");
        assert!(
            err.contains("flaky, failing, new, slow, quarantined"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_id_says_what_ids_look_like() {
        assert!(unknown_test("nope").contains("`tc_` and 16 hex digits"));
        assert!(unknown_test("tc_0123456789abcdef").contains("has results"));
        assert_eq!(
            run_time("run_01arz3ndektsv4rrffq69g5fav").as_deref(),
            Some("2016-07-30T23:54:10.259Z")
        );
    }
}
