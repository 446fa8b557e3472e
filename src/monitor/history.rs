//! The history of system samples: points of aggregated samples (the mean of each metric,
//! and the maximum of the CPU), re-bucketing of points to a coarser step, and the
//! downsampled history persisted in the store's `metrics_history` state tree so that charts
//! survive restarts.
//!
//! A persisted point covers one `history_step` and is keyed by the start of its bucket in
//! Unix milliseconds, zero-padded to 16 digits, so that key order is time order. The history
//! keeps every point of its retention in memory too (a day of one-minute points is about
//! 1440 points of ~120 bytes): the store is read once, when the server starts.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::system::SystemSample;
use crate::store::{Store, StoreError};

/// The state tree the downsampled history is kept in.
pub const HISTORY_TREE: &str = "metrics_history";

/// Samples aggregated over a span of time: the mean of each metric, and the largest CPU
/// figure seen (a raw sample is a point of one sample).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPoint {
    /// When the point starts: the start of its bucket, or the time of a raw sample.
    #[schema(value_type = String, format = DateTime)]
    pub at: DateTime<Utc>,
    /// How many samples the point aggregates.
    pub samples: u32,
    /// Mean CPU use of the machine, percent of all cores.
    pub cpu_percent: f64,
    /// The largest CPU use of a sample in the point, percent of all cores.
    pub cpu_percent_max: f64,
    /// Mean memory in use, percent of the total.
    pub memory_percent: f64,
    /// Mean space used on the filesystem holding the data directory, percent.
    pub disk_percent: f64,
    /// Mean bytes received per second over every interface but loopback.
    pub network_rx_bytes_per_second: f64,
    /// Mean bytes sent per second over every interface but loopback.
    pub network_tx_bytes_per_second: f64,
    /// Mean one-minute load average.
    pub load_average: f64,
    /// Mean number of processes on the machine.
    pub process_count: f64,
    /// Mean CPU use of the orchestrator process, percent of all cores.
    pub orchestrator_cpu_percent: f64,
    /// Mean resident memory of the orchestrator process, bytes.
    pub orchestrator_rss_bytes: f64,
}

impl HistoryPoint {
    /// A point of one sample, at `at`.
    pub fn from_sample(sample: &SystemSample, at: DateTime<Utc>) -> HistoryPoint {
        HistoryPoint {
            at,
            samples: 1,
            cpu_percent: sample.cpu_percent,
            cpu_percent_max: sample.cpu_percent,
            memory_percent: sample.memory_percent,
            disk_percent: sample.disk_percent,
            network_rx_bytes_per_second: sample.network_rx_bytes_per_second,
            network_tx_bytes_per_second: sample.network_tx_bytes_per_second,
            load_average: sample.load_average,
            process_count: sample.process_count,
            orchestrator_cpu_percent: sample.orchestrator_cpu_percent,
            orchestrator_rss_bytes: sample.orchestrator_rss_bytes,
        }
    }

    /// Folds another point into this one: means weighted by their sample counts, the larger
    /// maximum. `at` is kept.
    pub fn merge(&mut self, other: &HistoryPoint) {
        let (n, m) = (f64::from(self.samples), f64::from(other.samples));
        let total = n + m;
        if total == 0.0 {
            return;
        }
        let mean = |a: f64, b: f64| (a * n + b * m) / total;
        self.cpu_percent = mean(self.cpu_percent, other.cpu_percent);
        self.cpu_percent_max = self.cpu_percent_max.max(other.cpu_percent_max);
        self.memory_percent = mean(self.memory_percent, other.memory_percent);
        self.disk_percent = mean(self.disk_percent, other.disk_percent);
        self.network_rx_bytes_per_second = mean(
            self.network_rx_bytes_per_second,
            other.network_rx_bytes_per_second,
        );
        self.network_tx_bytes_per_second = mean(
            self.network_tx_bytes_per_second,
            other.network_tx_bytes_per_second,
        );
        self.load_average = mean(self.load_average, other.load_average);
        self.process_count = mean(self.process_count, other.process_count);
        self.orchestrator_cpu_percent = mean(
            self.orchestrator_cpu_percent,
            other.orchestrator_cpu_percent,
        );
        self.orchestrator_rss_bytes =
            mean(self.orchestrator_rss_bytes, other.orchestrator_rss_bytes);
        self.samples = self.samples.saturating_add(other.samples);
    }
}

/// Milliseconds of a duration, at least one.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

/// The start of the bucket of width `step_ms` holding `at`.
pub(crate) fn bucket_start(at: DateTime<Utc>, step_ms: i64) -> DateTime<Utc> {
    let ms = at.timestamp_millis();
    let start = ms.div_euclid(step_ms) * step_ms;
    Utc.timestamp_millis_opt(start).single().unwrap_or(at)
}

/// Groups time-ordered points into buckets of `step` (aligned on the Unix epoch): one point
/// per bucket that holds any, at the bucket's start, aggregating them.
pub fn rebucket(
    points: impl IntoIterator<Item = HistoryPoint>,
    step: Duration,
) -> Vec<HistoryPoint> {
    let step_ms = millis(step);
    let mut out: Vec<HistoryPoint> = Vec::new();
    for point in points {
        let start = bucket_start(point.at, step_ms);
        match out.last_mut() {
            Some(last) if last.at == start => last.merge(&point),
            _ => {
                let mut first = point;
                first.at = start;
                out.push(first);
            }
        }
    }
    out
}

/// The store key of the point starting at `at`.
fn key(at: DateTime<Utc>) -> String {
    format!("{:016}", at.timestamp_millis().max(0))
}

/// What adding a sample changed that the store must follow: a point closed, points pruned.
#[derive(Debug, Default, PartialEq)]
#[must_use = "the store only follows when the writes are written"]
pub struct HistoryWrites {
    /// The point closed, under its key.
    closed: Option<(String, HistoryPoint)>,
    /// The keys of the points that left the retention.
    expired: Vec<String>,
}

impl HistoryWrites {
    /// Writes the closed point (not flushed) and removes the expired ones (durably).
    pub fn write(self, store: &Store) -> Result<(), StoreError> {
        if let Some((key, point)) = &self.closed {
            store.put_state(HISTORY_TREE, key, point, false)?;
        }
        if !self.expired.is_empty() {
            store.remove_states(HISTORY_TREE, &self.expired)?;
        }
        Ok(())
    }
}

/// The downsampled history: the closed points (persisted), and the bucket in progress.
#[derive(Debug)]
pub struct History {
    step_ms: i64,
    retention: chrono::TimeDelta,
    /// Closed points, oldest first; each is in the store.
    points: VecDeque<HistoryPoint>,
    /// The bucket samples are added to now.
    pending: Option<HistoryPoint>,
}

impl History {
    /// Reads the persisted history, dropping (durably) what is older than `retention`
    /// before `now`. A point of the bucket `now` falls in was written at a shutdown moments
    /// ago: it becomes the bucket in progress again.
    pub fn load(
        store: &Store,
        step: Duration,
        retention: Duration,
        now: DateTime<Utc>,
    ) -> Result<History, StoreError> {
        let mut history = History {
            step_ms: millis(step),
            retention: chrono::TimeDelta::from_std(retention).unwrap_or(chrono::TimeDelta::MAX),
            points: VecDeque::new(),
            pending: None,
        };
        // A point this release cannot read (written by another one) is skipped, not fatal:
        // it is history, and the server must start.
        let stored: Vec<(String, serde_json::Value)> = store.states(HISTORY_TREE, "")?;
        history.points = stored
            .into_iter()
            .filter_map(|(key, value)| match serde_json::from_value(value) {
                Ok(point) => Some(point),
                Err(err) => {
                    tracing::warn!("skipping the unreadable metrics history point {key}: {err}");
                    None
                }
            })
            .collect();
        if history
            .points
            .back()
            .is_some_and(|last| last.at == bucket_start(now, history.step_ms))
        {
            history.pending = history.points.pop_back();
        }
        history.prune(store, now)?;
        Ok(history)
    }

    /// Adds a sample: into the bucket in progress, or, when it falls in a later bucket,
    /// closing that one (written to the store, not flushed: sled flushes within half a
    /// second, and the shutdown flushes) and starting the next. Prunes what falls out of
    /// the retention.
    pub fn add(&mut self, store: &Store, sample: &SystemSample) -> Result<(), StoreError> {
        self.add_in_memory(sample).write(store)
    }

    /// [`History::add`] without the store: the history in memory changes at once, and the
    /// returned [`HistoryWrites`] carry the change to the store, so that a caller holding
    /// the history under a lock can write after releasing it.
    pub fn add_in_memory(&mut self, sample: &SystemSample) -> HistoryWrites {
        let start = bucket_start(sample.at, self.step_ms);
        let point = HistoryPoint::from_sample(sample, start);
        match &mut self.pending {
            // The bucket in progress; or a clock that went back: the sample joins it too.
            Some(pending) if pending.at >= start => {
                pending.merge(&point);
                return HistoryWrites::default();
            }
            _ => {}
        }
        let mut writes = HistoryWrites::default();
        if let Some(closed) = self.pending.replace(point) {
            writes.closed = Some((key(closed.at), closed.clone()));
            self.points.push_back(closed);
            writes.expired = self.prune_in_memory(sample.at);
        }
        writes
    }

    /// Writes the bucket in progress (at shutdown), so that a restart picks it up again.
    pub fn persist_pending(&self, store: &Store) -> Result<(), StoreError> {
        match &self.pending {
            Some(pending) => store.put_state(HISTORY_TREE, &key(pending.at), pending, false),
            None => Ok(()),
        }
    }

    /// Removes, durably, the points that end before `now - retention` (a point partly in
    /// the retention stays).
    fn prune(&mut self, store: &Store, now: DateTime<Utc>) -> Result<(), StoreError> {
        HistoryWrites {
            closed: None,
            expired: self.prune_in_memory(now),
        }
        .write(store)
    }

    /// Drops from memory the points [`History::prune`] removes; returns their keys.
    fn prune_in_memory(&mut self, now: DateTime<Utc>) -> Vec<String> {
        let cutoff = now - self.retention - chrono::TimeDelta::milliseconds(self.step_ms);
        let count = self.points.iter().take_while(|p| p.at <= cutoff).count();
        self.points.drain(..count).map(|p| key(p.at)).collect()
    }

    /// The width of a point.
    pub fn step(&self) -> Duration {
        Duration::from_millis(self.step_ms as u64)
    }

    /// The points whose bucket ends after `since` (the one in progress included), oldest
    /// first.
    pub fn since(&self, since: DateTime<Utc>) -> Vec<HistoryPoint> {
        let step = chrono::TimeDelta::milliseconds(self.step_ms);
        let cutoff = since - step;
        self.points
            .iter()
            .chain(self.pending.iter())
            .filter(|p| p.at > cutoff)
            .cloned()
            .collect()
    }

    /// When the oldest point starts.
    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.points.front().or(self.pending.as_ref()).map(|p| p.at)
    }

    /// Closed points held (in memory and in the store).
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether no point is closed yet.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample_at(at: DateTime<Utc>, cpu: f64) -> SystemSample {
        SystemSample {
            at,
            cpu_percent: cpu,
            memory_percent: 50.0,
            disk_percent: 10.0,
            network_rx_bytes_per_second: cpu * 10.0,
            network_tx_bytes_per_second: 1.0,
            load_average: 0.5,
            process_count: 100.0,
            orchestrator_cpu_percent: 1.0,
            orchestrator_rss_bytes: 1e7,
        }
    }

    fn t(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn merging_weighs_means_by_samples_and_keeps_the_max() {
        let mut a = HistoryPoint::from_sample(&sample_at(t(0), 10.0), t(0));
        let b = HistoryPoint::from_sample(&sample_at(t(1), 40.0), t(1));
        a.merge(&b);
        a.merge(&HistoryPoint::from_sample(&sample_at(t(2), 40.0), t(2)));
        assert_eq!(a.samples, 3);
        assert_eq!(a.at, t(0));
        assert!((a.cpu_percent - 30.0).abs() < 1e-9, "{a:?}");
        assert_eq!(a.cpu_percent_max, 40.0);
        assert!((a.network_rx_bytes_per_second - 300.0).abs() < 1e-9);
        // A point of two merged into a point of one weighs twice as much.
        let mut c = HistoryPoint::from_sample(&sample_at(t(0), 0.0), t(0));
        let mut two = HistoryPoint::from_sample(&sample_at(t(0), 90.0), t(0));
        two.merge(&HistoryPoint::from_sample(&sample_at(t(0), 90.0), t(0)));
        c.merge(&two);
        assert!((c.cpu_percent - 60.0).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn rebucketing_groups_points_by_aligned_step() {
        // Samples every 10 s from t(0) (1_700_000_000 is a multiple of 20 s, not of 60 s).
        let points: Vec<HistoryPoint> = (0..12)
            .map(|i| HistoryPoint::from_sample(&sample_at(t(i * 10), i as f64), t(i * 10)))
            .collect();
        let per_minute = rebucket(points.clone(), Duration::from_secs(60));
        assert!(
            per_minute.iter().all(|p| p.at.timestamp() % 60 == 0),
            "{per_minute:?}"
        );
        assert_eq!(
            per_minute.iter().map(|p| p.samples).sum::<u32>(),
            12,
            "{per_minute:?}"
        );
        // 1_700_000_000 = 28_333_333 min + 20 s: the first minute holds 4 samples.
        assert_eq!(per_minute.len(), 3);
        assert_eq!(per_minute[0].samples, 4);
        assert_eq!(per_minute[0].at, t(-20));
        assert!((per_minute[0].cpu_percent - 1.5).abs() < 1e-9);
        assert_eq!(per_minute[0].cpu_percent_max, 3.0);
        assert_eq!(per_minute[2].cpu_percent_max, 11.0);
        // A step finer than the points keeps one point each, at its bucket start.
        let fine = rebucket(points.clone(), Duration::from_secs(5));
        assert_eq!(fine.len(), 12);
        assert_eq!(fine[3].at, t(30));
        // Re-bucketing twice equals re-bucketing once to the coarser step.
        let twice = rebucket(
            rebucket(points.clone(), Duration::from_secs(20)),
            Duration::from_secs(60),
        );
        assert_eq!(twice, per_minute);
        assert!(rebucket(Vec::new(), Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn history_closes_buckets_prunes_beyond_retention_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let step = Duration::from_secs(60);
        let retention = Duration::from_secs(300);
        let base = bucket_start(t(0), 60_000);
        {
            let store = Store::open(dir.path()).unwrap();
            let mut history = History::load(&store, step, retention, base).unwrap();
            assert!(history.is_empty());
            // Three samples a minute for ten minutes.
            for i in 0..30 {
                let at = base + chrono::TimeDelta::seconds(i * 20);
                history.add(&store, &sample_at(at, i as f64)).unwrap();
            }
            // Minutes 0..=8 closed, minute 9 in progress; those ending by minute
            // 9 - 5 = 4 were pruned: minutes 4..=8 remain.
            assert_eq!(history.len(), 5, "{history:?}");
            let stored: Vec<(String, HistoryPoint)> = store.states(HISTORY_TREE, "").unwrap();
            assert_eq!(stored.len(), 5);
            assert_eq!(stored[0].1.at, base + chrono::TimeDelta::minutes(4));
            assert_eq!(stored[0].0, key(stored[0].1.at));
            assert!(stored.iter().all(|(_, p)| p.samples == 3));
            // Minute 4 holds samples 12, 13, 14.
            assert_eq!(stored[0].1.cpu_percent, 13.0);
            assert_eq!(stored[0].1.cpu_percent_max, 14.0);
            let all = history.since(base);
            assert_eq!(all.len(), 6, "closed and in progress");
            assert_eq!(all[5].samples, 3);
            // `since` keeps the point whose bucket ends after it.
            let recent = history.since(base + chrono::TimeDelta::seconds(8 * 60 + 30));
            assert_eq!(recent.len(), 2);
            history.persist_pending(&store).unwrap();
        }
        // Reopened within minute 9: the bucket in progress carries on.
        let store = crate::store::Store::open(dir.path()).unwrap();
        let now = base + chrono::TimeDelta::seconds(9 * 60 + 50);
        let mut history = History::load(&store, step, retention, now).unwrap();
        assert_eq!(history.len(), 5);
        assert_eq!(history.since(base).last().unwrap().samples, 3);
        history.add(&store, &sample_at(now, 100.0)).unwrap();
        let last = history.since(base).last().cloned().unwrap();
        assert_eq!(last.samples, 4);
        assert_eq!(last.cpu_percent_max, 100.0);
        drop(history);
        drop(store);
        // Reopened much later: everything is beyond the retention and goes.
        let store = crate::store::Store::open(dir.path()).unwrap();
        let later = base + chrono::TimeDelta::hours(2);
        let history = History::load(&store, step, retention, later).unwrap();
        assert!(history.is_empty());
        assert_eq!(history.oldest(), None);
        let stored: Vec<(String, HistoryPoint)> = store.states(HISTORY_TREE, "").unwrap();
        assert!(stored.is_empty(), "{stored:?}");
    }
}
