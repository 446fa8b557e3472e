//! The agents' own logs, `logs/agents/<agent>.log`: a line per step an agent ran, and what
//! `exec` plugins write there. Each step appends to them and closes them again, so no
//! writer keeps a rotating file open; they are rotated by size between writes instead
//! (`logging.max_file_bytes`, `logging.max_files`, like `system.log` and `api.log`), one
//! lock serializing rotation and appends.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::logging::{rotate_if_over, Rotation};

/// The rotation settings of the agents' logs and the lock their writers share.
#[derive(Debug)]
pub struct AgentLogs {
    rotation: Rotation,
    lock: Mutex<()>,
}

impl AgentLogs {
    /// Agent logs rotated as `rotation` says.
    pub fn new(rotation: Rotation) -> Arc<AgentLogs> {
        Arc::new(AgentLogs {
            rotation,
            lock: Mutex::new(()),
        })
    }

    /// Appends one line to the log at `path` (its directory created first), rotating it
    /// first when it is full. A log that cannot be written is skipped: it never fails a
    /// step.
    pub fn append_line(&self, path: &Path, line: &str) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = path.parent() {
            if fs::create_dir_all(dir).is_err() {
                return;
            }
        }
        if let Err(err) = rotate_if_over(path, self.rotation) {
            tracing::warn!("cannot rotate {}: {err}", path.display());
        }
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{line}");
        }
    }

    /// Makes room in the log at `path` before a writer of its own opens it (an `exec`
    /// plugin's output): rotated when full. A writer still holding the file open goes on
    /// writing to the rotated file, so nothing is lost.
    pub fn make_room(&self, path: &Path) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(err) = rotate_if_over(path, self.rotation) {
            tracing::warn!("cannot rotate {}: {err}", path.display());
        }
    }
}
