//! `run list | show | logs | cancel | rerun`: the history of runs, their logs and test
//! results, and control over a running one.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::backend::Backend;
use super::client::{ApiClient, ApiFailure, ApiPath};
use super::manifests::{escape_control, table};
use super::workflow::{follow_remote, follow_run, human_ms, open_store};
use super::{Context, OutputFormat, EXIT_FINDINGS, EXIT_OK};
use crate::engine::run::{self, cancel_request_path};
use crate::model::{Status, TestStatus};
use crate::store::{RunFilter, StoreError};

/// `run` subcommands.
#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// List runs, newest first.
    List(ListArgs),
    /// Show a run: its steps, attempts, test results and artifacts.
    Show(ShowArgs),
    /// Print a run's logs (one step's, or all in order).
    Logs(LogsArgs),
    /// Cancel a running run: its steps' process groups are stopped.
    Cancel(CancelArgs),
    /// Run a finished run's workflow again with the same parameters.
    Rerun(RerunArgs),
}

/// Arguments of `run list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only runs of this workflow.
    #[arg(long)]
    pub workflow: Option<String>,
    /// Only runs in this state (queued, running, succeeded, failed, cancelled, timed_out,
    /// interrupted).
    #[arg(long)]
    pub status: Option<String>,
    /// At most this many runs.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `run show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The run id.
    pub run: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `run logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The run id.
    pub run: String,
    /// Only this step's log.
    pub step: Option<String>,
    /// Keep printing while the run goes on.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// Arguments of `run cancel`.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The run id.
    pub run: String,
}

/// Arguments of `run rerun`.
#[derive(Debug, Args)]
pub struct RerunArgs {
    /// The run id.
    pub run: String,
    /// Keep the steps that succeeded upstream of no failure; run the others, everything
    /// downstream of them and the report steps again.
    #[arg(long)]
    pub from_failed: bool,
}

/// Runs a `run` subcommand.
pub fn run(context: &Context, command: &RunCommand) -> Result<u8> {
    context.init_logging(true)?;
    match command {
        RunCommand::List(args) => list(context, args),
        RunCommand::Show(args) => show(context, args),
        RunCommand::Logs(args) => logs(context, args),
        RunCommand::Cancel(args) => cancel(context, args),
        RunCommand::Rerun(args) => rerun(context, args),
    }
}

fn list(context: &Context, args: &ListArgs) -> Result<u8> {
    let status = args
        .status
        .as_deref()
        .map(Status::parse_filter)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let store = Backend::open(context)?;
    let filter = RunFilter {
        workflow: args.workflow.clone(),
        status,
    };
    let runs = store.runs(&filter, args.limit)?;
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&runs)?)?,
        OutputFormat::Yaml => write!(
            out,
            "{}",
            crate::reconcile::diff::to_yaml(&serde_json::to_value(&runs)?)
        )?,
        OutputFormat::Table => {
            let rows: Vec<[String; 6]> = runs
                .iter()
                .map(|r| {
                    [
                        r.id.clone(),
                        r.workflow_id.clone(),
                        r.status.to_string(),
                        r.created_at.clone(),
                        r.duration_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                        if r.tests.total > 0 {
                            format!("{}/{}", r.tests.passed, r.tests.total)
                        } else {
                            "-".into()
                        },
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(
                    &["RUN", "WORKFLOW", "STATUS", "CREATED", "DURATION", "TESTS"],
                    &rows
                )
            )?;
        }
    }
    Ok(EXIT_OK)
}

fn load_run(store: &Backend, id: &str) -> Result<crate::model::RunRecord> {
    match store.run(id)? {
        Some(run) => Ok(run),
        None => bail!("no run `{id}` (`orchestrator run list` shows the runs kept)"),
    }
}

fn show(context: &Context, args: &ShowArgs) -> Result<u8> {
    let store = Backend::open(context)?;
    let run = load_run(&store, &args.run)?;
    let steps = store.steps(&run.id)?;
    let commit_status = store.commit_status(&run.id)?;
    let mut out = std::io::stdout().lock();
    if args.output != OutputFormat::Table {
        let mut value = serde_json::json!({"run": run, "steps": steps});
        if let Some(report) = &commit_status {
            value["commit_status"] = serde_json::to_value(report)?;
        }
        if args.output == OutputFormat::Json {
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        } else {
            write!(out, "{}", crate::reconcile::diff::to_yaml(&value))?;
        }
        return Ok(EXIT_OK);
    }
    writeln!(
        out,
        "run {} of {} ({})",
        run.id,
        run.workflow_id,
        escape_control(&run.workflow_name)
    )?;
    writeln!(
        out,
        "status {}{}",
        run.status,
        run.message
            .as_ref()
            .map(|m| format!(": {}", escape_control(m)))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "trigger {}, created {}",
        run.trigger.kind, run.created_at
    )?;
    if !run.parameters.is_empty() {
        writeln!(
            out,
            "parameters {}",
            serde_json::Value::Object(run.parameters.clone())
        )?;
    }
    if let Some(duration) = run.duration_ms {
        writeln!(out, "duration {}", human_ms(duration))?;
    }
    if let Some(report) = &commit_status {
        writeln!(out, "{}", commit_status_line(report))?;
    }
    writeln!(out)?;
    let rows: Vec<[String; 6]> = steps
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                format!("{}.{}", s.agent, s.action),
                s.status.to_string(),
                s.attempts.len().to_string(),
                s.duration_ms.map(human_ms).unwrap_or_else(|| "-".into()),
                s.message.clone().unwrap_or_default(),
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table(
            &["STEP", "AGENT", "STATUS", "ATTEMPTS", "DURATION", "MESSAGE"],
            &rows
        )
    )?;
    let tests = run.tests;
    if tests.total > 0 {
        writeln!(out, "\ntests: {}", tests.line())?;
        for step in &steps {
            for case in step
                .tests
                .iter()
                .filter(|c| matches!(c.status, TestStatus::Failed | TestStatus::Error))
            {
                writeln!(
                    out,
                    "  ✘ {} {}::{}: {}",
                    step.name,
                    case.classname,
                    case.name,
                    case.message.clone().unwrap_or_default()
                )?;
            }
        }
    }
    let artifacts: Vec<&String> = steps.iter().flat_map(|s| &s.artifacts).collect();
    if !artifacts.is_empty() {
        writeln!(out, "\nartifacts:")?;
        for artifact in artifacts {
            writeln!(out, "  {artifact}")?;
        }
    }
    Ok(EXIT_OK)
}

/// `commit status orchestrator/api (octo/hello@6113728): success sent` — or why the newest
/// state is not on GitHub.
fn commit_status_line(report: &crate::triggers::commit_status::CommitStatusReport) -> String {
    let short: String = report.sha.chars().take(7).collect();
    let state = match report.updates.last() {
        None => "nothing sent yet".to_owned(),
        Some(update) if update.delivered => format!("{} sent", update.state),
        Some(update) => match &update.error {
            Some(error) => format!(
                "{} not sent after {} attempt{}: {}",
                update.state,
                update.attempts,
                if update.attempts == 1 { "" } else { "s" },
                escape_control(error)
            ),
            None => format!("{} being sent", update.state),
        },
    };
    format!(
        "commit status {} ({}@{short}): {state}",
        escape_control(&report.context),
        escape_control(&report.repository)
    )
}

/// Whether opening the store failed because another process holds it.
fn is_locked(err: &anyhow::Error) -> bool {
    err.downcast_ref::<StoreError>()
        .is_some_and(|e| matches!(e, StoreError::Locked { .. }))
}

fn logs(context: &Context, args: &LogsArgs) -> Result<u8> {
    // The run and the step must exist, whatever the log directory holds: the same errors as
    // the API's `GET /api/runs/{id}/logs/{step}`.
    // A store another process holds (a run executing in the foreground) is not waited for.
    match Backend::open(context) {
        Ok(backend) => {
            let run = load_run(&backend, &args.run)?;
            if let Some(step) = &args.step {
                run::find_step(&run.id, &backend.steps(&run.id)?, step)?;
            }
        }
        Err(err) if is_locked(&err) => {}
        Err(err) => return Err(err),
    }
    let log_dir = context.config.resolve(&context.config.config.logging.dir);
    let run_dir = log_dir.join("workflows").join(&args.run);
    let files = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut files: Vec<(std::time::SystemTime, std::path::PathBuf)> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|e| e == "log"))
                    .filter(|p| {
                        args.step.as_ref().is_none_or(|s| {
                            p.file_stem().and_then(|n| n.to_str())
                                == Some(run::log_name(s).as_str())
                        })
                    })
                    .map(|p| {
                        let created = std::fs::metadata(&p)
                            .and_then(|m| m.created().or_else(|_| m.modified()))
                            .unwrap_or(std::time::UNIX_EPOCH);
                        (created, p)
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.into_iter().map(|(_, p)| p).collect()
    };
    if !run_dir.exists() {
        bail!("no logs for run `{}` in {}", args.run, run_dir.display());
    }
    let many = args.step.is_none();
    let mut offsets: std::collections::HashMap<std::path::PathBuf, u64> = Default::default();
    let mut out = std::io::stdout().lock();
    let mut print_new = |out: &mut std::io::StdoutLock<'_>| -> Result<()> {
        for file in files(&run_dir) {
            let offset = offsets.entry(file.clone()).or_insert(0);
            let mut handle = std::fs::File::open(&file)?;
            handle.seek(SeekFrom::Start(*offset))?;
            let mut text = String::new();
            handle.read_to_string(&mut text)?;
            if text.is_empty() {
                continue;
            }
            *offset += text.len() as u64;
            let step = file
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            for line in text.lines() {
                if many {
                    writeln!(out, "{step} | {line}")?;
                } else {
                    writeln!(out, "{line}")?;
                }
            }
        }
        out.flush()?;
        Ok(())
    };
    print_new(&mut out)?;
    if !args.follow {
        return Ok(EXIT_OK);
    }
    // Done when the run is finished: asked of the server running it, or of the store once
    // the process running it lets go of it.
    loop {
        let finished = match Backend::open(context) {
            Ok(backend) => backend
                .run(&args.run)?
                .is_none_or(|r| r.status.is_finished()),
            Err(err) if is_locked(&err) => false,
            Err(err) => return Err(err),
        };
        if finished {
            print_new(&mut out)?;
            return Ok(EXIT_OK);
        }
        print_new(&mut out)?;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cancel(context: &Context, args: &CancelArgs) -> Result<u8> {
    if let Some(client) = ApiClient::for_context(context)? {
        return match client.post(
            &ApiPath::api(&["runs", &args.run, "cancel"]),
            &serde_json::Value::Null,
        ) {
            Ok(_) => {
                println!(
                    "run {} cancel requested: its steps are being stopped",
                    args.run
                );
                Ok(EXIT_OK)
            }
            // Not running there, or no such run: said as without a server.
            Err(err)
                if err
                    .downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status == 404 || f.status == 409) =>
            {
                nothing_to_cancel(&Backend::Remote(client), &args.run)
            }
            Err(err) => Err(err),
        };
    }
    match open_store(context) {
        Ok(store) => return nothing_to_cancel(&Backend::Local(store), &args.run),
        Err(err)
            if err
                .downcast_ref::<StoreError>()
                .is_some_and(|e| matches!(e, StoreError::Locked { .. })) => {}
        Err(err) => return Err(err),
    }
    // Another process is running runs: ask it through a request file, and wait for it to
    // take the request.
    let request = cancel_request_path(&context.data_dir(), &args.run);
    if let Some(parent) = request.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&request, b"cancel\n")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while request.exists() {
        if Instant::now() > deadline {
            let _ = std::fs::remove_file(&request);
            bail!("the process holding the store did not take the cancel request for {} within 30 s; is the run id right?", args.run);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "run {} cancel requested: its steps are being stopped",
        args.run
    );
    Ok(EXIT_OK)
}

/// A run that is not running: says so (or that there is no such run).
fn nothing_to_cancel(store: &Backend, id: &str) -> Result<u8> {
    let run = load_run(store, id)?;
    println!("run {} is {}: nothing to cancel", run.id, run.status);
    Ok(EXIT_FINDINGS)
}

fn rerun(context: &Context, args: &RerunArgs) -> Result<u8> {
    let backend = Backend::open(context)?;
    let original = load_run(&backend, &args.run)?;
    // The engine's rule, asked here too so that both backends refuse before anything is
    // sent or created.
    run::check_rerun(&original, args.from_failed)?;
    match backend {
        Backend::Local(store) => {
            let (run, steps) = run::create_rerun(&store, &original, args.from_failed)?;
            follow_run(context, &store, run, steps)
        }
        Backend::Remote(client) => {
            let answer = client.post(
                &ApiPath::api(&["runs", &original.id, "rerun"]),
                &serde_json::json!({"from_failed": args.from_failed}),
            )?;
            let run_id = answer["run_id"].as_str().unwrap_or_default().to_owned();
            follow_remote(context, &client, &run_id)
        }
    }
}
