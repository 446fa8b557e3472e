//! Sources of manifests. A source produces a [`Snapshot`]: the manifest files it holds, read
//! into memory, and a revision that names exactly that content.

pub mod changes;
pub mod dir;
pub mod git;

use sha2::{Digest, Sha256};

use crate::diagnostics::Diagnostic;

/// A manifest file read from a source.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as shown to the user (relative to the project root when inside it).
    pub path: String,
    /// The file's text.
    pub text: String,
}

/// Everything a source held at one moment.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Names the content: `dir:` and the first 12 hex digits of a SHA-256 over every path and
    /// its content, so an unchanged tree has an unchanged revision on every machine.
    pub revision: String,
    /// The content's own revision when `revision` names the snapshot after where it came
    /// from instead (a git commit, see [`Snapshot::with_revision`]).
    pub content_revision: Option<String>,
    /// The readable manifest files, sorted by path.
    pub files: Vec<SourceFile>,
    /// Files that could not be used (too large, not UTF-8, a symlink out of the tree).
    pub diagnostics: Vec<Diagnostic>,
    /// When the snapshot is limited to some paths, the rest of the source: read only so that
    /// references (a schedule's workflow, a step's agent, a template) resolve against the
    /// whole desired set; never applied or reported on.
    pub context: Vec<SourceFile>,
}

impl Snapshot {
    /// Names the snapshot after where it came from, e.g. `git:<sha>`, so records and status
    /// show the commit. The content revision is kept: what is read from one commit also
    /// depends on the configured paths and limits, and the memo key must cover that.
    pub fn with_revision(mut self, revision: String) -> Snapshot {
        let content = std::mem::replace(&mut self.revision, revision);
        self.content_revision = Some(content);
        self
    }
}

/// The revision of a set of files: the same files with the same content give the same one.
pub fn revision_of(prefix: &str, files: &[(String, &[u8])]) -> String {
    let digests: Vec<(&str, [u8; 32])> = files
        .iter()
        .map(|(path, content)| (path.as_str(), Sha256::digest(content).into()))
        .collect();
    revision_of_digests(prefix, &digests)
}

/// [`revision_of`] from each file's path and the SHA-256 of its content.
pub fn revision_of_digests(prefix: &str, files: &[(&str, [u8; 32])]) -> String {
    let mut hasher = Sha256::new();
    for (path, content) in files {
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(content);
    }
    let digest = hasher.finalize();
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}:{hex}")
}
