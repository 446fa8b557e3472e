//! Logging with tracing: warnings (or, with `--verbose`, debug) to stderr, and the
//! environment's level to `<logs>/system.log`; the size-rotating log files (`system.log`,
//! and the server's `api.log`) that keep a server left running from filling its disk.
//!
//! Every event is one line: line breaks inside a message are written as `\n`. Colour goes
//! to stderr only when it is a terminal (and neither `NO_COLOR` nor `--no-color` says no),
//! never into a file. When stderr is `system.log` itself (a server started with
//! `--background`, whose output goes there) events are written to it once, by the file
//! layer. A command working through a running server is that server's guest in
//! `system.log`: it adds its warnings and errors only, not its debug lines.

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal as _, Write};
use std::path::Path;
use std::sync::Mutex;

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt;
use tracing_subscriber::prelude::*;

/// `logging.max_file_bytes` unless configured: 10 MiB.
pub const DEFAULT_LOG_MAX_FILE_BYTES: u64 = 10 << 20;

/// `logging.max_files` unless configured.
pub const DEFAULT_LOG_MAX_FILES: u32 = 5;

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
            max_file_bytes: DEFAULT_LOG_MAX_FILE_BYTES,
            max_files: DEFAULT_LOG_MAX_FILES,
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

/// Whether this process's stderr is the file at `path` (the same device and inode).
fn stderr_is(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(stderr), Ok(file)) = (fs::metadata("/proc/self/fd/2"), fs::metadata(path)) else {
        return false;
    };
    stderr.dev() == file.dev() && stderr.ino() == file.ino()
}

/// A writer that keeps each event on one line: the formatter hands it one event per
/// `write` (ending in a newline), and line breaks inside it are written as `\n` and `\r`.
struct OneLine<W>(W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (body, end) = match buf.strip_suffix(b"\n") {
            Some(body) => (body, &b"\n"[..]),
            None => (buf, &b""[..]),
        };
        if !body.iter().any(|b| matches!(b, b'\n' | b'\r')) {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut line = Vec::with_capacity(buf.len() + 8);
        for &byte in body {
            match byte {
                b'\n' => line.extend_from_slice(b"\\n"),
                b'\r' => line.extend_from_slice(b"\\r"),
                other => line.push(other),
            }
        }
        line.extend_from_slice(end);
        self.0.write_all(&line)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
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

/// How the global subscriber writes.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions<'a> {
    /// Debug on stderr, and in the file whatever the configured level.
    pub verbose: bool,
    /// The level written to `system.log` (`logging.level`).
    pub file_level: &'a str,
    /// The log directory; `None` for commands that write no file.
    pub log_dir: Option<&'a Path>,
    /// How `system.log` rotates.
    pub rotation: Rotation,
    /// Whether stderr may be coloured (`--no-color` says no); it is only when it is a
    /// terminal and `NO_COLOR` is not set.
    pub color: bool,
    /// Another process (the running server) owns `system.log`: this one writes its
    /// warnings and errors there, nothing below.
    pub guest: bool,
}

/// Installs the global subscriber. `log_dir` is `None` for commands that write nothing;
/// `system.log` there rotates as `rotation` says.
pub fn init(
    verbose: bool,
    file_level: &str,
    log_dir: Option<&Path>,
    rotation: Rotation,
) -> Result<(), LogError> {
    init_with(&LogOptions {
        verbose,
        file_level,
        log_dir,
        rotation,
        color: true,
        guest: false,
    })
}

/// Installs the global subscriber as `options` say.
pub fn init_with(options: &LogOptions<'_>) -> Result<(), LogError> {
    let stderr_level = if options.verbose {
        LevelFilter::DEBUG
    } else {
        LevelFilter::WARN
    };
    let mut stderr_is_the_log = false;
    let file_layer = match options.log_dir {
        Some(dir) => {
            let path = dir.join("system.log");
            let file = rotating_file(&path, options.rotation)?;
            stderr_is_the_log = stderr_is(&path);
            let mut file_level = if options.verbose {
                LevelFilter::DEBUG.max(level(options.file_level))
            } else {
                level(options.file_level)
            };
            if options.guest {
                file_level = file_level.min(LevelFilter::WARN);
            }
            Some(
                fmt::layer()
                    .with_writer(Mutex::new(OneLine(file)))
                    .with_ansi(false)
                    .with_filter(ours_at(file_level)),
            )
        }
        None => None,
    };
    let ansi = options.color
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let stderr_layer = (!stderr_is_the_log).then(|| {
        fmt::layer()
            .with_writer(|| OneLine(std::io::stderr()))
            .with_target(false)
            .without_time()
            .with_ansi(ansi)
            .with_filter(ours_at(stderr_level))
    });
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

    #[test]
    fn an_event_with_line_breaks_stays_on_one_line() {
        let mut out = OneLine(Vec::new());
        out.write_all(b"WARN first\nsecond\r\n").unwrap();
        out.write_all(b"INFO plain\n").unwrap();
        assert_eq!(
            String::from_utf8(out.0).unwrap(),
            "WARN first\\nsecond\\r\nINFO plain\n"
        );
    }

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
