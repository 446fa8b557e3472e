//! Workers failing, with real processes over a real nats-server: a worker killed with
//! `kill -9` mid-step at random moments (the attempt is `worker_lost`, retried, and
//! succeeds exactly once; the restarted worker stops what its previous incarnation left
//! running), a worker cut off past its lease (SIGSTOP, SIGCONT: its result is refused
//! and it stops its step itself), nats-server restarted mid-run (nothing lost), a remote
//! step cancelled and timed out (its processes stopped; the timeout holds with the
//! controller gone), a worker drained (SIGTERM) and
//! interrupted twice (SIGINT), `on_worker_lost: fail`, and an attempt delivered more
//! often than `max_deliver` without a claim.
//!
//! The kill -9 suite makes 20 kills by default, 200 with `ORCHESTRATOR_TEST_LONG=1`; its
//! random choices come from a seed it prints (`ORCHESTRATOR_FAULTS_SEED` replays them).

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::*;

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// A directory of markers the steps write (absolute, outside the project).
fn markers() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Waits for a step's `echo $$ > FILE` to have written its pid: the shell creates the file
/// before it writes to it, so the file may be there and still empty.
#[track_caller]
fn wait_for_pid(path: &Path, what: &str) -> u32 {
    eventually_within(
        &format!("{what}: a pid in {}", path.display()),
        Duration::from_secs(20),
        || {
            let text = fs::read_to_string(path).ok()?;
            text.ends_with('\n').then(|| text.trim().parse().ok())?
        },
    )
}

/// Waits for a process to be gone.
#[track_caller]
fn wait_gone(pid: u32, what: &str, within: Duration) {
    eventually_within(&format!("{what} (pid {pid}) to be gone"), within, || {
        (!alive(pid)).then_some(())
    });
}

/// Steps in each run of the kill suite, and how long each sleeps.
const CHAOS_STEPS: usize = 8;
/// A victim that started less than this long ago still has a second or more to run when
/// its worker has restarted: the restart is seen to stop it before it did its work.
const YOUNG: Duration = Duration::from_millis(1200);

fn chaos_workflow(marks: &Path) -> String {
    let mut yaml = String::from("id: wf_chaos\nname: chaos\nmax_parallel: 8\nsteps:\n");
    for i in 0..CHAOS_STEPS {
        yaml.push_str(&format!(
            "  - name: s{i}\n    depends_on: []\n    runs_on: {{pool: chaos}}\n    retries: 4\n    retry_delay: 0s\n    command: [\"sh\", \"-c\", \"echo \\\"$ORCHESTRATOR_RUN_ID s{i} $ORCHESTRATOR_WORKER\\\" > {m}/started.$$; sleep {sleep}; echo \\\"$ORCHESTRATOR_RUN_ID s{i}\\\" > {m}/done.$$; echo step=s{i} >> $ORCHESTRATOR_OUTPUT\"]\n",
            m = marks.display(),
            sleep = ["2.5", "3", "2.2", "2.8"][i % 4],
        ));
    }
    yaml
}

/// A step process the kill suite sees running: pid, run, step, worker, when it started.
struct Seen {
    pid: u32,
    run: String,
    step: String,
    worker: String,
    age: Duration,
}

fn running_steps(marks: &Path) -> Vec<Seen> {
    let mut seen = Vec::new();
    for entry in fs::read_dir(marks).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("started.") else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if marks.join(format!("done.{pid}")).exists() || !alive(pid) {
            continue;
        }
        let Ok(line) = fs::read_to_string(entry.path()) else {
            continue;
        };
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [run, step, worker] = parts[..] else {
            continue;
        };
        let age = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .unwrap_or(Duration::MAX);
        seen.push(Seen {
            pid,
            run: run.to_owned(),
            step: step.to_owned(),
            worker: worker.to_owned(),
            age,
        });
    }
    seen
}

#[test]
fn kill_9_of_workers_mid_step_retries_each_attempt_elsewhere_and_it_succeeds_exactly_once() {
    let seed = seed_from("ORCHESTRATOR_FAULTS_SEED");
    let mut rng = Rng(seed);
    let total = reliability_trials();
    eprintln!("kill -9 suite: {total} kills, seed {seed} (ORCHESTRATOR_FAULTS_SEED={seed} replays its choices)");
    let began = Instant::now();
    let nats = Nats::start();
    let marks = markers();
    let project = distributed_project(
        &nats,
        &[("workflows/chaos.yaml", &chaos_workflow(marks.path()))],
    );
    let dir = project.path();
    let server = Server::start(dir);
    // Each worker, and whether it is being restarted (a restart runs beside the next kills).
    type Shared = (Arc<Mutex<WorkerProcess>>, Arc<AtomicBool>);
    let workers: BTreeMap<String, Shared> = (1..=4)
        .map(|i| {
            let name = format!("c{i}");
            let worker = WorkerProcess::start(dir, &name, "pool=chaos", 2);
            (name, (Arc::new(Mutex::new(worker)), Arc::default()))
        })
        .collect();
    let per_round = 5;
    let mut killed_total = 0;
    let mut elsewhere = 0;
    let mut delays = Vec::new();
    let mut young = 0;
    while killed_total < total {
        let runs = [
            execute_detached(dir, "chaos"),
            execute_detached(dir, "chaos"),
        ];
        // Per step of the round: its attempts lost other than by a kill that picked it
        // young (it ran beside the victim on the killed worker, or near its end): it may
        // have done its work before it was stopped. At least once, never recorded twice.
        let mut collateral: BTreeMap<String, usize> = BTreeMap::new();
        let round = Instant::now();
        let mut killed: Vec<Seen> = Vec::new();
        let mut restarts = Vec::new();
        for _ in 0..per_round.min(total - killed_total) {
            let delay = rng.range(50, 500);
            delays.push(delay);
            std::thread::sleep(Duration::from_millis(delay));
            let victim = eventually_within(
                "a step of this round running on a worker",
                Duration::from_secs(20),
                || {
                    let candidates: Vec<Seen> = running_steps(marks.path())
                        .into_iter()
                        .filter(|s| runs.contains(&s.run))
                        .filter(|s| !workers[&s.worker].1.load(Ordering::SeqCst))
                        .filter(|s| !killed.iter().any(|k| k.pid == s.pid))
                        .collect();
                    if candidates.is_empty() {
                        return None;
                    }
                    let pick = rng.range(0, candidates.len() as u64) as usize;
                    candidates.into_iter().nth(pick)
                },
            );
            let (worker, restarting) = &workers[&victim.worker];
            restarting.store(true, Ordering::SeqCst);
            worker.lock().unwrap().kill9();
            // Restarted on the same work directory: it stops the step processes its killed
            // incarnation left running before it takes work.
            let (worker, restarting) = (Arc::clone(worker), Arc::clone(restarting));
            let pid = victim.pid;
            restarts.push(std::thread::spawn(move || {
                worker.lock().unwrap().restart();
                wait_gone(
                    pid,
                    "the step process a killed worker left running, once the worker restarted",
                    Duration::from_secs(5),
                );
                restarting.store(false, Ordering::SeqCst);
            }));
            if victim.age < YOUNG {
                young += 1;
            }
            killed.push(victim);
        }
        for restart in restarts {
            restart.join().expect("a restart failed");
        }
        let kills_done = round.elapsed();
        for run in &runs {
            let shown = finished_run(dir, &server, run, Duration::from_secs(90));
            eprintln!(
                "kill -9 suite: kills of the round over after {kills_done:?}, {run} ended after {:?}",
                round.elapsed()
            );
            assert_eq!(
                shown["run"]["status"], "succeeded",
                "seed {seed}: {shown:#}"
            );
            for i in 0..CHAOS_STEPS {
                let name = format!("s{i}");
                let tries = attempts(&shown, &name);
                let succeeded: Vec<&Value> = tries
                    .iter()
                    .filter(|a| a["status"] == "succeeded")
                    .collect();
                assert_eq!(
                    succeeded.len(),
                    1,
                    "seed {seed}: {run} {name} succeeded exactly once: {tries:#?}"
                );
                assert_eq!(
                    tries.last().unwrap()["status"],
                    "succeeded",
                    "seed {seed}: {tries:#?}"
                );
                assert_eq!(step(&shown, &name)["outputs"]["step"], name.as_str());
                for victim in killed.iter().filter(|k| &k.run == run && k.step == name) {
                    let lost = tries
                        .iter()
                        .position(|a| {
                            a["status"] == "failed"
                                && a["worker"] == victim.worker.as_str()
                                && text(&a["message"]).starts_with("worker_lost:")
                        })
                        .unwrap_or_else(|| {
                            panic!(
                                "seed {seed}: the attempt of {run} {name} killed on {} is worker_lost: {tries:#?}",
                                victim.worker
                            )
                        });
                    let success = tries
                        .iter()
                        .position(|a| a["status"] == "succeeded")
                        .unwrap();
                    assert!(
                        lost < success,
                        "seed {seed}: retried after the loss: {tries:#?}"
                    );
                    if tries[success]["worker"] != victim.worker.as_str() {
                        elsewhere += 1;
                    }
                }
                for attempt in tries.iter().filter(|a| a["status"] != "succeeded") {
                    assert!(
                        text(&attempt["message"]).starts_with("worker_lost:"),
                        "seed {seed}: only lost workers fail attempts: {tries:#?}"
                    );
                }
                let victims = killed
                    .iter()
                    .filter(|k| &k.run == run && k.step == name && k.age < YOUNG)
                    .count();
                collateral.insert(format!("{run} {name}"), tries.len() - 1 - victims);
            }
        }
        // No duplicate: each step of each run finished its work once (a killed attempt's
        // process was stopped before it could).
        let mut done: BTreeMap<String, usize> = BTreeMap::new();
        for entry in fs::read_dir(marks.path()).unwrap().flatten() {
            if entry.file_name().to_string_lossy().starts_with("done.") {
                let line = fs::read_to_string(entry.path()).unwrap();
                *done.entry(line.trim().to_owned()).or_default() += 1;
            }
        }
        for run in &runs {
            for i in 0..CHAOS_STEPS {
                let key = format!("{run} s{i}");
                let times = done.get(&key).copied().unwrap_or(0);
                let beside = collateral[&key];
                assert!(
                    (1..=1 + beside).contains(&times),
                    "seed {seed}: {key} did its work {times} times; once, or at most once more per attempt lost other than by a young victim's kill ({beside})"
                );
            }
        }
        killed_total += killed.len();
    }
    eprintln!(
        "kill -9 suite: {killed_total} kills in {:.1} s (seed {seed}), {}–{} ms apart, {young} of them within {YOUNG:?} of the step's start (checked to have done no work); {elsewhere} retries ran on another worker name, the rest on the restarted one",
        began.elapsed().as_secs_f64(),
        delays.iter().min().unwrap_or(&0),
        delays.iter().max().unwrap_or(&0),
    );
    drop(workers);
}

#[test]
fn a_worker_cut_off_past_its_lease_is_refused_and_stops_its_own_step() {
    let nats = Nats::start();
    let marks = markers();
    let workflow = format!(
        "id: wf_cut\nname: cut\nsteps:\n  - name: long\n    runs_on: {{pool: cut}}\n    retries: 1\n    retry_delay: 0s\n    command: [\"sh\", \"-c\", \"echo $$ > {m}/$ORCHESTRATOR_WORKER.pid; if [ $ORCHESTRATOR_WORKER = stale ]; then sleep 30; else sleep 3; fi; echo by=$ORCHESTRATOR_WORKER >> $ORCHESTRATOR_OUTPUT\"]\n",
        m = marks.path().display()
    );
    let project = distributed_project(&nats, &[("workflows/cut.yaml", &workflow)]);
    let dir = project.path();
    let server = Server::start(dir);
    let stale = WorkerProcess::start(dir, "stale", "pool=cut", 1);
    let run = execute_detached(dir, "cut");
    let stale_pid = marks.path().join("stale.pid");
    let step_pid = wait_for_pid(&stale_pid, "the step running on `stale`");
    let _fresh = WorkerProcess::start(dir, "fresh", "pool=cut", 1);

    // Cut off: frozen past its lease. The controller declares it lost and the retry runs
    // on `fresh`, while the first attempt's process runs on.
    stale.signal(Signal::SIGSTOP);
    wait_for_file(&marks.path().join("fresh.pid"), "the retry on `fresh`");
    assert!(
        alive(step_pid),
        "the frozen worker's step runs on meanwhile"
    );
    stale.signal(Signal::SIGCONT);

    // Back: it finds its lease unrenewed for longer than the lease, stops its step itself
    // and its report is refused as stale.
    wait_gone(
        step_pid,
        "the step of the worker that was cut off",
        Duration::from_secs(10),
    );
    server.eventually(
        "the stale worker's report to be dropped",
        Duration::from_secs(15),
        || {
            server
                .stderr()
                .contains("dropped a stale `finished` report")
                .then_some(())
        },
    );
    assert!(
        stale.stderr().contains("was not renewed for"),
        "the worker says it fenced itself off:\n{}",
        stale.stderr()
    );
    let shown = finished_run(dir, &server, &run, Duration::from_secs(30));
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    let tries = attempts(&shown, "long");
    assert_eq!(tries.len(), 2, "{tries:#?}");
    assert_eq!(tries[0]["worker"], "stale");
    assert_eq!(tries[0]["status"], "failed");
    assert!(
        text(&tries[0]["message"]).starts_with("worker_lost: worker stale"),
        "{tries:#?}"
    );
    assert_eq!(tries[1]["worker"], "fresh");
    assert_eq!(tries[1]["status"], "succeeded");
    assert_eq!(step(&shown, "long")["outputs"]["by"], "fresh");
}

/// The lease of the NATS-restart test.
const RESTART_LEASE: &str = "10s";

#[test]
fn a_nats_server_restart_mid_run_loses_no_log_line_and_no_output() {
    let mut nats = Nats::start();
    let marks = markers();
    let mut workflow = String::from("id: wf_restart\nname: restart\nmax_parallel: 8\nsteps:\n");
    for i in 0..4 {
        workflow.push_str(&format!(
            "  - name: r{i}\n    depends_on: []\n    runs_on: {{pool: r}}\n    command: [\"sh\", \"-c\", \"touch {m}/r{i}; i=0; while [ $i -lt 40 ]; do echo \\\"r{i} line $i\\\"; i=$((i+1)); sleep 0.1; done; echo out=r{i} >> $ORCHESTRATOR_OUTPUT\"]\n",
            m = marks.path().display()
        ));
    }
    workflow.push_str("  - name: join\n    depends_on: [r0, r1, r2, r3]\n    command: [\"sh\", \"-c\", \"echo joined {{ steps.r0.outputs.out }} {{ steps.r3.outputs.out }}\"]\n");
    // A lease longer than the restart can take on a busy machine: what is under test is
    // that nothing is lost or doubled across it, not the lease (a worker cut off past its
    // lease stopping its step is tested on its own).
    let project = distributed_project_with(
        &nats,
        &format!("  lease: {RESTART_LEASE}\n"),
        &[("workflows/restart.yaml", &workflow)],
    );
    let dir = project.path();
    let server = Server::start(dir);
    let lease = ["--lease", RESTART_LEASE];
    let _a = WorkerProcess::start_with(dir, "ra", "pool=r", 2, &lease);
    let _b = WorkerProcess::start_with(dir, "rb", "pool=r", 2, &lease);
    let run = execute_detached(dir, "restart");
    for i in 0..4 {
        wait_for_file(
            &marks.path().join(format!("r{i}")),
            "every remote step running",
        );
    }
    std::thread::sleep(Duration::from_millis(800));
    nats.restart();
    let shown = finished_run(dir, &server, &run, Duration::from_secs(90));
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    for i in 0..4 {
        let name = format!("r{i}");
        assert_eq!(attempts(&shown, &name).len(), 1, "{shown:#}");
        assert_eq!(step(&shown, &name)["outputs"]["out"], name.as_str());
        let log =
            fs::read_to_string(dir.join("logs").join(text(&step(&shown, &name)["log"]))).unwrap();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.starts_with(&format!("{name} line ")))
            .collect();
        let expected: Vec<String> = (0..40).map(|n| format!("{name} line {n}")).collect();
        assert_eq!(
            lines, expected,
            "{name}'s log is whole, in order, without a duplicate"
        );
        assert!(
            !log.contains("incomplete"),
            "{name}'s log has no gap:\n{log}"
        );
    }
    let joined = cli(dir, &["run", "logs", &run, "join"]).expect_code(0);
    assert!(joined.stdout.contains("joined r0 r3"), "{}", joined.stdout);
}

#[test]
fn a_cancelled_or_timed_out_remote_step_stops_its_processes_on_the_worker() {
    let nats = Nats::start();
    let marks = markers();
    let m = marks.path().display();
    let project = distributed_project(
        &nats,
        &[
            (
                "workflows/hang.yaml",
                &format!("id: wf_hang\nname: hang\nsteps:\n  - name: hang\n    runs_on: {{pool: s}}\n    command: [\"sh\", \"-c\", \"sh -c 'echo $$ > {m}/cancel.pid; exec sleep 60' & wait\"]\n"),
            ),
            (
                "workflows/slow.yaml",
                &format!("id: wf_slow\nname: slow\nsteps:\n  - name: slow\n    runs_on: {{pool: s}}\n    timeout: 2s\n    command: [\"sh\", \"-c\", \"sh -c 'echo $$ > {m}/timeout.pid; exec sleep 60' & wait\"]\n"),
            ),
        ],
    );
    let dir = project.path();
    let server = Server::start(dir);
    let _worker = WorkerProcess::start(dir, "stopper", "pool=s", 2);
    let hang = execute_detached(dir, "hang");
    let slow = execute_detached(dir, "slow");
    let cancel_pid = marks.path().join("cancel.pid");
    wait_for_file(&cancel_pid, "the step to cancel");
    cli(dir, &["run", "cancel", &hang]).expect_code(0);

    let cancelled = finished_run(dir, &server, &hang, Duration::from_secs(30));
    assert_eq!(cancelled["run"]["status"], "cancelled", "{cancelled:#}");
    assert_eq!(step(&cancelled, "hang")["status"], "cancelled");
    assert_gone(&cancel_pid);

    let timed_out = finished_run(dir, &server, &slow, Duration::from_secs(30));
    let slow_step = step(&timed_out, "slow");
    assert_eq!(slow_step["status"], "timed_out", "{timed_out:#}");
    assert!(
        text(&slow_step["message"]).contains("timed out"),
        "{slow_step:#}"
    );
    assert_gone(&marks.path().join("timeout.pid"));
}

#[test]
fn sigterm_drains_a_worker_it_finishes_its_step_takes_nothing_new_and_exits_0() {
    let nats = Nats::start();
    let marks = markers();
    let m = marks.path().display();
    let mut workflow = String::from("id: wf_drain\nname: drain\nmax_parallel: 4\nsteps:\n");
    for i in 0..3 {
        workflow.push_str(&format!(
            "  - name: d{i}\n    depends_on: []\n    runs_on: {{pool: d}}\n    command: [\"sh\", \"-c\", \"echo $ORCHESTRATOR_WORKER > {m}/d{i}; while [ ! -f {m}/release ]; do sleep 0.05; done\"]\n"
        ));
    }
    let project = distributed_project(&nats, &[("workflows/drain.yaml", &workflow)]);
    let dir = project.path();
    let server = Server::start(dir);
    let mut first = WorkerProcess::start(dir, "first", "pool=d", 1);
    let run = execute_detached(dir, "drain");
    let taken = eventually("a step running on `first`", || {
        (0..3).find(|i| marks.path().join(format!("d{i}")).exists())
    });
    first.signal(Signal::SIGTERM);
    eventually("`first` to say it drains", || {
        first.stderr().contains("draining").then_some(())
    });
    // Its step ends only now, so it had no chance to take another before the signal.
    fs::write(marks.path().join("release"), "").unwrap();
    let code = first.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", first.stderr());
    assert!(first.stderr().contains("draining"), "{}", first.stderr());
    // Nothing else was taken by the draining worker: the rest waits for another.
    let started: Vec<usize> = (0..3)
        .filter(|i| marks.path().join(format!("d{i}")).exists())
        .collect();
    assert_eq!(started, [taken], "the draining worker took nothing new");

    let _second = WorkerProcess::start(dir, "second", "pool=d", 2);
    let shown = finished_run(dir, &server, &run, Duration::from_secs(30));
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    for i in 0..3 {
        let name = format!("d{i}");
        let tries = attempts(&shown, &name);
        assert_eq!(tries.len(), 1, "{tries:#?}");
        let expected = if i == taken { "first" } else { "second" };
        assert_eq!(tries[0]["worker"], expected, "{tries:#?}");
    }
}

#[test]
fn sigint_twice_cancels_what_a_worker_runs_reports_it_and_exits() {
    let nats = Nats::start();
    let marks = markers();
    let m = marks.path().display();
    let project = distributed_project(
        &nats,
        &[(
            "workflows/int.yaml",
            &format!("id: wf_int\nname: int\nsteps:\n  - name: hang\n    runs_on: {{pool: i}}\n    command: [\"sh\", \"-c\", \"echo $$ > {m}/int.pid; exec sleep 60\"]\n"),
        )],
    );
    let dir = project.path();
    let server = Server::start(dir);
    let mut worker = WorkerProcess::start(dir, "w-int", "pool=i", 1);
    let run = execute_detached(dir, "int");
    let pid_file = marks.path().join("int.pid");
    let step_pid = wait_for_pid(&pid_file, "the step running");
    worker.signal(Signal::SIGINT);
    eventually("the worker to say a second Ctrl-C cancels", || {
        worker.stderr().contains("Ctrl-C again").then_some(())
    });
    assert!(alive(step_pid), "one Ctrl-C only drains");
    worker.signal(Signal::SIGINT);
    let code = worker.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{}", worker.stderr());
    assert_gone(&pid_file);
    let shown = finished_run(dir, &server, &run, Duration::from_secs(30));
    let hang = step(&shown, "hang");
    assert_eq!(hang["status"], "cancelled", "{shown:#}");
    assert!(
        text(&hang["message"]).contains("worker w-int was interrupted twice"),
        "{hang:#}"
    );
}

#[test]
fn on_worker_lost_fail_fails_the_step_without_a_retry_and_says_why() {
    let nats = Nats::start();
    let marks = markers();
    let m = marks.path().display();
    let project = distributed_project(
        &nats,
        &[(
            "workflows/fragile.yaml",
            &format!("id: wf_fragile\nname: fragile\nsteps:\n  - name: rig\n    runs_on: {{pool: f}}\n    retries: 2\n    retry_delay: 0s\n    on_worker_lost: fail\n    command: [\"sh\", \"-c\", \"echo $$ > {m}/rig.pid; exec sleep 30\"]\n"),
        )],
    );
    let dir = project.path();
    let server = Server::start(dir);
    let mut worker = WorkerProcess::start(dir, "rig", "pool=f", 1);
    let run = execute_detached(dir, "fragile");
    let pid_file = marks.path().join("rig.pid");
    wait_for_file(&pid_file, "the step running");
    worker.kill9();
    let shown = finished_run(dir, &server, &run, Duration::from_secs(30));
    assert_eq!(shown["run"]["status"], "failed", "{shown:#}");
    let rig = step(&shown, "rig");
    assert_eq!(rig["status"], "failed");
    assert_eq!(attempts(&shown, "rig").len(), 1, "no retry: {rig:#}");
    let message = text(&rig["message"]);
    assert!(
        message.starts_with("worker_lost: worker rig sent no heartbeat")
            && message.contains("on_worker_lost: fail"),
        "{message}"
    );
    // The worker back on its work directory (which it locks) stops what it left running.
    worker.restart();
    assert!(worker.work_dir.join("worker.lock").exists());
    assert_gone(&pid_file);
    assert!(
        worker
            .stderr()
            .contains("stopped 1 step process group(s) a previous worker left running"),
        "{}",
        worker.stderr()
    );
}

#[test]
fn an_attempt_delivered_beyond_max_deliver_without_a_claim_fails_and_leaves_the_queue() {
    use async_nats::jetstream::{self, AckKind};
    use futures_util::StreamExt;

    let nats = Nats::start();
    let project = distributed_project_with(
        &nats,
        "  max_deliver: 2\n",
        &[(
            "workflows/never.yaml",
            "id: wf_never\nname: never\nsteps:\n  - name: never\n    runs_on: {pool: broken}\n    queue_timeout: 60s\n    command: [\"true\"]\n",
        )],
    );
    let dir = project.path();
    let server = Server::start(dir);
    let run = execute_detached(dir, "never");
    // A broken worker: it takes each delivery and gives it back unclaimed.
    let labels = BTreeMap::from([("pool".to_owned(), "broken".to_owned())]);
    let consumer_name = orchestrator::workers::protocol::selector_consumer(
        &orchestrator::workers::protocol::selector(&labels),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let url = nats.url();
    let remaining = runtime.block_on(async move {
        let client = async_nats::connect(url).await.unwrap();
        let js = jetstream::new(client);
        let deadline = Instant::now() + DEADLINE;
        let consumer = loop {
            let found = async {
                js.get_stream(orchestrator::workers::protocol::WORK_STREAM)
                    .await
                    .ok()?
                    .get_consumer::<jetstream::consumer::pull::Config>(&consumer_name)
                    .await
                    .ok()
            }
            .await;
            if let Some(consumer) = found {
                break consumer;
            }
            assert!(Instant::now() < deadline, "the selector's consumer appears");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        // It goes on pulling (the server gives a message up when it would deliver it
        // again), giving back whatever comes, until the queue is empty.
        let mut given_back = 0;
        let mut stream = js
            .get_stream(orchestrator::workers::protocol::WORK_STREAM)
            .await
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let messages = stream.info().await.unwrap().state.messages;
            if (given_back > 0 && messages == 0) || Instant::now() > deadline {
                break (given_back, messages);
            }
            let mut batch = consumer
                .fetch()
                .max_messages(1)
                .expires(Duration::from_millis(300))
                .messages()
                .await
                .unwrap();
            if let Some(Ok(message)) = batch.next().await {
                message.ack_with(AckKind::Nak(None)).await.unwrap();
                given_back += 1;
            }
        }
    });
    let (given_back, remaining) = remaining;
    assert_eq!(given_back, 2, "delivered max_deliver times");
    let shown = finished_run(dir, &server, &run, Duration::from_secs(30));
    let never = step(&shown, "never");
    assert_eq!(never["status"], "failed", "{shown:#}");
    assert!(
        text(&never["message"])
            .contains("delivered to workers 2 times and never claimed (max_deliver 2)"),
        "{never:#}"
    );
    assert_eq!(remaining, 0, "the given-up attempt's message is removed");
}

#[test]
fn a_remote_steps_timeout_holds_on_the_worker_while_the_controller_is_away() {
    let nats = Nats::start();
    let marks = markers();
    let m = marks.path().display();
    let project = distributed_project(
        &nats,
        &[(
            "workflows/away.yaml",
            &format!("id: wf_away\nname: away\nsteps:\n  - name: away\n    runs_on: {{pool: a}}\n    timeout: 2s\n    command: [\"sh\", \"-c\", \"echo $$ > {m}/away.pid; exec sleep 60\"]\n"),
        )],
    );
    let dir = project.path();
    let server = Server::start(dir);
    let worker = WorkerProcess::start(dir, "alone", "pool=a", 1);
    execute_detached(dir, "away");
    let pid_file = marks.path().join("away.pid");
    let step_pid = wait_for_pid(&pid_file, "the step running");
    // The controller goes away: nobody is left to send the timeout's stop.
    signal(server.pid(), Signal::SIGKILL);
    wait_gone(
        step_pid,
        "the step past its timeout with no controller",
        Duration::from_secs(10),
    );
    drop(worker);
}
