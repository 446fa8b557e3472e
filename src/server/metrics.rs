//! Counters the server keeps for `/metrics`, rendered in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::engine::model::RunRecord;

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

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
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
    /// HTTP requests answered.
    pub http_requests: Counter,
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
        let mut histogram = self.durations.lock().unwrap_or_else(|e| e.into_inner());
        for (bucket, count) in BUCKETS.iter().zip(histogram.counts.iter_mut()) {
            if seconds <= *bucket {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// The Prometheus text exposition. `gauges` are (name, help, value) read at scrape time.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
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
        {
            let histogram = self.durations.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(
                out,
                "# HELP orchestrator_run_duration_seconds Duration of finished runs.\n# TYPE orchestrator_run_duration_seconds histogram"
            );
            for (bucket, count) in BUCKETS.iter().zip(histogram.counts.iter()) {
                let _ = writeln!(
                    out,
                    "orchestrator_run_duration_seconds_bucket{{le=\"{bucket}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "orchestrator_run_duration_seconds_bucket{{le=\"+Inf\"}} {}\norchestrator_run_duration_seconds_sum {}\norchestrator_run_duration_seconds_count {}",
                histogram.count, histogram.sum, histogram.count
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
        counter(
            &mut out,
            "orchestrator_http_requests_total",
            "HTTP requests answered.",
            self.http_requests.get(),
        );
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
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
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
        let text = metrics.render(&[("orchestrator_active_runs", "Runs executing.", 2.0)]);
        assert!(
            text.contains("orchestrator_runs_started_total 1\n"),
            "{text}"
        );
        assert!(text.contains("orchestrator_reconciles_total 3\n"), "{text}");
        assert!(
            text.contains("# TYPE orchestrator_active_runs gauge\norchestrator_active_runs 2\n")
        );
        assert!(text.contains("orchestrator_run_duration_seconds_bucket{le=\"+Inf\"} 0"));
    }
}
