//! The server's manifest source when it follows a git repository (`source.git` in the
//! configuration, or `start --source URL[#branch]`): the repository is fetched every
//! `interval`, on `POST /api/sync` and on a push webhook to `/hooks/source`, and a new commit
//! is reconciled with the source name `git` and the revision `git:<sha>`.
//!
//! A fetch that fails changes nothing in the store: the last good revision stays in force,
//! the failure is logged, counted (`orchestrator_source_fetch_errors_total`) and shown by
//! `GET /api/status`, and the next attempt comes after a delay that doubles with each
//! consecutive failure (from 5 s, capped at the larger of the interval and 5 minutes).

use std::path::Path;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use serde_json::{json, Value};

use super::sync::{self, ReconcileOutcome};
use super::Controller;
use crate::config::LoadedConfig;
use crate::source::git::{self, GitCheckout, GitSource};
use crate::source::Snapshot;

/// The source name git reconciles record their status under.
pub const GIT_SOURCE: &str = "git";

/// The first retry after a failed fetch; each further failure doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(5);
/// Retries never wait longer than this, or the interval when that is longer.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// How long to wait before fetching again after `failures` consecutive failed fetches
/// (none: the interval).
pub fn retry_delay(failures: u32, interval: Duration) -> Duration {
    if failures == 0 {
        return interval;
    }
    let cap = BACKOFF_CAP.max(interval);
    let first = BACKOFF_FIRST.min(interval);
    let doublings = (failures - 1).min(16);
    first.saturating_mul(1 << doublings).min(cap)
}

/// What the last fetches did, for `GET /api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchStatus {
    /// The commit last fetched, `git:<sha>` (it is reconciled right after).
    pub revision: Option<String>,
    /// The branch it is the tip of.
    pub branch: Option<String>,
    /// The first line of its message.
    pub summary: Option<String>,
    /// When the last fetch finished, well or not (RFC 3339).
    pub last_fetch_at: Option<String>,
    /// Why the last fetch failed; `None` once a fetch succeeds.
    pub last_fetch_error: Option<String>,
    /// Fetches that failed in a row.
    pub consecutive_failures: u32,
}

/// A git source the server follows, and what its fetches did.
pub struct GitState {
    /// The repository.
    pub source: GitSource,
    /// The secret push webhooks are signed with.
    webhook_secret: Option<String>,
    fetch: Mutex<FetchStatus>,
    /// Why a sync was asked for and not yet started (requests coalesce).
    requested: Mutex<Option<&'static str>>,
    wake: Condvar,
}

impl GitState {
    /// The git source the configuration names, with `--source URL[#branch]` (`spec`) in
    /// place of its URL and branch; `None` when the server reads the manifest directories.
    pub fn from_config(config: &LoadedConfig, spec: Option<&str>) -> Result<Option<GitState>> {
        let configured = config.config.source.as_ref().and_then(|s| s.git.as_ref());
        let (url, branch) = match spec {
            Some(spec) => {
                let (url, branch) = git::split_spec(spec);
                (url.to_owned(), branch.map(str::to_owned))
            }
            None => match configured {
                Some(git) => (git.url.clone(), git.branch.clone()),
                None => return Ok(None),
            },
        };
        let interval = match configured.and_then(|g| g.interval.as_ref()) {
            Some(setting) => Some(
                setting
                    .duration()
                    .context("source.git.interval is not a duration")?,
            ),
            None => None,
        };
        let source = GitSource::new(
            &url,
            branch.as_deref(),
            configured.and_then(|g| g.path.as_deref()),
            interval,
            &config.project_dir,
        )
        .map_err(|message| {
            anyhow::anyhow!(
                "{message} ({})",
                if spec.is_some() {
                    "--source"
                } else {
                    "source.git"
                }
            )
        })?;
        if let Some(absolute) = config
            .config
            .manifests
            .paths
            .iter()
            .find(|p| p.is_absolute())
        {
            bail!(
                "manifests.paths holds the absolute path {}: with a git source the manifest paths are relative to the repository (source.git.path)",
                absolute.display()
            );
        }
        let webhook_secret = match configured.and_then(|g| g.webhook_secret.as_deref()) {
            Some(reference) => Some(crate::config::secrets::resolve_named(
                "source.git.webhook_secret",
                reference,
                &config.project_dir,
            )?),
            None => None,
        };
        Ok(Some(GitState {
            source,
            webhook_secret,
            fetch: Mutex::new(FetchStatus::default()),
            requested: Mutex::new(None),
            wake: Condvar::new(),
        }))
    }

    /// The secret `/hooks/source` deliveries must be signed with, when one is configured.
    pub fn webhook_secret(&self) -> Option<&str> {
        self.webhook_secret.as_deref()
    }

    /// What the last fetches did.
    pub fn fetch_status(&self) -> FetchStatus {
        self.fetch.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the poll loop to fetch now (a webhook); requests made before it gets to them
    /// count as one.
    pub fn request_sync(&self, reason: &'static str) {
        *self.requested.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason);
        self.wake.notify_all();
    }

    /// Waits up to `timeout` for a request; returns its reason, consuming it.
    fn wait_for_request(&self, timeout: Duration) -> Option<&'static str> {
        let guard = self.requested.lock().unwrap_or_else(|e| e.into_inner());
        let (mut guard, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |requested| requested.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.take()
    }

    /// How long after the last fetch the next one is due.
    fn next_delay(&self) -> Duration {
        retry_delay(
            self.fetch_status().consecutive_failures,
            self.source.interval,
        )
    }
}

/// Fetches the repository and checks out its tip, recording how it went. Blocking; the
/// caller holds the reconcile lock.
fn fetch(shared: &Controller, git: &GitState) -> Result<GitCheckout, git::GitError> {
    let result = git.source.sync(&shared.data_dir);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut status = git.fetch.lock().unwrap_or_else(|e| e.into_inner());
    status.last_fetch_at = Some(now);
    match &result {
        Ok(checkout) => {
            if status.revision.as_deref() != Some(checkout.revision.as_str()) {
                tracing::info!(
                    revision = %checkout.revision,
                    branch = %checkout.branch,
                    "fetched {}: {}",
                    git.source.display_url(),
                    checkout.summary
                );
            }
            status.revision = Some(checkout.revision.clone());
            status.branch = Some(checkout.branch.clone());
            status.summary = Some(checkout.summary.clone());
            status.last_fetch_error = None;
            status.consecutive_failures = 0;
        }
        Err(err) => {
            status.last_fetch_error = Some(err.to_string());
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            shared.metrics.source_fetch_errors.inc();
            tracing::warn!(
                "{err}; the last good revision stays in force, next attempt in {}",
                crate::duration::format_duration(retry_delay(
                    status.consecutive_failures,
                    git.source.interval
                ))
            );
        }
    }
    result
}

/// For a reconcile in git mode: fetches, then reads the manifests of the fetched commit (the
/// configured manifest paths relative to the checkout), named `git:<sha>`. The caller holds
/// the reconcile lock.
pub fn load(shared: &Controller, git: &GitState, paths: &[std::path::PathBuf]) -> Result<Snapshot> {
    if !paths.is_empty() {
        bail!(
            "the server follows the git repository {}: it reconciles the whole repository, not paths; commit the change and sync",
            git.source.display_url()
        );
    }
    let checkout = fetch(shared, git)?;
    let (snapshot, _) = crate::reconcile::load_manifests_under(&shared.config, &checkout.root, &[])
        .with_context(|| format!("cannot read the checkout of {}", checkout.revision))?;
    Ok(snapshot.with_revision(checkout.revision))
}

/// Fetches, and reconciles when the fetched commit is not the one last attempted. Returns
/// what the reconcile did, or `None` when nothing changed.
pub fn sync_if_changed(shared: &Controller, reason: &str) -> Result<Option<ReconcileOutcome>> {
    let Some(git) = shared.git.as_ref() else {
        return Ok(None);
    };
    let checkout = {
        let _one_at_a_time = shared
            .reconcile_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        fetch(shared, git)?
    };
    let attempted = shared
        .store
        .source_status(GIT_SOURCE)?
        .map(|s| s.last_attempted_revision);
    if attempted.as_deref() == Some(checkout.revision.as_str()) {
        return Ok(None);
    }
    sync::reconcile(shared, &[], true, false, reason).map(Some)
}

/// Fetches every interval (after a failure, with backoff) and whenever a webhook asks,
/// reconciling each new commit, until `stop` is set. Runs on the calling thread.
pub fn poll(shared: &Controller, stop: &std::sync::atomic::AtomicBool) {
    let Some(git) = shared.git.as_ref() else {
        return;
    };
    let mut due = Instant::now() + git.next_delay();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let wait = due
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(250));
        let requested = git.wait_for_request(wait);
        if requested.is_none() && Instant::now() < due {
            continue;
        }
        match sync_if_changed(shared, requested.unwrap_or("poll")) {
            Ok(Some(outcome)) if outcome.report.errors > 0 => tracing::warn!(
                revision = %outcome.report.revision,
                "the new commit has {} errors in manifests: the last good version of each affected object stays in force",
                outcome.report.errors
            ),
            Ok(_) => {}
            // A fetch failure was logged and counted where it happened.
            Err(err) if err.downcast_ref::<git::GitError>().is_some() => {}
            Err(err) => {
                shared.metrics.errors.inc();
                tracing::error!("reconcile failed; the last applied state stays in force: {err:#}");
            }
        }
        due = Instant::now() + git.next_delay();
    }
}

/// The `source` object of `GET /api/status`: kind, where manifests come from, and the
/// stored `last_applied_revision` / `last_attempted_revision` of the source in use.
pub fn status_json(shared: &Controller) -> Result<Value, crate::store::StoreError> {
    let paths = &shared.config.config.manifests.paths;
    let Some(git) = shared.git.as_ref() else {
        return Ok(json!({
            "kind": "dir",
            "paths": paths,
            "status": shared.store.source_status("dir")?,
        }));
    };
    let fetch = git.fetch_status();
    let stored = shared.store.source_status(GIT_SOURCE)?;
    Ok(json!({
        "kind": "git",
        "url": git.source.display_url(),
        "branch": fetch.branch.clone().or_else(|| git.source.branch.clone()),
        "path": git.source.path,
        "paths": paths,
        "interval_seconds": git.source.interval.as_secs(),
        "revision": fetch.revision,
        "summary": fetch.summary,
        "last_applied_revision": stored.as_ref().and_then(|s| s.last_applied_revision.clone()),
        "last_attempted_revision": stored.as_ref().map(|s| s.last_attempted_revision.clone()),
        "last_fetch_at": fetch.last_fetch_at,
        "last_fetch_error": fetch.last_fetch_error,
        "consecutive_failures": fetch.consecutive_failures,
        "webhook": {"path": "/hooks/source", "signed": git.webhook_secret.is_some()},
        "status": stored,
    }))
}

/// What a command that would write a manifest (`workflow create`, ...) says instead when
/// the configuration names a git source: `file` is the manifest's path relative to the
/// manifest root (e.g. `workflows/x.yaml`). `None` without a git source.
pub fn commit_instead_hint(config: &LoadedConfig, file: &Path) -> Option<String> {
    let git = config.config.source.as_ref()?.git.as_ref()?;
    let file = match git.path.as_deref() {
        Some(path) if path != "." => Path::new(path).join(file),
        _ => file.to_owned(),
    };
    Some(format!(
        "this project follows the git repository {} (source.git): commit {} there instead, and the server applies it on its next sync (POST /api/sync, the webhook or the interval)",
        git::redact_url(&git.url),
        file.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> (tempfile::TempDir, LoadedConfig) {
        let project = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(project.path().join("config")).unwrap();
        std::fs::write(project.path().join("config/development.yaml"), text).unwrap();
        let loaded = crate::config::load(&crate::config::ConfigOptions {
            project_dir: project.path().to_owned(),
            ..Default::default()
        })
        .unwrap();
        (project, loaded)
    }

    #[test]
    fn the_flag_overrides_the_configured_url_and_branch() {
        let (_project, loaded) = config(
            "source:\n  git:\n    url: https://example.com/a.git\n    branch: main\n    path: deploy\n    interval: 5m\n",
        );
        let git = GitState::from_config(&loaded, None).unwrap().unwrap();
        assert_eq!(git.source.url, "https://example.com/a.git");
        assert_eq!(git.source.branch.as_deref(), Some("main"));
        assert_eq!(git.source.interval, Duration::from_secs(300));
        let git = GitState::from_config(&loaded, Some("repo#dev"))
            .unwrap()
            .unwrap();
        assert_eq!(
            git.source.url,
            loaded.project_dir.join("repo").display().to_string()
        );
        assert_eq!(git.source.branch.as_deref(), Some("dev"));
        assert_eq!(git.source.path, Path::new("deploy"));
        let err = GitState::from_config(&loaded, Some("svn://x/y"))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "unsupported URL scheme `svn` in `svn://x/y`: expected an https:// or file:// URL or a local path (--source)"
        );
        assert!(commit_instead_hint(&loaded, Path::new("workflows/x.yaml"))
            .unwrap()
            .contains("commit deploy/workflows/x.yaml there instead"));

        let (_plain_dir, plain) = config("server:\n  port: 9000\n");
        assert!(GitState::from_config(&plain, None).unwrap().is_none());
        assert!(commit_instead_hint(&plain, Path::new("x")).is_none());
        let (_zero_dir, zero) = config("source:\n  git:\n    url: x\n    interval: 0s\n");
        assert_eq!(
            GitState::from_config(&zero, None)
                .err()
                .unwrap()
                .to_string(),
            "the fetch interval must be longer than zero (source.git)"
        );
        let (_secret_dir, secret) = config(
            "source:\n  git:\n    url: x\n    webhook_secret: env:ORCHESTRATOR_TEST_UNSET_SECRET\n",
        );
        assert_eq!(
            GitState::from_config(&secret, None).err().unwrap().to_string(),
            "the source.git.webhook_secret reference `env:ORCHESTRATOR_TEST_UNSET_SECRET` names the environment variable ORCHESTRATOR_TEST_UNSET_SECRET, which is not set"
        );
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        let minute = Duration::from_secs(60);
        let delays: Vec<u64> = (0..9).map(|n| retry_delay(n, minute).as_secs()).collect();
        assert_eq!(delays, [60, 5, 10, 20, 40, 80, 160, 300, 300]);
        // A short interval retries as often as it polls, at first.
        assert_eq!(
            retry_delay(1, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
        // A long interval caps the backoff instead of 5 minutes.
        let hour = Duration::from_secs(3600);
        assert_eq!(retry_delay(30, hour), hour);
    }
}
