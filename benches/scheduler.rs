//! Scheduler benchmark: fire lateness. 100 schedules due on the same second (`*/5 * * * *
//! *`), three rounds on a real release server, then one schedule alone firing every second
//! ([`ALONE_FIRES`] times) on a server of its own; for each fire, the time from the due
//! instant to the first step's process running (the step prints the clock as it starts).
//! Prints p50, p99 and the worst beside the floor measured in the same run (and writes
//! `BENCH_JSON`, see `support`). The rounds are the samples of one run whatever
//! `BENCH_REPEATS` says: the p99 needs the 300 fires.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "support/mod.rs"]
mod support;
use support::{release_binary, run_ok, Measurement, Report, Server, Target};

const SCHEDULES: usize = 100;
const ROUNDS: usize = 3;
/// Fires of the schedule alone.
const ALONE_FIRES: usize = 60;

fn main() {
    let work = tempfile::tempdir().expect("temp dir");
    let binary = release_binary();
    let project = clock_project(&binary, &work.path().join("project"));
    for index in 0..SCHEDULES {
        write_schedule(&project, index, "*/5 * * * * *");
    }
    let lateness = fire_lateness(&binary, &project, SCHEDULES * ROUNDS);
    let floor = floor_lateness(ROUNDS);
    let alone_project = clock_project(&binary, &work.path().join("alone"));
    write_schedule(&alone_project, 0, "* * * * * *");
    let alone = Percentiles::of(fire_lateness(&binary, &alone_project, ALONE_FIRES));
    let alone_floor = Percentiles::of(floor_alone(ALONE_FIRES));
    let (ours, floor) = (Percentiles::of(lateness), Percentiles::of(floor));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let metric = format!(
        "fire lateness, {SCHEDULES} schedules due on the same second × {ROUNDS} rounds, due → first step's process running"
    );
    let floor_name = format!(
        "floor: {SCHEDULES} threads at one instant creating a log file and spawning the step"
    );
    let mut report = Report::new("scheduler");
    report.add(
        Measurement::new(format!("{metric}, p50"), "ms", ours.p50)
            .reference(&floor_name, floor.p50),
    );
    report.add(
        Measurement::new(format!("{metric}, p99"), "ms", ours.p99)
            .reference(&floor_name, floor.p99)
            .target(Target::RatioAtMost(1.2))
            .bound(format!(
                "the floor: {SCHEDULES} processes started at one instant on {cores} cores (the \
                 reference column). Above the floor, each run still makes at the instant its \
                 durable writes (run running, step running) and hands its step to a thread \
                 that spawns it; the rest is prepared 200 ms ahead. More cores move the floor \
                 and the figure with it."
            )),
    );
    report.add(
        Measurement::new(format!("{metric}, worst"), "ms", ours.max)
            .reference(&floor_name, floor.max),
    );
    let alone_metric = format!(
        "fire lateness, one schedule alone due every second × {ALONE_FIRES}, due → first step's process running"
    );
    let alone_floor_name =
        "floor: one thread waking at an instant, creating a log file and spawning the step";
    report.add(
        Measurement::new(format!("{alone_metric}, p50"), "ms", alone.p50)
            .reference(alone_floor_name, alone_floor.p50),
    );
    report.add(
        Measurement::new(format!("{alone_metric}, p99"), "ms", alone.p99)
            .reference(alone_floor_name, alone_floor.p99)
            .target(Target::AtMost(5.0))
            .bound(
                "at the due instant the run makes two durable writes (run running, step \
                 running) and spawns its step; the timer's wake-up and the spawn are the rest.",
            ),
    );
    report.finish();
}

/// `orchestrator init` at `project`, with a workflow whose one step prints the clock, and
/// the limit on runs executing at once raised (see `main`).
fn clock_project(binary: &Path, project: &Path) -> PathBuf {
    run_ok(Command::new(binary).arg("init").arg(project));
    fs::write(
        project.join("workflows/clock.yaml"),
        "name: Clock\nhistory_limit: 1000\nsteps:\n  - name: now\n    command: [\"date\", \"+%s.%N\"]\n",
    )
    .expect("workflow");
    // Every fire's run executes at once: the limit on runs executing at once is raised
    // above the 100 schedules (`SCHEDULER_MAX_ACTIVE` sets another; with the default, 2 per
    // core, most runs wait for a slot and the figures measure that queue).
    let max_active = std::env::var("SCHEDULER_MAX_ACTIVE").unwrap_or_else(|_| "128".into());
    if max_active != "default" {
        let config = project.join("config/production.yaml");
        let text = fs::read_to_string(&config).expect("config");
        assert!(text.contains("\nruns:\n"), "no runs section in {text}");
        fs::write(
            &config,
            text.replace(
                "\nruns:\n",
                &format!("\nruns:\n  max_active: {max_active}\n"),
            ),
        )
        .expect("config");
    }
    project.to_owned()
}

fn write_schedule(project: &Path, index: usize, cron: &str) {
    fs::write(
        project.join("schedules").join(format!("s{index:03}.yaml")),
        format!("name: S{index:03}\ncron: \"{cron}\"\nworkflow: wf_clock\n"),
    )
    .expect("schedule");
}

/// Starts a server in `project`, waits for `wanted` runs of the clock to have succeeded,
/// stops it, and returns each run's lateness in milliseconds: due instant → the clock its
/// step printed.
fn fire_lateness(binary: &Path, project: &Path, wanted: usize) -> Vec<f64> {
    let mut server = Server::start(binary, project, &[]);
    let address = server.address.clone();
    let deadline = Instant::now() + Duration::from_secs(30 + 2 * wanted as u64);
    let runs = loop {
        let runs = finished_runs(&address);
        if runs.len() >= wanted {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "only {} runs finished",
            runs.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    server.stop();
    runs.iter()
        .take(wanted)
        .map(|run| {
            let due = chrono::DateTime::parse_from_rfc3339(
                run["trigger"]["details"]["due"].as_str().expect("due"),
            )
            .expect("due instant");
            let id = run["id"].as_str().expect("id");
            let log = fs::read_to_string(project.join("logs/workflows").join(id).join("now.log"))
                .expect("step log");
            let started: f64 = log.trim().parse().expect("a clock reading");
            let due = due.timestamp() as f64 + f64::from(due.timestamp_subsec_nanos()) / 1e9;
            (started - due) * 1e3
        })
        .collect()
}

struct Percentiles {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(mut samples: Vec<f64>) -> Percentiles {
        samples.sort_by(f64::total_cmp);
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Percentiles {
            p50: at(0.5),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        }
    }
}

/// The same work without the orchestrator: at one instant, one thread per schedule creates
/// a log file and spawns `date +%s.%N` into it; the lateness of each process's clock.
fn floor_lateness(rounds: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut samples = Vec::new();
    for round in 0..rounds {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        let handles: Vec<_> = (0..SCHEDULES)
            .map(|index| {
                let path = dir.path().join(format!("{round}-{index}.log"));
                std::thread::spawn(move || clock_of_a_step(&path))
            })
            .collect();
        for handle in handles {
            let started = handle.join().expect("thread");
            samples.push((started - start) * 1e3);
        }
    }
    samples
}

/// The schedule alone without the orchestrator: `fires` times, a thread sleeps until an
/// instant 50 ms ahead, creates a log file and spawns `date +%s.%N` into it; the lateness of
/// each process's clock.
fn floor_alone(fires: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64()
    };
    (0..fires)
        .map(|fire| {
            let due = clock() + 0.05;
            std::thread::sleep(Duration::from_secs_f64((due - clock()).max(0.0)));
            (clock_of_a_step(&dir.path().join(format!("{fire}.log"))) - due) * 1e3
        })
        .collect()
}

/// What a floor's step does: creates its log file at `path`, spawns `date +%s.%N` into it
/// and waits; the clock the process printed as it started, in seconds.
fn clock_of_a_step(path: &Path) -> f64 {
    let log = fs::File::create(path).expect("log");
    let status = Command::new("date")
        .arg("+%s.%N")
        .stdout(log)
        .status()
        .expect("date");
    assert!(status.success());
    fs::read_to_string(path)
        .expect("clock")
        .trim()
        .parse()
        .expect("a clock reading")
}

fn finished_runs(address: &str) -> Vec<Value> {
    let Ok(mut response) = ureq::get(&format!(
        "http://{address}/api/runs?workflow=wf_clock&status=succeeded&limit=1000"
    ))
    .call() else {
        return Vec::new();
    };
    let body: Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap_or_default())
            .unwrap_or_default();
    let mut runs = body["runs"].as_array().cloned().unwrap_or_default();
    // Oldest first: whole rounds.
    runs.reverse();
    runs
}
