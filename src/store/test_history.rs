//! Every test case's history across runs and revisions, and what each new result means
//! against it.
//!
//! A test is identified by its workflow, suite, classname and name: its id is `tc_` and the
//! first 16 hex digits of the SHA-256 of the four joined by NUL bytes ([`test_id`]), the
//! same on every machine and across restarts. Three trees hold the history:
//!
//! - `tests`: per test id, a [`TestRecord`] (JSON): the four names and a rolling summary
//!   (last result, the recent pass/fail sequence, whether it is flaky and why, the last
//!   failure), so listing and filtering never read results.
//! - `test_results`: per result, 25 bytes of key (8 of the id, the run's 16 ULID bytes, the
//!   attempt) and 22 of value ([`encode_result`]): status, class, duration, revision and
//!   worker (interned), and the failure message's digest.
//! - `test_strings`: revisions, workers and failure messages, each stored once.
//!
//! A result is classified ([`classify`]) before it is added: `quarantined` when it failed
//! and a Quarantine covers it, `flaky` when it contradicts a result on the same revision
//! (a retry or a re-run) or fails while the test flips often, `new_failure` /
//! `still_failing` against the previous run's result, `fixed`, `passed`, `skipped`.
//! Retention: results past `retention_runs` per test, or older than `retention_days`, are
//! removed as new ones come in. Writes are not flushed here: they become durable with the
//! run's next flush, before the step's record is reported.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{decode, encode, Store, StoreError};
use crate::config::TestsConfig;
use crate::model::{TestCase, TestClass, TestStatus};

const TESTS: &str = "tests";
const RESULTS: &str = "test_results";
const STRINGS: &str = "test_strings";

/// The id of a test: `tc_` and 16 hex digits of the SHA-256 of its workflow, suite,
/// classname and name joined by NUL bytes.
pub fn test_id(workflow: &str, suite: &str, classname: &str, name: &str) -> String {
    let mut hash = Sha256::new();
    for (i, part) in [workflow, suite, classname, name].iter().enumerate() {
        if i > 0 {
            hash.update([0u8]);
        }
        hash.update(part.as_bytes());
    }
    format!("tc_{}", hex::encode(&hash.finalize()[..8]))
}

/// A failure message with what differs between occurrences of the same failure taken out:
/// numbers (`<n>`), hex addresses and long hex strings (`<hex>`), temporary paths
/// (`<tmp>`), and runs of spaces. "The same failure" has the same normalised text.
pub fn normalise_failure(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let bytes = message.as_bytes();
    let mut i = 0;
    let word_start =
        |i: usize| i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
    while i < bytes.len() {
        let rest = &message[i..];
        if word_start(i) && rest.starts_with("0x") {
            let end = 2 + rest[2..].bytes().take_while(u8::is_ascii_hexdigit).count();
            if end > 2 {
                out.push_str("<hex>");
                i += end;
                continue;
            }
        }
        if let Some(len) = temp_path_len(rest) {
            out.push_str("<tmp>");
            i += len;
            continue;
        }
        if word_start(i) {
            let hex = rest.bytes().take_while(u8::is_ascii_hexdigit).count();
            let alnum_after = rest[hex..]
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
            if hex >= 8 && !alnum_after && rest[..hex].bytes().any(|b| b.is_ascii_digit()) {
                out.push_str("<hex>");
                i += hex;
                continue;
            }
        }
        let c = bytes[i];
        if c.is_ascii_digit() && word_start(i) {
            let len = rest
                .bytes()
                .take_while(|b| b.is_ascii_digit() || *b == b'.')
                .count();
            out.push_str("<n>");
            i += len;
            continue;
        }
        if c.is_ascii_whitespace() {
            let len = rest.bytes().take_while(u8::is_ascii_whitespace).count();
            out.push(' ');
            i += len;
            continue;
        }
        let ch = rest.chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8();
    }
    out.trim().to_owned()
}

/// The length of a temporary path at the start of `text` (`/tmp/…`, `/var/folders/…`,
/// `/private/var/…`), up to the next space or quote.
fn temp_path_len(text: &str) -> Option<usize> {
    [
        "/tmp/",
        "/var/tmp/",
        "/var/folders/",
        "/private/var/",
        "/dev/shm/",
    ]
    .iter()
    .find(|prefix| text.starts_with(**prefix))
    .map(|_| {
        text.bytes()
            .take_while(|b| !b.is_ascii_whitespace() && !matches!(b, b'\'' | b'"' | b')' | b','))
            .count()
    })
}

/// The digest of a failure message: 16 hex digits of the SHA-256 of its normalised text.
pub fn failure_digest(message: &str) -> String {
    let normal = normalise_failure(message);
    hex::encode(&Sha256::digest(normal.as_bytes())[..8])
}

/// A test and the summary of its history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestRecord {
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
    /// The run of its first recorded result.
    pub first_run: String,
    /// The run of its last result.
    pub last_run: String,
    /// Its last result.
    pub last_status: TestStatus,
    /// What its last result meant.
    pub last_class: TestClass,
    /// The revision of its last result.
    pub last_revision: String,
    /// The last result of the run before `last_run`, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_run_status: Option<TestStatus>,
    /// Whether it passed, and whether it failed, on `last_revision`.
    pub revision_passed: bool,
    /// See `revision_passed`.
    pub revision_failed: bool,
    /// Its last results, oldest first, one letter each: `P` passed, `F` failed or errored,
    /// `S` skipped.
    pub recent: String,
    /// Whether it is flaky now.
    pub flaky: bool,
    /// Why, when it is: "passed and failed on git:1a2b…" or "flipped 4 times in its last
    /// 20 results".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flaky_reason: Option<String>,
    /// Results since it last passed and failed on one revision (`None`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_contradiction: Option<u32>,
    /// The revision it last passed and failed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contradiction_revision: Option<String>,
    /// Results recorded, ever.
    pub results: u64,
    /// Failed or errored results, ever.
    pub failures: u64,
    /// Results stored now (within retention).
    pub stored: u32,
    /// The creation time (ms) of the oldest stored result's run.
    pub oldest_ms: u64,
    /// Its last duration, in milliseconds.
    pub last_duration_ms: u64,
    /// The mean duration of its stored results' most recent ones (a moving average), ms.
    pub mean_duration_ms: f64,
    /// The digest of its last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Its last failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_message: Option<String>,
    /// The run of its last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failed_run: Option<String>,
}

impl TestRecord {
    /// Pass/fail flips in `recent` (skips ignored).
    pub fn flips(&self) -> u32 {
        flip_count(&self.recent)
    }
}

/// Pass/fail flips in a sequence of result letters (skips ignored).
fn flip_count(recent: &str) -> u32 {
    let mut flips = 0;
    let mut last = None;
    for c in recent.bytes().filter(|c| *c != b'S') {
        if last.is_some_and(|l| l != c) {
            flips += 1;
        }
        last = Some(c);
    }
    flips
}

/// One stored result of a test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestResult {
    /// The run.
    pub run_id: String,
    /// The step's attempt.
    pub attempt: u32,
    /// The outcome.
    pub status: TestStatus,
    /// What it meant.
    pub class: TestClass,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The run's revision.
    pub revision: String,
    /// The worker that ran it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// The digest of its failure message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Where a batch of results comes from.
#[derive(Debug, Clone, Copy)]
pub struct ResultSource<'a> {
    /// The workflow's id.
    pub workflow: &'a str,
    /// The run (`run_<ulid>`).
    pub run_id: &'a str,
    /// The step's attempt.
    pub attempt: u32,
    /// The run's revision (`git:<sha>`, `dir:<digest>`; the run's id when it has none).
    pub revision: &'a str,
    /// The worker that ran the attempt.
    pub worker: Option<&'a str>,
}

/// The class of a new result against the test's record (`None`: a new test).
pub fn classify(
    record: Option<&TestRecord>,
    status: TestStatus,
    source: &ResultSource<'_>,
    quarantined: bool,
    settings: &TestsConfig,
) -> TestClass {
    let failing = matches!(status, TestStatus::Failed | TestStatus::Error);
    if status == TestStatus::Skipped {
        return TestClass::Skipped;
    }
    if failing && quarantined {
        return TestClass::Quarantined;
    }
    let Some(record) = record else {
        return if failing {
            TestClass::NewFailure
        } else {
            TestClass::Passed
        };
    };
    let same_revision = record.last_revision == source.revision;
    if same_revision
        && ((failing && record.revision_passed) || (!failing && record.revision_failed))
    {
        return TestClass::Flaky;
    }
    // Flips counted with this result, over the window it will be in.
    let window = settings.flaky_window.max(2) as usize;
    let kept = record.recent.len().min(window - 1);
    let recent = &record.recent[record.recent.len() - kept..];
    let last = recent.bytes().rev().find(|c| *c != b'S');
    let mut flips = flip_count(recent);
    if last.is_some_and(|l| (l == b'F') != failing) {
        flips += 1;
    }
    if failing && (record.flaky || flips >= settings.flaky_flips) {
        return TestClass::Flaky;
    }
    let before = if record.last_run == source.run_id {
        record.previous_run_status
    } else {
        Some(record.last_status)
    };
    let failed_before = matches!(before, Some(TestStatus::Failed | TestStatus::Error));
    match (failing, failed_before) {
        (true, true) => TestClass::StillFailing,
        (true, false) => TestClass::NewFailure,
        (false, true) => TestClass::Fixed,
        (false, false) => TestClass::Passed,
    }
}

/// The record after a new result, classified as `class`.
fn updated(
    record: Option<TestRecord>,
    id: &str,
    case: &TestCase,
    class: TestClass,
    source: &ResultSource<'_>,
    run_ms: u64,
    settings: &TestsConfig,
) -> TestRecord {
    let failing = matches!(case.status, TestStatus::Failed | TestStatus::Error);
    let duration_ms = (case.time_seconds.max(0.0) * 1000.0).round() as u64;
    let mut record = record.unwrap_or_else(|| TestRecord {
        id: id.to_owned(),
        workflow: source.workflow.to_owned(),
        suite: case.suite.clone(),
        classname: case.classname.clone(),
        name: case.name.clone(),
        first_run: source.run_id.to_owned(),
        last_run: String::new(),
        last_status: case.status,
        last_class: class,
        last_revision: String::new(),
        previous_run_status: None,
        revision_passed: false,
        revision_failed: false,
        recent: String::new(),
        flaky: false,
        flaky_reason: None,
        since_contradiction: None,
        contradiction_revision: None,
        results: 0,
        failures: 0,
        stored: 0,
        oldest_ms: run_ms,
        last_duration_ms: duration_ms,
        mean_duration_ms: duration_ms as f64,
        last_failure: None,
        last_failure_message: None,
        last_failed_run: None,
    });
    if record.last_run != source.run_id {
        record.previous_run_status = (!record.last_run.is_empty()).then_some(record.last_status);
    }
    if record.last_revision != source.revision {
        record.last_revision = source.revision.to_owned();
        record.revision_passed = false;
        record.revision_failed = false;
    }
    let contradiction = (failing && record.revision_passed)
        || (case.status == TestStatus::Passed && record.revision_failed);
    match case.status {
        TestStatus::Passed => record.revision_passed = true,
        TestStatus::Failed | TestStatus::Error => record.revision_failed = true,
        TestStatus::Skipped => {}
    }
    record.since_contradiction = if contradiction {
        Some(0)
    } else {
        record.since_contradiction.map(|n| n.saturating_add(1))
    };
    record.recent.push(match case.status {
        TestStatus::Passed => 'P',
        TestStatus::Failed | TestStatus::Error => 'F',
        TestStatus::Skipped => 'S',
    });
    let window = settings.flaky_window.max(2) as usize;
    if record.recent.len() > window {
        record.recent.drain(..record.recent.len() - window);
    }
    if contradiction {
        record.contradiction_revision = Some(source.revision.to_owned());
    }
    let flips = record.flips();
    let recent_contradiction = record
        .since_contradiction
        .is_some_and(|n| (n as usize) < window);
    (record.flaky, record.flaky_reason) = if recent_contradiction {
        let revision = record.contradiction_revision.as_deref().unwrap_or_default();
        (true, Some(format!("passed and failed on {revision}")))
    } else if flips >= settings.flaky_flips {
        let results = record.recent.len();
        (
            true,
            Some(format!(
                "flipped {flips} times in its last {results} results"
            )),
        )
    } else {
        (false, None)
    };
    record.last_run = source.run_id.to_owned();
    record.last_status = case.status;
    record.last_class = class;
    record.results += 1;
    record.stored += 1;
    record.last_duration_ms = duration_ms;
    // A moving average over about the last 20 results.
    record.mean_duration_ms +=
        (duration_ms as f64 - record.mean_duration_ms) / 20f64.min(record.results as f64);
    if failing {
        record.failures += 1;
        let message = failure_text(case);
        record.last_failure = Some(failure_digest(&message));
        record.last_failure_message = Some(cap(&message, 500));
        record.last_failed_run = Some(source.run_id.to_owned());
    }
    record
}

/// The text a failure is grouped by: its message, else the first line of its details.
fn failure_text(case: &TestCase) -> String {
    case.message
        .clone()
        .or_else(|| {
            case.details
                .as_deref()
                .and_then(|d| d.lines().next())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| format!("{:?}", case.status).to_lowercase())
}

fn cap(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The milliseconds of a run id's ULID (its creation time); 0 when it is not one.
fn run_ms(run_id: &str) -> u64 {
    run_ulid(run_id).map_or(0, |u| u.timestamp_ms())
}

fn run_ulid(run_id: &str) -> Option<ulid::Ulid> {
    ulid::Ulid::from_string(&run_id.strip_prefix("run_")?.to_ascii_uppercase()).ok()
}

/// The 8 key bytes of a test id.
fn id_bytes(id: &str) -> Option<[u8; 8]> {
    let mut bytes = [0u8; 8];
    hex::decode_to_slice(id.strip_prefix("tc_")?, &mut bytes).ok()?;
    Some(bytes)
}

/// The key of a result: id (8), run ULID (16), attempt (1).
fn result_key(id: &[u8; 8], run_id: &str, attempt: u32) -> [u8; 25] {
    let mut key = [0u8; 25];
    key[..8].copy_from_slice(id);
    let ulid = run_ulid(run_id).map_or(0u128, u128::from);
    key[8..24].copy_from_slice(&ulid.to_be_bytes());
    key[24] = attempt.min(255) as u8;
    key
}

const STATUSES: [TestStatus; 4] = [
    TestStatus::Passed,
    TestStatus::Failed,
    TestStatus::Error,
    TestStatus::Skipped,
];

/// A result's value: status (1), class (1), duration ms (4), revision (4), worker (4, 0
/// for none), failure digest (8, 0 for none); strings interned in `test_strings`.
fn encode_result(
    status: TestStatus,
    class: TestClass,
    duration_ms: u64,
    revision: u32,
    worker: u32,
    digest: u64,
) -> [u8; 22] {
    let mut value = [0u8; 22];
    value[0] = STATUSES.iter().position(|s| *s == status).unwrap_or(0) as u8;
    value[1] = TestClass::ALL.iter().position(|c| *c == class).unwrap_or(0) as u8;
    value[2..6].copy_from_slice(&(duration_ms.min(u32::MAX as u64) as u32).to_le_bytes());
    value[6..10].copy_from_slice(&revision.to_le_bytes());
    value[10..14].copy_from_slice(&worker.to_le_bytes());
    value[14..22].copy_from_slice(&digest.to_le_bytes());
    value
}

/// Interned strings: `s` + text → number, `n` + number → text, `next` → the next number.
struct Interner<'t> {
    tree: &'t sled::Tree,
    known: HashMap<String, u32>,
}

impl<'t> Interner<'t> {
    fn number(&mut self, text: &str) -> Result<u32, sled::Error> {
        if let Some(n) = self.known.get(text) {
            return Ok(*n);
        }
        let mut key = b"s".to_vec();
        key.extend_from_slice(text.as_bytes());
        let n = match self.tree.get(&key)? {
            Some(value) => u32::from_le_bytes(value.as_ref().try_into().unwrap_or([0; 4])),
            None => {
                let next = self
                    .tree
                    .update_and_fetch(b"next", |old| {
                        let n =
                            old.map_or(0, |o| u32::from_le_bytes(o.try_into().unwrap_or([0; 4])));
                        Some((n + 1).to_le_bytes().to_vec())
                    })?
                    .map_or(1, |v| {
                        u32::from_le_bytes(v.as_ref().try_into().unwrap_or([0; 4]))
                    });
                let mut reverse = b"n".to_vec();
                reverse.extend_from_slice(&next.to_be_bytes());
                self.tree.insert(reverse, text.as_bytes())?;
                self.tree.insert(key, &next.to_le_bytes())?;
                next
            }
        };
        self.known.insert(text.to_owned(), n);
        Ok(n)
    }

    fn text(tree: &sled::Tree, n: u32) -> Result<Option<String>, sled::Error> {
        let mut reverse = b"n".to_vec();
        reverse.extend_from_slice(&n.to_be_bytes());
        Ok(tree
            .get(reverse)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

/// A failure group: one normalised message and an example of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FailureGroup {
    /// 16 hex digits.
    pub digest: String,
    /// The message with numbers, addresses and temporary paths taken out.
    pub normalised: String,
    /// The first message seen of the group.
    pub example: String,
}

impl Store {
    /// Classifies a step attempt's cases against their tests' histories (setting each
    /// case's `class`) and records them. `quarantined(id, case)` says whether a
    /// Quarantine covers a case. Not flushed: the caller's next flush makes it durable.
    pub fn record_test_results(
        &self,
        source: &ResultSource<'_>,
        cases: &mut [TestCase],
        settings: &TestsConfig,
        quarantined: &dyn Fn(&str, &TestCase) -> bool,
    ) -> Result<(), StoreError> {
        if cases.is_empty() {
            return Ok(());
        }
        let h = self.handles()?;
        let err = |e| self.sled_error(e);
        let tests = h.db.open_tree(TESTS).map_err(err)?;
        let results = h.db.open_tree(RESULTS).map_err(err)?;
        let strings = h.db.open_tree(STRINGS).map_err(err)?;
        let mut interner = Interner {
            tree: &strings,
            known: HashMap::new(),
        };
        let revision = interner.number(source.revision).map_err(err)?;
        let worker = match source.worker {
            Some(worker) => interner.number(worker).map_err(err)?,
            None => 0,
        };
        let now_ms = run_ms(source.run_id);
        let cutoff_ms = now_ms.saturating_sub(u64::from(settings.retention_days) * 86_400_000);
        let mut records = sled::Batch::default();
        let mut stored = sled::Batch::default();
        // A report may list one case twice (the same name in two files of a suite): the
        // later result is classified against the earlier one.
        let mut seen: HashMap<String, TestRecord> = HashMap::new();
        for case in cases.iter_mut() {
            let id = test_id(source.workflow, &case.suite, &case.classname, &case.name);
            let Some(key) = id_bytes(&id) else { continue };
            let previous = match seen.remove(&id) {
                Some(record) => Some(record),
                None => tests
                    .get(id.as_bytes())
                    .map_err(err)?
                    .map(|v| decode::<TestRecord>(id.as_bytes(), &v))
                    .transpose()?,
            };
            let quarantined = quarantined(&id, case);
            let class = classify(
                previous.as_ref(),
                case.status,
                source,
                quarantined,
                settings,
            );
            case.class = Some(class);
            let mut record = updated(previous, &id, case, class, source, now_ms, settings);
            let digest = if matches!(case.status, TestStatus::Failed | TestStatus::Error) {
                let message = failure_text(case);
                let digest = failure_digest(&message);
                let mut group_key = b"f".to_vec();
                group_key.extend_from_slice(digest.as_bytes());
                if !strings.contains_key(&group_key).map_err(err)? {
                    let group = FailureGroup {
                        digest: digest.clone(),
                        normalised: normalise_failure(&message),
                        example: cap(&message, 2000),
                    };
                    strings.insert(group_key, encode(&group)).map_err(err)?;
                }
                u64::from_str_radix(&digest, 16).unwrap_or(0)
            } else {
                0
            };
            let duration_ms = record.last_duration_ms;
            stored.insert(
                &result_key(&key, source.run_id, source.attempt)[..],
                &encode_result(case.status, class, duration_ms, revision, worker, digest)[..],
            );
            if record.stored > settings.retention_runs || record.oldest_ms < cutoff_ms {
                self.trim_results(&results, &key, &mut record, settings, cutoff_ms)?;
            }
            seen.insert(id, record);
        }
        for (id, record) in &seen {
            records.insert(id.as_bytes(), encode(record));
        }
        results.apply_batch(stored).map_err(err)?;
        tests.apply_batch(records).map_err(err)?;
        Ok(())
    }

    /// Removes a test's oldest results past its retention, updating its record's counts.
    fn trim_results(
        &self,
        results: &sled::Tree,
        key: &[u8; 8],
        record: &mut TestRecord,
        settings: &TestsConfig,
        cutoff_ms: u64,
    ) -> Result<(), StoreError> {
        // The new result is not in the tree yet: it counts as the newest.
        let mut excess = record.stored.saturating_sub(settings.retention_runs);
        let mut removed = Vec::new();
        record.oldest_ms = u64::MAX;
        for entry in results.scan_prefix(key) {
            let (k, _) = entry.map_err(|e| self.sled_error(e))?;
            let ms = ulid_ms(&k);
            if excess > 0 || ms < cutoff_ms {
                removed.push(k);
                excess = excess.saturating_sub(1);
                continue;
            }
            record.oldest_ms = ms;
            break;
        }
        if record.oldest_ms == u64::MAX {
            record.oldest_ms = run_ms(&record.last_run);
        }
        record.stored = record.stored.saturating_sub(removed.len() as u32);
        let mut batch = sled::Batch::default();
        for k in removed {
            batch.remove(k);
        }
        results.apply_batch(batch).map_err(|e| self.sled_error(e))
    }

    /// Every test's record, in id order.
    pub fn test_records(&self) -> Result<Vec<TestRecord>, StoreError> {
        let h = self.handles()?;
        let tests = h.db.open_tree(TESTS).map_err(|e| self.sled_error(e))?;
        tests
            .iter()
            .map(|entry| {
                let (key, value) = entry.map_err(|e| self.sled_error(e))?;
                decode(&key, &value)
            })
            .collect()
    }

    /// One test's record.
    pub fn test_record(&self, id: &str) -> Result<Option<TestRecord>, StoreError> {
        let h = self.handles()?;
        let tests = h.db.open_tree(TESTS).map_err(|e| self.sled_error(e))?;
        tests
            .get(id.as_bytes())
            .map_err(|e| self.sled_error(e))?
            .map(|value| decode(id.as_bytes(), &value))
            .transpose()
    }

    /// A test's stored results, newest first, at most `limit`.
    pub fn test_results(&self, id: &str, limit: usize) -> Result<Vec<TestResult>, StoreError> {
        let Some(key) = id_bytes(id) else {
            return Ok(Vec::new());
        };
        let h = self.handles()?;
        let err = |e| self.sled_error(e);
        let results = h.db.open_tree(RESULTS).map_err(err)?;
        let strings = h.db.open_tree(STRINGS).map_err(err)?;
        let mut names: HashMap<u32, Option<String>> = HashMap::new();
        let mut name = |n: u32| -> Result<Option<String>, StoreError> {
            if n == 0 {
                return Ok(None);
            }
            if let Some(known) = names.get(&n) {
                return Ok(known.clone());
            }
            let text = Interner::text(&strings, n).map_err(|e| self.sled_error(e))?;
            names.insert(n, text.clone());
            Ok(text)
        };
        let mut out = Vec::new();
        for entry in results.scan_prefix(key).rev().take(limit) {
            let (k, v) = entry.map_err(err)?;
            if k.len() != 25 || v.len() != 22 {
                continue;
            }
            let ulid = u128::from_be_bytes(k[8..24].try_into().unwrap_or([0; 16]));
            let word = |at: usize| u32::from_le_bytes(v[at..at + 4].try_into().unwrap_or([0; 4]));
            let digest = u64::from_le_bytes(v[14..22].try_into().unwrap_or([0; 8]));
            out.push(TestResult {
                run_id: format!("run_{}", ulid::Ulid::from(ulid).to_string().to_lowercase()),
                attempt: u32::from(k[24]),
                status: STATUSES[usize::from(v[0]).min(3)],
                class: TestClass::ALL[usize::from(v[1]).min(TestClass::ALL.len() - 1)],
                duration_ms: u64::from(word(2)),
                revision: name(word(6))?.unwrap_or_default(),
                worker: name(word(10))?,
                failure: (digest != 0).then(|| format!("{digest:016x}")),
            });
        }
        Ok(out)
    }

    /// The failure group of a digest.
    pub fn failure_group(&self, digest: &str) -> Result<Option<FailureGroup>, StoreError> {
        let h = self.handles()?;
        let strings = h.db.open_tree(STRINGS).map_err(|e| self.sled_error(e))?;
        let mut key = b"f".to_vec();
        key.extend_from_slice(digest.as_bytes());
        strings
            .get(&key)
            .map_err(|e| self.sled_error(e))?
            .map(|value| decode(&key, &value))
            .transpose()
    }
}

/// The creation time (ms) in a result key's run ULID.
fn ulid_ms(key: &[u8]) -> u64 {
    key.get(8..24)
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map_or(0, |b| {
            ulid::Ulid::from(u128::from_be_bytes(b)).timestamp_ms()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, status: TestStatus, message: Option<&str>) -> TestCase {
        TestCase {
            suite: "api".into(),
            classname: "tests.api".into(),
            name: name.into(),
            status,
            time_seconds: 0.25,
            message: message.map(str::to_owned),
            details: None,
            output: None,
            class: None,
        }
    }

    fn run_at(ms: u64) -> String {
        format!(
            "run_{}",
            ulid::Ulid::from_parts(ms, 7).to_string().to_lowercase()
        )
    }

    struct History {
        store: Store,
        settings: TestsConfig,
        _dir: tempfile::TempDir,
    }

    impl History {
        fn new() -> History {
            let dir = tempfile::tempdir().unwrap();
            History {
                store: Store::open(dir.path()).unwrap(),
                settings: TestsConfig::default(),
                _dir: dir,
            }
        }

        /// Records one result; returns its class.
        fn record(
            &self,
            run: &str,
            attempt: u32,
            revision: &str,
            c: TestCase,
            q: bool,
        ) -> TestClass {
            let mut cases = vec![c];
            let source = ResultSource {
                workflow: "wf_ci",
                run_id: run,
                attempt,
                revision,
                worker: Some("rig-1"),
            };
            self.store
                .record_test_results(&source, &mut cases, &self.settings, &|_, _| q)
                .unwrap();
            cases[0].class.unwrap()
        }
    }

    #[test]
    fn ids_are_stable_and_tell_fields_apart() {
        let id = test_id("wf_ci", "api", "tests.api", "test_login");
        assert_eq!(id, test_id("wf_ci", "api", "tests.api", "test_login"));
        assert!(id.starts_with("tc_") && id.len() == 19, "{id}");
        assert_ne!(
            test_id("wf_ci", "a", "bc", "d"),
            test_id("wf_ci", "ab", "c", "d")
        );
        assert_ne!(id, test_id("wf_other", "api", "tests.api", "test_login"));
    }

    #[test]
    fn the_same_failure_has_the_same_digest() {
        let a = "AssertionError: expected 200, got 503 after 1.25s at 0x7ffd5a2c in /tmp/pytest-of-qa/pytest-81/test_x0/data.json";
        let b = "AssertionError: expected 200, got 504 after 3.5s at 0x7ffe0000 in /tmp/pytest-of-qa/pytest-82/test_x0/data.json";
        assert_eq!(
            normalise_failure(a),
            "AssertionError: expected <n>, got <n> after <n>s at <hex> in <tmp>"
        );
        assert_eq!(failure_digest(a), failure_digest(b));
        assert_ne!(failure_digest(a), failure_digest("KeyError: 'user'"));
        assert_eq!(
            normalise_failure("object deadbeef12 vs  cafe  and test_v2 ok"),
            "object <hex> vs cafe and test_v2 ok"
        );
    }

    #[test]
    fn results_are_classified_against_the_previous_run() {
        let h = History::new();
        let fail = |m| case("t", TestStatus::Failed, Some(m));
        let pass = || case("t", TestStatus::Passed, None);
        let r = |i: u64| run_at(1_000_000 + i);
        assert_eq!(
            h.record(&r(1), 1, "git:a", pass(), false),
            TestClass::Passed
        );
        assert_eq!(
            h.record(&r(2), 1, "git:b", fail("x"), false),
            TestClass::NewFailure
        );
        assert_eq!(
            h.record(&r(3), 1, "git:c", fail("x"), false),
            TestClass::StillFailing
        );
        // A retry in the same run that fails again is still the run's new failure vs run 3.
        assert_eq!(h.record(&r(4), 1, "git:d", pass(), false), TestClass::Fixed);
        assert_eq!(
            h.record(&r(5), 1, "git:e", fail("x"), true),
            TestClass::Quarantined
        );
        assert_eq!(
            h.record(
                &r(6),
                1,
                "git:f",
                case("t", TestStatus::Skipped, None),
                false
            ),
            TestClass::Skipped
        );
        // A new test that fails is a new failure.
        assert_eq!(
            h.record(
                &r(7),
                1,
                "git:g",
                case("u", TestStatus::Error, Some("boom")),
                false
            ),
            TestClass::NewFailure
        );
    }

    #[test]
    fn a_retry_within_a_run_compares_with_the_run_before() {
        let h = History::new();
        let run1 = run_at(2_000_000);
        let run2 = run_at(2_000_001);
        h.record(
            &run1,
            1,
            "git:a",
            case("t", TestStatus::Passed, None),
            false,
        );
        assert_eq!(
            h.record(
                &run2,
                1,
                "git:b",
                case("t", TestStatus::Failed, Some("x")),
                false
            ),
            TestClass::NewFailure
        );
        assert_eq!(
            h.record(
                &run2,
                2,
                "git:b",
                case("t", TestStatus::Failed, Some("x")),
                false
            ),
            TestClass::NewFailure,
            "the retry failed too: new against run 1, not still failing against attempt 1"
        );
    }

    #[test]
    fn passing_and_failing_on_one_revision_is_flaky() {
        let h = History::new();
        let run1 = run_at(3_000_000);
        let run2 = run_at(3_000_001);
        assert_eq!(
            h.record(
                &run1,
                1,
                "git:a",
                case("t", TestStatus::Failed, Some("x")),
                false
            ),
            TestClass::NewFailure
        );
        assert_eq!(
            h.record(
                &run1,
                2,
                "git:a",
                case("t", TestStatus::Passed, None),
                false
            ),
            TestClass::Flaky,
            "a retry passed what failed"
        );
        let record = h
            .store
            .test_record(&test_id("wf_ci", "api", "tests.api", "t"))
            .unwrap()
            .unwrap();
        assert!(record.flaky);
        assert_eq!(
            record.flaky_reason.as_deref(),
            Some("passed and failed on git:a")
        );
        // A later failure on another revision is flaky while the evidence is recent.
        assert_eq!(
            h.record(
                &run2,
                1,
                "git:b",
                case("t", TestStatus::Failed, Some("x")),
                false
            ),
            TestClass::Flaky
        );
    }

    #[test]
    fn flipping_often_is_flaky_and_steadiness_ends_it() {
        let mut h = History::new();
        h.settings.flaky_flips = 3;
        h.settings.flaky_window = 6;
        let statuses = [
            TestStatus::Passed,
            TestStatus::Failed,
            TestStatus::Passed,
            TestStatus::Failed,
        ];
        let mut last = TestClass::Passed;
        for (i, status) in statuses.iter().enumerate() {
            last = h.record(
                &run_at(4_000_000 + i as u64),
                1,
                &format!("git:{i}"),
                case("t", *status, Some("m")),
                false,
            );
        }
        assert_eq!(last, TestClass::Flaky, "three flips in four results");
        let id = test_id("wf_ci", "api", "tests.api", "t");
        let record = h.store.test_record(&id).unwrap().unwrap();
        assert_eq!(
            record.flaky_reason.as_deref(),
            Some("flipped 3 times in its last 4 results")
        );
        for i in 4..10 {
            h.record(
                &run_at(4_000_000 + i),
                1,
                &format!("git:{i}"),
                case("t", TestStatus::Passed, None),
                false,
            );
        }
        let record = h.store.test_record(&id).unwrap().unwrap();
        assert!(!record.flaky, "{record:?}");
        assert_eq!(record.recent, "PPPPPP");
    }

    #[test]
    fn results_come_back_newest_first_with_their_details_and_retention_holds() {
        let mut h = History::new();
        h.settings.retention_runs = 3;
        for i in 0..5u64 {
            let status = if i % 2 == 0 {
                TestStatus::Passed
            } else {
                TestStatus::Failed
            };
            h.record(
                &run_at(5_000_000 + i),
                1,
                &format!("git:{i}"),
                case("t", status, Some("boom at 0x1f")),
                false,
            );
        }
        let id = test_id("wf_ci", "api", "tests.api", "t");
        let results = h.store.test_results(&id, 100).unwrap();
        assert_eq!(results.len(), 3, "only the last three are kept");
        assert_eq!(results[0].run_id, run_at(5_000_004));
        assert_eq!(results[0].revision, "git:4");
        assert_eq!(results[0].worker.as_deref(), Some("rig-1"));
        assert_eq!(results[0].duration_ms, 250);
        assert_eq!(results[1].status, TestStatus::Failed);
        let digest = results[1].failure.clone().unwrap();
        let group = h.store.failure_group(&digest).unwrap().unwrap();
        assert_eq!(group.normalised, "boom at <hex>");
        let record = h.store.test_record(&id).unwrap().unwrap();
        assert_eq!((record.stored, record.results, record.failures), (3, 5, 2));
    }

    #[test]
    fn results_older_than_the_retention_days_are_removed() {
        let mut h = History::new();
        h.settings.retention_days = 1;
        let day = 86_400_000;
        h.record(
            &run_at(10 * day),
            1,
            "git:a",
            case("t", TestStatus::Passed, None),
            false,
        );
        h.record(
            &run_at(10 * day + 1),
            1,
            "git:a",
            case("t", TestStatus::Passed, None),
            false,
        );
        h.record(
            &run_at(12 * day),
            1,
            "git:b",
            case("t", TestStatus::Passed, None),
            false,
        );
        let id = test_id("wf_ci", "api", "tests.api", "t");
        let results = h.store.test_results(&id, 100).unwrap();
        assert_eq!(results.len(), 1, "{results:?}");
        assert_eq!(h.store.test_record(&id).unwrap().unwrap().stored, 1);
    }
}
