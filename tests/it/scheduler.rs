//! The scheduler on a real server: seconds-field schedules fire on time, a restart neither
//! loses nor repeats a fire (`catchup`), `concurrency_policy: forbid` skips overlapping
//! fires, and `schedule create | list | show` on the command line.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{cli, eventually, project, Server};

const TICK: &str = "name: Tick\nsteps:\n  - name: t\n    command: [\"true\"]\n";

/// The due instants of the runs a schedule started, oldest first.
fn dues(server: &Server, workflow: &str) -> Vec<String> {
    let runs = server
        .api()
        .get(&format!("/api/runs?workflow={workflow}&limit=1000"))
        .expect(200);
    let mut dues: Vec<String> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"]["kind"] == "schedule")
        .map(|r| r["trigger"]["details"]["due"].as_str().unwrap().to_owned())
        .collect();
    dues.sort();
    dues
}

fn seconds(due: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(due)
        .unwrap()
        .timestamp()
}

/// Waits until the wall clock has passed `instant` (the point of these tests is time).
fn wait_past(instant: chrono::DateTime<chrono::Utc>) {
    while chrono::Utc::now() < instant {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_seconds_schedule_fires_every_second_on_time() {
    let dir = project(&[
        ("workflows/tick.yaml", TICK),
        (
            "schedules/every.yaml",
            "name: Every Second\ncron: \"* * * * * *\"\nworkflow: wf_tick\n",
        ),
    ]);
    let server = Server::start(dir.path());
    let fired = eventually("three fires", || {
        let dues = dues(&server, "wf_tick");
        (dues.len() >= 3).then_some(dues)
    });
    // Consecutive seconds, none twice.
    let secs: Vec<i64> = fired.iter().map(|d| seconds(d)).collect();
    for pair in secs.windows(2) {
        assert_eq!(pair[1] - pair[0], 1, "{fired:?}");
    }
    // Each run was prepared ahead of its due instant (created at most the scheduler's lead
    // before it, or late under load) and started at the instant, not before, within a
    // second.
    let runs = eventually("the fires' runs to start", || {
        let runs = server
            .api()
            .get("/api/runs?workflow=wf_tick&limit=1000")
            .expect(200);
        let runs = runs["runs"].as_array().unwrap().clone();
        runs.iter()
            .filter(|r| r["trigger"]["kind"] == "schedule")
            .all(|r| r["started_at"].is_string())
            .then_some(runs)
    });
    let lead = orchestrator::scheduler::LEAD.as_millis() as i64;
    let at = |run: &Value, field: &str| {
        chrono::DateTime::parse_from_rfc3339(run[field].as_str().unwrap()).unwrap()
    };
    for run in runs.iter().filter(|r| r["trigger"]["kind"] == "schedule") {
        let due = chrono::DateTime::parse_from_rfc3339(
            run["trigger"]["details"]["due"].as_str().unwrap(),
        )
        .unwrap();
        let ahead = due
            .signed_duration_since(at(run, "created_at"))
            .num_milliseconds();
        assert!(
            (-1000..=lead).contains(&ahead),
            "run created {ahead} ms before due: {run}"
        );
        let late = at(run, "started_at")
            .signed_duration_since(due)
            .num_milliseconds();
        assert!(
            (0..1000).contains(&late),
            "run started {late} ms after due: {run}"
        );
    }
    let jobs = server.api().get("/api/scheduler/jobs").expect(200);
    let job = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == "sch_every-second")
        .cloned()
        .unwrap();
    assert!(job["fires"].as_u64().unwrap() >= 3, "{job}");
    assert!(job["next_fire"].is_string(), "{job}");
}

/// A fire's run is made ready ahead of its due instant (its workflow compiled, its log
/// directory made), so that only the run itself is left to do at the instant: the directory
/// is there while the instant is still to come.
#[test]
fn a_fire_is_made_ready_before_its_due_instant() {
    let dir = project(&[
        ("workflows/tick.yaml", TICK),
        (
            "schedules/every.yaml",
            "name: Every Second\ncron: \"* * * * * *\"\nworkflow: wf_tick\n",
        ),
    ]);
    let server = Server::start(dir.path());
    let logs = dir.path().join("logs/workflows");
    eventually("a fire's log directory before its due instant", || {
        let runs = server
            .api()
            .get("/api/runs?workflow=wf_tick&limit=1000")
            .expect(200);
        runs["runs"].as_array()?.iter().find_map(|run| {
            let due = run["trigger"]["details"]["due"].as_str()?;
            let due = chrono::DateTime::parse_from_rfc3339(due).ok()?;
            let ready = logs.join(run["id"].as_str()?).is_dir();
            // The clock read after the directory was seen: the instant was still to come.
            (ready && chrono::Utc::now() < due).then_some(())
        })
    });
}

fn restart_keeps_fires(catchup: &str) -> (Vec<i64>, i64, i64) {
    let dir = project(&[
        ("workflows/tick.yaml", TICK),
        (
            "schedules/every.yaml",
            &format!(
                "name: Every Second\ncron: \"* * * * * *\"\nworkflow: wf_tick\ncatchup: {catchup}\n"
            ),
        ),
    ]);
    let mut server = Server::start(dir.path());
    eventually("a first fire", || {
        (!dues(&server, "wf_tick").is_empty()).then_some(())
    });
    server.stop();
    let stopped = chrono::Utc::now();
    // Down for three due instants.
    wait_past(stopped + chrono::TimeDelta::milliseconds(3200));
    let server = Server::start(dir.path());
    let restarted = chrono::Utc::now().timestamp();
    let fired = eventually("a fire after the restart", || {
        let dues = dues(&server, "wf_tick");
        dues.iter().any(|d| seconds(d) > restarted).then_some(dues)
    });
    let secs: Vec<i64> = fired.iter().map(|d| seconds(d)).collect();
    let unique: BTreeSet<i64> = secs.iter().copied().collect();
    assert_eq!(unique.len(), secs.len(), "a fire repeated: {fired:?}");
    (secs, stopped.timestamp(), restarted)
}

#[test]
fn a_restart_with_catchup_all_runs_every_missed_fire_once() {
    let (secs, _, restarted) = restart_keeps_fires("all");
    // No gap from the first fire to the restart: every second has its run.
    let first = secs[0];
    for second in first..=restarted {
        assert!(
            secs.contains(&second),
            "second {second} has no run: {secs:?}"
        );
    }
}

#[test]
fn a_restart_with_catchup_none_skips_what_was_missed() {
    let (secs, stopped, restarted) = restart_keeps_fires("none");
    // The seconds the server was down for (with a margin for the stop itself) have no runs.
    let missed: Vec<i64> = ((stopped + 1)..(restarted - 1))
        .filter(|s| secs.contains(s))
        .collect();
    assert!(
        missed.is_empty(),
        "missed fires ran: {missed:?} of {secs:?}"
    );
}

#[test]
fn forbid_skips_a_fire_while_the_previous_run_is_active() {
    let dir = project(&[
        (
            "workflows/slow.yaml",
            "name: Slow\nsteps:\n  - name: wait\n    command: [\"sleep\", \"2.5\"]\n",
        ),
        (
            "schedules/every.yaml",
            "name: Every Second\ncron: \"* * * * * *\"\nworkflow: wf_slow\nconcurrency_policy: forbid\n",
        ),
    ]);
    let server = Server::start(dir.path());
    let job = eventually("skipped fires", || {
        let jobs = server.api().get("/api/scheduler/jobs").expect(200);
        let job = jobs["jobs"][0].clone();
        (job["skipped"].as_u64().unwrap_or(0) >= 2).then_some(job)
    });
    assert!(
        job["last_skip"]
            .as_str()
            .unwrap()
            .contains("concurrency_policy: forbid"),
        "{job}"
    );
    // The runs it did start never overlapped.
    let runs = server
        .api()
        .get("/api/runs?workflow=wf_slow&limit=100")
        .expect(200);
    let mut spans: Vec<(String, String)> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["finished_at"].is_string())
        .map(|r| {
            (
                r["started_at"].as_str().unwrap().to_owned(),
                r["finished_at"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlapping runs: {spans:?}");
    }
}

#[test]
fn schedule_create_list_and_show_without_and_with_a_server() {
    let dir = project(&[]);
    let path = dir.path();
    cli(path, &["apply"]);
    let created = cli(
        path,
        &[
            "schedule",
            "create",
            "Daily API Tests",
            "0 2 * * *",
            "wf_api-test-suite",
        ],
    )
    .expect_code(0);
    assert!(
        created
            .stdout
            .contains("created schedule sch_daily-api-tests in schedules/daily-api-tests.yaml"),
        "{}",
        created.stdout
    );
    let bad = cli(
        path,
        &["schedule", "create", "Never", "0 0 30 2 *", "wf_smoke"],
    )
    .expect_code(2);
    assert!(bad.stderr.contains("can never fire"), "{}", bad.stderr);
    assert!(!path.join("schedules/never.yaml").exists());
    let listed = cli(path, &["schedule", "list"]).expect_code(0);
    let line = listed
        .stdout
        .lines()
        .find(|l| l.starts_with("sch_daily-api-tests"))
        .unwrap_or_else(|| panic!("{}", listed.stdout));
    assert!(
        line.contains("0 2 * * *") && line.contains("wf_api-test-suite"),
        "{line}"
    );
    let local: Value = serde_json::from_str(
        &cli(
            path,
            &["schedule", "show", "sch_daily-api-tests", "-o", "json"],
        )
        .expect_code(0)
        .stdout,
    )
    .unwrap();
    let server = Server::start(path);
    let remote: Value = serde_json::from_str(
        &cli(
            path,
            &["schedule", "show", "sch_daily-api-tests", "-o", "json"],
        )
        .expect_code(0)
        .stdout,
    )
    .unwrap();
    for key in [
        "id",
        "schedule",
        "timezone",
        "workflow_id",
        "next_fire",
        "catchup",
    ] {
        assert_eq!(local[key], remote[key], "{key}: {local} vs {remote}");
    }
    // Through the server, create goes into the watched directory and is applied.
    let started = Instant::now();
    cli(
        path,
        &[
            "schedule",
            "create",
            "Health Check",
            "*/15 * * * *",
            "wf_smoke",
        ],
    )
    .expect_code(0);
    let jobs = server.api().get("/api/scheduler/jobs").expect(200);
    assert!(
        jobs["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"] == "sch_health-check"),
        "{jobs}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_fire_recorded_before_a_crash_starts_its_run_exactly_once() {
    let dir = project(&[
        ("workflows/tick.yaml", TICK),
        (
            "schedules/yearly.yaml",
            "name: Yearly\ncron: \"0 0 1 1 *\"\nworkflow: wf_tick\n",
        ),
    ]);
    cli(dir.path(), &["apply"]).expect_code(0);
    // What a process that died right after recording the fire leaves behind.
    {
        let store = orchestrator::store::Store::open(&dir.path().join("data")).unwrap();
        let state = orchestrator::scheduler::ScheduleState {
            timing: "0 0 1 1 * UTC".into(),
            next_due: Some("2027-01-01T00:00:00Z".parse().unwrap()),
            last_fired: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            pending: true,
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
        let mut server = Server::start(dir.path());
        let fired = eventually("the recorded fire's run", || {
            let dues = dues(&server, "wf_tick");
            (!dues.is_empty()).then_some(dues)
        });
        assert_eq!(fired, ["2026-01-01T00:00:00+00:00"]);
        // Stopping waits for the scheduler's pass over the schedules: a duplicate would exist.
        server.stop();
        let runs = cli(dir.path(), &["run", "list", "-o", "json"]).expect_code(0);
        let runs: Value = serde_json::from_str(&runs.stdout).unwrap();
        assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    }
}

#[test]
fn a_fire_whose_run_was_created_but_never_started_starts_it_exactly_once() {
    let dir = project(&[
        ("workflows/tick.yaml", TICK),
        (
            "schedules/yearly.yaml",
            "name: Yearly\ncron: \"0 0 1 1 *\"\nworkflow: wf_tick\n",
        ),
    ]);
    cli(dir.path(), &["apply"]).expect_code(0);
    // What a process that died between preparing a fire and its due instant leaves behind:
    // the fire recorded, pending, and its run created, queued.
    let run = {
        let store = orchestrator::store::Store::open(&dir.path().join("data")).unwrap();
        let state = orchestrator::scheduler::ScheduleState {
            timing: "0 0 1 1 * UTC".into(),
            next_due: Some("2027-01-01T00:00:00Z".parse().unwrap()),
            last_fired: Some("2026-01-01T00:00:00Z".parse().unwrap()),
            pending: true,
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
        let mut details = serde_json::Map::new();
        details.insert("schedule".into(), "sch_yearly".into());
        details.insert("name".into(), "Yearly".into());
        details.insert("due".into(), "2026-01-01T00:00:00+00:00".into());
        let request = orchestrator::engine::run::RunRequest {
            workflow: "wf_tick".into(),
            parameters: serde_json::Map::new(),
            trigger: orchestrator::model::Trigger {
                kind: "schedule".into(),
                details,
            },
        };
        orchestrator::engine::run::create_run(&store, &request)
            .unwrap()
            .0
            .id
    };
    for restart in 0..2 {
        let mut server = Server::start(dir.path());
        let shown = eventually("the fire's run to finish", || {
            let shown = server.api().get(&format!("/api/runs/{run}")).expect(200);
            (shown["run"]["status"] == "succeeded").then_some(shown)
        });
        assert_eq!(shown["steps"][0]["status"], "succeeded", "{shown}");
        server.stop();
        let runs = cli(dir.path(), &["run", "list", "-o", "json"]).expect_code(0);
        let runs: Value = serde_json::from_str(&runs.stdout).unwrap();
        assert_eq!(runs.as_array().unwrap().len(), 1, "no second run: {runs}");
        let state: orchestrator::scheduler::ScheduleState = {
            let store = orchestrator::store::Store::open(&dir.path().join("data")).unwrap();
            store
                .state(orchestrator::scheduler::STATE_TREE, "sch_yearly")
                .unwrap()
                .unwrap()
        };
        assert_eq!(state.last_run.as_deref(), Some(run.as_str()));
        if restart == 1 {
            // A pass that found the run under way or over settled the fire.
            assert!(!state.pending, "{state:?}");
        }
    }
}
