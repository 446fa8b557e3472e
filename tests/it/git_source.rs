//! The git source: `orchestrator start --source <repo>` follows a local repository made with
//! git2 (no network). New commits arrive through `POST /api/sync`, the push webhook on
//! `/hooks/source` (HMAC-signed) and the interval poll; a broken commit keeps the last good
//! objects; a repository that cannot be fetched leaves everything in force and is retried.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::support::{orchestrator, temp_project};

/// A server started for one test; stopped (SIGTERM, then killed) when dropped.
struct Server {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Server {
    fn start(project: &Path, args: &[&str]) -> Server {
        let log = project.join("server-stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["start", "--port", "0"])
            .args(args)
            .current_dir(project)
            .env_remove("ORCHESTRATOR_ENVIRONMENT")
            .env_remove("ORCHESTRATOR_CONFIG")
            .env_remove("ORCHESTRATOR_DATA_DIR")
            .env_remove("ORCHESTRATOR_PORT")
            .env_remove("ORCHESTRATOR_HOST")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("start orchestrator");
        let stdout = child.stdout.take().unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("orchestrator listening on http://") {
                    let address = rest.split_whitespace().next().unwrap_or_default();
                    let _ = sender.send(address.to_owned());
                }
            }
        });
        match receiver.recv_timeout(Duration::from_secs(60)) {
            Ok(address) => Server {
                child,
                base: format!("http://{address}"),
                log,
            },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not start; its stderr:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server (SIGTERM) and waits for it to exit.
    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn answer(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> (u16, Value) {
    let mut response = response.expect("the server answers");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn get(server: &Server, path: &str) -> (u16, Value) {
    answer(agent().get(&server.url(path)).call())
}

fn post(server: &Server, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = agent()
        .post(&server.url(path))
        .header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.send(body))
}

/// Polls `check` until it returns something, or fails after `seconds`.
#[track_caller]
fn eventually<T>(
    server: &Server,
    seconds: u64,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; server stderr:\n{}",
                server.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
fn commit(repo: &git2::Repository, files: &[(&str, Option<&str>)], message: &str) -> String {
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

fn workflow_ids(server: &Server) -> Vec<String> {
    let (status, body) = get(server, "/api/workflows");
    assert_eq!(status, 200, "{body}");
    body["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect()
}

fn signature(secret: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

const EXTRA: &str =
    "name: Extra\ndescription: first version\nsteps:\n  - name: hello\n    command: [\"true\"]\n";
const EXTRA_BROKEN: &str =
    "name: Extra\ndescription: broken version\nsteps:\n  - name: hello\n    comand: [\"true\"]\n";
const EXTRA_FIXED: &str = "name: Extra\ndescription: fixed version\nsteps:\n  - name: hello\n    command: [\"true\"]\n  - name: again\n    command: [\"true\"]\n";

#[test]
fn follows_a_repository_through_sync_broken_commits_and_signed_webhooks() {
    let temp = temp_project();
    let repo_dir = temp.path().join("repo");
    let (repo, first) = init_repo(&repo_dir);
    let project = temp.path().join("project");
    fs::create_dir_all(project.join("config")).unwrap();
    // The configured URL leads nowhere: --source overrides it.
    fs::write(
        project.join("config/development.yaml"),
        "source:\n  git:\n    url: file:///nonexistent/overridden-by-the-flag\n    interval: 1h\n    webhook_secret: file:hook-secret\n",
    )
    .unwrap();
    fs::write(project.join("hook-secret"), "s3cret\n").unwrap();
    let source = format!("{}#main", repo_dir.display());

    let server = Server::start(&project, &["--source", &source]);
    let ids = workflow_ids(&server);
    for id in ["wf_api-test-suite", "wf_smoke"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }
    let (_, smoke) = get(&server, "/api/workflows/wf_smoke");
    assert_eq!(smoke["applied_revision"], format!("git:{first}"));
    assert_eq!(smoke["source_file"], "workflows/smoke.yaml");
    assert!(
        !project.join("workflows").exists(),
        "nothing is written into the project: the manifests come from the repository"
    );

    // A new commit, then POST /api/sync: it is fetched and applied.
    let second = commit(&repo, &[("workflows/extra.yaml", Some(EXTRA))], "add extra");
    let (status, outcome) = post(&server, "/api/sync", "", &[]);
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["report"]["revision"], format!("git:{second}"));
    let extra = eventually(&server, 10, "wf_extra", || {
        let (status, body) = get(&server, "/api/workflows/wf_extra");
        (status == 200).then_some(body)
    });
    assert_eq!(extra["description"], "first version");
    assert_eq!(extra["status"], "applied");

    // A broken commit: the object keeps its last good spec and is marked invalid.
    let broken = commit(
        &repo,
        &[("workflows/extra.yaml", Some(EXTRA_BROKEN))],
        "break extra",
    );
    let (status, outcome) = post(&server, "/api/sync", "", &[]);
    assert_eq!(status, 200, "{outcome}");
    assert!(
        outcome["report"]["errors"].as_u64().unwrap() > 0,
        "{outcome}"
    );
    let (_, extra) = get(&server, "/api/workflows/wf_extra");
    assert_eq!(extra["status"], "invalid", "{extra}");
    assert_eq!(extra["description"], "first version");
    assert_eq!(extra["applied_revision"], format!("git:{second}"));

    // The source status: applied stays at the last good commit, attempted moves on.
    server.stop();
    {
        let store = orchestrator::store::Store::open(&project.join("data")).unwrap();
        let stored = store.source_status("git").unwrap().unwrap();
        assert_eq!(
            stored.last_applied_revision.as_deref(),
            Some(format!("git:{second}").as_str())
        );
        assert_eq!(stored.last_attempted_revision, format!("git:{broken}"));
        assert!(store.source_status("dir").unwrap().is_none());
    }

    // Started again: the mirror is reused and the last good state is still served.
    let server = Server::start(&project, &["--source", &source]);
    let (_, extra) = get(&server, "/api/workflows/wf_extra");
    assert_eq!(extra["description"], "first version");

    // The webhook: a wrong or missing signature is refused...
    let fixed = commit(
        &repo,
        &[("workflows/extra.yaml", Some(EXTRA_FIXED))],
        "fix extra",
    );
    let delivery = r#"{"ref": "refs/heads/main", "after": "x"}"#;
    let (status, body) = post(
        &server,
        "/hooks/source",
        delivery,
        &[("X-Hub-Signature-256", &signature("wrong", delivery))],
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, body) = post(&server, "/hooks/source", delivery, &[]);
    assert_eq!(status, 401, "{body}");
    // ...a push to another branch is ignored...
    let other = r#"{"ref": "refs/heads/feature"}"#;
    let (status, body) = post(
        &server,
        "/hooks/source",
        other,
        &[("X-Hub-Signature-256", &signature("s3cret", other))],
    );
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let (_, extra) = get(&server, "/api/workflows/wf_extra");
    assert_eq!(extra["description"], "first version");
    // ...and a signed push is accepted and the new commit applied.
    let (status, body) = post(
        &server,
        "/hooks/source",
        delivery,
        &[
            ("X-Hub-Signature-256", &signature("s3cret", delivery)),
            ("X-GitHub-Event", "push"),
        ],
    );
    assert_eq!(status, 202, "{body}");
    let extra = eventually(&server, 20, "the fixed commit", || {
        let (_, body) = get(&server, "/api/workflows/wf_extra");
        (body["applied_revision"] == format!("git:{fixed}")).then_some(body)
    });
    assert_eq!(extra["status"], "applied");
    assert_eq!(extra["description"], "fixed version");
    assert_eq!(extra["steps"], 2);

    // Removing a manifest from the repository removes its object.
    commit(&repo, &[("workflows/extra.yaml", None)], "remove extra");
    let (status, _) = post(&server, "/api/sync", "", &[]);
    assert_eq!(status, 200);
    let (status, _) = get(&server, "/api/workflows/wf_extra");
    assert_eq!(status, 404);
    let (_, metrics) = get(&server, "/metrics");
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("orchestrator_webhook_deliveries_total 4\n"),
        "{metrics}"
    );
}

#[test]
fn polls_on_an_interval_and_survives_an_unreachable_repository() {
    let temp = temp_project();
    let repo_dir = temp.path().join("repo");
    let (repo, _) = init_repo(&repo_dir);
    let project = temp.path().join("project");
    fs::create_dir_all(project.join("config")).unwrap();
    fs::write(
        project.join("config/development.yaml"),
        format!(
            "source:\n  git:\n    url: {}\n    interval: 1\n",
            repo_dir.display()
        ),
    )
    .unwrap();
    let server = Server::start(&project, &[]);
    assert!(workflow_ids(&server).iter().any(|id| id == "wf_smoke"));

    // The interval poll brings a new commit without being asked.
    let second = commit(&repo, &[("workflows/extra.yaml", Some(EXTRA))], "add extra");
    eventually(&server, 20, "the polled commit", || {
        let (_, body) = get(&server, "/api/workflows/wf_extra");
        (body["applied_revision"] == format!("git:{second}")).then_some(())
    });

    // The repository goes away: fetches fail, are counted and retried; nothing is lost.
    let moved = temp.path().join("repo-moved");
    fs::rename(&repo_dir, &moved).unwrap();
    eventually(&server, 20, "a failed fetch", || {
        let (_, metrics) = get(&server, "/metrics");
        let text = metrics.as_str().unwrap_or_default().to_owned();
        (!text.contains("orchestrator_source_fetch_errors_total 0\n")).then_some(())
    });
    let (status, body) = post(&server, "/api/sync", "", &[]);
    assert!(status >= 500, "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot fetch {}", repo_dir.display())),
        "{body}"
    );
    let (status, extra) = get(&server, "/api/workflows/wf_extra");
    assert_eq!(status, 200);
    assert_eq!(extra["applied_revision"], format!("git:{second}"));

    // Back again: the retry picks up the commit made meanwhile.
    fs::rename(&moved, &repo_dir).unwrap();
    let repo = git2::Repository::open(&repo_dir).unwrap();
    let third = commit(&repo, &[("workflows/extra.yaml", Some(EXTRA_FIXED))], "fix");
    eventually(&server, 30, "the commit after the outage", || {
        let (_, body) = get(&server, "/api/workflows/wf_extra");
        (body["applied_revision"] == format!("git:{third}")).then_some(())
    });
}

#[test]
fn bad_source_settings_are_clear_errors() {
    let project = temp_project();
    let dir = project.path();
    let run = orchestrator(
        dir,
        &["start", "--port", "0", "--source", "ftp://example.com/repo"],
    )
    .expect_code(2);
    assert!(
        run.stderr.contains(
            "unsupported URL scheme `ftp` in `ftp://example.com/repo`: expected an https:// or file:// URL or a local path (--source)"
        ),
        "{}",
        run.stderr
    );
    let run = orchestrator(dir, &["start", "--port", "0", "--source", ""]).expect_code(2);
    assert!(
        run.stderr.contains("the git source URL is empty"),
        "{}",
        run.stderr
    );

    fs::create_dir_all(dir.join("config")).unwrap();
    fs::write(
        dir.join("config/development.yaml"),
        "source:\n  git:\n    url: ssh://git@example.com/repo.git\n    branch: 'bad..branch'\n",
    )
    .unwrap();
    let run = orchestrator(dir, &["config", "validate"]).expect_code(1);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(all.contains("ssh URLs are not supported"), "{all}");
    assert!(
        all.contains("`bad..branch` is not a valid git branch name"),
        "{all}"
    );
}
