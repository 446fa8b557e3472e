//! `schedule list | show ID | create NAME CRON WORKFLOW_ID | next CRON`: cron schedules.

use anyhow::Result;
use clap::Subcommand;

use super::schedule_next::{self, NextArgs};
use super::Context;

/// `schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Print the next fire times of a cron expression.
    Next(NextArgs),
}

/// Runs a `schedule` subcommand.
pub fn run(context: &Context, command: &ScheduleCommand) -> Result<u8> {
    match command {
        ScheduleCommand::Next(args) => schedule_next::run(context, args),
    }
}
