//! Agent health checks: whether each agent could start the work it is given, checked at
//! server start and then every [`CHECK_INTERVAL`], the results kept in [`RunStats`] where
//! they feed the health score.
//!
//! - `shell`: `sh` resolves on `PATH`.
//! - `test_runner`: the command of every configured environment and suite resolves (an
//!   array command's program on `PATH`, or as a path relative to its working directory; a
//!   string command needs `sh`); without an Agent manifest it is not configured, and
//!   skipped.
//! - `exec` plugins: the program resolves, then the plugin is started as for a step, in
//!   the project directory with the manifest's `env`, and sent the health request
//!   `{"action": "health", "parameters": {}, "health": true, "run": {"id": "", "workflow_id":
//!   "", "step": ""}}` on stdin. It passes when it answers with a JSON object that has a
//!   `status` (any status: a plugin that answers "no such action" still runs and speaks the
//!   protocol), or exits 0; it fails when it cannot start, exits otherwise without an
//!   answer, or takes more than [`PLUGIN_TIMEOUT`].
//! - `report_generator` runs inside the server and always passes; `http` agents are skipped
//!   (each step names its own URL).
//!
//! [`RunStats`]: super::RunStats

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};
use utoipa::ToSchema;

use super::RunStats;
use crate::agents::runtime::argv_of;
use crate::engine::process::signal_group;
use crate::spec::agents::BUILTIN_AGENTS;

/// How often the checks run while the server runs.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// How long an exec plugin has to answer the health request.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The agent can start its work.
    Passed,
    /// It cannot: the message says why.
    Failed,
    /// Nothing to check (an `http` agent, an unconfigured `test_runner`).
    Skipped,
}

/// One agent's latest health check.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct HealthCheck {
    /// Passed, failed or skipped.
    pub status: HealthStatus,
    /// What was checked and found.
    pub message: String,
    /// When, RFC 3339.
    pub checked_at: String,
}

impl HealthCheck {
    fn new(status: HealthStatus, message: impl Into<String>) -> HealthCheck {
        HealthCheck {
            status,
            message: message.into(),
            checked_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        }
    }
}

/// Checks every built-in agent and every agent an Agent manifest declares (`agents`: the
/// manifests' specs by agent name, as `engine::run::agent_configs` gives them). Blocking:
/// exec plugins are started.
pub fn check_all(
    agents: &BTreeMap<String, Value>,
    project_dir: &Path,
) -> Vec<(String, HealthCheck)> {
    let mut names: Vec<&str> = BUILTIN_AGENTS.iter().map(|a| a.name).collect();
    names.extend(agents.keys().map(String::as_str));
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            (
                name.to_owned(),
                check_agent(name, agents.get(name), project_dir),
            )
        })
        .collect()
}

/// Checks one agent: `config` is its Agent manifest's spec, if it has one.
pub fn check_agent(name: &str, config: Option<&Value>, project_dir: &Path) -> HealthCheck {
    let kind = config
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .unwrap_or(name);
    let working_dir = |entry: Option<&Value>| -> PathBuf {
        match entry
            .and_then(|e| e.get("working_dir"))
            .and_then(Value::as_str)
        {
            Some(dir) => project_dir.join(dir),
            None => project_dir.to_owned(),
        }
    };
    match kind {
        "shell" => match resolve_program("sh", project_dir) {
            Ok(path) => HealthCheck::new(
                HealthStatus::Passed,
                format!("`sh` resolves to {}", path.display()),
            ),
            Err(err) => HealthCheck::new(HealthStatus::Failed, err),
        },
        "test_runner" => {
            let Some(config) = config else {
                return HealthCheck::new(
                    HealthStatus::Skipped,
                    "not configured: no Agent manifest gives it environments or suites",
                );
            };
            let mut found = Vec::new();
            let mut problems = Vec::new();
            for section in ["environments", "suites"] {
                let Some(entries) = config.get(section).and_then(Value::as_object) else {
                    continue;
                };
                let what = section.trim_end_matches('s');
                for (key, entry) in entries {
                    let Some(command) = entry.get("command") else {
                        problems.push(format!("{what} `{key}` has no command"));
                        continue;
                    };
                    match resolve_command(command, &working_dir(Some(entry))) {
                        Ok(path) => found.push(format!("{what} `{key}`: {}", path.display())),
                        Err(err) => problems.push(format!("{what} `{key}`: {err}")),
                    }
                }
            }
            if !problems.is_empty() {
                HealthCheck::new(HealthStatus::Failed, problems.join("; "))
            } else if found.is_empty() {
                HealthCheck::new(
                    HealthStatus::Skipped,
                    "no environments or suites configured",
                )
            } else {
                HealthCheck::new(
                    HealthStatus::Passed,
                    format!("commands resolve: {}", found.join(", ")),
                )
            }
        }
        "report_generator" => {
            HealthCheck::new(HealthStatus::Passed, "runs inside the server")
        }
        "http" => HealthCheck::new(
            HealthStatus::Skipped,
            "http agents are not checked: each step names its own URL",
        ),
        "exec" => {
            let Some(config) = config else {
                return HealthCheck::new(HealthStatus::Failed, "exec agent without a manifest");
            };
            let Some(command) = config.get("command") else {
                return HealthCheck::new(
                    HealthStatus::Failed,
                    "exec agent has no `command` in its manifest",
                );
            };
            let cwd = working_dir(Some(config));
            if let Err(err) = resolve_command(command, &cwd) {
                return HealthCheck::new(HealthStatus::Failed, err);
            }
            probe_plugin(command, config, &cwd)
        }
        other => HealthCheck::new(
            HealthStatus::Failed,
            format!("unknown agent type `{other}`: expected shell, test_runner, report_generator, http or exec"),
        ),
    }
}

/// The program a manifest command starts: `sh` for a string, the first element of an
/// array, resolved as [`resolve_program`] does.
fn resolve_command(command: &Value, cwd: &Path) -> Result<PathBuf, String> {
    let argv = argv_of(command)?;
    let program = argv.first().ok_or("the command is empty")?;
    resolve_program(program, cwd)
}

/// Where a program is: a name without `/` is looked up on `PATH`, a path is taken relative
/// to `cwd`; either way it must be an executable file.
pub fn resolve_program(program: &str, cwd: &Path) -> Result<PathBuf, String> {
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = cwd.join(program);
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!(
                "`{program}` ({}) is not an executable file",
                path.display()
            ))
        } else {
            Err(format!("`{program}` not found ({})", path.display()))
        };
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| cwd.join(dir).join(program))
        .find(|candidate| executable(candidate))
        .ok_or_else(|| format!("`{program}` not found on PATH"))
}

/// Starts an exec plugin with the health request and judges its answer.
fn probe_plugin(command: &Value, config: &Value, cwd: &Path) -> HealthCheck {
    let argv = match argv_of(command) {
        Ok(argv) => argv,
        Err(err) => return HealthCheck::new(HealthStatus::Failed, err),
    };
    // The plugin sees what its steps would: the inherited allowlist and its manifest's
    // `env:` (secrets resolved; `file:` paths from the directory it runs in).
    let env =
        match crate::engine::env::resolve(&crate::engine::env::declared(config.get("env")), cwd) {
            Ok(resolved) => resolved.vars,
            Err(err) => return HealthCheck::new(HealthStatus::Failed, err),
        };
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(std::env::vars_os().filter(|(name, _)| {
            name.to_str()
                .is_some_and(crate::engine::process::is_inherited)
        }))
        .envs(env)
        .current_dir(cwd)
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Registered so that the engine's reaper of step orphans leaves it to `try_wait` below.
    let mut child = match crate::engine::process::spawn_awaited(&mut command) {
        Ok(child) => child,
        Err(err) => {
            return HealthCheck::new(
                HealthStatus::Failed,
                format!("cannot start `{}`: {err}", argv[0]),
            )
        }
    };
    let pgid = child.id() as i32;
    let request = json!({
        "action": "health",
        "parameters": {},
        "health": true,
        "run": {"id": "", "workflow_id": "", "step": ""},
    });
    if let Some(mut stdin) = child.stdin.take() {
        // A plugin that exits without reading its stdin is not an error here.
        let _ = stdin.write_all(request.to_string().as_bytes());
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(pipe) = pipe {
                let _ = pipe.take(64 * 1024).read_to_end(&mut text);
            }
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = reader(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = reader(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + PLUGIN_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => {
                signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break None;
            }
        }
    };
    crate::engine::process::forget_awaited(child.id());
    // Whatever the plugin left running goes, so the pipes close.
    signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let Some(status) = status else {
        return HealthCheck::new(
            HealthStatus::Failed,
            format!(
                "the plugin did not exit within {} s of the health request",
                PLUGIN_TIMEOUT.as_secs()
            ),
        );
    };
    let answer = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .and_then(|line| serde_json::from_str::<Value>(line).ok());
    let answered_status = answer
        .as_ref()
        .and_then(|a| a.get("status"))
        .and_then(Value::as_str);
    let exit = match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "a signal".to_owned(),
    };
    if let Some(answered) = answered_status {
        let message = answer
            .as_ref()
            .and_then(|a| a.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("");
        return HealthCheck::new(
            HealthStatus::Passed,
            format!("the plugin answered the health request ({answered}: {message}) and ended with {exit}"),
        );
    }
    if status.success() {
        return HealthCheck::new(
            HealthStatus::Passed,
            "the plugin started and exited cleanly (it did not answer the health request)",
        );
    }
    let last_err = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .take(300)
        .collect::<String>();
    HealthCheck::new(
        HealthStatus::Failed,
        if last_err.is_empty() {
            format!("the plugin ended with {exit} without answering the health request")
        } else {
            format!(
                "the plugin ended with {exit} without answering the health request; stderr: {last_err}"
            )
        },
    )
}

/// Runs [`check_all`] now and then every `interval` in a thread of its own, storing the
/// results in `stats`. `agents` gives the Agent manifests in force and the project
/// directory for each round; the thread ends once `stop` says so.
pub fn spawn_periodic(
    stats: Arc<RunStats>,
    interval: Duration,
    agents: impl Fn() -> (BTreeMap<String, Value>, PathBuf) + Send + 'static,
    stop: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("agent health".into())
        .spawn(move || loop {
            let (configs, project_dir) = agents();
            stats.set_health(check_all(&configs, &project_dir));
            let next = Instant::now() + interval;
            while Instant::now() < next {
                if stop() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200).min(next - Instant::now()));
            }
        })
}
