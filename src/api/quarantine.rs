//! `GET /api/quarantine/tests`: every test with recorded results as Quarantine manifests
//! are checked and written against — its names, whether it is flaky and why, and the live
//! quarantine entry covering it today. `validate` warns about an entry that covers none of
//! them, and `tests quarantine suggest` writes entries for the flaky ones no entry covers.
//! [`quarantine_tests`] reads the same from a store, for the CLI without a server.

use axum::extract::State;
use axum::Json;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::{ApiError, AppState};
use crate::schema::semantic::KnownTest;
use crate::spec::quarantine::QuarantineSet;
use crate::store::test_history::{quarantine_set, workflow_names};
use crate::store::{Store, StoreError};

/// The tests with recorded results.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct QuarantineTests {
    /// Today (UTC), as `covered_by` was judged.
    pub today: String,
    /// Every test, by id.
    pub tests: Vec<QuarantineTest>,
}

/// One test.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QuarantineTest {
    /// Its id and names.
    #[serde(flatten)]
    pub test: KnownTest,
    /// Whether it is flaky now.
    pub flaky: bool,
    /// Why, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaky_reason: Option<String>,
    /// The live Quarantine manifest whose entry covers it today (`qua_…#0`), if one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_by: Option<String>,
}

/// The tests there are results of, with names and quarantines.
///
/// Each test: `id`, `workflow` (id), `workflow_name`, `suite`, `classname`, `name`,
/// `flaky` and `flaky_reason`, and `covered_by` (`<quarantine id>#<entry index>`) when a
/// live Quarantine manifest covers it today. What `validate` checks Quarantine entries
/// against, and what `tests quarantine suggest` writes a manifest from.
#[utoipa::path(get, path = "/api/quarantine/tests", tag = "manifests",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every test with recorded results", body = QuarantineTests,
            example = json!({"today": "2026-12-07", "tests": [{"id": "tc_0123456789abcdef",
                "workflow": "wf_nightly", "workflow_name": "Nightly", "suite": "api",
                "classname": "tests.api", "name": "test_timeout", "flaky": true,
                "flaky_reason": "passed and failed on git:1a2b3c4d",
                "covered_by": "qua_known-flaky#0"}]})),
        (status = 401, description = "An API token is configured and the request does not carry it", body = ErrorBody),
        (status = 500, description = "The store cannot be read", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>) -> Result<Json<QuarantineTests>, ApiError> {
    tokio::task::spawn_blocking(move || quarantine_tests(&state.store))
        .await
        .map_err(ApiError::internal)?
        .map(Json)
        .map_err(ApiError::internal)
}

/// The tests of a store's history, with their workflows' names and the live quarantine
/// entries covering them today.
pub fn quarantine_tests(store: &Store) -> Result<QuarantineTests, StoreError> {
    let today = Utc::now().date_naive();
    let records = store.test_records()?;
    let objects = store.objects()?;
    let names = workflow_names(&objects);
    let set = quarantine_set(&objects);
    let tests = records
        .into_iter()
        .map(|record| {
            let test = KnownTest {
                workflow_name: names
                    .get(record.workflow.as_str())
                    .map_or_else(|| record.workflow.clone(), |n| (*n).to_owned()),
                id: record.id,
                workflow: record.workflow,
                suite: record.suite,
                classname: record.classname,
                name: record.name,
            };
            QuarantineTest {
                covered_by: covering(&set, &test, today),
                test,
                flaky: record.flaky,
                flaky_reason: record.flaky_reason,
            }
        })
        .collect();
    Ok(QuarantineTests {
        today: today.to_string(),
        tests,
    })
}

fn covering(set: &QuarantineSet, test: &KnownTest, today: NaiveDate) -> Option<String> {
    set.covering(&test.fields(), today)
        .map(|entry| format!("{}#{}", entry.manifest, entry.index))
}
