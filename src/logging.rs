//! Logging with tracing: warnings (or, with `--verbose`, debug) to stderr, and the
//! environment's level to `<logs>/system.log`; the size-rotating log files (`system.log`,
//! and the server's `api.log`) that keep a server left running from filling its disk.

use std::fs::{self, OpenOptions};
use std::path::Path;
use std::sync::Mutex;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// A log directory or file that cannot be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write log file {path}: {source}; fix its permissions or set logging.dir (ORCHESTRATOR_LOG_DIR)")]
pub struct LogError {
    /// The file or directory.
    pub path: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// How large a log file grows and how many are kept (`logging.max_file_bytes`,
/// `logging.max_files`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A file is rotated once it holds more than this many bytes (a line is never split, so a
    /// file may end one line past it).
    pub max_file_bytes: u64,
    /// Files kept, the current one included: `api.log`, `api.log.1`, ... up to
    /// `api.log.<max_files - 1>`; older ones are deleted.
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_file_bytes: crate::config::DEFAULT_LOG_MAX_FILE_BYTES,
            max_files: crate::config::DEFAULT_LOG_MAX_FILES,
        }
    }
}

/// A log file that rotates by size: appended to, renamed to `<name>.1` (the older ones
/// shifted up) once it passes `max_file_bytes`, at most `max_files` files in all.
pub type RotatingFile = FileRotate<AppendCount>;

/// Opens (or creates) `path` as a [`RotatingFile`], its directory created first. The file is
/// opened once here to report a file that cannot be written (the rotating writer itself
/// would drop the lines silently).
pub fn rotating_file(path: &Path, rotation: Rotation) -> Result<RotatingFile, LogError> {
    let error = |source| LogError {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(error)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(error)?;
    let bytes = usize::try_from(rotation.max_file_bytes.max(1)).unwrap_or(usize::MAX);
    Ok(FileRotate::new(
        path,
        AppendCount::new(rotation.max_files.saturating_sub(1).max(1) as usize),
        ContentLimit::BytesSurpassed(bytes),
        Compression::None,
        None,
    ))
}

/// Rotates `path` the way a [`RotatingFile`] does, for logs that short-lived writers append
/// to and that no one holds open: once `path` holds more than `rotation.max_file_bytes`, it
/// becomes `<path>.1`, `<path>.1` becomes `<path>.2`, and so on, the oldest beyond
/// `rotation.max_files` deleted. Returns whether it rotated. Callers serialize the calls for
/// one path.
pub fn rotate_if_over(path: &Path, rotation: Rotation) -> std::io::Result<bool> {
    match fs::metadata(path) {
        Ok(meta) if meta.len() > rotation.max_file_bytes => {}
        Ok(_) => return Ok(false),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    }
    let numbered = |n: u32| {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        std::path::PathBuf::from(name)
    };
    let kept = rotation.max_files.saturating_sub(1).max(1);
    for n in (1..kept).rev() {
        match fs::rename(numbered(n), numbered(n + 1)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    fs::rename(path, numbered(1))?;
    Ok(true)
}

fn level(name: &str) -> LevelFilter {
    name.parse().unwrap_or(LevelFilter::INFO)
}

/// This program's own events at `level`; other crates' only from warnings up (their debug
/// output is about their internals, not about what the user asked for).
fn ours_at(level: LevelFilter) -> Targets {
    Targets::new()
        .with_target("orchestrator", level)
        .with_default(level.min(LevelFilter::WARN))
}

/// Installs the global subscriber. `log_dir` is `None` for commands that write nothing;
/// `system.log` there rotates as `rotation` says.
pub fn init(
    verbose: bool,
    file_level: &str,
    log_dir: Option<&Path>,
    rotation: Rotation,
) -> Result<(), LogError> {
    let stderr_level = if verbose {
        LevelFilter::DEBUG
    } else {
        LevelFilter::WARN
    };
    let stderr_layer = fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_filter(ours_at(stderr_level));
    let file_layer = match log_dir {
        Some(dir) => {
            let file = rotating_file(&dir.join("system.log"), rotation)?;
            let file_level = if verbose {
                LevelFilter::DEBUG.max(level(file_level))
            } else {
                level(file_level)
            };
            Some(
                fmt::layer()
                    .with_writer(Mutex::new(file))
                    .with_ansi(false)
                    .with_filter(ours_at(file_level)),
            )
        }
        None => None,
    };
    // A second init (tests calling the CLI in-process) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(file_layer)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_log_file_rotates_by_size_and_keeps_at_most_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.log");
        let rotation = Rotation {
            max_file_bytes: 1000,
            max_files: 3,
        };
        let mut file = rotating_file(&path, rotation).unwrap();
        let line = format!("{}\n", "x".repeat(99));
        for _ in 0..100 {
            file.write_all(line.as_bytes()).unwrap();
        }
        file.flush().unwrap();
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["api.log", "api.log.1", "api.log.2"]);
        for name in &names {
            let text = fs::read_to_string(dir.path().join(name)).unwrap();
            assert!(text.len() <= 1000 + line.len(), "{name}: {}", text.len());
            assert!(
                text.lines().all(|l| l.len() == 99),
                "{name}: lines stay whole"
            );
        }
        // A restart goes on counting from what the file holds, and still keeps three files.
        drop(file);
        let mut file = rotating_file(&path, rotation).unwrap();
        for _ in 0..30 {
            file.write_all(line.as_bytes()).unwrap();
        }
        let count = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(count, 3);
    }

    #[test]
    fn a_log_appended_to_by_short_lived_writers_rotates_like_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shell.log");
        let rotation = Rotation {
            max_file_bytes: 1000,
            max_files: 3,
        };
        assert!(!rotate_if_over(&path, rotation).unwrap(), "no file yet");
        let line = format!("{}\n", "y".repeat(99));
        let mut rotations = 0;
        for n in 0..100 {
            if rotate_if_over(&path, rotation).unwrap() {
                rotations += 1;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            write!(file, "{n:02}{}", &line[2..]).unwrap();
        }
        assert_eq!(rotations, 9, "one rotation per 11 lines of 100 bytes");
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["shell.log", "shell.log.1", "shell.log.2"]);
        // The newest lines are in the current file, the ones before them in `.1`.
        let current = fs::read_to_string(&path).unwrap();
        assert!(current.ends_with(&format!("99{}", &line[2..])), "{current}");
        let previous = fs::read_to_string(dir.path().join("shell.log.1")).unwrap();
        assert_eq!(previous.len(), 1100, "a file rotates once past the limit");
    }

    #[test]
    fn a_log_file_that_cannot_be_opened_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, "").unwrap();
        let Err(error) = rotating_file(&blocker.join("system.log"), Rotation::default()) else {
            panic!("a log file under a regular file cannot be opened");
        };
        assert!(
            error.to_string().contains("cannot write log file"),
            "{error}"
        );
    }
}
