//! The agents that execute steps: the [`Agent`] trait (the guide's custom agent,
//! `execute_action(action, parameters, context) -> outcome`) and the built-in ones — `shell`,
//! `test_runner`, `report_generator`, `http` — plus `exec` plugins that speak JSON over
//! stdin and stdout, for agents in any language.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::report::{self, HtmlTemplate, RunView};
use crate::engine::env;
pub use crate::engine::executor::{Outcome, ReportData};
use crate::engine::junit::parse_junit;
use crate::engine::mask::StepLog;
use crate::engine::process::{run_process, ProcessResult, ProcessSpec, StepControl, StopReason};
use crate::model::{Status, TestSummary};

/// What an agent gets besides its action and parameters.
pub struct StepContext<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The workflow.
    pub workflow_id: &'a str,
    /// The step's name.
    pub step: &'a str,
    /// The project directory: default working directory, base of relative paths.
    pub project_dir: &'a Path,
    /// Where reports go (`reports/`); a run's files go under `<run-id>/`.
    pub reports_dir: &'a Path,
    /// The agent's own log (`logs/agents/<agent>.log`).
    pub agent_log: &'a Path,
    /// The step's log: masked, capped.
    pub log: &'a Arc<StepLog>,
    /// Environment for processes: `ORCHESTRATOR_*` variables, parameters, workflow and step
    /// `env`, resolved (secret values are among the log's masked ones).
    pub env: &'a [(String, String)],
    /// The step's own command, when it has one.
    pub command: Option<&'a Value>,
    /// The step's `working_dir`.
    pub working_dir: Option<&'a str>,
    /// The Agent manifest configuring this agent, if any.
    pub config: Option<&'a Value>,
    /// Stop requests (timeout, cancel) and the running process group.
    pub control: &'a StepControl,
    /// The step's time limit, for agents that wait on something other than a process.
    pub timeout: Option<Duration>,
    /// For report steps.
    pub reports: Option<&'a ReportData>,
}

impl StepContext<'_> {
    /// A line in the step's log (the orchestrator's own notes are prefixed `[orchestrator]`).
    pub fn note(&self, text: &str) {
        self.log.note(text);
    }

    /// An agent manifest's `env:` (on the agent or one of its entries) resolved, its
    /// secret values added to the log's masked ones.
    fn env_of(&self, entry: &Value) -> Result<Vec<(String, String)>, String> {
        let resolved = env::resolve(&env::declared(entry.get("env")), self.project_dir)?;
        self.log.add_secrets(resolved.secrets);
        Ok(resolved.vars)
    }

    fn cookie_prefix(&self) -> String {
        format!("{}/{}", self.run_id, self.step)
    }

    fn cwd(&self, working_dir: Option<&str>) -> PathBuf {
        match working_dir.or(self.working_dir) {
            Some(dir) => self.project_dir.join(dir),
            None => self.project_dir.to_owned(),
        }
    }

    /// Runs a command (argv array, or a string for `sh -c`) with the step's environment
    /// plus `extra`.
    fn run(
        &self,
        command: &Value,
        extra: &[(String, String)],
        working_dir: Option<&str>,
    ) -> Result<ProcessResult, String> {
        let argv = argv_of(command)?;
        let mut env = self.env.to_vec();
        env.extend_from_slice(extra);
        let spec = ProcessSpec {
            argv,
            env,
            cwd: self.cwd(working_dir),
            cookie_prefix: self.cookie_prefix(),
            ..ProcessSpec::default()
        };
        run_process(&spec, self.log, self.control).map_err(|e| e.to_string())
    }
}

/// An argv from a manifest's command: an array as it is, a string through `sh -c`.
pub fn argv_of(command: &Value) -> Result<Vec<String>, String> {
    match command {
        Value::String(text) => Ok(vec!["sh".into(), "-c".into(), text.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(_) | Value::Bool(_) => Ok(item.to_string()),
                other => Err(format!(
                    "command arguments must be strings, got {other} (a substituted array or object?)"
                )),
            })
            .collect(),
        other => Err(format!(
            "command must be an array of strings or a string, got {other}"
        )),
    }
}

impl Outcome {
    fn failed(message: impl Into<String>) -> Outcome {
        Outcome {
            status: Some(Status::Failed),
            message: Some(message.into()),
            ..Outcome::default()
        }
    }

    fn from_process(result: &ProcessResult) -> Outcome {
        let status = match result.stopped {
            Some(StopReason::Timeout) => Status::TimedOut,
            Some(StopReason::Cancel) => Status::Cancelled,
            None if result.success() => Status::Succeeded,
            None => Status::Failed,
        };
        Outcome {
            status: Some(status),
            exit_code: result.exit_code,
            message: (status != Status::Succeeded).then(|| match result.stopped {
                Some(StopReason::Timeout) => "timed out; its process group was killed".to_owned(),
                Some(StopReason::Cancel) => "cancelled; its process group was killed".to_owned(),
                None => format!("failed with {}", result.describe()),
            }),
            ..Outcome::default()
        }
    }
}

/// An agent: executes the actions it offers.
pub trait Agent: Send + Sync {
    /// Runs one action with its (already substituted) parameters.
    fn execute_action(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        context: &StepContext<'_>,
    ) -> Outcome;
}

/// The agent for a step: an Agent manifest's type (or `exec` plugin) when one configures
/// `name`, else the built-in of that name.
pub fn agent_for(name: &str, config: Option<&Value>) -> Option<Box<dyn Agent>> {
    let kind = config
        .and_then(|c| c.get("type"))
        .and_then(Value::as_str)
        .unwrap_or(name);
    Some(match kind {
        "shell" => Box::new(Shell),
        "test_runner" => Box::new(TestRunner),
        "report_generator" => Box::new(ReportGenerator),
        "http" => Box::new(Http),
        "exec" => Box::new(Exec),
        _ => return None,
    })
}

/// `shell`: `run` the step's command. Step parameters reach it as
/// `ORCHESTRATOR_INPUT_<NAME>` variables, never inside the command text.
struct Shell;

impl Agent for Shell {
    fn execute_action(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        context: &StepContext<'_>,
    ) -> Outcome {
        if action != "run" {
            return Outcome::failed(format!("shell has no action `{action}` (it has: run)"));
        }
        let Some(command) = context.command.or_else(|| parameters.get("command")) else {
            return Outcome::failed("shell step has no command");
        };
        let inputs: Vec<(String, String)> = parameters
            .iter()
            .filter(|(k, _)| *k != "command")
            .map(|(k, v)| {
                (
                    format!("ORCHESTRATOR_INPUT_{}", k.to_uppercase()),
                    crate::spec::params::env_value(v),
                )
            })
            .collect();
        match context.run(command, &inputs, None) {
            Ok(result) => Outcome::from_process(&result),
            Err(err) => Outcome::failed(err),
        }
    }
}

/// `test_runner`: `setup_environment` runs the command configured for the environment;
/// `run_tests` runs the suite's command and reads the JUnit XML it writes.
struct TestRunner;

impl TestRunner {
    fn configured<'v>(
        context: &StepContext<'v>,
        section: &str,
        key: &str,
    ) -> Result<&'v Value, String> {
        let config = context.config.ok_or_else(|| {
            format!("test_runner is not configured: add agents/test_runner.yaml with `{section}: {{{key}: {{command: [...]}}}}`")
        })?;
        let entries = config.get(section).and_then(Value::as_object);
        entries.and_then(|e| e.get(key)).ok_or_else(|| {
            let known: Vec<&str> = entries
                .map(|e| e.keys().map(String::as_str).collect())
                .unwrap_or_default();
            format!(
                "test_runner has no {} `{key}` (configured: {}): add it under `{section}` in its Agent manifest",
                section.trim_end_matches('s'),
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            )
        })
    }
}

impl Agent for TestRunner {
    fn execute_action(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        context: &StepContext<'_>,
    ) -> Outcome {
        match action {
            "setup_environment" => {
                let Some(environment) = parameters.get("environment").and_then(Value::as_str)
                else {
                    return Outcome::failed("setup_environment needs the parameter `environment`");
                };
                let entry = match Self::configured(context, "environments", environment) {
                    Ok(entry) => entry,
                    Err(err) => return Outcome::failed(err),
                };
                let mut env = match context.env_of(entry) {
                    Ok(env) => env,
                    Err(err) => return Outcome::failed(err),
                };
                env.push(("ORCHESTRATOR_ENVIRONMENT".into(), environment.to_owned()));
                let working_dir = entry.get("working_dir").and_then(Value::as_str);
                match context.run(&entry["command"], &env, working_dir) {
                    Ok(result) => Outcome::from_process(&result),
                    Err(err) => Outcome::failed(err),
                }
            }
            "run_tests" => {
                let Some(suite) = parameters.get("test_suite").and_then(Value::as_str) else {
                    return Outcome::failed("run_tests needs the parameter `test_suite`");
                };
                let entry = match Self::configured(context, "suites", suite) {
                    Ok(entry) => entry,
                    Err(err) => return Outcome::failed(err),
                };
                let mut command = entry["command"].clone();
                if parameters.get("parallel").and_then(Value::as_bool) == Some(true) {
                    if let (Value::Array(argv), Some(extra)) = (
                        &mut command,
                        entry.get("parallel_args").and_then(Value::as_array),
                    ) {
                        argv.extend(extra.iter().cloned());
                    }
                }
                let working_dir = entry.get("working_dir").and_then(Value::as_str);
                let junit = entry
                    .get("junit")
                    .and_then(Value::as_str)
                    .map(|path| context.cwd(working_dir).join(path));
                let mut env = match context.env_of(entry) {
                    Ok(env) => env,
                    Err(err) => return Outcome::failed(err),
                };
                env.push(("ORCHESTRATOR_TEST_SUITE".into(), suite.to_owned()));
                if let Some(tags) = parameters.get("tags") {
                    env.push((
                        "ORCHESTRATOR_TEST_TAGS".into(),
                        crate::spec::params::env_value(tags),
                    ));
                }
                if let Some(path) = &junit {
                    // A report left by an earlier run must not pass for this one's.
                    let _ = fs::remove_file(path);
                    env.push(("ORCHESTRATOR_JUNIT".into(), path.display().to_string()));
                }
                let result = match context.run(&command, &env, working_dir) {
                    Ok(result) => result,
                    Err(err) => return Outcome::failed(err),
                };
                let mut outcome = Outcome::from_process(&result);
                if let Some(path) = junit {
                    match fs::read_to_string(&path) {
                        Ok(xml) => match parse_junit(&xml) {
                            Ok(cases) => outcome.tests = cases,
                            Err(err) => context.note(&format!("{}: {err}", path.display())),
                        },
                        Err(err) => {
                            context.note(&format!("no JUnit report at {}: {err}", path.display()))
                        }
                    }
                    outcome.artifacts.push(relative(context.project_dir, &path));
                }
                let summary = TestSummary::of(&outcome.tests);
                if summary.total > 0 {
                    let text = format!(
                        "{} tests: {} passed, {} failed, {} errors, {} skipped",
                        summary.total,
                        summary.passed,
                        summary.failed,
                        summary.errors,
                        summary.skipped
                    );
                    context.note(&text);
                    if outcome.status == Some(Status::Succeeded) {
                        outcome.message = Some(text);
                    } else if outcome.status == Some(Status::Failed) {
                        outcome.message = Some(format!(
                            "{} ({})",
                            text,
                            outcome.message.take().unwrap_or_default()
                        ));
                    }
                    outcome
                        .outputs
                        .insert("tests_total".into(), json!(summary.total));
                    outcome.outputs.insert(
                        "tests_failed".into(),
                        json!(summary.failed + summary.errors),
                    );
                }
                outcome
            }
            other => Outcome::failed(format!(
                "test_runner has no action `{other}` (it has: setup_environment, run_tests)"
            )),
        }
    }
}

fn relative(base: &Path, path: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `report_generator`: HTML (detailed or summary), JUnit and JSON reports of the run so far,
/// written to `reports/<run-id>/`. The engine writes them again once the run's state is
/// final (see [`write_report`]), so a finished run's reports say how it ended.
struct ReportGenerator;

impl Agent for ReportGenerator {
    fn execute_action(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        context: &StepContext<'_>,
    ) -> Outcome {
        let Some(data) = context.reports else {
            return Outcome::failed("no run data to report on");
        };
        let shown = match write_report(
            action,
            parameters,
            data,
            context.reports_dir,
            context.project_dir,
        ) {
            Ok(shown) => shown,
            Err(err) => return Outcome::failed(err),
        };
        context.note(&format!("wrote {shown}"));
        let mut outputs = Map::new();
        outputs.insert("report".into(), Value::from(shown.clone()));
        Outcome {
            status: Some(Status::Succeeded),
            message: Some(format!("wrote {shown}")),
            outputs,
            artifacts: vec![shown],
            ..Outcome::default()
        }
    }
}

/// Writes the report a `report_generator` action makes of `data.current` into
/// `<reports_dir>/<run-id>/` and returns its path relative to the project (absolute when
/// the reports lie outside it). The error says what could not be done.
pub fn write_report(
    action: &str,
    parameters: &Map<String, Value>,
    data: &ReportData,
    reports_dir: &Path,
    project_dir: &Path,
) -> Result<String, String> {
    let current = RunView {
        run: &data.current.0,
        steps: &data.current.1,
    };
    let previous = data
        .previous
        .as_ref()
        .map(|(run, steps)| RunView { run, steps });
    let dir = reports_dir.join(&current.run.id);
    fs::create_dir_all(&dir).map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (file, content) = match action {
        "generate_html_report" => {
            let name = parameters
                .get("template")
                .and_then(Value::as_str)
                .unwrap_or("detailed");
            let Some(template) = HtmlTemplate::parse(name) else {
                return Err(format!(
                    "unknown report template `{name}`: expected detailed or summary"
                ));
            };
            (
                "report.html",
                report::render_html(&current, previous.as_ref(), template, &now),
            )
        }
        "generate_junit_report" => ("junit.xml", report::render_junit(&current)),
        "generate_json_report" => (
            "report.json",
            serde_json::to_string_pretty(&report::render_json(&current)).unwrap_or_default(),
        ),
        other => {
            return Err(format!(
                "report_generator has no action `{other}` (it has: generate_html_report, generate_junit_report, generate_json_report)"
            ))
        }
    };
    let path = dir.join(file);
    // Written whole beside the report and renamed over it: a reader sees the old report or
    // the new one, never half of one.
    let partial = dir.join(format!(".{file}.partial"));
    fs::write(&partial, content)
        .and_then(|()| fs::rename(&partial, &path))
        .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    Ok(relative(project_dir, &path))
}

/// `http`: `request` with method, url, headers and body, checking the response against
/// `expect` (status, body_contains, json pointers).
struct Http;

impl Agent for Http {
    fn execute_action(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        context: &StepContext<'_>,
    ) -> Outcome {
        if action != "request" {
            return Outcome::failed(format!("http has no action `{action}` (it has: request)"));
        }
        let Some(url) = parameters.get("url").and_then(Value::as_str) else {
            return Outcome::failed("http request needs the parameter `url`");
        };
        let method = parameters
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_uppercase();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(context.timeout.unwrap_or(Duration::from_secs(30))))
            .http_status_as_error(false)
            .build()
            .into();
        let mut request = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(url);
        if let Some(headers) = parameters.get("headers").and_then(Value::as_object) {
            for (name, value) in headers {
                request = request.header(name, crate::spec::params::env_value(value));
            }
        }
        let body = match parameters.get("body") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(text)) => text.clone().into_bytes(),
            Some(other) => {
                request = request.header("content-type", "application/json");
                other.to_string().into_bytes()
            }
        };
        let request = match request.body(body) {
            Ok(request) => request,
            Err(err) => return Outcome::failed(format!("bad request: {err}")),
        };
        context.note(&format!("{method} {url}"));
        let started = std::time::Instant::now();
        let mut response = match agent.run(request) {
            Ok(response) => response,
            Err(err) => return Outcome::failed(format!("{method} {url}: {err}")),
        };
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .unwrap_or_default();
        context.note(&format!(
            "HTTP {status} in {} ms, {} bytes",
            started.elapsed().as_millis(),
            text.len()
        ));
        let mut outputs = Map::new();
        outputs.insert("status".into(), json!(status));
        outputs.insert(
            "body".into(),
            Value::from(text.chars().take(65536).collect::<String>()),
        );
        let expect = parameters.get("expect").and_then(Value::as_object);
        let mut problems = Vec::new();
        let expected_status = expect.and_then(|e| e.get("status")).and_then(Value::as_u64);
        match expected_status {
            Some(expected) if u64::from(status) != expected => {
                problems.push(format!("expected status {expected}, got {status}"))
            }
            None if status >= 400 => problems.push(format!("got status {status}")),
            _ => {}
        }
        if let Some(needle) = expect
            .and_then(|e| e.get("body_contains"))
            .and_then(Value::as_str)
        {
            if !text.contains(needle) {
                problems.push(format!("body does not contain `{needle}`"));
            }
        }
        if let Some(pointers) = expect
            .and_then(|e| e.get("json"))
            .and_then(Value::as_object)
        {
            match serde_json::from_str::<Value>(&text) {
                Ok(document) => {
                    for (pointer, expected) in pointers {
                        let actual = document.pointer(pointer);
                        if actual != Some(expected) {
                            problems.push(format!(
                                "{pointer}: expected {expected}, got {}",
                                actual.map_or("nothing".to_owned(), Value::to_string)
                            ));
                        }
                    }
                }
                Err(err) => problems.push(format!("body is not JSON: {err}")),
            }
        }
        for problem in &problems {
            context.note(problem);
        }
        Outcome {
            status: Some(if problems.is_empty() {
                Status::Succeeded
            } else {
                Status::Failed
            }),
            message: Some(if problems.is_empty() {
                format!("{method} {url}: {status}")
            } else {
                problems.join("; ")
            }),
            outputs,
            ..Outcome::default()
        }
    }
}

/// `exec` plugins: the Agent manifest's `command` gets `{"action", "parameters", "run"}` as
/// JSON on stdin and answers `{"status", "outputs", "message"}` on stdout; its stderr goes
/// to the agent's log.
struct Exec;

impl Agent for Exec {
    fn execute_action(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        context: &StepContext<'_>,
    ) -> Outcome {
        let Some(command) = context.config.and_then(|c| c.get("command")) else {
            return Outcome::failed("exec agent has no `command` in its manifest");
        };
        let argv = match argv_of(command) {
            Ok(argv) => argv,
            Err(err) => return Outcome::failed(err),
        };
        let request = json!({
            "action": action,
            "parameters": parameters,
            "run": {"id": context.run_id, "workflow_id": context.workflow_id, "step": context.step},
        });
        if let Some(parent) = context.agent_log.parent() {
            let _ = fs::create_dir_all(parent);
        }
        // The agent's log is shared by its steps and not capped as a step's log is.
        let agent_log = match StepLog::open(context.agent_log, u64::MAX) {
            Ok(log) => Arc::new(log),
            Err(err) => {
                return Outcome::failed(format!(
                    "cannot open {}: {err}",
                    context.agent_log.display()
                ))
            }
        };
        let working_dir = context
            .config
            .and_then(|c| c.get("working_dir"))
            .and_then(Value::as_str);
        let mut env = context.env.to_vec();
        if let Some(config) = context.config {
            match context.env_of(config) {
                Ok(vars) => env.extend(vars),
                Err(err) => return Outcome::failed(err),
            }
        }
        agent_log.add_secrets(context.log.secrets().values().iter().cloned());
        let spec = ProcessSpec {
            argv,
            env,
            cwd: context.cwd(working_dir),
            stdin: Some(request.to_string().into_bytes()),
            capture_stdout: true,
            cookie_prefix: context.cookie_prefix(),
        };
        let result = match run_process(&spec, &agent_log, context.control) {
            Ok(result) => result,
            Err(err) => return Outcome::failed(err.to_string()),
        };
        let mut outcome = Outcome::from_process(&result);
        if result.stopped.is_some() {
            return outcome;
        }
        let stdout = String::from_utf8_lossy(&result.stdout);
        let answer = stdout
            .lines()
            .rev()
            .find(|line| line.trim_start().starts_with('{'))
            .and_then(|line| serde_json::from_str::<Value>(line).ok());
        let Some(answer) = answer else {
            outcome.status = Some(Status::Failed);
            outcome.message = Some(format!(
                "the plugin did not answer with a JSON object on stdout ({}); it printed: {}",
                result.describe(),
                stdout.trim().chars().take(200).collect::<String>()
            ));
            return outcome;
        };
        let status = match answer.get("status").and_then(Value::as_str) {
            Some("succeeded" | "success" | "ok") => Status::Succeeded,
            Some("failed" | "failure" | "error") => Status::Failed,
            other => {
                outcome.status = Some(Status::Failed);
                outcome.message = Some(format!(
                    "the plugin answered status {}: expected \"succeeded\" or \"failed\"",
                    other.map_or("(none)".to_owned(), |s| format!("\"{s}\""))
                ));
                return outcome;
            }
        };
        let answered = answer
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if result.success() || status == Status::Failed {
            outcome.status = Some(status);
            outcome.message = answered.or(outcome.message);
        } else {
            // A plugin that exits non-zero failed, whatever it answered: say both.
            outcome.status = Some(Status::Failed);
            outcome.message = Some(match answered {
                Some(text) => format!(
                    "the plugin ended with {} (it answered: {text})",
                    result.describe()
                ),
                None => format!("the plugin failed with {}", result.describe()),
            });
        }
        outcome.outputs = answer
            .get("outputs")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        outcome
    }
}
