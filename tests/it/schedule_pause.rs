//! Pausing and resuming schedules at run time: `POST /api/scheduler/jobs/{id}/pause` and
//! `/resume`, `schedule pause | resume` with and without a server. A paused schedule fires
//! nothing, the pause survives a restart, a resumed one fires again; the manifest's
//! `suspend: true` still holds whatever the switch says, and `paused` shows apart from
//! `suspend`.

use serde_json::Value;

use crate::support::{cli, eventually, project, server_url, Api, Server};

const TICK: &str = "name: Tick\nsteps:\n  - name: t\n    command: [\"true\"]\n";

/// POST with an empty JSON object; the status and the JSON answer.
fn post(base: &str, path: &str) -> (u16, Value) {
    let reply = Api::at(base).post(path, "{}");
    let body = serde_json::from_str(&reply.text).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
    (reply.status, body)
}

fn job(server: &Server, id: &str) -> Value {
    let jobs = server.api().get("/api/scheduler/jobs").expect(200);
    jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {jobs}"))
}

/// The due instants (Unix seconds) of the runs the schedules started, oldest first.
fn dues(server: &Server) -> Vec<i64> {
    let runs = server.api().get("/api/runs?limit=1000").expect(200);
    let mut dues: Vec<i64> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["trigger"]["kind"] == "schedule")
        .map(|r| {
            chrono::DateTime::parse_from_rfc3339(r["trigger"]["details"]["due"].as_str().unwrap())
                .unwrap()
                .timestamp()
        })
        .collect();
    dues.sort();
    dues
}

/// Waits until the wall clock has passed `instant` (what is tested here is that nothing
/// happens for a while).
fn wait_past(instant: chrono::DateTime<chrono::Utc>) {
    while chrono::Utc::now() < instant {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_paused_schedule_stops_firing_stays_paused_across_a_restart_and_fires_again_when_resumed() {
    let dir = project(&[
        ("workflows/tick.yaml", TICK),
        (
            "schedules/every.yaml",
            "name: Every Second\ncron: \"* * * * * *\"\nworkflow: wf_tick\ncatchup: all\n",
        ),
    ]);
    let mut server = Server::start(dir.path());
    let base = server_url(dir.path());
    eventually("a first fire", || (!dues(&server).is_empty()).then_some(()));

    let (status, paused) = post(&base, "/api/scheduler/jobs/sch_every-second/pause");
    assert_eq!(status, 200, "{paused}");
    assert_eq!(paused["paused"], true, "{paused}");
    assert_eq!(paused["suspend"], false, "{paused}");
    assert_eq!(paused["next_fire"], Value::Null, "{paused}");
    assert_eq!(paused["next_fires"], serde_json::json!([]), "{paused}");
    let paused_at = chrono::DateTime::parse_from_rfc3339(paused["paused_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&chrono::Utc);
    // A fire prepared within the scheduler's lead before the pause may still run; none due
    // a second or more after it.
    let cutoff = paused_at.timestamp() + 1;
    wait_past(paused_at + chrono::TimeDelta::milliseconds(2500));
    let late: Vec<i64> = dues(&server).into_iter().filter(|d| *d > cutoff).collect();
    assert!(late.is_empty(), "fired while paused: {late:?}");

    // The pause is durable: after a restart (and `catchup: all`) nothing missed runs.
    server.stop();
    let server = Server::start(dir.path());
    let restarted = chrono::Utc::now();
    let shown = job(&server, "sch_every-second");
    assert_eq!(shown["paused"], true, "{shown}");
    wait_past(restarted + chrono::TimeDelta::milliseconds(2000));
    let late: Vec<i64> = dues(&server).into_iter().filter(|d| *d > cutoff).collect();
    assert!(
        late.is_empty(),
        "fired while paused, after a restart: {late:?}"
    );

    // Resumed through the server with the command line: it fires again, from now on only.
    let resumed = cli(dir.path(), &["schedule", "resume", "sch_every-second"]).expect_code(0);
    assert!(
        resumed
            .stdout
            .contains("resumed schedule sch_every-second: next fire"),
        "{}",
        resumed.stdout
    );
    let at = chrono::Utc::now().timestamp();
    let fired = eventually("a fire after the resume", || {
        let dues = dues(&server);
        dues.iter().any(|d| *d >= at).then_some(dues)
    });
    let caught_up: Vec<i64> = fired
        .iter()
        .copied()
        .filter(|d| *d > cutoff && *d < at - 1)
        .collect();
    assert!(
        caught_up.is_empty(),
        "fires due while paused ran: {caught_up:?}"
    );
    let shown = job(&server, "sch_every-second");
    assert_eq!(shown["paused"], false, "{shown}");
    assert_eq!(shown["paused_at"], Value::Null, "{shown}");
}

#[test]
fn suspend_in_the_manifest_wins_and_paused_shows_apart_locally_and_through_the_server() {
    let dir = project(&[
        ("workflows/tick.yaml", TICK),
        (
            "schedules/nightly.yaml",
            "name: Nightly\ncron: \"0 2 * * *\"\nworkflow: wf_tick\ntimezone: Europe/Berlin\n",
        ),
        (
            "schedules/held.yaml",
            "name: Held\ncron: \"0 3 * * *\"\nworkflow: wf_tick\nsuspend: true\n",
        ),
    ]);
    let path = dir.path();
    cli(path, &["apply"]).expect_code(0);

    // Without a server: straight into the store.
    let paused = cli(path, &["schedule", "pause", "sch_nightly"]).expect_code(0);
    assert!(
        paused.stdout.contains("paused schedule sch_nightly"),
        "{}",
        paused.stdout
    );
    let listed = cli(path, &["schedule", "list"]).expect_code(0);
    let line = |name: &str| {
        listed
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{}", listed.stdout))
            .to_owned()
    };
    assert!(line("sch_nightly").contains("paused"), "{}", listed.stdout);
    assert!(line("sch_held").contains("suspended"), "{}", listed.stdout);
    let shown = cli(path, &["schedule", "show", "sch_nightly"]).expect_code(0);
    assert!(
        shown.stdout.contains("paused       yes"),
        "{}",
        shown.stdout
    );
    let missing = cli(path, &["schedule", "pause", "sch_nightlyy"]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("no schedule `sch_nightlyy`")
            && missing.stderr.contains("did you mean `sch_nightly`"),
        "{}",
        missing.stderr
    );

    // The server finds the pause in the store.
    let server = Server::start(path);
    let base = server_url(path);
    let nightly = job(&server, "sch_nightly");
    assert_eq!(nightly["paused"], true, "{nightly}");
    assert_eq!(nightly["suspend"], false, "{nightly}");
    assert_eq!(nightly["next_fire"], Value::Null, "{nightly}");

    // Resuming a suspended schedule does not make it fire: the manifest wins.
    let (status, held) = post(&base, "/api/scheduler/jobs/sch_held/resume");
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["paused"], false, "{held}");
    assert_eq!(held["suspend"], true, "{held}");
    assert_eq!(held["next_fire"], Value::Null, "{held}");
    // Paused and suspended both, each shown.
    let (status, held) = post(&base, "/api/scheduler/jobs/sch_held/pause");
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["paused"], true, "{held}");
    assert_eq!(held["suspend"], true, "{held}");
    // Pausing twice is no error.
    let (status, again) = post(&base, "/api/scheduler/jobs/sch_held/pause");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["paused_at"], held["paused_at"], "{again}");

    let (status, missing) = post(&base, "/api/scheduler/jobs/sch_nope/pause");
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "not_found", "{missing}");

    // By name, through the server: resumed, its next fires listed again (02:00 in Berlin).
    let resumed = cli(path, &["schedule", "resume", "Nightly"]).expect_code(0);
    assert!(
        resumed.stdout.contains("resumed schedule sch_nightly"),
        "{}",
        resumed.stdout
    );
    let nightly = job(&server, "sch_nightly");
    assert_eq!(nightly["paused"], false, "{nightly}");
    let fires = nightly["next_fires"].as_array().unwrap();
    assert_eq!(
        fires.len(),
        orchestrator::scheduler::NEXT_FIRES,
        "{nightly}"
    );
    for fire in fires {
        let at = chrono::DateTime::parse_from_rfc3339(fire.as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono_tz::Europe::Berlin);
        assert_eq!(at.format("%H:%M").to_string(), "02:00", "{nightly}");
    }
    assert!(nightly["next_fire"].is_string(), "{nightly}");
}
