//! The command line: clap types, the shared context every command gets, and dispatch. One
//! file per command group.

mod alert_cmd;
mod backend;
mod client;
mod config_cmd;
mod init;
mod manifests;
mod runs;
mod schedule_cmd;
mod schedule_next;
mod schemas_cmd;
pub mod server_cmd;
mod tests_cmd;
mod tests_list;
mod tests_quarantine;
mod trigger_cmd;
mod worker_cmd;
mod workflow;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{self, ConfigOptions, Environment, LoadedConfig};

/// Exit code: the command did what was asked and found nothing wrong.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran and found problems or differences.
pub const EXIT_FINDINGS: u8 = 1;
/// Exit code: the command could not do its job (usage, IO, store in use).
pub const EXIT_ERROR: u8 = 2;

/// Keep test automation in git: validate, diff and apply manifests of workflows, schedules,
/// alerts and triggers.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about, max_term_width = 100)]
pub struct Cli {
    /// Environment whose configuration to use.
    #[arg(
        long,
        short = 'e',
        global = true,
        value_enum,
        env = "ORCHESTRATOR_ENVIRONMENT"
    )]
    pub environment: Option<Environment>,
    /// Configuration file to use instead of config/<environment>.yaml. Given before the
    /// command (`orchestrator --config FILE status`): after it, `--config` belongs to the
    /// command, as in `workflow create NAME --config FILE`.
    #[arg(long, env = "ORCHESTRATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory holding the store (overrides storage.data_dir).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Project directory: where config/ and the manifest directories are.
    #[arg(long, short = 'C', global = true, default_value = ".")]
    pub project_dir: PathBuf,
    /// Debug logging on stderr and in the log file.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
    /// Never colour the output (NO_COLOR and a non-terminal output do the same).
    #[arg(long, global = true)]
    pub no_color: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats of listing commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// The arguments of a listing command that takes only an output format (`workflow list`,
/// `schedule list`, `trigger list`, `alert list`, `alert silences`).
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Scaffold a project: configuration for the four environments, manifest directories with
    /// working examples, and a .gitignore.
    Init(init::InitArgs),
    /// Check manifests against the schemas and the semantic rules; exit 1 on errors.
    Validate(manifests::ValidateArgs),
    /// Show what apply would change; exit 0 no differences, 1 differences, 2 error.
    Diff(manifests::DiffArgs),
    /// Apply manifests to the store.
    Apply(manifests::ApplyArgs),
    /// List the objects in the store.
    Get(manifests::GetArgs),
    /// Show or validate configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// List, show, create, render and execute workflows.
    #[command(subcommand)]
    Workflow(workflow::WorkflowCommand),
    /// List runs, show them, read their logs, cancel and re-run them.
    #[command(subcommand)]
    Run(runs::RunCommand),
    /// Cron schedules: list, show, create, and the next fire times of an expression.
    #[command(subcommand)]
    Schedule(schedule_cmd::ScheduleCommand),
    /// Webhook triggers: create, list, show, and what happened to their deliveries.
    #[command(subcommand)]
    Trigger(trigger_cmd::TriggerCommand),
    /// Alert rules: their state and notifications, and silences that mute them.
    #[command(subcommand)]
    Alert(alert_cmd::AlertCommand),
    /// Test results across runs: every test case's history (flaky, failing, new, slow and
    /// quarantined tests, one test's timeline), which suites a change affects (`tests
    /// affected`), and Quarantine manifests for flaky tests (`tests quarantine suggest`).
    #[command(subcommand)]
    Tests(tests_cmd::TestsCommand),
    /// Run the controller: watch the manifests, serve the API, WebSocket and dashboard.
    Start(server_cmd::StartArgs),
    /// Run a worker that takes step attempts over NATS (`--nats URL --name N --labels
    /// k=v,... --slots N`), or list, show, drain and resume the controller's workers.
    Worker(worker_cmd::WorkerArgs),
    /// Stop the server started for this data directory, gracefully.
    Stop,
    /// Whether a server runs, and its state; exit 0 running, 3 not running.
    Status(server_cmd::StatusArgs),
    /// The published JSON Schemas of manifests and configuration.
    #[command(subcommand)]
    Schemas(schemas_cmd::SchemasCommand),
    /// Print a shell completion script: `source <(orchestrator completion bash)`, or save it
    /// where the shell loads completions from (zsh: a `_orchestrator` file on $fpath; fish:
    /// ~/.config/fish/completions/orchestrator.fish).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Execute a queued run (what `workflow execute --detach` starts).
    #[command(name = "__run", hide = true)]
    RunQueued {
        /// The run id.
        run: String,
    },
}

impl Command {
    /// Whether the command only reads: it creates no data directory, store or log file
    /// (without a store it reads an empty one and says there is nothing yet).
    pub fn is_read_only(&self) -> bool {
        use alert_cmd::AlertCommand as A;
        use runs::RunCommand as R;
        use schedule_cmd::ScheduleCommand as S;
        use trigger_cmd::TriggerCommand as T;
        use workflow::WorkflowCommand as W;
        matches!(
            self,
            Command::Validate(_)
                | Command::Diff(_)
                | Command::Get(_)
                | Command::Config(_)
                | Command::Status(_)
                | Command::Workflow(W::List(_) | W::Show(_) | W::Render(_))
                | Command::Run(R::List(_) | R::Show(_) | R::Logs(_))
                | Command::Schedule(S::List(_) | S::Show(_) | S::Next(_))
                | Command::Trigger(T::List(_) | T::Show(_) | T::Deliveries(_))
                | Command::Alert(A::List(_) | A::Show(_) | A::Silences(_))
                | Command::Tests(
                    tests_cmd::TestsCommand::Affected(_)
                        | tests_cmd::TestsCommand::List(_)
                        | tests_cmd::TestsCommand::Show(_)
                        | tests_cmd::TestsCommand::Quarantine(_)
                )
        ) || matches!(self, Command::Apply(args) if args.dry_run)
            // Through the running server only: nothing of this project is written.
            || matches!(self, Command::Worker(args) if args.command.is_some())
    }
}

/// What every command gets: the parsed flags, the configuration and output settings.
pub struct Context {
    /// The global flags.
    pub cli: Cli,
    /// The effective configuration.
    pub config: LoadedConfig,
    /// Whether stdout gets ANSI colours.
    pub color: bool,
    /// The command only reads ([`Command::is_read_only`]).
    pub read_only: bool,
}

impl Context {
    /// The data directory: `--data-dir`, else the configuration's.
    pub fn data_dir(&self) -> PathBuf {
        match &self.cli.data_dir {
            Some(dir) => dir.clone(),
            None => self.config.resolve(&self.config.config.storage.data_dir),
        }
    }

    /// This program, set to the same project, data directory, environment and configuration
    /// file: for the processes it starts in the background.
    pub fn this_program(&self) -> Result<std::process::Command> {
        let mut command = std::process::Command::new(std::env::current_exe()?);
        command
            .arg("-C")
            .arg(&self.config.project_dir)
            .arg("--data-dir")
            .arg(self.data_dir());
        if let Some(environment) = self.cli.environment {
            command.arg("--environment").arg(environment.as_str());
        }
        if let Some(config) = &self.cli.config {
            command.arg("--config").arg(config);
        }
        Ok(command)
    }

    /// Starts logging to stderr and, when `to_file` and the command writes, to the log
    /// directory (a read-only command creates no log file).
    /// A command working through a running server writes only its warnings and errors to
    /// `system.log`, which is the server's log.
    pub fn init_logging(&self, to_file: bool) -> Result<()> {
        let dir = self.config.resolve(&self.config.config.logging.dir);
        let guest = to_file
            && crate::config::process_file::read(&self.data_dir())
                .is_some_and(|server| server.pid != std::process::id());
        crate::logging::init_with(&crate::logging::LogOptions {
            verbose: self.cli.verbose,
            file_level: &self.config.config.logging.level,
            log_dir: (to_file && !self.read_only).then_some(dir.as_path()),
            rotation: self.config.config.logging.rotation(),
            color: !self.cli.no_color,
            guest,
        })?;
        Ok(())
    }
}

/// Makes a write to a closed pipe (`orchestrator status | head -1`: the reader has gone) end
/// the process quietly with exit 0, as ripgrep does, instead of the panic of `println!`.
/// Other panics are reported as before.
pub fn quiet_on_closed_pipes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(EXIT_OK.into());
        }
        report(info);
    }));
}

/// Whether `err` comes from writing to a closed pipe, which ends a command quietly.
pub fn is_closed_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Parses the process arguments and runs the command.
pub fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    run_cli(cli)
}

/// Runs a parsed command line.
pub fn run_cli(cli: Cli) -> Result<ExitCode> {
    if !matches!(
        cli.command,
        Command::Init(_) | Command::Schemas(_) | Command::Completion { .. }
    ) && !cli.project_dir.is_dir()
    {
        anyhow::bail!(
            "no project directory {}: it does not exist or is not a directory (`orchestrator init {}` creates a project there)",
            cli.project_dir.display(),
            cli.project_dir.display()
        );
    }
    // These must work without a project or a loadable configuration.
    if let Command::Completion { shell } = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        // Into memory first: the generator panics on a failed write, a closed pipe included.
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut command, "orchestrator", &mut script);
        let mut out = std::io::stdout().lock();
        std::io::Write::write_all(&mut out, &script)?;
        std::io::Write::flush(&mut out)?;
        return Ok(ExitCode::from(EXIT_OK));
    }
    match &cli.command {
        Command::Init(args) => {
            crate::logging::init(cli.verbose, "info", None, Default::default())?;
            return init::run(&cli, args).map(ExitCode::from);
        }
        Command::Schemas(command) => {
            crate::logging::init(cli.verbose, "info", None, Default::default())?;
            return schemas_cmd::run(&cli, command).map(ExitCode::from);
        }
        Command::Config(config_cmd::ConfigCommand::Validate) => {
            crate::logging::init(cli.verbose, "info", None, Default::default())?;
            return config_cmd::validate(&cli).map(ExitCode::from);
        }
        _ => {}
    }
    let config = config::load(&ConfigOptions {
        project_dir: cli.project_dir.clone(),
        environment: cli.environment,
        config_file: cli.config.clone(),
        env_vars: std::env::vars().collect(),
    })
    .context("cannot load configuration")?;
    let color = !cli.no_color
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let read_only = cli.command.is_read_only();
    let context = Context {
        cli,
        config,
        color,
        read_only,
    };
    let code = match &context.cli.command {
        Command::Validate(args) => manifests::validate(&context, args)?,
        Command::Diff(args) => manifests::diff(&context, args)?,
        Command::Apply(args) => manifests::apply(&context, args)?,
        Command::Get(args) => manifests::get(&context, args)?,
        Command::Config(command) => config_cmd::run(&context, command)?,
        Command::Workflow(command) => workflow::run(&context, command)?,
        Command::Run(command) => runs::run(&context, command)?,
        Command::RunQueued { run } => workflow::run_queued(&context, run)?,
        Command::Schedule(command) => schedule_cmd::run(&context, command)?,
        Command::Trigger(command) => trigger_cmd::run(&context, command)?,
        Command::Alert(command) => alert_cmd::run(&context, command)?,
        Command::Tests(command) => tests_cmd::run(&context, command)?,
        Command::Start(args) => server_cmd::start(&context, args)?,
        Command::Worker(args) => worker_cmd::run(&context, args)?,
        Command::Stop => server_cmd::stop(&context)?,
        Command::Status(args) => server_cmd::status(&context, args)?,
        Command::Init(_) | Command::Schemas(_) | Command::Completion { .. } => EXIT_OK,
    };
    Ok(ExitCode::from(code))
}
