//! Monitoring benchmark: what the system sampler and 200 alert rules cost a running server.
//!
//! Two measurements on real release servers, each beside a reference server measured in the
//! same run:
//!
//! 1. **Real intervals.** A server sampling every 10 s and evaluating 200 rules every 10 s,
//!    and a reference server with no rules whose sampler and evaluator wait a day, both idle
//!    for the same wall time. Added CPU = the difference of their CPU time (utime + stime
//!    from `/proc/PID/stat`), as a percentage of one core.
//! 2. **One hour compressed.** The same 200 rules with sampling and evaluation every 100 ms
//!    and a history step of 600 ms, for 360 cycles: the samples, evaluations and persisted
//!    history points of one hour at the real intervals (360 samples, 60 one-minute points).
//!    Reports the CPU time per cycle (so the cost at a 10 s interval) and the growth of the
//!    resident memory from after the first cycles to the end.
//!
//! `MONITOR_IDLE_SECONDS` sets the wall time of the first measurement (60 s by default;
//! `bench/run` uses 30 s, three sample and evaluation intervals). Prints a markdown table (and
//! writes `BENCH_JSON`, see `support`).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{release_binary, rss_kib, run_ok, Measurement, Report, Server, Target};

/// Alert rules evaluated.
const RULES: usize = 200;
/// Rules written so that they fire at once (one in twenty).
const FIRING_RULES: usize = RULES / 20;
/// Sample and evaluation cycles of the compressed hour (3,600 s / 10 s).
const CYCLES_PER_HOUR: u32 = 360;
/// The compressed cycle.
const FAST_INTERVAL: Duration = Duration::from_millis(100);

fn main() {
    let idle_window = Duration::from_secs(
        std::env::var("MONITOR_IDLE_SECONDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(60),
    );
    let work = tempfile::tempdir().expect("temp dir");
    let binary = release_binary();

    let reference = project(&binary, &work.path().join("reference"), 0, "1d", "1d", "1m");
    let monitored = project(
        &binary,
        &work.path().join("monitored"),
        RULES,
        "10s",
        "10s",
        "1m",
    );
    let compressed = project(
        &binary,
        &work.path().join("compressed"),
        RULES,
        "100ms",
        "100ms",
        "600ms",
    );

    // 1. Real intervals: both servers idle side by side for the same wall time.
    let mut reference_server = Server::start(&binary, &reference, &[]);
    let mut monitored_server = Server::start(&binary, &monitored, &[]);
    std::thread::sleep(Duration::from_secs(2));
    let reference_before = cpu_seconds(reference_server.child.id());
    let monitored_before = cpu_seconds(monitored_server.child.id());
    std::thread::sleep(idle_window);
    let reference_cpu = cpu_seconds(reference_server.child.id()) - reference_before;
    let monitored_cpu = cpu_seconds(monitored_server.child.id()) - monitored_before;
    let monitored_rss_after = rss_kib(monitored_server.child.id());
    let reference_rss = rss_kib(reference_server.child.id());
    let firing = firing_alerts(&monitored_server.address);
    monitored_server.stop();
    reference_server.stop();
    let window = idle_window.as_secs_f64();
    let added_cpu_percent = (monitored_cpu - reference_cpu) / window * 100.0;

    // 2. One hour compressed into 360 fast cycles.
    let mut server = Server::start(&binary, &compressed, &[]);
    let warm_up = FAST_INTERVAL * 20;
    std::thread::sleep(warm_up);
    let started = Instant::now();
    let cpu_before = cpu_seconds(server.child.id());
    let rss_before = rss_kib(server.child.id());
    std::thread::sleep(FAST_INTERVAL * CYCLES_PER_HOUR);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_hour = cpu_seconds(server.child.id()) - cpu_before;
    let rss_after = rss_kib(server.child.id());
    let points = history_points(&server.address);
    server.stop();
    let cycles = elapsed / FAST_INTERVAL.as_secs_f64();
    let cpu_per_cycle_ms = cpu_hour / cycles * 1000.0;
    let cpu_at_10s_percent = cpu_per_cycle_ms / 10_000.0 * 100.0;
    let rss_growth_mib = (rss_after as f64 - rss_before as f64) / 1024.0;

    let mut report = Report::new("monitor");
    report.add(
        Measurement::new(
            format!("CPU of an idle server sampling and evaluating {RULES} rules every 10 s, % of one core"),
            "%",
            monitored_cpu / window * 100.0,
        )
        .reference("idle server, no rules, no sampling", reference_cpu / window * 100.0)
        .note(format!("CPU time (utime + stime) over {window:.0} s of wall time, in ticks of 10 ms")),
    );
    report.add(
        Measurement::new(
            format!(
                "added CPU: system sampler + {RULES} alert rules at 10 s intervals, % of one core"
            ),
            "%",
            added_cpu_percent,
        )
        .target(Target::Below(1.0))
        .bound(
            "reading /proc and statvfs for each sample and evaluating the rules against \
             cached figures, every 10 s. A longer interval or fewer rules would move it.",
        ),
    );
    report.add(
        Measurement::new(
            "alert rules firing after the idle window",
            "",
            firing as f64,
        )
        .reference("rules written to fire at once", FIRING_RULES as f64)
        .target(Target::Equal)
        .every_run(),
    );
    report.add(
        Measurement::new(
            format!("CPU per sample + evaluation cycle ({RULES} rules, one hour compressed into {CYCLES_PER_HOUR} cycles)"),
            "ms",
            cpu_per_cycle_ms,
        )
        .note("the cycles are counted as the wall time measured over the 100 ms interval"),
    );
    report.add(
        Measurement::new(
            "that cycle every 10 s, % of one core",
            "%",
            cpu_at_10s_percent,
        )
        .target(Target::Below(1.0))
        .bound(
            "the same work as the added CPU above, measured over many cycles: one sample \
             and one evaluation of every rule. A longer interval or fewer rules would \
             move it.",
        ),
    );
    report.add(
        Measurement::new(
            "RSS growth over one hour of history (compressed)",
            "MiB",
            rss_growth_mib,
        )
        .target(Target::Below(5.0))
        .bound(
            "the ring of raw samples (an hour at most) and the history points written to \
             sled, whose page cache grows with them. A shorter raw window or history \
             retention, or a smaller sled cache, would move it.",
        ),
    );
    report.add(Measurement::new(
        "history points kept after the compressed hour",
        "",
        points as f64,
    ));
    report.add(
        Measurement::new(
            "RSS, idle at 10 s intervals, at the end of the idle window",
            "MiB",
            monitored_rss_after as f64 / 1024.0,
        )
        .reference(
            "idle server, no rules, no sampling",
            reference_rss as f64 / 1024.0,
        ),
    );
    report.finish();
}

/// An `init`ed project with `rules` alert rules and the given monitoring intervals.
fn project(
    binary: &Path,
    dir: &Path,
    rules: usize,
    sample: &str,
    evaluation: &str,
    history_step: &str,
) -> std::path::PathBuf {
    run_ok(Command::new(binary).arg("init").arg(dir));
    fs::remove_file(dir.join("alerts/alerts.json")).expect("remove the example alerts");
    // The example nightly schedule and webhook trigger stay; nothing fires during the bench.
    let mut config = fs::read_to_string(dir.join("config/production.yaml")).expect("config");
    let _ = write!(
        config,
        "\nmonitoring:\n  sample_interval: {sample}\n  evaluation_interval: {evaluation}\n  history_step: {history_step}\n"
    );
    fs::write(dir.join("config/production.yaml"), config).expect("config");
    if rules > 0 {
        let mut alerts = String::from("alerts:\n");
        for index in 0..rules {
            let condition = match index % 5 {
                0 => "system.cpu_percent > 95".to_owned(),
                1 => format!(
                    "workflow.failure_rate{{workflow=\"wf_smoke\"}} > 0.{} and system.memory_percent > 10",
                    index % 9 + 1
                ),
                2 => "agent.test_runner.error_rate > 0.2 or tests.pass_rate < 0.9".to_owned(),
                3 => "(system.load_average > 50 or system.disk_percent > 99) and workflow.runs >= 0"
                    .to_owned(),
                // One rule in twenty fires at once and stays firing.
                _ if index % 20 == 4 => "system.process_count > 0".to_owned(),
                _ => "system.orchestrator_rss_bytes > 1e12".to_owned(),
            };
            // The rules that fire do so at once; the others would wait a minute.
            let duration = if condition.starts_with("system.process_count") {
                "0s"
            } else {
                "1m"
            };
            let _ = writeln!(
                alerts,
                "  - name: Rule {index:03}\n    condition: '{condition}'\n    duration: {duration}\n    severity: warning"
            );
        }
        fs::write(dir.join("alerts/bench.yaml"), alerts).expect("alerts");
    }
    dir.to_owned()
}

/// User plus system CPU time of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after the name.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    // /proc counts in USER_HZ, which is 100 on every Linux architecture.
    ticks / 100.0
}

/// Alerts firing, from `GET /api/alerts`.
fn firing_alerts(address: &str) -> usize {
    let body = http_get(address, "/api/alerts");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let list = value
        .get("alerts")
        .or(Some(&value))
        .and_then(|v| v.as_array())
        .cloned()
        .unwrap_or_default();
    list.iter()
        .filter(|alert| alert["state"] == "firing")
        .count()
}

/// Points in `GET /api/system/metrics?since=2h`.
fn history_points(address: &str) -> usize {
    let body = http_get(address, "/api/system/metrics?since=2h");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    value["points"].as_array().map_or(0, Vec::len)
}

fn http_get(address: &str, path: &str) -> String {
    ureq::get(&format!("http://{address}{path}"))
        .call()
        .ok()
        .and_then(|mut response| response.body_mut().read_to_string().ok())
        .unwrap_or_default()
}
