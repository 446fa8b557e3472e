//! `tests`: every test case's history — the lists (`tests list`) and one test's timeline
//! (`tests show`) in `tests_list.rs`.

use anyhow::Result;
use clap::Subcommand;

use super::{tests_list, Context};

/// `tests` subcommands.
#[derive(Debug, Subcommand)]
pub enum TestsCommand {
    /// List tests by what their history says: flaky, failing, new failures, slowest,
    /// quarantined.
    List(tests_list::ListArgs),
    /// Show a test: its record, the Quarantine entry covering it, and its timeline across
    /// runs and revisions.
    Show(tests_list::ShowArgs),
}

impl TestsCommand {
    /// Whether the subcommand only reads.
    pub fn is_read_only(&self) -> bool {
        matches!(self, TestsCommand::List(_) | TestsCommand::Show(_))
    }
}

/// Runs a `tests` subcommand.
pub fn run(context: &Context, command: &TestsCommand) -> Result<u8> {
    context.init_logging(true)?;
    match command {
        TestsCommand::List(args) => tests_list::list(context, args),
        TestsCommand::Show(args) => tests_list::show(context, args),
    }
}
