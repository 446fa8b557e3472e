//! Counters the server keeps for `/metrics`, rendered in the Prometheus text format. The
//! exposition passes `promtool check metrics`: counters end in `_total`, histograms have
//! their `_bucket`, `_sum` and `_count`, and no gauge borrows a suffix those reserve.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::model::{RunRecord, Status, StepRecord};
use crate::monitor::stats::escape_label;

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Run durations bucketed as a Prometheus histogram (seconds).
const BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Step durations bucketed as a Prometheus histogram (seconds): steps are often short.
const STEP_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Methods counted under their own name in `orchestrator_http_requests_total`; any other
/// is counted as `other`, so a client cannot grow the label set.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// A cumulative histogram over fixed bucket bounds.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, value: f64) {
        for (bound, count) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if value <= *bound {
                *count += 1;
            }
        }
        self.count += 1;
        self.sum += value;
    }

    /// The `_bucket`, `_sum` and `_count` lines of one series; `labels` is empty or ends
    /// with a comma.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {count}");
        }
        let braces = |labels: &str| {
            let labels = labels.trim_end_matches(',');
            if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            }
        };
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}le=\"+Inf\"}} {count}\n{name}_sum{braced} {sum}\n{name}_count{braced} {count}",
            count = self.count,
            sum = self.sum,
            braced = braces(labels),
        );
    }
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::new(&BUCKETS)
    }
}

/// Everything `/metrics` reports besides what it reads from the store at scrape time.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Runs started.
    pub runs_started: Counter,
    /// Runs finished, by status.
    finished: Mutex<BTreeMap<String, u64>>,
    durations: Mutex<Histogram>,
    /// Reconciles done.
    pub reconciles: Counter,
    /// Reconciles that found errors in manifests.
    pub reconcile_errors: Counter,
    /// HTTP requests answered, by method and status code.
    http_requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Durations of finished steps, by agent.
    step_durations: Mutex<BTreeMap<String, Histogram>>,
    /// HTTP requests answered with 5xx.
    pub http_errors: Counter,
    /// Webhook deliveries received.
    pub webhook_deliveries: Counter,
    /// Internal errors (store, threads).
    pub errors: Counter,
    /// Fetches of a git source that failed.
    pub source_fetch_errors: Counter,
}

impl Metrics {
    /// Counts a finished run.
    pub fn record_run(&self, run: &RunRecord) {
        *self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(run.status.as_str().to_owned())
            .or_default() += 1;
        let seconds = run.duration_ms.unwrap_or(0) as f64 / 1000.0;
        self.durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(seconds);
    }

    /// Counts the steps of a finished run that ran to an outcome (succeeded, failed or
    /// timed out) in their agent's step-duration histogram.
    pub fn record_steps(&self, steps: &[StepRecord]) {
        let mut histograms = self
            .step_durations
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for step in steps {
            let decided = matches!(
                step.status,
                Status::Succeeded | Status::Failed | Status::TimedOut
            );
            if let (true, Some(ms)) = (decided, step.duration_ms) {
                histograms
                    .entry(step.agent.clone())
                    .or_insert_with(|| Histogram::new(&STEP_BUCKETS))
                    .observe(ms as f64 / 1000.0);
            }
        }
    }

    /// Counts an answered HTTP request.
    pub fn record_request(&self, method: &str, status: u16) {
        let method = METHODS
            .iter()
            .find(|known| **known == method)
            .copied()
            .unwrap_or("other");
        *self
            .http_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((method, status))
            .or_default() += 1;
    }

    /// The Prometheus text exposition. `scraped` are (name, help, value) read at scrape
    /// time: a counter when the name ends in `_total` (Prometheus' convention), else a
    /// gauge.
    pub fn render(&self, scraped: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            &mut out,
            "orchestrator_runs_started_total",
            "Runs started.",
            self.runs_started.get(),
        );
        let _ = writeln!(
            out,
            "# HELP orchestrator_runs_finished_total Runs finished, by status.\n# TYPE orchestrator_runs_finished_total counter"
        );
        for (status, count) in self
            .finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "orchestrator_runs_finished_total{{status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP orchestrator_run_duration_seconds Duration of finished runs.\n# TYPE orchestrator_run_duration_seconds histogram"
        );
        self.durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .render(&mut out, "orchestrator_run_duration_seconds", "");
        let _ = writeln!(
            out,
            "# HELP orchestrator_agent_step_duration_seconds Duration of the steps an agent ran to an outcome (succeeded, failed or timed out), retries included.\n# TYPE orchestrator_agent_step_duration_seconds histogram"
        );
        for (agent, histogram) in self
            .step_durations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            histogram.render(
                &mut out,
                "orchestrator_agent_step_duration_seconds",
                &format!("agent=\"{}\",", escape_label(agent)),
            );
        }
        counter(
            &mut out,
            "orchestrator_reconciles_total",
            "Reconciles of the manifest source.",
            self.reconciles.get(),
        );
        counter(
            &mut out,
            "orchestrator_reconcile_errors_total",
            "Reconciles that found invalid manifests.",
            self.reconcile_errors.get(),
        );
        let _ = writeln!(
            out,
            "# HELP orchestrator_http_requests_total HTTP requests answered, by method and status code.\n# TYPE orchestrator_http_requests_total counter"
        );
        for ((method, code), count) in self
            .http_requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "orchestrator_http_requests_total{{method=\"{method}\",code=\"{code}\"}} {count}"
            );
        }
        counter(
            &mut out,
            "orchestrator_http_errors_total",
            "HTTP requests answered with a server error.",
            self.http_errors.get(),
        );
        counter(
            &mut out,
            "orchestrator_webhook_deliveries_total",
            "Webhook deliveries received.",
            self.webhook_deliveries.get(),
        );
        counter(
            &mut out,
            "orchestrator_errors_total",
            "Internal errors.",
            self.errors.get(),
        );
        counter(
            &mut out,
            "orchestrator_source_fetch_errors_total",
            "Fetches of the git source that failed.",
            self.source_fetch_errors.get(),
        );
        for (name, help, value) in scraped {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let metrics = Metrics::default();
        metrics.runs_started.inc();
        metrics.reconciles.add(3);
        let text = metrics.render(&[
            ("orchestrator_active_runs", "Runs executing.", 2.0),
            ("process_cpu_seconds_total", "CPU seconds.", 1.5),
        ]);
        assert!(
            text.contains("orchestrator_runs_started_total 1\n"),
            "{text}"
        );
        assert!(text.contains("orchestrator_reconciles_total 3\n"), "{text}");
        assert!(
            text.contains("# TYPE orchestrator_active_runs gauge\norchestrator_active_runs 2\n")
        );
        // A scraped figure named `_total` is a counter.
        assert!(
            text.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"
            ),
            "{text}"
        );
        assert!(text.contains("orchestrator_run_duration_seconds_bucket{le=\"+Inf\"} 0"));
        assert!(
            text.contains("orchestrator_run_duration_seconds_sum 0\n"),
            "{text}"
        );
    }

    #[test]
    fn requests_are_counted_by_method_and_code() {
        let metrics = Metrics::default();
        metrics.record_request("GET", 200);
        metrics.record_request("GET", 200);
        metrics.record_request("POST", 404);
        metrics.record_request("BREW", 405);
        let text = metrics.render(&[]);
        for line in [
            "orchestrator_http_requests_total{method=\"GET\",code=\"200\"} 2\n",
            "orchestrator_http_requests_total{method=\"POST\",code=\"404\"} 1\n",
            "orchestrator_http_requests_total{method=\"other\",code=\"405\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn step_durations_are_a_histogram_by_agent() {
        let step = |agent: &str, status: Status, ms: u64| {
            let mut step: StepRecord = serde_json::from_value(serde_json::json!({
                "run_id": "run_1", "index": 0, "name": "s", "agent": agent, "action": "run", "status": "queued", "log": "",
            }))
            .unwrap();
            step.status = status;
            step.duration_ms = Some(ms);
            step
        };
        let metrics = Metrics::default();
        metrics.record_steps(&[
            step("shell", Status::Succeeded, 20),
            step("shell", Status::Failed, 2_000),
            step("shell", Status::Skipped, 1),
            step("http", Status::TimedOut, 70),
        ]);
        let text = metrics.render(&[]);
        for line in [
            "# TYPE orchestrator_agent_step_duration_seconds histogram\n",
            "orchestrator_agent_step_duration_seconds_bucket{agent=\"shell\",le=\"0.05\"} 1\n",
            "orchestrator_agent_step_duration_seconds_bucket{agent=\"shell\",le=\"5\"} 2\n",
            "orchestrator_agent_step_duration_seconds_bucket{agent=\"shell\",le=\"+Inf\"} 2\n",
            "orchestrator_agent_step_duration_seconds_sum{agent=\"shell\"} 2.02\n",
            "orchestrator_agent_step_duration_seconds_count{agent=\"shell\"} 2\n",
            "orchestrator_agent_step_duration_seconds_count{agent=\"http\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}

/// The process's own figures, Prometheus' `process_*` names: CPU seconds (a counter, by
/// its `_total`), resident and
/// virtual memory, open file descriptors, threads, start time. Read from /proc (Linux).
pub fn process_gauges() -> Vec<(&'static str, &'static str, f64)> {
    let mut gauges = Vec::new();
    let ticks = 100.0; // USER_HZ on Linux
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |n: usize| fields.get(n).and_then(|v| v.parse::<f64>().ok());
        // After ')': state is index 0, utime 11, stime 12, num_threads 17, starttime 19.
        if let (Some(user), Some(system)) = (field(11), field(12)) {
            gauges.push((
                "process_cpu_seconds_total",
                "User and system CPU time spent, in seconds.",
                (user + system) / ticks,
            ));
        }
        if let Some(threads) = field(17) {
            gauges.push(("process_threads", "Threads of the process.", threads));
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(start), Some(boot)) = (field(19), boot) {
            gauges.push((
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                boot + start / ticks,
            ));
        }
    }
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        for (key, name, help) in [
            (
                "VmRSS:",
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
            ),
            (
                "VmSize:",
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
            ),
        ] {
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
            {
                gauges.push((name, help, kib * 1024.0));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        gauges.push((
            "process_open_fds",
            "Open file descriptors.",
            entries.count() as f64,
        ));
    }
    gauges
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn process_gauges_report_this_process() {
        let gauges = process_gauges();
        let get = |name: &str| gauges.iter().find(|g| g.0 == name).map(|g| g.2);
        assert!(get("process_resident_memory_bytes").unwrap() > 1e6);
        assert!(get("process_threads").unwrap() >= 1.0);
        assert!(get("process_open_fds").unwrap() >= 3.0);
        let start = get("process_start_time_seconds").unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
        assert!(get("process_cpu_seconds_total").unwrap() >= 0.0);
    }
}
