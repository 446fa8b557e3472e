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

/// The engine's settings from the configuration, with the local executor: what
/// `orchestrator start`, `workflow execute` and the tests' in-process server use.
pub fn engine_config(config: &LoadedConfig, data_dir: PathBuf) -> EngineConfig {
    EngineConfig::from_config(config, data_dir, |agent_switches, agent_logs| {
        Arc::new(LocalExecutor::new(LocalSettings {
            project_dir: config.project_dir.clone(),
            log_dir: config.resolve(&config.config.logging.dir),
            reports_dir: config.resolve(&config.config.reports_dir),
            max_log_bytes: config.config.runs.max_log_bytes,
            agent_logs: Arc::clone(agent_logs),
            agent_switches: Arc::clone(agent_switches),
        }))
    })
}

impl Executor for LocalExecutor {
    fn start(&self, attempt: StepAttempt, events: Sender<AttemptMessage>) -> Arc<dyn AttemptStop> {
        let control = StepControl::new();
        let job = AttemptJob {
            settings: Arc::clone(&self.settings),
            control: Arc::clone(&control),
            attempt,
            events,
        };
        std::thread::spawn(move || job.run());
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
        let Some(agent) = agent_for(&attempt.agent, attempt.agent_config.as_ref()) else {
            let known: Vec<&str> = BUILTIN_AGENTS.iter().map(|a| a.name).collect();
            return failed_before_start(format!(
                "no agent `{}`: expected {} or an Agent manifest",
                attempt.agent,
                known.join(", ")
            ));
        };
        // A disabled agent is waited for once, before the step's first attempt.
        if attempt.number == 1 {
            if let Some(outcome) = self.wait_for_agent(log) {
                return AttemptFinished {
                    outcome,
                    attempt: None,
                };
            }
        }
        let spec = &attempt.spec;
        let substituted = spec
            .get("parameters")
            .map(|p| expand::substitute(p, &attempt.scope))
            .transpose()
            .and_then(|p| {
                let command = spec
                    .get("command")
                    .map(|c| expand::substitute(c, &attempt.scope))
                    .transpose()?;
                Ok((p, command))
            });
        let (parameters, command) = match substituted {
            Ok((p, c)) => (
                p.and_then(|p| p.as_object().cloned()).unwrap_or_default(),
                c,
            ),
            Err(err) => return failed_before_start(err),
        };
        let mut declared = attempt.env.to_vec();
        declared.push((
            "ORCHESTRATOR_STEP".into(),
            EnvValue::Literal(attempt.step.clone()),
        ));
        declared.push((
            "ORCHESTRATOR_OUTPUT".into(),
            EnvValue::Literal(outputs_path.display().to_string()),
        ));
        if let Some(vars) = spec.get("env").and_then(Value::as_object) {
            for (name, raw) in vars {
                // `{{ }}` is substituted in literals only, and its result stays a literal:
                // a parameter (a webhook's payload, say) never picks a secret or a server
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
        let env = match env::resolve(&declared, &settings.project_dir) {
            Ok(resolved) => {
                log.add_secrets(resolved.secrets);
                resolved.vars
            }
            Err(err) => {
                log.note(&err);
                return failed_before_start(err);
            }
        };
        let agent_log = settings
            .log_dir
            .join("agents")
            .join(format!("{}.log", log_name(&attempt.agent)));
        settings.agent_logs.make_room(&agent_log);

        let number = attempt.number;
        let started_at = now();
        let started = Instant::now();
        self.send(AttemptEvent::Started { at: started });
        let _ = fs::remove_file(outputs_path);
        let context = StepContext {
            run_id: &attempt.run_id,
            workflow_id: &attempt.workflow_id,
            step: &attempt.step,
            project_dir: &settings.project_dir,
            reports_dir: &settings.reports_dir,
            agent_log: &agent_log,
            log,
            env: &env,
            command: command.as_ref(),
            working_dir: spec.get("working_dir").and_then(Value::as_str),
            config: attempt.agent_config.as_ref(),
            control: &self.control,
            timeout: attempt.timeout,
            reports: attempt.reports.as_deref(),
        };
        if attempt.attempts > 1 {
            context.note(&format!("attempt {number} of {}", attempt.attempts));
        }
        let mut outcome = agent.execute_action(&attempt.action, &parameters, &context);
        if let Some(reason) = self.control.stopped() {
            outcome.status = Some(match reason {
                StopReason::Timeout => Status::TimedOut,
                StopReason::Cancel => Status::Cancelled,
            });
            if outcome.message.is_none() || reason == StopReason::Timeout {
                outcome.message = Some(match reason {
                    StopReason::Timeout => format!(
                        "timed out after {}; its process group was killed",
                        crate::duration::format_duration(attempt.timeout.unwrap_or_default())
                    ),
                    StopReason::Cancel => "cancelled".into(),
                });
            }
        }
        for (key, value) in read_outputs(outputs_path) {
            outcome.outputs.insert(key, Value::from(value));
        }
        let leftovers = self.control.take_leftovers();
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
        // Secret values never reach a record: what an agent or the step wrote back is
        // masked as its log is.
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
        let usage = self.control.take_usage();
        let record = Attempt {
            number,
            status: outcome.status.unwrap_or(Status::Failed),
            started_at,
            finished_at: now(),
            duration_ms: started.elapsed().as_millis() as u64,
            exit_code: outcome.exit_code,
            message: outcome.message.clone(),
            cpu_seconds: usage.map(|u| u.cpu_seconds),
            max_rss_bytes: usage.map(|u| u.max_rss_bytes),
            orphans_killed: (leftovers > 0).then_some(leftovers),
        };
        AttemptFinished {
            outcome,
            attempt: Some(record),
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A step that failed before its attempt started: nothing ran, `message` says why.
fn failed_before_start(message: String) -> AttemptFinished {
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
