//! The engine's settings read from the configuration, the same for `orchestrator start`,
//! `workflow execute` and tests that assemble a server in-process.

use std::path::PathBuf;
use std::sync::Arc;

use super::admission::{AgentSwitches, RunAdmission};
use super::agent_logs::AgentLogs;
use super::executor::Executor;
use super::run::EngineConfig;
use crate::config::LoadedConfig;

impl EngineConfig {
    /// The settings of `config`, with the data directory in use and the executor
    /// `executor` builds over the agent switches and agent logs it shares with the engine
    /// (the engine constructs no executor of its own: see `agents::local::engine_config`).
    pub fn from_config(
        config: &LoadedConfig,
        data_dir: PathBuf,
        executor: impl FnOnce(&Arc<AgentSwitches>, &Arc<AgentLogs>) -> Arc<dyn Executor>,
    ) -> EngineConfig {
        let agent_switches = AgentSwitches::new();
        let agent_logs = AgentLogs::new(config.config.logging.rotation());
        EngineConfig {
            executor: executor(&agent_switches, &agent_logs),
            history: Arc::default(),
            detach_remote: Arc::default(),
            tests: config.config.tests,
            project_dir: config.project_dir.clone(),
            log_dir: config.resolve(&config.config.logging.dir),
            reports_dir: config.resolve(&config.config.reports_dir),
            data_dir,
            history_limit: config.config.runs.history_limit as usize,
            max_parallel: config.config.runs.max_parallel as usize,
            admission: RunAdmission::new(),
            agent_switches,
            max_log_bytes: config.config.runs.max_log_bytes,
            agent_logs,
            git_source_path: config
                .config
                .source
                .as_ref()
                .and_then(|s| s.git.as_ref())
                .map(|git| PathBuf::from(git.path.as_deref().unwrap_or("."))),
        }
    }
}
