//! Browsers and foreign hosts can't drive the server, and the API token guards every read:
//! cross-origin requests (a foreign `Origin`, a form's content type, an empty body), DNS
//! rebinding (a foreign `Host`), `/ws` from another origin, a real headless Chromium page of
//! another loopback origin; the token on reads (GET and HEAD), `/metrics` with
//! `server.metrics_auth`, the `bearer` scheme in any case, blank tokens refused at start; the
//! token generated for a non-loopback address, kept in the data directory, used by the local
//! command line and never logged. Each against the real server.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::browser::{runtime, Browser, DESKTOP};
use crate::support::{
    cli, edit_config, eventually, project, project_files, raw_exchange, Api, Reply, Server,
    DEADLINE,
};

/// A workflow whose one step says `ran` and leaves a file behind: that it ran shows.
fn mark(marker: &Path) -> String {
    format!(
        "name: Mark\nsteps:\n  - name: mark\n    command: [\"sh\", \"-c\", \"echo ran; touch '{}'\"]\n",
        marker.display()
    )
}

/// A trigger (with a secret), so that its deliveries can be listed.
const PUSH: &str = "name: Push\ntype: webhook\npath: /hooks/push\nprovider: generic\nsecret: env:TEST_HOOK_SECRET\nworkflow: wf_mark\n";

/// A project with [`mark`] (its marker `marker-ran` in the project) and [`PUSH`].
fn marked_project() -> tempfile::TempDir {
    let project = project(&[("triggers/push.yaml", PUSH)]);
    let workflow = mark(&project.path().join("marker-ran"));
    std::fs::write(project.path().join("workflows/mark.yaml"), workflow).unwrap();
    project
}

/// One request with `Host: <address>` and the given headers.
fn call(address: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    raw_exchange(address, &head, body.as_bytes())
}

/// The number of runs, asked with `token` when given.
fn runs(address: &str, token: Option<&str>) -> u64 {
    Api::new(address, token)
        .get("/api/runs?limit=1000")
        .expect(200)["total"]
        .as_u64()
        .expect("a total")
}

/// What a request that got through could have changed: runs, agents, schedules, silences,
/// the objects in force and the project's files.
fn observable(address: &str, dir: &Path) -> Value {
    let api = Api::new(address, None);
    let mut state = json!({"files": project_files(dir)});
    for (name, path) in [
        ("runs", "/api/runs?limit=1000"),
        ("agents", "/api/agents"),
        ("jobs", "/api/scheduler/jobs"),
        ("silences", "/api/silences"),
        ("manifests", "/api/manifests"),
    ] {
        let mut value = api.get(path).expect(200);
        // Figures that move on their own (health checks, next fire times) are left out.
        for list in ["agents", "jobs"] {
            if let Some(items) = value[list].as_array_mut() {
                for item in items {
                    let keep = ["id", "name", "enabled", "paused"];
                    item.as_object_mut()
                        .unwrap()
                        .retain(|k, _| keep.contains(&k.as_str()));
                }
            }
        }
        state[name] = value;
    }
    state
}

/// Every operation of the OpenAPI document that changes something, outside `/hooks/`, with
/// concrete paths (real ids where they exist, so that an answer getting through would act).
fn state_changing_routes(api: &Api, run: &str) -> Vec<(String, String)> {
    let document = api.get("/api/openapi.json").expect(200);
    let mut routes = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        if path.starts_with("/hooks/") {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            if ["POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                let concrete = path
                    .replace("/api/workflows/{id}", "/api/workflows/wf_mark")
                    .replace("/api/runs/{id}", &format!("/api/runs/{run}"))
                    .replace("{name}", "shell")
                    .replace(
                        "/api/scheduler/jobs/{id}",
                        "/api/scheduler/jobs/sch_nightly-api-tests",
                    )
                    .replace("{id}", "nope");
                routes.push((method, concrete));
            }
        }
    }
    assert!(routes.len() >= 15, "{routes:?}");
    routes
}

/// A body each route would act on.
fn body_for(path: &str) -> String {
    match path {
        "/api/manifests" | "/api/validate" => json!({"kind": "Workflow", "manifest": {
            "name": "Intruder", "steps": [{"name": "a", "command": ["touch", "intruded"]}]}})
        .to_string(),
        "/api/scheduler/jobs" => json!({"name": "Intruder", "schedule": "* * * * *",
            "workflow_id": "wf_mark"})
        .to_string(),
        "/api/silences" => json!({"labels": {"severity": "critical"}, "duration": "1h",
            "comment": "intruder"})
        .to_string(),
        _ => String::new(),
    }
}

#[test]
fn cross_origin_requests_and_foreign_hosts_change_nothing() {
    let project = marked_project();
    let dir = project.path();
    let server = Server::start_with(dir, &[("TEST_HOOK_SECRET", "hook-secret")]);
    let address = server.address.clone();
    let port = address.rsplit(':').next().unwrap().to_owned();
    let api = server.api();
    let execute = "/api/workflows/wf_mark/execute";

    // The reproduction: a page's `fetch(..., {method: 'POST', mode: 'no-cors'})` or form.
    let evil = [("Origin", "http://evil.example")];
    let form = ("Content-Type", "application/x-www-form-urlencoded");
    let answer = call(&address, "POST", execute, &[evil[0], form], "");
    let error = answer.error(403, "origin_not_allowed");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("http://evil.example"), "{message}");
    assert!(message.contains("server.allowed_origins"), "{message}");
    assert!(
        message.contains(&format!("http://127.0.0.1:{port}")),
        "{message}"
    );
    // Without the Origin (a page cannot leave it out, but a tool can): the content type.
    let error = call(&address, "POST", execute, &[form], "").error(415, "unsupported_media_type");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("application/json"),
        "{error}"
    );
    call(&address, "POST", execute, &[], "").error(415, "unsupported_media_type");
    call(
        &address,
        "POST",
        execute,
        &[("Content-Type", "text/plain")],
        "{}",
    )
    .error(415, "unsupported_media_type");
    call(
        &address,
        "POST",
        execute,
        &[("Origin", "null"), ("Content-Type", "application/json")],
        "",
    )
    .error(403, "origin_not_allowed");
    // A JSON content type does not help a foreign page.
    call(
        &address,
        "POST",
        execute,
        &[evil[0], ("Content-Type", "application/json")],
        "{}",
    )
    .error(403, "origin_not_allowed");
    assert_eq!(runs(&address, None), 0, "a refused request started a run");

    // One real run, so that cancel and rerun have something to act on.
    let run = api.execute("wf_mark", "");
    api.wait_finished(&run);
    assert!(dir.join("marker-ran").exists());
    std::fs::remove_file(dir.join("marker-ran")).unwrap();

    // Every route that changes something: a foreign Origin → 403, no JSON type → 415.
    let routes = state_changing_routes(&api, &run);
    let before = observable(&address, dir);
    for (method, path) in &routes {
        let body = body_for(path);
        let json_type = ("Content-Type", "application/json");
        let here = format!("{method} {path}");
        let answer = call(&address, method, path, &[evil[0], json_type], &body);
        assert_eq!(
            answer.status, 403,
            "{here} from a foreign origin: {answer:#?}"
        );
        answer.error(403, "origin_not_allowed");
        for headers in [vec![], vec![form], vec![("Content-Type", "text/plain")]] {
            let answer = call(&address, method, path, &headers, &body);
            assert_eq!(answer.status, 415, "{here} with {headers:?}: {answer:#?}");
            answer.error(415, "unsupported_media_type");
        }
        // DNS rebinding: the page's own name for this address.
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\nContent-Type: application/json\r\n"
        );
        let answer = raw_exchange(&address, &head, body.as_bytes());
        assert_eq!(
            answer.status, 421,
            "{here} with a foreign Host: {answer:#?}"
        );
        answer.error(421, "host_not_allowed");
    }
    assert_eq!(
        observable(&address, dir),
        before,
        "a refused request changed something"
    );
    assert!(!dir.join("marker-ran").exists());
    assert!(!dir.join("workflows/intruder.yaml").exists());

    // The rebinding reproduction: writing a manifest under a foreign Host, and reads.
    let manifest = body_for("/api/manifests");
    let head = format!(
        "POST /api/manifests HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\nContent-Type: application/json\r\n"
    );
    let error = raw_exchange(&address, &head, manifest.as_bytes()).error(421, "host_not_allowed");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("rebind.attacker.example"), "{message}");
    assert!(message.contains("server.allowed_hosts"), "{message}");
    assert!(!dir.join("workflows/intruder.yaml").exists());
    for path in [
        "/api/status",
        "/api/workflows",
        &format!("/api/runs/{run}"),
        "/api/manifests",
        "/",
        "/metrics",
    ] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: rebind.attacker.example:{port}\r\n");
        raw_exchange(&address, &head, b"").error(421, "host_not_allowed");
    }
    // No Host at all (HTTP/1.0): refused too.
    raw_exchange(&address, "GET /api/status HTTP/1.0\r\n", b"").error(421, "host_not_allowed");
    // The server's own names, with or without the port.
    for host in [
        format!("localhost:{port}"),
        "localhost".into(),
        format!("[::1]:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let head = format!("GET /api/status HTTP/1.1\r\nHost: {host}\r\n");
        raw_exchange(&address, &head, b"").json(200);
    }
    // Probes answer whatever their Host (a pod's IP); webhooks rely on their signatures.
    for path in ["/healthz", "/readyz"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: 10.1.2.3:{port}\r\n");
        assert_eq!(raw_exchange(&address, &head, b"").status, 200, "{path}");
    }
    let head = "POST /hooks/push HTTP/1.1\r\nHost: smee.example\r\nOrigin: https://github.com\r\nContent-Type: text/plain\r\n";
    let answer = raw_exchange(&address, head, b"{}");
    assert!(
        ![403, 415, 421].contains(&answer.status),
        "the guard stopped a webhook: {answer:#?}"
    );
    assert_eq!(runs(&address, None), 1);

    // /ws: refused from a foreign origin, open to the server's own and to tools.
    runtime().block_on(async {
        for origin in [
            "http://evil.example",
            "null",
            &format!("http://localhost:{}", port.parse::<u16>().unwrap() + 1),
        ] {
            let mut request = format!("ws://{address}/ws").into_client_request().unwrap();
            request
                .headers_mut()
                .insert("Origin", origin.parse().unwrap());
            match tokio_tungstenite::connect_async(request).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status().as_u16(), 403, "/ws from {origin}")
                }
                Err(other) => panic!("/ws from {origin}: expected a 403, got {other}"),
                Ok(_) => panic!("/ws accepted a page of {origin}"),
            }
        }
        let mut request = format!("ws://{address}/ws").into_client_request().unwrap();
        request.headers_mut().insert(
            "Origin",
            format!("http://localhost:{port}").parse().unwrap(),
        );
        tokio_tungstenite::connect_async(request)
            .await
            .expect("/ws from the dashboard's own origin");
        crate::support::ws_connect(&address, None).await;
    });

    // The guide's curl examples, as written (no Origin; JSON where there is a body).
    let curl = |args: &[&str]| -> Value {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "30"])
            .args(args)
            .output()
            .expect("run curl");
        assert!(output.status.success(), "curl {args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "curl {args:?}: {e}: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    };
    let base = format!("http://127.0.0.1:{port}");
    let listed = curl(&[&format!("{base}/api/workflows")]);
    assert!(listed["total"].as_u64().unwrap() >= 1, "{listed}");
    let accepted = curl(&[
        "-X",
        "POST",
        &format!("{base}/api/workflows/wf_mark/execute"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"parameters": {}}"#,
    ]);
    assert!(accepted["run_id"].as_str().is_some(), "{accepted}");
    let jobs = curl(&[&format!("{base}/api/scheduler/jobs")]);
    assert!(jobs["jobs"].is_array(), "{jobs}");
    let created = curl(&[
        "-X",
        "POST",
        &format!("{base}/api/scheduler/jobs"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"name": "API Tests", "schedule": "0 2 * * *", "workflow_id": "wf_mark"}"#,
    ]);
    assert!(created.get("error").is_none(), "{created}");
}

/// GET or HEAD `path` with `Authorization: <authorization>` when given: (status, body).
fn read(address: &str, method: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\n");
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    // A HEAD answer has no body whatever its Content-Length says: read what comes.
    let mut stream = TcpStream::connect(address).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(format!("{head}Connection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no answer to {method} {path}: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn with_a_token_every_read_needs_it() {
    const TOKEN: &str = "read-token-0123456789abcdef";
    let project = marked_project();
    let dir = project.path();
    edit_config(
        dir,
        "  port: 8080\n",
        "  port: 8080\n  api_token: env:TEST_TOKEN\n",
    );
    let env = [("TEST_TOKEN", TOKEN), ("TEST_HOOK_SECRET", "hook-secret")];
    let mut server = Server::start_with(dir, &env);
    let address = server.address.clone();
    let api = Api::new(&address, Some(TOKEN));
    let run = api.execute("wf_mark", "");
    api.wait_finished(&run);
    let triggers = api.get("/api/triggers").expect(200);
    let trigger = triggers["triggers"][0]["id"]
        .as_str()
        .expect("a trigger id")
        .to_owned();

    let bearer = format!("Bearer {TOKEN}");
    let lower = format!("bearer {TOKEN}");
    let upper = format!("BEARER {TOKEN}");
    for path in [
        "/api/status".to_owned(),
        format!("/api/runs/{run}"),
        format!("/api/runs/{run}/logs/mark"),
        "/api/manifests".to_owned(),
        format!("/api/triggers/{trigger}/deliveries"),
        "/api/workflows".to_owned(),
        "/api/openapi.json".to_owned(),
        "/api".to_owned(),
    ] {
        for method in ["GET", "HEAD"] {
            let (status, body) = read(&address, method, &path, None);
            assert_eq!(status, 401, "{method} {path} without the token: {body}");
            let (status, _) = read(&address, method, &path, Some("Bearer not-it"));
            assert_eq!(status, 401, "{method} {path} with a wrong token");
            for authorization in [&bearer, &lower, &upper] {
                let (status, body) = read(&address, method, &path, Some(authorization));
                assert_eq!(
                    status, 200,
                    "{method} {path} with `{authorization}`: {body}"
                );
                if method == "HEAD" {
                    assert!(body.is_empty(), "HEAD {path} has a body: {body}");
                }
            }
        }
    }
    let (_, log) = read(
        &address,
        "GET",
        &format!("/api/runs/{run}/logs/mark"),
        Some(&lower),
    );
    assert!(log.contains("ran"), "{log}");
    // Open: health, readiness, the dashboard (it asks for the token), and /metrics.
    for path in ["/healthz", "/readyz", "/", "/assets/app.js", "/metrics"] {
        for method in ["GET", "HEAD"] {
            let (status, body) = read(&address, method, path, None);
            assert_eq!(status, 200, "{method} {path}: {body}");
            if method == "HEAD" {
                assert!(body.is_empty(), "HEAD {path} has a body: {body}");
            }
        }
    }
    // `/ws?token=` empty (or blank) is no token: no upgrade.
    runtime().block_on(async {
        for query in ["?token=", "?token=%20", "?token=not-it"] {
            match tokio_tungstenite::connect_async(format!("ws://{address}/ws{query}")).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status().as_u16(), 401, "/ws{query}")
                }
                Err(other) => panic!("/ws{query}: expected a 401, got {other}"),
                Ok(_) => panic!("/ws{query} upgraded"),
            }
        }
        tokio_tungstenite::connect_async(format!("ws://{address}/ws?token={TOKEN}"))
            .await
            .expect("/ws with ?token=");
    });
    server.stop();

    // `server.metrics_auth: true`: /metrics needs it too.
    edit_config(
        dir,
        "  port: 8080\n",
        "  port: 8080\n  metrics_auth: true\n",
    );
    let server = Server::start_with(dir, &env);
    let address = server.address.clone();
    for method in ["GET", "HEAD"] {
        let (status, _) = read(&address, method, "/metrics", None);
        assert_eq!(status, 401, "{method} /metrics with metrics_auth");
        let (status, body) = read(&address, method, "/metrics", Some(&bearer));
        assert_eq!(status, 200, "{method} /metrics with the token: {body}");
        assert_eq!(
            body.is_empty(),
            method == "HEAD",
            "{method} /metrics: {body}"
        );
    }
    assert_eq!(read(&address, "GET", "/healthz", None).0, 200);
}

#[test]
fn blank_tokens_are_refused_at_start() {
    let project = project(&[("secrets/token", "  \n")]);
    let dir = project.path();
    edit_config(
        dir,
        "  port: 8080\n",
        "  port: 8080\n  api_token: file:secrets/token\n",
    );
    let refused = cli(dir, &["start", "--port", "0"]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("`file:secrets/token`"),
        "{}",
        refused.stderr
    );
    assert!(refused.stderr.contains("empty token"), "{}", refused.stderr);
    assert!(!dir.join("data/server.json").exists());
    // The same from an environment variable.
    std::fs::write(dir.join("secrets/token"), "fine-token").unwrap();
    let mut child = crate::support::command(dir)
        .args(["start", "--port", "0"])
        .env("ORCHESTRATOR_API_TOKEN", "env:TEST_BLANK")
        .env("TEST_BLANK", " ")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually("start to give up", || child.try_wait().unwrap());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!exited.success(), "{stderr}");
    assert!(
        stderr.contains("`env:TEST_BLANK` gives an empty token"),
        "{stderr}"
    );
}

/// The token in `http://HOST:PORT/#token=TOKEN` lines of `text`.
fn printed_tokens(text: &str) -> Vec<String> {
    text.split_whitespace()
        .filter_map(|word| word.split_once("/#token=").map(|(_, t)| t.to_owned()))
        .collect()
}

#[test]
fn a_non_loopback_address_gets_a_generated_token() {
    let project = marked_project();
    let dir = project.path();
    let env = [("TEST_HOOK_SECRET", "hook-secret")];
    let mut server = Server::start_args(dir, &["--host", "0.0.0.0", "--port", "0"], &env);
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    let local = format!("127.0.0.1:{port}");

    let file = dir.join("data/api-token");
    let token = std::fs::read_to_string(&file)
        .expect("data/api-token")
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // The API wants it; with it, it answers (on any address of the machine).
    Api::new(&local, None)
        .get("/api/status")
        .expect_error(401, "unauthorized");
    Api::new(&local, None)
        .post("/api/workflows/wf_mark/execute", "")
        .expect_error(401, "unauthorized");
    let api = Api::new(&local, Some(&token));
    assert_eq!(api.get("/api/status").expect(200)["pid"], server.pid());
    assert_eq!(
        Api::new(&server.address, Some(&token))
            .get("/api/workflows")
            .expect(200)["total"],
        4
    );
    assert_eq!(Api::new(&local, None).get("/healthz").status, 200);
    // The local command line finds it without any configuration.
    let status = cli(dir, &["status"]).expect_code(0);
    assert!(status.stdout.contains("running: PID"), "{}", status.stdout);
    let listed = cli(dir, &["workflow", "list"]).expect_code(0);
    assert!(listed.stdout.contains("wf_mark"), "{}", listed.stdout);
    let run = cli(dir, &["workflow", "execute", "wf_mark"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    eventually("the run from the command line", || {
        (runs(&local, Some(&token)) == 1).then_some(())
    });

    // Printed once, on the console: the dashboard's address with the token.
    let (_, stdout) = server.stop();
    let printed = printed_tokens(&stdout);
    assert!(!printed.is_empty(), "no address with the token: {stdout}");
    assert!(printed.iter().all(|t| *t == token), "{stdout}");
    assert!(
        stdout.contains(&format!("http://127.0.0.1:{port}/#token={token}")),
        "{stdout}"
    );
    assert!(stdout.contains("data/api-token"), "{stdout}");
    // Never in the logs.
    for log in ["logs/system.log", "logs/api.log"] {
        let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
        assert!(!text.contains(&token), "{log} holds the token");
    }

    // A restart keeps it.
    let mut server = Server::start_args(dir, &["--host", "0.0.0.0", "--port", "0"], &env);
    let again = std::fs::read_to_string(&file).unwrap();
    assert_eq!(again.trim(), token);
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    Api::new(&format!("127.0.0.1:{port}"), Some(&token))
        .get("/api/status")
        .expect(200);
    let (_, stdout) = server.stop();
    assert_eq!(printed_tokens(&stdout).first(), Some(&token), "{stdout}");

    // In the background, the starting command prints it; the server's log does not get it.
    let started = cli(
        dir,
        &["start", "--background", "--host", "0.0.0.0", "--port", "0"],
    )
    .expect_code(0);
    assert_eq!(
        printed_tokens(&started.stdout).first(),
        Some(&token),
        "{}",
        started.stdout
    );
    let stopped = cli(dir, &["stop"]);
    assert_eq!(stopped.code, 0, "{}", stopped.stderr);
    let log = std::fs::read_to_string(dir.join("logs/system.log")).unwrap();
    assert!(!log.contains(&token), "system.log holds the token:\n{log}");

    // `--insecure` opts out: no token at all.
    let server = Server::start_args(
        dir,
        &["--host", "0.0.0.0", "--port", "0", "--insecure"],
        &env,
    );
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    Api::new(&format!("127.0.0.1:{port}"), None)
        .get("/api/status")
        .expect(200);
    drop(server);

    // A configured token wins over the generated one.
    edit_config(
        dir,
        "  port: 8080\n",
        "  port: 8080\n  api_token: env:TEST_TOKEN\n",
    );
    let server = Server::start_args(
        dir,
        &["--host", "0.0.0.0", "--port", "0"],
        &[
            ("TEST_TOKEN", "configured-token"),
            ("TEST_HOOK_SECRET", "hook-secret"),
        ],
    );
    let port = server.address.rsplit(':').next().unwrap().to_owned();
    let local = format!("127.0.0.1:{port}");
    Api::new(&local, Some(&token))
        .get("/api/status")
        .expect_error(401, "unauthorized");
    Api::new(&local, Some("configured-token"))
        .get("/api/status")
        .expect(200);
}

/// A one-page HTTP server on another loopback port: every GET gets `html`. Runs until the
/// test process ends (its thread only accepts).
fn page_server(html: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buffer = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buffer) {
                    Ok(n @ 1..) => request.extend_from_slice(&buffer[..n]),
                    _ => break,
                }
            }
            let (status, body) = if request.starts_with(b"GET / ") {
                ("200 OK", html.as_str())
            } else {
                ("404 Not Found", "")
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    address
}

/// What the attacking page does: the no-cors POST, a form-encoded POST, a classic form
/// submitted into a hidden frame, a CORS read, and a WebSocket subscribing to step logs.
/// `window.__report` collects what it could see.
const ATTACK: &str = r#"<!doctype html><meta charset="utf-8"><title>elsewhere</title>
<iframe name="sink" id="sink"></iframe>
<script>
window.__report = null;
async function attack(server) {
  const report = {fetches: [], ws: {opened: false, messages: [], closed: false}, frame: null};
  const execute = server + "/api/workflows/wf_mark/execute";
  const attempt = async (what, init) => {
    try {
      const r = await fetch(execute, init);
      let text = null;
      try { text = await r.text(); } catch (e) { text = "unreadable: " + e; }
      report.fetches.push({what, type: r.type, status: r.status, text});
    } catch (e) {
      report.fetches.push({what, error: String(e)});
    }
  };
  await attempt("no-cors POST", {method: "POST", mode: "no-cors"});
  await attempt("no-cors form POST", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "parameters=1"});
  await attempt("no-cors text POST", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: '{"parameters": {}}'});
  await attempt("cors JSON POST", {method: "POST", headers: {"Content-Type": "application/json"}, body: "{}"});
  try {
    const r = await fetch(server + "/api/runs");
    report.fetches.push({what: "cors read", status: r.status, text: await r.text()});
  } catch (e) {
    report.fetches.push({what: "cors read", error: String(e)});
  }
  // A classic form, posted into the frame.
  await new Promise((resolve) => {
    const form = document.createElement("form");
    form.method = "POST";
    form.action = execute;
    form.enctype = "text/plain";
    form.target = "sink";
    const input = document.createElement("input");
    input.name = '{"parameters": {}, "x": "';
    input.value = '"}';
    form.appendChild(input);
    document.body.appendChild(form);
    document.getElementById("sink").addEventListener("load", resolve, {once: true});
    form.submit();
    setTimeout(resolve, 5000);
  });
  try {
    report.frame = document.getElementById("sink").contentDocument.body.innerText;
  } catch (e) {
    report.frame = "unreadable: " + e.name;
  }
  await new Promise((resolve) => {
    const ws = new WebSocket(server.replace("http:", "ws:") + "/ws");
    ws.onopen = () => {
      report.ws.opened = true;
      ws.send(JSON.stringify({type: "subscribe", events: ["run_log", "workflow_started"]}));
    };
    ws.onmessage = (event) => report.ws.messages.push(String(event.data));
    ws.onerror = () => {};
    ws.onclose = () => { report.ws.closed = true; resolve(); };
    setTimeout(() => { ws.close(); resolve(); }, 5000);
  });
  window.__report = report;
}
</script>"#;

#[test]
fn a_page_of_another_origin_can_neither_drive_nor_read_the_server() {
    let project = marked_project();
    let dir = project.path();
    let server = Server::start_with(dir, &[("TEST_HOOK_SECRET", "hook-secret")]);
    let address = server.address.clone();
    let page = page_server(ATTACK.to_owned());
    // A run going on, whose log the page would like to read.
    runtime().block_on(async {
        let browser = Browser::start(DESKTOP).await;
        browser
            .client()
            .goto(&format!("http://{page}/"))
            .await
            .expect("open the page");
        browser
            .js(
                "attack(arguments[0]); return true;",
                vec![json!(format!("http://{address}"))],
            )
            .await;
        let report = browser
            .wait_for("the page's report", "return window.__report;", vec![])
            .await;
        browser.close().await;

        // Nothing ran, and the page learnt nothing.
        let fetches = report["fetches"].as_array().unwrap();
        assert_eq!(fetches.len(), 5, "{report:#}");
        for fetch in fetches {
            let what = fetch["what"].as_str().unwrap();
            if what.starts_with("no-cors") {
                // Opaque: no status, no text.
                assert_eq!(fetch["type"], "opaque", "{what}: {fetch}");
                assert_eq!(fetch["status"], 0, "{what}: {fetch}");
                assert_eq!(fetch["text"], "", "{what}: {fetch}");
            } else {
                assert!(
                    fetch["error"].as_str().is_some(),
                    "{what} was answered: {fetch}"
                );
            }
        }
        let frame = report["frame"].as_str().unwrap_or_default();
        assert!(
            frame.starts_with("unreadable"),
            "the frame could be read: {frame}"
        );
        assert_eq!(report["ws"]["opened"], false, "{report:#}");
        assert_eq!(report["ws"]["messages"], json!([]), "{report:#}");
    });
    assert_eq!(
        runs(&address, None),
        0,
        "a page of another origin started a run"
    );
    assert!(!dir.join("marker-ran").exists());
    // The server saw and refused them (the access log has no query strings or tokens).
    let log = std::fs::read_to_string(dir.join("logs/api.log")).unwrap();
    let refused = log
        .lines()
        .filter(|l| {
            l.contains("/api/workflows/wf_mark/execute")
                && (l.contains(" 403 ") || l.contains(" 415 "))
        })
        .count();
    assert!(refused >= 3, "{log}");
    assert!(log.lines().any(|l| l.contains("GET /ws 403")), "{log}");
}
