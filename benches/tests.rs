//! Test history benchmark: 1,000,000 case results (10,000 tests × 100 runs) ingested
//! through the normal result path, and the queries `tests show` and `tests list` make on
//! that history.
//!
//! Each run's JUnit report (10,000 cases in 20 suites; 1 in 50 tests flips between passing
//! and failing, 1 in 200 fails steadily, with messages that differ only in numbers) is
//! parsed (`engine::junit::parse_junit`, the reference: parsing alone) and its cases
//! recorded by `engine::test_results::TestRecorder`, as a step attempt's cases are when it
//! ends: classified against their history and written to a real sled store on disk, then
//! flushed as the run's next durable batch would be. Reported: cases/s recorded (parsing
//! excluded) beside cases/s parsed, the store's bytes on disk per result, the latency of one
//! test's timeline (record, last 100 results, failure groups: what `tests show` reads) and
//! of the flaky list among 10,000 tests (what `tests list --status flaky` reads), and the
//! process's resident memory at the end. `BENCH_REPEATS` is not used: one pass is one
//! ingest of the whole history. Prints a markdown table (and writes `BENCH_JSON`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use orchestrator::api::test_history::{list_tests, show_test, TestFilter, TestQuery, MAX_LIMIT};
use orchestrator::config::TestsConfig;
use orchestrator::engine::executor::{AttemptFinished, Outcome};
use orchestrator::engine::junit::parse_junit;
use orchestrator::engine::test_results::TestRecorder;
use orchestrator::model::{RunRecord, Status, TestSummary, Trigger};
use orchestrator::store::Store;

// The allocator the orchestrator binary runs with.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "support/mod.rs"]
mod support;
use support::{percentile, rss_kib, Measurement, Report, Target};

/// Tests per run.
const TESTS: usize = 10_000;
/// Runs ingested.
const RUNS: usize = 100;
/// Suites the tests are spread over.
const SUITES: usize = 20;
/// Queries timed for each latency.
const QUERIES: usize = 200;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let data = work.path().join("data");
    let store = Store::open(&data).expect("store");
    let settings = TestsConfig::default();

    let mut parse_seconds = 0.0;
    let mut record_seconds = 0.0;
    let mut recorded = 0usize;
    let mut summary = TestSummary::default();
    let mut last_run = String::new();
    for run_index in 0..RUNS {
        let xml = report(run_index);
        let started = Instant::now();
        let cases = parse_junit(&xml).expect("the report parses");
        parse_seconds += started.elapsed().as_secs_f64();
        assert_eq!(cases.len(), TESTS);

        let run = run_record(run_index);
        let mut recorder = TestRecorder::new(&run);
        let mut finished = AttemptFinished {
            outcome: Outcome {
                status: Some(Status::Failed),
                exit_code: Some(1),
                tests: cases,
                ..Outcome::default()
            },
            attempt: None,
        };
        let started = Instant::now();
        recorder.record(&store, &settings, (0, 1), &mut finished, &|_| {});
        store.save_run(None, &[], true).expect("flush");
        record_seconds += started.elapsed().as_secs_f64();
        recorded += finished.outcome.tests.len();
        summary = TestSummary::of(&finished.outcome.tests);
        last_run = run.id;
    }
    let parse_rate = recorded as f64 / parse_seconds;
    let record_rate = recorded as f64 / record_seconds;

    let records = store.test_records().expect("records");
    assert_eq!(records.len(), TESTS, "one record per test");
    let flaky_expected = records.iter().filter(|r| r.flaky).count();

    // `tests show ID` and `tests list --status flaky` (and the routes behind them) call
    // these two functions.
    let objects = BTreeMap::new();
    let today = chrono::Utc::now().date_naive();
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let mut show_ms = Vec::with_capacity(QUERIES);
    for i in 0..QUERIES {
        let id = &ids[(i * 7919) % ids.len()];
        let started = Instant::now();
        let detail = show_test(&store, &objects, id, 100, today)
            .expect("show")
            .expect("known");
        show_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(detail.test.id, *id);
        assert_eq!(
            detail.timeline.len(),
            RUNS.min(settings.retention_runs as usize)
        );
    }
    let query = TestQuery {
        workflow: None,
        status: Some(TestFilter::Flaky),
        limit: MAX_LIMIT,
    };
    let mut list_ms = Vec::with_capacity(QUERIES / 4);
    for _ in 0..QUERIES / 4 {
        let started = Instant::now();
        let list = list_tests(&store, &objects, &query, today).expect("list");
        list_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(list.tests.len(), flaky_expected);
    }
    drop(records);

    let bytes = dir_bytes(&data);
    let rss = rss_kib(std::process::id()) as f64 / 1024.0;

    let mut report = Report::new("tests");
    report.add(
        Measurement::new(
            "case results recorded (classified, written, flushed per run), 10,000 tests × 100 runs",
            "/s",
            record_rate,
        )
        .reference("JUnit parsing alone", parse_rate)
        .target(Target::AtLeast(200_000.0))
        .bound("per case: the SHA-256 of its id, its state read and rewritten in its bucket, its result appended to its block; per run: the buckets and blocks written and flushed"),
    );
    report.add(
        Measurement::new("store bytes on disk per result", "B", bytes as f64 / recorded as f64)
            .note("the data directory's size after 1,000,000 results (sled's files, its unreclaimed space included) ÷ results; a result's own bytes are 30 in its block, its test's state 119 in its bucket"),
    );
    report.add(
        Measurement::new(
            "`tests show` of one test (`api::test_history::show_test`: record, 100 results, failure groups), p99",
            "ms",
            percentile(&show_ms, 0.99),
        )
        .reference("p50", percentile(&show_ms, 0.5))
        .target(Target::AtMost(10.0)),
    );
    report.add(
        Measurement::new(
            "`tests list --status flaky` among 10,000 tests (`api::test_history::list_tests`), p99",
            "ms",
            percentile(&list_ms, 0.99),
        )
        .reference("p50", percentile(&list_ms, 0.5))
        .target(Target::AtMost(50.0)),
    );
    report.add(Measurement::new(
        "RSS after ingesting and querying",
        "MiB",
        rss,
    ));
    report.add(
        Measurement::new("flaky tests named", "", flaky_expected as f64)
            .reference("tests made to flip", (TESTS / 50) as f64)
            .target(Target::Equal)
            .every_run(),
    );
    let mut note = String::new();
    let _ = write!(note, "last run {last_run}: {}", summary.describe());
    report.add(
        Measurement::new(
            "new failures in the last run",
            "",
            summary.new_failures as f64,
        )
        .note(note),
    );
    report.finish();
}

/// The JUnit report of run `run`: test `t` fails when it is a steady failure (1 in 200),
/// or a flipping test (1 in 50) on odd runs.
fn report(run: usize) -> String {
    let mut xml = String::with_capacity(TESTS * 120);
    xml.push_str("<?xml version=\"1.0\"?>\n<testsuites>\n");
    for suite in 0..SUITES {
        let _ = writeln!(xml, "<testsuite name=\"suite_{suite:02}\">");
        for t in (suite..TESTS).step_by(SUITES) {
            let flips = t % 50 == 1;
            let steady = t % 200 == 3;
            let time = 0.001 * ((t * 31 + run * 7) % 1000) as f64;
            let _ = write!(
                xml,
                "<testcase classname=\"pkg.module_{}\" name=\"test_case_{t}\" time=\"{time:.3}\"",
                t % 97
            );
            if steady || (flips && run % 2 == 1) {
                let _ = writeln!(
                    xml,
                    "><failure message=\"expected {} got {} at 0x7ffd{:04x}\">trace</failure></testcase>",
                    t,
                    t + run,
                    run
                );
            } else {
                xml.push_str("/>\n");
            }
        }
        xml.push_str("</testsuite>\n");
    }
    xml.push_str("</testsuites>\n");
    xml
}

/// The record of run `run`, a minute after the one before, on a revision of its own.
fn run_record(run: usize) -> RunRecord {
    let ms = 1_800_000_000_000u64 + run as u64 * 60_000;
    RunRecord {
        id: format!(
            "run_{}",
            ulid::Ulid::from_parts(ms, 1).to_string().to_lowercase()
        ),
        workflow_id: "wf_bench".into(),
        workflow_name: "bench".into(),
        status: Status::Running,
        parameters: Default::default(),
        trigger: Trigger {
            kind: "cli".into(),
            details: Default::default(),
        },
        workflow: serde_json::Value::Null,
        steps: vec!["tests".into()],
        created_at: String::new(),
        started_at: None,
        finished_at: None,
        duration_ms: None,
        message: None,
        tests: TestSummary::default(),
        rerun_of: None,
        revision: Some(format!("git:{run:040x}")),
        pid: None,
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                dir_bytes(&path)
            } else {
                entry.metadata().map_or(0, |m| m.len())
            }
        })
        .sum()
}
