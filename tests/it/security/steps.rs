//! What a step sees and what it leaves behind, against a real server and the CLI: a clean
//! environment (the server's secrets and settings never reach a step), declared secrets
//! that reach the step but show as `***` in its log, the `run_log` events, the API's run
//! and the report; descendants that leave the step's session (`setsid`, TERM ignored) are
//! gone after its timeout, its cancel and its ordinary end; and a capped step log.

use std::fs;
use std::path::Path;

use serde_json::{json, Value};

use crate::support::{
    cli, edit_config, eventually, project, server_address, step, ws_connect, ws_next, ws_subscribe,
    Api, Server, Ws,
};

/// Values placed in the server's environment that no step may see.
const WEBHOOK_SECRET: &str = "topsecret-webhook-5c1e";
const API_TOKEN: &str = "api-token-9f3a7d21";
/// Values of declared secrets: the step sees them, no output shows them.
const ENV_SECRET: &str = "envsecret-77d0";
const FILE_SECRET: &str = "filesecret-42b8";

const SECRETS_WORKFLOW: &str = r#"name: Secrets
env:
  WORKFLOW_LITERAL: plain-value
  DEPLOY: {secret: "env:DEPLOY_KEY"}
steps:
  - name: show
    env:
      FILE_SECRET: {secret: "file:secret.txt"}
      PROXY: {from_env: PASS_ME}
    command: |
      env
      echo "deploy=$DEPLOY file=$FILE_SECRET"
      printf %s "$DEPLOY" > seen-deploy.txt
      printf %s "$FILE_SECRET" > seen-file.txt
      echo "leak=$DEPLOY" >> "$ORCHESTRATOR_OUTPUT"
  - name: tests
    agent: test_runner
    action: run_tests
    parameters: {test_suite: leaky}
    continue_on_error: true
  - name: report
    agent: report_generator
    action: generate_html_report
"#;

/// A suite whose JUnit failure message carries a secret declared on the agent.
const TEST_RUNNER: &str = r#"name: test_runner
type: test_runner
suites:
  leaky:
    command: ["sh", "suites/leaky.sh"]
    junit: reports/junit-leaky.xml
    env:
      SUITE_SECRET: {secret: "env:DEPLOY_KEY"}
"#;

const LEAKY_SUITE: &str = r#"mkdir -p "$(dirname "$ORCHESTRATOR_JUNIT")"
printf '<testsuite name="s"><testcase classname="c" name="t"><failure message="got %s">%s</failure></testcase></testsuite>\n' "$SUITE_SECRET" "$SUITE_SECRET" > "$ORCHESTRATOR_JUNIT"
"#;

const MISSING_WORKFLOW: &str = r#"name: Missing
steps:
  - name: needs
    env:
      TOKEN: {secret: "env:NOT_SET_ANYWHERE_4711"}
    command: ["true"]
"#;

/// A parameter substituted into `env:` stays a literal, whatever its shape.
const PICKS_WORKFLOW: &str = r#"name: Picks
steps:
  - name: pick
    env:
      PICKED: "{{ params.p }}"
    command: 'echo "picked=$PICKED"'
"#;

/// An HTTP client of the server in `dir`, with a token when one is set.
struct Client {
    api: Api,
    address: String,
}

impl Client {
    fn new(server: &Server, dir: &Path, token: Option<&str>) -> Client {
        let _ = server;
        let address = server_address(dir);
        Client {
            api: Api::new(&address, token),
            address,
        }
    }

    fn address(&self) -> &str {
        &self.address
    }

    fn text(&self, path: &str) -> (u16, String) {
        let reply = self.api.get(path);
        (reply.status, reply.text)
    }

    /// Starts a run of the workflow; returns its id.
    fn execute(&self, workflow: &str) -> String {
        self.execute_with(workflow, "{}")
    }

    /// Starts a run with a request body; returns its id.
    fn execute_with(&self, workflow: &str, body: &str) -> String {
        let reply = self
            .api
            .post(&format!("/api/workflows/{workflow}/execute"), body);
        assert_eq!(reply.status, 202, "{}", reply.text);
        let accepted: Value = serde_json::from_str(&reply.text).unwrap();
        accepted["run_id"].as_str().expect("run_id").to_owned()
    }

    /// Polls the run until it is final; returns `{"run", "steps"}`.
    fn finished(&self, run: &str) -> Value {
        self.api.wait_finished(run)
    }
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [ENV_SECRET, FILE_SECRET, WEBHOOK_SECRET, API_TOKEN] {
        assert!(!text.contains(secret), "{what} shows `{secret}`:\n{text}");
    }
}

/// Connects to `/ws` with the token and subscribes to `run_log` and `workflow_completed`.
async fn subscribe(address: &str, token: &str) -> Ws {
    let mut ws = ws_connect(address, Some(token)).await;
    ws_subscribe(&mut ws, &["run_log", "workflow_completed"]).await;
    ws
}

/// The `run_log` text of one step of a run, read until the run completes.
async fn streamed_log(ws: &mut Ws, run: &str, step: &str) -> String {
    let mut text = String::new();
    loop {
        let event = ws_next(ws).await;
        let payload = &event["payload"];
        match event["type"].as_str() {
            Some("run_log") if payload["run_id"] == run && payload["step"] == step => {
                text.push_str(payload["text"].as_str().unwrap_or_default());
            }
            Some("workflow_completed") if payload["id"] == run => return text,
            _ => {}
        }
    }
}

/// The server's own secrets and `ORCHESTRATOR_*` settings never reach a step; declared
/// secrets (`env:` on the workflow, `file:` on the step, `env:` on an agent's suite) do,
/// and show as `***` in the log file, the `run_log` events, the API's run and the report.
#[test]
fn steps_get_a_clean_environment_and_declared_secrets_masked() {
    let project = project(&[
        ("workflows/secrets.yaml", SECRETS_WORKFLOW),
        ("workflows/missing.yaml", MISSING_WORKFLOW),
        ("workflows/picks.yaml", PICKS_WORKFLOW),
        ("agents/test_runner.yaml", TEST_RUNNER),
        ("suites/leaky.sh", LEAKY_SUITE),
        ("secret.txt", &format!("{FILE_SECRET}\n")),
    ]);
    let dir = project.path();
    let server = Server::start_with(
        dir,
        &[
            ("GITHUB_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("ORCH_TEST_TOKEN", API_TOKEN),
            ("ORCHESTRATOR_API_TOKEN", "env:ORCH_TEST_TOKEN"),
            ("ORCHESTRATOR_LOG_LEVEL", "info"),
            ("DEPLOY_KEY", ENV_SECRET),
            ("PASS_ME", "proxy-value"),
            ("UNLISTED_SERVER_VARIABLE", "server-only"),
        ],
    );
    let client = Client::new(&server, dir, Some(API_TOKEN));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut ws = runtime.block_on(subscribe(client.address(), API_TOKEN));
    let run = client.execute("wf_secrets");
    let streamed = runtime.block_on(streamed_log(&mut ws, &run, "show"));
    let shown = client.finished(&run);
    assert_eq!(step(&shown, "show")["status"], "succeeded", "{shown}");

    // The step saw the declared values.
    assert_eq!(
        fs::read_to_string(dir.join("seen-deploy.txt")).unwrap(),
        ENV_SECRET
    );
    assert_eq!(
        fs::read_to_string(dir.join("seen-file.txt")).unwrap(),
        FILE_SECRET
    );

    // Its log, through the API and on disk.
    let (status, log) = client.text(&format!("/api/runs/{run}/logs/show"));
    assert_eq!(status, 200, "{log}");
    let on_disk = fs::read_to_string(dir.join(format!("logs/workflows/{run}/show.log"))).unwrap();
    assert_eq!(log, on_disk);
    assert_no_secret("the step log", &log);
    for wanted in [
        "deploy=*** file=***",
        "DEPLOY=***",
        "FILE_SECRET=***",
        "WORKFLOW_LITERAL=plain-value",
        "PROXY=proxy-value",
        &format!("ORCHESTRATOR_RUN_ID={run}"),
        "ORCHESTRATOR_STEP=show",
        &format!("ORCHESTRATOR_STEP_COOKIE={run}/show/"),
        "PATH=",
    ] {
        assert!(log.contains(wanted), "the log lacks `{wanted}`:\n{log}");
    }
    for unwanted in [
        "GITHUB_WEBHOOK_SECRET",
        "ORCH_TEST_TOKEN",
        "ORCHESTRATOR_API_TOKEN",
        "ORCHESTRATOR_LOG_LEVEL",
        "UNLISTED_SERVER_VARIABLE",
        "PASS_ME",
    ] {
        assert!(
            !log.contains(unwanted),
            "the log shows `{unwanted}`:\n{log}"
        );
    }
    // Every variable of the step is allowlisted, engine-set or declared.
    for line in log.lines().take_while(|l| !l.starts_with("deploy=")) {
        let Some((name, _)) = line.split_once('=') else {
            continue;
        };
        let known = [
            "PATH", "HOME", "LANG", "TZ", "TMPDIR", "USER", "PWD", "SHLVL", "_",
        ]
        .contains(&name)
            || name.starts_with("LC_")
            || name.starts_with("ORCHESTRATOR_")
            || ["WORKFLOW_LITERAL", "DEPLOY", "FILE_SECRET", "PROXY"].contains(&name);
        assert!(known, "`{name}` reached the step:\n{log}");
    }

    // The run_log events are read from the masked file.
    assert!(streamed.contains("deploy=*** file=***"), "{streamed}");
    assert_no_secret("the run_log events", &streamed);

    // The API's run: records keep references, never values; what the step wrote back is
    // masked.
    let answer = shown.to_string();
    assert_no_secret("the API's run", &answer);
    assert_eq!(step(&shown, "show")["outputs"]["leak"], "***", "{shown}");
    assert_eq!(
        shown["run"]["workflow"]["env"]["DEPLOY"],
        json!({"secret": "env:DEPLOY_KEY"}),
        "{shown}"
    );
    let tests = step(&shown, "tests");
    assert_eq!(tests["tests"][0]["message"], "got ***", "{shown}");

    // The report.
    let report = step(&shown, "report");
    assert_eq!(report["status"], "succeeded", "{shown}");
    let artifacts = report["artifacts"].as_array().expect("report artifacts");
    assert!(!artifacts.is_empty(), "{shown}");
    for artifact in artifacts {
        let path = dir.join(artifact.as_str().unwrap());
        let text = fs::read_to_string(&path).unwrap();
        assert_no_secret(&format!("the report {}", path.display()), &text);
        assert!(text.contains("got ***"), "{}:\n{text}", path.display());
    }

    // An unresolvable secret fails its step naming the reference.
    let run = client.execute("wf_missing");
    let shown = client.finished(&run);
    let needs = step(&shown, "needs");
    assert_eq!(needs["status"], "failed", "{shown}");
    let message = needs["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`env:NOT_SET_ANYWHERE_4711`") && message.contains("TOKEN"),
        "{message}"
    );

    // A run's parameters cannot turn a literal into a secret reference.
    let run = client.execute_with(
        "wf_picks",
        r#"{"parameters": {"p": {"secret": "env:GITHUB_WEBHOOK_SECRET"}}}"#,
    );
    let shown = client.finished(&run);
    assert_eq!(step(&shown, "pick")["status"], "succeeded", "{shown}");
    let (_, log) = client.text(&format!("/api/runs/{run}/logs/pick"));
    assert_no_secret("a parameter's step", &log);
    assert!(
        log.contains(r#"picked={"secret":"env:GITHUB_WEBHOOK_SECRET"}"#),
        "{log}"
    );
}

/// Pids of live processes whose environment holds `ORCHESTRATOR_RUN_ID=<run>`.
fn processes_of(run: &str) -> Vec<i32> {
    let wanted = format!("ORCHESTRATOR_RUN_ID={run}").into_bytes();
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let environ = fs::read(entry.path().join("environ")).ok()?;
            environ
                .split(|b| *b == 0)
                .any(|v| v == wanted.as_slice())
                .then_some(pid)
        })
        .collect()
}

/// A step that starts a daemon in a session of its own which ignores SIGTERM.
const DAEMON: &str = r#"
    command: |
      setsid sh -c 'trap "" TERM; exec sleep 301' &
      sleep 300
"#;

fn orphans_killed(shown: &Value, name: &str) -> u64 {
    step(shown, name)["attempts"]
        .as_array()
        .and_then(|a| a.last())
        .and_then(|a| a["orphans_killed"].as_u64())
        .unwrap_or(0)
}

/// The `setsid` + `trap "" TERM` grandchild is gone after its step's timeout and after
/// `run cancel`, and the step's record counts it.
#[test]
fn a_daemon_a_step_started_is_gone_after_its_timeout_and_after_cancel() {
    let project = project(&[
        (
            "workflows/timeout.yaml",
            &format!("name: Timeout\nsteps:\n  - name: spawn\n    timeout: 2s{DAEMON}"),
        ),
        (
            "workflows/cancel.yaml",
            &format!("name: Cancel\nsteps:\n  - name: spawn{DAEMON}"),
        ),
    ]);
    let dir = project.path();
    let server = Server::start(dir);
    let client = Client::new(&server, dir, None);

    let run = client.execute("wf_timeout");
    eventually("the daemon to start", || {
        (processes_of(&run).len() >= 3).then_some(())
    });
    let shown = client.finished(&run);
    assert_eq!(step(&shown, "spawn")["status"], "timed_out", "{shown}");
    eventually("the timed-out step's processes to be gone", || {
        processes_of(&run).is_empty().then_some(())
    });
    assert!(orphans_killed(&shown, "spawn") >= 1, "{shown}");
    let message = step(&shown, "spawn")["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("outlived it"), "{message}");

    let run = client.execute("wf_cancel");
    eventually("the daemon to start", || {
        (processes_of(&run).len() >= 3).then_some(())
    });
    cli(dir, &["run", "cancel", &run]).expect_code(0);
    let shown = client.finished(&run);
    assert_eq!(step(&shown, "spawn")["status"], "cancelled", "{shown}");
    eventually("the cancelled step's processes to be gone", || {
        processes_of(&run).is_empty().then_some(())
    });
    assert!(orphans_killed(&shown, "spawn") >= 1, "{shown}");
}

/// A step that leaves sleepers behind and exits 0 succeeds, and the sleepers are gone
/// when its end is reported: run by the CLI without a server, then by the server. Each is
/// counted, the one that cleared its environment too (found as a member of the step's
/// process group, as a process caught in the middle of an `execve` is).
#[test]
fn what_a_successful_step_leaves_running_is_stopped_at_its_end() {
    let project = project(&[(
        "workflows/leave.yaml",
        "name: Leave\nsteps:\n  - name: leave\n    command: |\n      setsid sleep 300 &\n      nohup sleep 299 >/dev/null 2>&1 &\n      env -i sleep 298 &\n      echo left\n",
    )]);
    let dir = project.path();

    // The CLI runs it in its own process.
    cli(dir, &["apply"]).expect_code(0);
    cli(dir, &["workflow", "execute", "wf_leave"]).expect_code(0);
    let shown = cli(dir, &["run", "list", "-o", "json"]);
    let listed: Value =
        serde_json::from_str(&shown.stdout).unwrap_or_else(|e| panic!("{e}: {}", shown.stdout));
    let run = listed
        .as_array()
        .or_else(|| listed["runs"].as_array())
        .and_then(|runs| runs.first())
        .and_then(|r| r["id"].as_str())
        .unwrap_or_else(|| panic!("no run listed: {listed}"))
        .to_owned();
    assert!(processes_of(&run).is_empty(), "{:?}", processes_of(&run));

    // The server.
    let server = Server::start(dir);
    let client = Client::new(&server, dir, None);
    let run = client.execute("wf_leave");
    let shown = client.finished(&run);
    assert_eq!(step(&shown, "leave")["status"], "succeeded", "{shown}");
    assert_eq!(orphans_killed(&shown, "leave"), 3, "{shown}");
    assert!(processes_of(&run).is_empty(), "{:?}", processes_of(&run));
}

/// Past `runs.max_log_bytes` a step's log says its output was cut, and the step is not
/// held up by what it still writes.
#[test]
fn a_step_log_is_cut_at_its_cap() {
    let project = project(&[(
        "workflows/loud.yaml",
        "name: Loud\nsteps:\n  - name: loud\n    command: \"yes 0123456789abcdef | head -c 1000000; echo done\"\n",
    )]);
    let dir = project.path();
    edit_config(
        dir,
        "  max_parallel: 4\n",
        "  max_parallel: 4\n  max_log_bytes: 4096\n",
    );
    let server = Server::start(dir);
    let client = Client::new(&server, dir, None);
    let run = client.execute("wf_loud");
    let shown = client.finished(&run);
    assert_eq!(step(&shown, "loud")["status"], "succeeded", "{shown}");
    let log = fs::read(dir.join(format!("logs/workflows/{run}/loud.log"))).unwrap();
    let text = String::from_utf8_lossy(&log);
    let notice =
        "[orchestrator] output cut at 4096 bytes (runs.max_log_bytes); the rest was not written\n";
    assert!(
        text.ends_with(notice),
        "{}",
        &text[text.len().saturating_sub(300)..]
    );
    assert!(log.len() <= 4096 + 1 + notice.len(), "{} bytes", log.len());
    assert!(!text.contains("done"), "written past the cap");
}

/// What a server killed outright left running for its runs, `setsid` daemons included, is
/// gone once the next server has started.
#[test]
fn a_restart_stops_what_a_killed_server_left_running() {
    let project = project(&[(
        "workflows/left.yaml",
        &format!("name: Left\nsteps:\n  - name: spawn{DAEMON}"),
    )]);
    let dir = project.path();
    let run = {
        let server = Server::start(dir);
        let client = Client::new(&server, dir, None);
        let run = client.execute("wf_left");
        eventually("the daemon to start", || {
            (processes_of(&run).len() >= 3).then_some(())
        });
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        run
    };
    assert!(
        !processes_of(&run).is_empty(),
        "the crash took the steps along"
    );
    let server = Server::start(dir);
    eventually("the left processes to be gone", || {
        processes_of(&run).is_empty().then_some(())
    });
    let client = Client::new(&server, dir, None);
    let shown = client.finished(&run);
    assert_eq!(shown["run"]["status"], "interrupted", "{shown}");
}
