//! Results back on the commit: a Trigger or Workflow with `report_to: {github: ...}` reports
//! each run it starts at a GitHub commit as a commit status. GitHub is played by a loopback
//! [`HttpRecorder`] under a GitHub Enterprise style `api_url` (`/api/v3`), and every request
//! it gets is checked against GitHub's own REST description (the npm package
//! `@octokit/openapi`, installed by `scripts/test` into `target/test-tools`): the method and
//! path match an operation, the body's fields are declared with their types and enum values,
//! the required ones are there, and the headers are the ones GitHub asks for.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::receivers::{HttpRecorder, Recorded};
use crate::support::{append_config, cli, project, sign, Api, Reply, Server, DEADLINE};

/// Where `scripts/test` installs GitHub's REST description.
const OPENAPI: &str =
    "target/test-tools/node_modules/@octokit/openapi/generated/api.github.com.json";

/// The token the server reads from `GITHUB_TOKEN`: it must reach GitHub and nothing else.
const TOKEN: &str = "ghp_CommitStatusTestToken0123456789abcdef";

const SECRET: &str = "commit status webhook secret";

/// GitHub's REST description, parsed once.
fn description() -> &'static Value {
    static DESCRIPTION: OnceLock<Value> = OnceLock::new();
    DESCRIPTION.get_or_init(|| {
        let path = crate::support::repo_dir().join(OPENAPI);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}. The commit status tests check requests against GitHub's REST description from the npm package @octokit/openapi: run scripts/test, which installs it into target/test-tools",
                path.display()
            )
        });
        serde_json::from_str(&text).expect("the description is JSON")
    })
}

/// `value` with a local `$ref` followed.
fn resolved(value: &Value) -> &Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local reference");
            resolved(
                description()
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{reference} is not in the description")),
            )
        }
        None => value,
    }
}

/// Whether `value` is of the description's `schema` type (OpenAPI 3.0: `nullable`).
fn of_type(schema: &Value, value: &Value) -> bool {
    if value.is_null() {
        return schema["nullable"] == true;
    }
    match schema["type"].as_str() {
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some("array") => value.is_array(),
        Some("object") => value.is_object(),
        _ => true,
    }
}

/// Checks one request against GitHub's REST description and returns its operation id. The
/// request's path is the API root's `prefix` and a path of the description.
#[track_caller]
fn conforms(request: &Recorded, prefix: &str) -> String {
    let path = request.path.split('?').next().unwrap();
    let path = path
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{path} is not under the API root {prefix}"));
    let segments: Vec<&str> = path.split('/').collect();
    let method = request.method.to_ascii_lowercase();
    let (template, operation) = description()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .find_map(|(template, item)| {
            let parts: Vec<&str> = template.split('/').collect();
            let matches = parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| {
                    if part.starts_with('{') && part.ends_with('}') {
                        !segment.is_empty()
                    } else {
                        part == segment
                    }
                });
            (matches && item.get(&method).is_some()).then(|| (template, &item[&method]))
        })
        .unwrap_or_else(|| {
            panic!(
                "{} {path} is no operation of GitHub's REST API",
                request.method
            )
        });
    // Path parameters as declared (the sha is a hex string, owner and repo names).
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        let parameter = resolved(parameter);
        if parameter["in"] == "path" {
            assert_eq!(parameter["schema"]["type"], "string", "{template}");
        }
    }
    // The headers GitHub documents for its REST API.
    assert_eq!(
        request.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str()),
        "{template}"
    );
    assert_eq!(
        request.header("accept"),
        Some("application/vnd.github+json"),
        "{template}"
    );
    let version = request.header("x-github-api-version").unwrap_or_default();
    assert!(
        version.len() == 10 && chrono::NaiveDate::parse_from_str(version, "%Y-%m-%d").is_ok(),
        "X-GitHub-Api-Version is a date: {version:?}"
    );
    assert!(
        request
            .header("user-agent")
            .is_some_and(|agent| !agent.is_empty()),
        "GitHub refuses requests without a User-Agent"
    );
    // The body against the operation's request schema.
    let body_spec = resolved(&operation["requestBody"]);
    let media = &body_spec["content"]["application/json"];
    assert!(
        media.is_object(),
        "{template} takes no JSON body: {body_spec}"
    );
    assert_eq!(
        request.header("content-type"),
        Some("application/json"),
        "{template}"
    );
    let schema = resolved(&media["schema"]);
    let body = request.body.as_object().unwrap_or_else(|| {
        panic!(
            "{} {path}: the body is not a JSON object: {}",
            request.method, request.body
        )
    });
    let properties = schema["properties"]
        .as_object()
        .expect("declared properties");
    for (field, value) in body {
        let declared = resolved(
            properties
                .get(field)
                .unwrap_or_else(|| panic!("{template}: `{field}` is not a declared field")),
        );
        assert!(
            of_type(declared, value),
            "{template}: `{field}` is {value}, not of type {}",
            declared["type"]
        );
        if let Some(allowed) = declared["enum"].as_array() {
            assert!(
                allowed.contains(value),
                "{template}: `{field}` is {value}, not one of {allowed:?}"
            );
        }
    }
    for required in schema["required"].as_array().into_iter().flatten() {
        let field = required.as_str().unwrap();
        assert!(
            body.contains_key(field),
            "{template}: the required `{field}` is missing"
        );
    }
    operation["operationId"].as_str().unwrap().to_owned()
}

/// The statuses `recorder` got, each checked against the description: (state, body).
#[track_caller]
fn statuses(recorder: &HttpRecorder) -> Vec<Value> {
    recorder
        .requests()
        .iter()
        .map(|request| {
            assert_eq!(
                conforms(request, "/api/v3"),
                "repos/create-commit-status",
                "{request:?}"
            );
            request.body.clone()
        })
        .collect()
}

/// A push to `master` of GitHub's example repository (the webhook tests' payload).
fn push() -> Value {
    crate::triggers::push_to_master()
}

/// The workflow: one suite through the test_runner agent, whose result `outcome` (a file
/// the test writes: `pass` or `fail`) decides; with `hold`, it waits for a `release` file
/// first. Its own `report_to` says `from-the-workflow`.
fn workflow(api_url: &str) -> String {
    format!(
        r#"name: Build
parameters:
  hold: {{type: boolean, default: false}}
report_to:
  github: {{token: env:GITHUB_TOKEN, context: from-the-workflow, api_url: "{api_url}"}}
steps:
  - name: wait
    command: ["sh", "-c", "if [ \"$1\" = true ]; then n=0; while [ ! -f release ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done; fi", "wait", "{{{{ params.hold }}}}"]
  - name: suite
    depends_on: [wait]
    agent: test_runner
    action: run_tests
    parameters: {{test_suite: unit}}
"#
    )
}

/// The trigger: GitHub pushes to master, its `report_to` ahead of the workflow's.
fn trigger(api_url: &str) -> String {
    format!(
        r#"name: GitHub
path: /hooks/github
provider: github
workflow: wf_build
events: [push, pull_request]
secret: file:secrets/github
parameters:
  hold: "{{{{ payload.hold }}}}"
report_to:
  github:
    token: env:GITHUB_TOKEN
    context: orchestrator/api-tests
    api_url: "{api_url}"
"#
    )
}

const AGENT: &str = r#"name: test_runner
type: test_runner
environments:
  staging:
    command: ["sh", "-c", "true"]
  production:
    command: ["sh", "-c", "true"]
suites:
  api:
    command: ["sh", "-c", "true"]
  unit:
    command: ["sh", "suites/unit.sh"]
    junit: reports/junit-unit.xml
"#;

/// Three cases; the third fails when the project's `outcome` file says `fail`.
const SUITE: &str = r#"#!/bin/sh
out="${ORCHESTRATOR_JUNIT:?}"
mkdir -p "$(dirname "$out")"
if [ "$(cat outcome 2>/dev/null)" = fail ]; then
  third='<testcase classname="unit" name="third" time="0.01"><failure message="expected 1, got 2">boom</failure></testcase>'
  code=1
else
  third='<testcase classname="unit" name="third" time="0.01"/>'
  code=0
fi
printf '<?xml version="1.0"?>\n<testsuite name="unit" tests="3"><testcase classname="unit" name="first" time="0.01"/><testcase classname="unit" name="second" time="0.01"/>%s</testsuite>\n' "$third" > "$out"
exit $code
"#;

/// A project reporting to `recorder`, its retries quick; the server started with the
/// token in `GITHUB_TOKEN`.
fn reporting_project(recorder: &HttpRecorder) -> (tempfile::TempDir, Server) {
    let api_url = format!("{}/api/v3", recorder.url());
    let dir = project(&[
        ("workflows/build.yaml", &workflow(&api_url)),
        ("triggers/github.yaml", &trigger(&api_url)),
        ("agents/test_runner.yaml", AGENT),
        ("suites/unit.sh", SUITE),
        ("secrets/github", SECRET),
    ]);
    append_config(
        dir.path(),
        "notifications:\n  retry: {attempts: 3, initial_backoff: 50ms}\n",
    );
    let server = Server::start_with(dir.path(), &[("GITHUB_TOKEN", TOKEN)]);
    (dir, server)
}

/// Delivers a signed push (with `hold` in its payload) and returns the run it started.
fn deliver(server: &Server, delivery: &str, hold: bool) -> String {
    deliver_event(server, "push", push(), delivery, hold)
}

/// Delivers a signed `event` with `payload` (and `hold` in it); returns the run it started.
fn deliver_event(
    server: &Server,
    event: &str,
    mut payload: Value,
    delivery: &str,
    hold: bool,
) -> String {
    payload["hold"] = json!(hold);
    let body = serde_json::to_vec(&payload).unwrap();
    let signature = sign(SECRET, &body);
    let reply: Reply = server.api().post_with(
        "/hooks/github",
        &[
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", &signature),
        ],
        &body,
    );
    let accepted = reply.expect(202);
    accepted["runs"][0]["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{accepted}"))
        .to_owned()
}

/// `GET /api/runs/{id}` once its commit status's newest state is `state` and settled
/// (sent, or given up after `attempts` attempts).
fn settled(server: &Server, run: &str, state: &str, attempts: Option<u64>) -> Value {
    let api = server.api();
    server.eventually(
        &format!("run {run}'s commit status to settle in {state}"),
        DEADLINE,
        || {
            let detail = api.get(&format!("/api/runs/{run}")).expect(200);
            let last = detail["commit_status"]["updates"]
                .as_array()?
                .last()?
                .clone();
            let done = last["state"] == state
                && match attempts {
                    Some(n) => last["attempts"] == n,
                    None => last["delivered"] == true,
                };
            done.then_some(detail)
        },
    )
}

/// A held run (`hold: true`) through to its end: its pending status settled first, then
/// the run released (and the `release` file taken away for the next one); returns
/// `GET /api/runs/{id}` once the final state settled (given up after `attempts`).
fn through(server: &Server, dir: &Path, run: &str, state: &str, attempts: Option<u64>) -> Value {
    settled(server, run, "pending", attempts);
    std::fs::write(dir.join("release"), "").unwrap();
    let detail = settled(server, run, state, attempts);
    std::fs::remove_file(dir.join("release")).unwrap();
    detail
}

/// What the run's tests say, as the library summarises them.
fn described(detail: &Value) -> String {
    let tests: orchestrator::model::TestSummary =
        serde_json::from_value(detail["run"]["tests"].clone()).unwrap();
    tests.describe()
}

/// The token appears nowhere the server writes: its output, its logs, what it answers.
#[track_caller]
fn token_kept_secret(dir: &Path, server: &Server, run: &str) {
    assert!(!server.stderr().contains(TOKEN), "the token is in stderr");
    for log in ["logs/system.log", "logs/api.log"] {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        assert!(!text.contains(TOKEN), "the token is in {log}");
    }
    let shown = cli(dir, &["run", "show", run]).expect_code(0);
    assert!(!shown.stdout.contains(TOKEN) && !shown.stderr.contains(TOKEN));
    let detail = server.api().get(&format!("/api/runs/{run}")).text;
    assert!(!detail.contains(TOKEN));
}

#[test]
fn push_deliveries_report_pending_then_the_outcome_with_the_test_summary() {
    let github = HttpRecorder::with_statuses(&[201]);
    let (dir, server) = reporting_project(&github);
    let dir = dir.path();
    let payload = push();
    let sha = payload["after"].as_str().unwrap();
    let repository = payload["repository"]["full_name"].as_str().unwrap();

    // A passing push: pending as the run starts, then success with its summary.
    let run = deliver(&server, "push-pass", true);
    let detail = through(&server, dir, &run, "success", None);
    assert_eq!(detail["run"]["status"], "succeeded", "{detail}");
    let sent = statuses(&github);
    assert_eq!(sent.len(), 2, "{sent:#?}");
    let target_url = format!("http://{}/#/runs/{run}", server.address);
    assert_eq!(sent[0]["state"], "pending");
    assert_eq!(sent[1]["state"], "success");
    assert_eq!(sent[1]["description"], described(&detail));
    assert!(
        sent[1]["description"]
            .as_str()
            .unwrap()
            .starts_with("3 passed"),
        "{sent:#?}"
    );
    for status in &sent {
        // The trigger's report_to wins over the workflow's.
        assert_eq!(status["context"], "orchestrator/api-tests");
        assert_eq!(status["target_url"], target_url.as_str());
    }
    for request in github.requests() {
        assert_eq!(
            request.path,
            format!("/api/v3/repos/{repository}/statuses/{sha}")
        );
    }
    let report = &detail["commit_status"];
    assert_eq!(report["repository"], repository);
    assert_eq!(report["sha"], sha);
    assert_eq!(report["context"], "orchestrator/api-tests");
    assert_eq!(report["target_url"], target_url.as_str());
    let states: Vec<(&str, bool, u64)> = report["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["state"].as_str().unwrap(),
                u["delivered"].as_bool().unwrap(),
                u["attempts"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(states, [("pending", true, 1), ("success", true, 1)]);
    let shown = cli(dir, &["run", "show", &run]).expect_code(0);
    assert!(
        shown.stdout.contains(&format!(
            "commit status orchestrator/api-tests ({repository}@{}): success sent",
            &sha[..7]
        )),
        "{}",
        shown.stdout
    );
    let json = crate::support::show(dir, &run);
    assert_eq!(json["commit_status"], *report);

    // A failing push: failure, the description naming the failing case.
    std::fs::write(dir.join("outcome"), "fail").unwrap();
    let failed = deliver(&server, "push-fail", true);
    let detail = through(&server, dir, &failed, "failure", None);
    assert_eq!(detail["run"]["status"], "failed", "{detail}");
    let sent = statuses(&github);
    assert_eq!(sent.len(), 4, "{sent:#?}");
    assert_eq!(sent[2]["state"], "pending");
    assert_eq!(sent[3]["state"], "failure");
    assert_eq!(sent[3]["description"], described(&detail));
    assert!(
        sent[3]["description"]
            .as_str()
            .unwrap()
            .starts_with("2 passed, 1 "),
        "{sent:#?}"
    );

    // A pull request: its head commit, in its repository.
    let pull = crate::triggers::pull_request("opened");
    let head = pull["pull_request"]["head"]["sha"].as_str().unwrap();
    let pull_repository = pull["repository"]["full_name"].as_str().unwrap();
    let proposed = deliver_event(&server, "pull_request", pull.clone(), "pr-opened", true);
    through(&server, dir, &proposed, "failure", None);
    let requests = github.requests();
    assert_eq!(requests.len(), 6, "{requests:#?}");
    for request in &requests[4..] {
        assert_eq!(
            request.path,
            format!("/api/v3/repos/{pull_repository}/statuses/{head}")
        );
    }
    statuses(&github);

    // A run the API starts at a directory revision is at no GitHub commit: not reported.
    let api: Api = server.api();
    let manual = api.execute("wf_build", "{}");
    api.wait_finished(&manual);
    let detail = api.get(&format!("/api/runs/{manual}")).expect(200);
    assert!(detail.get("commit_status").is_none(), "{detail}");
    assert_eq!(github.requests().len(), 6);
    token_kept_secret(dir, &server, &run);
}

#[test]
fn a_failing_receiver_is_retried_and_one_that_keeps_failing_never_fails_the_run() {
    // Two server errors, then GitHub takes the status.
    let flaky = HttpRecorder::with_statuses(&[500, 500, 201]);
    let (dir, server) = reporting_project(&flaky);
    // The run waits for `release` so that its pending status is retried to the end first.
    let run = deliver(&server, "push-retried", true);
    let detail = settled(&server, &run, "pending", None);
    assert_eq!(detail["commit_status"]["updates"][0]["attempts"], 3);
    std::fs::write(dir.path().join("release"), "").unwrap();
    let detail = settled(&server, &run, "success", None);
    assert_eq!(detail["run"]["status"], "succeeded");
    let answered: Vec<u16> = flaky.requests().iter().map(|r| r.answered).collect();
    assert_eq!(answered, [500, 500, 201, 201]);
    let sent = statuses(&flaky);
    let states: Vec<&str> = sent.iter().map(|s| s["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "pending", "pending", "success"]);
    drop(server);

    // A receiver that always fails: three attempts per state, the run still succeeds and
    // shows why its status is not on GitHub.
    let broken = HttpRecorder::with_statuses(&[500]);
    let (dir, server) = reporting_project(&broken);
    let dir = dir.path();
    let run = deliver(&server, "push-broken", true);
    let detail = through(&server, dir, &run, "success", Some(3));
    assert_eq!(detail["run"]["status"], "succeeded", "{detail}");
    let updates = detail["commit_status"]["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 2, "{updates:#?}");
    assert_eq!(broken.requests().len(), 6);
    let last = &updates[1];
    assert_eq!(last["delivered"], false);
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("HTTP 500"), "{error}");
    statuses(&broken);
    let shown = cli(dir, &["run", "show", &run]).expect_code(0);
    assert!(
        shown
            .stdout
            .contains("success not sent after 3 attempts: GitHub answered HTTP 500"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("status succeeded"),
        "{}",
        shown.stdout
    );
    token_kept_secret(dir, &server, &run);

    // The run's dashboard page says it too, in a real browser.
    crate::browser::runtime().block_on(async {
        let browser = crate::browser::Browser::start((1280, 900)).await;
        browser
            .open(&format!("http://{}/#/runs/{run}", server.address), "runs")
            .await;
        let text = browser
            .wait_text(
                "[data-commit-status='error']",
                "success not sent after 3 attempts: GitHub answered HTTP 500",
            )
            .await;
        assert!(text.contains("orchestrator/api-tests"), "{text}");
        assert!(!browser.text("body").await.contains(TOKEN));
        browser.assert_no_errors("run page").await;
        browser.close().await;
    });
}

#[test]
fn report_to_is_validated_and_its_token_is_a_reference() {
    let dir = project(&[(
        "workflows/build.yaml",
        "name: Build\nreport_to:\n  github: {token: ghp_pasted_in_the_manifest}\nsteps:\n  - name: a\n    command: [\"true\"]\n",
    )]);
    let dir = dir.path();
    let validated = cli(dir, &["validate"]);
    assert_ne!(validated.code, 0, "{}", validated.stdout);
    let output = format!("{}{}", validated.stdout, validated.stderr);
    assert!(
        output.contains("workflows/build.yaml:3:")
            && output.contains("/report_to/github/token")
            && output
                .contains("(a reference such as env:NAME or file:PATH, never the secret itself)"),
        "{output}"
    );
    // A reference that does not resolve here is a warning, as for every secret.
    std::fs::write(
        dir.join("workflows/build.yaml"),
        "name: Build\nreport_to:\n  github: {token: env:COMMIT_STATUS_TEST_UNSET, context: ci/build}\nsteps:\n  - name: a\n    command: [\"true\"]\n",
    )
    .unwrap();
    let validated = cli(dir, &["validate"]).expect_code(0);
    let output = format!("{}{}", validated.stdout, validated.stderr);
    assert!(
        output.contains("warning: the secret `env:COMMIT_STATUS_TEST_UNSET` does not resolve here"),
        "{output}"
    );
    // Unknown fields and other services are refused.
    std::fs::write(
        dir.join("workflows/build.yaml"),
        "name: Build\nreport_to:\n  gitlab: {token: env:X}\nsteps:\n  - name: a\n    command: [\"true\"]\n",
    )
    .unwrap();
    let validated = cli(dir, &["validate"]);
    assert_ne!(validated.code, 0);
}
