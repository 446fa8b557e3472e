//! The load suite: one real server (`orchestrator start`, port 0, its own project from
//! `tests/fixtures/load/project`) under 200 concurrent API clients and 100 `/ws` clients
//! while runs, a schedule firing every second and signed GitHub webhook deliveries are
//! active, for a bounded time: ~10 s, ~60 s with `ORCHESTRATOR_TEST_LONG=1`.
//!
//! The API clients loop over 16 read routes on keep-alive connections and create runs at
//! a shared bounded rate; webhook senders post signed pushes (some redelivered, answered
//! `duplicate`; some to a branch the trigger filters out). It asserts that
//! - every HTTP answer has its expected status (any other answer or transport error is
//!   counted, the first ones shown, and fails the test);
//! - every run created in the window finishes `succeeded`, as the API reports it, and every
//!   run a sender was told about is among them;
//! - the schedule kept up: each second of the window fired, or was skipped as more than a
//!   second late and counted (`catchup: none`), for at least half of them;
//! - every `/ws` client sees, for each of those runs, `workflow_started`, each step's
//!   `step_started` and `step_completed`, then `workflow_completed`, once each and in that
//!   order, with sequence numbers that only go up. A client told `lagged` may miss events
//!   (counted and reported); without a lag notice a missing event fails the test. The
//!   clients that take every kind of event also check that the sequence has no gap but the
//!   ones lag notices announce, to the event, and that each step's log lines (`run_log`)
//!   arrive whole before its run is reported complete;
//! - the server's resident memory (VmRSS) grows by less than [`RSS_GROWTH_LIMIT_KIB`]
//!   between the end of the warm-up and the end of the load;
//! - afterwards it still answers `/healthz`, counted no internal error and no 5xx, and
//!   stops cleanly on SIGTERM.
//!
//! A summary line (requests, errors, events, lags, RSS) goes to stderr: run it with
//! `cargo test --test it load:: -- --nocapture`, with a line per route (answers, p50, p99,
//! max) and the CPU the server and the test used. Every wait polls with a deadline; the
//! other sleeps pace the senders and the RSS sampler.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::support::{
    project, sign, ws_send, ws_subscribe, ws_until, Api, Reply, Server, Ws, DEADLINE,
};

/// Concurrent API clients, each on its own keep-alive connection.
const API_CLIENTS: usize = 200;
/// Concurrent `/ws` clients.
const WS_CLIENTS: usize = 100;
/// Of the `/ws` clients, how many take every kind of event (run logs included) and check
/// the sequence for gaps; the others subscribe to run events only.
const WS_EVERYTHING: usize = 20;
/// What the other `/ws` clients subscribe to.
const RUN_EVENTS: [&str; 4] = [
    "workflow_started",
    "step_started",
    "step_completed",
    "workflow_completed",
];
/// Runs created through `POST /api/workflows/{id}/execute`: one per interval (8/s).
const EXECUTE_INTERVAL: Duration = Duration::from_millis(125);
/// Webhook senders, each on its own connection.
const WEBHOOK_SENDERS: u32 = 4;
/// Each webhook sender's deliveries: one per interval (5/s in all; 4 of 5 start a run).
const DELIVERY_INTERVAL: Duration = Duration::from_millis(800);
/// The most the server's resident memory may grow from the end of the warm-up to the end
/// of the load: sled's page cache (16 MiB, which fills as runs are kept, about 13 a second)
/// and as much again for everything else. Requests served and events sent must not add up.
const RSS_GROWTH_LIMIT_KIB: u64 = 32 * 1024;
/// The webhook secret (written to `secrets/github`, which the trigger names).
pub(crate) const SECRET: &str = "load-suite webhook secret";

/// Each workflow of the fixture project and its steps in order.
const WORKFLOW_STEPS: [(&str, &[&str]); 4] = [
    ("wf_quick", &["t"]),
    ("wf_pair", &["first", "second"]),
    ("wf_build", &["show"]),
    ("wf_tick", &["t"]),
];

fn steps_of(workflow: &str) -> &'static [&'static str] {
    WORKFLOW_STEPS
        .iter()
        .find(|(id, _)| *id == workflow)
        .map(|(_, steps)| *steps)
        .unwrap_or(&[])
}

/// How long the load lasts.
fn load_duration() -> Duration {
    if std::env::var("ORCHESTRATOR_TEST_LONG").is_ok_and(|v| v == "1") {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    }
}

/// Every file under `tests/fixtures/load/project`, as (project-relative path, text).
pub(crate) fn fixture_project() -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, files: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(root, &path, files);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_string_lossy();
                files.push((
                    relative.into_owned(),
                    std::fs::read_to_string(&path).unwrap(),
                ));
            }
        }
    }
    let root = crate::support::repo_dir().join("tests/fixtures/load/project");
    let mut files = Vec::new();
    walk(&root, &root, &mut files);
    files
}

/// The server's resident memory in KiB, from `/proc/PID/status`.
pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU seconds (user and system) a process has used, from `/proc/PID/stat` (`self` for
/// this one); the kernel reports them in ticks of 1/100 s.
fn cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// Milliseconds since the epoch of an RFC 3339 instant.
fn epoch_ms(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("`{text}` is not RFC 3339: {e}"))
        .timestamp_millis()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A keep-alive client of the server that reports a missing answer (the load may cost
/// some) instead of failing the test.
pub(crate) struct Http {
    api: Api,
}

impl Http {
    pub(crate) fn new(address: &str) -> Http {
        Http {
            api: Api::new(address, None),
        }
    }

    pub(crate) fn get(&self, path: &str) -> Result<Reply, String> {
        self.api
            .request("GET", path)
            .try_send()
            .map_err(|e| e.to_string())
    }

    pub(crate) fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, String> {
        self.api
            .post_request(path, headers, body)
            .try_send()
            .map_err(|e| e.to_string())
    }
}

/// A run created by the load (through the API or a webhook), as its creator knows it.
#[derive(Debug, Clone)]
struct Created {
    id: String,
    workflow: &'static str,
    /// The log text of each step the `/ws` clients that follow logs must receive.
    logs: Vec<(&'static str, String)>,
}

/// What the senders share: counts, unexpected answers, the runs they created.
struct Load {
    http_address: String,
    until: Instant,
    requests: AtomicU64,
    unexpected: AtomicU64,
    /// The first unexpected answers, for the failure message.
    examples: Mutex<Vec<String>>,
    created: Mutex<Vec<Created>>,
    /// When the next run may be created through the API.
    next_execute: Mutex<Instant>,
    executes: AtomicU64,
    deliveries: AtomicU64,
    /// How long each answer took, by route.
    latencies: Mutex<Vec<(&'static str, Duration)>>,
}

impl Load {
    /// Counts an answer; returns it when it has the expected status (and, for JSON, parses).
    fn check(&self, what: &str, result: Result<Reply, String>, expected: u16) -> Option<Reply> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let problem = match result {
            Ok(answer) if answer.status == expected => {
                if answer.content_type.starts_with("application/json")
                    && serde_json::from_str::<Value>(&answer.text).is_err()
                {
                    format!("{what}: {expected} with a body that is not JSON")
                } else {
                    return Some(answer);
                }
            }
            Ok(answer) => {
                let text: String = answer.text.chars().take(300).collect();
                format!("{what}: {} (expected {expected}) {text}", answer.status)
            }
            Err(err) => format!("{what}: no answer: {err}"),
        };
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < 20 {
            examples.push(problem);
        }
        None
    }

    /// A problem found in an answer that had the expected status.
    fn wrong(&self, problem: String) {
        self.unexpected.fetch_add(1, Ordering::Relaxed);
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < 20 {
            examples.push(problem);
        }
    }

    /// Whether a run may be created through the API now (at most one per
    /// [`EXECUTE_INTERVAL`], without catching up on slots missed).
    fn take_execute_slot(&self) -> Option<u64> {
        let mut next = self.next_execute.lock().unwrap();
        let now = Instant::now();
        if now < *next {
            return None;
        }
        *next = now + EXECUTE_INTERVAL;
        Some(self.executes.fetch_add(1, Ordering::Relaxed))
    }

    /// Times a request.
    fn timed<T>(&self, route: &'static str, call: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = call();
        let took = started.elapsed();
        self.latencies.lock().unwrap().push((route, took));
        result
    }

    fn record(&self, run: Created) {
        self.created.lock().unwrap().push(run);
    }

    /// A recent run created by the load, picked by `n`.
    fn recent(&self, n: usize) -> Option<Created> {
        let created = self.created.lock().unwrap();
        let len = created.len();
        (len > 0).then(|| created[len - 1 - n % len.min(50)].clone())
    }
}

/// One API client: a mix of reads, and runs created at the shared bounded rate, until the
/// end of the load.
fn api_client(load: &Load, client: usize) {
    let http = Http::new(&load.http_address);
    let mut turn = client;
    while Instant::now() < load.until {
        turn += 1;
        if let Some(k) = load.take_execute_slot() {
            let (workflow, body) = if k % 2 == 0 {
                ("wf_quick", json!({}))
            } else {
                ("wf_pair", json!({"parameters": {"number": k}}))
            };
            let path = format!("/api/workflows/{workflow}/execute");
            let answer = load.check(
                &format!("POST {path}"),
                load.timed("POST /api/workflows/{id}/execute", || {
                    http.post(&path, &[], body.to_string().as_bytes())
                }),
                202,
            );
            if let Some(answer) = answer {
                let accepted = answer.json_or_text();
                match accepted["run_id"].as_str() {
                    Some(id) => {
                        let logs = if workflow == "wf_pair" {
                            vec![
                                ("first", format!("pair {k} first\n")),
                                ("second", format!("pair {k} second\n")),
                            ]
                        } else {
                            Vec::new()
                        };
                        load.record(Created {
                            id: id.to_owned(),
                            workflow,
                            logs,
                        });
                    }
                    None => load.wrong(format!("POST {path}: 202 without a run_id: {accepted}")),
                }
            }
            continue;
        }
        let recent = load.recent(turn);
        let (route, path) = match (turn % 16, &recent) {
            (0, _) => ("/api/workflows", "/api/workflows".to_owned()),
            (1, _) => ("/api/workflows/{id}", "/api/workflows/wf_pair".to_owned()),
            (2, _) => ("/api/runs", "/api/runs?limit=20".to_owned()),
            (3, Some(run)) => ("/api/runs/{id}", format!("/api/runs/{}", run.id)),
            (4, _) => ("/api/status", "/api/status".to_owned()),
            (5, _) => ("/metrics", "/metrics".to_owned()),
            (6, _) => ("/api/system/metrics", "/api/system/metrics".to_owned()),
            (7, _) => ("/api/alerts", "/api/alerts".to_owned()),
            (8, _) => ("/api/scheduler/jobs", "/api/scheduler/jobs".to_owned()),
            (9, _) => (
                "/api/triggers/{id}/deliveries",
                "/api/triggers/trg_github/deliveries?limit=10".to_owned(),
            ),
            (10, _) => (
                "/api/workflows/{id}/metrics",
                "/api/workflows/wf_quick/metrics".to_owned(),
            ),
            (11, _) => ("/api/agents", "/api/agents".to_owned()),
            (12, Some(run)) => (
                "/api/runs/{id}/logs/{step}",
                format!("/api/runs/{}/logs/{}", run.id, steps_of(run.workflow)[0]),
            ),
            (13, _) => (
                "/api/runs?workflow",
                "/api/runs?workflow=wf_tick&limit=10".to_owned(),
            ),
            (14, _) => ("/api/triggers", "/api/triggers".to_owned()),
            _ => ("/healthz", "/healthz".to_owned()),
        };
        let answer = load.check(
            &format!("GET {path}"),
            load.timed(route, || http.get(&path)),
            200,
        );
        if let (Some(answer), Some(run)) = (answer, &recent) {
            if turn % 16 == 3 {
                let shown = answer.json_or_text();
                if shown["run"]["id"] != run.id.as_str() {
                    load.wrong(format!("GET {path}: another run: {shown}"));
                }
            }
        }
    }
}

/// Posts one signed GitHub push delivery, timed and checked for the `expected` status.
fn deliver_push(
    load: &Load,
    http: &Http,
    what: &str,
    delivery: &str,
    body: &[u8],
    expected: u16,
) -> Option<Reply> {
    load.check(
        what,
        load.timed("POST /hooks/{path}", || {
            http.post(
                "/hooks/github",
                &[
                    ("X-GitHub-Event", "push"),
                    ("X-GitHub-Delivery", delivery),
                    ("X-Hub-Signature-256", &sign(SECRET, body)),
                ],
                body,
            )
        }),
        expected,
    )
}

/// A webhook sender: signed GitHub pushes at [`DELIVERY_INTERVAL`] until the end of the
/// load. Of every ten, one redelivers the previous delivery (answered `duplicate`, no new
/// run) and one pushes to a branch the trigger filters out; the others start a run.
fn webhook_sender(load: &Load, sender: u32) {
    let http = Http::new(&load.http_address);
    let path = crate::support::repo_dir().join("tests/fixtures/load/push.json");
    let push: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let started = Instant::now();
    let mut previous: Option<(String, Vec<u8>, String)> = None;
    let mut n: u32 = 0;
    while Instant::now() < load.until {
        n += 1;
        load.deliveries.fetch_add(1, Ordering::Relaxed);
        match (n % 10, &previous) {
            (0, Some((delivery, body, run))) => {
                let answer = deliver_push(
                    load,
                    &http,
                    "POST /hooks/github (redelivery)",
                    delivery,
                    body,
                    200,
                );
                if let Some(answer) = answer {
                    let body = answer.json_or_text();
                    if body["status"] != "duplicate" || body["runs"][0]["run_id"] != run.as_str() {
                        load.wrong(format!("a redelivery of {delivery}: {body}"));
                    }
                }
            }
            (5, _) => {
                let mut other = push.clone();
                other["ref"] = json!("refs/heads/elsewhere");
                let body = serde_json::to_vec(&other).unwrap();
                let delivery = format!("load-{sender}-{n}");
                let answer = deliver_push(
                    load,
                    &http,
                    "POST /hooks/github (filtered)",
                    &delivery,
                    &body,
                    200,
                );
                if let Some(answer) = answer {
                    let body = answer.json_or_text();
                    if body["status"] != "filtered" {
                        load.wrong(format!("a push to another branch: {body}"));
                    }
                }
            }
            _ => {
                let mut fresh = push.clone();
                let commit = format!("{sender:08x}{n:032x}");
                fresh["after"] = json!(commit);
                let body = serde_json::to_vec(&fresh).unwrap();
                let delivery = format!("load-{sender}-{n}");
                let answer = deliver_push(load, &http, "POST /hooks/github", &delivery, &body, 202);
                if let Some(answer) = answer {
                    let accepted = answer.json_or_text();
                    match accepted["runs"][0]["run_id"].as_str() {
                        Some(id) if accepted["status"] == "accepted" => {
                            load.record(Created {
                                id: id.to_owned(),
                                workflow: "wf_build",
                                logs: vec![("show", format!("commit {commit}\n"))],
                            });
                            previous = Some((delivery, body, id.to_owned()));
                        }
                        _ => load.wrong(format!("delivery {delivery}: {accepted}")),
                    }
                }
            }
        }
        // Paced to the rate; no catching up after a slow answer.
        let next = started + DELIVERY_INTERVAL * n;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// What the `/ws` clients must have seen once the load has drained.
struct Expect {
    /// Every run created in the window, with what its events and logs must show.
    runs: HashMap<String, Created>,
    /// The bus's sequence after the drain: a client that lagged stops once past it.
    end_sequence: u64,
    /// When the clients give up waiting.
    deadline: Instant,
}

/// One event of a run, as a client saw it.
#[derive(Debug)]
struct Seen {
    kind: String,
    step: Option<String>,
}

/// What one `/ws` client saw.
#[derive(Default)]
struct Watched {
    everything: bool,
    events: u64,
    lags: u64,
    missed: u64,
    /// Events announced missing by lag notices since the last event.
    gap: u64,
    last_sequence: Option<u64>,
    runs: HashMap<String, Vec<Seen>>,
    statuses: HashMap<String, String>,
    logs: HashMap<(String, String), String>,
    completed: HashSet<String>,
    problems: Vec<String>,
}

impl Watched {
    fn problem(&mut self, problem: String) {
        if self.problems.len() < 10 {
            self.problems.push(problem);
        }
    }

    fn take(&mut self, message: Value) {
        let kind = message["type"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "lagged" => {
                let missed = message["payload"]["missed"].as_u64().unwrap_or(0);
                self.lags += 1;
                self.missed += missed;
                self.gap += missed;
                return;
            }
            "pong" | "subscribed" | "connected" => return,
            "error" => {
                self.problem(format!("an error message: {message}"));
                return;
            }
            _ => {}
        }
        let Some(sequence) = message["sequence"].as_u64() else {
            self.problem(format!("an event without a sequence: {message}"));
            return;
        };
        if let Some(last) = self.last_sequence {
            if sequence <= last {
                self.problem(format!(
                    "sequence went back: {sequence} after {last} ({kind})"
                ));
            } else if self.everything && sequence != last + 1 + self.gap {
                self.problem(format!(
                    "sequence jumped from {last} to {sequence} ({kind}) with {} announced missing",
                    self.gap
                ));
            }
        }
        self.gap = 0;
        self.last_sequence = Some(self.last_sequence.map_or(sequence, |l| l.max(sequence)));
        self.events += 1;
        let payload = &message["payload"];
        let (run, step) = match kind.as_str() {
            "workflow_started" | "workflow_completed" => (payload["id"].as_str(), None),
            "step_started" | "step_completed" => {
                (payload["run_id"].as_str(), payload["name"].as_str())
            }
            "run_log" => (payload["run_id"].as_str(), payload["step"].as_str()),
            _ => (None, None),
        };
        let Some(run) = run else { return };
        if kind == "run_log" {
            let text = payload["text"].as_str().unwrap_or_default();
            self.logs
                .entry((run.to_owned(), step.unwrap_or_default().to_owned()))
                .or_default()
                .push_str(text);
        }
        if kind == "workflow_completed" {
            self.completed.insert(run.to_owned());
            let status = payload["status"].as_str().unwrap_or_default().to_owned();
            self.statuses.insert(run.to_owned(), status);
        }
        self.runs.entry(run.to_owned()).or_default().push(Seen {
            kind,
            step: step.map(str::to_owned),
        });
    }

    /// Whether every expected run was seen complete (or, after a lag, the stream has passed
    /// the end of the drain).
    fn done(&self, expect: &Expect) -> bool {
        expect.runs.keys().all(|id| self.completed.contains(id))
            || (self.lags > 0 && self.last_sequence.unwrap_or(0) > expect.end_sequence)
    }

    /// Checks what was seen of each expected run; returns how many runs a lag excused.
    fn verify(&mut self, expect: &Expect) -> u64 {
        let strict = self.lags == 0;
        let mut excused = 0;
        let mut problems = Vec::new();
        for (id, created) in &expect.runs {
            let seen = self.runs.get(id).map(Vec::as_slice).unwrap_or(&[]);
            if !self.completed.contains(id) {
                if strict {
                    problems.push(format!(
                        "no workflow_completed for run {id} ({}) and no lag notice; saw {seen:?}",
                        created.workflow
                    ));
                } else {
                    excused += 1;
                }
                continue;
            }
            if let Some(problem) = order_problem(seen, steps_of(created.workflow), strict) {
                problems.push(format!(
                    "run {id} ({}): {problem}; saw {seen:?}",
                    created.workflow
                ));
            }
            if self.statuses.get(id).map(String::as_str) != Some("succeeded") {
                problems.push(format!(
                    "run {id} completed {:?}, expected succeeded",
                    self.statuses.get(id)
                ));
            }
            if self.everything && strict {
                for (step, text) in &created.logs {
                    let logged = self.logs.get(&(id.clone(), (*step).to_owned()));
                    if logged.map(String::as_str) != Some(text.as_str()) {
                        problems.push(format!(
                            "run {id} step {step}: run_log text {logged:?}, expected {text:?}"
                        ));
                    }
                }
            }
        }
        for problem in problems {
            self.problem(problem);
        }
        excused
    }
}

/// What is wrong with the order of a run's events, if anything: `workflow_started` first,
/// `workflow_completed` last (so a step's log lines come in between), each step started
/// before it completed. `strict`: each exactly once (no lag excuses a missing one).
///
/// A step's `run_log` may come before its `step_started`: the log tailer reads the files
/// as they grow, while `step_started` waits for the flush that records the step running
/// (shared with the previous step's end). What the stream promises is that every line
/// comes before `workflow_completed`.
fn order_problem(seen: &[Seen], steps: &[&str], strict: bool) -> Option<String> {
    let position = |kind: &str, step: Option<&str>| -> Vec<usize> {
        seen.iter()
            .enumerate()
            .filter(|(_, s)| s.kind == kind && s.step.as_deref() == step)
            .map(|(i, _)| i)
            .collect()
    };
    let started = position("workflow_started", None);
    let completed = position("workflow_completed", None);
    if completed.len() != 1 || completed[0] != seen.len() - 1 {
        return Some("workflow_completed is not the last event, once".into());
    }
    if strict && (started.len() != 1 || started[0] != 0) {
        return Some("workflow_started is not the first event, once".into());
    }
    if !strict && started.len() == 1 && started[0] != 0 {
        return Some("workflow_started is not the first event".into());
    }
    for step in steps {
        let begun = position("step_started", Some(step));
        let ended = position("step_completed", Some(step));
        if strict && (begun.len() != 1 || ended.len() != 1) {
            return Some(format!(
                "step {step}: not one step_started and one step_completed"
            ));
        }
        if let (Some(b), Some(e)) = (begun.first(), ended.first()) {
            if b > e {
                return Some(format!("step {step}: completed before it started"));
            }
        }
    }
    let known: HashSet<&str> = steps.iter().copied().collect();
    if let Some(other) = seen
        .iter()
        .filter_map(|s| s.step.as_deref())
        .find(|s| !known.contains(s))
    {
        return Some(format!(
            "an event for a step `{other}` the workflow does not have"
        ));
    }
    None
}

/// One `/ws` client: connects, subscribes (to everything, or to run events), says it is
/// ready, then reads until what it must have seen is known and seen, or the deadline.
async fn ws_client(
    address: String,
    everything: bool,
    ready: mpsc::Sender<()>,
    mut expect: watch::Receiver<Option<Arc<Expect>>>,
) -> (Watched, Ws) {
    let mut ws = crate::support::ws_connect(&address, None).await;
    if everything {
        // No list: every kind, run logs included.
        ws_send(&mut ws, json!({"type": "subscribe", "events": []})).await;
        ws_until(&mut ws, "the subscription", |m| m["type"] == "subscribed").await;
    } else {
        ws_subscribe(&mut ws, &RUN_EVENTS).await;
    }
    let mut watched = Watched {
        everything,
        ..Watched::default()
    };
    let _ = ready.send(());
    loop {
        let current = expect.borrow_and_update().clone();
        if let Some(expect) = &current {
            if watched.done(expect) || Instant::now() > expect.deadline {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_millis(250), ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Text(text)))) => match serde_json::from_str(text.as_str()) {
                Ok(message) => watched.take(message),
                Err(e) => watched.problem(format!("not JSON ({e}): {}", text.as_str())),
            },
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
            Ok(Some(Ok(other))) => {
                watched.problem(format!("unexpected message {other:?}"));
                break;
            }
            Ok(Some(Err(err))) => {
                watched.problem(format!("the connection failed: {err}"));
                break;
            }
            Ok(None) => {
                watched.problem("the server closed the connection".into());
                break;
            }
        }
    }
    (watched, ws)
}

/// Latency p50, p99 and max over every answer, and the route with the highest p99.
fn latency_summary(latencies: &[(&'static str, Duration)]) -> String {
    fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[((sorted.len() - 1) as f64 * p).round() as usize]
    }
    let mut all: Vec<Duration> = latencies.iter().map(|(_, d)| *d).collect();
    all.sort();
    let mut by_route: HashMap<&str, Vec<Duration>> = HashMap::new();
    for (route, took) in latencies {
        by_route.entry(route).or_default().push(*took);
    }
    let slowest = by_route
        .into_iter()
        .map(|(route, mut times)| {
            times.sort();
            (percentile(&times, 0.99), route)
        })
        .max();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut text = format!(
        "latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(percentile(&all, 0.5)),
        ms(percentile(&all, 0.99)),
        ms(all.last().copied().unwrap_or_default())
    );
    if let Some((p99, route)) = slowest {
        text.push_str(&format!(", slowest p99 {route} {:.0} ms", ms(p99)));
    }
    text
}

/// One line per route: answers, p50, p99 and max.
fn latency_table(latencies: &[(&'static str, Duration)]) -> String {
    let mut by_route: HashMap<&str, Vec<Duration>> = HashMap::new();
    for (route, took) in latencies {
        by_route.entry(route).or_default().push(*took);
    }
    let mut routes: Vec<_> = by_route.into_iter().collect();
    routes.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    routes
        .into_iter()
        .map(|(route, mut times)| {
            times.sort();
            let at = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
            format!(
                "load:   {route}: {} answers, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
                times.len(),
                ms(at(0.5)),
                ms(at(0.99)),
                ms(times[times.len() - 1])
            )
        })
        .collect()
}

/// The every-second schedule's `skipped` count (fires too late to run, `catchup: none`).
fn schedule_skips(http: &Http) -> u64 {
    let jobs = http
        .get("/api/scheduler/jobs")
        .expect("GET /api/scheduler/jobs")
        .json_or_text();
    jobs["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == "sch_tick"))
        .and_then(|job| job["skipped"].as_u64())
        .unwrap_or_else(|| panic!("no sch_tick with a skipped count in {jobs}"))
}

/// The bus's sequence now: the `connected` hello of a fresh `/ws` connection says it.
async fn bus_sequence(address: &str) -> u64 {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{address}/ws"))
        .await
        .expect("connect to /ws");
    let hello = crate::support::ws_next(&mut ws).await;
    assert_eq!(hello["type"], "connected", "{hello}");
    hello["payload"]["sequence"].as_u64().expect("a sequence")
}

#[test]
fn api_websocket_schedule_and_webhook_load_loses_nothing_and_keeps_memory_flat() {
    let duration = load_duration();
    let mut files = fixture_project();
    files.push(("secrets/github".into(), SECRET.into()));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let project = project(&files);
    let dir = project.path();
    let mut server = Server::start(dir);
    let pid = server.pid();
    let info: Value =
        serde_json::from_slice(&std::fs::read(dir.join("data/server.json")).unwrap()).unwrap();
    let address = info["address"].as_str().unwrap().to_owned();

    // The fixture is in force: the workflows, the schedule and the trigger.
    let http = Http::new(&address);
    let status = http.get("/api/status").unwrap();
    assert_eq!(status.status, 200, "{}", status.text);
    for (workflow, _) in WORKFLOW_STEPS {
        let shown = http.get(&format!("/api/workflows/{workflow}")).unwrap();
        assert_eq!(shown.status, 200, "{workflow}: {}", shown.text);
        assert_eq!(shown.json_or_text()["status"], "applied", "{}", shown.text);
    }
    let jobs = http.get("/api/scheduler/jobs").unwrap().json_or_text();
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == "sch_tick"),
        "{jobs}"
    );
    let trigger = http.get("/api/triggers/trg_github").unwrap();
    assert_eq!(trigger.status, 200, "{}", trigger.text);

    // The /ws clients, all subscribed before the load starts.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (expect_tx, expect_rx) = watch::channel::<Option<Arc<Expect>>>(None);
    let (ready_tx, ready_rx) = mpsc::channel();
    let clients: Vec<_> = (0..WS_CLIENTS)
        .map(|n| {
            runtime.spawn(ws_client(
                address.clone(),
                n < WS_EVERYTHING,
                ready_tx.clone(),
                expect_rx.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + DEADLINE;
    for n in 0..WS_CLIENTS {
        let left = deadline.saturating_duration_since(Instant::now());
        ready_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("only {n} of {WS_CLIENTS} /ws clients subscribed in time"));
    }

    // The load.
    let skips_before = schedule_skips(&http);
    let start_ms = now_ms();
    let start = Instant::now();
    let cpu_server = cpu_seconds(&pid.to_string());
    let cpu_tests = cpu_seconds("self");
    let load = Arc::new(Load {
        http_address: address.clone(),
        until: start + duration,
        requests: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        examples: Mutex::new(Vec::new()),
        created: Mutex::new(Vec::new()),
        next_execute: Mutex::new(start),
        executes: AtomicU64::new(0),
        deliveries: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
    });
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while sampling.load(Ordering::SeqCst) {
                if let Some(rss) = rss_kib(pid) {
                    samples.push((start.elapsed(), rss));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            samples
        })
    };
    let senders: Vec<_> = (0..API_CLIENTS)
        .map(|client| {
            let load = Arc::clone(&load);
            std::thread::Builder::new()
                .name(format!("api client {client}"))
                .stack_size(256 * 1024)
                .spawn(move || api_client(&load, client))
                .unwrap()
        })
        .chain((0..WEBHOOK_SENDERS).map(|sender| {
            let load = Arc::clone(&load);
            std::thread::spawn(move || webhook_sender(&load, sender))
        }))
        .collect();
    for sender in senders {
        sender.join().expect("a sender panicked");
    }
    let load_time = start.elapsed();
    let cpu_server = cpu_seconds(&pid.to_string()) - cpu_server;
    let cpu_tests = cpu_seconds("self") - cpu_tests;
    let end_ms = now_ms();
    let rss_end = rss_kib(pid).expect("the server's VmRSS");

    // The drain: every run created in the window finishes, as the API reports it.
    let drain_started = Instant::now();
    let drain_deadline = drain_started + DEADLINE + duration;
    let window: Vec<Value> = loop {
        let listed = http.get("/api/runs?limit=10000").expect("GET /api/runs");
        assert_eq!(listed.status, 200, "{}", listed.text);
        let runs: Vec<Value> = listed.json_or_text()["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                let created = epoch_ms(r["created_at"].as_str().unwrap());
                created >= start_ms && created <= end_ms
            })
            .cloned()
            .collect();
        let active = runs
            .iter()
            .filter(|r| r["status"] == "queued" || r["status"] == "running")
            .count();
        if active == 0 {
            break runs;
        }
        assert!(
            Instant::now() < drain_deadline,
            "{active} runs created during the load still unfinished {:?} after it",
            drain_deadline - drain_started
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let drain_time = drain_started.elapsed();
    let rss_drained = rss_kib(pid).expect("the server's VmRSS");
    sampling.store(false, Ordering::SeqCst);
    let samples = sampler.join().unwrap();

    // What the API reports matches what the senders were told.
    let created: HashMap<String, Created> = load
        .created
        .lock()
        .unwrap()
        .iter()
        .map(|c| (c.id.clone(), c.clone()))
        .collect();
    let listed: HashMap<&str, &Value> = window
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    let mut problems = Vec::new();
    for id in created.keys() {
        if !listed.contains_key(id.as_str()) {
            problems.push(format!(
                "run {id} was accepted but is not listed in the window"
            ));
        }
    }
    let mut expected = HashMap::new();
    let mut fires = 0;
    for (id, run) in &listed {
        if run["status"] != "succeeded" {
            problems.push(format!("run {id} ended {}: {run}", run["status"]));
        }
        let known = match created.get(*id) {
            Some(known) => known.clone(),
            None if run["workflow_id"] == "wf_tick" && run["trigger"]["kind"] == "schedule" => {
                fires += 1;
                Created {
                    id: (*id).to_owned(),
                    workflow: "wf_tick",
                    logs: Vec::new(),
                }
            }
            None => {
                problems.push(format!("an unexpected run in the window: {run}"));
                continue;
            }
        };
        expected.insert((*id).to_owned(), known);
    }
    // The schedule kept firing under the load: each second fired, or was skipped as more
    // than a second late (`catchup: none`) and counted as such.
    let skips = schedule_skips(&http) - skips_before;
    let seconds = load_time.as_secs();
    if fires == 0 || (fires + skips) * 2 < seconds {
        problems.push(format!(
            "the every-second schedule fired {fires} times and skipped {skips} in {seconds} s"
        ));
    }

    // Every /ws client saw every run of the window, in order, unless it was told it lagged.
    let end_sequence = runtime.block_on(bus_sequence(&address));
    let expect = Arc::new(Expect {
        runs: expected,
        end_sequence,
        deadline: Instant::now() + DEADLINE,
    });
    expect_tx.send(Some(Arc::clone(&expect))).unwrap();
    let watched: Vec<(Watched, Ws)> = runtime.block_on(async {
        let mut all = Vec::new();
        for client in clients {
            all.push(
                tokio::time::timeout(DEADLINE * 2, client)
                    .await
                    .expect("a /ws client ended within the deadline")
                    .expect("a /ws client panicked"),
            );
        }
        all
    });
    let mut events = 0;
    let mut lags = 0;
    let mut missed = 0;
    let mut excused = 0;
    let mut lagged_clients = 0;
    let mut ws_problems = Vec::new();
    let mut connections = Vec::new();
    for (n, (mut client, ws)) in watched.into_iter().enumerate() {
        excused += client.verify(&expect);
        events += client.events;
        lags += client.lags;
        missed += client.missed;
        lagged_clients += u64::from(client.lags > 0);
        for problem in &client.problems {
            if ws_problems.len() < 20 {
                ws_problems.push(format!("/ws client {n}: {problem}"));
            }
        }
        connections.push(ws);
    }

    // Memory: from the end of the warm-up (a fifth of the load, at least 2 s) to the end.
    let warm_up = (duration / 5).max(Duration::from_secs(2));
    let rss_warm = samples
        .iter()
        .find(|(at, _)| *at >= warm_up)
        .map(|(_, rss)| *rss)
        .expect("an RSS sample after the warm-up");
    let rss_peak = samples.iter().map(|(_, rss)| *rss).max().unwrap_or(0);
    let rss_half = samples
        .iter()
        .find(|(at, _)| *at >= duration / 2)
        .map_or(0, |(_, rss)| *rss);
    let requests = load.requests.load(Ordering::Relaxed);
    let latency = latency_summary(&load.latencies.lock().unwrap());
    eprint!("{}", latency_table(&load.latencies.lock().unwrap()));
    let unexpected = load.unexpected.load(Ordering::Relaxed);
    eprintln!(
        "load: {:.1} s, {API_CLIENTS} API clients, {WS_CLIENTS} /ws clients: {requests} requests ({:.0}/s; {latency}), {unexpected} unexpected answers; {} webhook deliveries; runs in the window {} ({} API, {} webhook, {fires} schedule, {skips} late fires skipped), drained in {:.1} s; {events} /ws events, {lags} lag notices on {lagged_clients} clients ({missed} events missed, {excused} run completions excused); RSS warm {} KiB, half-way {rss_half} KiB, end {} KiB, drained {} KiB, peak {} KiB (growth {} KiB, limit {} KiB); CPU during the load: server {cpu_server:.1} s, test process {cpu_tests:.1} s",
        load_time.as_secs_f64(),
        requests as f64 / load_time.as_secs_f64(),
        load.deliveries.load(Ordering::Relaxed),
        listed.len(),
        load.executes.load(Ordering::Relaxed),
        created.values().filter(|c| c.workflow == "wf_build").count(),
        drain_time.as_secs_f64(),
        rss_warm,
        rss_end,
        rss_drained,
        rss_peak,
        rss_end.saturating_sub(rss_warm),
        RSS_GROWTH_LIMIT_KIB,
    );

    assert_eq!(
        unexpected,
        0,
        "unexpected answers under load:\n{}",
        load.examples.lock().unwrap().join("\n")
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(ws_problems.is_empty(), "{}", ws_problems.join("\n"));
    assert!(
        rss_end.saturating_sub(rss_warm) < RSS_GROWTH_LIMIT_KIB,
        "the server's resident memory grew from {rss_warm} KiB after the warm-up to {rss_end} KiB at the end of the load (limit {RSS_GROWTH_LIMIT_KIB} KiB)"
    );

    // Still answering, no internal error, no 5xx; then a clean stop.
    let health = http.get("/healthz").expect("an answer from /healthz");
    assert_eq!((health.status, health.text.trim()), (200, "ok"));
    let metrics = http.get("/metrics").expect("/metrics").text;
    for line in [
        "orchestrator_errors_total 0",
        "orchestrator_http_errors_total 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    let (exit, _) = server.stop();
    assert!(exit.success(), "{exit:?}\n--- stderr\n{}", server.stderr());
    assert!(!server.stderr().contains("panicked"), "{}", server.stderr());
    drop(connections);
}
