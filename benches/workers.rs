//! Workers benchmark: a controller (`orchestrator start` with `distributed.nats`), a real
//! `nats-server -js` (Debian's, a loopback port, a temp store) and 4 `orchestrator worker`
//! processes of 8 slots on this machine. In one run:
//!
//! - a warm-up of 64 remote and 64 local steps, then each worker's idle RSS;
//! - 1,000 no-op steps (`true`, fan-out: `depends_on: []`, `max_parallel: 32`) with
//!   `runs_on` (on the workers), and the same workflow without `runs_on` (local): steps
//!   per second from the run's start to its end, as the run record says; and for each
//!   step, the engine's start instant (the step record's `started_at`) to its attempt's
//!   start (the attempt record's, taken by the executor just before the spawn: on the
//!   controller locally, on the worker after publish, pull, claim, ack and lease remotely).
//!   The added latency per attempt is remote minus local at the same percentile;
//! - 1,000 steps that print the clock as their process starts (`date +%s.%N`), remote and
//!   local: the engine's start instant to the clock the process read (the spawn included,
//!   which remotely happens in a worker, not in the controller);
//! - every step of those runs must have exactly one attempt, succeeded, and the workers'
//!   own step logs (one file per attempt key, in each worker's work directory) must count
//!   one execution per step: nothing lost, nothing run twice;
//! - then, with a 2 s lease (controller restarted, new workers), `kill -9` of the worker
//!   running the most attempts of a 20-step workflow of `sleep 5` steps (`retries: 1`,
//!   `retry_delay: 0`): the time from the kill to each of its attempts being declared lost
//!   and to its retry starting on another worker (attempt records, in milliseconds).
//!
//! Prints a table (and writes `BENCH_JSON`, see `support`). The runs are the samples of one
//! bench run whatever `BENCH_REPEATS` says (the p99 needs the 1,000 steps).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{percentile, release_binary, rss_kib, run_ok, Measurement, Report, Server, Target};

const STEPS: usize = 1_000;
const WORKERS: usize = 4;
const SLOTS: u32 = 8;
const MAX_PARALLEL: usize = 32;
const LABELS: &str = "pool=bench";
/// The lease of the kill part (the rest runs with the default, 15 s).
const KILL_LEASE_SECONDS: f64 = 2.0;
const KILL_STEPS: usize = 20;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let binary = release_binary();
    let nats = Nats::start(work.path());
    let project = work.path().join("project");
    run_ok(Command::new(&binary).arg("init").arg(&project));
    let workflows = project.join("workflows");
    write_fan_out(&workflows, "warm_remote", 64, &["true"], true);
    write_fan_out(&workflows, "warm_local", 64, &["true"], false);
    write_fan_out(&workflows, "noop_remote", STEPS, &["true"], true);
    write_fan_out(&workflows, "noop_local", STEPS, &["true"], false);
    write_fan_out(&workflows, "clock_remote", STEPS, &["date", "+%s.%N"], true);
    write_fan_out(&workflows, "clock_local", STEPS, &["date", "+%s.%N"], false);
    let marks = work.path().join("marks");
    fs::create_dir_all(&marks).expect("marks dir");
    write_kill_workflow(&workflows, &marks);
    configure(&project, &nats.url(), None);

    // Part one: the default lease.
    let mut server = Server::start(&binary, &project, &[]);
    let address = server.address.clone();
    let mut workers: Vec<WorkerProcess> = (1..=WORKERS)
        .map(|i| {
            WorkerProcess::start(
                &binary,
                &project,
                work.path(),
                &format!("w{i}"),
                &nats.url(),
                None,
            )
        })
        .collect();
    settle(Duration::from_secs(2));
    let rss_connected: Vec<f64> = workers
        .iter()
        .map(|w| rss_kib(w.pid()) as f64 / 1024.0)
        .collect();

    let warm_remote = execute_and_wait(&address, "wf_warm_remote");
    let warm_local = execute_and_wait(&address, "wf_warm_local");
    for run in [&warm_remote, &warm_local] {
        assert_eq!(
            run.record["status"], "succeeded",
            "warm-up run: {:#}",
            run.record
        );
    }

    let noop_remote = execute_and_wait(&address, "wf_noop_remote");
    let noop_local = execute_and_wait(&address, "wf_noop_local");
    let clock_remote = execute_and_wait(&address, "wf_clock_remote");
    let clock_local = execute_and_wait(&address, "wf_clock_local");

    // Idle: every worker has finished and reported; its heartbeat goes on.
    settle(Duration::from_secs(3));
    let rss_idle: Vec<f64> = workers
        .iter()
        .map(|w| rss_kib(w.pid()) as f64 / 1024.0)
        .collect();
    let controller_rss = rss_kib(server.child.id()) as f64 / 1024.0;
    let idle_split = workers
        .first()
        .map(|w| {
            let field = |name: &str| status_field(w.pid(), name).unwrap_or(0) as f64 / 1024.0;
            format!(
                "w1 at the end: {:.1} MiB anonymous, {:.1} MiB of mapped files (the binary's pages, shared by all workers), {} threads",
                field("RssAnon:"),
                field("RssFile:"),
                status_field(w.pid(), "Threads:").unwrap_or(0)
            )
        })
        .unwrap_or_default();

    let executions = executions_by_key(&workers);
    let mut lost = 0usize;
    let mut duplicated = 0usize;
    for (run, remote) in [
        (&noop_remote, true),
        (&noop_local, false),
        (&clock_remote, true),
        (&clock_local, false),
    ] {
        let check = check_run(run, remote.then_some(&executions));
        lost += check.lost;
        duplicated += check.duplicated;
    }

    let remote_rate = steps_per_second(&noop_remote);
    let local_rate = steps_per_second(&noop_local);
    let remote_clock_rate = steps_per_second(&clock_remote);
    let remote_latency = start_latencies(&project, &clock_remote);
    let local_latency = start_latencies(&project, &clock_local);
    let remote_attempt_latency = attempt_latencies(&noop_remote);
    let local_attempt_latency = attempt_latencies(&noop_local);

    eprintln!(
        "part one: remote {remote_rate:.0} steps/s, local {local_rate:.0} steps/s; start → running p50/p99 remote {:.1}/{:.1} ms, local {:.1}/{:.1} ms; idle RSS {rss_idle:?} MiB (connected {rss_connected:?}); lost {lost}, duplicated {duplicated}",
        percentile(&remote_latency, 0.5),
        percentile(&remote_latency, 0.99),
        percentile(&local_latency, 0.5),
        percentile(&local_latency, 0.99),
    );
    for worker in &mut workers {
        worker.stop();
    }
    server.stop();

    // Part two: a 2 s lease, a worker killed mid-run.
    configure(&project, &nats.url(), Some(KILL_LEASE_SECONDS));
    let mut server = Server::start(&binary, &project, &[]);
    let address = server.address.clone();
    let mut workers: Vec<WorkerProcess> = (1..=WORKERS)
        .map(|i| {
            WorkerProcess::start(
                &binary,
                &project,
                work.path(),
                &format!("k{i}"),
                &nats.url(),
                Some(KILL_LEASE_SECONDS),
            )
        })
        .collect();
    let kill = kill_trial(&address, &mut workers, &marks);
    // Each attempt key runs on one worker once (the killed attempts and their retries have
    // keys of their own).
    let kill_executions = executions_by_key(&workers);
    let kill_check = check_run(&kill.run, None);
    let twice: Vec<&String> = kill_executions
        .iter()
        .filter(|(k, n)| **n > 1 && k.starts_with(kill.run.record["id"].as_str().unwrap_or("-")))
        .map(|(k, _)| k)
        .collect();
    if !twice.is_empty() {
        eprintln!("attempt keys run by more than one worker in the kill run: {twice:?}");
    }
    duplicated += twice.len();
    lost += kill_check.lost;
    duplicated += kill_check.duplicated;
    let orphans_finished = fs::read_dir(&marks)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| fs::read_to_string(e.path()).is_ok_and(|t| t.lines().count() > 1))
                .count()
        })
        .unwrap_or(0);
    for worker in &mut workers {
        worker.stop();
    }
    server.stop();

    // The table.
    let mut report = Report::new("workers");
    let (remote_p50, remote_p99) = (
        percentile(&remote_latency, 0.5),
        percentile(&remote_latency, 0.99),
    );
    let (local_p50, local_p99) = (
        percentile(&local_latency, 0.5),
        percentile(&local_latency, 0.99),
    );
    let latency = format!(
        "engine's start → step's process running, {} steps of `date` fanned out {MAX_PARALLEL} at once",
        support::number(STEPS as f64)
    );
    report.add(
        Measurement::new(
            format!("{latency}, remote (4 workers × 8 slots), p50"),
            "ms",
            remote_p50,
        )
        .reference("local", local_p50),
    );
    report.add(
        Measurement::new(format!("{latency}, remote, p99"), "ms", remote_p99)
            .reference("local", local_p99),
    );
    report.add(
        Measurement::new(
            "the same, remote − local (the spawn moves off the controller), p50",
            "ms",
            remote_p50 - local_p50,
        )
        .note("the step prints `date +%s.%N` as it starts; the engine's start is the step record's started_at (milliseconds)"),
    );
    report.add(Measurement::new(
        "the same, remote − local, p99",
        "ms",
        remote_p99 - local_p99,
    ));
    let (attempt_remote_p50, attempt_remote_p99) = (
        percentile(&remote_attempt_latency, 0.5),
        percentile(&remote_attempt_latency, 0.99),
    );
    let (attempt_local_p50, attempt_local_p99) = (
        percentile(&local_attempt_latency, 0.5),
        percentile(&local_attempt_latency, 0.99),
    );
    report.add(
        Measurement::new(
            "engine's start → attempt started by its executor (attempt record), 1,000 no-op steps, remote, p50",
            "ms",
            attempt_remote_p50,
        )
        .reference("local", attempt_local_p50)
        .note("the attempt record's started_at is taken just before the agent spawns, in milliseconds: locally on the controller, remotely on the worker after publish, pull, claim, ack and lease"),
    );
    report.add(
        Measurement::new(
            "engine's start → attempt started by its executor, 1,000 no-op steps, remote, p99",
            "ms",
            attempt_remote_p99,
        )
        .reference("local", attempt_local_p99),
    );
    report.add(
        Measurement::new(
            "added latency per attempt (publish → attempt starting on the worker): remote − local, p50",
            "ms",
            attempt_remote_p50 - attempt_local_p50,
        )
        .target(Target::AtMost(5.0))
        .bound(ADDED_LATENCY_BOUND),
    );
    report.add(
        Measurement::new(
            "added latency per attempt (publish → attempt starting on the worker): remote − local, p99",
            "ms",
            attempt_remote_p99 - attempt_local_p99,
        )
        .target(Target::AtMost(25.0))
        .bound(ADDED_LATENCY_BOUND),
    );
    report.add(
        Measurement::new(
            format!(
                "{} no-op steps (`true`, fan-out, max_parallel {MAX_PARALLEL}), remote on 4 workers × 8 slots",
                support::number(STEPS as f64)
            ),
            "steps/s",
            remote_rate,
        )
        .reference("the same workflow local", local_rate)
        .target(Target::AtLeast(500.0))
        .bound(THROUGHPUT_BOUND)
        .note("the run record's started_at to finished_at"),
    );
    report.add(
        Measurement::new(
            "1,000 `date` steps, remote (the latency run)",
            "steps/s",
            remote_clock_rate,
        )
        .reference("the same workflow local", steps_per_second(&clock_local)),
    );
    report.add(
        Measurement::new(
            "worker RSS, idle and connected after the runs, largest of 4",
            "MiB",
            max(&rss_idle),
        )
        .reference("before any step", max(&rss_connected))
        .note(format!("VmRSS in /proc/PID/status, 3 s after the last step; {idle_split}"))
        .target(Target::AtMost(20.0))
        .bound("VmRSS counts the pages of the 37 MB binary the worker has touched (RssFile, shared by every worker and the controller on the machine); the worker's own memory (RssAnon) is the small part, see the note. A worker binary without the server, dashboard and reconcile code would move it"),
    );
    report.add(Measurement::new(
        "controller RSS after the runs",
        "MiB",
        controller_rss,
    ));
    let kill_target = (KILL_LEASE_SECONDS + 1.0) * 1e3;
    report.add(Measurement::new(
        "kill -9 of a worker mid-run: attempts it was running (20 steps of `sleep 5` over 4 workers × 8 slots)",
        "",
        kill.victim_attempts as f64,
    ));
    report.add(
        Measurement::new(
            "kill -9 of a worker mid-run, lease 2s: kill → its attempts declared lost, worst",
            "ms",
            max(&kill.lost_after),
        )
        .note("the lost attempt's finished_at in the step record, against the instant of the kill (milliseconds)"),
    );
    report.add(
        Measurement::new(
            "kill -9 of a worker mid-run, lease 2s: kill → each of its attempts' retry running on another worker, worst",
            "ms",
            max(&kill.redispatched_after),
        )
        .target(Target::AtMost(kill_target))
        .every_run()
        .bound("the lease (the controller sees a lease revision unchanged for the lease time, judged every lease/5), then the retry's publish, pull, claim and start"),
    );
    report.add(
        Measurement::new(
            "steps without exactly one successful attempt (lost), 4 runs of 1,000 + the kill run",
            "",
            lost as f64,
        )
        .target(Target::AtMost(0.0))
        .every_run(),
    );
    report.add(
        Measurement::new(
            "attempts run twice (duplicated): steps with two successful attempts, attempt keys run by two workers or more than once",
            "",
            duplicated as f64,
        )
        .target(Target::AtMost(0.0))
        .every_run(),
    );
    report.add(
        Measurement::new(
            "steps of the killed worker whose process ran to its end anyway (orphaned by the kill)",
            "",
            orphans_finished as f64,
        )
        .reference("attempts the killed worker ran", kill.victim_attempts as f64)
        .note("each step appends its name to a file when its `sleep 5` ends; the killed worker's step processes are in process groups of their own"),
    );
    report.finish();
    drop(nats);
}

const ADDED_LATENCY_BOUND: &str = "queueing: 32 attempts in flight on 2 cores shared by the controller, nats-server and 4 workers. Before an attempt starts on a worker, one after another: the controller's publish and its ack, the worker's pull of one message, the claim request answered after a durable flush (claims served one at a time, the flush under the pending table's lock), the worker's double ack, then a heartbeat that writes the worker's record and the lease of every attempt it runs (up to 9 KV writes, each awaited). Claims served concurrently with the flush outside the lock, and one lease write per claim instead of a whole heartbeat, would move it";
const THROUGHPUT_BOUND: &str = "32 attempts in flight over 2 cores: each attempt holds its slot for about 32 ÷ rate (about 0.1 s) of publish, pull, claim (one durable flush, claims one at a time), acks, a heartbeat of up to 9 KV writes before it starts and another after it ends, a lease purge and two reports, every one a JetStream write awaited in turn. Remote already beats local (whose spawns all come from the controller's process); the per-claim and per-heartbeat round trips named for the latency would move it";

// ---------------------------------------------------------------------------------------

/// `nats-server -js` on a free loopback port with a store of its own; killed when dropped.
struct Nats {
    child: Child,
    port: u16,
}

impl Nats {
    fn start(work: &Path) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let store = work.join("nats");
        fs::create_dir_all(&store).expect("nats store");
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (Debian: apt-get install nats-server; bench/run installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Nats { child, port }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `orchestrator worker` with 8 slots; SIGKILLed when dropped.
struct WorkerProcess {
    child: Option<Child>,
    work_dir: PathBuf,
}

impl WorkerProcess {
    fn start(
        binary: &Path,
        project: &Path,
        work: &Path,
        name: &str,
        url: &str,
        lease: Option<f64>,
    ) -> WorkerProcess {
        let work_dir = work.join("workers").join(name);
        fs::create_dir_all(&work_dir).expect("worker dir");
        let mut command = Command::new(binary);
        command
            .args([
                "worker", "--nats", url, "--name", name, "--labels", LABELS, "--slots",
            ])
            .arg(SLOTS.to_string())
            .arg("--work-dir")
            .arg(&work_dir)
            .current_dir(project)
            .env("ORCHESTRATOR_ENVIRONMENT", "production")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(lease) = lease {
            command.args(["--lease", &format!("{}ms", (lease * 1e3) as u64)]);
        }
        let mut child = command.spawn().expect("start a worker");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buffer) {
                sink.lock()
                    .expect("stderr")
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while !stderr.lock().expect("stderr").contains(" connected to ") {
            assert!(
                Instant::now() < deadline,
                "worker {name} did not connect: {}",
                stderr.lock().expect("stderr")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        WorkerProcess {
            child: Some(child),
            work_dir,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Attempt keys it has run: one step log per attempt key.
    fn attempt_keys(&self) -> Vec<String> {
        fs::read_dir(self.work_dir.join("logs/steps"))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| {
                        e.file_name()
                            .to_str()
                            .and_then(|n| n.strip_suffix(".log"))
                            .map(str::to_owned)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn stop(&mut self) {
        self.kill9();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes `distributed:` into the production configuration (the lease when given).
fn configure(project: &Path, url: &str, lease: Option<f64>) {
    let path = project.join("config/production.yaml");
    let text = fs::read_to_string(&path).expect("config");
    let base = text
        .split("\ndistributed:\n")
        .next()
        .expect("config text")
        .trim_end()
        .to_owned();
    let mut section = format!("\ndistributed:\n  nats:\n    url: {url}\n");
    if let Some(lease) = lease {
        section.push_str(&format!("  lease: {}ms\n", (lease * 1e3) as u64));
    }
    fs::write(&path, format!("{base}\n{section}")).expect("config");
}

fn write_fan_out(dir: &Path, name: &str, steps: usize, command: &[&str], remote: bool) {
    let mut text =
        format!("id: wf_{name}\nname: {name}\nmax_parallel: {MAX_PARALLEL}\nhistory_limit: 10\n");
    if remote {
        text.push_str("runs_on: {pool: bench}\n");
    }
    let command = serde_json::to_string(command).expect("command");
    text.push_str("steps:\n");
    for index in 0..steps {
        // `depends_on: []`: without it, steps run one after another in listed order.
        text.push_str(&format!(
            "  - name: s{index:04}\n    depends_on: []\n    command: {command}\n"
        ));
    }
    fs::write(dir.join(format!("{name}.yaml")), text).expect("workflow");
}

fn write_kill_workflow(dir: &Path, marks: &Path) {
    let mut text = format!(
        "id: wf_kill\nname: kill\nmax_parallel: {MAX_PARALLEL}\nhistory_limit: 10\nruns_on: {{pool: bench}}\nsteps:\n"
    );
    for index in 0..KILL_STEPS {
        text.push_str(&format!(
            "  - name: k{index:02}\n    depends_on: []\n    retries: 1\n    retry_delay: 0\n    on_worker_lost: retry\n    command: [\"sh\", \"-c\", \"sleep 5; echo $ORCHESTRATOR_STEP >> {}/$ORCHESTRATOR_STEP\"]\n",
            marks.display()
        ));
    }
    fs::write(dir.join("kill.yaml"), text).expect("workflow");
}

fn settle(duration: Duration) {
    std::thread::sleep(duration);
}

/// A finished run: its record and its steps.
struct Run {
    record: Value,
    steps: Vec<Value>,
}

fn execute(address: &str, workflow: &str) -> String {
    let answer: Value = serde_json::from_str(
        &ureq::post(&format!(
            "http://{address}/api/workflows/{workflow}/execute"
        ))
        .header("Content-Type", "application/json")
        .send("{}")
        .unwrap_or_else(|e| panic!("execute {workflow}: {e}"))
        .body_mut()
        .read_to_string()
        .expect("body"),
    )
    .expect("json");
    answer["run_id"].as_str().expect("run id").to_owned()
}

/// Waits for a run to end (polling the light list of the workflow's runs, not the run's
/// 1,000 steps), then reads it whole.
fn wait_run(address: &str, workflow: &str, id: &str) -> Run {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let page = get_json(&format!(
            "http://{address}/api/runs?workflow={workflow}&limit=5"
        ));
        let ended = page
            .as_ref()
            .and_then(|p| p["runs"].as_array())
            .is_some_and(|runs| {
                runs.iter().any(|r| {
                    r["id"] == id && !matches!(r["status"].as_str(), Some("queued" | "running"))
                })
            });
        if ended {
            let detail = get_json(&format!("http://{address}/api/runs/{id}")).expect("run detail");
            return Run {
                record: detail["run"].clone(),
                steps: detail["steps"].as_array().cloned().unwrap_or_default(),
            };
        }
        assert!(Instant::now() < deadline, "run {id} did not finish");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn execute_and_wait(address: &str, workflow: &str) -> Run {
    let id = execute(address, workflow);
    wait_run(address, workflow, &id)
}

fn get_json(url: &str) -> Option<Value> {
    let mut response = ureq::get(url).call().ok()?;
    serde_json::from_str(&response.body_mut().read_to_string().ok()?).ok()
}

/// Seconds since the epoch of an RFC 3339 time.
fn seconds(text: &str) -> f64 {
    let at = chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    at.timestamp() as f64 + f64::from(at.timestamp_subsec_nanos()) / 1e9
}

fn steps_per_second(run: &Run) -> f64 {
    let started = seconds(run.record["started_at"].as_str().expect("started_at"));
    let finished = seconds(run.record["finished_at"].as_str().expect("finished_at"));
    run.steps.len() as f64 / (finished - started)
}

/// For each step: its process's clock reading (the first line of its log) minus the
/// engine's start instant, in ms.
fn start_latencies(project: &Path, run: &Run) -> Vec<f64> {
    run.steps
        .iter()
        .map(|step| {
            let started = seconds(step["started_at"].as_str().expect("started_at"));
            let log = step["log"].as_str().expect("log");
            let text = fs::read_to_string(project.join("logs").join(log))
                .unwrap_or_else(|e| panic!("{log}: {e}"));
            let clock: f64 = text
                .lines()
                .find_map(|l| l.trim().parse().ok())
                .unwrap_or_else(|| panic!("no clock reading in {log}: {text:?}"));
            (clock - started) * 1e3
        })
        .collect()
}

/// For each step: its attempt record's `started_at` minus the engine's start instant, ms.
fn attempt_latencies(run: &Run) -> Vec<f64> {
    run.steps
        .iter()
        .filter_map(|step| {
            let started = seconds(step["started_at"].as_str()?);
            let attempt = seconds(step["attempts"][0]["started_at"].as_str()?);
            Some((attempt - started) * 1e3)
        })
        .collect()
}

/// Attempt key → how many times the workers ran it.
fn executions_by_key(workers: &[WorkerProcess]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for worker in workers {
        for key in worker.attempt_keys() {
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    counts
}

struct Check {
    lost: usize,
    duplicated: usize,
}

/// Lost: steps without exactly one successful attempt. Duplicated: steps with more than
/// one, and (remote runs) attempt keys the workers ran more than once, or not one per step.
fn check_run(run: &Run, executions: Option<&HashMap<String, usize>>) -> Check {
    let id = run.record["id"].as_str().expect("id");
    let mut lost = 0;
    let mut duplicated = 0;
    for step in &run.steps {
        let succeeded = step["attempts"].as_array().map_or(0, |a| {
            a.iter().filter(|a| a["status"] == "succeeded").count()
        });
        if step["status"] != "succeeded" || succeeded == 0 {
            lost += 1;
        }
        duplicated += succeeded.saturating_sub(1);
    }
    if let Some(executions) = executions {
        let prefix = format!("{id}.");
        let of_run: Vec<usize> = executions
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(_, n)| *n)
            .collect();
        duplicated += of_run.iter().map(|n| n - 1).sum::<usize>();
        // A step recorded as run remotely that no worker ran.
        lost += run.steps.len().saturating_sub(of_run.len());
    }
    if lost + duplicated > 0 {
        eprintln!("run {id}: {lost} lost, {duplicated} duplicated");
    }
    Check { lost, duplicated }
}

struct Kill {
    run: Run,
    victim_attempts: usize,
    lost_after: Vec<f64>,
    redispatched_after: Vec<f64>,
}

/// Starts the kill workflow, waits until every step runs on a worker, kills the worker
/// running the most, and measures when its attempts were declared lost and retried.
fn kill_trial(address: &str, workers: &mut [WorkerProcess], marks: &Path) -> Kill {
    let id = execute(address, "wf_kill");
    let prefix = format!("{id}.");
    let deadline = Instant::now() + Duration::from_secs(60);
    let running: Vec<Vec<String>> = loop {
        let keys: Vec<Vec<String>> = workers
            .iter()
            .map(|w| {
                w.attempt_keys()
                    .into_iter()
                    .filter(|k| k.starts_with(&prefix))
                    .collect()
            })
            .collect();
        if keys.iter().map(Vec::len).sum::<usize>() >= KILL_STEPS {
            break keys;
        }
        if Instant::now() > deadline {
            let page = get_json(&format!("http://{address}/api/runs/{id}"));
            panic!(
                "the kill run's steps did not all start: {:?} started per worker; {:#}",
                keys.iter().map(Vec::len).collect::<Vec<_>>(),
                page.map(|p| p["steps"].clone()).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The worker running the most attempts now (a step's mark appears when it ends).
    let still_running = |key: &String| {
        key.split('.')
            .nth(1)
            .and_then(|i| i.parse::<usize>().ok())
            .is_some_and(|i| !marks.join(format!("k{i:02}")).exists())
    };
    let (victim, keys) = running
        .iter()
        .map(|keys| {
            keys.iter()
                .filter(|k| still_running(k))
                .cloned()
                .collect::<Vec<_>>()
        })
        .enumerate()
        .max_by_key(|(_, k)| k.len())
        .expect("workers");
    let victim_steps: Vec<usize> = keys
        .iter()
        .filter_map(|k| k.split('.').nth(1).and_then(|i| i.parse().ok()))
        .collect();
    workers[victim].kill9();
    let killed_at = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    eprintln!("killed worker k{} running {keys:?}", victim + 1);
    let run = wait_run(address, "wf_kill", &id);
    assert_eq!(
        run.record["status"], "succeeded",
        "kill run: {:#}",
        run.record
    );
    let mut lost_after = Vec::new();
    let mut redispatched_after = Vec::new();
    for index in &victim_steps {
        let step = &run.steps[*index];
        let attempts = step["attempts"].as_array().expect("attempts");
        if attempts.len() != 2 {
            eprintln!("step {index} of the killed worker: {step:#}");
            continue;
        }
        let lost = seconds(attempts[0]["finished_at"].as_str().expect("finished_at"));
        let retried = seconds(attempts[1]["started_at"].as_str().expect("started_at"));
        lost_after.push((lost - killed_at) * 1e3);
        redispatched_after.push((retried - killed_at) * 1e3);
    }
    Kill {
        run,
        victim_attempts: victim_steps.len(),
        lost_after,
        redispatched_after,
    }
}

/// A number field of /proc/PID/status (kB for sizes).
fn status_field(pid: u32, name: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}
