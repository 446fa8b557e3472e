//! Webhook triggers end to end: real GitHub payloads (the npm package
//! `@octokit/webhooks-examples`, installed by `scripts/test` into `target/test-tools`),
//! signed here with HMAC-SHA256 and delivered to `orchestrator start`; the runs they start,
//! deduplication across a restart, filters, signatures, size limits, the generic provider,
//! and `trigger create | list | show | deliveries` with and without a server.

use std::path::Path;
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::support::{
    cli, create_webhook, edit_config, eventually, project, server_address, sign, Api, Reply,
    Server, DEADLINE,
};

/// Where `scripts/test` installs the examples.
const EXAMPLES: &str =
    "target/test-tools/node_modules/@octokit/webhooks-examples/api.github.com/index.json";

/// Every example of the package: `[{"name": "push", "examples": [...]}, ...]`.
fn examples() -> &'static Vec<Value> {
    static EXAMPLES_JSON: OnceLock<Vec<Value>> = OnceLock::new();
    EXAMPLES_JSON.get_or_init(|| {
        let path = crate::support::repo_dir().join(EXAMPLES);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}. The webhook tests use GitHub's example payloads from the npm package @octokit/webhooks-examples: run scripts/test, which installs it into target/test-tools",
                path.display()
            )
        });
        serde_json::from_str(&text).expect("the examples are JSON")
    })
}

/// The first example of `event` that `pick` accepts.
fn example(event: &str, pick: impl Fn(&Value) -> bool) -> Value {
    examples()
        .iter()
        .find(|e| e["name"] == event)
        .and_then(|e| e["examples"].as_array())
        .and_then(|list| list.iter().find(|x| pick(x)))
        .cloned()
        .unwrap_or_else(|| panic!("no matching `{event}` example in {EXAMPLES}"))
}

/// A push to a branch, with its commits (`refs/heads/master`, `after` 6113728f...).
pub(crate) fn push_to_master() -> Value {
    example("push", |x| {
        x["ref"] == "refs/heads/master" && x["deleted"] == false && x["commits"].is_array()
    })
}

pub(crate) fn pull_request(action: &str) -> Value {
    example("pull_request", |x| x["action"] == action)
}

/// Sends only the head of a POST (its `Content-Length` promising a body that never comes)
/// and reads the answer: status and JSON body.
fn headers_only(dir: &Path, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    use std::io::{BufRead, BufReader, Read, Write};
    let address = server_address(dir);
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {address}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

/// A webhook sender (and API reader) for the server of a project.
struct Sender {
    api: Api,
}

impl Sender {
    fn new(dir: &Path) -> Sender {
        Sender {
            api: Api::of_project(dir),
        }
    }

    /// POSTs `body` to `path` with the given headers (and a JSON content type).
    fn post(&self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        self.api.post_with(path, headers, body)
    }

    /// A GitHub delivery: `X-GitHub-Event`, `X-GitHub-Delivery`, and the signature under
    /// `secret` when given.
    fn github(
        &self,
        path: &str,
        event: &str,
        delivery: &str,
        payload: &Value,
        secret: Option<&str>,
    ) -> Reply {
        let body = serde_json::to_vec(payload).unwrap();
        let signature = secret.map(|s| sign(s, &body));
        let mut headers = vec![("X-GitHub-Event", event), ("X-GitHub-Delivery", delivery)];
        if let Some(signature) = &signature {
            headers.push(("X-Hub-Signature-256", signature));
        }
        self.post(path, &headers, &body)
    }

    fn get(&self, path: &str) -> Value {
        self.api.get(path).expect(200)
    }

    fn text(&self, path: &str) -> String {
        let reply = self.api.get(path);
        assert_eq!(reply.status, 200);
        reply.text
    }

    fn wait_finished(&self, run: &str) -> Value {
        self.api.wait_finished(run)
    }

    fn runs_of(&self, workflow: &str) -> u64 {
        self.get(&format!("/api/runs?workflow={workflow}"))["total"]
            .as_u64()
            .unwrap()
    }

    fn deliveries(&self, trigger: &str) -> Value {
        self.get(&format!("/api/triggers/{trigger}/deliveries?limit=100"))
    }
}

/// Checks a `200` answer of `GET path` against the OpenAPI document's schema for it.
#[track_caller]
fn conforms(document: &Value, path: &str, body: &Value) {
    let media = &document["paths"][path]["get"]["responses"]["200"]["content"]["application/json"];
    let schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "allOf": [media["schema"]],
        "components": document["components"],
    });
    let validator = jsonschema::validator_for(&schema).expect("the documented schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "GET {path}: {}\n{body:#}",
        errors.join("\n")
    );
}

/// A workflow whose parameters a trigger maps from the payload.
const BUILD: &str = r#"name: Build
parameters:
  commit: {type: string, default: none}
  ref: {type: string, default: none}
  pr: {type: integer, default: 0}
  action: {type: string, default: none}
steps:
  - name: show
    command: ["sh", "-c", "echo commit=$ORCHESTRATOR_PARAM_COMMIT ref=$ORCHESTRATOR_PARAM_REF pr=$ORCHESTRATOR_PARAM_PR action=$ORCHESTRATOR_PARAM_ACTION"]
"#;

/// The scaffolded `triggers/github.yaml`, replaced: the examples' branch is `master`.
const GITHUB: &str = r#"name: GitHub
type: webhook
path: /hooks/github
provider: github
workflow: wf_build
events: [push, pull_request]
branches: [master]
actions: [opened, synchronize]
secret: file:secrets/github
parameters:
  commit: "{{ payload.after }}"
  ref: "{{ payload.ref }}"
  pr: "{{ payload.pull_request.number }}"
  action: "{{ action }}"
"#;

const SECRET: &str = "It's a Secret to Everybody";

#[test]
fn the_test_signer_matches_githubs_test_vector() {
    assert_eq!(
        sign(SECRET, b"Hello, World!"),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    );
}

#[test]
fn signed_github_deliveries_start_runs_once_and_everything_is_recorded() {
    let dir = project(&[
        ("workflows/build.yaml", BUILD),
        ("triggers/github.yaml", GITHUB),
        ("secrets/github", SECRET),
    ]);
    let dir = dir.path();
    let server = Server::start(dir);
    let hooks = Sender::new(dir);

    // A signed push: 202 at once with the run, which gets its parameters from the payload.
    let push = push_to_master();
    let after = push["after"].as_str().unwrap().to_owned();
    let accepted = hooks
        .github("/hooks/github", "push", "push-1", &push, Some(SECRET))
        .expect(202);
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    assert_eq!(accepted["delivery"], "push-1");
    assert_eq!(accepted["runs"][0]["trigger"], "trg_github", "{accepted}");
    let run = accepted["runs"][0]["run_id"].as_str().unwrap().to_owned();
    let finished = hooks.wait_finished(&run);
    assert_eq!(finished["run"]["status"], "succeeded", "{finished}");
    assert_eq!(
        finished["run"]["parameters"],
        json!({"commit": after, "ref": "refs/heads/master", "pr": 0, "action": "none"})
    );
    assert_eq!(finished["run"]["trigger"]["kind"], "webhook");
    assert_eq!(finished["run"]["trigger"]["details"]["delivery"], "push-1");
    let log = std::fs::read_to_string(dir.join(format!("logs/workflows/{run}/show.log"))).unwrap();
    assert!(
        log.contains(&format!("commit={after} ref=refs/heads/master")),
        "{log}"
    );

    // The same delivery again (GitHub's "redeliver"): answered, nothing new runs.
    let duplicate = hooks
        .github("/hooks/github", "push", "push-1", &push, Some(SECRET))
        .expect(200);
    assert_eq!(duplicate["status"], "duplicate", "{duplicate}");
    assert_eq!(duplicate["runs"][0]["run_id"], run.as_str());
    assert_eq!(hooks.runs_of("wf_build"), 1);

    // A wrong or missing signature: 401, no run.
    let wrong = hooks
        .github(
            "/hooks/github",
            "push",
            "push-2",
            &push,
            Some("not the secret"),
        )
        .expect(401);
    assert_eq!(wrong["error"]["code"], "unauthorized");
    assert!(
        wrong["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not match the body"),
        "{wrong}"
    );
    let missing = hooks
        .github("/hooks/github", "push", "push-3", &push, None)
        .expect(401);
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("missing X-Hub-Signature-256"),
        "{missing}"
    );
    // A body changed after signing does not verify either.
    let body = serde_json::to_vec(&push).unwrap();
    let mut tampered = body.clone();
    tampered.extend_from_slice(b" ");
    hooks
        .post(
            "/hooks/github",
            &[
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", "push-3b"),
                ("X-Hub-Signature-256", &sign(SECRET, &body)),
            ],
            &tampered,
        )
        .expect(401);
    assert_eq!(hooks.runs_of("wf_build"), 1);

    // GitHub's ping when the webhook is added: 200, no run.
    let ping = example("ping", |_| true);
    let pong = hooks
        .github("/hooks/github", "ping", "ping-1", &ping, Some(SECRET))
        .expect(200);
    assert_eq!(pong["status"], "pong", "{pong}");
    assert_eq!(pong["runs"], json!([]));

    // Pull requests: the event is the header's, the action the payload's; `opened` runs,
    // `closed` is filtered out and says why.
    let opened = pull_request("opened");
    let number = opened["pull_request"]["number"].as_i64().unwrap();
    let accepted = hooks
        .github(
            "/hooks/github",
            "pull_request",
            "pr-1",
            &opened,
            Some(SECRET),
        )
        .expect(202);
    let pr_run = accepted["runs"][0]["run_id"].as_str().unwrap().to_owned();
    let finished = hooks.wait_finished(&pr_run);
    assert_eq!(finished["run"]["status"], "succeeded", "{finished}");
    assert_eq!(finished["run"]["parameters"]["pr"], json!(number));
    assert_eq!(finished["run"]["parameters"]["action"], "opened");
    let closed = hooks
        .github(
            "/hooks/github",
            "pull_request",
            "pr-2",
            &pull_request("closed"),
            Some(SECRET),
        )
        .expect(200);
    assert_eq!(closed["status"], "filtered", "{closed}");
    assert!(
        closed["message"]
            .as_str()
            .unwrap()
            .contains("action `closed` is not one of the trigger's actions: opened, synchronize"),
        "{closed}"
    );

    // The branch filter: a push to another branch, and a tag, run nothing.
    let mut to_dev = push.clone();
    to_dev["ref"] = json!("refs/heads/dev");
    let filtered = hooks
        .github("/hooks/github", "push", "push-4", &to_dev, Some(SECRET))
        .expect(200);
    assert!(
        filtered["message"]
            .as_str()
            .unwrap()
            .contains("branch `dev` matches none of the trigger's branches: master"),
        "{filtered}"
    );
    let tag = example("push", |x| {
        x["ref"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refs/tags/")
            && x["deleted"] == false
    });
    let filtered = hooks
        .github("/hooks/github", "push", "push-5", &tag, Some(SECRET))
        .expect(200);
    assert!(
        filtered["message"]
            .as_str()
            .unwrap()
            .contains("a push to tag `simple-tag` names no branch"),
        "{filtered}"
    );
    // An event the trigger does not take.
    let filtered = hooks
        .github(
            "/hooks/github",
            "issues",
            "issue-1",
            &json!({"action": "opened"}),
            Some(SECRET),
        )
        .expect(200);
    assert!(
        filtered["message"]
            .as_str()
            .unwrap()
            .contains("event `issues` is not one of the trigger's events"),
        "{filtered}"
    );

    // Over 25 MB: 413, JSON, at once from the declared length (nothing of the body is read).
    let (status, answer) = headers_only(
        dir,
        "/hooks/github",
        &[
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "big-1"),
            ("Content-Type", "application/json"),
            ("Content-Length", &(26u64 << 20).to_string()),
        ],
    );
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "payload_too_large", "{answer}");
    // No trigger on the path: 404; the git source's own webhook keeps its route.
    let unknown = hooks
        .github("/hooks/nothing/here", "push", "x", &push, Some(SECRET))
        .expect(404);
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no trigger listens on /hooks/nothing/here"),
        "{unknown}"
    );
    let source = hooks
        .github("/hooks/source", "push", "x", &push, Some(SECRET))
        .expect(404);
    assert!(
        source["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not a git repository"),
        "{source}"
    );
    assert_eq!(hooks.runs_of("wf_build"), 2);

    // Every delivery is recorded, newest first.
    let listed = hooks.deliveries("trg_github");
    let results: Vec<(String, String)> = listed["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["delivery"].as_str().unwrap().to_owned(),
                d["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected = [
        ("issue-1", "filtered"),
        ("push-5", "filtered"),
        ("push-4", "filtered"),
        ("pr-2", "filtered"),
        ("pr-1", "accepted"),
        ("ping-1", "ping"),
        ("push-3b", "rejected"),
        ("push-3", "rejected"),
        ("push-2", "rejected"),
        ("push-1", "duplicate"),
        ("push-1", "accepted"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(results, expected, "{listed:#}");
    assert_eq!(listed["total"], 11);
    assert_eq!(listed["deliveries"][10]["run_id"], run.as_str());
    let trigger = hooks.get("/api/triggers/trg_github");
    assert_eq!(trigger["secret"], true);
    assert!(!trigger.to_string().contains("secrets/github"), "{trigger}");
    // Every request to /hooks/ is counted, whatever became of it.
    let metrics = hooks.text("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "orchestrator_webhook_deliveries_total 14"),
        "{metrics}"
    );
    // The answers are the ones the OpenAPI document describes.
    let document = hooks.get("/api/openapi.json");
    conforms(&document, "/api/triggers/{id}/deliveries", &listed);
    conforms(&document, "/api/triggers", &hooks.get("/api/triggers"));

    // The CLI goes through the server.
    let shown = cli(
        dir,
        &["trigger", "deliveries", "trg_github", "--limit", "100"],
    )
    .expect_code(0);
    for word in [
        "push-1",
        "accepted",
        "duplicate",
        "rejected",
        "filtered",
        "ping",
        &run,
    ] {
        assert!(shown.stdout.contains(word), "{word}: {}", shown.stdout);
    }

    // After a restart the delivery is still known: GitHub's redelivery runs nothing.
    drop(server);
    let offline = cli(
        dir,
        &["trigger", "deliveries", "trg_github", "--limit", "100"],
    )
    .expect_code(0);
    assert_eq!(offline.stdout, shown.stdout, "the same without a server");
    let _server = Server::start(dir);
    let hooks = Sender::new(dir);
    let again = hooks
        .github("/hooks/github", "push", "push-1", &push, Some(SECRET))
        .expect(200);
    assert_eq!(again["status"], "duplicate", "{again}");
    assert_eq!(again["runs"][0]["run_id"], run.as_str());
    assert_eq!(hooks.runs_of("wf_build"), 2);
    // A new delivery of the same payload runs.
    hooks
        .github("/hooks/github", "push", "push-6", &push, Some(SECRET))
        .expect(202);
    assert_eq!(hooks.runs_of("wf_build"), 3);
}

#[test]
fn trigger_create_writes_the_manifest_and_it_works_end_to_end() {
    let dir = project(&[("workflows/build.yaml", BUILD), ("secrets/ci", "ci-secret")]);
    let dir = dir.path();
    let server = Server::start(dir);
    let created = create_webhook(
        dir,
        "/hooks/ci",
        "wf_build",
        &[
            "--events",
            "push,pull_request",
            "--secret",
            "file:secrets/ci",
            "--branches",
            "master,release/*",
        ],
    )
    .expect_code(0);
    assert!(
        created
            .stdout
            .contains("created trigger trg_ci-wf_build in triggers/ci-wf_build.yaml"),
        "{}",
        created.stdout
    );
    let manifest = std::fs::read_to_string(dir.join("triggers/ci-wf_build.yaml")).unwrap();
    for line in [
        "path: /hooks/ci",
        "provider: github",
        "workflow: wf_build",
        "secret: file:secrets/ci",
        "- release/*",
        "- pull_request",
    ] {
        assert!(manifest.contains(line), "{line}:\n{manifest}");
    }
    let hooks = Sender::new(dir);
    let accepted = hooks
        .github(
            "/hooks/ci",
            "push",
            "ci-1",
            &push_to_master(),
            Some("ci-secret"),
        )
        .expect(202);
    let run = accepted["runs"][0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(hooks.wait_finished(&run)["run"]["status"], "succeeded");

    let listed = cli(dir, &["trigger", "list"]).expect_code(0);
    let line = listed
        .stdout
        .lines()
        .find(|l| l.starts_with("trg_ci-wf_build "))
        .unwrap_or_else(|| panic!("{}", listed.stdout));
    for word in [
        "/hooks/ci",
        "github",
        "wf_build",
        "push,pull_request",
        "master,release/*",
        "signed",
    ] {
        assert!(line.contains(word), "{word}: {line}");
    }
    let json_list = cli(dir, &["trigger", "list", "-o", "json"]).expect_code(0);
    let triggers: Value = serde_json::from_str(&json_list.stdout).unwrap();
    let ci = triggers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == "trg_ci-wf_build")
        .unwrap();
    assert_eq!(ci["secret"], true);
    assert!(
        !json_list.stdout.contains("secrets/ci"),
        "never the secret's reference"
    );
    let shown = cli(dir, &["trigger", "show", "trg_ci-wf_build"]).expect_code(0);
    assert!(
        shown
            .stdout
            .contains("trg_ci-wf_build (ci wf_build)  from triggers/ci-wf_build.yaml"),
        "{}",
        shown.stdout
    );
    assert!(shown.stdout.contains(&run), "{}", shown.stdout);
    let deliveries = cli(dir, &["trigger", "deliveries", "trg_ci-wf_build"]).expect_code(0);
    let row = deliveries
        .stdout
        .lines()
        .find(|l| l.starts_with("ci-1 "))
        .unwrap_or_else(|| panic!("{}", deliveries.stdout));
    for word in ["push", "accepted", &run] {
        assert!(row.contains(word), "{word}: {row}");
    }
    assert!(
        deliveries.stdout.starts_with("DELIVERY  EVENT  RESULT"),
        "{}",
        deliveries.stdout
    );

    // A secret given inline is refused before anything is written.
    let refused =
        create_webhook(dir, "/hooks/inline", "wf_build", &["--secret", "hunter2"]).expect_code(2);
    assert!(
        refused.stderr.contains("env:NAME or file:PATH"),
        "{}",
        refused.stderr
    );
    assert!(!dir.join("triggers/inline-wf_build.yaml").exists());
    // An unknown workflow is reported and nothing stays behind.
    let invalid = create_webhook(dir, "/hooks/bad", "wf_nope", &[]).expect_code(1);
    assert!(
        invalid.stderr.contains("unknown workflow `wf_nope`"),
        "{}",
        invalid.stderr
    );
    assert!(!dir.join("triggers/bad-wf_nope.yaml").exists());

    // Without a server: a second trigger on the same path, with no secret (it must say
    // so). Both run.
    drop(server);
    create_webhook(
        dir,
        "/hooks/ci",
        "wf_build",
        &["--name", "CI open", "--events", "push", "--insecure"],
    )
    .expect_code(0);
    let offline = cli(dir, &["trigger", "deliveries", "trg_ci-wf_build"]).expect_code(0);
    assert!(offline.stdout.contains(&run), "{}", offline.stdout);
    let _server = Server::start(dir);
    let hooks = Sender::new(dir);
    let accepted = hooks
        .github(
            "/hooks/ci",
            "push",
            "ci-2",
            &push_to_master(),
            Some("ci-secret"),
        )
        .expect(202);
    let mut triggers: Vec<&str> = accepted["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trigger"].as_str().unwrap())
        .collect();
    triggers.sort();
    assert_eq!(triggers, ["trg_ci-open", "trg_ci-wf_build"], "{accepted}");
    // Unsigned: only the trigger without a secret runs; the other says why it did not.
    let accepted = hooks
        .github("/hooks/ci", "push", "ci-3", &push_to_master(), None)
        .expect(202);
    assert_eq!(accepted["runs"].as_array().unwrap().len(), 1, "{accepted}");
    assert_eq!(accepted["runs"][0]["trigger"], "trg_ci-open");
    assert_eq!(accepted["skipped"][0]["trigger"], "trg_ci-wf_build");
    assert_eq!(accepted["skipped"][0]["result"], "rejected");
}

#[test]
fn trigger_create_refuses_in_git_source_mode() {
    let dir = project(&[("workflows/build.yaml", BUILD)]);
    let dir = dir.path();
    let config = dir.join("config/development.yaml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("source:\n  git:\n    url: https://github.com/example/tests.git\n");
    std::fs::write(&config, text).unwrap();
    let refused = create_webhook(dir, "/hooks/ci", "wf_build", &[]).expect_code(2);
    assert!(
        refused.stderr.contains("git-source mode"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("commit triggers/ci-wf_build.yaml"),
        "{}",
        refused.stderr
    );
    assert!(!dir.join("triggers/ci-wf_build.yaml").exists());
}

#[test]
fn generic_senders_sign_with_their_own_header_or_a_bearer_token() {
    let token_trigger = r#"name: Generic token
path: /hooks/generic
provider: generic
workflow: wf_build
auth: bearer
secret: file:secrets/token
event_header: X-Event
delivery_header: X-Delivery
events: [deploy]
parameters:
  commit: "{{ payload.sha }}"
"#;
    let hmac_trigger = r#"name: Generic hmac
path: /hooks/generic
provider: generic
workflow: wf_build
secret: file:secrets/hmac
signature_header: X-Signature
branches: [main]
"#;
    let dir = project(&[
        ("workflows/build.yaml", BUILD),
        ("triggers/generic-token.yaml", token_trigger),
        ("triggers/generic-hmac.yaml", hmac_trigger),
        (
            "triggers/refused.yaml",
            "name: Refused\npath: /hooks/refused\nprovider: generic\nworkflow: wf_build\ninsecure: true\ndelivery_header: X-Delivery\nparameters:\n  pr: \"{{ payload.sha }}\"\n",
        ),
        ("secrets/token", "tok-123\n"),
        ("secrets/hmac", "hmac-456"),
    ]);
    let dir = dir.path();
    // Webhooks take up to 25 MB, whatever the API's own limit.
    edit_config(
        dir,
        "  port: 8080\n",
        "  port: 8080\n  max_body_bytes: 1024\n",
    );
    let _server = Server::start(dir);
    let hooks = Sender::new(dir);
    let body = format!(
        r#"{{"sha": "abc123", "branch": "main", "padding": "{}"}}"#,
        "x".repeat(4096)
    );
    let body = body.as_bytes();
    let limited = hooks.post("/api/apply", &[], body);
    assert_eq!(limited.status, 413, "{:?}", limited.text);

    // The bearer token: that trigger runs, the HMAC one refuses.
    let accepted = hooks
        .post(
            "/hooks/generic",
            &[
                ("Authorization", "Bearer tok-123"),
                ("X-Event", "deploy"),
                ("X-Delivery", "g-1"),
            ],
            body,
        )
        .expect(202);
    assert_eq!(
        accepted["runs"][0]["trigger"], "trg_generic-token",
        "{accepted}"
    );
    assert_eq!(accepted["skipped"][0]["trigger"], "trg_generic-hmac");
    assert_eq!(accepted["skipped"][0]["result"], "rejected");
    let run = accepted["runs"][0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        hooks.wait_finished(&run)["run"]["parameters"]["commit"],
        "abc123"
    );
    // The same delivery id again: a duplicate.
    let again = hooks
        .post(
            "/hooks/generic",
            &[
                ("Authorization", "Bearer tok-123"),
                ("X-Event", "deploy"),
                ("X-Delivery", "g-1"),
            ],
            body,
        )
        .expect(200);
    assert_eq!(again["status"], "duplicate", "{again}");
    // Another event is filtered out by the token trigger.
    let other = hooks
        .post(
            "/hooks/generic",
            &[("Authorization", "Bearer tok-123"), ("X-Event", "build")],
            body,
        )
        .expect(200);
    assert_eq!(other["status"], "filtered", "{other}");

    // The HMAC in the trigger's own header, hex without `sha256=`.
    let signature = sign("hmac-456", body);
    let accepted = hooks
        .post(
            "/hooks/generic",
            &[("X-Signature", signature.trim_start_matches("sha256="))],
            body,
        )
        .expect(202);
    assert_eq!(
        accepted["runs"][0]["trigger"], "trg_generic-hmac",
        "{accepted}"
    );
    // Neither: 401.
    let refused = hooks
        .post("/hooks/generic", &[("Authorization", "Bearer wrong")], body)
        .expect(401);
    assert_eq!(refused["error"]["code"], "unauthorized", "{refused}");
    assert_eq!(hooks.runs_of("wf_build"), 2);

    // A run the workflow refuses (a value of the wrong type, known only from the delivery;
    // an undeclared parameter is refused by validate already): 422 with the reason;
    // the delivery id is not kept, so a redelivery after the fix may run.
    for _ in 0..2 {
        let refused = hooks
            .post("/hooks/refused", &[("X-Delivery", "r-1")], body)
            .expect(422);
        assert_eq!(refused["error"]["code"], "invalid", "{refused}");
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("parameter `pr` must be an integer"),
            "{refused}"
        );
    }
    let listed = hooks.deliveries("trg_refused");
    assert_eq!(listed["total"], 2, "{listed:#}");
    assert_eq!(listed["deliveries"][0]["result"], "error");
    assert_eq!(hooks.runs_of("wf_build"), 2);
}

#[test]
fn a_burst_of_deliveries_runs_every_one_and_keeps_the_history_at_its_limit() {
    let workflow = "name: Quick\nhistory_limit: 5\nsteps:\n  - name: t\n    command: [\"true\"]\n";
    let trigger =
        "name: Burst\npath: /hooks/burst\nworkflow: wf_quick\nevents: [push]\ninsecure: true\n";
    let dir = project(&[
        ("workflows/quick.yaml", workflow),
        ("triggers/burst.yaml", trigger),
    ]);
    let dir = dir.path();
    let _server = Server::start(dir);
    let push = push_to_master();
    let accepted: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let push = &push;
                scope.spawn(move || {
                    let hooks = Sender::new(dir);
                    (0..5)
                        .map(|n| {
                            let answer = hooks
                                .github(
                                    "/hooks/burst",
                                    "push",
                                    &format!("b-{worker}-{n}"),
                                    push,
                                    None,
                                )
                                .expect(202);
                            answer["runs"][0]["run_id"].as_str().unwrap().to_owned()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(accepted.len(), 40);
    let hooks = Sender::new(dir);
    eventually("every run to finish", || {
        let metrics = hooks.text("/metrics");
        metrics
            .lines()
            .any(|l| l == "orchestrator_runs_finished_total{status=\"succeeded\"} 40")
            .then_some(())
    });
    let listed = hooks.get("/api/runs?workflow=wf_quick&limit=100");
    assert_eq!(listed["total"], 5, "{listed:#}");
    let deliveries = hooks.deliveries("trg_burst");
    assert_eq!(deliveries["total"], 40);
}
