//! Git repositories for the tests of the git source: made with git2 in temp dirs, with what
//! `orchestrator init` writes committed on `main` (no network).

use std::fs;
use std::path::Path;

use super::orchestrator;

/// A repository holding what `orchestrator init` writes, committed on `main`; the
/// repository and the commit's id.
pub(crate) fn init_repo(dir: &Path) -> (git2::Repository, String) {
    orchestrator(
        dir.parent().unwrap(),
        &["init", dir.file_name().unwrap().to_str().unwrap()],
    )
    .expect_code(0);
    let mut options = git2::RepositoryInitOptions::new();
    options.initial_head("main");
    let repo = git2::Repository::init_opts(dir, &options).unwrap();
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let sha = commit_index(&repo, "orchestrator init");
    (repo, sha)
}

/// Configures the project (its `config/development.yaml`) to follow the `main` branch of
/// the repository at `repository`.
pub(crate) fn follow_main(project: &Path, repository: &Path) {
    let config = project.join("config/development.yaml");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        format!(
            "{text}source:\n  git:\n    url: {}\n    branch: main\n",
            repository.display()
        ),
    )
    .unwrap();
}

/// Writes (or with `None` deletes) files in the work tree and commits them.
pub(crate) fn commit(
    repo: &git2::Repository,
    files: &[(&str, Option<&str>)],
    message: &str,
) -> String {
    let workdir = repo.workdir().unwrap().to_owned();
    let mut index = repo.index().unwrap();
    for (path, content) in files {
        match content {
            Some(content) => {
                fs::write(workdir.join(path), content).unwrap();
                index.add_path(Path::new(path)).unwrap();
            }
            None => {
                fs::remove_file(workdir.join(path)).unwrap();
                index.remove_path(Path::new(path)).unwrap();
            }
        }
    }
    index.write().unwrap();
    commit_index(repo, message)
}

fn commit_index(repo: &git2::Repository, message: &str) -> String {
    let mut index = repo.index().unwrap();
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
