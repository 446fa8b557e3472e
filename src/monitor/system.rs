//! System metrics: a sampler of the machine and of this process, taken every
//! `monitoring.sample_interval`, and the [`SystemMonitor`] the server holds: the latest
//! sample, a ring of recent raw samples (the last hour at most), and the downsampled history
//! persisted in the store (see [`super::history`]).
//!
//! The sampler refreshes only what it reports: sysinfo reads `/proc/stat`, `/proc/meminfo`,
//! `/proc/loadavg` and the interfaces' counters, and its process API this process (its CPU
//! time and resident memory); one `statvfs` of the data directory gives the disk, and a
//! listing of `/proc` the number of processes (see [`process_count`] for why not sysinfo). Rates (network, CPU) are computed from the deltas
//! between two samples. [`OwnProcess`] is this process's figures for `/metrics`
//! (`process_*`), read through the same process API.
//!
//! sysinfo on Linux keeps a `/proc/<pid>/stat` file open per process it has read, up to half
//! of the descriptor limit, to read it faster next time; a server counts its descriptors
//! (`server.max_connections`, `process_open_fds`), so [`process_table`] sets that cache to
//! nothing before any process is read.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::history::{rebucket, History, HistoryPoint};
use super::MetricSource;
use crate::config::MonitoringConfig;
use crate::lang::condition::MetricRef;
use crate::store::{Store, StoreError};

/// The metric names a sample answers, as alert conditions write them.
pub const METRIC_NAMES: [&str; 9] = crate::lang::condition::SYSTEM_METRICS;

/// One sample of the machine and of the orchestrator process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SystemSample {
    /// When it was taken.
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// CPU use of the machine since the previous sample, percent of all cores (0 to 100).
    pub cpu_percent: f64,
    /// Memory in use (total less available), percent of the total.
    pub memory_percent: f64,
    /// Space used on the filesystem holding the data directory, percent (as `df` counts it).
    pub disk_percent: f64,
    /// Bytes received per second since the previous sample, every interface but loopback.
    pub network_rx_bytes_per_second: f64,
    /// Bytes sent per second since the previous sample, every interface but loopback.
    pub network_tx_bytes_per_second: f64,
    /// The one-minute load average.
    pub load_average: f64,
    /// Processes on the machine.
    pub process_count: f64,
    /// CPU use of the orchestrator process since the previous sample, percent of all cores
    /// (0 to 100).
    pub orchestrator_cpu_percent: f64,
    /// Resident memory of the orchestrator process, bytes.
    pub orchestrator_rss_bytes: f64,
}

impl SystemSample {
    /// The value of a metric by its condition name (`system.cpu_percent`, ... : see
    /// [`METRIC_NAMES`]); `None` for any other name.
    pub fn value(&self, metric_name: &str) -> Option<f64> {
        Some(match metric_name {
            "system.cpu_percent" => self.cpu_percent,
            "system.memory_percent" => self.memory_percent,
            "system.disk_percent" => self.disk_percent,
            "system.network_rx_bytes_per_second" => self.network_rx_bytes_per_second,
            "system.network_tx_bytes_per_second" => self.network_tx_bytes_per_second,
            "system.load_average" => self.load_average,
            "system.process_count" => self.process_count,
            "system.orchestrator_cpu_percent" => self.orchestrator_cpu_percent,
            "system.orchestrator_rss_bytes" => self.orchestrator_rss_bytes,
            _ => return None,
        })
    }

    /// Prometheus gauges of the sample, (name, help, value): `orchestrator_system_cpu_percent`
    /// and so on, each metric's name with `orchestrator_` before it and `_` for `.`.
    pub fn gauges(&self) -> Vec<(&'static str, &'static str, f64)> {
        [
            (
                "orchestrator_system_cpu_percent",
                "CPU use of the machine, percent of all cores.",
                self.cpu_percent,
            ),
            (
                "orchestrator_system_memory_percent",
                "Memory in use on the machine, percent.",
                self.memory_percent,
            ),
            (
                "orchestrator_system_disk_percent",
                "Space used on the filesystem holding the data directory, percent.",
                self.disk_percent,
            ),
            (
                "orchestrator_system_network_rx_bytes_per_second",
                "Bytes received per second, every interface but loopback.",
                self.network_rx_bytes_per_second,
            ),
            (
                "orchestrator_system_network_tx_bytes_per_second",
                "Bytes sent per second, every interface but loopback.",
                self.network_tx_bytes_per_second,
            ),
            (
                "orchestrator_system_load_average",
                "One-minute load average of the machine.",
                self.load_average,
            ),
            (
                "orchestrator_system_processes",
                "Processes on the machine.",
                self.process_count,
            ),
            (
                "orchestrator_system_orchestrator_cpu_percent",
                "CPU use of the orchestrator process, percent of all cores.",
                self.orchestrator_cpu_percent,
            ),
            (
                "orchestrator_system_orchestrator_rss_bytes",
                "Resident memory of the orchestrator process, bytes.",
                self.orchestrator_rss_bytes,
            ),
        ]
        .into()
    }
}

/// Takes samples. Holds what the deltas need: the previous counters and when they were
/// read.
pub struct Sampler {
    system: sysinfo::System,
    networks: sysinfo::Networks,
    data_dir: PathBuf,
    cpus: f64,
    /// When the counters were last read.
    last: Instant,
    /// CPU seconds of this process when last read.
    own_cpu_seconds: Option<f64>,
    /// This process, as sysinfo last read it.
    own_process: sysinfo::System,
}

/// An empty sysinfo table for processes, with sysinfo's cache of open `/proc/<pid>/stat`
/// files turned off (see the [module docs](self)).
pub fn process_table() -> sysinfo::System {
    sysinfo::set_open_files_limit(0);
    sysinfo::System::new()
}

/// The figures of this process that `/metrics` reports under Prometheus' `process_*` names.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnProcess {
    /// User and system CPU time spent, seconds.
    pub cpu_seconds: f64,
    /// Resident memory, bytes.
    pub resident_bytes: u64,
    /// Virtual memory, bytes.
    pub virtual_bytes: u64,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: u64,
    /// Open file descriptors, when they could be listed.
    pub open_fds: Option<usize>,
    /// Threads, when they could be listed.
    pub threads: Option<usize>,
}

impl OwnProcess {
    /// This process now, through sysinfo's process API (`None` if it cannot be read).
    ///
    /// Threads are the one figure read by hand, as the entries of `/proc/self/task`:
    /// sysinfo gives them (`Process::tasks`) only by listing the task directory of every
    /// process on the machine, whichever process is asked for.
    pub fn read() -> Option<OwnProcess> {
        let pid = sysinfo::get_current_pid().ok()?;
        let mut table = process_table();
        table.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[pid]),
            false,
            sysinfo::ProcessRefreshKind::nothing()
                .without_tasks()
                .with_cpu()
                .with_memory(),
        );
        let process = table.process(pid)?;
        Some(OwnProcess {
            cpu_seconds: process.accumulated_cpu_time() as f64 / 1000.0,
            resident_bytes: process.memory(),
            virtual_bytes: process.virtual_memory(),
            start_time_seconds: process.start_time(),
            open_fds: process.open_files(),
            threads: std::fs::read_dir("/proc/self/task")
                .ok()
                .map(Iterator::count),
        })
    }
}

impl Sampler {
    /// A sampler of the machine and of the filesystem holding `data_dir`. Reads the
    /// counters once, so that the first sample has deltas to compute its rates from.
    pub fn new(data_dir: &Path) -> Sampler {
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind};
        let system = sysinfo::System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let cpus = system.cpus().len().max(1) as f64;
        let mut sampler = Sampler {
            system,
            networks: sysinfo::Networks::new_with_refreshed_list(),
            data_dir: data_dir.to_owned(),
            cpus,
            last: Instant::now(),
            own_cpu_seconds: None,
            own_process: process_table(),
        };
        sampler.own_cpu_seconds = sampler.refresh_processes().own_cpu_seconds;
        sampler
    }

    /// Counts the processes of the machine and reads this one's CPU time and memory.
    fn refresh_processes(&mut self) -> ProcessFigures {
        let count = process_count().unwrap_or(0);
        let own = sysinfo::get_current_pid().ok().and_then(|pid| {
            self.own_process.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&[pid]),
                false,
                sysinfo::ProcessRefreshKind::nothing()
                    .without_tasks()
                    .with_cpu()
                    .with_memory(),
            );
            self.own_process.process(pid)
        });
        ProcessFigures {
            count,
            own_cpu_seconds: own.map(|p| p.accumulated_cpu_time() as f64 / 1000.0),
            own_rss_bytes: own.map(|p| p.memory() as f64),
        }
    }

    /// Takes a sample: rates are over the time since the previous one (or since
    /// [`Sampler::new`]).
    pub fn sample(&mut self) -> SystemSample {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;

        self.system.refresh_cpu_usage();
        self.system
            .refresh_memory_specifics(sysinfo::MemoryRefreshKind::nothing().with_ram());
        let total = self.system.total_memory() as f64;
        let memory_percent = if total > 0.0 {
            self.system.used_memory() as f64 / total * 100.0
        } else {
            0.0
        };

        self.networks.refresh(true);
        let (mut rx, mut tx) = (0u64, 0u64);
        for (name, data) in self.networks.list() {
            if name != "lo" {
                rx = rx.saturating_add(data.received());
                tx = tx.saturating_add(data.transmitted());
            }
        }

        let processes = self.refresh_processes();
        let own_cpu = processes.own_cpu_seconds;
        let orchestrator_cpu_percent = match (own_cpu, self.own_cpu_seconds) {
            (Some(now), Some(before)) => {
                ((now - before).max(0.0) / elapsed / self.cpus * 100.0).min(100.0)
            }
            _ => 0.0,
        };
        self.own_cpu_seconds = own_cpu;

        SystemSample {
            at: Utc::now(),
            cpu_percent: f64::from(self.system.global_cpu_usage()).clamp(0.0, 100.0),
            memory_percent,
            disk_percent: disk_percent(&self.data_dir).unwrap_or(0.0),
            network_rx_bytes_per_second: rx as f64 / elapsed,
            network_tx_bytes_per_second: tx as f64 / elapsed,
            load_average: sysinfo::System::load_average().one,
            process_count: processes.count as f64,
            orchestrator_cpu_percent,
            orchestrator_rss_bytes: processes.own_rss_bytes.unwrap_or(0.0),
        }
    }
}

/// Percent of the space used on the filesystem holding `path`, as `df` counts it: used
/// over used plus what unprivileged users may still take.
fn disk_percent(path: &Path) -> Option<f64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    let fragment = stat.fragment_size() as f64;
    let used = (stat.blocks() as f64 - stat.blocks_free() as f64) * fragment;
    let available = stat.blocks_available() as f64 * fragment;
    (used + available > 0.0).then(|| (used / (used + available) * 100.0).clamp(0.0, 100.0))
}

/// Processes on the machine: the numeric entries of `/proc`, listed by hand. sysinfo would
/// count them by refreshing every process (`ProcessesToUpdate::All`), which reads each one's
/// `/proc/<pid>/stat` and keeps an entry per process: measured at 8 to 14 ms for 120
/// processes on a loaded machine, against 0.07 ms for the listing, every sample.
fn process_count() -> Option<usize> {
    let entries = std::fs::read_dir("/proc").ok()?;
    Some(
        entries
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.as_encoded_bytes();
                !name.is_empty() && name.iter().all(u8::is_ascii_digit)
            })
            .count(),
    )
}

/// What a sample reads of the processes.
struct ProcessFigures {
    /// Processes on the machine (threads not counted): [`process_count`].
    count: usize,
    /// User and system CPU seconds of this process.
    own_cpu_seconds: Option<f64>,
    /// Resident memory of this process, bytes.
    own_rss_bytes: Option<f64>,
}

/// How the monitor samples and keeps its history.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorSettings {
    /// How often a sample is taken.
    pub sample_interval: Duration,
    /// The width of a persisted point.
    pub history_step: Duration,
    /// How long persisted points are kept.
    pub history_retention: Duration,
    /// How far back raw samples are kept in memory.
    pub raw_window: Duration,
}

/// The most raw samples kept in memory, whatever the interval.
const MAX_RAW_SAMPLES: usize = 3600;

/// The shortest sample interval honoured.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(50);

impl MonitorSettings {
    /// The settings of the `monitoring` configuration (its durations were checked when it
    /// was loaded; a zero one is raised to the shortest honoured).
    pub fn from_config(config: &MonitoringConfig) -> MonitorSettings {
        let defaults = MonitoringConfig::default();
        let read = |setting: &crate::config::DurationSetting,
                    default: &crate::config::DurationSetting| {
            setting
                .duration()
                .or_else(|_| default.duration())
                .unwrap_or(Duration::from_secs(60))
        };
        MonitorSettings {
            sample_interval: read(&config.sample_interval, &defaults.sample_interval)
                .max(MIN_SAMPLE_INTERVAL),
            history_step: read(&config.history_step, &defaults.history_step)
                .max(MIN_SAMPLE_INTERVAL),
            history_retention: read(&config.history_retention, &defaults.history_retention)
                .max(Duration::from_secs(1)),
            raw_window: Duration::from_secs(3600),
        }
    }

    /// How many raw samples the ring holds: the raw window's worth, within bounds.
    fn ring_capacity(&self) -> usize {
        let wanted = self.raw_window.as_secs_f64() / self.sample_interval.as_secs_f64();
        (wanted.ceil() as usize).clamp(2, MAX_RAW_SAMPLES)
    }
}

/// What [`SystemMonitor::query`] answers.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemSeries {
    /// The points, oldest first.
    pub points: Vec<HistoryPoint>,
    /// The width of a point: the step asked for, or the resolution of the source when that
    /// is coarser (or when no step was asked for).
    pub step: Duration,
    /// `raw` (recent samples from memory) or `history` (the persisted downsampled points).
    pub source: &'static str,
    /// The latest sample when the points were read.
    pub latest: Option<SystemSample>,
}

struct State {
    /// Recent raw samples, oldest first.
    ring: VecDeque<SystemSample>,
    capacity: usize,
    history: History,
}

/// The system metrics of the server: sampled by [`run`], read by the API, `/metrics` and
/// the alert evaluator. Safe to share between threads.
pub struct SystemMonitor {
    store: Arc<Store>,
    settings: MonitorSettings,
    sampler: Mutex<Sampler>,
    state: RwLock<State>,
}

impl SystemMonitor {
    /// The monitor of a server: reads the persisted history (dropping what is beyond the
    /// retention) and primes the sampler.
    pub fn open(
        store: Arc<Store>,
        data_dir: &Path,
        settings: MonitorSettings,
    ) -> Result<SystemMonitor, StoreError> {
        let history = History::load(
            &store,
            settings.history_step,
            settings.history_retention,
            Utc::now(),
        )?;
        let capacity = settings.ring_capacity();
        Ok(SystemMonitor {
            store,
            sampler: Mutex::new(Sampler::new(data_dir)),
            state: RwLock::new(State {
                ring: VecDeque::with_capacity(capacity),
                capacity,
                history,
            }),
            settings,
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &MonitorSettings {
        &self.settings
    }

    /// Takes a sample now and records it (see [`SystemMonitor::record`]).
    pub fn sample(&self) -> Result<SystemSample, StoreError> {
        let sample = self
            .sampler
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample();
        self.record(sample.clone())?;
        Ok(sample)
    }

    /// Records a sample: the latest, into the ring (dropping the oldest when full) and into
    /// the history (writing the point it closes, pruning what falls out of the retention).
    /// The store is written after the lock is released, so readers never wait on it.
    pub fn record(&self, sample: SystemSample) -> Result<(), StoreError> {
        let writes = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let writes = state.history.add_in_memory(&sample);
            if state.ring.len() >= state.capacity {
                state.ring.pop_front();
            }
            state.ring.push_back(sample);
            writes
        };
        writes.write(&self.store)
    }

    /// The latest sample, once one is taken.
    pub fn latest(&self) -> Option<SystemSample> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .ring
            .back()
            .cloned()
    }

    /// The samples since `since`, one point per `step` (`None`: as fine as the source
    /// has them). Recent ranges the ring of raw samples covers are served from it; longer
    /// ones from the persisted history, whose points are never split below its step.
    pub fn query(&self, since: DateTime<Utc>, step: Option<Duration>) -> SystemSeries {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        let interval = chrono::TimeDelta::from_std(self.settings.sample_interval)
            .unwrap_or(chrono::TimeDelta::MAX);
        let history_step = state.history.step();
        let latest = state.ring.back().cloned();
        let raw = state.ring.front().is_some_and(|first| {
            // The ring reaches back to `since` (its first sample covers the interval before
            // it), or the history has nothing older than the ring.
            since >= first.at - interval
                || state.history.oldest().is_none_or(|oldest| {
                    oldest + chrono::TimeDelta::from_std(history_step).unwrap_or_default()
                        > first.at
                })
        });
        if raw {
            let points = state
                .ring
                .iter()
                .filter(|s| s.at >= since)
                .map(|s| HistoryPoint::from_sample(s, s.at));
            match step {
                Some(step) if step > self.settings.sample_interval => SystemSeries {
                    points: rebucket(points, step),
                    step,
                    source: "raw",
                    latest,
                },
                _ => SystemSeries {
                    points: points.collect(),
                    step: self.settings.sample_interval,
                    source: "raw",
                    latest,
                },
            }
        } else {
            let points = state.history.since(since);
            match step {
                Some(step) if step > history_step => SystemSeries {
                    points: rebucket(points, step),
                    step,
                    source: "history",
                    latest,
                },
                _ => SystemSeries {
                    points,
                    step: history_step,
                    source: "history",
                    latest,
                },
            }
        }
    }

    /// Writes the history's bucket in progress, so that a restart carries it on (at
    /// shutdown; the store's final flush makes it durable).
    pub fn persist_pending(&self) -> Result<(), StoreError> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .history
            .persist_pending(&self.store)
    }
}

impl MetricSource for SystemMonitor {
    fn value(&self, metric: &MetricRef) -> Option<f64> {
        self.latest()?.value(&metric.name)
    }
}

/// The sampling task of the server: a sample every `sample_interval` (the first within a
/// second of the start), each published as a `system_metrics` event, until `stop` turns
/// true; then the history's bucket in progress is written. Failures are counted in
/// `metrics`.
pub async fn run(
    monitor: Arc<SystemMonitor>,
    events: crate::events::EventBus,
    metrics: Arc<super::metrics::Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let interval = monitor.settings().sample_interval;
    let mut next = tokio::time::Instant::now() + interval.min(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
        }
        let sampling = Arc::clone(&monitor);
        match tokio::task::spawn_blocking(move || sampling.sample()).await {
            Ok(Ok(sample)) => match serde_json::to_value(&sample) {
                Ok(payload) => events.publish(crate::events::Event::SystemMetrics(payload)),
                Err(err) => tracing::error!("a system sample does not serialise: {err}"),
            },
            Ok(Err(err)) => {
                tracing::error!("the system metrics history could not be written: {err}");
                metrics.errors.inc();
            }
            Err(err) => {
                tracing::error!("the system sampler failed: {err}");
                metrics.errors.inc();
            }
        }
        // A late tick (a suspended machine) does not make a burst of samples.
        let now = tokio::time::Instant::now();
        next += interval;
        if next <= now {
            next = now + interval;
        }
    }
    let persisting = Arc::clone(&monitor);
    match tokio::task::spawn_blocking(move || persisting.persist_pending()).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::error!("the system metrics history could not be written: {err}"),
        Err(err) => tracing::error!("the system metrics history could not be written: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sample_at(at: DateTime<Utc>, cpu: f64) -> SystemSample {
        SystemSample {
            at,
            cpu_percent: cpu,
            memory_percent: 40.0,
            disk_percent: 20.0,
            network_rx_bytes_per_second: 5.0,
            network_tx_bytes_per_second: 6.0,
            load_average: 0.25,
            process_count: 120.0,
            orchestrator_cpu_percent: 0.5,
            orchestrator_rss_bytes: 2e7,
        }
    }

    fn settings(interval_ms: u64, step_ms: u64, retention_s: u64) -> MonitorSettings {
        MonitorSettings {
            sample_interval: Duration::from_millis(interval_ms),
            history_step: Duration::from_millis(step_ms),
            history_retention: Duration::from_secs(retention_s),
            raw_window: Duration::from_secs(60),
        }
    }

    #[test]
    fn every_condition_metric_name_has_a_value() {
        let sample = sample_at(Utc::now(), 12.0);
        for name in METRIC_NAMES {
            assert!(sample.value(name).is_some(), "{name}");
            // The alert conditions accept each name, and only these are system metrics.
            crate::lang::condition::parse_condition(&format!("{name} > 1"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(crate::lang::condition::parse_condition("system.swap_percent > 1").is_err());
        assert_eq!(sample.value("system.cpu_percent"), Some(12.0));
        assert_eq!(sample.value("system.orchestrator_rss_bytes"), Some(2e7));
        assert_eq!(sample.value("system.swap_percent"), None);
        assert_eq!(sample.value("cpu_percent"), None);
        let gauges = sample.gauges();
        assert_eq!(gauges.len(), METRIC_NAMES.len());
        for ((gauge, _, value), name) in gauges.iter().zip(METRIC_NAMES) {
            // Prometheus keeps `_count` for summaries and histograms: the process count is
            // `orchestrator_system_processes` there.
            let expected = match name {
                "system.process_count" => "orchestrator_system_processes".to_owned(),
                name => format!("orchestrator_{}", name.replace('.', "_")),
            };
            assert_eq!(*gauge, expected);
            assert_eq!(Some(*value), sample.value(name));
        }
    }

    #[test]
    fn the_sampler_reports_sane_figures() {
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(dir.path());
        // Some work of this process between the two reads.
        let started = Instant::now();
        let mut spin = 0u64;
        while started.elapsed() < Duration::from_millis(250) {
            spin = spin.wrapping_add(std::hint::black_box(1));
        }
        assert!(spin > 0);
        let sample = sampler.sample();
        for (name, value) in [
            ("cpu", sample.cpu_percent),
            ("memory", sample.memory_percent),
            ("disk", sample.disk_percent),
            ("own cpu", sample.orchestrator_cpu_percent),
        ] {
            assert!((0.0..=100.0).contains(&value), "{name}: {sample:?}");
        }
        assert!(sample.memory_percent > 0.0, "{sample:?}");
        assert!(sample.disk_percent > 0.0, "{sample:?}");
        // This process spun a core for the whole interval.
        assert!(sample.orchestrator_cpu_percent > 0.0, "{sample:?}");
        assert!(sample.orchestrator_rss_bytes > 1e6, "{sample:?}");
        assert!(sample.process_count >= 1.0, "{sample:?}");
        assert!(sample.load_average >= 0.0, "{sample:?}");
        assert!(sample.network_rx_bytes_per_second >= 0.0);
        assert!(sample.network_tx_bytes_per_second >= 0.0);
        // Cheap: a sample is a handful of small reads.
        let started = Instant::now();
        for _ in 0..20 {
            sampler.sample();
        }
        let each = started.elapsed() / 20;
        assert!(each < Duration::from_millis(20), "a sample took {each:?}");
    }

    #[test]
    fn the_ring_keeps_the_newest_samples_and_queries_pick_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // A sample a second, 60 s of raw samples, 10 s history points.
        let monitor =
            SystemMonitor::open(Arc::clone(&store), dir.path(), settings(1000, 10_000, 3600))
                .unwrap();
        assert_eq!(monitor.latest(), None);
        let t0 = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let at = |s: i64| t0 + chrono::TimeDelta::seconds(s);
        for s in 0..100 {
            monitor.record(sample_at(at(s), s as f64)).unwrap();
        }
        assert_eq!(monitor.latest().unwrap().at, at(99));
        assert_eq!(
            crate::monitor::MetricSource::value(
                &monitor,
                &MetricRef {
                    name: "system.cpu_percent".into(),
                    labels: vec![]
                }
            ),
            Some(99.0)
        );
        // The ring holds the last 60.
        let recent = monitor.query(at(80), None);
        assert_eq!(recent.source, "raw");
        assert_eq!(recent.step, Duration::from_secs(1));
        assert_eq!(recent.points.len(), 20);
        assert_eq!(recent.points[0].at, at(80));
        let coarse = monitor.query(at(80), Some(Duration::from_secs(5)));
        assert_eq!(coarse.source, "raw");
        assert_eq!(coarse.points.len(), 4);
        assert!(coarse.points.iter().all(|p| p.samples == 5), "{coarse:?}");
        assert_eq!(coarse.points[0].cpu_percent, 82.0);
        assert_eq!(coarse.points[0].cpu_percent_max, 84.0);
        // Before the ring's first sample (t40): the history, 10 s points.
        let long = monitor.query(at(0), None);
        assert_eq!(long.source, "history");
        assert_eq!(long.step, Duration::from_secs(10));
        assert_eq!(long.points.len(), 10, "{long:?}");
        assert!(long.points.iter().all(|p| p.samples == 10));
        assert_eq!(long.points[0].cpu_percent, 4.5);
        assert_eq!(long.points[9].cpu_percent_max, 99.0);
        // A step finer than the history's is its own; a coarser one re-buckets.
        assert_eq!(
            monitor.query(at(0), Some(Duration::from_secs(1))).step,
            Duration::from_secs(10)
        );
        let per_half_minute = monitor.query(at(0), Some(Duration::from_secs(30)));
        assert_eq!(per_half_minute.step, Duration::from_secs(30));
        assert_eq!(
            per_half_minute
                .points
                .iter()
                .map(|p| p.samples)
                .sum::<u32>(),
            100
        );
        // The closed points are in the store; the one in progress is written on demand.
        let stored: Vec<(String, HistoryPoint)> = store
            .states(super::super::history::HISTORY_TREE, "")
            .unwrap();
        assert_eq!(stored.len(), 9);
        monitor.persist_pending().unwrap();
        let stored: Vec<(String, HistoryPoint)> = store
            .states(super::super::history::HISTORY_TREE, "")
            .unwrap();
        assert_eq!(stored.len(), 10);
    }

    #[test]
    fn the_history_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc::now();
        let start = now - chrono::TimeDelta::seconds(30);
        {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let monitor =
                SystemMonitor::open(Arc::clone(&store), dir.path(), settings(1000, 5000, 3600))
                    .unwrap();
            for s in 0..30 {
                monitor
                    .record(sample_at(start + chrono::TimeDelta::seconds(s), 50.0))
                    .unwrap();
            }
            monitor.persist_pending().unwrap();
        }
        let store = Arc::new(crate::store::Store::open(dir.path()).unwrap());
        let monitor = SystemMonitor::open(store, dir.path(), settings(1000, 5000, 3600)).unwrap();
        // Nothing sampled since: no latest, and the history answers.
        assert_eq!(monitor.latest(), None);
        let series = monitor.query(start - chrono::TimeDelta::minutes(1), None);
        assert_eq!(series.source, "history");
        assert_eq!(series.points.iter().map(|p| p.samples).sum::<u32>(), 30);
        assert!(series.points.iter().all(|p| p.cpu_percent == 50.0));
        // A new sample in a later bucket: the ring is short, the history still answers
        // the long range.
        monitor.record(sample_at(Utc::now(), 10.0)).unwrap();
        let series = monitor.query(start - chrono::TimeDelta::minutes(1), None);
        assert_eq!(series.source, "history");
        assert_eq!(series.points.iter().map(|p| p.samples).sum::<u32>(), 31);
        assert_eq!(
            monitor
                .query(Utc::now() - chrono::TimeDelta::seconds(1), None)
                .source,
            "raw"
        );
    }

    #[test]
    fn settings_come_from_the_configuration() {
        let mut config = MonitoringConfig::default();
        let defaults = MonitorSettings::from_config(&config);
        assert_eq!(defaults.sample_interval, Duration::from_secs(10));
        assert_eq!(defaults.history_step, Duration::from_secs(60));
        assert_eq!(defaults.history_retention, Duration::from_secs(86_400));
        assert_eq!(defaults.ring_capacity(), 360);
        config.sample_interval = crate::config::DurationSetting::Text("200ms".into());
        config.history_step = crate::config::DurationSetting::Text("0s".into());
        let fast = MonitorSettings::from_config(&config);
        assert_eq!(fast.sample_interval, Duration::from_millis(200));
        assert_eq!(fast.history_step, MIN_SAMPLE_INTERVAL);
        assert_eq!(fast.ring_capacity(), MAX_RAW_SAMPLES);
    }
}
