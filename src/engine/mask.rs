//! Where a step's output goes: the step log ([`StepLog`]), written as the process runs,
//! with every declared secret value replaced by `***` (as GitHub Actions masks its
//! secrets) and a cap on its size after which one line says the output was cut and the
//! rest is drained unwritten.
//!
//! The log's file is created with its first byte: a step that prints nothing leaves no
//! file (readers take a missing log as an empty one). Creating a file allocates an inode,
//! and where the file system has no journal ext4 looks past every inode freed in the last
//! few seconds to find one, so after a run's history was pruned each creation costs as
//! much as the step's own spawn.
//!
//! Output arrives in chunks that may split a secret anywhere, so a [`Masker`] keeps the
//! last `longest secret - 1` bytes back until the next chunk (or the end) decides them.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aho_corasick::{AhoCorasick, MatchKind};

/// What replaces a secret value.
pub const MASK: &[u8] = b"***";

/// The secret values of a step, in the form a [`Masker`] searches for. Every non-empty
/// value is masked, however short (as GitHub Actions does).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Vec<String>,
    finder: Option<Arc<AhoCorasick>>,
    longest: usize,
}

impl Secrets {
    /// The given values (empty ones are ignored, duplicates kept once).
    pub fn new<I: IntoIterator<Item = String>>(values: I) -> Secrets {
        let mut secrets = Secrets::default();
        secrets.extend(values);
        secrets
    }

    /// Adds values to mask. A value of several lines is masked whole and line by line (as
    /// GitHub Actions does), so one line of a key printed alone is masked too.
    pub fn extend<I: IntoIterator<Item = String>>(&mut self, values: I) {
        let before = self.values.len();
        for value in values {
            let lines: Vec<String> = if value.contains('\n') {
                value
                    .lines()
                    .map(|line| line.trim_end_matches('\r').to_owned())
                    .collect()
            } else {
                Vec::new()
            };
            for value in std::iter::once(value).chain(lines) {
                if !value.is_empty() && !self.values.contains(&value) {
                    self.values.push(value);
                }
            }
        }
        if self.values.len() == before {
            return;
        }
        self.longest = self.values.iter().map(String::len).max().unwrap_or(0);
        // Leftmost-longest: where two secrets start at the same byte, the longer is masked
        // whole; overlapping ones are masked from the first that starts.
        self.finder = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&self.values)
            .ok()
            .map(Arc::new);
    }

    /// The values masked.
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// No value to mask.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The text with every secret value replaced by `***`.
    pub fn mask_str(&self, text: &str) -> String {
        match &self.finder {
            Some(finder) => finder.replace_all(text, &vec!["***"; self.values.len()]),
            None => text.to_owned(),
        }
    }

    /// A streaming masker over these values.
    pub fn masker(&self) -> Masker {
        Masker {
            secrets: self.clone(),
            pending: Vec::new(),
        }
    }
}

/// Masks a stream given in chunks: [`Masker::feed`] answers what can be written now,
/// [`Masker::finish`] the rest at the end.
#[derive(Debug)]
pub struct Masker {
    secrets: Secrets,
    pending: Vec<u8>,
}

impl Masker {
    /// Takes the next chunk; returns the masked bytes that no later chunk can change.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let Some(finder) = self.secrets.finder.clone() else {
            return chunk.to_vec();
        };
        self.pending.extend_from_slice(chunk);
        // A secret starting before `decided` ends inside what we have: those bytes are
        // decided. Later ones wait for more input.
        let decided = self
            .pending
            .len()
            .saturating_sub(self.secrets.longest.saturating_sub(1));
        let mut out = Vec::with_capacity(decided);
        let mut at = 0;
        for found in finder.find_iter(&self.pending[..]) {
            if found.start() >= decided {
                break;
            }
            out.extend_from_slice(&self.pending[at..found.start()]);
            out.extend_from_slice(MASK);
            at = found.end();
        }
        let keep_from = at.max(decided);
        out.extend_from_slice(&self.pending[at..keep_from]);
        self.pending.drain(..keep_from);
        out
    }

    /// The end of the stream: what was held back, masked.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        match &self.secrets.finder {
            Some(finder) => {
                let mut out = Vec::with_capacity(rest.len());
                finder.replace_all_with_bytes(&rest, &mut out, |_, _, dst| {
                    dst.extend_from_slice(MASK);
                    true
                });
                out
            }
            None => rest,
        }
    }
}

/// A step's log, open for appending: masked, capped, shared by the threads that write to
/// it (a process's output reader, the orchestrator's notes).
#[derive(Debug)]
pub struct StepLog {
    state: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    file: LogFile,
    secrets: Secrets,
    max_bytes: u64,
    written: u64,
    cut: bool,
}

/// The file of a log: open for appending, or still to be created at its path.
#[derive(Debug)]
enum LogFile {
    Open(File),
    ToCreate(PathBuf),
    /// Its creation failed: what is written is dropped, as when a write fails.
    Failed,
}

impl LogFile {
    /// The open file, created if it is not yet.
    fn get(&mut self) -> Option<&mut File> {
        if let LogFile::ToCreate(path) = self {
            *self = match OpenOptions::new().create(true).append(true).open(&*path) {
                Ok(file) => LogFile::Open(file),
                Err(err) => {
                    tracing::warn!(log = %path.display(), "cannot create the step log: {err}");
                    LogFile::Failed
                }
            };
        }
        match self {
            LogFile::Open(file) => Some(file),
            LogFile::ToCreate(_) | LogFile::Failed => None,
        }
    }
}

impl StepLog {
    /// The log at `path`, appended to; the file is created with the first byte written
    /// (its directory must exist: that is checked here). Once it holds `max_bytes`, further
    /// output is dropped after one line saying so.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<StepLog> {
        let (file, written) = match OpenOptions::new().append(true).open(path) {
            Ok(file) => {
                let written = file.metadata().map_or(0, |m| m.len());
                (LogFile::Open(file), written)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let directory = path.parent().unwrap_or(Path::new("."));
                if !std::fs::metadata(directory)?.is_dir() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotADirectory,
                        format!("{} is not a directory", directory.display()),
                    ));
                }
                (LogFile::ToCreate(path.to_owned()), 0)
            }
            Err(err) => return Err(err),
        };
        Ok(StepLog {
            state: Mutex::new(LogState {
                file,
                secrets: Secrets::default(),
                max_bytes,
                written,
                cut: false,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds secret values to mask from now on.
    pub fn add_secrets<I: IntoIterator<Item = String>>(&self, values: I) {
        self.lock().secrets.extend(values);
    }

    /// The secret values masked so far.
    pub fn secrets(&self) -> Secrets {
        self.lock().secrets.clone()
    }

    /// Whether the cap was reached.
    pub fn was_cut(&self) -> bool {
        self.lock().cut
    }

    /// A line of the orchestrator's own (prefixed `[orchestrator]`), masked.
    pub fn note(&self, text: &str) {
        let mut state = self.lock();
        let line = format!("[orchestrator] {}\n", state.secrets.mask_str(text));
        state.write_capped(line.as_bytes());
    }

    /// Bytes already masked, appended up to the cap.
    pub fn write_masked(&self, bytes: &[u8]) {
        self.lock().write_capped(bytes);
    }
}

impl LogState {
    fn write_capped(&mut self, bytes: &[u8]) {
        if self.cut || bytes.is_empty() {
            return;
        }
        let room = self.max_bytes.saturating_sub(self.written);
        let Some(file) = self.file.get() else {
            return;
        };
        if (bytes.len() as u64) <= room {
            if file.write_all(bytes).is_ok() {
                self.written += bytes.len() as u64;
            }
            return;
        }
        let head = &bytes[..room as usize];
        let _ = file.write_all(head);
        self.written += head.len() as u64;
        let newline = if head.last().is_some_and(|b| *b != b'\n') {
            "\n"
        } else {
            ""
        };
        let _ = writeln!(
            file,
            "{newline}[orchestrator] output cut at {} bytes (runs.max_log_bytes); the rest was not written",
            self.max_bytes
        );
        self.cut = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(secrets: &[&str], chunks: &[&str]) -> String {
        let secrets = Secrets::new(secrets.iter().map(|s| s.to_string()));
        let mut masker = secrets.masker();
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(masker.feed(chunk.as_bytes()));
        }
        out.extend(masker.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_secret_in_one_chunk_is_masked() {
        assert_eq!(stream(&["hunter2"], &["pw=hunter2!\n"]), "pw=***!\n");
    }

    #[test]
    fn a_secret_split_across_chunks_is_masked() {
        assert_eq!(stream(&["hunter2"], &["pw=hun", "ter2 ok"]), "pw=*** ok");
        // One byte at a time.
        let text = "a hunter2 b hunter2";
        let chunks: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = chunks.iter().map(String::as_str).collect();
        assert_eq!(stream(&["hunter2"], &chunks), "a *** b ***");
    }

    #[test]
    fn a_prefix_at_the_end_is_written_at_the_finish() {
        assert_eq!(stream(&["hunter2"], &["ends with hunt"]), "ends with hunt");
    }

    #[test]
    fn several_secrets_are_all_masked() {
        assert_eq!(
            stream(
                &["alpha", "bravo-long"],
                &["x alpha y bra", "vo-long z alp", "ha"]
            ),
            "x *** y *** z ***"
        );
    }

    #[test]
    fn overlapping_secrets_mask_from_the_first_that_starts() {
        // One contains the other: the longer is masked whole.
        assert_eq!(stream(&["abc", "abcdef"], &["1abcdef2abc3"]), "1***2***3");
        // Two overlap: the first wins, the rest of the second stays.
        assert_eq!(stream(&["abcd", "cdef"], &["abcdef"]), "***ef");
    }

    #[test]
    fn no_secrets_means_bytes_as_they_are() {
        assert_eq!(stream(&[], &["plain ", "text"]), "plain text");
        assert_eq!(
            stream(&[""], &["empty values mask nothing"]),
            "empty values mask nothing"
        );
    }

    #[test]
    fn a_secret_of_several_lines_is_masked_whole_and_line_by_line() {
        let key = "-----BEGIN-----\nline-one\nline-two\n-----END-----";
        assert_eq!(
            stream(&[key], &[&format!("key: {key}\nagain: line-two\n")]),
            "key: ***\nagain: ***\n"
        );
    }

    #[test]
    fn short_secrets_are_masked_too() {
        assert_eq!(stream(&["x"], &["axb"]), "a***b");
    }

    #[test]
    fn the_log_is_cut_at_its_cap_with_one_line_saying_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step.log");
        let log = StepLog::open(&path, 10).unwrap();
        log.write_masked(b"0123456");
        log.write_masked(b"789abcdef");
        log.write_masked(b"more");
        assert!(log.was_cut());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "0123456789\n[orchestrator] output cut at 10 bytes (runs.max_log_bytes); the rest was not written\n"
        );
    }

    #[test]
    fn a_log_nothing_was_written_to_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step.log");
        let log = StepLog::open(&path, 1000).unwrap();
        log.write_masked(b"");
        drop(log);
        assert!(!path.exists(), "a silent step's log was created");
        let log = StepLog::open(&path, 1000).unwrap();
        log.write_masked(b"first\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\n");
        // A later attempt appends to the same log, its cap counting what is there.
        let log = StepLog::open(&path, 10).unwrap();
        log.write_masked(b"second\n");
        assert!(log.was_cut());
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .starts_with("first\nseco\n[orchestrator] output cut"));
    }

    #[test]
    fn a_log_in_a_directory_that_is_not_there_fails_to_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StepLog::open(&dir.path().join("gone").join("step.log"), 10).is_err());
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(StepLog::open(&file.join("step.log"), 10).is_err());
    }

    #[test]
    fn notes_are_masked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step.log");
        let log = StepLog::open(&path, 1000).unwrap();
        log.add_secrets(["s3cret".to_owned()]);
        log.note("the value was s3cret");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "[orchestrator] the value was ***\n"
        );
    }
}
