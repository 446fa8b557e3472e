//! The fuzz targets' checks on the stable toolchain: every seed of `fuzz/corpus/<target>/`
//! and every input a fuzzing finding was fixed for (`tests/fixtures/fuzz/<target>/`) goes
//! through the same check the target runs (`fuzz/src/lib.rs`, compiled in here), within a
//! deadline, so `cargo test` keeps the findings fixed without libFuzzer.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod checks;

use crate::support::repo_dir;

/// How long one input may take in a debug build on a busy machine: the fuzz runs stop any
/// input at 10 s in a release build, so this only catches a hang.
const INPUT_DEADLINE: Duration = Duration::from_secs(120);

/// The files of a directory, sorted.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs the check of `target` on the file's bytes in a thread of its own and fails, naming
/// the file, when it panics or does not finish within [`INPUT_DEADLINE`].
fn replay(target: &'static str, file: &Path) {
    let data = std::fs::read(file).expect("read fuzz input");
    let (done, finished) = mpsc::channel();
    let started = Instant::now();
    let worker = thread::Builder::new()
        .name(format!("replay {}", file.display()))
        .spawn(move || {
            checks::check(target, &data);
            let _ = done.send(());
        })
        .expect("spawn replay thread");
    match finished.recv_timeout(INPUT_DEADLINE) {
        Ok(()) => worker.join().expect("replay thread"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let panic = worker
                .join()
                .expect_err("a check that stopped early panicked");
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("{target} check failed on {}: {message}", file.display());
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!(
            "{target} check on {} did not finish within {:?} (started {:?} ago): a hang",
            file.display(),
            INPUT_DEADLINE,
            started.elapsed()
        ),
    }
}

fn replay_dir(base: &Path) -> usize {
    let mut count = 0;
    for target in checks::TARGETS {
        for file in inputs(&base.join(target)) {
            replay(target, &file);
            count += 1;
        }
    }
    count
}

#[test]
fn seed_corpus_passes_every_check() {
    let corpus = repo_dir().join("fuzz/corpus");
    for target in checks::TARGETS {
        assert!(
            !inputs(&corpus.join(target)).is_empty(),
            "no seeds in fuzz/corpus/{target}"
        );
    }
    let count = replay_dir(&corpus);
    assert!(count >= checks::TARGETS.len());
}

#[test]
fn fixed_findings_stay_fixed() {
    let fixtures = repo_dir().join("tests/fixtures/fuzz");
    replay_dir(&fixtures);
}

#[test]
fn every_target_has_a_fuzz_binary() {
    let manifest = std::fs::read_to_string(repo_dir().join("fuzz/Cargo.toml")).expect("read");
    for target in checks::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{target}\"")),
            "fuzz/Cargo.toml has no [[bin]] {target}"
        );
        let source = repo_dir().join(format!("fuzz/fuzz_targets/{target}.rs"));
        let text = std::fs::read_to_string(&source).expect("read fuzz target");
        assert!(
            text.contains(&format!("orchestrator_fuzz::{target}(data)")),
            "{} does not run the `{target}` check",
            source.display()
        );
    }
}

/// Finding (cron target): from chrono's first instant, `next_fire` walked the zone's offsets
/// day by day across 262,000 years before reaching the first year a time can fire in, minutes
/// per call.
#[test]
fn next_fire_from_before_the_first_year_is_quick() {
    use chrono::{DateTime, TimeZone, Utc};
    use orchestrator::cron::CronSchedule;
    let schedule = CronSchedule::parse("30 2 * * *").expect("parse");
    let started = Instant::now();
    let next = schedule
        .next_fire(DateTime::<Utc>::MIN_UTC, chrono_tz::Europe::Berlin)
        .expect("a fire time");
    // Berlin's local mean time then was UTC+00:53:28.
    assert_eq!(next, Utc.with_ymd_and_hms(1, 1, 1, 1, 36, 32).unwrap());
    let utc = schedule.next_fire(DateTime::<Utc>::MIN_UTC, chrono_tz::UTC);
    assert_eq!(utc, Some(Utc.with_ymd_and_hms(1, 1, 1, 2, 30, 0).unwrap()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// Finding (manifest target): a JSON `{"alerts": [...]}` file that serde_json reads but the
/// YAML reader locating its nodes refuses (a key given twice, nesting past the YAML limit)
/// reported its alerts' problems at line 0, column 0.
#[test]
fn alerts_of_a_json_file_without_locations_are_reported_in_the_file() {
    use orchestrator::reconcile::desired_set;
    use orchestrator::source::{Snapshot, SourceFile};
    let deep = format!("{}{}", "[".repeat(70), "]".repeat(70));
    for text in [
        r#"{"alerts": [{"name": "a", "name": "b", "condition": "nope"}]}"#.to_owned(),
        format!(r#"{{"alerts": [{{"name": "a", "condition": "nope", "x": {deep}}}]}}"#),
    ] {
        let snapshot = Snapshot {
            revision: "dir:test".into(),
            content_revision: None,
            files: vec![SourceFile {
                path: "alerts/a.json".into(),
                text,
            }],
            diagnostics: Vec::new(),
            context: Vec::new(),
        };
        let set = desired_set(&snapshot);
        assert!(!set.diagnostics.is_empty());
        for diagnostic in &set.diagnostics {
            assert!(
                diagnostic.line == 1 && diagnostic.column >= 1,
                "{diagnostic:?}"
            );
        }
    }
}
