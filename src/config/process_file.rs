//! `server.json` in the data directory: how other commands find a running server (its PID
//! and address). Written atomically once the server listens, removed when it stops; a file
//! whose process is gone is stale and ignored.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What a running server tells other processes about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Its process id.
    pub pid: u32,
    /// The address it listens on, `host:port`.
    pub address: String,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its environment.
    pub environment: String,
    /// Its project directory.
    pub project_dir: PathBuf,
}

impl ServerInfo {
    /// The base URL of its API.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// The file's path in a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("server.json")
}

/// Writes the file atomically (a temporary file renamed over it).
pub fn write(data_dir: &Path, info: &ServerInfo) -> std::io::Result<()> {
    let target = path(data_dir);
    let temporary = data_dir.join(format!(".server.json.{}", std::process::id()));
    std::fs::write(&temporary, serde_json::to_vec_pretty(info)?)?;
    std::fs::rename(&temporary, &target)
}

/// Removes the file if it is this process's.
pub fn remove(data_dir: &Path) {
    if read_raw(data_dir).is_some_and(|info| info.pid == std::process::id()) {
        let _ = std::fs::remove_file(path(data_dir));
    }
}

fn read_raw(data_dir: &Path) -> Option<ServerInfo> {
    let bytes = std::fs::read(path(data_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The running server of this data directory, if there is one (a file left by a process
/// that is gone does not count).
pub fn read(data_dir: &Path) -> Option<ServerInfo> {
    let info = read_raw(data_dir)?;
    process_alive(info.pid).then_some(info)
}

/// Whether a process exists.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_read_and_removed_and_stale_files_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut info = ServerInfo {
            pid: std::process::id(),
            address: "127.0.0.1:8080".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            environment: "development".into(),
            project_dir: dir.path().to_owned(),
        };
        assert_eq!(read(dir.path()), None);
        write(dir.path(), &info).unwrap();
        assert_eq!(read(dir.path()).unwrap(), info);
        assert_eq!(info.url(), "http://127.0.0.1:8080");
        remove(dir.path());
        assert!(!path(dir.path()).exists());
        // A file naming a process that does not exist is stale.
        info.pid = i32::MAX as u32;
        write(dir.path(), &info).unwrap();
        assert_eq!(read(dir.path()), None);
    }
}
