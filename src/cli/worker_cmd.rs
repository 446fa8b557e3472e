//! `worker`: run a worker process (`orchestrator worker --nats URL --name N ...`), or look
//! at and steer the workers of a running controller (`worker list|show|drain|resume`).

use std::path::PathBuf;
use std::time::Duration;

use std::io::Write;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::client::{ApiClient, ApiPath};
use super::manifests::table;
use super::{Context, OutputFormat, EXIT_OK};
use crate::workers::protocol;
use crate::workers::registry::{WorkerState, WorkerView};
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
    pub output: OutputFormat,
}

/// A worker's name.
#[derive(Debug, Args)]
pub struct WorkerName {
    /// The worker's name.
    pub name: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
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
        .unwrap_or_default();
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

/// `worker list|show|drain|resume`, through the running controller's API: the workers
/// live in NATS, which only the server is connected to.
fn steer(context: &Context, command: &WorkerCommand) -> Result<u8> {
    context.init_logging(true)?;
    let Some(client) = ApiClient::for_context(context)? else {
        bail!(
            "no server runs for {}: `worker list|show|drain|resume` ask the running controller (start one with `orchestrator start --nats URL`)",
            context.data_dir().display()
        );
    };
    match command {
        WorkerCommand::List(args) => {
            let value = client.get(&ApiPath::api(&["workers"]))?;
            if args.output != OutputFormat::Table {
                print_value(args.output, &value)?;
                return Ok(EXIT_OK);
            }
            if value["enabled"] == Value::Bool(false) {
                println!("workers are not enabled on this server: it runs every step itself (start it with --nats URL, or set distributed.nats)");
                return Ok(EXIT_OK);
            }
            let workers: Vec<WorkerView> = serde_json::from_value(value["workers"].clone())
                .context("the server's workers are not in the expected shape")?;
            if workers.is_empty() {
                println!("no worker has registered yet (`orchestrator worker --nats URL --name N --labels k=v` starts one)");
                return Ok(EXIT_OK);
            }
            let rows: Vec<[String; 7]> = workers
                .iter()
                .map(|w| {
                    [
                        w.worker.name.clone(),
                        state_text(w),
                        labels_text(&w.worker.labels),
                        format!("{}/{}", w.worker.running.len(), w.worker.slots),
                        age_text(w.heartbeat_age_ms),
                        w.worker.version.clone(),
                        format!("{} (pid {})", w.worker.host, w.worker.pid),
                    ]
                })
                .collect();
            print!(
                "{}",
                table(
                    &[
                        "NAME",
                        "STATE",
                        "LABELS",
                        "RUNNING",
                        "HEARTBEAT",
                        "VERSION",
                        "HOST"
                    ],
                    &rows
                )
            );
        }
        WorkerCommand::Show(args) => {
            let value = client.get(&ApiPath::api(&["workers", &args.name]))?;
            show(args.output, &value)?;
        }
        WorkerCommand::Drain(args) | WorkerCommand::Resume(args) => {
            let drain = matches!(command, WorkerCommand::Drain(_));
            let action = if drain { "drain" } else { "resume" };
            let value = client.post(
                &ApiPath::api(&["workers", &args.name, action]),
                &Value::Object(Default::default()),
            )?;
            if args.output != OutputFormat::Table {
                print_value(args.output, &value)?;
                return Ok(EXIT_OK);
            }
            let worker: WorkerView = serde_json::from_value(value)
                .context("the server's worker is not in the expected shape")?;
            let running = worker.worker.running.len();
            match (drain, worker.worker.draining) {
                (true, true) => println!(
                    "worker {} is draining: it finishes {running} running attempt(s) and takes no new work (`orchestrator worker resume {}` undoes it)",
                    worker.worker.name, worker.worker.name
                ),
                (true, false) => println!(
                    "worker {} was told to drain; it has not confirmed yet (`orchestrator worker show {}`)",
                    worker.worker.name, worker.worker.name
                ),
                (false, false) => println!("worker {} takes work again", worker.worker.name),
                (false, true) => println!(
                    "worker {} was told to resume; it has not confirmed yet (`orchestrator worker show {}`)",
                    worker.worker.name, worker.worker.name
                ),
            }
        }
    }
    Ok(EXIT_OK)
}

/// Every worker that ever registered with this project's controller (name, labels), for
/// `validate` to check `runs_on` against: from the running server, else from the store's
/// `workers_seen` tree. `None` when no worker has registered (or nothing can be read):
/// then nothing is checked, and with workers configured one note says so.
pub fn workers_seen(
    context: &Context,
) -> Option<Vec<(String, std::collections::BTreeMap<String, String>)>> {
    let seen = match ApiClient::for_context(context) {
        Ok(Some(client)) => client
            .get(&ApiPath::api(&["workers"]))
            .ok()
            .and_then(|value| {
                serde_json::from_value::<Vec<WorkerView>>(value["workers"].clone()).ok()
            })
            .map(|workers| {
                workers
                    .into_iter()
                    .map(|w| (w.worker.name, w.worker.labels))
                    .collect()
            }),
        _ => {
            let data_dir = context.data_dir();
            if crate::store::Store::exists(&data_dir) {
                crate::store::Store::open(&data_dir)
                    .ok()
                    .and_then(|store| crate::workers::registry::seen_labels(&store).ok())
            } else {
                None
            }
        }
    };
    match seen {
        Some(workers) if !workers.is_empty() => Some(workers),
        _ => {
            if context.config.config.distributed.is_some() {
                eprintln!("note: no worker has registered with this controller yet, so `runs_on` labels are not checked against workers");
            }
            None
        }
    }
}

fn show(output: OutputFormat, value: &Value) -> Result<()> {
    if output != OutputFormat::Table {
        return print_value(output, value);
    }
    let w: WorkerView = serde_json::from_value(value.clone())
        .context("the server's worker is not in the expected shape")?;
    let mut out = std::io::stdout().lock();
    let lines = [
        ("name", w.worker.name.clone()),
        ("state", state_text(&w)),
        ("labels", labels_text(&w.worker.labels)),
        ("slots", w.worker.slots.to_string()),
        ("heartbeat", age_text(w.heartbeat_age_ms)),
        ("version", w.worker.version.clone()),
        ("host", w.worker.host.clone()),
        ("pid", w.worker.pid.to_string()),
        ("started", w.worker.started_at.clone()),
        ("finished", format!("{} attempt(s)", w.worker.finished)),
        ("first seen", w.first_seen.clone()),
    ];
    for (label, text) in lines {
        writeln!(
            out,
            "{:<11} {}",
            format!("{label}:"),
            super::manifests::escape_control(&text)
        )?;
    }
    if w.worker.running.is_empty() {
        writeln!(out, "running:    nothing")?;
    } else {
        writeln!(out, "running:")?;
        let rows: Vec<[String; 3]> = w
            .worker
            .running
            .iter()
            .map(|r| [r.run_id.clone(), r.step.clone(), r.attempt.to_string()])
            .collect();
        for line in table(&["RUN", "STEP", "ATTEMPT"], &rows).lines() {
            writeln!(out, "  {line}")?;
        }
    }
    Ok(())
}

fn print_value(output: OutputFormat, value: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        OutputFormat::Yaml => write!(out, "{}", crate::reconcile::diff::to_yaml(value))?,
        _ => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
    }
    Ok(())
}

fn state_text(w: &WorkerView) -> String {
    match (w.state, w.worker.draining) {
        (WorkerState::Lost, _) => "lost".to_owned(),
        (WorkerState::Up, true) => "draining".to_owned(),
        (WorkerState::Up, false) => "up".to_owned(),
    }
}

fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "-".to_owned();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn age_text(ms: Option<u64>) -> String {
    match ms {
        Some(ms) if ms < 10_000 => format!("{:.1}s ago", ms as f64 / 1000.0),
        Some(ms) => format!(
            "{} ago",
            crate::duration::format_duration(Duration::from_secs(ms / 1000))
        ),
        None => "never (since this server started)".to_owned(),
    }
}
