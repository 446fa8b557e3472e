//! Impact selection (issue 19): a workflow with `select: affected` and two `test_runner`
//! suites with `paths:` globs (shell suites writing JUnit), in real git repositories made in
//! the test. A change under one suite's paths skips the other with the reason; no baseline,
//! a file no suite claims or a changed manifest runs everything; changes come from the
//! parameters `base`/`head`, a webhook push, or the last revision the workflow succeeded on
//! (the git source); `tests affected` prints the plan, in text and JSON.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::support::{
    commit, init_repo, orchestrator, run_id, show, sign, step, temp_project, Server,
};

/// A suite writing one passing case to `reports/junit-<name>.xml`.
fn suite(name: &str, paths: &str) -> String {
    format!(
        "  {name}:\n    command: [\"sh\", \"-c\", 'mkdir -p reports && echo \"<testsuites><testsuite name=\\\"{name}\\\"><testcase classname=\\\"{name}\\\" name=\\\"works\\\"/></testsuite></testsuites>\" > reports/junit-{name}.xml']\n    junit: reports/junit-{name}.xml\n    paths: {paths}\n"
    )
}

fn agent() -> String {
    format!(
        "name: test_runner\ntype: test_runner\nenvironments:\n  staging:\n    command: [\"sh\", \"suites/setup.sh\", \"staging\"]\n  production:\n    command: [\"sh\", \"suites/setup.sh\", \"production\"]\nsuites:\n{}{}",
        suite("api", "[\"api/**\", \"shared/**\"]"),
        suite("web", "[\"web/**\"]")
    )
}

const WORKFLOW: &str = "name: impact
description: first
select: affected
steps:
  - name: api
    agent: test_runner
    action: run_tests
    parameters: {test_suite: api}
  - name: web
    agent: test_runner
    action: run_tests
    parameters: {test_suite: web}
  - name: after_web
    depends_on: [web]
    command: [\"true\"]
";

/// An initialised project in a git repository at `dir` with the suites, the workflow and
/// the code they test committed; the repository and that commit.
fn repository(dir: &Path) -> (git2::Repository, String) {
    let (repo, _) = init_repo(dir);
    for sub in ["api", "web", "shared"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let agent = agent();
    let sha = commit(
        &repo,
        &[
            ("agents/test_runner.yaml", Some(&agent)),
            ("workflows/impact.yaml", Some(WORKFLOW)),
            ("api/users.py", Some("users = 1\n")),
            ("web/app.js", Some("app = 1\n")),
            ("shared/db.py", Some("db = 1\n")),
        ],
        "suites with paths",
    );
    (repo, sha)
}

fn log(dir: &Path, run: &str, step: &str) -> String {
    fs::read_to_string(dir.join(format!("logs/workflows/{run}/{step}.log"))).unwrap_or_default()
}

/// `workflow execute wf_impact` with `params`; the run's `run show -o json`.
fn execute(dir: &Path, params: &Value) -> (String, Value) {
    let run = orchestrator(
        dir,
        &[
            "workflow",
            "execute",
            "wf_impact",
            "--params",
            &params.to_string(),
        ],
    )
    .expect_code(0);
    let id = run_id(&run.stdout);
    let shown = show(dir, &id);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    (id, shown)
}

fn statuses(shown: &Value) -> Vec<String> {
    ["api", "web", "after_web"]
        .iter()
        .map(|name| format!("{name}={}", step(shown, name)["status"].as_str().unwrap()))
        .collect()
}

#[test]
fn parameters_base_and_head_skip_the_suite_a_change_does_not_touch() {
    let temp = temp_project();
    let dir = temp.path().join("project");
    let (repo, first) = repository(&dir);
    let api_change = commit(&repo, &[("api/users.py", Some("users = 2\n"))], "api");
    orchestrator(&dir, &["apply"]).expect_code(0);

    // A change under api/**: web is skipped with the reason, what waits on it runs.
    let (run, shown) = execute(&dir, &json!({"base": first, "head": api_change}));
    assert_eq!(
        statuses(&shown),
        ["api=succeeded", "web=skipped", "after_web=succeeded"]
    );
    assert_eq!(
        step(&shown, "web")["message"],
        "skipped: no change under web/**"
    );
    assert_eq!(step(&shown, "api")["tests"].as_array().unwrap().len(), 1);
    assert!(
        log(&dir, &run, "api").contains(
            "impact selection: suite `api` runs: api/users.py changed (api/**, shared/**) (1 changed file, from the parameters base..head"
        ),
        "{}",
        log(&dir, &run, "api")
    );
    assert!(
        log(&dir, &run, "web")
            .contains("impact selection: suite `web` skipped: no change under web/**"),
        "{}",
        log(&dir, &run, "web")
    );
    let text = orchestrator(&dir, &["run", "show", &run])
        .expect_code(0)
        .stdout;
    assert!(text.contains("no change under web/**"), "{text}");

    // A shared path affects api only; `head` defaults to the revision HEAD names.
    let shared = commit(&repo, &[("shared/db.py", Some("db = 2\n"))], "shared");
    let (_, shown) = execute(&dir, &json!({"base": api_change}));
    assert_eq!(
        statuses(&shown),
        ["api=succeeded", "web=skipped", "after_web=succeeded"]
    );

    // A file no suite claims: everything runs, and the log says why.
    let readme = commit(&repo, &[("README.md", Some("# project\n"))], "readme");
    let (run, shown) = execute(&dir, &json!({"base": shared, "head": readme}));
    assert_eq!(
        statuses(&shown),
        ["api=succeeded", "web=succeeded", "after_web=succeeded"]
    );
    assert!(
        log(&dir, &run, "web")
            .contains("impact selection: everything runs: no suite claims README.md"),
        "{}",
        log(&dir, &run, "web")
    );

    // A change to the workflow's own manifest: everything runs.
    let edited = WORKFLOW.replace("description: first", "description: second");
    let manifest = commit(
        &repo,
        &[("workflows/impact.yaml", Some(&edited))],
        "manifest",
    );
    orchestrator(&dir, &["apply"]).expect_code(0);
    let (run, shown) = execute(&dir, &json!({"base": readme, "head": manifest}));
    assert_eq!(
        statuses(&shown),
        ["api=succeeded", "web=succeeded", "after_web=succeeded"]
    );
    assert!(
        log(&dir, &run, "api")
            .contains("everything runs: the workflow's manifests changed (workflows/impact.yaml)"),
        "{}",
        log(&dir, &run, "api")
    );

    // A base that is no revision: everything runs, and the log names the problem.
    let (run, shown) = execute(&dir, &json!({"base": "no-such-branch"}));
    assert_eq!(
        statuses(&shown),
        ["api=succeeded", "web=succeeded", "after_web=succeeded"]
    );
    assert!(
        log(&dir, &run, "api").contains(
            "everything runs: no baseline: `no-such-branch` is not a revision of the project's repository"
        ),
        "{}",
        log(&dir, &run, "api")
    );
}

#[test]
fn without_a_baseline_everything_runs() {
    let temp = temp_project();
    let dir = temp.path().join("project");
    repository(&dir);
    orchestrator(&dir, &["apply"]).expect_code(0);
    // A directory project: its run's revision is `dir:...`, no commit to compare.
    let (run, shown) = execute(&dir, &json!({}));
    assert_eq!(
        statuses(&shown),
        ["api=succeeded", "web=succeeded", "after_web=succeeded"]
    );
    assert!(
        shown["run"]["revision"]
            .as_str()
            .unwrap()
            .starts_with("dir:"),
        "{shown:#}"
    );
    let note = log(&dir, &run, "web");
    assert!(
        note.contains("impact selection: everything runs: no baseline: the run's revision is dir:"),
        "{note}"
    );
}

/// The git source: the run's revision against the last one the workflow succeeded on, and a
/// webhook push's changed files.
#[test]
fn the_git_source_compares_with_the_last_successful_revision_and_pushes_list_their_files() {
    let temp = temp_project();
    let repo_dir = temp.path().join("repo");
    let (repo, _) = repository(&repo_dir);
    // The init's GitHub trigger starts this workflow.
    let trigger = fs::read_to_string(repo_dir.join("triggers/github.yaml"))
        .unwrap()
        .replace("workflow: wf_api-test-suite", "workflow: wf_impact");
    let first = commit(
        &repo,
        &[("triggers/github.yaml", Some(&trigger))],
        "trigger",
    );
    let project = temp.path().join("project");
    fs::create_dir_all(project.join("config")).unwrap();
    fs::create_dir_all(project.join("secrets")).unwrap();
    fs::write(project.join("secrets/github-webhook-secret"), "s3cret").unwrap();
    fs::write(
        project.join("config/development.yaml"),
        format!(
            "source:\n  git:\n    url: {}\n    branch: main\n    interval: 1h\n",
            repo_dir.display()
        ),
    )
    .unwrap();
    let server = Server::start(&project);
    let api = server.api();

    // The first run: no earlier success to compare with, everything runs.
    let shown = api.run_to_end("wf_impact", "{}");
    assert_eq!(shown["run"]["revision"], format!("git:{first}"));
    assert_eq!(
        statuses(&shown),
        ["api=succeeded", "web=succeeded", "after_web=succeeded"]
    );
    let run = shown["run"]["id"].as_str().unwrap();
    assert!(
        log(&project, run, "api").contains(
            "everything runs: no baseline: no earlier run of this workflow succeeded on a git revision"
        ),
        "{}",
        log(&project, run, "api")
    );

    // A commit under web/**: the next run compares with the first one's revision.
    let second = commit(&repo, &[("web/app.js", Some("app = 2\n"))], "web");
    let (status, body) = api.post_with("/api/sync", &[], "").into_parts();
    assert_eq!(status, 200, "{body}");
    let shown = api.run_to_end("wf_impact", "{}");
    assert_eq!(shown["run"]["revision"], format!("git:{second}"));
    assert_eq!(
        statuses(&shown),
        ["api=skipped", "web=succeeded", "after_web=succeeded"]
    );
    assert_eq!(
        step(&shown, "api")["message"],
        "skipped: no change under api/**, shared/**"
    );
    let run = shown["run"]["id"].as_str().unwrap();
    assert!(
        log(&project, run, "web").contains(&format!(
            "the run's revision against the last successful run's ({}..{})",
            &first[..7],
            &second[..7]
        )),
        "{}",
        log(&project, run, "web")
    );

    // A push delivery lists its files: only what it touched runs.
    let push = json!({
        "ref": "refs/heads/main",
        "before": first,
        "after": second,
        "repository": {"full_name": "acme/project"},
        "commits": [{"added": [], "modified": ["api/users.py"], "removed": []}],
        "head_commit": {"id": second, "added": [], "modified": ["api/users.py"], "removed": []},
    });
    let body = serde_json::to_vec(&push).unwrap();
    let accepted = api
        .post_with(
            "/hooks/github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "impact-1"),
                ("X-Hub-Signature-256", &sign("s3cret", &body)),
            ],
            body,
        )
        .expect(202);
    let run = accepted["runs"][0]["run_id"].as_str().unwrap().to_owned();
    let shown = api.wait_finished(&run);
    assert_eq!(shown["run"]["status"], "succeeded", "{shown:#}");
    assert_eq!(
        statuses(&shown),
        ["api=succeeded", "web=skipped", "after_web=succeeded"]
    );
    assert!(
        log(&project, &run, "api").contains("from the files the webhook's push of"),
        "{}",
        log(&project, &run, "api")
    );

    // A push that lists no files: its base and head are compared in the mirror.
    let push = json!({
        "ref": "refs/heads/main",
        "before": first,
        "after": second,
        "repository": {"full_name": "acme/project"},
        "commits": [],
    });
    let body = serde_json::to_vec(&push).unwrap();
    let accepted = api
        .post_with(
            "/hooks/github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "impact-2"),
                ("X-Hub-Signature-256", &sign("s3cret", &body)),
            ],
            body,
        )
        .expect(202);
    let run = accepted["runs"][0]["run_id"].as_str().unwrap().to_owned();
    let shown = api.wait_finished(&run);
    assert_eq!(
        statuses(&shown),
        ["api=skipped", "web=succeeded", "after_web=succeeded"]
    );
    assert!(
        log(&project, &run, "web").contains(&format!(
            "from the webhook's commit against its base ({}..{}) in the git source's repository",
            &first[..7],
            &second[..7]
        )),
        "{}",
        log(&project, &run, "web")
    );
}

#[test]
fn tests_affected_prints_the_plan_and_refuses_bad_revisions() {
    let temp = temp_project();
    let dir = temp.path().join("project");
    let (repo, first) = repository(&dir);
    let second = commit(&repo, &[("api/users.py", Some("users = 2\n"))], "api");
    orchestrator(&dir, &["apply"]).expect_code(0);

    let text = orchestrator(
        &dir,
        &[
            "tests",
            "affected",
            "--workflow",
            "wf_impact",
            "--from",
            &first,
            "--to",
            &second,
        ],
    )
    .expect_code(0)
    .stdout;
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with(&format!(
            "wf_impact: 1 file changed between {} and {} in the project's repository (",
            &first[..7],
            &second[..7]
        )),
        "{text}"
    );
    assert_eq!(lines[1], "  api/users.py", "{text}");
    assert!(
        lines[2].starts_with("STEP") && lines[2].contains("WHY"),
        "{text}"
    );
    let api_row: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(&api_row[..4], ["api", "api", "run", "api/**,"], "{text}");
    assert!(
        lines[3].ends_with("api/users.py changed (api/**, shared/**)"),
        "{text}"
    );
    let web_row: Vec<&str> = lines[4].split_whitespace().collect();
    assert_eq!(&web_row[..4], ["web", "web", "skip", "web/**"], "{text}");
    assert!(lines[4].ends_with("no change under web/**"), "{text}");

    // JSON, with a file no suite claims: everything runs and the path says why.
    commit(&repo, &[("docs.md", Some("docs\n"))], "docs");
    let json = orchestrator(
        &dir,
        &[
            "tests",
            "affected",
            "--workflow",
            "impact",
            "--from",
            &first,
            "-o",
            "json",
        ],
    )
    .expect_code(0)
    .stdout;
    let plan: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(plan["workflow"], "wf_impact");
    assert_eq!(plan["from"], first);
    assert_eq!(plan["changed_files"], json!(["api/users.py", "docs.md"]));
    assert_eq!(plan["everything"], "no suite claims docs.md");
    assert_eq!(plan["steps"][0]["step"], "api");
    assert_eq!(plan["steps"][0]["run"], true);
    assert_eq!(plan["steps"][0]["select"], "affected");
    assert_eq!(plan["steps"][1]["run"], true);
    assert_eq!(plan["steps"][1]["decided_by"], json!(["docs.md"]));
    assert_eq!(plan["steps"][1]["paths"], json!(["web/**"]));

    // Bad input: a revision that is none, an unknown workflow, a project outside git.
    let bad = orchestrator(
        &dir,
        &[
            "tests",
            "affected",
            "--workflow",
            "wf_impact",
            "--from",
            "no-such-rev",
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("--from: `no-such-rev` is not a revision of the project's repository"),
        "{}",
        bad.stderr
    );
    let bad = orchestrator(
        &dir,
        &[
            "tests",
            "affected",
            "--workflow",
            "wf_impact",
            "--from",
            &first,
            "--to=--all",
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("--to: `--all` is not a revision of the project's repository")
            && bad.stderr.contains("expected a commit sha, branch or tag"),
        "{}",
        bad.stderr
    );
    let bad = orchestrator(
        &dir,
        &[
            "tests",
            "affected",
            "--workflow",
            "wf_nope",
            "--from",
            &first,
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("wf_nope"), "{}", bad.stderr);
    let outside = temp.path().join("outside");
    orchestrator(temp.path(), &["init", "outside"]).expect_code(0);
    let bad = orchestrator(
        &outside,
        &[
            "tests",
            "affected",
            "--workflow",
            "wf_smoke",
            "--from",
            "HEAD~1",
        ],
    );
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(
        bad.stderr
            .contains("is not in a git work tree and follows no git source"),
        "{}",
        bad.stderr
    );
}

#[test]
fn validation_names_a_bad_glob_and_a_select_that_cannot_apply() {
    let agent = agent().replace("paths: [\"web/**\"]", "paths: [\"web/[\"]");
    let project = crate::support::project(&[
        ("agents/test_runner.yaml", &agent),
        (
            "workflows/misplaced.yaml",
            "name: misplaced\nsteps:\n  - name: hello\n    select: affected\n    command: [\"true\"]\n",
        ),
    ]);
    let run = orchestrator(project.path(), &["validate"]).expect_code(1);
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains("error: invalid glob `web/[`: unclosed character class; missing ']'"),
        "{out}"
    );
    assert!(
        out.contains("--> agents/test_runner.yaml:") && out.contains("at /suites/web/paths/0"),
        "{out}"
    );
    assert!(
        out.contains("warning: `select: affected` chooses among test suites: it applies to `test_runner` `run_tests` steps"),
        "{out}"
    );
    assert!(
        out.contains("--> workflows/misplaced.yaml:4:13 at /steps/0/select"),
        "{out}"
    );
}

#[test]
fn the_published_schemas_accept_paths_and_select() {
    let temp = temp_project();
    let agent_file = temp.path().join("test_runner.yaml");
    let workflow_file = temp.path().join("impact.yaml");
    fs::write(&agent_file, agent()).unwrap();
    let step_select = WORKFLOW.replace(
        "    parameters: {test_suite: web}\n",
        "    parameters: {test_suite: web}\n    select: all\n",
    );
    fs::write(&workflow_file, step_select).unwrap();
    for (schema, file) in [("agent", &agent_file), ("workflow", &workflow_file)] {
        let output = std::process::Command::new("check-jsonschema")
            .args(["--disable-formats", "duration", "--schemafile"])
            .arg(crate::support::repo_dir().join(format!("schemas/{schema}.json")))
            .arg(file)
            .output()
            .expect("check-jsonschema is not installed: scripts/test installs it");
        assert!(
            output.status.success(),
            "{schema}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
