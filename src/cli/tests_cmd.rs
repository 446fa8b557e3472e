//! `orchestrator tests ...`: what the orchestrator knows about a workflow's tests.
//! `tests quarantine suggest` is `tests_quarantine.rs`'s.

use anyhow::Result;
use clap::Subcommand;

use super::tests_quarantine;
use super::Context;

/// The `tests` commands.
#[derive(Debug, Subcommand)]
pub enum TestsCommand {
    /// Quarantine manifests for flaky tests (`tests quarantine suggest`).
    #[command(subcommand)]
    Quarantine(tests_quarantine::QuarantineCommand),
}

/// Runs a `tests` command.
pub fn run(context: &Context, command: &TestsCommand) -> Result<u8> {
    context.init_logging(true)?;
    match command {
        TestsCommand::Quarantine(command) => tests_quarantine::run(context, command),
    }
}
