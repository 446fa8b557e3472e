//! The files that changed between two revisions of a git repository, for impact selection:
//! the git source's bare mirror (`<data_dir>/source/git`, see [`super::git`]) or the
//! repository whose work tree holds the project. Paths are relative to the repository's
//! top, as suites' `paths` globs are written. Everything here blocks (git2).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What can go wrong reading a change.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// A revision does not name a commit of the repository.
    #[error("`{revision}` is not a revision of {repository}: {message}")]
    Revision {
        /// The revision as given.
        revision: String,
        /// The repository, as [`Repo::label`] names it.
        repository: String,
        /// git's own words.
        message: String,
    },
    /// The repository cannot be opened or its trees compared.
    #[error("cannot read {repository}: {message}")]
    Git {
        /// The repository, as [`Repo::label`] names it.
        repository: String,
        /// git's own words.
        message: String,
    },
}

/// A repository to read changes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repo {
    /// Its git directory (a bare mirror) or work tree.
    pub path: PathBuf,
    /// The directory holding the manifest directories, relative to the repository's top,
    /// with `/` separators and a trailing `/` (empty for the top itself).
    pub prefix: String,
    /// How messages name it: "the git source's repository (PATH)", "the project's
    /// repository (PATH)".
    pub label: String,
}

/// The bare mirror the git source fetches into.
pub fn mirror_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("source").join("git")
}

fn prefix_of(path: &Path) -> String {
    let text = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    if text.is_empty() {
        text
    } else {
        format!("{text}/")
    }
}

impl Repo {
    /// The git source's mirror under `data_dir` when it has been fetched; `manifests` is
    /// the source's `path` (the manifests' directory inside the repository, `.` for the top).
    pub fn git_source(data_dir: &Path, manifests: &Path) -> Option<Repo> {
        let path = mirror_dir(data_dir);
        git2::Repository::open_bare(&path).ok()?;
        Some(Repo {
            label: format!("the git source's repository ({})", path.display()),
            prefix: prefix_of(manifests),
            path,
        })
    }

    /// The repository whose work tree holds `project_dir`, when there is one.
    pub fn project(project_dir: &Path) -> Option<Repo> {
        let dir = std::fs::canonicalize(project_dir).ok()?;
        let repo = git2::Repository::discover(&dir).ok()?;
        let top = std::fs::canonicalize(repo.workdir()?).ok()?;
        let inside = dir.strip_prefix(&top).ok()?;
        Some(Repo {
            label: format!("the project's repository ({})", top.display()),
            prefix: prefix_of(inside),
            path: top,
        })
    }

    fn open(&self) -> Result<git2::Repository, ChangeError> {
        git2::Repository::open(&self.path).map_err(|e| ChangeError::Git {
            repository: self.label.clone(),
            message: e.message().to_owned(),
        })
    }

    /// The full sha of the commit `revision` names (a sha, a branch, a tag, `HEAD~1`).
    pub fn resolve(&self, revision: &str) -> Result<String, ChangeError> {
        let repo = self.open()?;
        commit_of(&repo, revision, &self.label).map(|c| c.id().to_string())
    }

    /// Whether the repository holds the commit `revision` names.
    pub fn has(&self, revision: &str) -> bool {
        self.resolve(revision).is_ok()
    }

    /// The paths (relative to the repository's top, sorted, each once) of the files added,
    /// modified, deleted or renamed (both names) between the commits `from` and `to`.
    pub fn changed_files(&self, from: &str, to: &str) -> Result<Vec<String>, ChangeError> {
        let repo = self.open()?;
        let git_error = |e: git2::Error| ChangeError::Git {
            repository: self.label.clone(),
            message: e.message().to_owned(),
        };
        let old = commit_of(&repo, from, &self.label)?
            .tree()
            .map_err(git_error)?;
        let new = commit_of(&repo, to, &self.label)?
            .tree()
            .map_err(git_error)?;
        let diff = repo
            .diff_tree_to_tree(Some(&old), Some(&new), None)
            .map_err(git_error)?;
        let mut files = BTreeSet::new();
        for delta in diff.deltas() {
            for file in [delta.old_file(), delta.new_file()] {
                if let Some(path) = file.path() {
                    files.insert(path.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        Ok(files.into_iter().collect())
    }
}

fn commit_of<'r>(
    repo: &'r git2::Repository,
    revision: &str,
    label: &str,
) -> Result<git2::Commit<'r>, ChangeError> {
    let error = |message: String| ChangeError::Revision {
        revision: revision.to_owned(),
        repository: label.to_owned(),
        message,
    };
    if revision.trim().is_empty() || revision.starts_with('-') {
        return Err(error("expected a commit sha, branch or tag".to_owned()));
    }
    let object = repo
        .revparse_single(revision)
        .map_err(|e| error(e.message().to_owned()))?;
    object
        .peel_to_commit()
        .map_err(|e| error(e.message().to_owned()))
}

/// The first 7 characters of a sha, as messages show commits.
pub fn short(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn commit(repo: &git2::Repository, files: &[(&str, Option<&str>)]) -> String {
        let workdir = repo.workdir().unwrap().to_owned();
        let mut index = repo.index().unwrap();
        for (path, content) in files {
            let full = workdir.join(path);
            match content {
                Some(text) => {
                    fs::create_dir_all(full.parent().unwrap()).unwrap();
                    fs::write(&full, text).unwrap();
                    index.add_path(Path::new(path)).unwrap();
                }
                None => {
                    fs::remove_file(&full).unwrap();
                    index.remove_path(Path::new(path)).unwrap();
                }
            }
        }
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let signature = git2::Signature::now("Test", "test@example.com").unwrap();
        let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        repo.commit(Some("HEAD"), &signature, &signature, "c", &tree, &parents)
            .unwrap()
            .to_string()
    }

    #[test]
    fn changed_files_between_two_commits_of_the_project_repository() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        let first = commit(&repo, &[("api/a.py", Some("1")), ("web/b.js", Some("1"))]);
        let second = commit(
            &repo,
            &[
                ("api/a.py", Some("2")),
                ("web/b.js", None),
                ("shared/c.py", Some("1")),
            ],
        );
        fs::create_dir_all(dir.path().join("project")).unwrap();
        let project = Repo::project(&dir.path().join("project")).unwrap();
        assert_eq!(project.prefix, "project/");
        let top = Repo::project(dir.path()).unwrap();
        assert_eq!(top.prefix, "");
        assert_eq!(
            top.changed_files(&first, &second).unwrap(),
            ["api/a.py", "shared/c.py", "web/b.js"]
        );
        assert_eq!(top.changed_files("HEAD~1", "HEAD").unwrap().len(), 3);
        assert!(top.changed_files(&second, &second).unwrap().is_empty());
        assert_eq!(top.resolve("HEAD").unwrap(), second);
        assert!(top.has(&first) && !top.has("0123456789abcdef0123456789abcdef01234567"));
        let err = top.changed_files("nope", "HEAD").unwrap_err().to_string();
        assert!(
            err.starts_with("`nope` is not a revision of the project's repository ("),
            "{err}"
        );
        let err = top.changed_files("--all", "HEAD").unwrap_err().to_string();
        assert!(
            err.contains("expected a commit sha, branch or tag"),
            "{err}"
        );
        assert!(Repo::project(&std::env::temp_dir().join("no-such-dir-xyz")).is_none());
        assert!(Repo::git_source(dir.path(), Path::new(".")).is_none());
        assert_eq!(
            prefix_of(Path::new("deploy/manifests")),
            "deploy/manifests/"
        );
        assert_eq!(prefix_of(Path::new(".")), "");
    }
}
