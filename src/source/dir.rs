//! The directory source: reads the manifest files (`.yaml`, `.yml`, `.json`) under a set of
//! paths. Hidden entries are skipped; a symlink is followed only while it stays inside the
//! project root; oversized and non-UTF-8 files are reported, not read.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rayon::prelude::*;

use sha2::{Digest, Sha256};

use super::{revision_of_digests, Snapshot, SourceFile};
use crate::diagnostics::Diagnostic;

/// How to read a directory source.
#[derive(Debug, Clone)]
pub struct DirOptions {
    /// The project root: paths are shown relative to it and symlinks may not leave it.
    pub root: PathBuf,
    /// Files larger than this are reported instead of read.
    pub max_file_bytes: u64,
}

/// A path given to the source.
#[derive(Debug, Clone)]
pub struct SourcePath {
    /// The file or directory.
    pub path: PathBuf,
    /// Whether its absence is an error (named on the command line) or normal (a default
    /// manifest directory the project does not use).
    pub required: bool,
}

/// A path that could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A path named on the command line does not exist.
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// Listing a directory or reading a file failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Writes into `<project>/schemas/` each published schema the directory lacks, so the
/// modeline of a manifest just written into the project (`$schema=../schemas/<kind>.json`,
/// by a create command, the dashboard's editors or `POST /api/scheduler/jobs`) resolves in a
/// project `init` did not make. Files that exist are left as they are.
pub fn ensure_schemas(project_dir: &Path) -> std::io::Result<()> {
    let dir = project_dir.join("schemas");
    for (file, text) in crate::schema::published() {
        let path = dir.join(file);
        if path.exists() {
            continue;
        }
        std::fs::create_dir_all(&dir)?;
        std::fs::write(&path, text)?;
    }
    Ok(())
}

/// Whether a path names a manifest file by its extension.
pub fn is_manifest_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Reads every manifest file under the given paths.
pub fn load(paths: &[SourcePath], options: &DirOptions) -> Result<Snapshot, DirError> {
    load_indexed(paths, options, None)
}

/// What a long-lived reader of a directory source (the controller) remembers between loads,
/// so that a load reads only the files that changed: each file read, by the path it was read
/// at, with its stamp — device, inode, size, modification and change times, as git's index
/// keeps them — its text and the SHA-256 of its text. A file whose stamp is the one
/// remembered is not opened again; any write changes its change time (which no one can set
/// back), a replacement its inode.
///
/// A stamp only tells changes apart that happen in different clock ticks of the file
/// system. A file changed too close to the load that remembered it (its times within
/// [`RACY_SLACK`], or [`RACY_SLACK_WHOLE_SECONDS`] on a file system that keeps whole
/// seconds, of that load's start) could be changed again within the same tick after it was
/// read, with the same size, and keep its stamp: it is *racy*, as git calls it, and read
/// again by the next load, until a load finds it settled.
#[derive(Default)]
pub struct FileIndex {
    entries: Mutex<HashMap<PathBuf, Indexed>>,
    reads: AtomicUsize,
}

/// How close to a load's start a change must be for the file's stamp not to be trusted by
/// the next load, on file systems with sub-second times: the kernel stamps files from a
/// clock that advances by ticks of a few milliseconds and may lag the clock read here by one.
pub const RACY_SLACK: std::time::Duration = std::time::Duration::from_millis(100);
/// [`RACY_SLACK`] for file systems that keep whole seconds (or two, as FAT does): a file
/// whose times have no fraction of a second is taken to be on one.
pub const RACY_SLACK_WHOLE_SECONDS: std::time::Duration = std::time::Duration::from_secs(2);

struct Indexed {
    shown: String,
    stamp: Stamp,
    racy: bool,
    text: String,
    digest: [u8; 32],
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Stamp {
        Stamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            mtime: (metadata.mtime(), metadata.mtime_nsec()),
            ctime: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Whether the file changed too close to `started` (nanoseconds since the epoch) for a
    /// later change within the same tick to show in the stamp.
    fn is_racy(&self, started: i128) -> bool {
        let nanos = |(secs, nsec): (i64, i64)| i128::from(secs) * 1_000_000_000 + i128::from(nsec);
        let changed = nanos(self.mtime).max(nanos(self.ctime));
        let slack = if self.mtime.1 == 0 && self.ctime.1 == 0 {
            RACY_SLACK_WHOLE_SECONDS
        } else {
            RACY_SLACK
        };
        changed >= started - slack.as_nanos() as i128
    }
}

impl std::fmt::Debug for FileIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileIndex")
            .field("files", &self.len())
            .field("reads", &self.reads())
            .finish()
    }
}

impl FileIndex {
    /// How many files were read through it so far (the others were remembered).
    pub fn reads(&self) -> usize {
        self.reads.load(Ordering::Relaxed)
    }

    /// How many files are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no file is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every file the snapshot does not hold (after a load of the whole source:
    /// files gone from it are not kept).
    pub fn retain_only(&self, snapshot: &Snapshot) {
        let present: HashSet<&str> = snapshot.files.iter().map(|f| f.path.as_str()).collect();
        self.lock()
            .retain(|_, entry| present.contains(entry.shown.as_str()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Indexed>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// [`load`], reading only the files whose stamp `index` does not know (see [`FileIndex`])
/// and remembering what it reads there. The snapshot is the same as [`load`]'s.
pub fn load_indexed(
    paths: &[SourcePath],
    options: &DirOptions,
    index: Option<&FileIndex>,
) -> Result<Snapshot, DirError> {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    load_started_at(paths, options, index, started)
}

/// [`load_indexed`] as if started at `started` (nanoseconds since the epoch), the instant
/// racy stamps are judged against.
fn load_started_at(
    paths: &[SourcePath],
    options: &DirOptions,
    index: Option<&FileIndex>,
    started: i128,
) -> Result<Snapshot, DirError> {
    let root = fs::canonicalize(&options.root).unwrap_or_else(|_| options.root.clone());
    let mut walker = Walker {
        root,
        display_root: options.root.clone(),
        max_file_bytes: options.max_file_bytes,
        seen_dirs: HashSet::new(),
        seen_files: HashSet::new(),
        to_read: Vec::new(),
        diagnostics: Vec::new(),
    };
    for source_path in paths {
        let path = &source_path.path;
        match fs::symlink_metadata(path) {
            Ok(_) => walker.visit(path, true, None)?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if source_path.required {
                    return Err(DirError::NotFound(path.display().to_string()));
                }
            }
            Err(source) => {
                return Err(DirError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
    }
    // Reading is most of the cost of a large tree: read the files in parallel, and with an
    // index only those whose stamp changed.
    let read: Vec<Result<Outcome, DirError>> = walker
        .to_read
        .par_iter()
        .map(|found| read_found(found, index, started))
        .collect();
    let mut files = Vec::with_capacity(read.len());
    let mut diagnostics = walker.diagnostics;
    for outcome in read {
        match outcome? {
            Ok(file) => files.push(file),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    files.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    diagnostics.sort_by(|a, b| a.file.cmp(&b.file));
    let mut contents: Vec<(&str, [u8; 32])> = files
        .iter()
        .map(|(f, digest)| (f.path.as_str(), *digest))
        .collect();
    // Unusable files are part of what the tree holds: a change in them changes the revision.
    contents.extend(
        diagnostics
            .iter()
            .map(|d| (d.file.as_str(), Sha256::digest(d.message.as_bytes()).into())),
    );
    let revision = revision_of_digests("dir", &contents);
    let files = files.into_iter().map(|(file, _)| file).collect();
    Ok(Snapshot {
        revision,
        content_revision: None,
        files,
        diagnostics,
        context: Vec::new(),
    })
}

/// A manifest file the walk found: where to read it, the path shown for it, its stamp.
struct Found {
    path: PathBuf,
    shown: String,
    stamp: Stamp,
}

struct Walker {
    root: PathBuf,
    display_root: PathBuf,
    max_file_bytes: u64,
    seen_dirs: HashSet<PathBuf>,
    seen_files: HashSet<PathBuf>,
    /// Manifest files found; read after the walk.
    to_read: Vec<Found>,
    diagnostics: Vec<Diagnostic>,
}

impl Walker {
    fn display(&self, path: &Path) -> String {
        let shown = path.strip_prefix(&self.display_root).unwrap_or(path);
        let shown = shown.strip_prefix("./").unwrap_or(shown);
        shown.display().to_string()
    }

    /// Visits a file or directory. `named` is true for paths given explicitly, whose
    /// extension is not checked. `parent` is the real path of the directory it was listed
    /// in: the real path of an entry that is no symlink is then that joined with its name,
    /// without resolving every component of it again (most of the cost of a walk of
    /// 100,000 files).
    fn visit(&mut self, path: &Path, named: bool, parent: Option<&Path>) -> Result<(), DirError> {
        let io = |source| DirError::Io {
            path: path.display().to_string(),
            source,
        };
        let link_metadata = fs::symlink_metadata(path).map_err(io)?;
        let is_symlink = link_metadata.file_type().is_symlink();
        let mut canonical = None;
        if is_symlink {
            let target = match fs::canonicalize(path) {
                Ok(target) => target,
                Err(_) => {
                    self.diagnostics.push(Diagnostic::error(
                        &self.display(path),
                        0,
                        0,
                        "",
                        "broken symlink: its target does not exist".to_owned(),
                    ));
                    return Ok(());
                }
            };
            if !target.starts_with(&self.root) {
                self.diagnostics.push(Diagnostic::error(
                    &self.display(path),
                    0,
                    0,
                    "",
                    format!(
                        "symlink points outside the project ({}): refusing to read it; copy the file into the tree instead",
                        target.display()
                    ),
                ));
                return Ok(());
            }
            canonical = Some(target);
        }
        let metadata = if is_symlink {
            fs::metadata(path).map_err(io)?
        } else {
            link_metadata
        };
        let canonical = match (canonical, parent, path.file_name()) {
            (Some(target), _, _) => target,
            (None, Some(parent), Some(name)) => parent.join(name),
            _ => fs::canonicalize(path).map_err(io)?,
        };
        if metadata.is_dir() {
            if !self.seen_dirs.insert(canonical.clone()) {
                return Ok(());
            }
            let mut entries: Vec<PathBuf> = fs::read_dir(path)
                .map_err(io)?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|p| {
                    !p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            entries.sort();
            for entry in entries {
                self.visit(&entry, false, Some(&canonical))?;
            }
            return Ok(());
        }
        if !named && !is_manifest_file(path) {
            return Ok(());
        }
        if !self.seen_files.insert(canonical) {
            return Ok(());
        }
        let shown = self.display(path);
        if metadata.len() > self.max_file_bytes {
            self.diagnostics.push(Diagnostic::error(
                &shown,
                0,
                0,
                "",
                format!(
                    "file is {} bytes, over the {}-byte limit for a manifest (manifests.max_file_bytes): split it or raise the limit",
                    metadata.len(),
                    self.max_file_bytes
                ),
            ));
            return Ok(());
        }
        self.to_read.push(Found {
            path: path.to_path_buf(),
            shown,
            stamp: Stamp::of(&metadata),
        });
        Ok(())
    }
}

/// A file read, with the SHA-256 of its text, or why it cannot be used.
type Outcome = Result<(SourceFile, [u8; 32]), Diagnostic>;

/// One file found by the walk, with the SHA-256 of its text: remembered by `index` when its
/// stamp is the one remembered and was not racy, else read (and remembered).
fn read_found(
    found: &Found,
    index: Option<&FileIndex>,
    started: i128,
) -> Result<Outcome, DirError> {
    if let Some(index) = index {
        if let Some(known) = index.lock().get(&found.path) {
            if known.stamp == found.stamp && !known.racy && known.shown == found.shown {
                let file = SourceFile {
                    path: found.shown.clone(),
                    text: known.text.clone(),
                };
                return Ok(Ok((file, known.digest)));
            }
        }
    }
    let file = match read_manifest(&found.path, &found.shown)? {
        Ok(file) => file,
        Err(diagnostic) => {
            if let Some(index) = index {
                index.lock().remove(&found.path);
            }
            return Ok(Err(diagnostic));
        }
    };
    let digest: [u8; 32] = Sha256::digest(file.text.as_bytes()).into();
    if let Some(index) = index {
        index.reads.fetch_add(1, Ordering::Relaxed);
        // The stamp taken by the walk, before the read: a change after it shows as another
        // stamp next time (or, within the same tick, the entry is racy).
        index.lock().insert(
            found.path.clone(),
            Indexed {
                shown: found.shown.clone(),
                stamp: found.stamp,
                racy: found.stamp.is_racy(started),
                text: file.text.clone(),
                digest,
            },
        );
    }
    Ok(Ok((file, digest)))
}

/// Reads one manifest file: its text, or a diagnostic when it is not UTF-8.
fn read_manifest(path: &Path, shown: &str) -> Result<Result<SourceFile, Diagnostic>, DirError> {
    let bytes = fs::read(path).map_err(|source| DirError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => Ok(SourceFile {
            path: shown.to_owned(),
            text,
        }),
        Err(err) => {
            let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
            let valid = String::from_utf8_lossy(valid);
            let line = valid.matches('\n').count() as u32 + 1;
            let column = valid.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
            Err(Diagnostic::error(
                shown,
                line,
                column,
                "",
                "invalid UTF-8: manifests must be UTF-8 text".to_owned(),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now_nanos() -> i128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128
    }

    /// A project with a `workflows/` directory, read as the whole source.
    struct Project {
        dir: tempfile::TempDir,
        paths: Vec<SourcePath>,
        options: DirOptions,
    }

    impl Project {
        fn new() -> Project {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("workflows")).unwrap();
            let paths = vec![SourcePath {
                path: dir.path().join("workflows"),
                required: true,
            }];
            let options = DirOptions {
                root: dir.path().to_owned(),
                max_file_bytes: 1 << 20,
            };
            Project {
                dir,
                paths,
                options,
            }
        }

        fn write(&self, name: &str, text: &str) {
            std::fs::write(self.dir.path().join("workflows").join(name), text).unwrap();
        }

        /// Loads through the index as a load that starts `after` from now would (so that
        /// what was just written is settled for it), checks the snapshot is a plain load's,
        /// and returns how many files it read.
        fn load(&self, index: &FileIndex, after: std::time::Duration) -> usize {
            let before = index.reads();
            let started = now_nanos() + after.as_nanos() as i128;
            let indexed =
                load_started_at(&self.paths, &self.options, Some(index), started).unwrap();
            let plain = load(&self.paths, &self.options).unwrap();
            assert_eq!(indexed.revision, plain.revision);
            let texts = |s: &Snapshot| {
                s.files
                    .iter()
                    .map(|f| (f.path.clone(), f.text.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(texts(&indexed), texts(&plain));
            assert_eq!(indexed.diagnostics, plain.diagnostics);
            index.retain_only(&indexed);
            index.reads() - before
        }
    }

    const SETTLED: std::time::Duration = std::time::Duration::from_secs(10);

    /// Issue 20: a re-reconcile of an unchanged tree opens no file; an edit, a creation, a
    /// replacement and a deletion are each noticed by the stamp alone.
    #[test]
    fn an_index_reads_only_the_files_whose_stamp_changed() {
        let project = Project::new();
        let index = FileIndex::default();
        for name in ["a", "b", "c"] {
            project.write(&format!("{name}.yaml"), &format!("name: {name}\n"));
        }
        assert_eq!(project.load(&index, SETTLED), 3, "cold");
        assert_eq!(project.load(&index, SETTLED), 0, "unchanged");
        // The same size: the change time tells.
        project.write("a.yaml", "name: A\n");
        assert_eq!(project.load(&index, SETTLED), 1, "an edit of the same size");
        project.write("d.yaml", "name: d\n");
        assert_eq!(project.load(&index, SETTLED), 1, "a creation");
        // An editor's save: a new file renamed over the old one (another inode).
        let workflows = project.dir.path().join("workflows");
        std::fs::write(workflows.join(".b.yaml.tmp"), "name: B\n").unwrap();
        std::fs::rename(workflows.join(".b.yaml.tmp"), workflows.join("b.yaml")).unwrap();
        assert_eq!(project.load(&index, SETTLED), 1, "a replacement");
        std::fs::remove_file(workflows.join("c.yaml")).unwrap();
        assert_eq!(project.load(&index, SETTLED), 0, "a deletion");
        assert_eq!(index.len(), 3, "the deleted file is forgotten");
        // A file that became unreadable is reported as a plain load reports it.
        std::fs::write(workflows.join("d.yaml"), b"name: \xff\n").unwrap();
        assert_eq!(
            project.load(&index, SETTLED),
            0,
            "not UTF-8: read, not remembered"
        );
        assert_eq!(index.len(), 2);
    }

    /// Issue 20, racy git: a file changed within the clock tick of the load that read it
    /// can change again in that tick with the same size and keep its stamp. Such an entry is
    /// read again by the next load rather than trusted, until a load finds it settled.
    #[test]
    fn a_file_changed_as_it_was_indexed_is_read_again() {
        let project = Project::new();
        let index = FileIndex::default();
        project.write("a.yaml", "name: a\n");
        // Read by a load starting now: the file changed within the slack of that start.
        assert_eq!(project.load(&index, std::time::Duration::ZERO), 1);
        // What a change in the same tick after that read would leave: the same stamp over
        // other text. Simulated by making the remembered text stale.
        for entry in index.lock().values_mut() {
            entry.text = "name: stale\n".to_owned();
        }
        // The next load re-reads it (and the snapshot checks say it has the file's text).
        assert_eq!(project.load(&index, SETTLED), 1, "racy: read again");
        assert_eq!(project.load(&index, SETTLED), 0, "settled: trusted");
    }

    #[test]
    fn a_stamp_is_racy_within_the_slack_of_the_load_that_took_it() {
        let second = 1_000_000_000_i128;
        let stamp = |mtime: (i64, i64), ctime: (i64, i64)| Stamp {
            dev: 1,
            ino: 1,
            size: 1,
            mtime,
            ctime,
        };
        let started = 100 * second;
        let cases = [
            // (mtime, ctime, racy): the slack is 100 ms before the start.
            ((90, 5), (90, 5), false),
            ((99, 899_999_999), (90, 5), false),
            ((99, 900_000_000), (90, 5), true),
            ((90, 5), (99, 950_000_000), true),
            ((99, 800_000_000), (99, 850_000_000), false),
            ((100, 500_000_000), (100, 500_000_000), true),
            // One time with a fraction: sub-second times.
            ((99, 0), (99, 5), false),
            // Whole seconds: a file system that keeps no fraction.
            ((98, 0), (98, 0), true),
            ((97, 0), (97, 0), false),
            ((101, 0), (101, 0), true),
        ];
        for (mtime, ctime, racy) in cases {
            assert_eq!(
                stamp(mtime, ctime).is_racy(started),
                racy,
                "mtime {mtime:?} ctime {ctime:?}"
            );
        }
    }

    /// The real paths the walk dedupes by: a file reached through a symlinked directory,
    /// a symlinked file or a loop is read once, under the first path that reaches it.
    #[test]
    fn a_file_reached_by_several_paths_is_read_once() {
        let project = tempfile::tempdir().unwrap();
        let workflows = project.path().join("workflows");
        let nested = workflows.join("nested");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(workflows.join("a.yaml"), "name: a\n").unwrap();
        std::fs::write(nested.join("b.yaml"), "name: b\n").unwrap();
        std::os::unix::fs::symlink(&nested, workflows.join("z-again")).unwrap();
        std::os::unix::fs::symlink(workflows.join("a.yaml"), workflows.join("z-a.yaml")).unwrap();
        std::os::unix::fs::symlink(&workflows, nested.join("loop")).unwrap();
        let snapshot = load(
            &[
                SourcePath {
                    path: workflows.clone(),
                    required: true,
                },
                SourcePath {
                    path: nested.join("b.yaml"),
                    required: true,
                },
            ],
            &DirOptions {
                root: project.path().to_owned(),
                max_file_bytes: 1 << 20,
            },
        )
        .unwrap();
        let paths: Vec<&str> = snapshot.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["workflows/a.yaml", "workflows/nested/b.yaml"]);
        assert!(
            snapshot.diagnostics.is_empty(),
            "{:?}",
            snapshot.diagnostics
        );
    }
}
