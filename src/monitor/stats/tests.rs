//! Tests of the windowed run statistics and the agent health checks.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{json, Map};

use super::health::{check_agent, HealthCheck, HealthStatus};
use super::*;
use crate::lang::condition::parse_condition;
use crate::model::{Attempt, RunRecord, TestCase, TestSummary, Trigger};

fn at(now: DateTime<Utc>, minutes_ago: i64) -> String {
    (now - TimeDelta::minutes(minutes_ago)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn run(id: &str, workflow: &str, status: Status, finished: &str, ms: u64) -> RunRecord {
    RunRecord {
        id: id.into(),
        workflow_id: format!("wf_{workflow}"),
        workflow_name: workflow.to_uppercase(),
        status,
        parameters: Map::new(),
        trigger: Trigger {
            kind: "api".into(),
            details: Map::new(),
        },
        workflow: json!({}),
        steps: vec![],
        created_at: finished.into(),
        started_at: Some(finished.into()),
        finished_at: Some(finished.into()),
        duration_ms: Some(ms),
        message: None,
        tests: TestSummary::default(),
        rerun_of: None,
        revision: None,
        pid: None,
    }
}

struct StepSpec<'a> {
    agent: &'a str,
    status: Status,
    ms: u64,
    usage: Option<(f64, u64)>,
}

fn step(run: &RunRecord, index: u32, spec: StepSpec<'_>) -> StepRecord {
    StepRecord {
        run_id: run.id.clone(),
        index,
        name: format!("s{index}"),
        agent: spec.agent.into(),
        action: "run".into(),
        status: spec.status,
        attempts: vec![Attempt {
            number: 1,
            status: spec.status,
            started_at: run.finished_at.clone().unwrap(),
            finished_at: run.finished_at.clone().unwrap(),
            duration_ms: spec.ms,
            exit_code: None,
            message: None,
            cpu_seconds: spec.usage.map(|u| u.0),
            max_rss_bytes: spec.usage.map(|u| u.1),
            orphans_killed: None,
            worker: None,
        }],
        started_at: run.started_at.clone(),
        finished_at: run.finished_at.clone(),
        duration_ms: Some(spec.ms),
        exit_code: None,
        message: (spec.status == Status::Failed).then(|| format!("{} broke", run.id)),
        outputs: Map::new(),
        log: String::new(),
        pgid: None,
        tests: vec![],
        artifacts: vec![],
    }
}

fn case(name: &str, status: TestStatus, time: f64) -> TestCase {
    TestCase {
        suite: "suite".into(),
        classname: "cls".into(),
        name: name.into(),
        status,
        time_seconds: time,
        message: None,
        details: None,
        output: None,
        class: None,
    }
}

fn metric(text: &str) -> MetricRef {
    let condition = parse_condition(&format!("{text} > 0")).unwrap();
    condition.metrics()[0].clone()
}

fn value(stats: &RunStats, text: &str, now: DateTime<Utc>) -> Option<f64> {
    stats.value(&metric(text), now)
}

/// Five runs of `a` (two failed), one of `b`, one cancelled run of `a` that must not count.
fn sample(now: DateTime<Utc>) -> RunStats {
    let stats = RunStats::new(Duration::from_secs(3600));
    let outcomes = [
        Status::Succeeded,
        Status::Failed,
        Status::Succeeded,
        Status::TimedOut,
        Status::Succeeded,
    ];
    for (i, status) in outcomes.into_iter().enumerate() {
        let r = run(
            &format!("run_a{i}"),
            "a",
            status,
            &at(now, 50 - i as i64),
            1000 * (i as u64 + 1),
        );
        let steps = vec![
            step(
                &r,
                0,
                StepSpec {
                    agent: "shell",
                    status,
                    ms: 100 * (i as u64 + 1),
                    usage: Some((0.5, 1000 * (i as u64 + 1))),
                },
            ),
            step(
                &r,
                1,
                StepSpec {
                    agent: "http",
                    status: Status::Succeeded,
                    ms: 10,
                    usage: None,
                },
            ),
        ];
        stats.record(r.head(), &steps);
    }
    let b = run("run_b0", "b", Status::Succeeded, &at(now, 10), 20_000);
    stats.record(
        b.head(),
        &[step(
            &b,
            0,
            StepSpec {
                agent: "shell",
                status: Status::Succeeded,
                ms: 600,
                usage: Some((1.0, 500)),
            },
        )],
    );
    let c = run("run_a9", "a", Status::Cancelled, &at(now, 5), 99_000);
    stats.record(
        c.head(),
        &[
            step(
                &c,
                0,
                StepSpec {
                    agent: "shell",
                    status: Status::Cancelled,
                    ms: 9_000,
                    usage: Some((2.0, 10)),
                },
            ),
            step(
                &c,
                1,
                StepSpec {
                    agent: "http",
                    status: Status::Skipped,
                    ms: 0,
                    usage: None,
                },
            ),
        ],
    );
    stats
}

#[test]
fn percentiles_use_the_nearest_rank() {
    let mut values: Vec<f64> = (1..=20).rev().map(f64::from).collect();
    assert_eq!(percentile(&mut values, 0.95), Some(19.0));
    assert_eq!(percentile(&mut values, 0.5), Some(10.0));
    assert_eq!(percentile(&mut values, 1.0), Some(20.0));
    assert_eq!(percentile(&mut values, 0.0), Some(1.0));
    assert_eq!(percentile(&mut [7.0], 0.95), Some(7.0));
    assert_eq!(percentile(&mut [], 0.5), None);
    let mut two = [1.0, 100.0];
    assert_eq!(percentile(&mut two, 0.5), Some(1.0));
    assert_eq!(percentile(&mut two, 0.95), Some(100.0));
}

#[test]
fn workflow_metrics_by_label_id_or_name_and_pooled() {
    let now = Utc::now();
    let stats = sample(now);
    // a: 5 decided runs (the cancelled one left out), 2 failed (one timed out).
    assert_eq!(
        value(&stats, r#"workflow.runs{workflow="wf_a"}"#, now),
        Some(5.0)
    );
    assert_eq!(
        value(&stats, r#"workflow.failure_rate{workflow="wf_a"}"#, now),
        Some(0.4)
    );
    assert_eq!(
        value(&stats, r#"workflow.success_rate{workflow="A"}"#, now),
        Some(0.6)
    );
    // Durations 1..5 s: the nearest-rank p95 of five is the fifth.
    assert_eq!(
        value(
            &stats,
            r#"workflow.duration_p95_seconds{workflow="wf_a"}"#,
            now
        ),
        Some(5.0)
    );
    // Pooled: six runs, two failed, p95 of 1,2,3,4,5,20 is 20.
    assert_eq!(value(&stats, "workflow.runs", now), Some(6.0));
    assert_eq!(value(&stats, "workflow.failure_rate", now), Some(2.0 / 6.0));
    assert_eq!(
        value(&stats, "workflow.duration_p95_seconds", now),
        Some(20.0)
    );
    // A workflow without runs in the window: no rate, zero runs.
    assert_eq!(
        value(&stats, r#"workflow.runs{workflow="wf_zzz"}"#, now),
        Some(0.0)
    );
    assert_eq!(
        value(&stats, r#"workflow.failure_rate{workflow="wf_zzz"}"#, now),
        None
    );
    assert_eq!(
        value(
            &stats,
            r#"workflow.duration_p95_seconds{workflow="wf_zzz"}"#,
            now
        ),
        None
    );
    // A metric of another family, or a label a metric does not take, has no value here.
    assert_eq!(value(&stats, "system.cpu_percent", now), None);
    let odd = MetricRef {
        name: "workflow.runs".into(),
        labels: vec![("agent".into(), "x".into())],
    };
    assert_eq!(stats.value(&odd, now), None);

    let a = stats.workflow("A", now).unwrap();
    assert_eq!(
        (a.workflow_id.as_str(), a.workflow_name.as_str()),
        ("wf_a", "A")
    );
    assert_eq!((a.runs, a.succeeded, a.failed), (5, 3, 2));
    assert_eq!(a.window_seconds, 3600);
    assert!(stats.workflow("wf_zzz", now).is_none());
    assert_eq!(stats.workflow_or_empty("wf_zzz", "Z", now).runs, 0);
    assert_eq!(stats.workflows(now).len(), 2);
}

#[test]
fn agent_metrics_count_executions_durations_and_resources() {
    let now = Utc::now();
    let stats = sample(now);
    // shell: 5 steps of a + 1 of b decided (the cancelled one left out), 2 failed.
    assert_eq!(value(&stats, "agent.shell.executions", now), Some(6.0));
    assert_eq!(
        value(&stats, "agent.shell.error_rate", now),
        Some(2.0 / 6.0)
    );
    assert_eq!(
        value(&stats, "agent.shell.success_rate", now),
        Some(4.0 / 6.0)
    );
    // 100..500 ms and 600 ms: p95 of six is the sixth.
    assert_eq!(
        value(&stats, "agent.shell.duration_p95_seconds", now),
        Some(0.6)
    );
    let shell = stats.agent("shell", now).unwrap();
    assert_eq!(shell.duration_p50_seconds, Some(0.3));
    // CPU of every measured step, the cancelled one's too; the peak is the largest.
    assert_eq!(shell.cpu_seconds, Some(0.5 * 5.0 + 1.0 + 2.0));
    assert_eq!(shell.max_rss_bytes, Some(5000));
    let error = shell.last_error.unwrap();
    assert_eq!(error.run_id, "run_a3", "the latest failed step");
    assert_eq!(error.message, "step timed_out", "a step without a message");
    // http runs no process: nothing measured.
    let http = stats.agent("http", now).unwrap();
    assert_eq!(
        (http.executions, http.cpu_seconds, http.max_rss_bytes),
        (5, None, None)
    );
    assert_eq!(http.error_rate, Some(0.0));
    // Pooled over agents, and the `agent` label.
    assert_eq!(value(&stats, "agent.executions", now), Some(11.0));
    assert_eq!(value(&stats, "agent.error_rate", now), Some(2.0 / 11.0));
    assert_eq!(
        value(&stats, r#"agent.executions{agent="http"}"#, now),
        Some(5.0)
    );
    assert_eq!(value(&stats, "agent.nobody.executions", now), Some(0.0));
    assert_eq!(value(&stats, "agent.nobody.error_rate", now), None);
    assert_eq!(value(&stats, "agent.nobody.health_score", now), None);
    // health_score: http is perfect but for nothing; shell is the lowest, and the pooled
    // value is the lowest.
    let http_score = value(&stats, "agent.http.health_score", now).unwrap();
    let shell_score = value(&stats, "agent.shell.health_score", now).unwrap();
    assert_eq!(http_score, 1.0);
    assert!(shell_score < 0.8 * (4.0 / 6.0) + 0.2, "{shell_score}");
    assert_eq!(value(&stats, "agent.health_score", now), Some(shell_score));
}

#[test]
fn a_failed_step_message_is_the_last_error() {
    let now = Utc::now();
    let stats = RunStats::new(Duration::from_secs(3600));
    let r = run("run_x", "x", Status::Failed, &at(now, 1), 10);
    let s = step(
        &r,
        0,
        StepSpec {
            agent: "exec_a",
            status: Status::Failed,
            ms: 5,
            usage: None,
        },
    );
    stats.record(r.head(), &[s]);
    let error = stats.agent("exec_a", now).unwrap().last_error.unwrap();
    assert_eq!(
        (
            error.message.as_str(),
            error.run_id.as_str(),
            error.step.as_str()
        ),
        ("run_x broke", "run_x", "s0")
    );
    assert_eq!(error.at, r.finished_at.unwrap());
}

#[test]
fn health_score_formula() {
    assert_eq!(health_score(None, None, None), 1.0);
    assert_eq!(
        health_score(Some(1.0), Some(HealthStatus::Passed), None),
        1.0
    );
    assert_eq!(
        health_score(Some(1.0), Some(HealthStatus::Failed), None),
        0.0
    );
    assert!((health_score(Some(0.5), Some(HealthStatus::Skipped), None) - 0.6).abs() < 1e-9);
    // An error just now costs the full 0.2; an old one almost nothing.
    assert!((health_score(Some(0.5), None, Some(0.0)) - 0.4).abs() < 1e-9);
    let old = health_score(Some(1.0), None, Some(6.0 * 3600.0));
    assert!(old > 0.999 && old < 1.0, "{old}");
}

#[test]
fn health_checks_feed_the_score() {
    let now = Utc::now();
    let stats = RunStats::new(Duration::from_secs(3600));
    assert_eq!(
        value(&stats, "agent.health_score", now),
        None,
        "no agent known"
    );
    let check = |status| HealthCheck {
        status,
        message: "m".into(),
        checked_at: "t".into(),
    };
    stats.set_health(vec![
        ("ok".into(), check(HealthStatus::Passed)),
        ("broken".into(), check(HealthStatus::Failed)),
    ]);
    assert_eq!(value(&stats, "agent.ok.health_score", now), Some(1.0));
    assert_eq!(value(&stats, "agent.broken.health_score", now), Some(0.0));
    assert_eq!(value(&stats, "agent.health_score", now), Some(0.0));
    let broken = stats.agent("broken", now).unwrap();
    assert_eq!(broken.executions, 0);
    assert_eq!(broken.health_check.unwrap().status, HealthStatus::Failed);
    // A new round replaces the old one.
    stats.set_health(vec![("ok".into(), check(HealthStatus::Passed))]);
    assert!(stats.agent("broken", now).is_none());
    assert_eq!(value(&stats, "agent.health_score", now), Some(1.0));
}

#[test]
fn tests_metrics_pass_rate_failures_and_flaky_cases() {
    let now = Utc::now();
    let stats = RunStats::new(Duration::from_secs(3600));
    let outcomes = [
        vec![
            case("steady", TestStatus::Passed, 1.0),
            case("flip", TestStatus::Passed, 0.1),
            case("slow", TestStatus::Passed, 9.0),
        ],
        vec![
            case("steady", TestStatus::Passed, 1.5),
            case("flip", TestStatus::Failed, 0.2),
            case("off", TestStatus::Skipped, 0.0),
        ],
        vec![
            case("steady", TestStatus::Passed, 1.0),
            case("flip", TestStatus::Error, 0.2),
            case("bad", TestStatus::Failed, 0.3),
        ],
    ];
    for (i, cases) in outcomes.into_iter().enumerate() {
        let r = run(
            &format!("run_t{i}"),
            "t",
            Status::Succeeded,
            &at(now, 30 - i as i64),
            10,
        );
        let mut s = step(
            &r,
            0,
            StepSpec {
                agent: "test_runner",
                status: Status::Succeeded,
                ms: 10,
                usage: None,
            },
        );
        s.tests = cases;
        stats.record(r.head(), &[s]);
    }
    // Another workflow where `flip` always passes: flaky counts per workflow.
    let other = run("run_u", "u", Status::Succeeded, &at(now, 3), 10);
    let mut s = step(
        &other,
        0,
        StepSpec {
            agent: "test_runner",
            status: Status::Succeeded,
            ms: 10,
            usage: None,
        },
    );
    s.tests = vec![case("flip", TestStatus::Passed, 0.1)];
    stats.record(other.head(), &[s]);

    // t: passed 5 (steady×3, flip, slow), failed 3 (flip×2, bad), skipped 1.
    assert_eq!(
        value(&stats, r#"tests.pass_rate{workflow="wf_t"}"#, now),
        Some(5.0 / 8.0)
    );
    assert_eq!(
        value(&stats, r#"tests.failed{workflow="wf_t"}"#, now),
        Some(3.0)
    );
    assert_eq!(
        value(&stats, r#"tests.flaky{workflow="wf_t"}"#, now),
        Some(1.0)
    );
    assert_eq!(
        value(&stats, r#"tests.flaky{workflow="wf_u"}"#, now),
        Some(0.0)
    );
    assert_eq!(
        value(&stats, r#"tests.pass_rate{workflow="wf_u"}"#, now),
        Some(1.0)
    );
    assert_eq!(value(&stats, "tests.pass_rate", now), Some(6.0 / 9.0));
    assert_eq!(value(&stats, "tests.flaky", now), Some(1.0));
    assert_eq!(
        value(&stats, r#"tests.pass_rate{workflow="wf_none"}"#, now),
        None
    );
    assert_eq!(
        value(&stats, r#"tests.failed{workflow="wf_none"}"#, now),
        Some(0.0)
    );
    let t = stats.workflow("wf_t", now).unwrap().tests;
    assert_eq!((t.passed, t.failed, t.skipped, t.flaky), (5, 3, 1, 1));
    assert_eq!(t.slowest[0].name, "slow");
    assert_eq!(
        t.slowest
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["slow", "steady", "bad", "flip"]
    );
    assert_eq!(t.most_failing[0].name, "flip");
    assert_eq!((t.most_failing[0].failures, t.most_failing[0].runs), (2, 3));
    assert_eq!(t.most_failing.len(), 2);
}

#[test]
fn entries_leave_the_window_and_the_snapshot_is_reused_until_then() {
    let now = Utc::now();
    let stats = RunStats::new(Duration::from_secs(3600));
    let old = run("run_old", "a", Status::Failed, &at(now, 90), 10);
    let mid = run("run_mid", "a", Status::Failed, &at(now, 40), 10);
    let new = run("run_new", "a", Status::Succeeded, &at(now, 5), 10);
    for r in [&old, &mid, &new] {
        let s = step(
            r,
            0,
            StepSpec {
                agent: "shell",
                status: r.status,
                ms: 10,
                usage: None,
            },
        );
        stats.record(r.head(), &[s]);
    }
    // The run of 90 minutes ago is out at once.
    assert_eq!(value(&stats, "workflow.runs", now), Some(2.0));
    assert_eq!(value(&stats, "workflow.failure_rate", now), Some(0.5));
    assert_eq!(stats.lock().runs.len(), 2, "pruned");
    // Many questions, one snapshot.
    let first = stats.lock().snapshot.clone().unwrap();
    for _ in 0..200 {
        value(&stats, "agent.shell.error_rate", now);
    }
    assert!(Arc::ptr_eq(&first, stats.lock().snapshot.as_ref().unwrap()));
    // 25 minutes on, the run of 40 minutes ago has left too.
    let later = now + TimeDelta::minutes(25);
    assert_eq!(value(&stats, "workflow.runs", later), Some(1.0));
    assert_eq!(value(&stats, "workflow.failure_rate", later), Some(0.0));
    assert_eq!(value(&stats, "agent.shell.executions", later), Some(1.0));
    assert!(!Arc::ptr_eq(
        &first,
        stats.lock().snapshot.as_ref().unwrap()
    ));
    // The last error is kept past the window.
    assert_eq!(
        stats
            .agent("shell", later)
            .unwrap()
            .last_error
            .unwrap()
            .run_id,
        "run_mid"
    );
    // Recording the same run again replaces it.
    stats.record(new.head(), &[]);
    assert_eq!(value(&stats, "workflow.runs", later), Some(1.0));
    // Unfinished runs are ignored.
    let running = RunRecord {
        status: Status::Running,
        finished_at: None,
        ..new.clone()
    };
    stats.record(
        RunRecord {
            id: "run_r".into(),
            ..running
        }
        .head(),
        &[],
    );
    assert_eq!(value(&stats, "workflow.runs", later), Some(1.0));
}

#[test]
fn the_window_is_a_parameter() {
    let now = Utc::now();
    let stats = RunStats::new(Duration::from_secs(300));
    assert_eq!(stats.window(), Duration::from_secs(300));
    for (id, minutes) in [("run_1", 2), ("run_2", 6)] {
        stats.record(
            run(id, "a", Status::Succeeded, &at(now, minutes), 10).head(),
            &[],
        );
    }
    assert_eq!(value(&stats, "workflow.runs", now), Some(1.0));
}

#[test]
fn bootstrap_loads_the_runs_of_the_window_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let now = Utc::now();
    let recent = run("run_01recent", "a", Status::Failed, &at(now, 10), 10);
    let old = run("run_00old", "a", Status::Succeeded, &at(now, 120), 10);
    let mut running = run("run_02running", "a", Status::Running, &at(now, 1), 10);
    running.finished_at = None;
    let s = step(
        &recent,
        0,
        StepSpec {
            agent: "shell",
            status: Status::Failed,
            ms: 10,
            usage: Some((0.25, 4096)),
        },
    );
    store.save_run(Some(&recent), &[&s], true).unwrap();
    store.save_run(Some(&old), &[], true).unwrap();
    store.save_run(Some(&running), &[], true).unwrap();
    let stats = RunStats::new(DEFAULT_WINDOW);
    assert_eq!(stats.bootstrap(&store, now).unwrap(), 1);
    // Found by when it finished, not when it was created (its id is the oldest).
    let mut long = run(
        "run_00long",
        "a",
        Status::Succeeded,
        &at(now, 5),
        3 * 3600 * 1000,
    );
    long.created_at = at(now, 185);
    store.save_run(Some(&long), &[], true).unwrap();
    assert_eq!(
        RunStats::new(DEFAULT_WINDOW)
            .bootstrap(&store, now)
            .unwrap(),
        2
    );
    assert_eq!(value(&stats, "workflow.failure_rate", now), Some(1.0));
    let shell = stats.agent("shell", now).unwrap();
    assert_eq!(
        (shell.executions, shell.cpu_seconds, shell.max_rss_bytes),
        (1, Some(0.25), Some(4096))
    );
}

#[test]
fn new_failures_and_quarantined_sum_the_runs_classification_per_workflow() {
    let now = Utc::now();
    let stats = RunStats::new(Duration::from_secs(3600));
    let counts = [("a", 2, 1), ("a", 1, 0), ("b", 0, 3)];
    for (i, (workflow, new_failures, quarantined)) in counts.into_iter().enumerate() {
        let mut r = run(
            &format!("run_c{i}"),
            workflow,
            Status::Failed,
            &at(now, 10 - i as i64),
            10,
        );
        r.tests = TestSummary {
            total: 5,
            failed: new_failures + quarantined,
            new_failures,
            quarantined,
            ..TestSummary::default()
        };
        stats.record(r.head(), &[]);
    }
    // A run that was cancelled says nothing about the workflow.
    let mut cancelled = run("run_cx", "a", Status::Cancelled, &at(now, 1), 10);
    cancelled.tests.new_failures = 7;
    stats.record(cancelled.head(), &[]);
    let check = |text: &str, expected: f64| {
        assert_eq!(value(&stats, text, now), Some(expected), "{text}");
    };
    check(r#"tests.new_failures{workflow="wf_a"}"#, 3.0);
    check(r#"tests.quarantined{workflow="wf_a"}"#, 1.0);
    check(r#"tests.new_failures{workflow="B"}"#, 0.0);
    check(r#"tests.quarantined{workflow="wf_b"}"#, 3.0);
    check("tests.new_failures", 3.0);
    check("tests.quarantined", 4.0);
    check(r#"tests.quarantined{workflow="wf_none"}"#, 0.0);
    let condition = parse_condition(r#"tests.quarantined{workflow="wf_b"} >= 3"#).unwrap();
    assert_eq!(
        condition.evaluate(&|m: &MetricRef| stats.value(m, now)),
        Some(true)
    );
    let t = stats.workflow("wf_a", now).unwrap().tests;
    assert_eq!((t.new_failures, t.quarantined), (3, 1));
    let text = stats.prometheus(now);
    assert!(
        text.contains("orchestrator_workflow_tests_new_failures{workflow=\"wf_a\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("orchestrator_workflow_tests_quarantined{workflow=\"wf_b\"} 3"),
        "{text}"
    );
}

#[test]
fn every_metric_of_the_condition_language_answers() {
    // The names the condition language accepts for these families (condition.rs).
    let workflow = [
        "workflow.failure_rate",
        "workflow.success_rate",
        "workflow.duration_p95_seconds",
        "workflow.runs",
    ];
    let tests = [
        "tests.pass_rate",
        "tests.failed",
        "tests.flaky",
        "tests.new_failures",
        "tests.quarantined",
    ];
    let suffixes = [
        "error_rate",
        "success_rate",
        "duration_p95_seconds",
        "executions",
        "health_score",
    ];
    let mut names: Vec<String> = Vec::new();
    for name in workflow.iter().chain(&tests) {
        names.push((*name).to_owned());
        names.push(format!(r#"{name}{{workflow="wf_t"}}"#));
        names.push(format!(r#"{name}{{workflow="T"}}"#));
    }
    for suffix in suffixes {
        names.push(format!("agent.{suffix}"));
        names.push(format!(r#"agent.{suffix}{{agent="test_runner"}}"#));
        names.push(format!("agent.test_runner.{suffix}"));
    }
    let now = Utc::now();
    // Without data: counts are 0, rates, percentiles and scores have no value.
    let empty = RunStats::new(DEFAULT_WINDOW);
    for name in &names {
        let got = value(&empty, name, now);
        let is_count = name.contains("runs")
            || name.contains("tests.failed")
            || name.contains("flaky")
            || name.contains("new_failures")
            || name.contains("quarantined")
            || name.contains("executions");
        if is_count {
            assert_eq!(got, Some(0.0), "{name}");
        } else {
            assert_eq!(got, None, "{name}");
        }
    }
    // With a run: every one answers, and rates are within 0..=1.
    let stats = RunStats::new(DEFAULT_WINDOW);
    let r = run("run_t", "t", Status::Failed, &at(now, 1), 2500);
    let mut s = step(
        &r,
        0,
        StepSpec {
            agent: "test_runner",
            status: Status::Failed,
            ms: 2000,
            usage: Some((0.1, 1)),
        },
    );
    s.tests = vec![
        case("a", TestStatus::Passed, 0.1),
        case("b", TestStatus::Failed, 0.1),
    ];
    stats.record(r.head(), &[s]);
    for name in &names {
        let got = value(&stats, name, now).unwrap_or_else(|| panic!("{name} has no value"));
        if name.contains("rate") || name.contains("score") {
            assert!((0.0..=1.0).contains(&got), "{name} = {got}");
        }
    }
    assert_eq!(
        value(&stats, "workflow.duration_p95_seconds", now),
        Some(2.5)
    );
    assert_eq!(
        value(&stats, "agent.test_runner.duration_p95_seconds", now),
        Some(2.0)
    );
    assert_eq!(
        value(&stats, r#"tests.pass_rate{workflow="T"}"#, now),
        Some(0.5)
    );
    // Through the MetricSource interface too.
    assert_eq!(
        crate::monitor::MetricSource::value(&stats, &metric("workflow.runs")),
        Some(1.0)
    );
}

#[test]
fn prometheus_series_carry_agent_and_workflow_labels() {
    let now = Utc::now();
    let stats = sample(now);
    stats.set_health(vec![(
        "bad\"name".into(),
        HealthCheck {
            status: HealthStatus::Failed,
            message: String::new(),
            checked_at: String::new(),
        },
    )]);
    let text = stats.prometheus(now);
    assert!(
        text.contains("# TYPE orchestrator_agent_executions gauge\n"),
        "{text}"
    );
    assert!(
        text.contains("orchestrator_agent_executions{agent=\"shell\"} 6\n"),
        "{text}"
    );
    assert!(
        text.contains("orchestrator_agent_max_rss_bytes{agent=\"shell\"} 5000\n"),
        "{text}"
    );
    assert!(
        text.contains("orchestrator_agent_step_duration_p95_seconds{agent=\"shell\"} 0.6\n"),
        "{text}"
    );
    assert!(
        text.contains("orchestrator_agent_healthy{agent=\"bad\\\"name\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("orchestrator_workflow_runs{workflow=\"wf_a\"} 5\n"),
        "{text}"
    );
    assert!(
        text.contains("orchestrator_workflow_failure_rate{workflow=\"wf_a\"} 0.4\n"),
        "{text}"
    );
    // http ran no process: no CPU sample for it.
    assert!(
        !text.contains("orchestrator_agent_cpu_seconds{agent=\"http\"}"),
        "{text}"
    );
}

#[test]
fn health_checks_of_each_agent_type() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path();
    let shell = check_agent("shell", None, project);
    assert_eq!(shell.status, HealthStatus::Passed, "{}", shell.message);
    assert_eq!(
        check_agent("http", None, project).status,
        HealthStatus::Skipped
    );
    assert_eq!(
        check_agent("report_generator", None, project).status,
        HealthStatus::Passed
    );
    assert_eq!(
        check_agent("test_runner", None, project).status,
        HealthStatus::Skipped
    );

    let runner = json!({"type": "test_runner",
        "environments": {"dev": {"command": "true"}},
        "suites": {"unit": {"command": ["python3", "-V"]}, "e2e": {"command": ["no-such-tool-xyz", "run"]}}});
    let checked = check_agent("test_runner", Some(&runner), project);
    assert_eq!(checked.status, HealthStatus::Failed);
    assert!(
        checked
            .message
            .contains("suite `e2e`: `no-such-tool-xyz` not found on PATH"),
        "{}",
        checked.message
    );
    assert!(!checked.message.contains("unit"), "{}", checked.message);

    let missing = json!({"type": "exec", "command": ["./plugins/missing.py"]});
    let checked = check_agent("plug", Some(&missing), project);
    assert_eq!(checked.status, HealthStatus::Failed);
    assert!(checked.message.contains("not found"), "{}", checked.message);

    // A plugin that reads the request and answers.
    std::fs::write(project.join("answer.py"), "import json, sys\nreq = json.load(sys.stdin)\nprint(json.dumps({'status': 'succeeded' if req.get('health') else 'failed', 'message': 'fine'}))\n").unwrap();
    let answers = json!({"type": "exec", "command": ["python3", "answer.py"]});
    let checked = check_agent("plug", Some(&answers), project);
    assert_eq!(checked.status, HealthStatus::Passed, "{}", checked.message);
    assert!(
        checked.message.contains("succeeded: fine"),
        "{}",
        checked.message
    );

    // A plugin that crashes without answering.
    let crashes =
        json!({"type": "exec", "command": ["sh", "-c", "echo 'no module named foo' >&2; exit 3"]});
    let checked = check_agent("plug", Some(&crashes), project);
    assert_eq!(checked.status, HealthStatus::Failed);
    assert!(
        checked.message.contains("exit code 3") && checked.message.contains("no module named foo"),
        "{}",
        checked.message
    );

    // One that answers `failed` (it has no health action) still runs: it passes.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/agents/file_checks/file_checks.py");
    let plugin = json!({"type": "exec", "command": ["python3", example.display().to_string()]});
    let checked = check_agent("file_checks", Some(&plugin), project);
    assert_eq!(checked.status, HealthStatus::Passed, "{}", checked.message);

    let all = super::health::check_all(&BTreeMap::from([("plug".to_owned(), crashes)]), project);
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["http", "plug", "report_generator", "shell", "test_runner"]
    );
}

#[test]
fn records_written_before_usage_was_measured_still_load() {
    let attempt: Attempt = serde_json::from_value(json!({
        "number": 1, "status": "succeeded", "started_at": "t", "finished_at": "t",
        "duration_ms": 5
    }))
    .unwrap();
    assert_eq!((attempt.cpu_seconds, attempt.max_rss_bytes), (None, None));
    // And absent fields stay absent when written again.
    let text = serde_json::to_string(&attempt).unwrap();
    assert!(
        !text.contains("cpu_seconds") && !text.contains("max_rss"),
        "{text}"
    );
}
