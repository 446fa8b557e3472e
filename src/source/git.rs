//! The git source: a repository followed on one branch. The repository is fetched into a
//! bare mirror under the data directory (`<data_dir>/source/git`), and the fetched commit's
//! tree is exported into a directory of its own (`<data_dir>/source/checkout/<sha>`) that is
//! renamed into place only once complete, so a reconcile reads the files of exactly that
//! commit — nothing left over from an earlier one, nothing half written.
//!
//! Everything here blocks (git2 is a C library doing network and disk IO): call it from a
//! thread of its own or `spawn_blocking`. URLs may be `https://`, `http://`, `file://` or a
//! local path; ssh is not supported.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::spec::git::{check_branch, check_path, check_url, redact_url, UrlKind};

/// How often the repository is fetched when the configuration does not say.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// The local reference the fetched branch is kept under in the mirror.
const FETCHED_REF: &str = "refs/orchestrator/source";

/// A repository to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    /// Where to fetch from: an `https://`, `http://` or `file://` URL, or an absolute path.
    pub url: String,
    /// The branch; `None` follows the repository's default branch (its `HEAD`).
    pub branch: Option<String>,
    /// The directory inside the repository that holds the manifest directories (`.` for the
    /// top).
    pub path: PathBuf,
    /// How often to fetch.
    pub interval: Duration,
}

/// A commit, fetched and checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCheckout {
    /// `git:` and the full commit sha: the revision reconciles and status report.
    pub revision: String,
    /// The commit sha.
    pub commit: String,
    /// The branch it is the tip of.
    pub branch: String,
    /// The first line of the commit message.
    pub summary: String,
    /// The directory of the commit's files, joined with [`GitSource::path`]: the manifest
    /// paths of the configuration are relative to it.
    pub root: PathBuf,
    /// Whether the commit was already checked out (nothing new was fetched).
    pub unchanged: bool,
}

/// What can go wrong following a repository.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The branch asked for is not in the repository.
    #[error("branch `{branch}` does not exist in {url}{}", branches_hint(.available))]
    BranchNotFound {
        /// The repository, without credentials.
        url: String,
        /// The branch asked for.
        branch: String,
        /// The branches the repository has.
        available: Vec<String>,
    },
    /// No branch was asked for and the repository's `HEAD` names none (an empty repository).
    #[error("{url} has no default branch (it is empty, or its HEAD names no branch): commit to it, or name a branch with source.git.branch or --source URL#BRANCH")]
    NoDefaultBranch {
        /// The repository, without credentials.
        url: String,
    },
    /// The configured path is not a directory in the commit.
    #[error("source.git.path `{path}` is not a directory in {url} at commit {commit}")]
    PathNotFound {
        /// The repository, without credentials.
        url: String,
        /// The path.
        path: String,
        /// The commit.
        commit: String,
    },
    /// Talking to the remote failed (unreachable, not a repository, refused).
    #[error("cannot fetch {url}: {message}")]
    Fetch {
        /// The repository, without credentials.
        url: String,
        /// libgit2's message.
        message: String,
    },
    /// The mirror or the checkout under the data directory cannot be written or read.
    #[error("cannot use {path}: {message}")]
    Local {
        /// The file or directory.
        path: String,
        /// What failed.
        message: String,
    },
}

fn branches_hint(available: &[String]) -> String {
    if available.is_empty() {
        " (it has no branches)".to_owned()
    } else {
        format!(" (branches: {})", available.join(", "))
    }
}

/// Splits `URL[#branch]` as `--source` takes it.
pub fn split_spec(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once('#') {
        Some((url, branch)) => (url, Some(branch)),
        None => (spec, None),
    }
}

impl GitSource {
    /// A source from its settings, checked; a relative local path is taken relative to
    /// `base` (the project directory).
    pub fn new(
        url: &str,
        branch: Option<&str>,
        path: Option<&str>,
        interval: Option<Duration>,
        base: &Path,
    ) -> Result<GitSource, String> {
        let kind = check_url(url)?;
        if let Some(branch) = branch {
            check_branch(branch)?;
        }
        let path = path.unwrap_or(".");
        check_path(path)?;
        let interval = interval.unwrap_or(DEFAULT_INTERVAL);
        if interval.is_zero() {
            return Err("the fetch interval must be longer than zero".to_owned());
        }
        let url = if kind == UrlKind::Path && Path::new(url).is_relative() {
            base.join(url).display().to_string()
        } else {
            url.to_owned()
        };
        Ok(GitSource {
            url,
            branch: branch.map(str::to_owned),
            path: PathBuf::from(path),
            interval,
        })
    }

    /// The URL without credentials.
    pub fn display_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Fetches the branch and checks out its tip under `<data_dir>/source`.
    pub fn sync(&self, data_dir: &Path) -> Result<GitCheckout, GitError> {
        // Absolute: libgit2 resolves a relative checkout directory against something else.
        let base = std::path::absolute(data_dir.join("source"))
            .map_err(|e| local_error(&data_dir.join("source"), e))?;
        let mirror = open_mirror(&base.join("git"))?;
        let url = self.display_url();
        let fetch_error = |err: git2::Error| GitError::Fetch {
            url: url.clone(),
            message: err.message().to_owned(),
        };

        let mut remote = mirror.remote_anonymous(&self.url).map_err(fetch_error)?;
        remote
            .connect(git2::Direction::Fetch)
            .map_err(fetch_error)?;
        let heads: Vec<(String, git2::Oid)> = remote
            .list()
            .map_err(fetch_error)?
            .iter()
            .map(|head| (head.name().to_owned(), head.oid()))
            .collect();
        let branch = match &self.branch {
            Some(branch) => branch.clone(),
            None => {
                let default = remote.default_branch().ok();
                default
                    .as_ref()
                    .and_then(|buf| buf.as_str().ok())
                    .and_then(|name| name.strip_prefix("refs/heads/"))
                    .map(str::to_owned)
                    .ok_or_else(|| GitError::NoDefaultBranch { url: url.clone() })?
            }
        };
        let wanted = format!("refs/heads/{branch}");
        let Some(advertised) = heads.iter().find(|(name, _)| *name == wanted).map(|h| h.1) else {
            return Err(GitError::BranchNotFound {
                url,
                branch,
                available: heads
                    .iter()
                    .filter_map(|(name, _)| name.strip_prefix("refs/heads/"))
                    .map(str::to_owned)
                    .collect(),
            });
        };
        // Only download when the tip is not here yet: an unchanged branch costs one listing.
        if mirror.find_commit(advertised).is_err() {
            let mut options = git2::FetchOptions::new();
            options.download_tags(git2::AutotagOption::None);
            options.proxy_options({
                let mut proxy = git2::ProxyOptions::new();
                proxy.auto();
                proxy
            });
            remote
                .fetch(
                    &[format!("+{wanted}:{FETCHED_REF}")],
                    Some(&mut options),
                    Some("orchestrator: fetch"),
                )
                .map_err(fetch_error)?;
        } else {
            mirror
                .reference(FETCHED_REF, advertised, true, "orchestrator: unchanged")
                .map_err(|e| local_error(&base.join("git"), e))?;
        }
        let _ = remote.disconnect();
        drop(remote);

        let commit_id = mirror
            .refname_to_id(FETCHED_REF)
            .map_err(|e| local_error(&base.join("git"), e))?;
        let commit = mirror
            .find_commit(commit_id)
            .map_err(|e| local_error(&base.join("git"), e))?;
        let sha = commit_id.to_string();
        let checkouts = base.join("checkout");
        let dir = checkouts.join(&sha);
        let unchanged = dir.is_dir();
        if !unchanged {
            export_tree(&mirror, &commit, &checkouts, &sha)?;
        }
        remove_others(&checkouts, &sha);
        let root = if self.path == Path::new(".") {
            dir
        } else {
            dir.join(&self.path)
        };
        if !root.is_dir() {
            return Err(GitError::PathNotFound {
                url,
                path: self.path.display().to_string(),
                commit: sha,
            });
        }
        Ok(GitCheckout {
            revision: format!("git:{sha}"),
            summary: commit
                .summary()
                .ok()
                .flatten()
                .unwrap_or_default()
                .to_owned(),
            commit: sha,
            branch,
            root,
            unchanged,
        })
    }
}

fn local_error(path: &Path, err: impl std::fmt::Display) -> GitError {
    GitError::Local {
        path: path.display().to_string(),
        message: err.to_string(),
    }
}

/// Opens the bare mirror, creating it on first use (or anew when what is there is not a
/// repository, e.g. a creation cut short).
fn open_mirror(path: &Path) -> Result<git2::Repository, GitError> {
    if let Ok(repository) = git2::Repository::open_bare(path) {
        return Ok(repository);
    }
    if path.exists() {
        fs::remove_dir_all(path).map_err(|e| local_error(path, e))?;
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| local_error(parent, e))?;
    }
    git2::Repository::init_bare(path).map_err(|e| local_error(path, e))
}

/// Writes a commit's files into `<checkouts>/<sha>`: into a temporary directory first, then
/// renamed, so the directory under the final name is always complete.
fn export_tree(
    mirror: &git2::Repository,
    commit: &git2::Commit<'_>,
    checkouts: &Path,
    sha: &str,
) -> Result<(), GitError> {
    let temporary = checkouts.join(format!(".{sha}.tmp"));
    if temporary.exists() {
        fs::remove_dir_all(&temporary).map_err(|e| local_error(&temporary, e))?;
    }
    fs::create_dir_all(&temporary).map_err(|e| local_error(&temporary, e))?;
    let mut checkout = git2::build::CheckoutBuilder::new();
    checkout
        .force()
        .target_dir(&temporary)
        .update_index(false)
        .recreate_missing(true);
    mirror
        .checkout_tree(commit.as_object(), Some(&mut checkout))
        .map_err(|e| local_error(&temporary, e))?;
    let dir = checkouts.join(sha);
    fs::rename(&temporary, &dir).map_err(|e| local_error(&dir, e))
}

/// Removes every checkout but the current one (and temporary directories left by a crash).
fn remove_others(checkouts: &Path, keep: &str) {
    let Ok(entries) = fs::read_dir(checkouts) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name() != keep {
            let path = entry.path();
            if let Err(err) = fs::remove_dir_all(&path) {
                tracing::warn!("cannot remove the old checkout {}: {err}", path.display());
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Commits `files` (path, content; `None` deletes) on top of the branch `HEAD` names.
    pub(crate) fn commit(
        repo: &git2::Repository,
        files: &[(&str, Option<&str>)],
        message: &str,
    ) -> String {
        let workdir = repo.workdir().expect("a work tree").to_owned();
        let mut index = repo.index().unwrap();
        for (path, content) in files {
            let full = workdir.join(path);
            match content {
                Some(content) => {
                    fs::create_dir_all(full.parent().unwrap()).unwrap();
                    fs::write(&full, content).unwrap();
                    index.add_path(Path::new(path)).unwrap();
                }
                None => {
                    let _ = fs::remove_file(&full);
                    index.remove_path(Path::new(path)).unwrap();
                }
            }
        }
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let signature = git2::Signature::now("Test", "test@example.com").unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(
            Some("HEAD"),
            &signature,
            &signature,
            message,
            &tree,
            &parents,
        )
        .unwrap()
        .to_string()
    }

    fn new_repo(dir: &Path, branch: &str) -> git2::Repository {
        let mut options = git2::RepositoryInitOptions::new();
        options.initial_head(branch);
        git2::Repository::init_opts(dir, &options).unwrap()
    }

    fn source(url: &Path, branch: Option<&str>, path: Option<&str>) -> GitSource {
        GitSource::new(
            &url.display().to_string(),
            branch,
            path,
            None,
            Path::new("/"),
        )
        .unwrap()
    }

    #[test]
    fn clones_then_fetches_each_new_commit_into_a_clean_checkout() {
        let temp = tempfile::tempdir().unwrap();
        let repo_dir = temp.path().join("repo");
        let data = temp.path().join("data");
        let repo = new_repo(&repo_dir, "main");
        let first = commit(
            &repo,
            &[
                ("workflows/a.yaml", Some("name: A\n")),
                ("workflows/b.yaml", Some("name: B\n")),
            ],
            "first",
        );
        let git = source(&repo_dir, Some("main"), None);

        let checkout = git.sync(&data).unwrap();
        assert_eq!(checkout.revision, format!("git:{first}"));
        assert_eq!(checkout.branch, "main");
        assert_eq!(checkout.summary, "first");
        assert!(!checkout.unchanged);
        assert_eq!(
            fs::read_to_string(checkout.root.join("workflows/a.yaml")).unwrap(),
            "name: A\n"
        );
        assert!(data.join("source/git").is_dir());

        // Unchanged: the same checkout, nothing downloaded.
        let again = git.sync(&data).unwrap();
        assert_eq!(again.revision, checkout.revision);
        assert!(again.unchanged);

        let second = commit(
            &repo,
            &[
                ("workflows/a.yaml", Some("name: A2\n")),
                ("workflows/b.yaml", None),
            ],
            "second",
        );
        let checkout = git.sync(&data).unwrap();
        assert_eq!(checkout.revision, format!("git:{second}"));
        assert_eq!(
            fs::read_to_string(checkout.root.join("workflows/a.yaml")).unwrap(),
            "name: A2\n"
        );
        assert!(
            !checkout.root.join("workflows/b.yaml").exists(),
            "a file deleted in the commit is gone from the checkout"
        );
        let entries: Vec<_> = fs::read_dir(data.join("source/checkout"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            entries,
            [std::ffi::OsString::from(&second)],
            "only the current checkout stays"
        );
    }

    #[test]
    fn follows_the_default_branch_and_file_urls() {
        let temp = tempfile::tempdir().unwrap();
        let repo_dir = temp.path().join("repo");
        let repo = new_repo(&repo_dir, "trunk");
        let sha = commit(&repo, &[("x.yaml", Some("name: X\n"))], "x");
        let url = format!("file://{}", repo_dir.display());
        let git = GitSource::new(&url, None, None, None, Path::new("/")).unwrap();
        let checkout = git.sync(&temp.path().join("data")).unwrap();
        assert_eq!(checkout.commit, sha);
        assert_eq!(checkout.branch, "trunk");
    }

    #[test]
    fn a_missing_branch_is_a_clear_error() {
        let temp = tempfile::tempdir().unwrap();
        let repo_dir = temp.path().join("repo");
        let repo = new_repo(&repo_dir, "main");
        commit(&repo, &[("x.yaml", Some("name: X\n"))], "x");
        let err = source(&repo_dir, Some("release"), None)
            .sync(&temp.path().join("data"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "branch `release` does not exist in {} (branches: main)",
                repo_dir.display()
            )
        );
    }

    #[test]
    fn an_unreachable_repository_is_a_fetch_error() {
        let temp = tempfile::tempdir().unwrap();
        let missing = temp.path().join("nowhere");
        let err = source(&missing, None, None)
            .sync(&temp.path().join("data"))
            .unwrap_err();
        assert!(matches!(err, GitError::Fetch { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("cannot fetch {}: ", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn a_path_names_the_subdirectory_holding_the_manifests() {
        let temp = tempfile::tempdir().unwrap();
        let repo_dir = temp.path().join("repo");
        let repo = new_repo(&repo_dir, "main");
        commit(
            &repo,
            &[
                ("README.md", Some("hello\n")),
                ("deploy/tests/workflows/a.yaml", Some("name: A\n")),
            ],
            "x",
        );
        let data = temp.path().join("data");
        let checkout = source(&repo_dir, None, Some("deploy/tests"))
            .sync(&data)
            .unwrap();
        assert!(checkout.root.ends_with("deploy/tests"));
        assert!(checkout.root.join("workflows/a.yaml").is_file());

        let err = source(&repo_dir, None, Some("nope"))
            .sync(&data)
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("source.git.path `nope` is not a directory in "),
            "{err}"
        );
    }

    #[test]
    fn urls_branches_and_paths_are_checked() {
        assert_eq!(
            check_url("https://example.com/org/repo.git"),
            Ok(UrlKind::Https)
        );
        assert_eq!(check_url("file:///srv/repo"), Ok(UrlKind::File));
        assert_eq!(check_url("../repo"), Ok(UrlKind::Path));
        assert_eq!(
            check_url("").unwrap_err(),
            "the git source URL is empty: expected an https:// or file:// URL or a local path"
        );
        assert_eq!(
            check_url("ftp://example.com/repo").unwrap_err(),
            "unsupported URL scheme `ftp` in `ftp://example.com/repo`: expected an https:// or file:// URL or a local path"
        );
        assert!(check_url("git@github.com:org/repo.git")
            .unwrap_err()
            .starts_with("ssh URLs are not supported"));
        assert!(check_url("https://").is_err());
        assert!(check_branch("feature/x").is_ok());
        assert!(check_branch("bad..name").is_err());
        assert!(check_path("deploy/tests").is_ok());
        assert!(check_path("../x").is_err());
        assert!(check_path("/abs").is_err());
        assert_eq!(
            redact_url("https://user:token@example.com/org/repo.git"),
            "https://***@example.com/org/repo.git"
        );
        assert_eq!(split_spec("/srv/repo#main"), ("/srv/repo", Some("main")));
        assert_eq!(split_spec("/srv/repo"), ("/srv/repo", None));
        let relative = GitSource::new("repo", None, None, None, Path::new("/project")).unwrap();
        assert_eq!(relative.url, "/project/repo");
        assert_eq!(relative.interval, DEFAULT_INTERVAL);
    }
}
