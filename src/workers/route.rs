//! Which executor runs an attempt: with workers configured, a step with `runs_on` goes to
//! the [`Dispatcher`]; everything else, report steps always among it, runs on this
//! machine through the local executor.

use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::dispatch::Dispatcher;
use crate::agents::local::{LocalExecutor, LocalSettings};
use crate::config::LoadedConfig;
use crate::engine::executor::{AttemptMessage, AttemptStop, Executor, ReportData, StepAttempt};
use crate::engine::run::EngineConfig;

/// The local executor, and the dispatcher when workers are configured.
#[derive(Debug)]
pub struct Routing {
    local: LocalExecutor,
    remote: Option<Arc<Dispatcher>>,
}

impl Executor for Routing {
    fn start(&self, attempt: StepAttempt, events: Sender<AttemptMessage>) -> Arc<dyn AttemptStop> {
        match &self.remote {
            Some(remote) if attempt.placement.is_some() && attempt.reports.is_none() => {
                remote.start(attempt, events)
            }
            _ => self.local.start(attempt, events),
        }
    }

    fn adopt(
        &self,
        attempt: StepAttempt,
        events: Sender<AttemptMessage>,
    ) -> Option<Arc<dyn AttemptStop>> {
        match &self.remote {
            Some(remote) if attempt.placement.is_some() && attempt.reports.is_none() => {
                Some(remote.adopt(attempt, events))
            }
            _ => None,
        }
    }

    fn rewrite_report(
        &self,
        action: &str,
        parameters: &Map<String, Value>,
        data: &ReportData,
    ) -> Result<(), String> {
        self.local.rewrite_report(action, parameters, data)
    }
}

/// The engine's settings with the local executor, and `remote` for steps with `runs_on`
/// when given: what `orchestrator start` uses.
pub fn engine_config(
    config: &LoadedConfig,
    data_dir: PathBuf,
    remote: Option<Arc<Dispatcher>>,
) -> EngineConfig {
    EngineConfig::from_config(config, data_dir, |agent_switches, agent_logs| {
        Arc::new(Routing {
            local: LocalExecutor::new(LocalSettings::from_config(
                config,
                agent_switches,
                agent_logs,
            )),
            remote,
        })
    })
}
