//! Reconcile benchmark: 10,000 generated manifests of mixed kinds.
//!
//! - cold reconcile: read + parse + validate + diff + durable apply into an empty store;
//! - no-op re-reconcile: the same against the populated store (the unchanged revision reuses
//!   its memo), and once more with the memo bypassed, for reference;
//! - scaling: cold and no-op reconcile at 1,000, 10,000 and 100,000 manifests, each size in
//!   a process of its own, the way the server's controller reconciles (its file index and
//!   file checks kept between reconciles): time per manifest (flat is the goal, the 1,000
//!   figure the reference) and resident memory after; at the largest size the no-op beside
//!   a one-shot `apply`'s, which reads every file;
//! - validation throughput: JSON Schema validation of the same documents, beside
//!   python-jsonschema validating them with the same schemas in the same run (skipped with a
//!   note when python3 cannot import jsonschema; `bench/foundation` installs it).
//!
//! Prints a markdown table (and writes `BENCH_JSON`, see `support`); medians of several
//! runs after a warm-up (`BENCH_REPEATS` runs; 5 by default).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use orchestrator::manifest::Kind;
use orchestrator::reconcile::{self, ReconcileOptions};
use orchestrator::schema::{self, SchemaName};
use orchestrator::source::dir::{self, DirOptions, SourcePath};
use orchestrator::store::Store;
use serde_json::{json, Value};

// The server's allocator, so that the resident memory measured is what the server's would be.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "support/mod.rs"]
mod support;
use support::{Measurement, Report, Target};

const MANIFESTS: usize = 10_000;

/// How long after the reconciles the largest size's memory is read a second time.
const SETTLE: Duration = Duration::from_secs(3);

/// The sizes of the scaling curve.
const SCALES: [usize; 3] = [1_000, 10_000, 100_000];

/// Set in a child process of this bench: reconcile that many manifests, print the figures.
const SCALE_CHILD: &str = "BENCH_RECONCILE_SCALE";

fn main() {
    if let Some(count) = std::env::var(SCALE_CHILD).ok().and_then(|v| v.parse().ok()) {
        scale_child(count);
        return;
    }
    let runs = support::repeats(5);
    let work = tempfile::tempdir().expect("temp dir");
    let project = work.path().join("project");
    let documents = generate(&project, MANIFESTS);
    let (options, paths) = source_of(&project);

    let reconcile_once = |data_dir: &Path, use_memo: bool| -> (Duration, usize, bool) {
        let started = Instant::now();
        let snapshot = dir::load(&paths, &options).expect("load");
        let store = Store::open(data_dir).expect("store");
        let prepared = reconcile::prepare(
            &store,
            &snapshot,
            &ReconcileOptions {
                source: "dir".into(),
                scope: None,
                prune: true,
                use_memo,
            },
        )
        .expect("prepare");
        assert!(
            !prepared.has_errors(),
            "{:?}",
            &prepared.diagnostics[..3.min(prepared.diagnostics.len())]
        );
        let report =
            reconcile::apply(&store, &prepared, false, "2026-01-01T00:00:00Z").expect("apply");
        (
            started.elapsed(),
            report.created.len() + report.updated.len(),
            prepared.from_memo,
        )
    };

    // Warm-up (page cache, allocator).
    reconcile_once(&work.path().join("warmup"), true);
    let mut cold = Vec::new();
    let mut noop = Vec::new();
    let mut recheck = Vec::new();
    for run in 0..runs {
        let data_dir = work.path().join(format!("data-{run}"));
        let (elapsed, written, _) = reconcile_once(&data_dir, true);
        assert_eq!(written, MANIFESTS);
        cold.push(elapsed);
        let (elapsed, written, from_memo) = reconcile_once(&data_dir, true);
        assert_eq!(written, 0);
        assert!(from_memo, "an unchanged revision reuses its memo");
        noop.push(elapsed);
        let (elapsed, written, from_memo) = reconcile_once(&data_dir, false);
        assert_eq!(written, 0);
        assert!(!from_memo);
        recheck.push(elapsed);
    }

    // Validation throughput, JSON Schema only, single thread.
    let mut validation = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        for (kind, document) in &documents {
            assert!(schema::validate(SchemaName::Manifest(*kind), document).is_empty());
        }
        validation.push(started.elapsed());
    }
    let rust_rate = MANIFESTS as f64 / median(&validation).as_secs_f64();
    let python_rate = python_rate(work.path(), &documents, runs.min(3));

    let ms = |samples: &[Duration]| median(samples).as_secs_f64() * 1e3;
    let mut report = Report::new("foundation");
    report.add(
        Measurement::new(
            "cold reconcile, 10,000 manifests (read, parse, validate, diff, durable apply)",
            "ms",
            ms(&cold),
        )
        .target(Target::AtMost(2_000.0))
        .bound(
            "parsing the YAML and allocating, spread evenly over serde-saphyr's scanner, the \
             deserialiser and malloc, already on every core (rayon); no single hot spot. More \
             cores or a faster YAML parser would move it.",
        ),
    );
    report.add(
        Measurement::new(
            "no-op re-reconcile, 10,000 manifests (unchanged revision, memo)",
            "ms",
            ms(&noop),
        )
        .reference("full re-check without the memo", ms(&recheck))
        .target(Target::AtMost(300.0))
        .bound(
            "reading and hashing every file to find the revision unchanged (the memo then \
             skips parsing and validation): a one-shot reconcile keeps no file index. The \
             controller's index skips files whose stamp is unchanged (the scaling rows).",
        ),
    );
    report.add(
        Measurement::new(
            "schema validation throughput, single thread",
            "docs/s",
            rust_rate,
        )
        .reference("python-jsonschema", python_rate)
        .target(Target::RatioAtLeast(40.0))
        .bound(
            "the jsonschema crate's compiled validators, one thread against one thread; \
             python-jsonschema's speed varies with its version. Only a faster validator would \
             move it (the reconcile itself validates on every core).",
        ),
    );
    scaling(&mut report, runs);
    report.finish();
}

/// The scaling curve: cold and no-op reconcile at each of [`SCALES`], each size in a process
/// of its own (so its resident memory is its own), `runs` times; medians.
fn scaling(report: &mut Report, runs: usize) {
    let exe = std::env::current_exe().expect("this bench's path");
    let mut figures: Vec<(usize, ScaleFigures)> = Vec::new();
    for count in SCALES {
        let mut samples = Vec::new();
        for _ in 0..runs {
            let output = Command::new(&exe)
                .env(SCALE_CHILD, count.to_string())
                .env_remove("BENCH_JSON")
                .output()
                .expect("run the scaling child");
            assert!(
                output.status.success(),
                "scaling child at {count} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let line = String::from_utf8_lossy(&output.stdout);
            let value: Value = serde_json::from_str(line.trim()).expect("the child's figures");
            samples.push(ScaleFigures {
                cold_ms: value["cold_ms"].as_f64().unwrap_or(f64::NAN),
                noop_ms: value["noop_ms"].as_f64().unwrap_or(f64::NAN),
                noop_unindexed_ms: value["noop_unindexed_ms"].as_f64().unwrap_or(f64::NAN),
                cold_cpu_ms: value["cold_cpu_ms"].as_f64().unwrap_or(f64::NAN),
                noop_cpu_ms: value["noop_cpu_ms"].as_f64().unwrap_or(f64::NAN),
                rss_mib: value["rss_mib"].as_f64().unwrap_or(f64::NAN),
                rss_settled_mib: value["rss_settled_mib"].as_f64().unwrap_or(f64::NAN),
            });
        }
        let middle = |pick: fn(&ScaleFigures) -> f64| {
            support::percentile(&samples.iter().map(pick).collect::<Vec<_>>(), 0.5)
        };
        figures.push((
            count,
            ScaleFigures {
                cold_ms: middle(|f| f.cold_ms),
                noop_ms: middle(|f| f.noop_ms),
                noop_unindexed_ms: middle(|f| f.noop_unindexed_ms),
                cold_cpu_ms: middle(|f| f.cold_cpu_ms),
                noop_cpu_ms: middle(|f| f.noop_cpu_ms),
                rss_mib: middle(|f| f.rss_mib),
                rss_settled_mib: middle(|f| f.rss_settled_mib),
            },
        ));
    }
    let per = |ms: f64, count: usize| ms * 1e3 / count as f64;
    let (base_count, base) = &figures[0];
    let base_cold = per(base.cold_ms, *base_count);
    let base_noop = per(base.noop_ms, *base_count);
    let base_cold_cpu = per(base.cold_cpu_ms, *base_count);
    let base_noop_cpu = per(base.noop_cpu_ms, *base_count);
    let base_name = format!("at {} manifests", support::number(*base_count as f64));
    for (what, base_per, pick) in [
        (
            "cold reconcile",
            base_cold,
            (|f: &ScaleFigures| f.cold_ms) as fn(&ScaleFigures) -> f64,
        ),
        ("no-op re-reconcile", base_noop, |f: &ScaleFigures| {
            f.noop_ms
        }),
        // CPU time (every thread): what the machine's other work does not add to.
        (
            "cold reconcile, CPU time",
            base_cold_cpu,
            |f: &ScaleFigures| f.cold_cpu_ms,
        ),
        (
            "no-op re-reconcile, CPU time",
            base_noop_cpu,
            |f: &ScaleFigures| f.noop_cpu_ms,
        ),
    ] {
        for (count, f) in &figures {
            let mut row = Measurement::new(
                format!(
                    "scaling: {what} per manifest, {} manifests",
                    support::number(*count as f64)
                ),
                "µs",
                per(pick(f), *count),
            );
            // CPU time is counted in clock ticks (10 ms): a no-op at 1,000 manifests takes
            // less than one, so it is no reference.
            if count != base_count && base_per > 0.0 {
                row = row
                    .reference(base_name.clone(), base_per)
                    .target(Target::RatioAtMost(1.25))
                    .bound(
                        "the reconcile's work per manifest is the same at every size; what grows is the \
                         machine's share: the page cache and allocator under 100,000 files' \
                         texts and documents held at once, and the store's tree depth.",
                    );
            }
            report.add(row);
        }
    }
    if let Some((count, f)) = figures.last() {
        let n = support::number(*count as f64);
        report.add(
            Measurement::new(
                format!("scaling: cold reconcile, {n} manifests"),
                "ms",
                f.cold_ms,
            )
            .target(Target::AtMost(8_000.0))
            .bound("parsing and validating every file once, on every core."),
        );
        report.add(
            Measurement::new(
                format!("scaling: no-op re-reconcile, {n} manifests (memo)"),
                "ms",
                f.noop_ms,
            )
            .reference(
                "the same with every file read (a one-shot apply)",
                f.noop_unindexed_ms,
            )
            .target(Target::AtMost(1_000.0))
            .bound(
                "the walk: listing the directories and a stat of every file to find each \
                 stamp unchanged; the files themselves are not opened.",
            ),
        );
    }
    for (count, f) in &figures {
        let mut row = Measurement::new(
            format!(
                "scaling: RSS after a cold and a no-op reconcile, {} manifests",
                support::number(*count as f64)
            ),
            "MiB",
            f.rss_mib,
        );
        if Some(count) == SCALES.last() {
            row = row.target(Target::AtMost(300.0)).bound(
                "every spec held parsed, as a serde_json value (about 5 KiB for a workflow of \
                 four steps), shared by the file checks and the view's records, beside the \
                 checks' location trees and the index's texts. Holding specs as their JSON \
                 text, parsed when read, would move it.",
            );
        }
        report.add(row);
        if !f.rss_settled_mib.is_nan() {
            report.add(Measurement::new(
                format!(
                    "scaling: RSS {} s later (freed memory returned), {} manifests",
                    SETTLE.as_secs(),
                    support::number(*count as f64)
                ),
                "MiB",
                f.rss_settled_mib,
            ));
        }
    }
}

struct ScaleFigures {
    cold_ms: f64,
    noop_ms: f64,
    noop_unindexed_ms: f64,
    cold_cpu_ms: f64,
    noop_cpu_ms: f64,
    rss_mib: f64,
    /// At the largest size only: [`SETTLE`] later.
    rss_settled_mib: f64,
}

/// How the reconcile reads `project`: every kind's directory, none required.
fn source_of(project: &Path) -> (DirOptions, Vec<SourcePath>) {
    let options = DirOptions {
        root: project.to_owned(),
        max_file_bytes: 4 << 20,
    };
    let paths = Kind::ALL
        .iter()
        .map(|k| SourcePath {
            path: project.join(k.directory()),
            required: false,
        })
        .collect();
    (options, paths)
}

/// In a child process: generates `count` manifests, reconciles them into an empty store and
/// once more unchanged the way the server's controller does (its file index and file checks
/// kept between reconciles, the records it returns kept as the view keeps them), then once
/// more unchanged the way a one-shot `apply` does (every file read: the reference), and
/// prints the times and the resident memory after the first two, as JSON.
fn scale_child(count: usize) {
    let work = tempfile::tempdir().expect("temp dir");
    let project = work.path().join("project");
    generate(&project, count);
    let (options, paths) = source_of(&project);
    let store = Store::open(&work.path().join("data")).expect("store");
    let index = dir::FileIndex::default();
    let checks = reconcile::FileChecks::default();
    let reconcile_options = ReconcileOptions {
        source: "dir".into(),
        scope: None,
        prune: true,
        use_memo: true,
    };
    let mut view = None;
    let mut reconcile_once = |long_lived: bool| {
        let started = Instant::now();
        let cpu_before = cpu_time();
        let (snapshot, prepared) = if long_lived {
            let snapshot = dir::load_indexed(&paths, &options, Some(&index)).expect("load");
            index.retain_only(&snapshot);
            let prepared =
                reconcile::prepare_checked(&store, &snapshot, &reconcile_options, Some(&checks))
                    .expect("prepare");
            (snapshot, prepared)
        } else {
            let snapshot = dir::load(&paths, &options).expect("load");
            let prepared =
                reconcile::prepare(&store, &snapshot, &reconcile_options).expect("prepare");
            (snapshot, prepared)
        };
        drop(snapshot);
        assert!(!prepared.has_errors(), "{:?}", prepared.diagnostics.first());
        let (report, records) =
            reconcile::apply_returning_records(&store, &prepared, false, "2026-01-01T00:00:00Z")
                .expect("apply");
        if records.is_some() {
            view = records;
        }
        let cpu = cpu_time() - cpu_before;
        (
            started.elapsed(),
            cpu,
            report.created.len(),
            prepared.from_memo,
        )
    };
    let (cold, cold_cpu, created, _) = reconcile_once(true);
    assert_eq!(created, count);
    let (noop, noop_cpu, created, from_memo) = reconcile_once(true);
    assert!(created == 0 && from_memo);
    let rss_mib = support::rss_kib(std::process::id()) as f64 / 1024.0;
    // jemalloc returns what was freed over a second (`.cargo/config.toml`), as the server
    // does after a reconcile.
    let rss_settled_mib = if Some(&count) == SCALES.last() {
        std::thread::sleep(SETTLE);
        support::rss_kib(std::process::id()) as f64 / 1024.0
    } else {
        f64::NAN
    };
    let (noop_unindexed, _, created, from_memo) = reconcile_once(false);
    assert!(created == 0 && from_memo);
    drop(view);
    println!(
        "{}",
        json!({
            "cold_ms": cold.as_secs_f64() * 1e3,
            "noop_ms": noop.as_secs_f64() * 1e3,
            "noop_unindexed_ms": noop_unindexed.as_secs_f64() * 1e3,
            "cold_cpu_ms": cold_cpu.as_secs_f64() * 1e3,
            "noop_cpu_ms": noop_cpu.as_secs_f64() * 1e3,
            "rss_mib": rss_mib,
            "rss_settled_mib": rss_settled_mib,
        })
    );
}

/// The CPU time this process has used (user and system, every thread): on a shared machine
/// the wall time of a phase also counts the time other work held the cores.
fn cpu_time() -> Duration {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name's closing parenthesis; utime and stime are the
    // 14th and 15th of the line, in clock ticks (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

/// Writes `count` manifests; returns each document with its kind for the validation run.
fn generate(project: &Path, count: usize) -> Vec<(Kind, Value)> {
    let mut documents = Vec::with_capacity(count);
    for kind in Kind::ALL {
        fs::create_dir_all(project.join(kind.directory())).unwrap();
    }
    let workflows = count * 4 / 10;
    for i in 0..count {
        let (kind, value) = match i % 10 {
            0..=3 => (
                Kind::Workflow,
                json!({
                    "name": format!("Workflow {i}"),
                    "description": "generated",
                    "max_parallel": 2,
                    "timeout": "30m",
                    "steps": [
                        {"name": "setup", "agent": "test_runner", "action": "setup_environment",
                         "parameters": {"environment": "staging"}},
                        {"name": "unit", "command": ["cargo", "test"], "depends_on": ["setup"],
                         "retries": 1, "retry_delay": "5s", "timeout": 600},
                        {"name": "api", "agent": "test_runner", "action": "run_tests",
                         "depends_on": ["setup"], "parameters": {"test_suite": "api", "parallel": true}},
                        {"name": "report", "agent": "report_generator", "action": "generate_html_report",
                         "depends_on": ["unit", "api"], "if": "always()"}
                    ]
                }),
            ),
            4 | 5 => (
                Kind::Schedule,
                json!({"name": format!("Schedule {i}"), "cron": format!("{} {} * * 1-5", i % 60, i % 24),
                       "workflow": format!("wf_workflow-{}", (i / 10) * 10 % workflows), "timezone": "UTC"}),
            ),
            6 | 7 => (
                Kind::Alert,
                json!({"name": format!("Alert {i}"), "condition": "system.cpu_percent > 80 and system.memory_percent > 70",
                       "duration": "5m", "actions": ["email", "webhook"], "severity": "warning"}),
            ),
            8 => (
                Kind::Trigger,
                json!({"name": format!("Trigger {i}"), "type": "webhook", "path": format!("/hooks/t{i}"),
                       "provider": "github", "workflow": format!("wf_workflow-{}", (i / 10) * 10 % workflows),
                       "events": ["push", "pull_request"], "secret": "env:HOOK_SECRET"}),
            ),
            _ if i % 20 == 9 => (
                Kind::Agent,
                json!({"name": format!("agent_{i}"), "type": "exec", "command": ["python3", "agent.py"],
                       "actions": ["run"]}),
            ),
            _ => (
                Kind::WorkflowTemplate,
                json!({"name": format!("Template {i}"), "parameters": {"environment": {"type": "string", "required": true}},
                       "steps": [{"name": "run", "command": ["make", "test"]}]}),
            ),
        };
        let file = project.join(kind.directory()).join(format!("m{i:06}.yaml"));
        fs::write(&file, orchestrator::reconcile::diff::to_yaml(&value)).unwrap();
        documents.push((kind, value));
    }
    documents
}

/// Documents per second python-jsonschema validates with the same schemas: the median of
/// `passes` passes after a warm-up.
fn python_rate(work: &Path, documents: &[(Kind, Value)], passes: usize) -> Option<f64> {
    let input = work.join("python-input.json");
    let schemas: serde_json::Map<String, Value> = Kind::ALL
        .iter()
        .map(|k| {
            (
                k.as_str().to_owned(),
                serde_json::from_str(schema::schema_text(*k)).unwrap(),
            )
        })
        .collect();
    let docs: Vec<Value> = documents
        .iter()
        .map(|(k, d)| json!([k.as_str(), d]))
        .collect();
    fs::write(
        &input,
        json!({"schemas": schemas, "documents": docs}).to_string(),
    )
    .ok()?;
    let script = r#"
import json, sys, time
from jsonschema import Draft202012Validator
data = json.load(open(sys.argv[1]))
validators = {k: Draft202012Validator(s) for k, s in data["schemas"].items()}
docs = data["documents"]
for kind, doc in docs[:500]:
    validators[kind].is_valid(doc)
times = []
for _ in range(int(sys.argv[2])):
    start = time.perf_counter()
    for kind, doc in docs:
        assert validators[kind].is_valid(doc), doc
    times.append(time.perf_counter() - start)
print(len(docs) / sorted(times)[len(times) // 2])
"#;
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&input)
        .arg(passes.to_string())
        .output()
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "python-jsonschema not measured: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}
