//! What `/metrics` reports, encoded by `prometheus-client` in the Prometheus text format
//! (version 0.0.4, `text/plain`, the format `promtool check metrics` reads): [`Metrics`], the
//! counters and histograms the server keeps in a registry, and [`Scrape`], the figures read
//! at scrape time (gauges, and counters kept elsewhere such as the event bus's), encoded the
//! same way after them.
//!
//! A counter is registered under its name without `_total` and encoded with it (the crate's
//! rule); a figure of a [`Scrape`] whose name ends in `_total` is a counter, any other a
//! gauge. A value that is a whole number is written as one (`5`, not `5.0`), as before the
//! crate was used and as the documentation shows.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    CounterValueEncoder, DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet,
    GaugeValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::model::{RunRecord, Status, StepRecord};

/// The `Content-Type` of the exposition: the Prometheus text format, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Run durations bucketed as a Prometheus histogram (seconds).
const BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

/// Step durations bucketed as a Prometheus histogram (seconds): steps are often short.
const STEP_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Methods counted under their own name in `orchestrator_http_requests_total`; any other
/// is counted as `other`, so a client cannot grow the label set.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// The labels of `orchestrator_http_requests_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: u16,
}

/// The label of `orchestrator_runs_finished_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabel {
    status: &'static str,
}

/// The label of `orchestrator_agent_step_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

fn step_histogram() -> Histogram {
    Histogram::new(STEP_BUCKETS)
}

/// Everything `/metrics` reports besides what it reads at scrape time: counters and
/// histograms, registered once in a `prometheus-client` registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Runs started.
    pub runs_started: Counter,
    /// Runs finished, by status.
    finished: Family<StatusLabel, Counter>,
    durations: Histogram,
    /// Reconciles done.
    pub reconciles: Counter,
    /// Reconciles that found errors in manifests.
    pub reconcile_errors: Counter,
    /// HTTP requests answered, by method and status code.
    http_requests: Family<RequestLabels, Counter>,
    /// Durations of finished steps, by agent.
    step_durations: Family<AgentLabel, Histogram, fn() -> Histogram>,
    /// HTTP requests answered with 5xx.
    pub http_errors: Counter,
    /// Webhook deliveries received.
    pub webhook_deliveries: Counter,
    /// Internal errors (store, threads).
    pub errors: Counter,
    /// Fetches of a git source that failed.
    pub source_fetch_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            runs_started: Counter::default(),
            finished: Family::default(),
            durations: Histogram::new(BUCKETS),
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            http_requests: Family::default(),
            step_durations: Family::new_with_constructor(step_histogram),
            http_errors: Counter::default(),
            webhook_deliveries: Counter::default(),
            errors: Counter::default(),
            source_fetch_errors: Counter::default(),
        };
        // Clones share their values: the registry encodes what the fields count. The
        // registry adds the full stop that ends each help.
        let mut registry = Registry::default();
        registry.register(
            "orchestrator_runs_started",
            "Runs started",
            metrics.runs_started.clone(),
        );
        registry.register(
            "orchestrator_runs_finished",
            "Runs finished, by status",
            metrics.finished.clone(),
        );
        registry.register(
            "orchestrator_run_duration_seconds",
            "Duration of finished runs",
            metrics.durations.clone(),
        );
        registry.register(
            "orchestrator_agent_step_duration_seconds",
            "Duration of the steps an agent ran to an outcome (succeeded, failed or timed out), retries included",
            metrics.step_durations.clone(),
        );
        registry.register(
            "orchestrator_reconciles",
            "Reconciles of the manifest source",
            metrics.reconciles.clone(),
        );
        registry.register(
            "orchestrator_reconcile_errors",
            "Reconciles that found invalid manifests",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "orchestrator_http_requests",
            "HTTP requests answered, by method and status code",
            metrics.http_requests.clone(),
        );
        registry.register(
            "orchestrator_http_errors",
            "HTTP requests answered with a server error",
            metrics.http_errors.clone(),
        );
        registry.register(
            "orchestrator_webhook_deliveries",
            "Webhook deliveries received",
            metrics.webhook_deliveries.clone(),
        );
        registry.register(
            "orchestrator_errors",
            "Internal errors",
            metrics.errors.clone(),
        );
        registry.register(
            "orchestrator_source_fetch_errors",
            "Fetches of the git source that failed",
            metrics.source_fetch_errors.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// Counts a finished run.
    pub fn record_run(&self, run: &RunRecord) {
        self.finished
            .get_or_create(&StatusLabel {
                status: run.status.as_str(),
            })
            .inc();
        let seconds = run.duration_ms.unwrap_or(0) as f64 / 1000.0;
        self.durations.observe(seconds);
    }

    /// Counts the steps of a finished run that ran to an outcome (succeeded, failed or
    /// timed out) in their agent's step-duration histogram.
    pub fn record_steps(&self, steps: &[StepRecord]) {
        for step in steps {
            let decided = matches!(
                step.status,
                Status::Succeeded | Status::Failed | Status::TimedOut
            );
            if let (true, Some(ms)) = (decided, step.duration_ms) {
                self.step_durations
                    .get_or_create(&AgentLabel {
                        agent: step.agent.clone(),
                    })
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
        self.http_requests
            .get_or_create(&RequestLabels {
                method,
                code: status,
            })
            .inc();
    }

    /// The exposition: the registered counters and histograms, then `scraped`, the
    /// (name, help, value) figures read at scrape time (a counter when the name ends in
    /// `_total`, Prometheus' convention, else a gauge).
    pub fn render(&self, scraped: &[(&str, &str, f64)]) -> String {
        let mut figures = Scrape::default();
        for (name, help, value) in scraped {
            figures.figure(name, help, *value);
        }
        let mut out = String::new();
        // Writing into a `String` cannot fail; an encoder error would only cut the text short.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out.push_str(&figures.render());
        out
    }
}

/// A number written as an integer when it is a whole one (`5`, not `5.0`), else as a float
/// (`0.5`, `+Inf`, `NaN`).
#[derive(Debug, Clone, Copy)]
struct Number(f64);

impl Number {
    /// The value as an integer, when it is a whole number an `f64` holds exactly.
    fn whole(self) -> Option<i64> {
        const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
        (self.0.fract() == 0.0 && self.0.abs() < EXACT).then_some(self.0 as i64)
    }
}

impl EncodeGaugeValue for Number {
    fn encode(&self, encoder: &mut GaugeValueEncoder) -> Result<(), std::fmt::Error> {
        match self.whole() {
            Some(whole) => EncodeGaugeValue::encode(&whole, encoder),
            None => EncodeGaugeValue::encode(&self.0, encoder),
        }
    }
}

impl EncodeCounterValue for Number {
    fn encode(&self, encoder: &mut CounterValueEncoder) -> Result<(), std::fmt::Error> {
        match self.whole().and_then(|whole| u64::try_from(whole).ok()) {
            Some(whole) => EncodeCounterValue::encode(&whole, encoder),
            None => EncodeCounterValue::encode(&self.0, encoder),
        }
    }
}

/// One family of a [`Scrape`].
#[derive(Debug)]
struct ScrapedFamily {
    /// The name as exposed (a counter's with its `_total`).
    name: String,
    help: String,
    kind: MetricType,
    /// Label pairs and value of each series.
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// Figures read at scrape time, encoded by `prometheus-client` as a collector: each family
/// has its `# HELP` and `# TYPE` lines even while it has no series, and its series in the
/// order they were added.
#[derive(Debug, Default)]
pub struct Scrape {
    families: Vec<ScrapedFamily>,
}

impl Scrape {
    /// One unlabelled figure: a counter when `name` ends in `_total`, else a gauge. `help`
    /// is written as given.
    pub fn figure(&mut self, name: &str, help: &str, value: f64) -> &mut Scrape {
        let kind = if name.ends_with("_total") {
            MetricType::Counter
        } else {
            MetricType::Gauge
        };
        self.families.push(ScrapedFamily {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            samples: vec![(Vec::new(), value)],
        });
        self
    }

    /// A gauge with one label, `label`: a series per (label value, value), a `None` value
    /// leaving its series out.
    pub fn gauge_family(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        series: impl IntoIterator<Item = (String, Option<f64>)>,
    ) -> &mut Scrape {
        self.families.push(ScrapedFamily {
            name: name.to_owned(),
            help: help.to_owned(),
            kind: MetricType::Gauge,
            samples: series
                .into_iter()
                .filter_map(|(value_of_label, value)| {
                    value.map(|value| (vec![(label, value_of_label)], value))
                })
                .collect(),
        });
        self
    }

    /// The figures in the Prometheus text format.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a `String` cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
        out
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            // The encoder adds `_total` to a counter's name.
            let name = match family.kind {
                MetricType::Counter => family.name.strip_suffix("_total").unwrap_or(&family.name),
                _ => &family.name,
            };
            let mut metric = encoder.encode_descriptor(name, &family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let mut series = metric.encode_family(labels)?;
                if family.kind == MetricType::Counter {
                    series.encode_counter::<NoLabelSet, _, f64>(&Number(*value), None)?;
                } else {
                    series.encode_gauge(&Number(*value))?;
                }
            }
        }
        Ok(())
    }
}

/// The process's own figures, Prometheus' `process_*` names: CPU seconds (a counter, by
/// its `_total`), resident and virtual memory, open file descriptors, threads, start time,
/// read through sysinfo's process API ([`super::system::OwnProcess`]).
pub fn process_gauges() -> Vec<(&'static str, &'static str, f64)> {
    let Some(own) = super::system::OwnProcess::read() else {
        return Vec::new();
    };
    let mut gauges = vec![
        (
            "process_cpu_seconds_total",
            "User and system CPU time spent, in seconds.",
            own.cpu_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            own.resident_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            own.virtual_bytes as f64,
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            own.start_time_seconds as f64,
        ),
    ];
    if let Some(threads) = own.threads {
        gauges.push(("process_threads", "Threads of the process.", threads as f64));
    }
    if let Some(fds) = own.open_fds {
        gauges.push(("process_open_fds", "Open file descriptors.", fds as f64));
    }
    gauges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_gauges() {
        let metrics = Metrics::default();
        metrics.runs_started.inc();
        metrics.reconciles.inc_by(3);
        let text = metrics.render(&[
            ("orchestrator_active_runs", "Runs executing.", 2.0),
            ("process_cpu_seconds_total", "CPU seconds.", 1.5),
        ]);
        assert!(
            text.contains(
                "# HELP orchestrator_runs_started_total Runs started.\n# TYPE orchestrator_runs_started_total counter\norchestrator_runs_started_total 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("orchestrator_reconciles_total 3\n"), "{text}");
        assert!(
            text.contains(
                "# HELP orchestrator_active_runs Runs executing.\n# TYPE orchestrator_active_runs gauge\norchestrator_active_runs 2\n"
            ),
            "{text}"
        );
        // A scraped figure named `_total` is a counter.
        assert!(
            text.contains(
                "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"
            ),
            "{text}"
        );
        assert!(text.contains("orchestrator_run_duration_seconds_bucket{le=\"+Inf\"} 0"));
        assert!(text.contains("orchestrator_run_duration_seconds_bucket{le=\"3600\"} 0"));
        assert!(
            text.contains("orchestrator_run_duration_seconds_count 0\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF"),
            "the 0.0.4 text format has no EOF:\n{text}"
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
            step("say \"hi\"\n", Status::Succeeded, 10),
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
            // Label values are escaped.
            "orchestrator_agent_step_duration_seconds_count{agent=\"say \\\"hi\\\"\\n\"} 1\n",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }

    #[test]
    fn scraped_families_keep_their_headers_order_and_whole_numbers() {
        let mut scrape = Scrape::default();
        scrape
            .gauge_family(
                "orchestrator_objects",
                "Objects in force, by kind.",
                "kind",
                [
                    ("Workflow".to_owned(), Some(5.0)),
                    ("Alert".to_owned(), None),
                    ("Schedule".to_owned(), Some(0.25)),
                    ("a \"b\"\\c".to_owned(), Some(-3.0)),
                ],
            )
            .gauge_family("orchestrator_empty", "Nothing yet.", "agent", [])
            .figure("orchestrator_events_published_total", "Events.", 7.0)
            .figure("orchestrator_uptime_seconds", "Up.", f64::NAN);
        assert_eq!(
            scrape.render(),
            "# HELP orchestrator_objects Objects in force, by kind.\n\
             # TYPE orchestrator_objects gauge\n\
             orchestrator_objects{kind=\"Workflow\"} 5\n\
             orchestrator_objects{kind=\"Schedule\"} 0.25\n\
             orchestrator_objects{kind=\"a \\\"b\\\"\\\\c\"} -3\n\
             # HELP orchestrator_empty Nothing yet.\n\
             # TYPE orchestrator_empty gauge\n\
             # HELP orchestrator_events_published_total Events.\n\
             # TYPE orchestrator_events_published_total counter\n\
             orchestrator_events_published_total 7\n\
             # HELP orchestrator_uptime_seconds Up.\n\
             # TYPE orchestrator_uptime_seconds gauge\n\
             orchestrator_uptime_seconds NaN\n"
        );
    }

    #[test]
    fn process_gauges_report_this_process() {
        let gauges = process_gauges();
        let get = |name: &str| gauges.iter().find(|g| g.0 == name).map(|g| g.2);
        assert!(get("process_resident_memory_bytes").unwrap() > 1e6);
        assert!(get("process_virtual_memory_bytes").unwrap() > 1e6);
        assert!(get("process_threads").unwrap() >= 1.0, "{gauges:?}");
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
