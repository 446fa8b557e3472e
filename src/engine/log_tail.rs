//! `run_log` events: the lines a run's steps write to their logs, read as the files grow
//! (the way `tail -f` does) and published while anyone listens for them.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::events::{Event, EventBus, LogChunk};

/// How often growing logs are read.
const POLL: Duration = Duration::from_millis(200);
/// The most bytes one event carries; a longer burst becomes several events.
const CHUNK: usize = 64 * 1024;

/// Clients subscribed to `run_log`: logs are read only while there are some.
#[derive(Debug, Default)]
pub struct LogListeners(AtomicUsize);

impl LogListeners {
    /// One more listener.
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// One fewer.
    pub fn remove(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// A run's log directory and how far each of its logs has been read.
type Followed = (PathBuf, HashMap<PathBuf, u64>);

/// Follows the logs of every active run from one thread: each run is added when it starts
/// and finished (a last read, then forgotten) when it ends.
#[derive(Debug, Default)]
pub struct LogTailer {
    runs: Mutex<HashMap<String, Followed>>,
    listeners: LogListeners,
}

impl LogTailer {
    /// The clients subscribed to `run_log`.
    pub fn listeners(&self) -> &LogListeners {
        &self.listeners
    }

    /// Starts following a run's log directory.
    pub fn add(&self, run_id: &str, run_dir: PathBuf) {
        self.lock()
            .insert(run_id.to_owned(), (run_dir, HashMap::new()));
    }

    /// Reads what is left of a run's logs (published if anyone listens) and forgets it.
    pub fn finish(&self, run_id: &str, events: &EventBus) {
        let removed = self.lock().remove(run_id);
        if let Some((dir, mut offsets)) = removed {
            if self.listeners.any() {
                publish_new(run_id, &dir, events, &mut offsets);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Followed>> {
        self.runs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the growing logs every [`POLL`] until `stop` is set.
    pub fn run(&self, events: &EventBus, stop: &AtomicBool) {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
            let mut runs = self.lock();
            for (run_id, (dir, offsets)) in runs.iter_mut() {
                if self.listeners.any() {
                    publish_new(run_id, dir, events, offsets);
                } else {
                    // Nobody listens: skip what was written meanwhile.
                    skip_to_end(dir, offsets);
                }
            }
        }
    }
}

fn logs(run_dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(run_dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn skip_to_end(run_dir: &Path, offsets: &mut HashMap<PathBuf, u64>) {
    for file in logs(run_dir) {
        if let Ok(meta) = std::fs::metadata(&file) {
            offsets.insert(file, meta.len());
        }
    }
}

fn publish_new(
    run_id: &str,
    run_dir: &Path,
    events: &EventBus,
    offsets: &mut HashMap<PathBuf, u64>,
) {
    for file in logs(run_dir) {
        let offset = offsets.entry(file.clone()).or_insert(0);
        let Ok(mut handle) = std::fs::File::open(&file) else {
            continue;
        };
        if handle.seek(SeekFrom::Start(*offset)).is_err() {
            continue;
        }
        let mut bytes = Vec::new();
        if handle.read_to_end(&mut bytes).is_err() || bytes.is_empty() {
            continue;
        }
        // Only whole lines; a partial last line waits for its end.
        let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
            continue;
        };
        let step = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        // `offset`: where the text starts in the log file, so a client that also read the
        // file (`GET /api/runs/{id}/logs/{step}`) joins the two without repeating a line.
        for (index, chunk) in bytes[..=end].chunks(CHUNK).enumerate() {
            let text = String::from_utf8_lossy(chunk);
            events.publish(Event::RunLog(LogChunk {
                run_id: run_id.to_owned(),
                step: step.clone(),
                text: text.into_owned(),
                offset: *offset + (index * CHUNK) as u64,
            }));
        }
        *offset += end as u64 + 1;
    }
}
