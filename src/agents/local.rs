//! The local executor: [`LocalExecutor`] runs each step attempt the engine hands it in a
//! thread of this process, through the built-in agents and `exec` plugins
//! ([`super::runtime`]), as processes of this machine (`engine::process`). An attempt:
//! the step's log opened (appended to, masked, capped), its agent found and, for a first
//! attempt, waited for when switched off with `when_disabled: wait`; `{{ }}` substituted
//! in its parameters, command and literal `env:` values; its environment and secrets
//! resolved; its agent run; its outputs read; what it hands back masked. The engine
//! decides everything around it (retries, timeouts, cancel, records).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::runtime::{agent_for, write_report, StepContext};

use crate::config::LoadedConfig;
use crate::engine::admission::AgentSwitches;
use crate::engine::agent_logs::AgentLogs;
use crate::engine::env::{self, EnvValue};
use crate::engine::executor::{
    AttemptEvent, AttemptFinished, AttemptMessage, AttemptStop, Executor, Outcome, ReportData,
    StepAttempt, StopReason,
};
use crate::engine::expand;
use crate::engine::mask::StepLog;
use crate::engine::process::StepControl;
use crate::engine::run::{log_name, EngineConfig};
use crate::engine::threads::STEP_THREADS;
use crate::model::{Attempt, Status};
use crate::spec::agents::BUILTIN_AGENTS;
use crate::spec::params;

/// Where the local executor's steps run and write, and what it shares with the engine.
#[derive(Debug)]
pub struct LocalSettings {
    /// The project directory: default working directory of steps.
    pub project_dir: PathBuf,
    /// `logs/`: step logs under `workflows/<run>/`, agent logs under `agents/`.
    pub log_dir: PathBuf,
    /// `reports/`.
    pub reports_dir: PathBuf,
    /// The most bytes a step's log holds.
    pub max_log_bytes: u64,
    /// The agents' own logs.
    pub agent_logs: Arc<AgentLogs>,
    /// Agents switched off or on while the process runs.
    pub agent_switches: Arc<AgentSwitches>,
}

/// Runs attempts as processes of this machine, one thread per attempt.
#[derive(Debug)]
pub struct LocalExecutor {
    settings: Arc<LocalSettings>,
}

impl LocalExecutor {
    /// An executor with these settings.
    pub fn new(settings: LocalSettings) -> LocalExecutor {
        LocalExecutor {
            settings: Arc::new(settings),
        }
    }
}

impl LocalSettings {
    /// The settings a configuration gives, sharing the engine's agent switches and logs.
    pub fn from_config(
        config: &LoadedConfig,
        agent_switches: &Arc<AgentSwitches>,
        agent_logs: &Arc<AgentLogs>,
    ) -> LocalSettings {
        LocalSettings {
            project_dir: config.project_dir.clone(),
            log_dir: config.resolve(&config.config.logging.dir),
            reports_dir: config.resolve(&config.config.reports_dir),
            max_log_bytes: config.config.runs.max_log_bytes,
            agent_logs: Arc::clone(agent_logs),
            agent_switches: Arc::clone(agent_switches),
        }
    }
}

/// The engine's settings from the configuration, with the local executor: what
/// `workflow execute` and the tests' in-process server use.
pub fn engine_config(config: &LoadedConfig, data_dir: PathBuf) -> EngineConfig {
    EngineConfig::from_config(config, data_dir, |agent_switches, agent_logs| {
        Arc::new(LocalExecutor::new(LocalSettings::from_config(
            config,
            agent_switches,
            agent_logs,
        )))
    })
}

impl Executor for LocalExecutor {
    fn start(&self, attempt: StepAttempt, events: Sender<AttemptMessage>) -> Arc<dyn AttemptStop> {
        let control = StepControl::new();
        let (index, number) = (attempt.index, attempt.number);
        let job = AttemptJob {
            settings: Arc::clone(&self.settings),
            control: Arc::clone(&control),
            attempt,
            events: events.clone(),
        };
        if let Err(err) = STEP_THREADS.run("step attempt", move || job.run()) {
            let finished = failed_before_start(format!("cannot start a thread: {err}"));
            let _ = events.send(AttemptMessage {
                index,
                number,
                event: AttemptEvent::Finished(Box::new(finished)),
            });
        }
        control
    }

    fn rewrite_report(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        data: &ReportData,
    ) -> Result<(), String> {
        write_report(
            action,
            parameters,
            data,
            &self.settings.reports_dir,
            &self.settings.project_dir,
        )
        .map(drop)
    }
}

impl AttemptStop for StepControl {
    fn stop(self: Arc<Self>, reason: StopReason) {
        StepControl::stop(&self, reason);
    }
}

/// One attempt, in its thread.
struct AttemptJob {
    settings: Arc<LocalSettings>,
    control: Arc<StepControl>,
    attempt: StepAttempt,
    events: Sender<AttemptMessage>,
}

impl AttemptJob {
    fn run(self) {
        let finished = self.execute();
        self.send(AttemptEvent::Finished(Box::new(finished)));
    }

    fn send(&self, event: AttemptEvent) {
        let _ = self.events.send(AttemptMessage {
            index: self.attempt.index,
            number: self.attempt.number,
            event,
        });
    }

    fn execute(&self) -> AttemptFinished {
        let log_path = self.settings.log_dir.join(&self.attempt.log);
        let outputs_path = log_path.with_extension("outputs");
        match StepLog::open(&log_path, self.settings.max_log_bytes) {
            Ok(log) => self.execute_logged(&Arc::new(log), &outputs_path),
            Err(err) => failed_before_start(format!("cannot open {}: {err}", log_path.display())),
        }
    }

    /// Whether the step's agent takes work; when it is disabled, fails the step or waits for
    /// the agent as its manifest's `when_disabled` says (a wait ends with a cancel or the
    /// step's timeout). `None` when the step may go ahead.
    fn wait_for_agent(&self, log: &StepLog) -> Option<Outcome> {
        let agent = &self.attempt.agent;
        let config = self.attempt.agent_config.as_ref();
        let manifest_enabled = config
            .and_then(|c| c.get("enabled"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let switches = &self.settings.agent_switches;
        if switches.enabled(agent, manifest_enabled) {
            return None;
        }
        let why = if manifest_enabled {
            "stopped"
        } else {
            "disabled: enabled: false in its manifest"
        };
        let waits = config
            .and_then(|c| c.get("when_disabled"))
            .and_then(Value::as_str)
            == Some("wait");
        if !waits {
            return Some(Outcome {
                status: Some(Status::Failed),
                message: Some(format!(
                    "agent `{agent}` is {why}; its steps fail while it is (set `when_disabled: wait` in its manifest to have them wait)"
                )),
                ..Outcome::default()
            });
        }
        log.note(&format!(
            "waiting for agent `{agent}` ({why}) to be enabled (when_disabled: wait)"
        ));
        loop {
            if let Some(reason) = self.control.stopped() {
                let (status, message) = match reason {
                    StopReason::Timeout => (
                        Status::TimedOut,
                        format!("timed out waiting for agent `{agent}` to be enabled"),
                    ),
                    StopReason::Cancel => (
                        Status::Cancelled,
                        format!("cancelled while waiting for agent `{agent}` to be enabled"),
                    ),
                };
                return Some(Outcome {
                    status: Some(status),
                    message: Some(message),
                    ..Outcome::default()
                });
            }
            if switches.wait_enabled(agent, manifest_enabled, Duration::from_millis(100)) {
                log.note(&format!("agent `{agent}` is enabled again"));
                return None;
            }
        }
    }

    fn execute_logged(&self, log: &Arc<StepLog>, outputs_path: &Path) -> AttemptFinished {
        let attempt = &self.attempt;
        let settings = &self.settings;
        if agent_for(&attempt.agent, attempt.agent_config.as_ref()).is_none() {
            return unknown_agent(&attempt.agent);
        }
        // A disabled agent is waited for once, before the step's first attempt.
        if attempt.number == 1 {
            if let Some(outcome) = self.wait_for_agent(log) {
                return AttemptFinished {
                    outcome,
                    attempt: None,
                };
            }
        }
        let prepared = match prepare(attempt, &settings.project_dir) {
            Ok(prepared) => prepared,
            Err(err) => {
                log.note(&err);
                return failed_before_start(err);
            }
        };
        let place = Place {
            project_dir: &settings.project_dir,
            reports_dir: &settings.reports_dir,
            log_dir: &settings.log_dir,
            agent_logs: &settings.agent_logs,
            worker: None,
        };
        run_prepared(
            &prepared,
            &place,
            log,
            outputs_path,
            &self.control,
            attempt.reports.as_deref(),
            || {
                if attempt.timeout.is_some() {
                    self.send(AttemptEvent::Started { at: Instant::now() });
                }
            },
        )
    }
}

/// An attempt made ready to run anywhere: `{{ }}` substituted in its parameters, command
/// and literal `env:` values, its environment resolved (secret values among them, and
/// listed for masking). What a worker receives.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreparedStep {
    /// The run.
    pub run_id: String,
    /// The run's workflow.
    pub workflow_id: String,
    /// The step's name.
    pub step: String,
    /// The attempt's number, from 1.
    pub number: u32,
    /// Attempts the step may make in all.
    pub attempts: u32,
    /// The step's agent.
    pub agent: String,
    /// The action asked of it.
    pub action: String,
    /// Its parameters, substituted.
    pub parameters: Map<String, Value>,
    /// Its own command, substituted.
    pub command: Option<Value>,
    /// Its environment, resolved.
    pub env: Vec<(String, String)>,
    /// The secret values among `env`, masked wherever the step's output goes.
    pub secrets: Vec<String>,
    /// Its `working_dir`.
    pub working_dir: Option<String>,
    /// The Agent manifest configuring its agent, if any.
    pub agent_config: Option<Value>,
    /// Its time limit, in milliseconds.
    pub timeout_ms: Option<u64>,
}

/// Substitutes and resolves an attempt where the run lives: secrets are read from
/// `project_dir` and the process environment.
pub fn prepare(attempt: &StepAttempt, project_dir: &Path) -> Result<PreparedStep, String> {
    let spec = &attempt.spec;
    let parameters = spec
        .get("parameters")
        .map(|p| expand::substitute(p, &attempt.scope))
        .transpose()?
        .and_then(|p| p.as_object().cloned())
        .unwrap_or_default();
    let command = spec
        .get("command")
        .map(|c| expand::substitute(c, &attempt.scope))
        .transpose()?;
    let mut declared = attempt.env.to_vec();
    declared.push((
        "ORCHESTRATOR_STEP".into(),
        EnvValue::Literal(attempt.step.clone()),
    ));
    if let Some(vars) = spec.get("env").and_then(Value::as_object) {
        for (name, raw) in vars {
            // `{{ }}` is substituted in literals only, and its result stays a literal: a
            // parameter (a webhook's payload, say) never picks a secret or a server
            // variable to read.
            let value = match (raw, env::parse(raw)) {
                (Value::String(_), EnvValue::Literal(_)) => {
                    let substituted =
                        expand::substitute(raw, &attempt.scope).unwrap_or(raw.clone());
                    EnvValue::Literal(params::env_value(&substituted))
                }
                (_, parsed) => parsed,
            };
            declared.push((name.clone(), value));
        }
    }
    let resolved = env::resolve(&declared, project_dir)?;
    Ok(PreparedStep {
        run_id: attempt.run_id.clone(),
        workflow_id: attempt.workflow_id.clone(),
        step: attempt.step.clone(),
        number: attempt.number,
        attempts: attempt.attempts,
        agent: attempt.agent.clone(),
        action: attempt.action.clone(),
        parameters,
        command,
        env: resolved.vars,
        secrets: resolved.secrets,
        working_dir: spec
            .get("working_dir")
            .and_then(Value::as_str)
            .map(str::to_owned),
        agent_config: attempt.agent_config.clone(),
        timeout_ms: attempt.timeout.map(|t| t.as_millis() as u64),
    })
}

/// Where a prepared attempt runs: this machine's project directory, or a worker's
/// workspace holding the project at the run's revision.
#[derive(Debug)]
pub struct Place<'a> {
    /// The project (default working directory, base of relative paths).
    pub project_dir: &'a Path,
    /// Where reports go.
    pub reports_dir: &'a Path,
    /// Where agent logs go (under `agents/`).
    pub log_dir: &'a Path,
    /// The agents' own logs, rotated.
    pub agent_logs: &'a AgentLogs,
    /// The worker's name, recorded on the attempt; `None` on the controller.
    pub worker: Option<&'a str>,
}

/// Runs a prepared attempt: its agent found, `$ORCHESTRATOR_OUTPUT` set to
/// `outputs_path`, `started` called as the agent is about to run, its outputs read, what
/// it hands back masked.
pub fn run_prepared(
    prepared: &PreparedStep,
    place: &Place<'_>,
    log: &Arc<StepLog>,
    outputs_path: &Path,
    control: &StepControl,
    reports: Option<&ReportData>,
    started: impl FnOnce(),
) -> AttemptFinished {
    let Some(agent) = agent_for(&prepared.agent, prepared.agent_config.as_ref()) else {
        return unknown_agent(&prepared.agent);
    };
    log.add_secrets(prepared.secrets.clone());
    let mut env = prepared.env.clone();
    env.push((
        "ORCHESTRATOR_OUTPUT".into(),
        outputs_path.display().to_string(),
    ));
    let agent_log = place
        .log_dir
        .join("agents")
        .join(format!("{}.log", log_name(&prepared.agent)));
    place.agent_logs.make_room(&agent_log);

    let number = prepared.number;
    let timeout = prepared.timeout_ms.map(Duration::from_millis);
    let started_at = now();
    let started_instant = Instant::now();
    started();
    let _ = fs::remove_file(outputs_path);
    let context = StepContext {
        run_id: &prepared.run_id,
        workflow_id: &prepared.workflow_id,
        step: &prepared.step,
        project_dir: place.project_dir,
        reports_dir: place.reports_dir,
        agent_log: &agent_log,
        log,
        env: &env,
        command: prepared.command.as_ref(),
        working_dir: prepared.working_dir.as_deref(),
        config: prepared.agent_config.as_ref(),
        control,
        timeout,
        reports,
    };
    if prepared.attempts > 1 {
        context.note(&format!("attempt {number} of {}", prepared.attempts));
    }
    let mut outcome = agent.execute_action(&prepared.action, &prepared.parameters, &context);
    if let Some(reason) = control.stopped() {
        outcome.status = Some(match reason {
            StopReason::Timeout => Status::TimedOut,
            StopReason::Cancel => Status::Cancelled,
        });
        if outcome.message.is_none() || reason == StopReason::Timeout {
            outcome.message = Some(match reason {
                StopReason::Timeout => format!(
                    "timed out after {}; its process group was killed",
                    crate::duration::format_duration(timeout.unwrap_or_default())
                ),
                StopReason::Cancel => "cancelled".into(),
            });
        }
    }
    for (key, value) in read_outputs(outputs_path) {
        outcome.outputs.insert(key, Value::from(value));
    }
    let leftovers = control.take_leftovers();
    if leftovers > 0 {
        let note = format!(
            "{leftovers} process{} the step started outlived it and {} stopped",
            if leftovers == 1 { "" } else { "es" },
            if leftovers == 1 { "was" } else { "were" }
        );
        context.note(&note);
        outcome.message = Some(match outcome.message.take() {
            Some(message) => format!("{message}; {note}"),
            None => note,
        });
    }
    // Secret values never reach a record: what an agent or the step wrote back is masked
    // as its log is.
    let secrets = log.secrets();
    if !secrets.is_empty() {
        outcome.message = outcome.message.map(|m| secrets.mask_str(&m));
        for value in outcome.outputs.values_mut() {
            if let Value::String(text) = value {
                *text = secrets.mask_str(text);
            }
        }
        for case in &mut outcome.tests {
            for text in [&mut case.message, &mut case.details, &mut case.output]
                .into_iter()
                .flatten()
            {
                *text = secrets.mask_str(text);
            }
        }
    }
    let usage = control.take_usage();
    let record = Attempt {
        number,
        status: outcome.status.unwrap_or(Status::Failed),
        started_at,
        finished_at: now(),
        duration_ms: started_instant.elapsed().as_millis() as u64,
        exit_code: outcome.exit_code,
        message: outcome.message.clone(),
        cpu_seconds: usage.map(|u| u.cpu_seconds),
        max_rss_bytes: usage.map(|u| u.max_rss_bytes),
        orphans_killed: (leftovers > 0).then_some(leftovers),
        worker: place.worker.map(str::to_owned),
    };
    AttemptFinished {
        outcome,
        attempt: Some(record),
    }
}

fn unknown_agent(agent: &str) -> AttemptFinished {
    let known: Vec<&str> = BUILTIN_AGENTS.iter().map(|a| a.name).collect();
    failed_before_start(format!(
        "no agent `{agent}`: expected {} or an Agent manifest",
        known.join(", ")
    ))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A step that failed before its attempt started: nothing ran, `message` says why.
pub fn failed_before_start(message: String) -> AttemptFinished {
    AttemptFinished {
        outcome: Outcome {
            status: Some(Status::Failed),
            message: Some(message),
            ..Outcome::default()
        },
        attempt: None,
    }
}

/// `key=value` lines, and GitHub's `key<<DELIMITER` blocks, from a step's output file.
pub fn read_outputs(path: &Path) -> Vec<(String, String)> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut outputs = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((key, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            for body in lines.by_ref() {
                if body == delimiter {
                    break;
                }
                value.push(body);
            }
            outputs.push((key.trim().to_owned(), value.join("\n")));
        } else if let Some((key, value)) = line.split_once('=') {
            outputs.push((key.trim().to_owned(), value.to_owned()));
        }
    }
    outputs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_read_lines_and_delimited_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("step.outputs");
        fs::write(
            &path,
            "version=1.2\nnotes<<EOF\nline one\nline two\nEOF\nempty=\n",
        )
        .unwrap();
        assert_eq!(
            read_outputs(&path),
            [
                ("version".to_owned(), "1.2".to_owned()),
                ("notes".to_owned(), "line one\nline two".to_owned()),
                ("empty".to_owned(), String::new()),
            ]
        );
        assert!(read_outputs(&dir.path().join("missing")).is_empty());
    }
}
