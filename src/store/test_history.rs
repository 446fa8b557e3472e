//! Every test case's history across runs and revisions, and what each new result means
//! against it.
//!
//! A test is identified by its workflow, suite, classname and name: its id is `tc_` and the
//! first 16 hex digits of the SHA-256 of the four joined by NUL bytes ([`test_id`]), the
//! same on every machine and across restarts. The trees:
//!
//! - `tests`: the tests' states in buckets keyed by the first 12 bits of their ids (2
//!   bytes), each entry the id's 8 bytes and 111 fixed bytes of state ([`TestState`]: its
//!   workflow, last result and class, the last 64 results two bits each, whether it is
//!   flaky and why, the last failure's digest, counts, durations; strings interned). A
//!   batch of results reads and rewrites each bucket it touches once, under the store's
//!   `test_writes` lock; listing and filtering never read results.
//! - `test_names`: per test, its workflow, suite, classname and name (JSON), written once.
//!   [`TestRecord`] is what readers get: names and state with the strings looked up.
//! - `test_results`: a step attempt's results in blocks, one per bucket of tests (the first
//!   byte of their ids): key run ULID, bucket, step, attempt (20 bytes: a run's blocks are
//!   appended side by side); value 30 bytes per result, sorted by test id: the id and
//!   ([`encode_result`]) status, class, duration, revision and worker (interned), and the
//!   failure message's digest. A test's result in a run is one short range and a binary
//!   search away; a run of 10,000 cases writes 256 keys, not 10,000.
//! - `test_runs`: per workflow, the runs that recorded results (`<workflow>\0<ULID>`): a
//!   test's timeline is read run by run, newest first, one short range each.
//! - `test_index`: the flaky tests (`flaky\0<id>`), kept as tests become and stop being
//!   flaky, so that listing them reads only theirs.
//! - `test_strings`: revisions, workers and failure groups (normalised message and an
//!   example, by digest), each stored once.
//!
//! A result is classified ([`classify`]) before it is added: `quarantined` when it failed
//! and a Quarantine covers it, `flaky` when it contradicts a result on the same revision
//! (a retry or a re-run) or fails while the test flips often, `new_failure` /
//! `still_failing` against the previous run's result, `fixed`, `passed`, `skipped`.
//! Retention, per workflow: as a new run's results come in, the runs past `retention_runs`,
//! and those older than `retention_days` before it, are removed with their results, and
//! so are the workflow's tests whose last result went with them. Interned strings and
//! failure groups are kept. Writes are not flushed here: they become durable with the
//! run's next flush, before the step's record is reported.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{decode, encode, Handles, Store, StoreError};
use crate::config::TestsConfig;
use crate::model::{TestCase, TestClass, TestStatus};

const TESTS: &str = "tests";
const RESULTS: &str = "test_results";
const STRINGS: &str = "test_strings";
const RUNS: &str = "test_runs";
const NAMES: &str = "test_names";
const INDEX: &str = "test_index";

/// The id of a test: `tc_` and 16 hex digits of the SHA-256 of its workflow, suite,
/// classname and name joined by NUL bytes.
pub fn test_id(workflow: &str, suite: &str, classname: &str, name: &str) -> String {
    format!(
        "tc_{}",
        hex::encode(test_key(workflow, suite, classname, name))
    )
}

/// The 8 bytes a test id shows in hex.
fn test_key(workflow: &str, suite: &str, classname: &str, name: &str) -> [u8; 8] {
    let mut hash = Sha256::new();
    for (i, part) in [workflow, suite, classname, name].iter().enumerate() {
        if i > 0 {
            hash.update([0u8]);
        }
        hash.update(part.as_bytes());
    }
    let mut key = [0u8; 8];
    key.copy_from_slice(&hash.finalize()[..8]);
    key
}

/// The `tests` key of the bucket holding a test's state: the first 12 bits of its id.
fn state_bucket(key: &[u8]) -> [u8; 2] {
    [key[0], key[1] & 0xf0]
}

/// The trees of the history, open.
struct HistoryTrees<'t> {
    tests: &'t sled::Tree,
    names: &'t sled::Tree,
    results: &'t sled::Tree,
    runs: &'t sled::Tree,
    index: &'t sled::Tree,
}

/// The states of a bucket of tests, sorted by id.
type Bucket = Vec<([u8; 8], TestState)>;

/// A bucket's entry: the test's id (8) and its state.
const STATE_ENTRY: usize = 8 + STATE_BYTES;

/// The states of a bucket, sorted by id; `None` when it holds a state that is not one.
fn decode_bucket(bytes: &[u8]) -> Option<Bucket> {
    if bytes.len() % STATE_ENTRY != 0 {
        return None;
    }
    bytes
        .chunks_exact(STATE_ENTRY)
        .map(|entry| {
            let id = <[u8; 8]>::try_from(&entry[..8]).ok()?;
            Some((id, TestState::decode(&entry[8..])?))
        })
        .collect()
}

fn encode_bucket(entries: &[([u8; 8], TestState)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * STATE_ENTRY);
    for (id, state) in entries {
        out.extend_from_slice(id);
        out.extend_from_slice(&state.encode());
    }
    out
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
        flip_count(self.recent.bytes().map(|c| match c {
            b'P' => 1,
            b'F' => 2,
            _ => 3,
        }))
    }
}

/// A test's names, as stored in `test_names` once, when its first result is recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TestNames {
    workflow: String,
    suite: String,
    classname: String,
    name: String,
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
    /// The step's position in the workflow.
    pub step: u32,
    /// The step's attempt.
    pub attempt: u32,
    /// The run's revision (`git:<sha>`, `dir:<digest>`; the run's id when it has none).
    pub revision: &'a str,
    /// The worker that ran the attempt.
    pub worker: Option<&'a str>,
}

/// The most results the flaky rule looks back over (`tests.flaky_window` is held to it).
pub const MAX_FLAKY_WINDOW: u32 = 64;

/// A test's state as stored in `tests`: fixed-size, no strings (the workflow and revisions
/// are interned, runs are ULIDs, the recent results two bits each), so that recording a
/// result reads and writes about a hundred bytes. [`TestRecord`] is what readers see of it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct TestState {
    /// The workflow (interned).
    workflow: u32,
    first_run: u128,
    last_run: u128,
    last_status: TestStatus,
    last_class: TestClass,
    previous_run_status: Option<TestStatus>,
    revision_passed: bool,
    revision_failed: bool,
    flaky: bool,
    /// Flaky because it passed and failed on one revision recently (else by its flips).
    flaky_by_contradiction: bool,
    last_revision: u32,
    /// Two bits per result (1 passed, 2 failed, 3 skipped), the newest lowest.
    recent: u128,
    recent_len: u8,
    since_contradiction: Option<u32>,
    contradiction_revision: u32,
    results: u32,
    failures: u32,
    last_duration_ms: u32,
    mean_duration_ms: f32,
    last_failure: u64,
    last_failed_run: u128,
    /// Flips, and results, within the flaky rule's window as of the last result.
    window_flips: u8,
    window_len: u8,
}

/// The stored size of a [`TestState`].
const STATE_BYTES: usize = 4 + 16 + 16 + 4 + 4 + 16 + 1 + 4 + 4 + 4 + 4 + 4 + 4 + 8 + 16 + 2;

fn status_code(status: TestStatus) -> u8 {
    STATUSES.iter().position(|s| *s == status).unwrap_or(0) as u8
}

fn status_of(code: u8) -> TestStatus {
    STATUSES[usize::from(code).min(STATUSES.len() - 1)]
}

fn class_code(class: TestClass) -> u8 {
    TestClass::ALL.iter().position(|c| *c == class).unwrap_or(0) as u8
}

fn class_of(code: u8) -> TestClass {
    TestClass::ALL[usize::from(code).min(TestClass::ALL.len() - 1)]
}

/// A result's letter in `recent`: 1 passed, 2 failed or errored, 3 skipped.
fn letter(status: TestStatus) -> u8 {
    match status {
        TestStatus::Passed => 1,
        TestStatus::Failed | TestStatus::Error => 2,
        TestStatus::Skipped => 3,
    }
}

impl TestState {
    fn encode(&self) -> [u8; STATE_BYTES] {
        let mut out = [0u8; STATE_BYTES];
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        put(&self.workflow.to_le_bytes());
        put(&self.first_run.to_le_bytes());
        put(&self.last_run.to_le_bytes());
        let flags = u8::from(self.revision_passed)
            | u8::from(self.revision_failed) << 1
            | u8::from(self.flaky) << 2
            | u8::from(self.since_contradiction.is_some()) << 3
            | u8::from(self.flaky_by_contradiction) << 4;
        put(&[
            status_code(self.last_status),
            class_code(self.last_class),
            self.previous_run_status.map_or(0xff, status_code),
            flags,
        ]);
        put(&self.last_revision.to_le_bytes());
        put(&self.recent.to_le_bytes());
        put(&[self.recent_len]);
        put(&self.since_contradiction.unwrap_or(0).to_le_bytes());
        put(&self.contradiction_revision.to_le_bytes());
        put(&self.results.to_le_bytes());
        put(&self.failures.to_le_bytes());
        put(&self.last_duration_ms.to_le_bytes());
        put(&self.mean_duration_ms.to_le_bytes());
        put(&self.last_failure.to_le_bytes());
        put(&self.last_failed_run.to_le_bytes());
        put(&[self.window_flips, self.window_len]);
        out
    }

    fn decode(bytes: &[u8]) -> Option<TestState> {
        if bytes.len() != STATE_BYTES {
            return None;
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let slice = &bytes[at..at + n];
            at += n;
            slice
        };
        let u128_ = |b: &[u8]| u128::from_le_bytes(b.try_into().unwrap_or([0; 16]));
        let u32_ = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap_or([0; 4]));
        let workflow = u32_(take(4));
        let first_run = u128_(take(16));
        let last_run = u128_(take(16));
        let codes = take(4);
        let flags = codes[3];
        let last_revision = u32_(take(4));
        let recent = u128_(take(16));
        let recent_len = take(1)[0];
        let since = u32_(take(4));
        Some(TestState {
            first_run,
            last_run,
            last_status: status_of(codes[0]),
            last_class: class_of(codes[1]),
            previous_run_status: (codes[2] != 0xff).then(|| status_of(codes[2])),
            revision_passed: flags & 1 != 0,
            revision_failed: flags & 2 != 0,
            flaky: flags & 4 != 0,
            flaky_by_contradiction: flags & 16 != 0,
            last_revision,
            recent,
            recent_len,
            since_contradiction: (flags & 8 != 0).then_some(since),
            contradiction_revision: u32_(take(4)),
            results: u32_(take(4)),
            failures: u32_(take(4)),
            last_duration_ms: u32_(take(4)),
            mean_duration_ms: f32::from_le_bytes(take(4).try_into().unwrap_or([0; 4])),
            last_failure: u64::from_le_bytes(take(8).try_into().unwrap_or([0; 8])),
            last_failed_run: u128_(take(16)),
            window_flips: take(1)[0],
            window_len: take(1)[0],
            workflow,
        })
    }

    /// The recent letters, oldest first, the last `count` of them at most.
    fn letters(&self, count: usize) -> impl Iterator<Item = u8> + '_ {
        let len = usize::from(self.recent_len);
        let count = count.min(len);
        (0..count)
            .rev()
            .map(move |i| ((self.recent >> (2 * i)) & 3) as u8)
    }

    /// Pass/fail flips among the last `count` results (skips ignored).
    fn flips(&self, count: usize) -> u32 {
        flip_count(self.letters(count))
    }
}

/// Pass/fail flips in a sequence of letters (skips ignored).
fn flip_count(letters: impl Iterator<Item = u8>) -> u32 {
    let mut flips = 0;
    let mut last = None;
    for c in letters.filter(|c| *c != 3) {
        if last.is_some_and(|l| l != c) {
            flips += 1;
        }
        last = Some(c);
    }
    flips
}

/// The flaky rule's window from the settings, within what a state holds.
fn window(settings: &TestsConfig) -> usize {
    settings.flaky_window.clamp(2, MAX_FLAKY_WINDOW) as usize
}

/// The class of a new result against the test's state (`None`: a new test). `revision`
/// and `run` are the interned revision and the run's ULID.
fn classify(
    state: Option<&TestState>,
    status: TestStatus,
    (run, revision): (u128, u32),
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
    let Some(state) = state else {
        return if failing {
            TestClass::NewFailure
        } else {
            TestClass::Passed
        };
    };
    if state.last_revision == revision
        && ((failing && state.revision_passed) || (!failing && state.revision_failed))
    {
        return TestClass::Flaky;
    }
    // Flips counted with this result, over the window it will be in.
    let kept = window(settings) - 1;
    let last = state.letters(kept).filter(|c| *c != 3).last();
    let mut flips = state.flips(kept);
    if last.is_some_and(|l| (l == 2) != failing) {
        flips += 1;
    }
    if failing && (state.flaky || flips >= settings.flaky_flips) {
        return TestClass::Flaky;
    }
    let before = if state.last_run == run {
        state.previous_run_status
    } else {
        Some(state.last_status)
    };
    let failed_before = matches!(before, Some(TestStatus::Failed | TestStatus::Error));
    match (failing, failed_before) {
        (true, true) => TestClass::StillFailing,
        (true, false) => TestClass::NewFailure,
        (false, true) => TestClass::Fixed,
        (false, false) => TestClass::Passed,
    }
}

/// The state after a new result, classified as `class`; `digest` is its failure's.
fn updated(
    state: Option<TestState>,
    case: &TestCase,
    class: TestClass,
    (workflow, run, revision): (u32, u128, u32),
    digest: u64,
    settings: &TestsConfig,
) -> TestState {
    let failing = matches!(case.status, TestStatus::Failed | TestStatus::Error);
    let duration_ms = (case.time_seconds.max(0.0) * 1000.0)
        .round()
        .min(u32::MAX as f64) as u32;
    let is_new = state.is_none();
    let mut state = state.unwrap_or(TestState {
        workflow,
        first_run: run,
        last_run: run,
        last_status: case.status,
        last_class: class,
        previous_run_status: None,
        revision_passed: false,
        revision_failed: false,
        flaky: false,
        flaky_by_contradiction: false,
        last_revision: revision,
        recent: 0,
        recent_len: 0,
        since_contradiction: None,
        contradiction_revision: 0,
        results: 0,
        failures: 0,
        last_duration_ms: duration_ms,
        mean_duration_ms: duration_ms as f32,
        last_failure: 0,
        last_failed_run: 0,
        window_flips: 0,
        window_len: 0,
    });
    if !is_new && state.last_run != run {
        state.previous_run_status = Some(state.last_status);
    }
    if is_new || state.last_revision != revision {
        state.last_revision = revision;
        state.revision_passed = false;
        state.revision_failed = false;
    }
    let contradiction = (failing && state.revision_passed)
        || (case.status == TestStatus::Passed && state.revision_failed);
    match case.status {
        TestStatus::Passed => state.revision_passed = true,
        TestStatus::Failed | TestStatus::Error => state.revision_failed = true,
        TestStatus::Skipped => {}
    }
    state.since_contradiction = if contradiction {
        state.contradiction_revision = revision;
        Some(0)
    } else {
        state.since_contradiction.map(|n| n.saturating_add(1))
    };
    state.recent = (state.recent << 2) | u128::from(letter(case.status));
    state.recent_len = state
        .recent_len
        .saturating_add(1)
        .min(MAX_FLAKY_WINDOW as u8);
    let window = window(settings);
    let recent_contradiction = state
        .since_contradiction
        .is_some_and(|n| (n as usize) < window);
    let flips = state.flips(window);
    state.window_flips = flips.min(255) as u8;
    state.window_len = usize::from(state.recent_len).min(window) as u8;
    state.flaky_by_contradiction = recent_contradiction;
    state.flaky = recent_contradiction || flips >= settings.flaky_flips;
    state.last_run = run;
    state.last_status = case.status;
    state.last_class = class;
    state.results = state.results.saturating_add(1);
    state.last_duration_ms = duration_ms;
    // A moving average over about the last 20 results.
    let weight = 20f32.min(state.results as f32);
    state.mean_duration_ms += (duration_ms as f32 - state.mean_duration_ms) / weight;
    if failing {
        state.failures = state.failures.saturating_add(1);
        state.last_failure = digest;
        state.last_failed_run = run;
    }
    state
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

/// The ULID of a run id (`run_<ulid>`).
pub fn run_ulid(run_id: &str) -> Option<ulid::Ulid> {
    ulid::Ulid::from_string(&run_id.strip_prefix("run_")?.to_ascii_uppercase()).ok()
}

/// The 8 key bytes of a test id.
fn id_bytes(id: &str) -> Option<[u8; 8]> {
    let mut bytes = [0u8; 8];
    hex::decode_to_slice(id.strip_prefix("tc_")?, &mut bytes).ok()?;
    Some(bytes)
}

/// The key of a block of results: run ULID (16), the tests' bucket (the first byte of
/// their ids), step (2), attempt (1). Run first, so that a run's results are appended
/// together and a test's are found run by run, in one short range each.
fn block_key(run: u128, bucket: u8, step: u32, attempt: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..16].copy_from_slice(&run.to_be_bytes());
    key[16] = bucket;
    key[17..19].copy_from_slice(&(step.min(u16::MAX as u32) as u16).to_be_bytes());
    key[19] = attempt.min(255) as u8;
    key
}

/// One entry of a block: the test's id (8) and its result ([`encode_result`], 22).
const ENTRY_BYTES: usize = 30;

/// The entries of a block for the test `id` (entries are sorted by id).
fn entries_for<'b>(block: &'b [u8], id: &[u8; 8]) -> impl Iterator<Item = &'b [u8]> + 'b {
    let entries: Vec<&[u8]> = block.chunks_exact(ENTRY_BYTES).collect();
    let start = entries.partition_point(|e| e[..8] < id[..]);
    let id = *id;
    entries
        .into_iter()
        .skip(start)
        .take_while(move |e| e[..8] == id)
        .map(|e| &e[8..])
}

/// The key of a workflow's run in `test_runs`: the workflow, a zero byte, the run ULID.
fn run_key(workflow: &str, run: u128) -> Vec<u8> {
    let mut key = workflow.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(&run.to_be_bytes());
    key
}

/// The key of a test in the `test_index` of `list` (`flaky`).
fn index_key(list: &str, id: &[u8; 8]) -> Vec<u8> {
    let mut key = list.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(id);
    key
}

/// Reads test records: names and state, with interned revisions and failure messages
/// looked up once per reader.
struct RecordReader<'s> {
    store: &'s Store,
    names: sled::Tree,
    tests: sled::Tree,
    strings: sled::Tree,
    revisions: HashMap<u32, String>,
    messages: HashMap<u64, Option<String>>,
    /// The last bucket of states read.
    bucket: Option<([u8; 2], Bucket)>,
}

impl<'s> RecordReader<'s> {
    fn new(store: &'s Store, h: &Handles) -> Result<RecordReader<'s>, StoreError> {
        let open = |name: &str| h.db.open_tree(name).map_err(|e| store.sled_error(e));
        Ok(RecordReader {
            store,
            names: open(NAMES)?,
            tests: open(TESTS)?,
            strings: open(STRINGS)?,
            revisions: HashMap::new(),
            messages: HashMap::new(),
            bucket: None,
        })
    }

    fn revision(&mut self, n: u32) -> Result<String, StoreError> {
        if let Some(text) = self.revisions.get(&n) {
            return Ok(text.clone());
        }
        let text = Interner::text(&self.strings, n)
            .map_err(|e| self.store.sled_error(e))?
            .unwrap_or_default();
        self.revisions.insert(n, text.clone());
        Ok(text)
    }

    fn message(&mut self, digest: u64) -> Result<Option<String>, StoreError> {
        if let Some(text) = self.messages.get(&digest) {
            return Ok(text.clone());
        }
        let mut key = b"f".to_vec();
        key.extend_from_slice(format!("{digest:016x}").as_bytes());
        let text = match self
            .strings
            .get(&key)
            .map_err(|e| self.store.sled_error(e))?
        {
            Some(value) => Some(decode::<FailureGroup>(&key, &value)?.example),
            None => None,
        };
        self.messages.insert(digest, text.clone());
        Ok(text)
    }

    /// The state of the test with key bytes `key`, from its bucket (the last bucket read
    /// is kept: records read in id order read each bucket once).
    fn state(&mut self, key: &[u8]) -> Result<Option<TestState>, StoreError> {
        if key.len() != 8 {
            return Ok(None);
        }
        let bucket = state_bucket(key);
        if self.bucket.as_ref().is_none_or(|(b, _)| *b != bucket) {
            let entries = match self
                .tests
                .get(bucket)
                .map_err(|e| self.store.sled_error(e))?
            {
                Some(bytes) => decode_bucket(&bytes).ok_or_else(|| StoreError::Corrupt {
                    key: format!("tests bucket {}", hex::encode(bucket)),
                    message: "not a list of test states".to_owned(),
                })?,
                None => Vec::new(),
            };
            self.bucket = Some((bucket, entries));
        }
        let entries = self
            .bucket
            .as_ref()
            .map(|(_, e)| e.as_slice())
            .unwrap_or_default();
        Ok(entries
            .binary_search_by(|(id, _)| id[..].cmp(key))
            .ok()
            .map(|i| entries[i].1))
    }

    /// The record of the test with key bytes `key`; its names when already read.
    fn record(
        &mut self,
        key: &[u8],
        names: Option<&[u8]>,
    ) -> Result<Option<TestRecord>, StoreError> {
        let err = |e| self.store.sled_error(e);
        let names: TestNames = match names {
            Some(bytes) => decode(key, bytes)?,
            None => match self.names.get(key).map_err(err)? {
                Some(bytes) => decode(key, &bytes)?,
                None => return Ok(None),
            },
        };
        let Some(state) = self.state(key)? else {
            return Ok(None);
        };
        let id = format!("tc_{}", hex::encode(key));
        let run_name =
            |run: u128| format!("run_{}", ulid::Ulid::from(run).to_string().to_lowercase());
        let recent: String = state
            .letters(usize::from(state.recent_len))
            .map(|c| match c {
                1 => 'P',
                2 => 'F',
                _ => 'S',
            })
            .collect();
        let contradiction = match state.since_contradiction {
            Some(_) => Some(self.revision(state.contradiction_revision)?),
            None => None,
        };
        let flaky_reason = match (&contradiction, state.flaky) {
            (_, false) => None,
            (Some(revision), true) if state.flaky_by_contradiction => {
                Some(format!("passed and failed on {revision}"))
            }
            _ => Some(format!(
                "flipped {} times in its last {} results",
                state.window_flips, state.window_len
            )),
        };
        Ok(Some(TestRecord {
            id,
            workflow: names.workflow,
            suite: names.suite,
            classname: names.classname,
            name: names.name,
            first_run: run_name(state.first_run),
            last_run: run_name(state.last_run),
            last_status: state.last_status,
            last_class: state.last_class,
            last_revision: self.revision(state.last_revision)?,
            previous_run_status: state.previous_run_status,
            revision_passed: state.revision_passed,
            revision_failed: state.revision_failed,
            recent,
            flaky: state.flaky,
            flaky_reason,
            since_contradiction: state.since_contradiction,
            contradiction_revision: contradiction,
            results: u64::from(state.results),
            failures: u64::from(state.failures),
            last_duration_ms: u64::from(state.last_duration_ms),
            mean_duration_ms: f64::from(state.mean_duration_ms),
            last_failure: (state.last_failure != 0).then(|| format!("{:016x}", state.last_failure)),
            last_failure_message: match state.last_failure {
                0 => None,
                digest => self.message(digest)?,
            },
            last_failed_run: (state.last_failed_run != 0).then(|| run_name(state.last_failed_run)),
        }))
    }
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
    value[0] = status_code(status);
    value[1] = class_code(class);
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
        // Buckets of states are read and rewritten: one batch of results at a time.
        let _serial = self
            .test_writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let h = self.handles()?;
        let err = |e| self.sled_error(e);
        let tree = |name: &str| h.db.open_tree(name).map_err(err);
        let (tests, names, results) = (tree(TESTS)?, tree(NAMES)?, tree(RESULTS)?);
        let (strings, runs, index) = (tree(STRINGS)?, tree(RUNS)?, tree(INDEX)?);
        let mut interner = Interner {
            tree: &strings,
            known: HashMap::new(),
        };
        let revision = interner.number(source.revision).map_err(err)?;
        let worker = match source.worker {
            Some(worker) => interner.number(worker).map_err(err)?,
            None => 0,
        };
        let workflow = interner.number(source.workflow).map_err(err)?;
        let run = run_ulid(source.run_id).map_or(0, u128::from);
        let this_run = run_key(source.workflow, run);
        let new_run = !runs.contains_key(&this_run).map_err(err)?;
        if new_run {
            runs.insert(&this_run, &revision.to_le_bytes())
                .map_err(err)?;
        }
        let corrupt = |bucket: &[u8]| StoreError::Corrupt {
            key: format!("tests bucket {}", hex::encode(bucket)),
            message: "not a list of test states".to_owned(),
        };
        let keys: Vec<[u8; 8]> = cases
            .iter()
            .map(|c| test_key(source.workflow, &c.suite, &c.classname, &c.name))
            .collect();
        // Every bucket the cases touch, read once and written back once.
        let mut buckets: HashMap<[u8; 2], Bucket> = HashMap::new();
        for key in &keys {
            let bucket = state_bucket(key);
            if let std::collections::hash_map::Entry::Vacant(vacant) = buckets.entry(bucket) {
                vacant.insert(match tests.get(bucket).map_err(err)? {
                    Some(bytes) => decode_bucket(&bytes).ok_or_else(|| corrupt(&bucket))?,
                    None => Vec::new(),
                });
            }
        }
        let mut new_names = sled::Batch::default();
        let mut blocks: Vec<Vec<u8>> = vec![Vec::new(); 256];
        let mut flaky_changes = sled::Batch::default();
        // A report may list one case twice (the same name in two files of a suite): the
        // later result is classified against the earlier one.
        for (case, key) in cases.iter_mut().zip(keys) {
            let entries = buckets.entry(state_bucket(&key)).or_default();
            let at = entries.binary_search_by(|(id, _)| id.cmp(&key));
            let previous = at.ok().map(|i| entries[i].1);
            let id = || format!("tc_{}", hex::encode(key));
            if previous.is_none() {
                let names = TestNames {
                    workflow: source.workflow.to_owned(),
                    suite: case.suite.clone(),
                    classname: case.classname.clone(),
                    name: case.name.clone(),
                };
                new_names.insert(&key[..], encode(&names));
            }
            let was_flaky = previous.is_some_and(|s| s.flaky);
            let class = classify(
                previous.as_ref(),
                case.status,
                (run, revision),
                matches!(case.status, TestStatus::Failed | TestStatus::Error)
                    && quarantined(&id(), case),
                settings,
            );
            case.class = Some(class);
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
            let state = updated(
                previous,
                case,
                class,
                (workflow, run, revision),
                digest,
                settings,
            );
            if state.flaky != was_flaky {
                if state.flaky {
                    flaky_changes.insert(index_key("flaky", &key), &[][..]);
                } else {
                    flaky_changes.remove(index_key("flaky", &key));
                }
            }
            let block = &mut blocks[usize::from(key[0])];
            block.extend_from_slice(&key);
            block.extend_from_slice(&encode_result(
                case.status,
                class,
                u64::from(state.last_duration_ms),
                revision,
                worker,
                digest,
            ));
            match at {
                Ok(i) => entries[i].1 = state,
                Err(i) => entries.insert(i, (key, state)),
            }
        }
        let mut states = sled::Batch::default();
        for (bucket, entries) in &buckets {
            states.insert(&bucket[..], encode_bucket(entries));
        }
        let mut stored = sled::Batch::default();
        for (bucket, block) in blocks.into_iter().enumerate() {
            if block.is_empty() {
                continue;
            }
            let mut entries: Vec<&[u8]> = block.chunks_exact(ENTRY_BYTES).collect();
            entries.sort_by(|a, b| a[..8].cmp(&b[..8]));
            stored.insert(
                &block_key(run, bucket as u8, source.step, source.attempt)[..],
                entries.concat(),
            );
        }
        names.apply_batch(new_names).map_err(err)?;
        results.apply_batch(stored).map_err(err)?;
        // The index before the states: sled recovers a prefix of its writes, and a listed
        // test that is not flaky is left out when read, while a flaky one missing from the
        // index would stay missing.
        index.apply_batch(flaky_changes).map_err(err)?;
        tests.apply_batch(states).map_err(err)?;
        if new_run {
            // After this run's states are written: its tests are not among those to go.
            let trees = HistoryTrees {
                tests: &tests,
                names: &names,
                results: &results,
                runs: &runs,
                index: &index,
            };
            self.trim_runs(&trees, (source.workflow, workflow), run, settings)?;
        }
        Ok(())
    }

    /// Removes a workflow's runs past the retention (the oldest beyond `retention_runs`,
    /// and those older than `retention_days` before `newest`) with their results, and the
    /// workflow's tests whose last result went with them.
    fn trim_runs(
        &self,
        trees: &HistoryTrees<'_>,
        (workflow, workflow_number): (&str, u32),
        newest: u128,
        settings: &TestsConfig,
    ) -> Result<(), StoreError> {
        let err = |e| self.sled_error(e);
        let mut prefix = workflow.as_bytes().to_vec();
        prefix.push(0);
        let kept: Vec<sled::IVec> = trees
            .runs
            .scan_prefix(&prefix)
            .keys()
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let cutoff_ms = ulid::Ulid::from(newest)
            .timestamp_ms()
            .saturating_sub(u64::from(settings.retention_days) * 86_400_000);
        let excess = kept.len().saturating_sub(settings.retention_runs as usize);
        let mut removed_any = false;
        let mut oldest_kept = newest;
        for (i, key) in kept.iter().enumerate() {
            let Some(run) = key
                .get(prefix.len()..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
            else {
                continue;
            };
            let too_old = ulid::Ulid::from(u128::from_be_bytes(run)).timestamp_ms() < cutoff_ms;
            if i >= excess && !too_old {
                oldest_kept = u128::from_be_bytes(run);
                break;
            }
            let mut batch = sled::Batch::default();
            for result in trees.results.scan_prefix(run).keys() {
                batch.remove(result.map_err(err)?);
            }
            trees.results.apply_batch(batch).map_err(err)?;
            trees.runs.remove(key).map_err(err)?;
            removed_any = true;
        }
        if !removed_any {
            return Ok(());
        }
        // The workflow's tests last seen before the oldest run kept: gone with their runs.
        let mut buckets = sled::Batch::default();
        let mut gone = Vec::new();
        for entry in trees.tests.iter() {
            let (bucket, bytes) = entry.map_err(err)?;
            let Some(entries) = decode_bucket(&bytes) else {
                continue;
            };
            let before = entries.len();
            let (dropped, left): (Bucket, Bucket) = entries.into_iter().partition(|(_, state)| {
                state.workflow == workflow_number && state.last_run < oldest_kept
            });
            if left.len() == before {
                continue;
            }
            gone.extend(dropped.into_iter().map(|(id, _)| id));
            if left.is_empty() {
                buckets.remove(bucket);
            } else {
                buckets.insert(bucket, encode_bucket(&left));
            }
        }
        let mut names = sled::Batch::default();
        let mut index = sled::Batch::default();
        for id in gone {
            names.remove(&id[..]);
            index.remove(index_key("flaky", &id));
        }
        trees.index.apply_batch(index).map_err(err)?;
        trees.tests.apply_batch(buckets).map_err(err)?;
        trees.names.apply_batch(names).map_err(err)
    }

    /// Every test's record, in id order.
    pub fn test_records(&self) -> Result<Vec<TestRecord>, StoreError> {
        let h = self.handles()?;
        let err = |e| self.sled_error(e);
        let mut reader = RecordReader::new(self, &h)?;
        let mut records = Vec::new();
        for entry in reader.names.iter() {
            let (key, names) = entry.map_err(err)?;
            if let Some(record) = reader.record(&key, Some(&names))? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// One test's record.
    pub fn test_record(&self, id: &str) -> Result<Option<TestRecord>, StoreError> {
        let Some(key) = id_bytes(id) else {
            return Ok(None);
        };
        let h = self.handles()?;
        RecordReader::new(self, &h)?.record(&key, None)
    }

    /// The records of the tests in an index list (`flaky`), in id order.
    pub fn test_records_in(&self, list: &str) -> Result<Vec<TestRecord>, StoreError> {
        let h = self.handles()?;
        let err = |e| self.sled_error(e);
        let index = h.db.open_tree(INDEX).map_err(err)?;
        let mut reader = RecordReader::new(self, &h)?;
        let mut prefix = list.as_bytes().to_vec();
        prefix.push(0);
        let mut records = Vec::new();
        for key in index.scan_prefix(&prefix).keys() {
            let key = key.map_err(err)?;
            if let Some(record) = reader.record(&key[prefix.len()..], None)? {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// A test's stored results, newest first, at most `limit`.
    pub fn test_results(&self, id: &str, limit: usize) -> Result<Vec<TestResult>, StoreError> {
        let Some(key) = id_bytes(id) else {
            return Ok(Vec::new());
        };
        let Some(record) = self.test_record(id)? else {
            return Ok(Vec::new());
        };
        let h = self.handles()?;
        let err = |e| self.sled_error(e);
        let results = h.db.open_tree(RESULTS).map_err(err)?;
        let runs = h.db.open_tree(RUNS).map_err(err)?;
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
        let mut prefix = record.workflow.as_bytes().to_vec();
        prefix.push(0);
        let mut out = Vec::new();
        for run_key in runs.scan_prefix(&prefix).keys().rev() {
            if out.len() >= limit {
                break;
            }
            let run_key = run_key.map_err(err)?;
            let Some(run) = run_key
                .get(prefix.len()..)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
            else {
                continue;
            };
            let mut at = run.to_vec();
            at.push(key[0]);
            let mut found = Vec::new();
            for entry in results.scan_prefix(&at) {
                let (k, block) = entry.map_err(err)?;
                if k.len() != 20 {
                    continue;
                }
                let (step, attempt) = (u16::from_be_bytes([k[17], k[18]]), k[19]);
                for v in entries_for(&block, &key) {
                    found.push(((attempt, step), v.to_vec()));
                }
            }
            // Newest first: later steps, then later attempts, first.
            found.sort_by_key(|((attempt, step), _)| std::cmp::Reverse((*step, *attempt)));
            for ((attempt, _), v) in found {
                if out.len() >= limit {
                    break;
                }
                let word =
                    |at: usize| u32::from_le_bytes(v[at..at + 4].try_into().unwrap_or([0; 4]));
                let digest = u64::from_le_bytes(v[14..22].try_into().unwrap_or([0; 8]));
                out.push(TestResult {
                    run_id: format!(
                        "run_{}",
                        ulid::Ulid::from(u128::from_be_bytes(run))
                            .to_string()
                            .to_lowercase()
                    ),
                    attempt: u32::from(attempt),
                    status: status_of(v[0]),
                    class: class_of(v[1]),
                    duration_ms: u64::from(word(2)),
                    revision: name(word(6))?.unwrap_or_default(),
                    worker: name(word(10))?,
                    failure: (digest != 0).then(|| format!("{digest:016x}")),
                });
            }
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

/// The live Quarantine manifests among object records, compiled.
pub fn quarantine_set(
    objects: &std::collections::BTreeMap<super::ObjectKey, super::ObjectRecord>,
) -> crate::spec::quarantine::QuarantineSet {
    crate::spec::quarantine::QuarantineSet::compile(
        objects
            .values()
            .filter(|r| r.key.kind == crate::manifest::Kind::Quarantine && r.is_live())
            .filter_map(|r| Some((r.key.id.as_str(), r.spec.as_deref()?))),
    )
}

/// Workflow names by id, among object records (a Quarantine's `workflow` glob may name
/// either).
pub fn workflow_names(
    objects: &std::collections::BTreeMap<super::ObjectKey, super::ObjectRecord>,
) -> HashMap<&str, &str> {
    objects
        .values()
        .filter(|r| r.key.kind == crate::manifest::Kind::Workflow)
        .map(|r| (r.key.id.as_str(), r.name.as_str()))
        .collect()
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
                step: 0,
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
        assert_eq!(
            record.recent, "PFPFPPPPPP",
            "the last results, oldest first"
        );
        assert!(
            h.store.test_records_in("flaky").unwrap().is_empty(),
            "no longer listed"
        );
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
        assert_eq!((record.results, record.failures), (5, 2));
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
        assert_eq!(h.store.test_record(&id).unwrap().unwrap().results, 3);
    }

    #[test]
    fn tests_whose_last_run_was_trimmed_go_with_it() {
        let mut h = History::new();
        h.settings.retention_runs = 2;
        let run1 = run_at(7_000_000);
        h.record(
            &run1,
            1,
            "git:a",
            case("gone", TestStatus::Failed, Some("x")),
            false,
        );
        h.record(
            &run1,
            2,
            "git:a",
            case("gone", TestStatus::Passed, None),
            false,
        );
        h.record(
            &run1,
            1,
            "git:a",
            case("stays", TestStatus::Passed, None),
            false,
        );
        let gone = test_id("wf_ci", "api", "tests.api", "gone");
        assert!(h.store.test_record(&gone).unwrap().unwrap().flaky);
        for n in 1..3 {
            h.record(
                &run_at(7_000_000 + n),
                1,
                "git:b",
                case("stays", TestStatus::Passed, None),
                false,
            );
        }
        assert_eq!(
            h.store.test_record(&gone).unwrap(),
            None,
            "its only run was trimmed"
        );
        assert!(h.store.test_records_in("flaky").unwrap().is_empty());
        let left: Vec<String> = h
            .store
            .test_records()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(left, ["stays"]);
        let stays = test_id("wf_ci", "api", "tests.api", "stays");
        assert_eq!(h.store.test_results(&stays, 10).unwrap().len(), 2);
    }
}
