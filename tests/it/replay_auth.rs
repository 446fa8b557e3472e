//! Replay and authentication: one signed webhook delivery sent 1,000 times (much of it at
//! once) starts one run and every copy is answered as a duplicate; with an API token
//! configured, every route that changes something (read from `/api/openapi.json`, so a
//! new route cannot be forgotten) and `/ws` answer 401 to a missing, wrong or malformed
//! token, and nothing changes; webhook signatures that do not verify are 401 and run
//! nothing, however they are wrong.

use std::path::Path;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{
    assert_error_shape, eventually, get_json, project, project_files, raw_request, server_address,
    sign, Reply, Server,
};

/// [`get_json`] with `Authorization: Bearer <token>`.
fn get_json_as(address: &str, path: &str, token: &str) -> Value {
    let bearer = format!("Bearer {token}");
    raw_request(address, "GET", path, &[("Authorization", &bearer)], b"").json(200)
}

/// A workflow of one step that does nothing.
const WORK: &str = "name: Work\nsteps:\n  - name: one\n    command: [\"true\"]\n";

const SECRET: &str = "replay-secret-0123456789";

/// A GitHub trigger with a secret; `extra` adds lines (such as `history_limit`).
fn github_trigger(extra: &str) -> String {
    format!(
        "name: Replay\ntype: webhook\npath: /hooks/replay\nprovider: github\nworkflow: wf_work\nevents: [push]\nsecret: file:secrets/replay\n{extra}"
    )
}

/// The push every replay test sends.
fn push_body() -> Vec<u8> {
    let path = crate::support::repo_dir().join("tests/fixtures/replay_auth/push.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // Re-serialised compactly: what is signed is exactly what is sent.
    let value: Value = serde_json::from_slice(&text).unwrap();
    serde_json::to_vec(&value).unwrap()
}

/// Sends a signed delivery with the id `delivery`.
fn deliver(address: &str, delivery: &str, body: &[u8], signature: Option<&str>) -> Reply {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", delivery),
    ];
    if let Some(signature) = signature {
        headers.push(("X-Hub-Signature-256", signature));
    }
    raw_request(address, "POST", "/hooks/replay", &headers, body)
}

/// The runs of a workflow, as the API counts them.
fn runs_of(address: &str, workflow: &str) -> u64 {
    get_json(
        address,
        &format!("/api/runs?workflow={workflow}&limit=1000"),
    )["total"]
        .as_u64()
        .unwrap()
}

/// How many of a trigger's recorded deliveries have each result.
fn delivery_results(address: &str, trigger: &str) -> std::collections::BTreeMap<String, u64> {
    let listed = get_json(
        address,
        &format!("/api/triggers/{trigger}/deliveries?limit=100000"),
    );
    let mut counts = std::collections::BTreeMap::new();
    for record in listed["deliveries"].as_array().unwrap() {
        *counts
            .entry(record["result"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    counts
}

/// Sends the same signed delivery `total` times from `threads` threads at once; returns
/// each answer's status and body.
fn replay(
    address: &str,
    delivery: &str,
    body: &[u8],
    total: usize,
    threads: usize,
) -> Vec<(u16, Value)> {
    let signature = sign(SECRET, body);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let signature = &signature;
                scope.spawn(move || {
                    (worker..total)
                        .step_by(threads)
                        .map(|_| {
                            let answer = deliver(address, delivery, body, Some(signature));
                            let value: Value = serde_json::from_str(&answer.text)
                                .unwrap_or_else(|e| panic!("{e}: {answer:#?}"));
                            (answer.status, value)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    })
}

/// Checks that exactly one answer accepted the delivery and every other one called it a
/// duplicate (naming that run once it is known); returns the run id.
#[track_caller]
fn one_accepted_rest_duplicates(answers: &[(u16, Value)], delivery: &str) -> String {
    let accepted: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 202)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(accepted.len(), 1, "accepted more than once: {accepted:#?}");
    assert_eq!(accepted[0]["status"], "accepted", "{:#}", accepted[0]);
    assert_eq!(accepted[0]["delivery"], delivery, "{:#}", accepted[0]);
    let run = accepted[0]["runs"][0]["run_id"]
        .as_str()
        .expect("the run id")
        .to_owned();
    for (status, body) in answers.iter().filter(|(status, _)| *status != 202) {
        assert_eq!(*status, 200, "{body:#}");
        assert_eq!(body["status"], "duplicate", "{body:#}");
        assert_eq!(body["delivery"], delivery, "{body:#}");
        // A copy racing the first may find the claim before the run is named.
        let named = &body["runs"][0]["run_id"];
        assert!(named.is_null() || *named == run.as_str(), "{body:#}");
    }
    run
}

#[test]
fn one_delivery_sent_a_thousand_times_starts_one_run() {
    let dir = project(&[
        ("workflows/work.yaml", WORK),
        ("triggers/replay.yaml", &github_trigger("")),
        ("secrets/replay", SECRET),
    ]);
    let dir = dir.path();
    let _server = Server::start(dir);
    let address = server_address(dir);
    let body = push_body();

    // 1,000 copies, 8 senders at once from the first one.
    let answers = replay(&address, "dlv-1000", &body, 1000, 8);
    assert_eq!(answers.len(), 1000);
    let run = one_accepted_rest_duplicates(&answers, "dlv-1000");
    // Every copy is recorded (the history holds 1,000): one accepted, the rest duplicates.
    let results = delivery_results(&address, "trg_replay");
    assert_eq!(results.get("accepted"), Some(&1), "{results:?}");
    assert_eq!(results.get("duplicate"), Some(&999), "{results:?}");
    assert_eq!(results.len(), 2, "{results:?}");

    // A few more afterwards: duplicates naming the one run (the history now holds 1,000
    // records of this id, and the replays must not push the original out).
    for _ in 0..3 {
        let answer = deliver(&address, "dlv-1000", &body, Some(&sign(SECRET, &body)));
        let again = answer.json(200);
        assert_eq!(again["status"], "duplicate", "{again:#}");
        assert_eq!(again["runs"][0]["run_id"], run.as_str(), "{again:#}");
    }
    assert_eq!(runs_of(&address, "wf_work"), 1);
    let shown = get_json(&address, &format!("/api/runs/{run}"));
    assert_eq!(shown["run"]["trigger"]["details"]["delivery"], "dlv-1000");
    // The run itself went through.
    eventually("the run to finish", || {
        let shown = get_json(&address, &format!("/api/runs/{run}"));
        (shown["run"]["status"] == "succeeded").then_some(())
    });
}

#[test]
fn replays_beyond_the_history_limit_do_not_make_a_delivery_new_again() {
    // The history keeps 5 records; 300 copies of one delivery (and their records) must
    // not push its claim out, or the copy after that would run again.
    let dir = project(&[
        ("workflows/work.yaml", WORK),
        (
            "triggers/replay.yaml",
            &github_trigger("history_limit: 5\n"),
        ),
        ("secrets/replay", SECRET),
    ]);
    let dir = dir.path();
    let _server = Server::start(dir);
    let address = server_address(dir);
    let body = push_body();

    let answers = replay(&address, "dlv-limit", &body, 300, 4);
    let run = one_accepted_rest_duplicates(&answers, "dlv-limit");
    let again = deliver(&address, "dlv-limit", &body, Some(&sign(SECRET, &body))).json(200);
    assert_eq!(again["status"], "duplicate", "{again:#}");
    assert_eq!(runs_of(&address, "wf_work"), 1, "ran again: {run}");
    // Other deliveries are still new, and the history is kept near its limit.
    let other = deliver(&address, "dlv-other", &body, Some(&sign(SECRET, &body))).json(202);
    assert_eq!(other["status"], "accepted", "{other:#}");
    assert_eq!(runs_of(&address, "wf_work"), 2);
}

const TOKEN: &str = "api-token-9f8e7d6c5b4a";

/// Every operation of the OpenAPI document that is not a GET: (method, path template).
fn mutating_operations(address: &str) -> Vec<(String, String)> {
    let document = get_json_as(address, "/api/openapi.json", TOKEN);
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            if ["POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                operations.push((method, path.clone()));
            }
        }
    }
    operations
}

/// What an unauthorised request could have changed: runs, agents switched on or off,
/// paused schedules, silences, objects in force, and the project's files.
/// (Read with the API token, which the server of that test has.)
fn observable_state(address: &str, dir: &Path) -> Value {
    let runs = get_json_as(address, "/api/runs?limit=1000", TOKEN);
    let agents = get_json_as(address, "/api/agents", TOKEN);
    let jobs = get_json_as(address, "/api/scheduler/jobs", TOKEN);
    let silences = get_json_as(address, "/api/silences", TOKEN);
    let manifests = get_json_as(address, "/api/manifests", TOKEN);
    let pick = |list: &Value, key: &str, fields: &[&str]| -> Value {
        list[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                fields
                    .iter()
                    .map(|f| item[*f].clone())
                    .collect::<Vec<_>>()
                    .into()
            })
            .collect::<Vec<Value>>()
            .into()
    };
    json!({
        "runs": pick(&runs, "runs", &["id", "status"]),
        "agents": pick(&agents, "agents", &["name", "enabled"]),
        "jobs": pick(&jobs, "jobs", &["id", "paused", "status"]),
        "silences": silences,
        "objects": pick(&manifests, "objects", &["kind", "id", "name", "status", "generation", "source_file"]),
        "files": project_files(dir),
    })
}

/// The concrete path of an operation: real ids where the route takes one, so that an
/// answer other than 401 would really act.
fn concrete(path: &str, run: &str) -> String {
    path.replace("/api/workflows/{id}", "/api/workflows/wf_work")
        .replace("/api/runs/{id}", &format!("/api/runs/{run}"))
        .replace("{name}", "shell")
        .replace(
            "/api/scheduler/jobs/{id}",
            "/api/scheduler/jobs/sch_nightly-api-tests",
        )
        .replace("/api/silences/{id}", "/api/silences/sil_none")
        .replace("/hooks/{path}", "/hooks/open")
}

/// A body the route would act on.
fn body_for(path: &str) -> String {
    match path {
        "/api/manifests" | "/api/validate" => json!({"kind": "Workflow", "manifest": {
            "name": "Intruder", "steps": [{"name": "a", "command": ["touch", "intruded"]}]}})
        .to_string(),
        "/api/scheduler/jobs" => json!({"name": "Intruder", "schedule": "* * * * *",
            "workflow_id": "wf_work"})
        .to_string(),
        "/api/silences" => json!({"labels": {"severity": "critical"}, "duration": "1h",
            "comment": "intruder"})
        .to_string(),
        "/api/workflows/{id}/execute" => "{\"parameters\": {}}".to_owned(),
        "/hooks/{path}" => "{\"ref\": \"refs/heads/main\"}".to_owned(),
        _ => "{}".to_owned(),
    }
}

#[test]
fn every_mutating_route_and_the_event_stream_need_the_api_token() {
    let open =
        "name: Open\ntype: webhook\npath: /hooks/open\nprovider: generic\nworkflow: wf_work\ninsecure: true\n";
    let dir = project(&[("workflows/work.yaml", WORK), ("triggers/open.yaml", open)]);
    let dir = dir.path();
    let _server = Server::start_with(
        dir,
        &[
            ("ORCHESTRATOR_API_TOKEN", "env:TEST_API_TOKEN"),
            ("TEST_API_TOKEN", TOKEN),
        ],
    );
    let address = server_address(dir);
    let bearer = format!("Bearer {TOKEN}");

    // One finished run, so that cancel and rerun have a real run to act on.
    let started = raw_request(
        &address,
        "POST",
        "/api/workflows/wf_work/execute",
        &[
            ("Authorization", &bearer),
            ("Content-Type", "application/json"),
        ],
        b"",
    )
    .json(202);
    let run = started["run_id"].as_str().unwrap().to_owned();
    eventually("the run to finish", || {
        let shown = get_json_as(&address, &format!("/api/runs/{run}"), TOKEN);
        (shown["run"]["status"] == "succeeded").then_some(())
    });

    let operations = mutating_operations(&address);
    // The document lists the routes api::routes() has; these must be among them.
    for expected in [
        ("POST", "/api/workflows/{id}/execute"),
        ("POST", "/api/runs/{id}/cancel"),
        ("POST", "/api/manifests"),
        ("POST", "/api/sync"),
        ("DELETE", "/api/silences/{id}"),
        ("POST", "/hooks/source"),
        ("POST", "/hooks/{path}"),
    ] {
        assert!(
            operations
                .iter()
                .any(|(m, p)| m == expected.0 && p == expected.1),
            "{expected:?} not in {operations:?}"
        );
    }
    // ... and exactly the routes of `api::routes()` that are not GET.
    let mut listed: Vec<(String, String)> = orchestrator::api::routes()
        .into_iter()
        .filter(|(method, _)| *method != "GET")
        .map(|(method, path)| (method.to_owned(), path))
        .collect();
    listed.sort();
    let mut documented = operations.clone();
    documented.sort();
    assert_eq!(documented, listed);

    let truncated = &TOKEN[..TOKEN.len() - 1];
    let longer = format!("Bearer {TOKEN}x");
    let wrong = "Bearer not-the-token".to_owned();
    let basic = "Basic YWRtaW46YXBpLXRva2Vu".to_owned();
    let no_space = format!("Bearer{TOKEN}");
    let other_scheme = format!("Token {TOKEN}");
    let truncated = format!("Bearer {truncated}");
    let empty = "Bearer ".to_owned();
    let credentials: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no Authorization header", vec![]),
        ("a wrong token", vec![("Authorization", &wrong)]),
        (
            "the token with a byte more",
            vec![("Authorization", &longer)],
        ),
        (
            "the token less its last byte",
            vec![("Authorization", &truncated)],
        ),
        ("an empty bearer token", vec![("Authorization", &empty)]),
        ("Basic credentials", vec![("Authorization", &basic)]),
        ("no space after Bearer", vec![("Authorization", &no_space)]),
        ("another scheme", vec![("Authorization", &other_scheme)]),
        ("the token in another header", vec![("X-Api-Token", TOKEN)]),
    ];

    let before = observable_state(&address, dir);
    let mut checked = 0;
    for (method, template) in &operations {
        let path = concrete(template, &run);
        let body = body_for(template);
        for (what, headers) in &credentials {
            let mut headers = headers.clone();
            headers.push(("Content-Type", "application/json"));
            let answer = raw_request(&address, method, &path, &headers, body.as_bytes());
            assert_eq!(
                answer.status, 401,
                "{method} {path} with {what}: {answer:#?}"
            );
            answer.error(401, "unauthorized");
            checked += 1;
        }
        // A query-string token counts only for /ws.
        let answer = raw_request(
            &address,
            method,
            &format!("{path}?token={TOKEN}"),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(answer.status, 401, "{method} {path}?token=: {answer:#?}");
        answer.error(401, "unauthorized");
        checked += 1;
    }
    assert_eq!(checked, operations.len() * (credentials.len() + 1));
    // Nothing changed: no run, no agent switched, no schedule paused, no silence, no file.
    assert_eq!(observable_state(&address, dir), before);
    assert!(!dir.join("intruded").exists());
    assert!(!dir.join("workflows/intruder.yaml").exists());

    // The event stream: refused at the upgrade without the token, in every way.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let attempts: Vec<(&str, String, Option<&str>)> = vec![
            ("no token", format!("ws://{address}/ws"), None),
            (
                "a wrong header",
                format!("ws://{address}/ws"),
                Some(wrong.as_str()),
            ),
            (
                "Basic credentials",
                format!("ws://{address}/ws"),
                Some(basic.as_str()),
            ),
            (
                "a truncated token",
                format!("ws://{address}/ws"),
                Some(truncated.as_str()),
            ),
            (
                "a wrong query token",
                format!("ws://{address}/ws?token=guess"),
                None,
            ),
            (
                "an empty query token",
                format!("ws://{address}/ws?token="),
                None,
            ),
        ];
        for (what, url, header) in attempts {
            let mut request = url.into_client_request().unwrap();
            if let Some(header) = header {
                request
                    .headers_mut()
                    .insert("Authorization", header.parse().unwrap());
            }
            match tokio_tungstenite::connect_async(request).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status().as_u16(), 401, "/ws with {what}");
                    let body: Value =
                        serde_json::from_slice(response.body().as_deref().unwrap_or_default())
                            .unwrap_or_else(|e| panic!("/ws with {what}: {e}"));
                    assert_error_shape(&body, what);
                    assert_eq!(body["error"]["code"], "unauthorized");
                }
                Err(other) => panic!("/ws with {what}: expected a 401, got {other}"),
                Ok(_) => panic!("/ws accepted a client with {what}"),
            }
        }
        // The right token, by header or (browsers) by query: connected.
        let mut request = format!("ws://{address}/ws").into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Authorization", bearer.parse().unwrap());
        tokio_tungstenite::connect_async(request)
            .await
            .expect("/ws with the token");
        tokio_tungstenite::connect_async(format!("ws://{address}/ws?token={TOKEN}"))
            .await
            .expect("/ws with ?token=");
    });

    // With the token every one of those routes gets past the check (whatever it then
    // answers): the routes above were refused for the token alone.
    for (method, template) in &operations {
        let path = concrete(template, &run);
        let body = body_for(template);
        let answer = raw_request(
            &address,
            method,
            &path,
            &[
                ("Authorization", &bearer),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        );
        assert_ne!(
            answer.status, 401,
            "{method} {path} with the token: {answer:#?}"
        );
        assert!(
            answer.status < 500,
            "{method} {path} with the token: {answer:#?}"
        );
    }
}

#[test]
fn webhook_signatures_that_do_not_verify_run_nothing() {
    let bearer_trigger = "name: Bearer\ntype: webhook\npath: /hooks/bearer\nprovider: generic\nauth: bearer\nsecret: env:TEST_BEARER_SECRET\nworkflow: wf_work\n";
    let dir = project(&[
        ("workflows/work.yaml", WORK),
        ("triggers/replay.yaml", &github_trigger("")),
        ("triggers/bearer.yaml", bearer_trigger),
        ("secrets/replay", SECRET),
    ]);
    let dir = dir.path();
    let _server = Server::start_with(dir, &[("TEST_BEARER_SECRET", "bearer-secret")]);
    let address = server_address(dir);
    let body = push_body();
    let good = sign(SECRET, &body);
    let hex = good.strip_prefix("sha256=").unwrap().to_owned();
    let mut other_body = body.clone();
    other_body.extend_from_slice(b"\n");

    let cases: Vec<(&str, Option<String>)> = vec![
        ("no signature", None),
        ("another secret", Some(sign("not the secret", &body))),
        (
            "the signature of another body",
            Some(sign(SECRET, &other_body)),
        ),
        ("the sha1 prefix", Some(format!("sha1={hex}"))),
        ("no prefix", Some(hex.clone())),
        ("an upper-case prefix", Some(format!("SHA256={hex}"))),
        (
            "truncated hex",
            Some(format!("sha256={}", &hex[..hex.len() - 2])),
        ),
        (
            "an odd number of hex digits",
            Some(format!("sha256={}", &hex[..hex.len() - 1])),
        ),
        ("a byte more", Some(format!("{good}00"))),
        ("an empty digest", Some("sha256=".to_owned())),
        ("not hex", Some(format!("sha256={}", "zz".repeat(32)))),
        ("the prefix twice", Some(format!("sha256={good}"))),
    ];
    for (round, (what, signature)) in cases.iter().enumerate() {
        // Every refused delivery uses the same id: none of them may claim it.
        let answer = deliver(&address, "dlv-signed", &body, signature.as_deref());
        let error = answer.error(401, "unauthorized");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("X-Hub-Signature-256"),
            "{what}: {error:#}"
        );
        assert_eq!(runs_of(&address, "wf_work"), 0, "{what}");
        let results = delivery_results(&address, "trg_replay");
        assert_eq!(
            results.get("rejected"),
            Some(&(round as u64 + 1)),
            "{what}: {results:?}"
        );
        assert_eq!(results.len(), 1, "{what}: {results:?}");
    }
    // The signature of the body as sent, in a header GitHub does not use for it.
    let answer = raw_request(
        &address,
        "POST",
        "/hooks/replay",
        &[
            ("Content-Type", "application/json"),
            ("X-GitHub-Event", "push"),
            ("X-GitHub-Delivery", "dlv-signed"),
            ("X-Hub-Signature", &good),
        ],
        &body,
    );
    answer.error(401, "unauthorized");
    // A body changed after signing.
    let answer = deliver(&address, "dlv-signed", &other_body, Some(&good));
    answer.error(401, "unauthorized");
    assert_eq!(runs_of(&address, "wf_work"), 0);

    // The id was never claimed: the properly signed delivery runs.
    let accepted = deliver(&address, "dlv-signed", &body, Some(&good)).json(202);
    assert_eq!(accepted["status"], "accepted", "{accepted:#}");
    assert_eq!(runs_of(&address, "wf_work"), 1);
    // And a bad signature after that is still a 401, not a duplicate.
    deliver(&address, "dlv-signed", &body, Some(&sign("nope", &body))).error(401, "unauthorized");

    // A generic sender with a bearer secret: missing, wrong, malformed.
    for (what, header) in [
        ("none", None),
        ("wrong", Some("Bearer wrong-secret")),
        ("truncated", Some("Bearer bearer-secre")),
        ("another scheme", Some("Basic YmVhcmVyLXNlY3JldA==")),
        ("empty", Some("Bearer ")),
    ] {
        let mut headers = vec![("Content-Type", "application/json"), ("X-Delivery", "b-1")];
        if let Some(header) = header {
            headers.push(("Authorization", header));
        }
        let answer = raw_request(&address, "POST", "/hooks/bearer", &headers, b"{}");
        assert_eq!(answer.status, 401, "{what}: {answer:#?}");
        answer.error(401, "unauthorized");
    }
    assert_eq!(runs_of(&address, "wf_work"), 1);
    let accepted = raw_request(
        &address,
        "POST",
        "/hooks/bearer",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer bearer-secret"),
        ],
        b"{}",
    )
    .json(202);
    assert_eq!(accepted["status"], "accepted", "{accepted:#}");
}
