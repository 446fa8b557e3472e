//! Results back where the change came from: commit statuses on GitHub. A Trigger or a
//! Workflow manifest may say `report_to: {github: {token, context, api_url}}`; a run of it
//! at a GitHub commit — started by a push or pull request delivery (its trigger's `commit`
//! details), or at a git-source revision `git:<sha>` of a repository on GitHub (or on the
//! `api_url`'s host) — is reported to that commit: `pending` when it starts, then
//! `success`, `failure` or `error`, with a context per workflow, a link to the run's page
//! and its test summary as the description.
//!
//! The pure part decides ([`plan`], [`state_of`], [`description`], [`status_body`]); the
//! service ([`run`]) listens to the event bus beside the other services, one task per run
//! sending its newest wanted state with retries (`notifications.retry`: attempts and the
//! first backoff, doubling up to five minutes; a 4xx other than 408 and 429 is not
//! retried; a newer state replaces one still being retried). What happened is kept in the
//! `commit_statuses` state tree under the run's id ([`CommitStatusReport`]), which
//! `run show`, `GET /api/runs/{id}` and the run's dashboard page show. A report that fails
//! never fails the run, and the token (a secret reference, resolved at each send) is never
//! logged nor shown: an answer that repeats it has it masked.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use utoipa::ToSchema;

use crate::events::{Event, EventBus};
use crate::manifest::Kind;
use crate::model::{RunRecord, Status};
use crate::reconcile::view::View;
use crate::store::{ObjectKey, Store};
use crate::util::{clip, http_failure};

/// The state tree of the reports, keyed by run id (one of the store's
/// [`RUN_STATE_TREES`](crate::store::RUN_STATE_TREES), trimmed with the runs).
pub const STATE_TREE: &str = crate::store::RUN_STATE_TREES[0];

/// GitHub's API when `api_url` is left out.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// The REST API version the requests name (`X-GitHub-Api-Version`).
pub const API_VERSION: &str = "2022-11-28";

/// GitHub keeps at most this many characters of a status's description.
pub const MAX_DESCRIPTION: usize = 140;

/// How long one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// How long a stopping server waits for reports still being sent.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// A manifest's `report_to.github`, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubReport {
    /// Reference to the token (`env:NAME`, `file:PATH`), never the token itself.
    pub token: String,
    /// The status's context; `orchestrator/<workflow name>` when left out.
    pub context: Option<String>,
    /// The REST API's root, without a trailing slash.
    pub api_url: String,
}

impl GithubReport {
    /// The `report_to.github` of a Trigger or Workflow manifest (valid against its
    /// schema), when it has one.
    pub fn of_manifest(spec: &Value) -> Option<GithubReport> {
        let github = spec.pointer("/report_to/github")?;
        let text = |field: &str| {
            github
                .get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        Some(GithubReport {
            token: text("token")?,
            context: text("context"),
            api_url: text("api_url")
                .unwrap_or_else(|| DEFAULT_API_URL.to_owned())
                .trim_end_matches('/')
                .to_owned(),
        })
    }
}

/// The commit a run is reported to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitTarget {
    /// The repository's owner.
    pub owner: String,
    /// The repository's name.
    pub repo: String,
    /// The commit.
    pub sha: String,
}

/// What a run's reports need: where, how, under which context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The configuration in force: the trigger's for a run it started, else the workflow's.
    pub report: GithubReport,
    /// The commit.
    pub target: CommitTarget,
    /// The status's context.
    pub context: String,
}

/// Whether and where a run is reported. `trigger` is the manifest of the Trigger that
/// started it (when one did and is still in force); `source_url` the git source's URL
/// when the server follows one. `None`: neither manifest asks for reports, or the run is
/// at no GitHub commit.
pub fn plan(run: &RunRecord, trigger: Option<&Value>, source_url: Option<&str>) -> Option<Plan> {
    let report = trigger
        .and_then(GithubReport::of_manifest)
        .or_else(|| GithubReport::of_manifest(&run.workflow))?;
    let target = target_of(run, &report.api_url, source_url)?;
    let context = report
        .context
        .clone()
        .unwrap_or_else(|| format!("orchestrator/{}", run.workflow_name));
    Some(Plan {
        report,
        target,
        context,
    })
}

/// The commit of a run: a webhook's `commit` details (`repository` `owner/name` and
/// `sha`), else a `git:<sha>` revision of a git source on GitHub (github.com, or the host
/// of `api_url` for GitHub Enterprise).
pub fn target_of(run: &RunRecord, api_url: &str, source_url: Option<&str>) -> Option<CommitTarget> {
    if let Some(commit) = run.trigger.details.get("commit") {
        let text = |field: &str| commit.get(field).and_then(Value::as_str);
        if let (Some(repository), Some(sha)) = (text("repository"), text("sha")) {
            if let Some((owner, repo)) = repository.split_once('/') {
                if !owner.is_empty() && !repo.is_empty() && !repo.contains('/') {
                    return Some(CommitTarget {
                        owner: owner.to_owned(),
                        repo: repo.to_owned(),
                        sha: sha.to_owned(),
                    });
                }
            }
        }
    }
    let sha = run.revision.as_deref()?.strip_prefix("git:")?;
    if sha.is_empty() || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let (owner, repo) = repository_of_url(source_url?, api_url)?;
    Some(CommitTarget {
        owner,
        repo,
        sha: sha.to_owned(),
    })
}

/// `(owner, name)` of a git URL on GitHub: `https://github.com/o/r(.git)`,
/// `git@github.com:o/r.git`, `ssh://git@github.com/o/r`; the host must be github.com, or
/// the host of a GitHub Enterprise `api_url`.
pub fn repository_of_url(url: &str, api_url: &str) -> Option<(String, String)> {
    let (host, path) = match url.split_once("://") {
        Some((_, rest)) => {
            let (authority, path) = rest.split_once('/')?;
            (authority, path)
        }
        // scp-like: user@host:owner/repo
        None => url.split_once(':')?,
    };
    let host = host.rsplit('@').next()?;
    let host = host.split(':').next()?.to_ascii_lowercase();
    if !hosts_of(api_url).contains(&host) {
        return None;
    }
    let path = path.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    let (owner, repo) = path.split_once('/')?;
    if owner.is_empty() || repo.is_empty() || repo.contains('/') {
        return None;
    }
    Some((owner.to_owned(), repo.to_owned()))
}

/// The git hosts whose repositories `api_url` serves.
fn hosts_of(api_url: &str) -> Vec<String> {
    let host = api_url
        .split_once("://")
        .map_or(api_url, |(_, rest)| rest)
        .split(['/', '?', '#'])
        .next()
        .unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    let host = host
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host == "api.github.com" {
        vec!["github.com".to_owned(), "www.github.com".to_owned()]
    } else {
        vec![host]
    }
}

/// The status a run's state is reported as: `pending` until it ends, then `success`,
/// `failure` (failed) or `error` (cancelled, timed out, interrupted).
pub fn state_of(status: Status) -> &'static str {
    match status {
        Status::Queued | Status::Running => "pending",
        Status::Succeeded => "success",
        Status::Failed => "failure",
        Status::Cancelled | Status::TimedOut | Status::Interrupted | Status::Skipped => "error",
    }
}

/// The status's description: the run's test summary ("212 passed, 2 new failures, 1
/// flaky, 3 quarantined"), or its state (and why it ended) when it has no test results;
/// at most [`MAX_DESCRIPTION`] characters.
pub fn description(run: &RunRecord) -> String {
    let text = if run.tests.total > 0 {
        run.tests.describe()
    } else {
        match (&run.message, run.status.is_finished()) {
            (Some(message), true) if run.status != Status::Succeeded => {
                format!("{}: {message}", run.status)
            }
            _ => run.status.to_string(),
        }
    };
    clip(&text, MAX_DESCRIPTION)
}

/// The run's page on the dashboard, under the server's `base_url` (`http://host:port`).
pub fn target_url(base_url: &str, run_id: &str) -> String {
    format!(
        "{}/#/runs/{}",
        base_url.trim_end_matches('/'),
        utf8_percent_encode(run_id, SEGMENT)
    )
}

/// The body of `POST /repos/{owner}/{repo}/statuses/{sha}`.
pub fn status_body(state: &str, target_url: &str, description: &str, context: &str) -> Value {
    json!({
        "state": state,
        "target_url": target_url,
        "description": description,
        "context": context,
    })
}

/// The URL a status of `target` is created at.
pub fn statuses_url(api_url: &str, target: &CommitTarget) -> String {
    format!(
        "{}/repos/{}/{}/statuses/{}",
        api_url.trim_end_matches('/'),
        utf8_percent_encode(&target.owner, SEGMENT),
        utf8_percent_encode(&target.repo, SEGMENT),
        utf8_percent_encode(&target.sha, SEGMENT),
    )
}

/// What was reported of one run, as `run show` and `GET /api/runs/{id}` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommitStatusReport {
    /// The repository, `owner/name`.
    pub repository: String,
    /// The commit.
    pub sha: String,
    /// The status's context.
    pub context: String,
    /// The link the status carries: the run's dashboard page.
    pub target_url: String,
    /// The API the statuses are sent to.
    pub api_url: String,
    /// Each state the run was to be reported in, oldest first.
    pub updates: Vec<StatusUpdate>,
}

impl CommitStatusReport {
    /// Why the newest state is not on GitHub, when it is not.
    pub fn error(&self) -> Option<&str> {
        self.updates
            .last()
            .filter(|u| !u.delivered)
            .and_then(|u| u.error.as_deref())
    }
}

/// One state sent (or tried) to GitHub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusUpdate {
    /// `pending`, `success`, `failure` or `error`.
    pub state: String,
    /// The description sent.
    pub description: String,
    /// Requests made for it.
    pub attempts: u32,
    /// Whether GitHub accepted it.
    pub delivered: bool,
    /// Why the last attempt failed (or that a newer state replaced it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the last attempt was made (RFC 3339).
    pub at: String,
}

/// What the reporting service uses.
pub struct Reporting {
    /// Runs and the reports' state tree.
    pub store: Arc<Store>,
    /// The manifests in force (a run's trigger).
    pub view: Arc<View>,
    /// Where runs are heard of.
    pub events: EventBus,
    /// Where `file:` token references are read from.
    pub project_dir: PathBuf,
    /// The server's URL (`http://host:port`), which links to run pages start with.
    pub base_url: String,
    /// The git source's URL, when the server follows one.
    pub source_url: Option<String>,
    /// Requests per state, at least one.
    pub attempts: u32,
    /// The wait before the second request, doubling after each.
    pub initial_backoff: Duration,
}

/// The state a run is to be reported in.
#[derive(Debug, Clone, PartialEq)]
struct Wanted {
    state: &'static str,
    description: String,
}

impl Wanted {
    fn of(run: &RunRecord) -> Wanted {
        Wanted {
            state: state_of(run.status),
            description: description(run),
        }
    }

    fn is_final(&self) -> bool {
        self.state != "pending"
    }
}

/// Reports runs as they start and end, until `stop` turns true; then waits up to
/// [`SHUTDOWN_WAIT`] for reports being sent.
pub async fn run(shared: Arc<Reporting>, mut stop: watch::Receiver<bool>) {
    let mut events = shared.events.subscribe();
    let mut runs: HashMap<String, watch::Sender<Wanted>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        // `biased`, events first: at shutdown the runs' last events still buffered are
        // reported before the stop is heard.
        let published = tokio::select! {
            biased;
            event = events.recv() => match event {
                Ok(published) => published,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "commit statuses: events were missed; runs they told of are not reported");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
                continue;
            }
        };
        let (id, finished) = match &published.event {
            Event::WorkflowStarted(summary) => (&summary.id, false),
            Event::WorkflowCompleted(summary) => (&summary.id, true),
            _ => continue,
        };
        if finished {
            runs.retain(|_, sender| !sender.is_closed());
        }
        let Some(run) = load(&shared, id) else {
            continue;
        };
        if !finished && run.status.is_finished() {
            // Over already: its `workflow_completed` reports it.
            continue;
        }
        let wanted = Wanted::of(&run);
        if let Some(sender) = runs.get(id) {
            if sender.send(wanted.clone()).is_ok() {
                if finished {
                    runs.remove(id);
                }
                continue;
            }
            runs.remove(id);
        }
        let trigger = trigger_manifest(&shared.view, &run);
        let Some(plan) = plan(&run, trigger.as_ref(), shared.source_url.as_deref()) else {
            continue;
        };
        let (sender, receiver) = watch::channel(wanted);
        if !finished {
            runs.insert(id.clone(), sender);
        }
        // What an earlier process reported of the run (its pending state, before a
        // restart) stays in its record.
        let earlier = match shared.store.state::<CommitStatusReport>(STATE_TREE, id) {
            Ok(earlier) => earlier.map(|r| r.updates).unwrap_or_default(),
            Err(err) => {
                tracing::error!(run = %id, "commit status: cannot read the report: {err}");
                Vec::new()
            }
        };
        let record = CommitStatusReport {
            repository: format!("{}/{}", plan.target.owner, plan.target.repo),
            sha: plan.target.sha.clone(),
            context: plan.context.clone(),
            target_url: target_url(&shared.base_url, &run.id),
            api_url: plan.report.api_url.clone(),
            updates: earlier,
        };
        tasks.spawn(report_run(
            Arc::clone(&shared),
            run.id,
            plan,
            record,
            receiver,
        ));
    }
    // Runs still going are not reported further; what is being sent gets a moment.
    drop(runs);
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
}

/// The record of a run, when the store has it.
fn load(shared: &Reporting, id: &str) -> Option<RunRecord> {
    match shared.store.run(id) {
        Ok(run) => run,
        Err(err) => {
            tracing::error!(run = %id, "commit status: cannot read the run: {err}");
            None
        }
    }
}

/// The manifest of the Trigger that started `run`, when one did and is in force.
fn trigger_manifest(view: &View, run: &RunRecord) -> Option<Value> {
    if run.trigger.kind != "webhook" {
        return None;
    }
    let id = run.trigger.details.get("trigger")?.as_str()?;
    let objects = view.objects();
    let record = objects.records.get(&ObjectKey {
        kind: Kind::Trigger,
        id: id.to_owned(),
    })?;
    record.spec.as_deref().filter(|_| record.is_live()).cloned()
}

/// Sends the states one run is wanted in, newest first when one replaces another being
/// retried, until its final state is sent or given up, or nothing more will come.
async fn report_run(
    shared: Arc<Reporting>,
    run_id: String,
    plan: Plan,
    mut record: CommitStatusReport,
    mut wanted: watch::Receiver<Wanted>,
) {
    loop {
        let current = wanted.borrow_and_update().clone();
        record.updates.push(StatusUpdate {
            state: current.state.to_owned(),
            description: current.description.clone(),
            attempts: 0,
            delivered: false,
            error: None,
            at: now(),
        });
        let body = status_body(
            current.state,
            &record.target_url,
            &current.description,
            &plan.context,
        );
        let mut backoff = shared.initial_backoff;
        let mut superseded = false;
        for attempt in 1..=shared.attempts.max(1) {
            let result = send(&shared, &plan, &body).await;
            let last = record.updates.len() - 1;
            let update = &mut record.updates[last];
            update.attempts = attempt;
            update.at = now();
            let retry = match &result {
                Ok(()) => {
                    update.delivered = true;
                    update.error = None;
                    false
                }
                Err(failure) => {
                    update.error = Some(failure.message.clone());
                    failure.retry && attempt < shared.attempts
                }
            };
            save(&shared.store, &run_id, &record);
            if let Err(failure) = &result {
                tracing::warn!(
                    run = %run_id,
                    state = current.state,
                    attempt,
                    "commit status for {} at {} not sent{}: {}",
                    record.repository,
                    plan.target.sha,
                    if retry { ", will retry" } else { "" },
                    failure.message
                );
            }
            if !retry {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                Ok(()) = wanted.changed() => {
                    superseded = true;
                    break;
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if superseded {
            let last = record.updates.len() - 1;
            let update = &mut record.updates[last];
            let why = update.error.take().unwrap_or_default();
            update.error = Some(format!(
                "replaced by a newer state before it was sent ({why})"
            ));
            continue;
        }
        if current.is_final() || wanted.changed().await.is_err() {
            return;
        }
    }
}

fn save(store: &Store, run_id: &str, record: &CommitStatusReport) {
    if let Err(err) = store.put_state(STATE_TREE, run_id, record, true) {
        tracing::error!(run = %run_id, "commit status: cannot record the report: {err}");
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Why a request failed, and whether another might succeed.
#[derive(Debug)]
struct Failure {
    message: String,
    retry: bool,
}

/// One `POST` of a status, on the blocking pool. Any 2xx is success; 408, 429, 5xx and
/// transport errors are worth retrying, other answers are not.
async fn send(shared: &Reporting, plan: &Plan, body: &Value) -> Result<(), Failure> {
    let token = crate::config::secrets::resolve_named(
        "GitHub token",
        &plan.report.token,
        &shared.project_dir,
    )
    .map_err(|err| Failure {
        message: format!("{err:#}"),
        retry: false,
    })?;
    if token.is_empty() {
        return Err(Failure {
            message: format!("the GitHub token `{}` is empty", plan.report.token),
            retry: false,
        });
    }
    let url = statuses_url(&plan.report.api_url, &plan.target);
    let payload = body.to_string();
    let task = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let sent = agent
            .post(&url)
            .header("accept", "application/vnd.github+json")
            .header("authorization", format!("Bearer {token}"))
            .header("x-github-api-version", API_VERSION)
            .header("content-type", "application/json")
            .send(payload);
        let mut response = match sent {
            Ok(response) => response,
            Err(err) => {
                return Err(Failure {
                    message: mask(&format!("the request to {url} failed: {err}"), &token),
                    retry: true,
                })
            }
        };
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let (message, retry) = http_failure(&mut response, "GitHub");
        Err(Failure {
            message: mask(&message, &token),
            retry,
        })
    });
    match task.await {
        Ok(result) => result,
        Err(err) => Err(Failure {
            message: format!("the request task failed: {err}"),
            retry: true,
        }),
    }
}

/// `text` with every occurrence of the token replaced by `***`.
fn mask(text: &str, token: &str) -> String {
    if token.is_empty() {
        text.to_owned()
    } else {
        text.replace(token, "***")
    }
}

/// What a path segment keeps unencoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TestSummary, Trigger};
    use serde_json::Map;

    fn run_with(trigger: Trigger, revision: Option<&str>, workflow: Value) -> RunRecord {
        RunRecord {
            id: "run_01".into(),
            workflow_id: "wf_api".into(),
            workflow_name: "API tests".into(),
            status: Status::Running,
            parameters: Map::new(),
            trigger,
            workflow,
            steps: Vec::new(),
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            message: None,
            tests: TestSummary::default(),
            rerun_of: None,
            revision: revision.map(str::to_owned),
            pid: None,
        }
    }

    fn webhook(commit: Value) -> Trigger {
        let mut details = Map::new();
        details.insert("trigger".into(), json!("trg_github"));
        details.insert("commit".into(), commit);
        Trigger {
            kind: "webhook".into(),
            details,
        }
    }

    fn cli() -> Trigger {
        Trigger {
            kind: "cli".into(),
            details: Map::new(),
        }
    }

    #[test]
    fn the_triggers_report_to_wins_and_the_context_defaults_to_the_workflow() {
        let workflow = json!({"report_to": {"github": {"token": "env:WF", "context": "ci/wf"}}});
        let run = run_with(
            webhook(json!({"repository": "octo/hello", "sha": "abc123"})),
            Some("git:abc123"),
            workflow.clone(),
        );
        let trigger = json!({"report_to": {"github": {"token": "env:TRG", "api_url": "https://ghe.example/api/v3/"}}});
        let chosen = plan(&run, Some(&trigger), None).expect("reported");
        assert_eq!(chosen.report.token, "env:TRG");
        assert_eq!(chosen.report.api_url, "https://ghe.example/api/v3");
        assert_eq!(chosen.context, "orchestrator/API tests");
        assert_eq!(
            chosen.target,
            CommitTarget {
                owner: "octo".into(),
                repo: "hello".into(),
                sha: "abc123".into()
            }
        );
        let fallback = plan(&run, Some(&json!({"name": "t"})), None).expect("workflow's");
        assert_eq!(fallback.report.token, "env:WF");
        assert_eq!(fallback.report.api_url, DEFAULT_API_URL);
        assert_eq!(fallback.context, "ci/wf");
        // Nobody asked: nothing is reported.
        let quiet = run_with(
            webhook(json!({"repository": "octo/hello", "sha": "abc123"})),
            None,
            json!({}),
        );
        assert_eq!(plan(&quiet, None, None), None);
    }

    #[test]
    fn git_source_revisions_are_reported_only_for_repositories_on_github() {
        let workflow = json!({"report_to": {"github": {"token": "env:T"}}});
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let run = run_with(cli(), Some(&format!("git:{sha}")), workflow.clone());
        for url in [
            "https://github.com/octo/hello.git",
            "https://user@github.com/octo/hello",
            "git@github.com:octo/hello.git",
            "ssh://git@github.com/octo/hello",
        ] {
            let target = plan(&run, None, Some(url))
                .unwrap_or_else(|| panic!("{url}"))
                .target;
            assert_eq!(
                (target.owner.as_str(), target.repo.as_str()),
                ("octo", "hello"),
                "{url}"
            );
            assert_eq!(target.sha, sha);
        }
        for url in [
            "https://gitlab.com/octo/hello.git",
            "file:///srv/git/hello",
            "/srv/git/hello",
            "https://github.com/octo",
        ] {
            assert_eq!(plan(&run, None, Some(url)), None, "{url}");
        }
        assert_eq!(plan(&run, None, None), None, "no git source");
        let directory = run_with(cli(), Some("dir:abc"), workflow);
        assert_eq!(
            plan(&directory, None, Some("https://github.com/octo/hello")),
            None
        );
        // GitHub Enterprise: the api_url's host serves the repositories.
        let ghe = json!({"report_to": {"github": {"token": "env:T", "api_url": "https://ghe.example/api/v3"}}});
        let run = run_with(cli(), Some(&format!("git:{sha}")), ghe);
        assert!(plan(&run, None, Some("https://ghe.example/octo/hello.git")).is_some());
        assert_eq!(
            plan(&run, None, Some("https://github.com/octo/hello.git")),
            None
        );
    }

    /// A receiver on 127.0.0.1:0 answering its n-th request with `statuses[n]` (the last
    /// repeats); the bodies it got are sent on the channel as they arrive.
    fn receiver(statuses: &'static [u16]) -> (String, std::sync::mpsc::Receiver<Value>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (sender, bodies) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("content-length") {
                            length = value.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let _ = sender.send(serde_json::from_slice(&body).unwrap_or(Value::Null));
                let status = statuses[n.min(statuses.len() - 1)];
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope"
                );
            }
        });
        (url, bodies)
    }

    /// The next body the receiver gets, waiting off the runtime's threads.
    async fn next_body(
        bodies: std::sync::mpsc::Receiver<Value>,
    ) -> (Value, std::sync::mpsc::Receiver<Value>) {
        tokio::task::spawn_blocking(move || {
            let body = bodies
                .recv_timeout(Duration::from_secs(20))
                .expect("a request");
            (body, bodies)
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_newer_state_replaces_one_being_retried_and_a_refused_one_is_not_retried() {
        // A server error (worth a retry), then a refusal (not worth one).
        let (url, bodies) = receiver(&[503, 422]);
        let project = tempfile::tempdir().unwrap();
        std::fs::write(project.path().join("token"), "t0ken\n").unwrap();
        let store = Arc::new(Store::empty().unwrap());
        let shared = Arc::new(Reporting {
            store: Arc::clone(&store),
            view: Arc::new(View::default()),
            events: EventBus::new(16),
            project_dir: project.path().to_path_buf(),
            base_url: "http://127.0.0.1:1".into(),
            source_url: None,
            attempts: 5,
            // The pending state's retry is far off when the final state comes.
            initial_backoff: Duration::from_secs(300),
        });
        let target = CommitTarget {
            owner: "octo".into(),
            repo: "hello".into(),
            sha: "abc".into(),
        };
        let plan = Plan {
            report: GithubReport {
                token: "file:token".into(),
                context: None,
                api_url: format!("{url}/api/v3"),
            },
            target,
            context: "ci".into(),
        };
        let record = CommitStatusReport {
            repository: "octo/hello".into(),
            sha: "abc".into(),
            context: "ci".into(),
            target_url: target_url("http://127.0.0.1:1", "run_01"),
            api_url: plan.report.api_url.clone(),
            updates: Vec::new(),
        };
        let (wanted, receiver) = watch::channel(Wanted {
            state: "pending",
            description: "running".into(),
        });
        let task = tokio::spawn(report_run(
            Arc::clone(&shared),
            "run_01".into(),
            plan,
            record,
            receiver,
        ));
        let (body, bodies) = next_body(bodies).await;
        assert_eq!(body["state"], "pending");
        wanted
            .send(Wanted {
                state: "failure",
                description: "1 passed, 1 new failure".into(),
            })
            .unwrap();
        let (body, _bodies) = next_body(bodies).await;
        assert_eq!(body["state"], "failure");
        assert_eq!(body["description"], "1 passed, 1 new failure");
        assert_eq!(body["target_url"], "http://127.0.0.1:1/#/runs/run_01");
        // The refusal ends the task: the final state is not retried.
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the task ends after a refusal")
            .unwrap();
        let report: CommitStatusReport = store.state(STATE_TREE, "run_01").unwrap().unwrap();
        let summary: Vec<(&str, u32, bool)> = report
            .updates
            .iter()
            .map(|u| (u.state.as_str(), u.attempts, u.delivered))
            .collect();
        assert_eq!(summary, [("pending", 1, false), ("failure", 1, false)]);
        let why = report.updates[0].error.as_deref().unwrap();
        assert!(why.starts_with("replaced by a newer state"), "{why}");
        assert!(why.contains("GitHub answered HTTP 503: nope"), "{why}");
        assert_eq!(report.error(), Some("GitHub answered HTTP 422: nope"));
    }

    #[test]
    fn states_descriptions_and_urls_are_what_github_takes() {
        assert_eq!(state_of(Status::Queued), "pending");
        assert_eq!(state_of(Status::Running), "pending");
        assert_eq!(state_of(Status::Succeeded), "success");
        assert_eq!(state_of(Status::Failed), "failure");
        for status in [Status::Cancelled, Status::TimedOut, Status::Interrupted] {
            assert_eq!(state_of(status), "error");
        }
        let mut run = run_with(cli(), None, json!({}));
        assert_eq!(description(&run), "running");
        run.status = Status::Failed;
        run.message = Some("step `build` failed".into());
        assert_eq!(description(&run), "failed: step `build` failed");
        run.tests = TestSummary {
            total: 215,
            passed: 212,
            failed: 3,
            new_failures: 2,
            still_failing: 1,
            ..TestSummary::default()
        };
        assert_eq!(description(&run), run.tests.describe());
        run.tests = TestSummary::default();
        run.message = Some("x".repeat(400));
        let long = description(&run);
        assert_eq!(long.chars().count(), MAX_DESCRIPTION);
        assert!(long.ends_with('…'));
        assert_eq!(
            target_url("http://127.0.0.1:8080/", "run_01"),
            "http://127.0.0.1:8080/#/runs/run_01"
        );
        let target = CommitTarget {
            owner: "octo".into(),
            repo: "hello.js".into(),
            sha: "abc".into(),
        };
        assert_eq!(
            statuses_url("https://ghe.example/api/v3", &target),
            "https://ghe.example/api/v3/repos/octo/hello.js/statuses/abc"
        );
        assert_eq!(
            mask("token ghp_x said ghp_x", "ghp_x"),
            "token *** said ***"
        );
    }
}
