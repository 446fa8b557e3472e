//! `worker`: run a worker process (`orchestrator worker --nats URL --name N ...`), or look
//! at and steer the workers of a running controller (`worker list|show|drain|resume`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};

use super::{Context, EXIT_OK};
use crate::config::NatsConfig;
use crate::workers::protocol;
use crate::workers::worker::{self, WorkerOptions};

/// Arguments of `worker`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct WorkerArgs {
    /// What to do with the controller's workers; without one, run a worker.
    #[command(subcommand)]
    pub command: Option<WorkerCommand>,
    /// How to run a worker.
    #[command(flatten)]
    pub run: WorkerRunArgs,
}

/// `worker list|show|drain|resume`.
#[derive(Debug, Subcommand)]
pub enum WorkerCommand {
    /// The workers that registered: labels, slots, running attempts, heartbeat age.
    List(WorkerList),
    /// One worker.
    Show(WorkerName),
    /// Let a worker finish what it runs and take nothing new.
    Drain(WorkerName),
    /// Let a drained worker take work again.
    Resume(WorkerName),
}

/// Arguments of `worker list`.
#[derive(Debug, Args)]
pub struct WorkerList {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: super::OutputFormat,
}

/// A worker's name.
#[derive(Debug, Args)]
pub struct WorkerName {
    /// The worker's name.
    pub name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: super::OutputFormat,
}

/// Arguments of a worker process.
#[derive(Debug, Args)]
pub struct WorkerRunArgs {
    /// The NATS server with JetStream (default: distributed.nats.url of the configuration).
    #[arg(long, env = "ORCHESTRATOR_NATS", value_name = "URL")]
    pub nats: Option<String>,
    /// The worker's name, unique among workers (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Its labels, `key=value,...`: steps whose `runs_on` labels it has run here.
    #[arg(long, default_value = "")]
    pub labels: String,
    /// Attempts it runs at once.
    #[arg(long, default_value_t = 1)]
    pub slots: u32,
    /// Where workspaces, step logs and reports go.
    #[arg(long, value_name = "DIR", default_value = "worker")]
    pub work_dir: PathBuf,
    /// How long it may go without renewing its leases before it stops its steps itself
    /// (default: distributed.lease, 15s); the controller must use the same.
    #[arg(long, value_name = "DURATION")]
    pub lease: Option<String>,
}

/// Runs `worker`.
pub fn run(context: &Context, args: &WorkerArgs) -> Result<u8> {
    match &args.command {
        Some(command) => steer(context, command),
        None => run_worker(context, &args.run),
    }
}

fn run_worker(context: &Context, args: &WorkerRunArgs) -> Result<u8> {
    context.init_logging(false)?;
    let distributed = context.config.config.distributed.clone();
    let mut nats = distributed
        .as_ref()
        .map(|d| d.nats.clone())
        .unwrap_or_else(NatsConfig::default);
    if let Some(url) = &args.nats {
        nats.url.clone_from(url);
    }
    if nats.url.is_empty() {
        bail!("no NATS server: give --nats nats://HOST:PORT or set distributed.nats.url in the configuration");
    }
    let lease = match &args.lease {
        Some(text) => {
            crate::duration::parse_duration(text).map_err(|err| anyhow!("--lease {text}: {err}"))?
        }
        None => distributed
            .as_ref()
            .and_then(|d| d.lease.as_ref())
            .and_then(|l| l.duration().ok())
            .unwrap_or(Duration::from_secs(15)),
    };
    let labels = protocol::parse_labels(&args.labels).map_err(|err| anyhow!("--labels: {err}"))?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => sysinfo::System::host_name()
            .unwrap_or_else(|| "worker".into())
            .replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
                "-",
            ),
    };
    if args.slots == 0 {
        bail!("--slots must be at least 1");
    }
    let work_dir = if args.work_dir.is_absolute() {
        args.work_dir.clone()
    } else {
        std::env::current_dir()?.join(&args.work_dir)
    };
    worker::run(WorkerOptions {
        nats,
        name,
        labels,
        slots: args.slots,
        work_dir,
        lease,
        base_dir: context.config.project_dir.clone(),
    })
    .map_err(|err| anyhow!(err))?;
    Ok(EXIT_OK)
}

/// `worker list|show|drain|resume`, through the running controller's API.
fn steer(_context: &Context, _command: &WorkerCommand) -> Result<u8> {
    bail!("`worker list|show|drain|resume` talk to a running server: start one with `orchestrator start --nats URL`")
}
