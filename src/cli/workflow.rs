//! `workflow list | show | create | render | execute`: workflows in the store and running
//! them in the foreground, following every step live.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::cli::OutputArgs;
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::backend::Backend;
use super::client::{ApiClient, ApiFailure};
use super::manifests::escape_control;
use super::manifests::{self, table};
use super::{Context, OutputFormat, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::engine::expand;
use crate::engine::run::{self, CancelSignal, EngineConfig, EngineError, Event, RunRequest};
use crate::manifest::Kind;
use crate::model::{RunRecord, Status, StepRecord, Trigger};
use crate::spec::params;
use crate::store::{RunFilter, Store};

/// `workflow` subcommands.
#[derive(Debug, Subcommand)]
pub enum WorkflowCommand {
    /// List workflows with their last run.
    List(OutputArgs),
    /// Show one workflow: its manifest and recent runs.
    Show(ShowArgs),
    /// Write a workflow manifest into workflows/ and apply it; prints its id.
    Create(CreateArgs),
    /// Print a workflow as it would run: template expanded, parameters resolved.
    Render(RenderArgs),
    /// Run a workflow and follow it; exit 0 when it succeeded, 1 when it did not.
    Execute(ExecuteArgs),
}

/// Arguments of `workflow show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Workflow id (or name).
    pub id: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `workflow create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The workflow's name; its id is derived from it.
    pub name: String,
    /// A workflow file (JSON or YAML) whose steps and settings to use.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Arguments of `workflow render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Workflow id (or name).
    pub id: String,
    /// Run parameters as a JSON object.
    #[arg(long)]
    pub params: Option<String>,
}

/// Arguments of `workflow execute`.
#[derive(Debug, Args)]
pub struct ExecuteArgs {
    /// Workflow id (or name).
    pub id: String,
    /// Run parameters as a JSON object, e.g. '{"environment": "production"}'.
    #[arg(long)]
    pub params: Option<String>,
    /// Print the run id and return; the run goes on in the background.
    #[arg(long)]
    pub detach: bool,
}

/// Runs a `workflow` subcommand.
pub fn run(context: &Context, command: &WorkflowCommand) -> Result<u8> {
    match command {
        WorkflowCommand::List(args) => list(context, args),
        WorkflowCommand::Show(args) => show(context, args),
        WorkflowCommand::Create(args) => create(context, args),
        WorkflowCommand::Render(args) => render(context, args),
        WorkflowCommand::Execute(args) => execute(context, args),
    }
}

/// Opens the store and marks runs left behind by a vanished process as interrupted; with
/// workers configured, runs with a step in flight on a worker are left for the controller
/// to resume when it starts again.
pub fn open_store(context: &Context) -> Result<Store> {
    let store = Store::open(&context.data_dir())?;
    let interrupted = if context.config.config.distributed.is_some() {
        run::recover_keeping_remote(&store)?
    } else {
        run::recover(&store)?
    };
    for id in interrupted {
        eprintln!("note: run {id} was left running by a process that ended; marked interrupted");
    }
    Ok(store)
}

/// The engine's settings from the configuration.
pub fn engine_config(context: &Context) -> EngineConfig {
    crate::agents::local::engine_config(&context.config, context.data_dir())
}

/// Parses `--params`.
pub fn parse_params(text: Option<&str>) -> Result<Map<String, Value>> {
    let Some(text) = text else {
        return Ok(Map::new());
    };
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => bail!("--params must be a JSON object, got {other}"),
        Err(err) => bail!("--params is not valid JSON: {err} (example: --params '{{\"environment\": \"staging\"}}')"),
    }
}

fn list(context: &Context, args: &OutputArgs) -> Result<u8> {
    context.init_logging(true)?;
    let store = Backend::open(context)?;
    let runs = store.latest_runs()?;
    let workflows: Vec<Value> = store
        .objects()?
        .into_values()
        .filter(|r| r.key.kind == Kind::Workflow && r.is_live())
        .map(|r| {
            let last = runs.iter().find(|run| run.workflow_id == r.key.id);
            let spec = r.spec.clone().unwrap_or_default();
            let steps = spec
                .get("steps")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            serde_json::json!({
                "id": r.key.id,
                "name": r.name,
                "steps": steps,
                "template": spec.get("template"),
                "last_run": last.map(|l| serde_json::json!({"id": l.id, "status": l.status, "created_at": l.created_at})),
            })
        })
        .collect();
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&workflows)?)?,
        OutputFormat::Yaml => write!(
            out,
            "{}",
            crate::reconcile::diff::to_yaml(&Value::Array(workflows))
        )?,
        OutputFormat::Table => {
            let rows: Vec<[String; 5]> = workflows
                .iter()
                .map(|w| {
                    [
                        w["id"].as_str().unwrap_or_default().to_owned(),
                        w["name"].as_str().unwrap_or_default().to_owned(),
                        match w["template"].as_str() {
                            Some(t) => format!("template {t}"),
                            None => w["steps"].to_string(),
                        },
                        w["last_run"]["status"].as_str().unwrap_or("-").to_owned(),
                        w["last_run"]["created_at"]
                            .as_str()
                            .unwrap_or("-")
                            .to_owned(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(&["ID", "NAME", "STEPS", "LAST RUN", "WHEN"], &rows)
            )?;
        }
    }
    Ok(EXIT_OK)
}

fn show(context: &Context, args: &ShowArgs) -> Result<u8> {
    context.init_logging(true)?;
    let store = Backend::open(context)?;
    let record = run::find_workflow_in(&store.objects()?, &args.id)?;
    let filter = RunFilter {
        workflow: Some(record.key.id.clone()),
        status: None,
    };
    // Oldest first, as the document has always listed them.
    let mut runs = store.runs(&filter, usize::MAX)?;
    runs.reverse();
    let mut out = std::io::stdout().lock();
    if args.output != OutputFormat::Table {
        let value = serde_json::json!({"workflow": record, "runs": runs});
        if args.output == OutputFormat::Json {
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        } else {
            write!(out, "{}", crate::reconcile::diff::to_yaml(&value))?;
        }
        return Ok(EXIT_OK);
    }
    writeln!(
        out,
        "{} ({})  from {}",
        record.key.id, record.name, record.source_file
    )?;
    write!(
        out,
        "{}",
        crate::reconcile::diff::to_yaml(&record.spec.clone().unwrap_or_default())
    )?;
    writeln!(out, "\nrecent runs:")?;
    if runs.is_empty() {
        writeln!(out, "  none")?;
    }
    for run in runs.iter().rev().take(10) {
        writeln!(
            out,
            "  {}  {:<11} {}  {}",
            run.id,
            run.status.as_str(),
            run.created_at,
            run.duration_ms
                .map(|d| format!("{:.1}s", d as f64 / 1000.0))
                .unwrap_or_default()
        )?;
    }
    Ok(EXIT_OK)
}

fn create(context: &Context, args: &CreateArgs) -> Result<u8> {
    let mut origin = None;
    let mut document: Value = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let parsed = if path.extension().is_some_and(|e| e == "json") {
                crate::manifest::parse::parse_json(&text).map(Some)
            } else {
                crate::manifest::parse::parse_yaml(&text).map(|mut d| {
                    if d.is_empty() {
                        None
                    } else {
                        Some(d.remove(0))
                    }
                })
            };
            let parsed = parsed.map_err(|e| {
                anyhow::anyhow!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message)
            })?;
            match parsed {
                Some(parsed) => {
                    let value = parsed.value.clone();
                    origin = Some(manifests::Origin {
                        file: path.display().to_string(),
                        text,
                        document: parsed,
                    });
                    value
                }
                None => Value::Null,
            }
        }
        None => serde_json::json!({
            "steps": [{"name": "hello", "command": ["echo", format!("hello from {}", args.name)]}]
        }),
    };
    let Value::Object(map) = &mut document else {
        bail!("the workflow file must hold one mapping with `steps`");
    };
    // The name given on the command line is the workflow's name (and so its id).
    map.remove("id");
    map.remove("kind");
    map.remove("name");
    let mut ordered = Map::new();
    ordered.insert("name".into(), Value::from(args.name.clone()));
    ordered.extend(std::mem::take(map));
    manifests::create_manifest_from(
        context,
        Kind::Workflow,
        &args.name,
        Value::Object(ordered),
        origin,
    )
}

fn render(context: &Context, args: &RenderArgs) -> Result<u8> {
    context.init_logging(true)?;
    let objects = Backend::open(context)?.objects()?;
    let record = run::find_workflow_in(&objects, &args.id)?;
    let expanded = run::expand_workflow_in(&objects, &record.spec.clone().unwrap_or_default())?;
    let mut given = expanded.preset.clone();
    given.extend(parse_params(args.params.as_deref())?);
    let parameters = params::resolve(expanded.declared.as_ref(), &given)
        .map_err(|p| anyhow::anyhow!("parameters of {} are not valid:\n{p}", record.key.id))?;
    let scope = expand::Scope {
        params: parameters.clone(),
        ..expand::Scope::default()
    };
    let mut workflow = expanded.workflow.clone();
    if let Some(steps) = workflow.get_mut("steps").and_then(Value::as_array_mut) {
        for step in steps {
            for field in ["parameters", "command", "env"] {
                if let Some(value) = step.get(field) {
                    // Only `params.*` is known before the run; other references stay as written.
                    if let Ok(done) = expand::substitute(value, &scope) {
                        step[field] = done;
                    }
                }
            }
        }
    }
    if let Value::Object(map) = &mut workflow {
        map.insert("parameters".into(), Value::Object(parameters));
    }
    print!("{}", crate::reconcile::diff::to_yaml(&workflow));
    Ok(EXIT_OK)
}

fn execute(context: &Context, args: &ExecuteArgs) -> Result<u8> {
    context.init_logging(true)?;
    let parameters = parse_params(args.params.as_deref())?;
    let store = match Backend::open(context)? {
        Backend::Local(store) => store,
        Backend::Remote(client) => {
            let answer = client.post(
                &super::client::ApiPath::api(&["workflows", &args.id, "execute"]),
                &serde_json::json!({ "parameters": parameters, "trigger": "cli" }),
            );
            let run_id = match answer {
                Ok(value) => value["run_id"].as_str().unwrap_or_default().to_owned(),
                Err(err)
                    if err
                        .downcast_ref::<ApiFailure>()
                        .is_some_and(|f| f.status < 500) =>
                {
                    eprintln!("error: {err}");
                    return Ok(EXIT_ERROR);
                }
                Err(err) => return Err(err),
            };
            if args.detach {
                println!("{run_id}");
                return Ok(EXIT_OK);
            }
            return follow_remote(context, &client, &run_id);
        }
    };
    let request = RunRequest {
        workflow: args.id.clone(),
        parameters,
        trigger: Trigger {
            kind: "cli".into(),
            details: Map::new(),
        },
    };
    let (run, steps) = match run::create_run(&store, &request) {
        Ok(created) => created,
        Err(EngineError::Store(err)) => return Err(err.into()),
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(EXIT_ERROR);
        }
    };
    if args.detach {
        drop(store);
        return detach(context, &run.id);
    }
    follow_run(context, &store, run, steps)
}

/// Starts `__run RUN_ID` as a background process of its own and returns.
fn detach(context: &Context, run_id: &str) -> Result<u8> {
    use std::os::unix::process::CommandExt;
    let log_dir = context.config.resolve(&context.config.config.logging.dir);
    std::fs::create_dir_all(&log_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_dir.join("system.log"))?;
    let mut command = context.this_program()?;
    command
        .arg("__run")
        .arg(run_id)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("cannot start the background run")?;
    println!("{run_id}");
    Ok(EXIT_OK)
}

/// Executes a queued run in this process (`workflow execute --detach` starts this).
pub fn run_queued(context: &Context, run_id: &str) -> Result<u8> {
    context.init_logging(true)?;
    // The process that queued the run may still be closing the store.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let store = loop {
        match open_store(context) {
            Ok(store) => break store,
            Err(err) if std::time::Instant::now() < deadline => {
                tracing::debug!("waiting for the store: {err}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(err) => return Err(err),
        }
    };
    let Some(run) = store.run(run_id)? else {
        bail!("no run {run_id}");
    };
    if run.status != Status::Queued {
        bail!("run {run_id} is {}, not queued", run.status);
    }
    let steps = store.steps(run_id)?;
    follow_run(context, &store, run, steps)
}

/// Runs in the foreground, printing each step as it starts and ends; Ctrl-C cancels the run.
pub fn follow_run(
    context: &Context,
    store: &Store,
    run: RunRecord,
    steps: Vec<StepRecord>,
) -> Result<u8> {
    let flag = cancel_on_signals()?;
    crate::engine::process::become_subreaper();
    let log_dir = context.config.resolve(&context.config.config.logging.dir);
    let color = context.color;
    print_run_start(&run, steps.len());
    let print = |event: &Event| print_event(event, color, &log_dir);
    let run = run::execute(
        store,
        &engine_config(context),
        run,
        steps,
        &CancelSignal { flag },
        &print,
    )?;
    Ok(print_run_end(&run))
}

/// A flag set by Ctrl-C and SIGTERM.
fn cancel_on_signals() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&flag))?;
    }
    Ok(flag)
}

fn print_run_start(run: &RunRecord, steps: usize) {
    println!(
        "run {} of {} started ({} step{})",
        run.id,
        run.workflow_id,
        steps,
        if steps == 1 { "" } else { "s" }
    );
}

/// One line per step event; a failed step gets the tail of its log.
fn print_event(event: &Event, color: bool, log_dir: &std::path::Path) {
    let mut out = std::io::stdout().lock();
    let _ = match event {
        Event::StepStarted { step } => {
            writeln!(
                out,
                "  ▶ {} ({}.{})",
                escape_control(&step.name),
                escape_control(&step.agent),
                escape_control(&step.action)
            )
        }
        Event::StepRetrying { step, delay } => writeln!(
            out,
            "  ↻ {} attempt {} {}; retrying in {}",
            escape_control(&step.name),
            step.attempts.len(),
            step.attempts.last().map_or("failed", |a| a.status.as_str()),
            crate::duration::format_duration(*delay)
        ),
        Event::StepFinished { step } => {
            let (mark, paint) = match step.status {
                Status::Succeeded => ("✔", "32"),
                Status::Skipped => ("–", "33"),
                _ => ("✘", "31"),
            };
            let mark = if color {
                format!("\x1b[{paint}m{mark}\x1b[0m")
            } else {
                mark.to_owned()
            };
            let _ = writeln!(
                out,
                "  {mark} {} {}{}{}",
                escape_control(&step.name),
                step.status,
                step.duration_ms
                    .map(|d| format!(" in {}", human_ms(d)))
                    .unwrap_or_default(),
                step.message
                    .as_ref()
                    .map(|m| format!(": {}", escape_control(m)))
                    .unwrap_or_default()
            );
            if matches!(step.status, Status::Failed | Status::TimedOut) {
                for line in log_tail(&log_dir.join(&step.log), 15) {
                    let _ = writeln!(out, "      │ {line}");
                }
            }
            Ok(())
        }
    };
}

/// The test summary and the final line; the exit code for the run's outcome.
fn print_run_end(run: &RunRecord) -> u8 {
    let tests = run.tests;
    if tests.total > 0 {
        println!("tests: {}", tests.line());
    }
    println!(
        "run {} {} in {}{}",
        run.id,
        run.status,
        human_ms(run.duration_ms.unwrap_or(0)),
        run.message
            .as_ref()
            .map(|m| format!(": {}", escape_control(m)))
            .unwrap_or_default()
    );
    if run.status == Status::Succeeded {
        EXIT_OK
    } else {
        EXIT_FINDINGS
    }
}

/// Follows a run the server executes, printing what `follow_run` prints: the server is
/// polled and each step's changes become the same events, in the order they happened.
/// Ctrl-C asks the server to cancel.
pub fn follow_remote(context: &Context, client: &ApiClient, run_id: &str) -> Result<u8> {
    let flag = cancel_on_signals()?;
    let log_dir = context.config.resolve(&context.config.config.logging.dir);
    let Some((run, steps)) = client.run(run_id)? else {
        bail!("the server does not know run {run_id}");
    };
    print_run_start(&run, steps.len());
    // Steps a `--from-failed` re-run reuses are done before it starts (succeeded, never
    // started here): the engine reports nothing about them.
    let mut seen: Vec<(Status, usize)> = steps
        .iter()
        .map(|s| match s.status {
            Status::Succeeded if s.started_at.is_none() => (s.status, s.attempts.len()),
            _ => (Status::Queued, 0),
        })
        .collect();
    let mut cancel_sent = false;
    loop {
        if flag.load(std::sync::atomic::Ordering::SeqCst) && !cancel_sent {
            cancel_sent = true;
            let _ = client.post(
                &super::client::ApiPath::api(&["runs", run_id, "cancel"]),
                &Value::Null,
            );
        }
        let Some((run, steps)) = client.run(run_id)? else {
            bail!("run {run_id} disappeared from the server");
        };
        // What happened since the last look, each event with the time it happened.
        let mut events: Vec<(String, Event)> = Vec::new();
        for (step, (status, attempts)) in steps.iter().zip(seen.iter_mut()) {
            if step.status == *status && step.attempts.len() == *attempts {
                continue;
            }
            if *status == Status::Queued {
                if let Some(at) = &step.started_at {
                    events.push((at.clone(), Event::StepStarted { step: step.clone() }));
                }
            }
            for number in *attempts + 1..=step.attempts.len() {
                let attempt = &step.attempts[number - 1];
                // An attempt was retried unless it was the step's last word: the engine
                // reports a retry for every failed attempt but the one that ends the step.
                let retried = number < step.attempts.len()
                    || !step.status.is_finished()
                    || step.status != attempt.status;
                if retried {
                    let mut so_far = step.clone();
                    so_far.attempts.truncate(number);
                    events.push((
                        attempt.finished_at.clone(),
                        Event::StepRetrying {
                            step: so_far,
                            delay: retry_delay(&run, step.index as usize, number as u32),
                        },
                    ));
                }
            }
            // Steps the run's end stopped before they started are not reported as events.
            let never_started = step.started_at.is_none()
                && matches!(step.status, Status::Cancelled | Status::TimedOut);
            if step.status.is_finished() && !never_started {
                events.push((
                    step.finished_at.clone().unwrap_or_default(),
                    Event::StepFinished { step: step.clone() },
                ));
            }
            *status = step.status;
            *attempts = step.attempts.len();
        }
        // Stable: a step's own events keep their order when their times are equal.
        events.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, event) in &events {
            print_event(event, context.color, &log_dir);
        }
        if run.status.is_finished() {
            return Ok(print_run_end(&run));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// How long the engine waits before attempt `number + 1` of a step: its `retry_delay`
/// (default 1 s), doubled per attempt, as `engine::run` computes it.
fn retry_delay(run: &RunRecord, index: usize, number: u32) -> std::time::Duration {
    let base = match run.workflow["steps"][index].get("retry_delay") {
        Some(Value::Number(n)) => n.as_f64().map(std::time::Duration::from_secs_f64),
        Some(Value::String(text)) => crate::duration::parse_duration(text).ok(),
        _ => None,
    }
    .unwrap_or(std::time::Duration::from_secs(1));
    base.saturating_mul(1 << (number.max(1) - 1).min(10))
}

/// "850 ms", "12.3 s", "2 min 5 s".
pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// The last lines of a log file.
pub fn log_tail(path: &std::path::Path, lines: usize) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}
