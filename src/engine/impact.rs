//! Impact selection in a run: the `run_tests` steps that say `select: affected` (or whose
//! workflow does), the change they are judged against, and the decision
//! (`spec::impact::decide`) turned into a [`Selection`] per step, which the run's machine
//! applies when the step is ready (a skip with its reason, a note in its log). The change
//! comes from, in order: the run's parameters `base`/`head`; its webhook's commit (the
//! push's `changed_files`, else `base`..`sha` diffed in a repository holding both); the
//! run's revision (`git:<sha>`) against the revision the workflow's last successful run
//! had. Repositories (`source::changes`): the git source's mirror, else the project's own.
//! Without steps to select, nothing is read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::Value;

use super::expand::{self, Scope};
use super::machine::Selection;
use super::run::EngineConfig;
use crate::manifest::Kind;
use crate::model::{RunRecord, Status};
use crate::source::changes::{short, Repo};
use crate::spec::impact::{self, Baseline, ImpactPlan, Selectable, SuitePaths};
use crate::spec::workflow::WorkflowSpec;
use crate::store::{ObjectKey, ObjectRecord, Store};

/// Whether a step runs an Agent manifest's (or the built-in) `test_runner` `run_tests`.
fn runs_tests(agent: &str, action: &str, agents: &BTreeMap<String, Value>) -> bool {
    action == "run_tests"
        && (agent == "test_runner"
            || agents
                .get(agent)
                .and_then(|a| a.get("type"))
                .and_then(Value::as_str)
                == Some("test_runner"))
}

/// The `run_tests` steps of a workflow with their suites (the `test_suite` parameter,
/// `{{ }}` substituted from `scope` when it can be), by index; `all` takes every one,
/// otherwise only those that select affected suites. Also the globs of every suite of their
/// agents (a changed file none claims makes everything run).
pub fn selectables(
    workflow: &Value,
    spec: &WorkflowSpec,
    agents: &BTreeMap<String, Value>,
    scope: &Scope,
    all: bool,
) -> (Vec<(usize, Selectable)>, Vec<SuitePaths>) {
    let mut steps = Vec::new();
    let mut used = BTreeSet::new();
    for (index, step) in spec.steps.iter().enumerate() {
        if !runs_tests(&step.agent, &step.action, agents)
            || !(all || impact::selects_affected(&step.raw, workflow))
        {
            continue;
        }
        let Some(suite) = step
            .raw
            .get("parameters")
            .and_then(|p| p.get("test_suite"))
            .and_then(|s| expand::substitute(s, scope).ok())
            .and_then(|s| s.as_str().map(str::to_owned))
        else {
            continue;
        };
        let paths = agents
            .get(&step.agent)
            .and_then(|a| SuitePaths::of_suite(a, &suite))
            .and_then(Result::ok);
        used.insert(step.agent.clone());
        steps.push((
            index,
            Selectable {
                step: step.name.clone(),
                suite,
                paths,
            },
        ));
    }
    let claims = used
        .iter()
        .filter_map(|agent| agents.get(agent))
        .flat_map(|a| SuitePaths::all_of(a).into_iter().map(|(_, p)| p))
        .collect();
    (steps, claims)
}

/// The manifests a workflow's steps depend on, relative to the repository's top (`prefix`
/// is where the manifests' directories are in it): the directory of the workflow's file,
/// of its template's, and of the Agent manifests of `agents_used` — any change there makes
/// everything run. A manifest at the top of the manifests' tree counts as its file alone.
/// When the manifests live in a directory of their own inside the repository (the git
/// source's `path`, a project below the repository's top), that whole directory counts.
pub fn manifest_paths(
    objects: &BTreeMap<ObjectKey, ObjectRecord>,
    workflow_id: &str,
    workflow: &Value,
    agents_used: &BTreeSet<String>,
    prefix: &str,
) -> Vec<String> {
    let template = workflow.get("expanded_from").and_then(Value::as_str);
    let mut paths = BTreeSet::new();
    if !prefix.is_empty() {
        paths.insert(prefix.to_owned());
    }
    for record in objects.values().filter(|r| r.is_live()) {
        let ours = match record.key.kind {
            Kind::Workflow => record.key.id == workflow_id,
            Kind::WorkflowTemplate => {
                template.is_some_and(|t| t == record.key.id || t == record.name)
            }
            Kind::Agent => agents_used.contains(&record.name),
            _ => false,
        };
        if !ours || Path::new(&record.source_file).is_absolute() {
            continue;
        }
        let file = record.source_file.replace('\\', "/");
        let file = file.trim_start_matches("./");
        let path = match file.rsplit_once('/') {
            Some((dir, _)) => format!("{prefix}{dir}/"),
            None => format!("{prefix}{file}"),
        };
        paths.insert(path);
    }
    paths.into_iter().collect()
}

/// The repositories a run can read changes from, the one for its revisions first: the git
/// source's mirror (when the project follows one, or one was fetched), the project's own.
fn repositories(config: &EngineConfig) -> Vec<Repo> {
    let manifests = config.git_source_path.as_deref().unwrap_or(Path::new("."));
    let mirror = Repo::git_source(&config.data_dir, manifests);
    let project = Repo::project(&config.project_dir);
    match (config.git_source_path.is_some(), mirror, project) {
        (true, Some(mirror), _) => vec![mirror],
        (_, mirror, project) => project.into_iter().chain(mirror).collect(),
    }
}

fn text<'v>(map: &'v serde_json::Map<String, Value>, key: &str) -> Option<&'v str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// The change a run is judged against, and the repository prefix its paths use.
fn baseline(store: &Store, run: &RunRecord, repos: &[Repo]) -> (Baseline, String) {
    let first_prefix = repos.first().map(|r| r.prefix.clone()).unwrap_or_default();
    let revision_sha = run
        .revision
        .as_deref()
        .and_then(|r| r.strip_prefix("git:"))
        .map(str::to_owned);
    // 1. The parameters base/head.
    if let Some(base) = text(&run.parameters, "base") {
        let head = text(&run.parameters, "head")
            .map(str::to_owned)
            .or_else(|| revision_sha.clone())
            .unwrap_or_else(|| "HEAD".to_owned());
        let Some(repo) = repos.first() else {
            return (
                Baseline::Unknown {
                    why: format!("the parameters give base `{base}`, but the project is in no git repository and follows no git source"),
                },
                first_prefix,
            );
        };
        return match repo.changed_files(base, &head) {
            Ok(files) => (
                Baseline::Changes {
                    from: format!(
                        "the parameters base..head ({base}..{head}) in {}",
                        repo.label
                    ),
                    files,
                },
                repo.prefix.clone(),
            ),
            Err(err) => (
                Baseline::Unknown {
                    why: err.to_string(),
                },
                first_prefix,
            ),
        };
    }
    // 2. The webhook's commit, when the workflow's last finished run succeeded: after a
    // failure, a push that touches other files must not skip the suite still failing, so
    // the change is then taken from the last success (3.).
    // The workflow's runs, read once for both questions asked of them.
    let earlier = store.workflow_runs(&run.workflow_id);
    let last_finished_failed = match &earlier {
        Ok(runs) => runs
            .iter()
            .rev()
            .find(|r| r.id != run.id && r.status.is_finished())
            .is_some_and(|r| r.status != Status::Succeeded),
        Err(_) => true,
    };
    let webhook_commit = run
        .trigger
        .details
        .get("commit")
        .and_then(Value::as_object)
        .filter(|_| !last_finished_failed);
    if let Some(commit) = webhook_commit {
        let sha = text(commit, "sha").unwrap_or_default();
        // An empty list (a push of no new commit) says nothing: compare the commits instead.
        if let Some(files) = commit
            .get("changed_files")
            .and_then(Value::as_array)
            .filter(|files| !files.is_empty())
        {
            let files: BTreeSet<String> = files
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect();
            return (
                Baseline::Changes {
                    from: format!("the files the webhook's push of {} lists", short(sha)),
                    files: files.into_iter().collect(),
                },
                first_prefix,
            );
        }
        if let Some(base) = text(commit, "base") {
            if let Some(repo) = repos.iter().find(|r| r.has(base) && r.has(sha)) {
                if let Ok(files) = repo.changed_files(base, sha) {
                    return (
                        Baseline::Changes {
                            from: format!(
                                "the webhook's commit against its base ({}..{}) in {}",
                                short(base),
                                short(sha),
                                repo.label
                            ),
                            files,
                        },
                        repo.prefix.clone(),
                    );
                }
            }
        }
    }
    // 3. The run's revision against the last one the workflow succeeded on.
    let Some(sha) = revision_sha else {
        return (
            Baseline::Unknown {
                why: format!(
                    "the run's revision is {}, not a git commit, and neither base/head parameters nor a webhook's commit say what changed",
                    run.revision.as_deref().unwrap_or("unknown")
                ),
            },
            first_prefix,
        );
    };
    let passed = match earlier {
        Ok(runs) => runs
            .into_iter()
            .rev()
            .filter(|r| r.id != run.id && r.status == Status::Succeeded)
            .find_map(|r| r.revision?.strip_prefix("git:").map(str::to_owned)),
        Err(err) => {
            return (
                Baseline::Unknown {
                    why: format!("the workflow's runs cannot be read: {err}"),
                },
                first_prefix,
            )
        }
    };
    let Some(base) = passed else {
        return (
            Baseline::Unknown {
                why: "no earlier run of this workflow succeeded on a git revision".to_owned(),
            },
            first_prefix,
        );
    };
    let Some(repo) = repos.iter().find(|r| r.has(&base) && r.has(&sha)) else {
        return (
            Baseline::Unknown {
                why: format!(
                    "no repository here holds both {} (the last successful run's revision) and {}",
                    short(&base),
                    short(&sha)
                ),
            },
            first_prefix,
        );
    };
    match repo.changed_files(&base, &sha) {
        Ok(files) => (
            Baseline::Changes {
                from: format!(
                    "the run's revision against the last successful run's ({}..{}) in {}",
                    short(&base),
                    short(&sha),
                    repo.label
                ),
                files,
            },
            repo.prefix.clone(),
        ),
        Err(err) => (
            Baseline::Unknown {
                why: err.to_string(),
            },
            first_prefix,
        ),
    }
}

/// The selection of each step of a run (`None` for a step that is not selected), decided
/// before it starts. Reads nothing when no step selects affected suites.
pub fn select(
    store: &Store,
    config: &EngineConfig,
    run: &RunRecord,
    spec: &WorkflowSpec,
    agents: &BTreeMap<String, Value>,
    scope: &Scope,
) -> Vec<Option<Selection>> {
    let mut selections = vec![None; spec.steps.len()];
    let (steps, claims) = selectables(&run.workflow, spec, agents, scope, false);
    if steps.is_empty() {
        return selections;
    }
    let repos = repositories(config);
    let (baseline, prefix) = baseline(store, run, &repos);
    let used: BTreeSet<String> = steps
        .iter()
        .map(|(index, _)| spec.steps[*index].agent.clone())
        .collect();
    let manifests = match store.objects() {
        Ok(objects) => manifest_paths(&objects, &run.workflow_id, &run.workflow, &used, &prefix),
        Err(_) => Vec::new(),
    };
    let selectable: Vec<Selectable> = steps.iter().map(|(_, s)| s.clone()).collect();
    let plan = impact::decide(baseline, &selectable, &claims, &manifests);
    apply(&plan, &steps, &mut selections);
    selections
}

fn apply(plan: &ImpactPlan, steps: &[(usize, Selectable)], selections: &mut [Option<Selection>]) {
    for ((index, _), decision) in steps.iter().zip(&plan.steps) {
        let from = match &plan.baseline {
            Baseline::Changes { from, files } => match files.len() {
                1 => format!(" (1 changed file, from {from})"),
                n => format!(" ({n} changed files, from {from})"),
            },
            Baseline::Unknown { .. } => String::new(),
        };
        selections[*index] = Some(Selection {
            skip: (!decision.run).then(|| decision.reason.clone()),
            note: format!("{}{from}", plan.note(decision)),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::store::ObjectStatus;

    fn record(kind: Kind, id: &str, name: &str, file: &str) -> (ObjectKey, ObjectRecord) {
        let key = ObjectKey {
            kind,
            id: id.to_owned(),
        };
        let record = ObjectRecord {
            key: key.clone(),
            name: name.to_owned(),
            spec: Some(Arc::new(json!({}))),
            hash: None,
            source_file: file.to_owned(),
            status: ObjectStatus::Applied,
            diagnostics: Vec::new(),
            applied_revision: None,
            attempted_revision: String::new(),
            generation: 1,
            applied_at: None,
            updated_at: String::new(),
        };
        (key, record)
    }

    #[test]
    fn the_workflows_manifests_are_its_directory_its_templates_and_its_agents() {
        let objects: BTreeMap<ObjectKey, ObjectRecord> = [
            record(Kind::Workflow, "wf_a", "a", "workflows/a.yaml"),
            record(Kind::Workflow, "wf_b", "b", "other/b.yaml"),
            record(Kind::WorkflowTemplate, "tpl_t", "t", "templates/t.yaml"),
            record(
                Kind::Agent,
                "agent_test_runner",
                "test_runner",
                "agents/runner.yaml",
            ),
            record(Kind::Agent, "agent_other", "other", "agents2/other.yaml"),
            record(Kind::Agent, "agent_top", "top", "top.yaml"),
        ]
        .into_iter()
        .collect();
        let used: BTreeSet<String> = ["test_runner".to_owned(), "top".to_owned()].into();
        let workflow = json!({"expanded_from": "t"});
        assert_eq!(
            manifest_paths(&objects, "wf_a", &workflow, &used, "deploy/"),
            [
                "deploy/",
                "deploy/agents/",
                "deploy/templates/",
                "deploy/top.yaml",
                "deploy/workflows/"
            ]
        );
        assert_eq!(
            manifest_paths(&objects, "wf_b", &json!({}), &BTreeSet::new(), ""),
            ["other/"]
        );
    }

    #[test]
    fn only_test_runner_run_tests_steps_with_select_affected_are_selectable() {
        let workflow = json!({"steps": [
            {"name": "a", "agent": "test_runner", "action": "run_tests", "select": "affected",
             "parameters": {"test_suite": "{{ params.suite }}"}},
            {"name": "b", "agent": "runner", "action": "run_tests", "select": "affected",
             "parameters": {"test_suite": "web"}},
            {"name": "c", "agent": "test_runner", "action": "run_tests",
             "parameters": {"test_suite": "api"}},
            {"name": "d", "select": "affected", "command": ["true"]},
            {"name": "e", "agent": "test_runner", "action": "setup_environment", "select": "affected",
             "parameters": {"environment": "staging"}},
        ]});
        let spec = WorkflowSpec::compile(&workflow);
        let agents: BTreeMap<String, Value> = [
            (
                "runner".to_owned(),
                json!({"type": "test_runner", "suites": {"web": {"command": ["x"], "paths": ["web/**"]}}}),
            ),
            (
                "test_runner".to_owned(),
                json!({"type": "test_runner", "suites": {"api": {"command": ["x"], "paths": ["api/**"]}}}),
            ),
        ]
        .into();
        let mut scope = Scope::default();
        scope.params.insert("suite".into(), json!("api"));
        let (steps, claims) = selectables(&workflow, &spec, &agents, &scope, false);
        let found: Vec<(usize, &str, &str, bool)> = steps
            .iter()
            .map(|(i, s)| (*i, s.step.as_str(), s.suite.as_str(), s.paths.is_some()))
            .collect();
        assert_eq!(found, [(0, "a", "api", true), (1, "b", "web", true)]);
        assert_eq!(claims.len(), 2);
        let (all, _) = selectables(&workflow, &spec, &agents, &scope, true);
        assert_eq!(all.len(), 3, "`tests affected` plans every run_tests step");
    }

    fn run(id: &str, status: Status, trigger: crate::model::Trigger) -> RunRecord {
        RunRecord {
            id: id.to_owned(),
            workflow_id: "wf_impact".into(),
            workflow_name: "impact".into(),
            status,
            parameters: Default::default(),
            trigger,
            workflow: json!({"steps": [{"name": "a"}]}),
            steps: vec!["a".into()],
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            message: None,
            tests: Default::default(),
            rerun_of: None,
            revision: None,
            pid: None,
        }
    }

    #[test]
    fn a_pushs_file_list_is_trusted_only_after_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let push = crate::model::Trigger {
            kind: "webhook".into(),
            details:
                json!({"commit": {"sha": "b2", "base": "a1", "changed_files": ["web/app.js"]}})
                    .as_object()
                    .cloned()
                    .unwrap(),
        };
        let current = run("run_03", Status::Running, push);
        let earlier = |id: &str, status| {
            run(
                id,
                status,
                crate::model::Trigger {
                    kind: "cli".into(),
                    details: Default::default(),
                },
            )
        };
        store
            .save_run(Some(&earlier("run_01", Status::Succeeded)), &[], true)
            .unwrap();
        match baseline(&store, &current, &[]).0 {
            Baseline::Changes { files, .. } => assert_eq!(files, ["web/app.js"]),
            other => panic!("after a success the push's files decide: {other:?}"),
        }
        store
            .save_run(Some(&earlier("run_02", Status::Failed)), &[], true)
            .unwrap();
        match baseline(&store, &current, &[]).0 {
            Baseline::Unknown { .. } => {}
            other => panic!(
                "after a failure the push's own files must not skip the failing suite: {other:?}"
            ),
        }
    }
}
