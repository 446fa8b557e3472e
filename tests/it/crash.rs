//! The crash suite: `kill -9` of the real server at random moments while it applies
//! manifests, executes runs and takes webhook bursts, and of `orchestrator apply` in the
//! middle of an apply; after each crash the store must open and hold everything that was
//! acknowledged, and the restarted server must leave no run `running`, start the runs left
//! waiting once each, and keep every schedule fire exactly once.
//!
//! Each mode keeps one project (and data directory) across its trials, so every trial also
//! restarts a store that has been crashed many times before. A trial:
//!
//! 1. drives a workload from client threads against the running server, noting every write
//!    the server acknowledged (2xx) with its id: runs created through the API and silences
//!    (`runs`), signed GitHub deliveries with distinct delivery ids (`webhooks`), manifest
//!    generations written to files and applied through `POST /api/sync` or `/api/apply`
//!    (`apply`); a schedule fires every second throughout, in every mode;
//! 2. sends SIGKILL to the server after a random 50–800 ms of load (one trial in four:
//!    within 50 ms of its start, while it catches up missed fires and starts the runs the
//!    previous crash left waiting);
//! 3. (`apply`) reads the crashed store with `orchestrator get`: every acknowledged
//!    generation is there; then writes a new generation and kills `orchestrator apply` at a
//!    random moment: the store holds the old objects or all the new ones (one batch), and an
//!    apply run again brings every object to the new generation;
//! 4. one trial in four: leaves the server down for 1.2–2.5 s, starts it and kills it again
//!    within 30 ms, while its first pass catches up the fires it missed;
//! 5. restarts the server on the same data directory and checks: every run created before
//!    the crash ends (none stays `running` or `queued`); a run the crash interrupted had
//!    started (runs that waited for a slot are started, not dropped); no run's step ran
//!    twice and every succeeded run's step ran once; every acknowledged run, silence and
//!    delivery is there, each acknowledged delivery with its run; every delivery of the
//!    trial sent again is answered as a duplicate naming its run, or accepted if it had
//!    never been recorded, and every delivery id has exactly one run; the schedule's fires
//!    are every second from its first fire on, each with exactly one run (`catchup: all`
//!    runs every fire missed while the server was down, see the scheduler).
//!
//! 20 trials in all by default, 200 with `ORCHESTRATOR_TEST_LONG=1`. The random choices
//! (workload pacing, kill moments) come from a seed printed at the start; set
//! `ORCHESTRATOR_CRASH_SEED` to replay one (the machine's timing still varies).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{
    cli, command, eventually_every, project, reliability_trials, seed_from, sign, Api, Rng, Server,
    DEADLINE,
};

/// The webhook trigger's secret (`env:CRASH_WEBHOOK_SECRET`).
const SECRET: &str = "crash-suite-secret";
/// The schedule that fires every second.
const SCHEDULE: &str = "sch_crash-every-second";
/// The webhook trigger.
const TRIGGER: &str = "trg_crash-push";
/// Workflow manifests the `apply` mode rewrites, one generation after another.
const GENERATED: usize = 12;
/// How often a check polls every run of the store.
const POLL: Duration = Duration::from_millis(50);
/// Where every step of the suite's workflows writes its run id when it starts.
const STARTED_LOG: &str = "crash-started.log";

/// What the workload does while the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Runs created through the API, and silences.
    Runs,
    /// Bursts of signed webhook deliveries.
    Webhooks,
    /// Manifest generations applied through the server, and `orchestrator apply` alone.
    Apply,
}

/// Everything the server acknowledged, and what was sent without an answer.
#[derive(Default)]
struct Ledger {
    /// Runs created through the API (202).
    runs: BTreeSet<String>,
    /// Silences created (201).
    silences: BTreeSet<String>,
    /// Accepted deliveries (202) and the run each started.
    deliveries: BTreeMap<String, String>,
    /// Delivery ids sent in the current trial, answered or not.
    sent: Vec<String>,
    /// Every delivery id ever sent.
    all_sent: BTreeSet<String>,
    /// The last manifest generation written to the files.
    written: u64,
    /// The last generation a sync or apply acknowledged.
    applied: u64,
    /// Answers that are neither an acknowledgement nor a lost connection: each is a
    /// failure (status, what was asked, body).
    errors: Vec<String>,
}

/// Figures for the summary line.
#[derive(Default)]
struct Tally {
    interrupted: usize,
    resumed_or_finished: usize,
    cli_applies_killed: usize,
    cli_applies_finished: usize,
    duplicates_answered: usize,
    redeliveries_accepted: usize,
    catch_up_kills: usize,
}

/// A client that tells a lost connection (the server was killed) from an answer.
#[derive(Clone)]
struct Client {
    api: Api,
}

impl Client {
    /// Talks to the server of `dir`, at the address its `data/server.json` gives.
    fn new(dir: &Path) -> Client {
        Client {
            api: Api::of_project(dir),
        }
    }

    /// Status and JSON body, or `None` when no answer came (connection refused or reset).
    fn post(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Option<(u16, Value)> {
        let reply = self.api.post_request(path, headers, body).try_send().ok()?;
        Some(reply.into_parts())
    }

    /// A GET that must be answered 200 with JSON.
    #[track_caller]
    fn get(&self, path: &str) -> Value {
        self.api.get(path).expect(200)
    }

    /// Every run, newest first.
    fn runs(&self) -> Vec<Value> {
        let page = self.get("/api/runs?limit=10000");
        let runs = page["runs"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            page["total"].as_u64(),
            Some(runs.len() as u64),
            "more runs than one page"
        );
        runs
    }

    /// A signed GitHub push delivery.
    fn deliver(&self, delivery: &str) -> Option<(u16, Value)> {
        let body = include_str!("../fixtures/crash/push.json");
        let signature = sign(SECRET, body.as_bytes());
        self.post(
            "/hooks/crash",
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", &signature),
            ],
            body,
        )
    }
}

/// A project with the suite's workflows, schedule and trigger.
fn crash_project() -> tempfile::TempDir {
    project(&[
        (
            "workflows/crash-work.yaml",
            include_str!("../fixtures/crash/work.yaml"),
        ),
        (
            "workflows/crash-tick.yaml",
            include_str!("../fixtures/crash/tick.yaml"),
        ),
        (
            "workflows/crash-hook.yaml",
            include_str!("../fixtures/crash/hook.yaml"),
        ),
        (
            "schedules/crash-every-second.yaml",
            include_str!("../fixtures/crash/every-second.yaml"),
        ),
        (
            "triggers/crash-push.yaml",
            include_str!("../fixtures/crash/push.yaml"),
        ),
    ])
}

fn start(dir: &Path) -> Server {
    Server::start_with(dir, &[("CRASH_WEBHOOK_SECRET", SECRET)])
}

/// SIGKILL, then reaps the process.
fn kill9(server: Server) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL the server");
    drop(server);
}

/// Writes generation `generation` of the generated workflow manifests, each file replaced
/// by a rename as editors save (a watcher never reads a half-written file).
fn write_generation(dir: &Path, generation: u64) {
    let staged = dir.join("crash-staged.yaml");
    for index in 0..GENERATED {
        fs::write(
            &staged,
            format!(
                "name: Crash Gen {index:02}\ndescription: generation {generation}\nsteps:\n  - name: a\n    command: [\"true\"]\n"
            ),
        )
        .unwrap();
        fs::rename(
            &staged,
            dir.join(format!("workflows/crash-gen-{index:02}.yaml")),
        )
        .unwrap();
    }
}

/// The generation of each generated workflow in the store, read by `orchestrator get`
/// without a server (the store must open after the crash).
fn stored_generations(dir: &Path, context: &str) -> BTreeMap<String, u64> {
    let got = cli(dir, &["get", "workflow", "-o", "json"]);
    assert_eq!(
        got.code, 0,
        "{context}: the crashed store does not open for `get`:\n{}\n{}",
        got.stdout, got.stderr
    );
    let objects: Value = serde_json::from_str(&got.stdout).unwrap();
    objects
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| {
            o["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("wf_crash-gen-"))
        })
        .map(|o| {
            let description = o["spec"]["description"].as_str().unwrap_or_default();
            let generation = description
                .strip_prefix("generation ")
                .and_then(|g| g.parse().ok())
                .unwrap_or_else(|| panic!("{context}: {o}"));
            (o["id"].as_str().unwrap().to_owned(), generation)
        })
        .collect()
}

/// Starts the workload's client threads; they stop when `stop` is set or the server is
/// gone.
fn workload(
    mode: Mode,
    client: &Client,
    dir: &Path,
    ledger: &Arc<Mutex<Ledger>>,
    stop: &Arc<AtomicBool>,
    trial: usize,
    rng: &mut Rng,
) -> Vec<std::thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let mut spawn = |work: Box<dyn FnOnce() + Send>| threads.push(std::thread::spawn(work));
    match mode {
        Mode::Runs => {
            let (runs_client, runs_ledger, runs_stop, mut pace) = (
                client.clone(),
                Arc::clone(ledger),
                Arc::clone(stop),
                Rng(rng.next()),
            );
            spawn(Box::new(move || {
                let (client, ledger, stop) = (runs_client, runs_ledger, runs_stop);
                for _ in 0..40 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Some((status, body)) =
                        client.post("/api/workflows/wf_crash-work/execute", &[], "{}")
                    else {
                        break;
                    };
                    let mut ledger = ledger.lock().unwrap();
                    match (status, body["run_id"].as_str()) {
                        (202, Some(id)) => {
                            ledger.runs.insert(id.to_owned());
                        }
                        _ => ledger.errors.push(format!("execute: {status} {body}")),
                    }
                    drop(ledger);
                    std::thread::sleep(Duration::from_millis(pace.range(0, 30)));
                }
            }));
            let (client, ledger, stop, mut pace) = (
                client.clone(),
                Arc::clone(ledger),
                Arc::clone(stop),
                Rng(rng.next()),
            );
            spawn(Box::new(move || {
                for n in 0..10 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let request = json!({
                        "labels": {"team": "crash"},
                        "duration": "24h",
                        "comment": format!("crash trial {trial}, silence {n}"),
                    });
                    let Some((status, body)) =
                        client.post("/api/silences", &[], &request.to_string())
                    else {
                        break;
                    };
                    let mut ledger = ledger.lock().unwrap();
                    match (status, body["id"].as_str()) {
                        (201, Some(id)) => {
                            ledger.silences.insert(id.to_owned());
                        }
                        _ => ledger.errors.push(format!("silence: {status} {body}")),
                    }
                    drop(ledger);
                    std::thread::sleep(Duration::from_millis(pace.range(10, 60)));
                }
            }));
        }
        Mode::Webhooks => {
            for sender in 0..4 {
                let (client, ledger, stop) = (client.clone(), Arc::clone(ledger), Arc::clone(stop));
                spawn(Box::new(move || {
                    for n in 0..15 {
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let delivery = format!("crash-{trial}-{sender}-{n}");
                        {
                            let mut ledger = ledger.lock().unwrap();
                            ledger.sent.push(delivery.clone());
                            ledger.all_sent.insert(delivery.clone());
                        }
                        let Some((status, body)) = client.deliver(&delivery) else {
                            break;
                        };
                        let mut ledger = ledger.lock().unwrap();
                        match (status, body["runs"][0]["run_id"].as_str()) {
                            (202, Some(run)) => {
                                ledger.deliveries.insert(delivery, run.to_owned());
                            }
                            _ => ledger
                                .errors
                                .push(format!("delivery {delivery}: {status} {body}")),
                        }
                    }
                }));
            }
        }
        Mode::Apply => {
            let (client, ledger, stop, dir) = (
                client.clone(),
                Arc::clone(ledger),
                Arc::clone(stop),
                dir.to_owned(),
            );
            spawn(Box::new(move || {
                let mut route = "/api/sync";
                while !stop.load(Ordering::SeqCst) {
                    let generation = {
                        let mut ledger = ledger.lock().unwrap();
                        ledger.written += 1;
                        ledger.written
                    };
                    write_generation(&dir, generation);
                    let Some((status, body)) = client.post(route, &[], "") else {
                        break;
                    };
                    let mut ledger = ledger.lock().unwrap();
                    if status == 200 {
                        ledger.applied = generation;
                    } else {
                        ledger.errors.push(format!("{route}: {status} {body}"));
                    }
                    route = if route == "/api/sync" {
                        "/api/apply"
                    } else {
                        "/api/sync"
                    };
                }
            }));
        }
    }
    threads
}

/// With the server down after a crash: what the crashed store holds of the acknowledged
/// generations, then `orchestrator apply` killed at a random moment.
fn crash_cli_apply(
    dir: &Path,
    ledger: &Mutex<Ledger>,
    rng: &mut Rng,
    tally: &mut Tally,
    context: &str,
) {
    let (applied, written) = {
        let ledger = ledger.lock().unwrap();
        (ledger.applied, ledger.written)
    };
    let before = stored_generations(dir, context);
    assert_eq!(before.len(), GENERATED, "{context}: {before:?}");
    for (id, generation) in &before {
        assert!(
            *generation >= applied && *generation <= written,
            "{context}: {id} is at generation {generation} in the store after the crash; generation {applied} was acknowledged, {written} written"
        );
    }

    // A new generation, and `orchestrator apply` killed somewhere in it.
    let generation = written + 1;
    ledger.lock().unwrap().written = generation;
    write_generation(dir, generation);
    let mut apply = command(dir)
        .arg("apply")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run orchestrator apply");
    std::thread::sleep(Duration::from_millis(rng.range(0, 800)));
    let finished = apply.try_wait().expect("wait").is_some();
    if !finished {
        let _ = apply.kill();
    }
    let status = apply.wait().expect("wait");
    let acknowledged = finished && status.success();
    if finished {
        assert!(
            status.success(),
            "{context}: orchestrator apply: {status:?}"
        );
        tally.cli_applies_finished += 1;
    } else {
        tally.cli_applies_killed += 1;
    }
    let after = stored_generations(dir, context);
    let all_new = after.len() == GENERATED && after.values().all(|g| *g == generation);
    if acknowledged {
        assert!(
            all_new,
            "{context}: apply succeeded, the store holds {after:?}"
        );
    } else {
        // One batch: the objects as they were, or every one of the new generation.
        assert!(
            all_new || after == before,
            "{context}: apply killed midway left a mix: before {before:?}, after {after:?}"
        );
        // Run again, it brings every object to the new generation (the memo of an apply
        // that never finished is not taken for the truth).
        cli(dir, &["apply"]).expect_code(0);
        let again = stored_generations(dir, context);
        assert!(
            again.len() == GENERATED && again.values().all(|g| *g == generation),
            "{context}: apply after a killed apply left {again:?}"
        );
    }
    ledger.lock().unwrap().applied = generation;
}

/// The due instant of a schedule run, in seconds.
fn due_second(run: &Value) -> Option<i64> {
    (run["trigger"]["kind"] == "schedule" && run["trigger"]["details"]["schedule"] == SCHEDULE)
        .then(|| run["trigger"]["details"]["due"].as_str())
        .flatten()
        .map(|due| {
            chrono::DateTime::parse_from_rfc3339(due)
                .unwrap()
                .timestamp()
        })
}

fn created_at(run: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(run["created_at"].as_str().expect("created_at"))
        .expect("created_at is RFC 3339")
        .with_timezone(&chrono::Utc)
}

fn is_final(run: &Value) -> bool {
    !matches!(run["status"].as_str(), Some("queued" | "running"))
}

/// The checks on a server restarted after a crash (`restarted`: just before it was
/// started).
fn check_restart(
    dir: &Path,
    client: &Client,
    ledger: &Mutex<Ledger>,
    restarted: chrono::DateTime<chrono::Utc>,
    tally: &mut Tally,
    context: &str,
) {
    // Recovery: every run created before the restart ends, none stays running or queued;
    // and the scheduler has fired since the restart (its catch-up is done).
    let after = restarted.timestamp() + 1;
    let runs = eventually_every(
        &format!(
            "{context}: the runs created before the crash to end, and a fire after the restart"
        ),
        DEADLINE,
        POLL,
        || {
            let runs = client.runs();
            let settled = runs
                .iter()
                .filter(|r| created_at(r) < restarted)
                .all(is_final);
            let fired = runs.iter().filter_map(due_second).any(|due| due > after);
            (settled && fired).then_some(runs)
        },
    );
    let by_id: BTreeMap<&str, &Value> = runs
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    for run in runs.iter().filter(|r| r["status"] == "interrupted") {
        // A crash interrupts what was executing; what waited for a slot starts later.
        assert!(
            run["started_at"].is_string(),
            "{context}: a run that had not started was ended interrupted instead of started: {run}"
        );
    }
    let pre_crash: Vec<&Value> = runs.iter().filter(|r| created_at(r) < restarted).collect();
    tally.interrupted = runs.iter().filter(|r| r["status"] == "interrupted").count();
    tally.resumed_or_finished = pre_crash.len();

    // Each step ran at most once; each succeeded run's step once.
    let log = fs::read_to_string(dir.join(STARTED_LOG)).unwrap_or_default();
    let mut started: BTreeMap<&str, usize> = BTreeMap::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        *started.entry(line.trim()).or_default() += 1;
    }
    for (id, count) in &started {
        assert_eq!(
            *count,
            1,
            "{context}: the step of run {id} started {count} times: {:?}",
            by_id.get(id)
        );
    }
    for run in runs.iter().filter(|r| r["status"] == "succeeded") {
        let id = run["id"].as_str().unwrap();
        if run["workflow_id"]
            .as_str()
            .is_some_and(|w| w.starts_with("wf_crash-"))
        {
            assert!(
                started.contains_key(id),
                "{context}: run {id} succeeded but its step never started: {run}"
            );
        }
    }

    // Every acknowledged write is there.
    let ledger_now = ledger.lock().unwrap();
    assert!(
        ledger_now.errors.is_empty(),
        "{context}: answers that were neither acknowledgements nor lost connections: {:?}",
        ledger_now.errors
    );
    for id in &ledger_now.runs {
        assert!(
            by_id.contains_key(id.as_str()),
            "{context}: acknowledged run {id} is gone"
        );
    }
    let silences = client.get("/api/silences");
    let silences: BTreeSet<&str> = silences["silences"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["id"].as_str())
        .collect();
    for id in &ledger_now.silences {
        assert!(
            silences.contains(id.as_str()),
            "{context}: acknowledged silence {id} is gone"
        );
    }
    let records = client.get(&format!("/api/triggers/{TRIGGER}/deliveries?limit=100000"));
    let accepted: BTreeMap<&str, Option<&str>> = records["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["result"] == "accepted")
        .map(|d| (d["delivery"].as_str().unwrap(), d["run_id"].as_str()))
        .collect();
    for (delivery, run) in &ledger_now.deliveries {
        assert_eq!(
            accepted.get(delivery.as_str()).copied().flatten(),
            Some(run.as_str()),
            "{context}: acknowledged delivery {delivery} (run {run}) is not recorded as accepted with its run"
        );
        assert!(
            by_id.contains_key(run.as_str()),
            "{context}: the run {run} of acknowledged delivery {delivery} is gone"
        );
    }
    let sent = ledger_now.sent.clone();
    let all_sent = ledger_now.all_sent.clone();
    drop(ledger_now);

    // Every delivery of the trial, sent again: a duplicate naming its run, or accepted if
    // the crash came before it was recorded.
    for delivery in &sent {
        let (status, body) = client
            .deliver(delivery)
            .unwrap_or_else(|| panic!("{context}: no answer to the redelivery of {delivery}"));
        match (status, body["status"].as_str()) {
            (200, Some("duplicate")) => {
                tally.duplicates_answered += 1;
                assert!(
                    body["runs"][0]["run_id"].is_string(),
                    "{context}: delivery {delivery} is answered a duplicate without a run: no run will ever come of it: {body}"
                );
            }
            (202, Some("accepted")) => {
                tally.redeliveries_accepted += 1;
                assert!(
                    !ledger.lock().unwrap().deliveries.contains_key(delivery),
                    "{context}: acknowledged delivery {delivery} accepted again: {body}"
                );
            }
            _ => panic!("{context}: redelivery of {delivery}: {status} {body}"),
        }
    }
    ledger.lock().unwrap().sent.clear();
    // Exactly one run per delivery id.
    let runs = if sent.is_empty() { runs } else { client.runs() };
    let mut per_delivery: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for run in runs.iter().filter(|r| r["trigger"]["kind"] == "webhook") {
        if let Some(delivery) = run["trigger"]["details"]["delivery"].as_str() {
            per_delivery
                .entry(delivery)
                .or_default()
                .push(run["id"].as_str().unwrap());
        }
    }
    for delivery in &all_sent {
        let runs = per_delivery
            .get(delivery.as_str())
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            runs.len(),
            1,
            "{context}: delivery {delivery} has {} runs: {runs:?}",
            runs.len()
        );
    }

    // The schedule: every second from its first fire to its last has exactly one run.
    let mut dues: Vec<i64> = runs.iter().filter_map(due_second).collect();
    dues.sort_unstable();
    for pair in dues.windows(2) {
        assert!(
            pair[1] - pair[0] == 1,
            "{context}: the schedule's fires {} and {} are {} s apart (0: a fire ran twice; more than 1: fires lost, though `catchup: all` runs each): {dues:?}",
            pair[0],
            pair[1],
            pair[1] - pair[0]
        );
    }
}

/// Runs `count` trials of `mode` on one project.
fn crash_trials(mode: Mode, count: usize) {
    let seed = seed_from("ORCHESTRATOR_CRASH_SEED");
    let salt = match mode {
        Mode::Runs => 1,
        Mode::Webhooks => 2,
        Mode::Apply => 3,
    };
    let mut rng = Rng(seed ^ salt);
    eprintln!(
        "crash {mode:?}: {count} trials, seed {seed} (ORCHESTRATOR_CRASH_SEED={seed} replays its choices)"
    );
    let began = Instant::now();
    let project = crash_project();
    let dir = project.path();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tally = Tally::default();
    if mode == Mode::Apply {
        let mut ledger = ledger.lock().unwrap();
        ledger.written = 1;
        write_generation(dir, 1);
    }
    let mut server = start(dir);
    if mode == Mode::Apply {
        ledger.lock().unwrap().applied = 1;
    }
    let mut delays = Vec::new();
    for trial in 0..count {
        let context = format!("seed {seed}, {mode:?} trial {trial}");
        let client = Client::new(dir);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = workload(mode, &client, dir, &ledger, &stop, trial, &mut rng);
        // Mostly 50–800 ms into the load; one kill in four within the first 50 ms after the
        // restart, while the scheduler catches up and the runs left waiting start.
        let delay = if rng.range(0, 4) == 0 {
            rng.range(0, 50)
        } else {
            rng.range(50, 800)
        };
        delays.push(delay);
        std::thread::sleep(Duration::from_millis(delay));
        kill9(server);
        stop.store(true, Ordering::SeqCst);
        for thread in threads {
            thread.join().expect("a workload thread panicked");
        }
        if mode == Mode::Apply {
            crash_cli_apply(dir, &ledger, &mut rng, &mut tally, &context);
        }
        if rng.range(0, 4) == 0 {
            // Down long enough to miss fires, then killed again while its first pass
            // catches them up.
            std::thread::sleep(Duration::from_millis(rng.range(1200, 2500)));
            let catching_up = start(dir);
            std::thread::sleep(Duration::from_millis(rng.range(0, 30)));
            kill9(catching_up);
            tally.catch_up_kills += 1;
        }
        let restarted = chrono::Utc::now();
        server = start(dir);
        let client = Client::new(dir);
        if mode == Mode::Apply {
            // The first reconcile of the start applied the files: the last generation.
            let written = ledger.lock().unwrap().written;
            let shown = client.get("/api/workflows/wf_crash-gen-00");
            assert_eq!(
                shown["spec"]["description"],
                format!("generation {written}"),
                "{context}: {shown}"
            );
        }
        check_restart(dir, &client, &ledger, restarted, &mut tally, &context);
    }
    let (status, _) = server.stop();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    let ledger = ledger.lock().unwrap();
    eprintln!(
        "crash {mode:?}: {count} trials in {:.1} s (seed {seed}); kills after {}–{} ms of load; acknowledged: {} runs, {} silences, {} deliveries, generation {}; runs interrupted by the crashes: {}; runs created before the last crash: {}; orchestrator apply killed midway {} times, finished {} times; redeliveries answered duplicate {}, accepted {}; killed while catching up missed fires {} times",
        began.elapsed().as_secs_f64(),
        delays.iter().min().unwrap_or(&0),
        delays.iter().max().unwrap_or(&0),
        ledger.runs.len(),
        ledger.silences.len(),
        ledger.deliveries.len(),
        ledger.applied,
        tally.interrupted,
        tally.resumed_or_finished,
        tally.cli_applies_killed,
        tally.cli_applies_finished,
        tally.duplicates_answered,
        tally.redeliveries_accepted,
        tally.catch_up_kills,
    );
}

/// This mode's share of the trials (at least a third of the total each, so the three add
/// up to no fewer than the total).
fn share() -> usize {
    reliability_trials().div_ceil(3)
}

#[test]
fn kill_9_during_runs_loses_no_acknowledged_run_and_leaves_none_running() {
    crash_trials(Mode::Runs, share());
}

#[test]
fn kill_9_during_webhook_bursts_runs_each_acknowledged_delivery_exactly_once() {
    crash_trials(Mode::Webhooks, share());
}

#[test]
fn kill_9_during_apply_keeps_every_acknowledged_generation() {
    crash_trials(Mode::Apply, share());
}

/// What a server killed between recording a catch-up pass's fires and creating their runs
/// leaves: two fires recorded, pending, neither run created. Found by the catch-up kills
/// above: the restart used to start the latest fire's run only.
#[test]
fn every_fire_of_a_catch_up_pass_killed_before_its_runs_runs_once() {
    let dir = project(&[
        (
            "workflows/crash-tick.yaml",
            include_str!("../fixtures/crash/tick.yaml"),
        ),
        (
            "schedules/yearly.yaml",
            "name: Yearly\ncron: \"0 0 1 1 *\"\nworkflow: wf_crash-tick\ncatchup: all\n",
        ),
    ]);
    cli(dir.path(), &["apply"]).expect_code(0);
    {
        let store = orchestrator::store::Store::open(&dir.path().join("data")).unwrap();
        let state = orchestrator::scheduler::ScheduleState {
            timing: "0 0 1 1 * UTC".into(),
            next_due: Some("2027-01-01T00:00:00Z".parse().unwrap()),
            last_fired: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            pending: true,
            pending_fires: vec![
                "2025-01-01T00:00:00Z".parse().unwrap(),
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ],
            ..Default::default()
        };
        store
            .put_state(
                orchestrator::scheduler::STATE_TREE,
                "sch_yearly",
                &state,
                true,
            )
            .unwrap();
    }
    for _restart in 0..2 {
        let mut server = start(dir.path());
        let client = Client::new(dir.path());
        let dues = eventually_every("both fires' runs to finish", DEADLINE, POLL, || {
            let runs = client.runs();
            let mut dues: Vec<String> = runs
                .iter()
                .filter(|r| r["trigger"]["details"]["schedule"] == "sch_yearly" && is_final(r))
                .map(|r| r["trigger"]["details"]["due"].as_str().unwrap().to_owned())
                .collect();
            dues.sort();
            (dues.len() >= 2).then_some(dues)
        });
        assert_eq!(
            dues,
            ["2025-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"]
        );
        // Stopping waits for the scheduler's pass: a repeated fire would be there.
        server.stop();
        let runs = cli(dir.path(), &["run", "list", "-o", "json"]).expect_code(0);
        let runs: Value = serde_json::from_str(&runs.stdout).unwrap();
        assert_eq!(runs.as_array().unwrap().len(), 2, "{runs}");
    }
}
