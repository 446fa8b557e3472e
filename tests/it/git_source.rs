//! The git source: `orchestrator start --source <repo>` follows a local repository made with
//! git2 (no network). New commits arrive through `POST /api/sync`, the push webhook on
//! `/hooks/source` (HMAC-signed) and the interval poll; a broken commit keeps the last good
//! objects; a repository that cannot be fetched leaves everything in force and is retried.

use std::fs;
use std::time::Duration;

use crate::support::{commit, init_repo, orchestrator, sign, temp_project, Server};

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

    let mut server = Server::start_args(&project, &["--port", "0", "--source", &source], &[]);
    let api = server.api();
    let ids = api.workflow_ids();
    for id in ["wf_api-test-suite", "wf_smoke"] {
        assert!(ids.iter().any(|i| i == id), "{id} missing from {ids:?}");
    }
    let (_, smoke) = api.get("/api/workflows/wf_smoke").into_parts();
    assert_eq!(smoke["applied_revision"], format!("git:{first}"));
    assert_eq!(smoke["source_file"], "workflows/smoke.yaml");
    assert!(
        !project.join("workflows").exists(),
        "nothing is written into the project: the manifests come from the repository"
    );

    // A new commit, then POST /api/sync: it is fetched and applied.
    let second = commit(&repo, &[("workflows/extra.yaml", Some(EXTRA))], "add extra");
    let (status, outcome) = api.post_with("/api/sync", &[], "").into_parts();
    assert_eq!(status, 200, "{outcome}");
    assert_eq!(outcome["report"]["revision"], format!("git:{second}"));
    let extra = server.eventually("wf_extra", Duration::from_secs(10), || {
        let (status, body) = api.get("/api/workflows/wf_extra").into_parts();
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
    let (status, outcome) = api.post_with("/api/sync", &[], "").into_parts();
    assert_eq!(status, 200, "{outcome}");
    assert!(
        outcome["report"]["errors"].as_u64().unwrap() > 0,
        "{outcome}"
    );
    let (_, extra) = api.get("/api/workflows/wf_extra").into_parts();
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
    let server = Server::start_args(&project, &["--port", "0", "--source", &source], &[]);
    let api = server.api();
    let (_, extra) = api.get("/api/workflows/wf_extra").into_parts();
    assert_eq!(extra["description"], "first version");

    // The webhook: a wrong or missing signature is refused...
    let fixed = commit(
        &repo,
        &[("workflows/extra.yaml", Some(EXTRA_FIXED))],
        "fix extra",
    );
    let delivery = r#"{"ref": "refs/heads/main", "after": "x"}"#;
    let (status, body) = api
        .post_with(
            "/hooks/source",
            &[("X-Hub-Signature-256", &sign("wrong", delivery.as_bytes()))],
            delivery,
        )
        .into_parts();
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, body) = api.post_with("/hooks/source", &[], delivery).into_parts();
    assert_eq!(status, 401, "{body}");
    // ...a push to another branch is ignored...
    let other = r#"{"ref": "refs/heads/feature"}"#;
    let (status, body) = api
        .post_with(
            "/hooks/source",
            &[("X-Hub-Signature-256", &sign("s3cret", other.as_bytes()))],
            other,
        )
        .into_parts();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("ignored")),
        "{body}"
    );
    let (_, extra) = api.get("/api/workflows/wf_extra").into_parts();
    assert_eq!(extra["description"], "first version");
    // ...and a signed push is accepted and the new commit applied.
    let (status, body) = api
        .post_with(
            "/hooks/source",
            &[
                ("X-Hub-Signature-256", &sign("s3cret", delivery.as_bytes())),
                ("X-GitHub-Event", "push"),
            ],
            delivery,
        )
        .into_parts();
    assert_eq!(status, 202, "{body}");
    let extra = server.eventually("the fixed commit", Duration::from_secs(20), || {
        let (_, body) = api.get("/api/workflows/wf_extra").into_parts();
        (body["applied_revision"] == format!("git:{fixed}")).then_some(body)
    });
    assert_eq!(extra["status"], "applied");
    assert_eq!(extra["description"], "fixed version");
    assert_eq!(extra["steps"], 2);

    // Removing a manifest from the repository removes its object.
    commit(&repo, &[("workflows/extra.yaml", None)], "remove extra");
    let (status, _) = api.post_with("/api/sync", &[], "").into_parts();
    assert_eq!(status, 200);
    let (status, _) = api.get("/api/workflows/wf_extra").into_parts();
    assert_eq!(status, 404);
    let (_, metrics) = api.get("/metrics").into_parts();
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
    let server = Server::start(&project);
    let api = server.api();
    assert!(api.workflow_ids().iter().any(|id| id == "wf_smoke"));

    // The interval poll brings a new commit without being asked.
    let second = commit(&repo, &[("workflows/extra.yaml", Some(EXTRA))], "add extra");
    server.eventually("the polled commit", Duration::from_secs(20), || {
        let (_, body) = api.get("/api/workflows/wf_extra").into_parts();
        (body["applied_revision"] == format!("git:{second}")).then_some(())
    });

    // The repository goes away: fetches fail, are counted and retried; nothing is lost.
    let moved = temp.path().join("repo-moved");
    fs::rename(&repo_dir, &moved).unwrap();
    server.eventually("a failed fetch", Duration::from_secs(20), || {
        let (_, metrics) = api.get("/metrics").into_parts();
        let text = metrics.as_str().unwrap_or_default().to_owned();
        (!text.contains("orchestrator_source_fetch_errors_total 0\n")).then_some(())
    });
    let (status, body) = api.post_with("/api/sync", &[], "").into_parts();
    assert!(status >= 500, "{status} {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot fetch {}", repo_dir.display())),
        "{body}"
    );
    let (status, extra) = api.get("/api/workflows/wf_extra").into_parts();
    assert_eq!(status, 200);
    assert_eq!(extra["applied_revision"], format!("git:{second}"));

    // Back again: the retry picks up the commit made meanwhile.
    fs::rename(&moved, &repo_dir).unwrap();
    let repo = git2::Repository::open(&repo_dir).unwrap();
    let third = commit(&repo, &[("workflows/extra.yaml", Some(EXTRA_FIXED))], "fix");
    server.eventually(
        "the commit after the outage",
        Duration::from_secs(30),
        || {
            let (_, body) = api.get("/api/workflows/wf_extra").into_parts();
            (body["applied_revision"] == format!("git:{third}")).then_some(())
        },
    );
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
