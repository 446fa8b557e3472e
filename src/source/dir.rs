//! The directory source: reads the manifest files (`.yaml`, `.yml`, `.json`) under a set of
//! paths. Hidden entries are skipped; a symlink is followed only while it stays inside the
//! project root; oversized and non-UTF-8 files are reported, not read.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::{revision_of, Snapshot, SourceFile};
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
    // Reading is most of the cost of a large tree: read the files in parallel.
    let read: Vec<Result<Result<SourceFile, Diagnostic>, DirError>> = walker
        .to_read
        .par_iter()
        .map(|(path, shown)| read_manifest(path, shown))
        .collect();
    let mut files = Vec::with_capacity(read.len());
    let mut diagnostics = walker.diagnostics;
    for outcome in read {
        match outcome? {
            Ok(file) => files.push(file),
            Err(diagnostic) => diagnostics.push(diagnostic),
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    diagnostics.sort_by(|a, b| a.file.cmp(&b.file));
    let mut contents: Vec<(String, &[u8])> = files
        .iter()
        .map(|f| (f.path.clone(), f.text.as_bytes()))
        .collect();
    // Unusable files are part of what the tree holds: a change in them changes the revision.
    contents.extend(
        diagnostics
            .iter()
            .map(|d| (d.file.clone(), d.message.as_bytes())),
    );
    let revision = revision_of("dir", &contents);
    Ok(Snapshot {
        revision,
        content_revision: None,
        files,
        diagnostics,
        context: Vec::new(),
    })
}

struct Walker {
    root: PathBuf,
    display_root: PathBuf,
    max_file_bytes: u64,
    seen_dirs: HashSet<PathBuf>,
    seen_files: HashSet<PathBuf>,
    /// Manifest files found, with the path shown for each; read after the walk.
    to_read: Vec<(PathBuf, String)>,
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
        self.to_read.push((path.to_path_buf(), shown));
        Ok(())
    }
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
