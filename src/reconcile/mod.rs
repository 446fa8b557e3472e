//! Reconciliation: from a snapshot of files to the desired set of objects ([`desired_set`],
//! pure), from desired and applied state to a plan ([`diff`], pure), both together against
//! the store with the memo of an unchanged revision ([`prepare`]), and from a plan to the
//! store ([`apply`]).

pub mod apply;
pub mod diff;
pub mod prepare;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};

use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::diagnostics::Diagnostic;
use crate::manifest::{self, parse, Kind, Manifest};
use crate::schema::{self, semantic, SchemaName};
use crate::source::dir::SourcePath;
use crate::source::{Snapshot, SourceFile};
use crate::store::ObjectKey;

pub use apply::{apply, apply_returning_records, ApplyReport};
pub use diff::{diff, Change, Plan};
pub use prepare::{prepare, prepare_checked, Prepared, ReconcileOptions};

/// A valid object the snapshot declares.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredObject {
    /// Kind and id.
    pub key: ObjectKey,
    /// The declared name.
    pub name: String,
    /// The manifest with aliases normalised (shared with the file's check).
    pub spec: std::sync::Arc<Value>,
    /// Content hash of the spec.
    pub hash: String,
    /// The file it is declared in.
    pub file: String,
}

/// An object whose manifest in the snapshot is invalid.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidObject {
    /// The declared name.
    pub name: String,
    /// The file it is declared in.
    pub file: String,
    /// What is wrong.
    pub diagnostics: Vec<Diagnostic>,
}

/// What a snapshot asks for.
#[derive(Debug, Clone, Default)]
pub struct DesiredSet {
    /// The snapshot's revision.
    pub revision: String,
    /// Valid objects by key.
    pub objects: BTreeMap<ObjectKey, DesiredObject>,
    /// Objects whose manifest is invalid, by key: their last good version stays in force.
    pub invalid: BTreeMap<ObjectKey, InvalidObject>,
    /// Files with problems that hide which objects they declare (syntax errors, unreadable
    /// files, documents without a usable name): objects last seen in them are kept.
    pub damaged_files: BTreeSet<String>,
    /// Every diagnostic, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
}

impl DesiredSet {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// What a check may also look at besides the manifests: what the configuration offers and
/// what resolves where the check runs. Left at its default, neither is checked.
#[derive(Default)]
pub struct Surroundings<'a> {
    /// The notification channels some environment's configuration defines: an alert action
    /// naming another one is warned about.
    pub channels: Option<BTreeSet<String>>,
    /// Resolves a secret reference (`env:NAME`, `file:PATH`) here: `Err` says why it does
    /// not, and the reference is warned about.
    pub secrets: Option<&'a SecretCheck>,
    /// Every worker that ever registered (name, labels): a `runs_on` none of them
    /// satisfies is warned about.
    pub workers: Option<Vec<(String, BTreeMap<String, String>)>>,
    /// Today (UTC): a Quarantine entry past its `until` is warned about.
    pub today: Option<chrono::NaiveDate>,
    /// Every test there are results of: a Quarantine entry covering none of them is
    /// warned about.
    pub tests: Option<Vec<semantic::KnownTest>>,
}

/// Whether a secret reference resolves where the check runs, and if not, why.
pub type SecretCheck = dyn Fn(&str) -> Result<(), String> + Sync;

/// Parses, validates and cross-checks every manifest of a snapshot.
pub fn desired_set(snapshot: &Snapshot) -> DesiredSet {
    desired_set_with(snapshot, &Surroundings::default())
}

/// [`desired_set`], also checking the manifests against their [`Surroundings`].
pub fn desired_set_with(snapshot: &Snapshot, surroundings: &Surroundings<'_>) -> DesiredSet {
    desired_set_checked(snapshot, surroundings, None)
}

/// What parsing and validating each file on its own found, by path, with a digest of the
/// text it was found in: a file whose text is unchanged is not parsed again. Sound because
/// checking a file on its own is a pure function of its path and text (the rules are built
/// into the release); whatever spans files — duplicate ids, references, the surroundings —
/// is checked afresh every time. A long-lived reconciler (the controller) keeps one.
#[derive(Default)]
pub struct FileChecks {
    files: std::sync::Mutex<std::collections::HashMap<String, CheckedFile>>,
    parsed: std::sync::atomic::AtomicUsize,
}

struct CheckedFile {
    digest: [u8; 32],
    /// Shared with the reconciles that use it: a reconcile reads it, never copies it.
    result: std::sync::Arc<FileResult>,
}

impl std::fmt::Debug for FileChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileChecks")
            .field("files", &self.len())
            .finish()
    }
}

impl FileChecks {
    /// How many files were parsed and validated through it so far (the others were
    /// remembered).
    pub fn parsed(&self) -> usize {
        self.parsed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many files are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no file is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, CheckedFile>> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The check of one file: remembered when its text is unchanged, else done and
    /// remembered.
    fn check(&self, source: &SourceFile) -> std::sync::Arc<FileResult> {
        let digest: [u8; 32] = Sha256::digest(source.text.as_bytes()).into();
        if let Some(known) = self.lock().get(&source.path) {
            if known.digest == digest {
                return known.result.clone();
            }
        }
        let result = std::sync::Arc::new(check_file(source));
        self.parsed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(
            source.path.clone(),
            CheckedFile {
                digest,
                result: result.clone(),
            },
        );
        result
    }

    /// Forgets every file but these (after a reconcile of the whole source: files gone
    /// from it are not kept).
    pub fn retain_only(&self, files: &[SourceFile]) {
        let present: std::collections::HashSet<&str> =
            files.iter().map(|f| f.path.as_str()).collect();
        self.lock()
            .retain(|path, _| present.contains(path.as_str()));
    }
}

/// [`desired_set_with`], taking each unchanged file's own check from `checks` (and
/// remembering the others there) instead of parsing it again. The outcome is the same as
/// without.
pub fn desired_set_checked(
    snapshot: &Snapshot,
    surroundings: &Surroundings<'_>,
    checks: Option<&FileChecks>,
) -> DesiredSet {
    let mut set = DesiredSet {
        revision: snapshot.revision.clone(),
        ..DesiredSet::default()
    };
    for diagnostic in &snapshot.diagnostics {
        set.damaged_files.insert(diagnostic.file.clone());
        set.diagnostics.push(diagnostic.clone());
    }

    // Files are independent until references are checked: parse and validate in parallel.
    let check_all = || {
        snapshot
            .files
            .par_iter()
            .map(|file| match checks {
                Some(checks) => checks.check(file),
                None => std::sync::Arc::new(check_file(file)),
            })
            .collect()
    };
    let per_file: Vec<std::sync::Arc<FileResult>> = match check_pool() {
        Some(pool) => pool.install(check_all),
        None => check_all(),
    };

    // The candidates are read where the file checks hold them; what the checks across files
    // add to each is kept beside it.
    let mut candidates: Vec<&Candidate> = Vec::new();
    for result in &per_file {
        if result.damaged {
            set.damaged_files.insert(result.file.clone());
        }
        set.diagnostics.extend(result.diagnostics.iter().cloned());
        candidates.extend(result.candidates.iter());
    }
    let mut added: Vec<Vec<Diagnostic>> = vec![Vec::new(); candidates.len()];

    // The rest of the source, when the snapshot is limited to some paths: its objects are
    // what the snapshot's references and ids are checked against, as in a whole check.
    let parse_context = || {
        snapshot
            .context
            .par_iter()
            .flat_map_iter(context_manifests)
            .collect()
    };
    let context: Vec<Manifest> = match check_pool() {
        Some(pool) => pool.install(parse_context),
        None => parse_context(),
    };

    // Ids must be unique within a kind across the whole source.
    let keyed: Vec<(Kind, String, &Manifest)> = candidates
        .iter()
        .map(|c| (c.manifest.kind, c.id.clone(), &c.manifest))
        .chain(context.iter().filter_map(|m| Some((m.kind, m.id()?, m))))
        .collect();
    for (index, diagnostic) in semantic::duplicate_ids(&keyed) {
        if let Some(added) = added.get_mut(index) {
            added.push(diagnostic);
        }
    }

    let catalog =
        semantic::Catalog::new(candidates.iter().map(|c| &c.manifest).chain(context.iter()));
    let references: Vec<Vec<Diagnostic>> = candidates
        .par_iter()
        .map(|c| {
            let mut found = semantic::check_references(&c.manifest, &catalog);
            if let Some(channels) = &surroundings.channels {
                found.extend(semantic::check_channels(&c.manifest, channels));
            }
            if let Some(workers) = &surroundings.workers {
                found.extend(semantic::check_runs_on(&c.manifest, workers));
            }
            if surroundings.today.is_some() || surroundings.tests.is_some() {
                found.extend(semantic::check_quarantine(
                    &c.manifest,
                    surroundings.today,
                    surroundings.tests.as_deref(),
                ));
            }
            if let Some(resolve) = surroundings.secrets {
                for (pointer, reference) in semantic::secret_references(&c.manifest) {
                    if let Err(why) = resolve(&reference) {
                        found.push(c.manifest.warning_at(
                            &pointer,
                            format!("the secret `{reference}` does not resolve here: {why}"),
                        ));
                    }
                }
            }
            found
        })
        .collect();

    let duplicated: BTreeSet<ObjectKey> = {
        let mut seen = BTreeSet::new();
        candidates
            .iter()
            .map(|c| c.key())
            .filter(|k| !seen.insert(k.clone()))
            .collect()
    };
    for ((candidate, added), reference_diagnostics) in
        candidates.into_iter().zip(added).zip(references)
    {
        let diagnostics: Vec<Diagnostic> = candidate
            .diagnostics
            .iter()
            .cloned()
            .chain(added)
            .chain(reference_diagnostics)
            .collect();
        let key = candidate.key();
        let name = candidate.manifest.name().unwrap_or_default().to_owned();
        let file = candidate.manifest.file.clone();
        set.diagnostics.extend(diagnostics.iter().cloned());
        if diagnostics.iter().any(Diagnostic::is_error) {
            let entry = set.invalid.entry(key).or_insert_with(|| InvalidObject {
                name,
                file,
                diagnostics: Vec::new(),
            });
            entry.diagnostics.extend(diagnostics);
        } else if !duplicated.contains(&key) {
            set.objects.insert(
                key.clone(),
                DesiredObject {
                    key,
                    name,
                    spec: candidate.manifest.value.clone(),
                    hash: candidate.hash.clone(),
                    file,
                },
            );
        }
    }
    set.diagnostics.sort_by(|a, b| {
        (&a.file, a.line, a.column, &a.message).cmp(&(&b.file, b.line, b.column, &b.message))
    });
    set.diagnostics.dedup();
    set
}

/// The stack of the threads that check files: parsing recurses per nesting level, up to
/// `parse::MAX_DEPTH`, and rayon's default 2 MiB overflowed on 60 levels in a debug build.
const CHECK_STACK_BYTES: usize = 16 << 20;

/// The threads files are checked on, with stacks deep enough for the deepest document the
/// parser accepts (`None` if the threads cannot be started: the global pool then).
fn check_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .thread_name(|index| format!("manifest-check-{index}"))
            .stack_size(CHECK_STACK_BYTES)
            .build()
            .ok()
    })
    .as_ref()
}

/// The content hash of a spec: SHA-256 of its JSON, first 16 hex digits.
pub fn content_hash(spec: &Value) -> String {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    Sha256::digest(bytes)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The column of the `inner`-th character of a one-line scalar that starts at
/// `line:column`, stepping over an opening quote; the scalar's own column when the text
/// there is not what was parsed.
fn column_inside_scalar(text: &str, line: u32, column: u32, inner: u32) -> u32 {
    let Some(source_line) = text.lines().nth(line.saturating_sub(1) as usize) else {
        return column;
    };
    let mut rest = source_line.chars().skip(column.saturating_sub(1) as usize);
    let quote = u32::from(matches!(rest.next(), Some('"' | '\'')));
    column + quote + inner.saturating_sub(1)
}

/// A document that got as far as having a kind and an id.
struct Candidate {
    manifest: Manifest,
    id: String,
    /// [`content_hash`] of the manifest's value, computed once with the check.
    hash: String,
    diagnostics: Vec<Diagnostic>,
}

impl Candidate {
    fn key(&self) -> ObjectKey {
        ObjectKey {
            kind: self.manifest.kind,
            id: self.id.clone(),
        }
    }
}

struct FileResult {
    file: String,
    damaged: bool,
    candidates: Vec<Candidate>,
    diagnostics: Vec<Diagnostic>,
}

/// Parses one file and validates each of its documents on its own.
fn check_file(source: &SourceFile) -> FileResult {
    let mut result = FileResult {
        file: source.path.clone(),
        damaged: false,
        candidates: Vec::new(),
        diagnostics: Vec::new(),
    };
    let is_json = source.path.ends_with(".json");
    let documents = if is_json {
        parse::parse_json(&source.text).map(|d| vec![d])
    } else {
        parse::parse_yaml(&source.text)
    };
    let documents = match documents {
        Ok(documents) => documents,
        Err(err) => {
            result.damaged = true;
            result.diagnostics.push(Diagnostic::error(
                &source.path,
                err.line,
                err.column,
                "",
                err.message,
            ));
            return result;
        }
    };
    let many = documents.len() > 1;
    for (index, document) in documents.into_iter().enumerate() {
        // In a multi-document YAML file, pointers start with the document's index.
        let prefix = if many {
            format!("/{index}")
        } else {
            String::new()
        };
        let (manifests, problems) = manifest::extract(&source.path, document, &prefix);
        if problems.iter().any(Diagnostic::is_error) && manifests.is_empty() {
            result.damaged = true;
        }
        result.diagnostics.extend(problems);
        for manifest in manifests {
            let mut diagnostics: Vec<Diagnostic> =
                schema::validate(SchemaName::Manifest(manifest.kind), &manifest.value)
                    .into_iter()
                    .map(|v| {
                        let mut diagnostic = manifest.error_at(&v.pointer, v.at_key, v.message);
                        if let Some(inner) = v.inner_column {
                            diagnostic.column = column_inside_scalar(
                                &source.text,
                                diagnostic.line,
                                diagnostic.column,
                                inner,
                            );
                        }
                        diagnostic
                    })
                    .collect();
            let Some(id) = manifest.id() else {
                if manifest.name().is_some_and(|n| !n.is_empty()) {
                    diagnostics.push(
                        manifest.error_at(
                            "/name",
                            false,
                            "name must contain a letter or digit to derive an id from; or set `id`"
                                .to_owned(),
                        ),
                    );
                } else if manifest.kind == Kind::WorkflowTemplate {
                    diagnostics.push(manifest.error_at(
                        "",
                        false,
                        "missing required field `name` (or the guide's `template`)".to_owned(),
                    ));
                }
                // Without an id nothing can be tracked: the file keeps what it had.
                result.damaged = true;
                result.diagnostics.extend(diagnostics);
                continue;
            };
            diagnostics.extend(semantic::check_object(&manifest));
            let hash = content_hash(&manifest.value);
            result.candidates.push(Candidate {
                manifest,
                id,
                hash,
                diagnostics,
            });
        }
    }
    result
}

/// The manifests of a file read for references only: parsed and extracted, not validated
/// (an invalid object keeps its last good version, so references to it still hold).
fn context_manifests(source: &SourceFile) -> Vec<Manifest> {
    let documents = if source.path.ends_with(".json") {
        parse::parse_json(&source.text).map(|d| vec![d])
    } else {
        parse::parse_yaml(&source.text)
    };
    let Ok(documents) = documents else {
        return Vec::new();
    };
    let many = documents.len() > 1;
    documents
        .into_iter()
        .enumerate()
        .flat_map(|(index, document)| {
            let prefix = if many {
                format!("/{index}")
            } else {
                String::new()
            };
            manifest::extract(&source.path, document, &prefix).0
        })
        .collect()
}

/// Reads the manifests a reconcile works on: the given paths (which then limit deletions to
/// them: the second value, as shown in records), or the configured manifest directories.
pub fn load_manifests(
    config: &crate::config::LoadedConfig,
    paths: &[std::path::PathBuf],
) -> Result<(Snapshot, Option<Vec<String>>), crate::source::dir::DirError> {
    load_manifests_under(config, &config.project_dir, paths)
}

/// [`load_manifests`], reading only the files whose stamp `index` does not know (see
/// [`FileIndex`](crate::source::dir::FileIndex)): what a long-lived reconciler calls, so
/// that a reconcile of an unchanged tree opens no file. A load of the whole source forgets
/// the files gone from it.
pub fn load_manifests_indexed(
    config: &crate::config::LoadedConfig,
    paths: &[std::path::PathBuf],
    index: &crate::source::dir::FileIndex,
) -> Result<(Snapshot, Option<Vec<String>>), crate::source::dir::DirError> {
    let loaded = load_manifests_in(config, &config.project_dir, paths, Some(index))?;
    if loaded.1.is_none() {
        index.retain_only(&loaded.0);
    }
    Ok(loaded)
}

/// [`load_manifests`] with the configured manifest directories relative to `root` instead of
/// the project directory (a git checkout); paths are shown relative to `root`, and symlinks
/// may not leave it.
pub fn load_manifests_under(
    config: &crate::config::LoadedConfig,
    root: &std::path::Path,
    paths: &[std::path::PathBuf],
) -> Result<(Snapshot, Option<Vec<String>>), crate::source::dir::DirError> {
    load_manifests_in(config, root, paths, None)
}

fn load_manifests_in(
    config: &crate::config::LoadedConfig,
    root: &std::path::Path,
    paths: &[std::path::PathBuf],
    index: Option<&crate::source::dir::FileIndex>,
) -> Result<(Snapshot, Option<Vec<String>>), crate::source::dir::DirError> {
    use crate::source::dir::{self, DirOptions};
    let (source_paths, scope): (Vec<SourcePath>, _) = if paths.is_empty() {
        (manifest_directories(config, root), None)
    } else {
        let shown = paths
            .iter()
            .map(|p| {
                let p = p.strip_prefix(root).unwrap_or(p);
                let p = p.strip_prefix("./").unwrap_or(p);
                p.display().to_string().trim_end_matches('/').to_owned()
            })
            .collect();
        let paths = paths
            .iter()
            .map(|p| SourcePath {
                path: p.clone(),
                required: true,
            })
            .collect();
        (paths, Some(shown))
    };
    let options = DirOptions {
        root: root.to_owned(),
        max_file_bytes: config.config.manifests.max_file_bytes,
    };
    let mut snapshot = dir::load_indexed(&source_paths, &options, index)?;
    if scope.is_some() {
        snapshot.context = rest_of_source(config, root, &options, &snapshot, index);
    }
    Ok((snapshot, scope))
}

/// The files of the configured manifest directories that `scoped` does not hold (compared by
/// their real paths, however they were named); none when they cannot be read.
fn rest_of_source(
    config: &crate::config::LoadedConfig,
    root: &std::path::Path,
    options: &crate::source::dir::DirOptions,
    scoped: &Snapshot,
    index: Option<&crate::source::dir::FileIndex>,
) -> Vec<SourceFile> {
    use crate::source::dir;
    let real = |shown: &str| {
        let path = std::path::Path::new(shown);
        let joined = if path.is_absolute() {
            path.to_owned()
        } else {
            root.join(path)
        };
        std::fs::canonicalize(&joined)
            .or_else(|_| std::fs::canonicalize(path))
            .unwrap_or(joined)
    };
    let held: BTreeSet<std::path::PathBuf> = scoped.files.iter().map(|f| real(&f.path)).collect();
    match dir::load_indexed(&manifest_directories(config, root), options, index) {
        Ok(whole) => whole
            .files
            .into_iter()
            .filter(|f| !held.contains(&real(&f.path)))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The configured manifest directories under `root`, each optional.
fn manifest_directories(
    config: &crate::config::LoadedConfig,
    root: &std::path::Path,
) -> Vec<SourcePath> {
    config
        .config
        .manifests
        .paths
        .iter()
        .map(|p| SourcePath {
            path: root.join(p),
            required: false,
        })
        .collect()
}
