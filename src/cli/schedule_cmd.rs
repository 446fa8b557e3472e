//! `schedule list | show ID | create NAME CRON WORKFLOW_ID | pause ID | resume ID | next CRON`:
//! cron schedules, their next fire and their last run, and the run-time pause switch.

use std::io::Write;

use crate::cli::OutputArgs;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};

use super::backend::Backend;
use super::manifests::{self, table};
use super::schedule_next::{self, NextArgs};
use super::workflow::parse_params;
use super::{Context, OutputFormat, EXIT_OK};
use crate::manifest::Kind;

/// `schedule` subcommands.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// List schedules: cron, time zone, workflow, next fire, last run.
    List(OutputArgs),
    /// Show one schedule.
    Show(ShowArgs),
    /// Write a schedule manifest into schedules/ and apply it; prints its id.
    Create(CreateArgs),
    /// Pause a schedule: it fires nothing until resumed (kept across server restarts).
    Pause(PauseArgs),
    /// Resume a paused schedule: it fires again from its next due instant on.
    Resume(PauseArgs),
    /// Print the next fire times of a cron expression.
    Next(NextArgs),
}

/// Arguments of `schedule pause` and `schedule resume`.
#[derive(Debug, Args)]
pub struct PauseArgs {
    /// Schedule id (or name).
    pub id: String,
}

/// Arguments of `schedule show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Schedule id (or name).
    pub id: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `schedule create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The schedule's name; its id is derived from it (`Daily API Tests` → `sch_daily-api-tests`).
    pub name: String,
    /// Crontab expression, e.g. "0 2 * * *".
    pub cron: String,
    /// The workflow to run.
    pub workflow_id: String,
    /// Parameters for each run, as a JSON object.
    #[arg(long)]
    pub params: Option<String>,
    /// IANA time zone the expression is read in (default: scheduler.timezone).
    #[arg(long)]
    pub timezone: Option<String>,
}

/// Runs a `schedule` subcommand.
pub fn run(context: &Context, command: &ScheduleCommand) -> Result<u8> {
    match command {
        ScheduleCommand::List(args) => list(context, args),
        ScheduleCommand::Show(args) => show(context, args),
        ScheduleCommand::Create(args) => create(context, args),
        ScheduleCommand::Pause(args) => pause(context, &args.id, true),
        ScheduleCommand::Resume(args) => pause(context, &args.id, false),
        ScheduleCommand::Next(args) => schedule_next::run(context, args),
    }
}

/// The schedules as the API's `GET /api/scheduler/jobs` shows them, from the server or
/// computed the same way from the store.
fn jobs(context: &Context) -> Result<Vec<Value>> {
    context.init_logging(true)?;
    match Backend::open(context)? {
        Backend::Remote(client) => {
            let answer = client.get(&super::client::ApiPath::api(&["scheduler", "jobs"]))?;
            Ok(answer["jobs"].as_array().cloned().unwrap_or_default())
        }
        Backend::Local(store) => {
            let objects = store.objects()?;
            let states = crate::scheduler::states(&store)?;
            Ok(crate::scheduler::jobs_json(
                &objects,
                &states,
                |run| {
                    store
                        .run(run)
                        .ok()
                        .flatten()
                        .map(|r| r.status.as_str().to_owned())
                },
                &context.config.config.scheduler.timezone,
            ))
        }
    }
}

fn print_value(output: OutputFormat, value: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match output {
        OutputFormat::Yaml => write!(out, "{}", crate::reconcile::diff::to_yaml(value))?,
        _ => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
    }
    Ok(())
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn list(context: &Context, args: &OutputArgs) -> Result<u8> {
    let jobs = jobs(context)?;
    if args.output != OutputFormat::Table {
        print_value(args.output, &Value::Array(jobs))?;
        return Ok(EXIT_OK);
    }
    let rows: Vec<[String; 7]> = jobs
        .iter()
        .map(|job| {
            [
                text(&job["id"]),
                text(&job["name"]),
                text(&job["schedule"]),
                text(&job["timezone"]),
                text(&job["workflow_id"]),
                if job["suspend"] == Value::Bool(true) {
                    "suspended".to_owned()
                } else if job["paused"] == Value::Bool(true) {
                    "paused".to_owned()
                } else {
                    text(&job["next_fire"])
                },
                text(&job["last_run"]["status"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "CRON",
                "TIMEZONE",
                "WORKFLOW",
                "NEXT FIRE",
                "LAST RUN"
            ],
            &rows
        )
    );
    Ok(EXIT_OK)
}

fn show(context: &Context, args: &ShowArgs) -> Result<u8> {
    let jobs = jobs(context)?;
    let Some(job) = jobs
        .iter()
        .find(|j| j["id"] == args.id.as_str())
        .or_else(|| jobs.iter().find(|j| j["name"] == args.id.as_str()))
    else {
        let ids = jobs.iter().map(|j| text(&j["id"]));
        let hint =
            crate::util::did_you_mean(&args.id, ids.collect::<Vec<_>>().iter().map(String::as_str))
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
        bail!(
            "no schedule `{}`{hint} (`orchestrator schedule list` shows them)",
            args.id
        );
    };
    if args.output != OutputFormat::Table {
        print_value(args.output, job)?;
        return Ok(EXIT_OK);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} ({})",
        text(&job["id"]),
        manifests::escape_control(&text(&job["name"]))
    )?;
    for (label, key) in [
        ("cron", "schedule"),
        ("time zone", "timezone"),
        ("workflow", "workflow_id"),
        ("concurrency", "concurrency_policy"),
        ("catch-up", "catchup"),
        ("next fire", "next_fire"),
        ("last fired", "last_fired"),
        ("fires", "fires"),
        ("skipped", "skipped"),
        ("last skip", "last_skip"),
    ] {
        writeln!(out, "{label:<12} {}", text(&job[key]))?;
    }
    if job["parameters"].as_object().is_some_and(|p| !p.is_empty()) {
        writeln!(out, "{:<12} {}", "parameters", job["parameters"])?;
    }
    if job["suspend"] == Value::Bool(true) {
        writeln!(
            out,
            "{:<12} yes: it fires nothing until resumed",
            "suspended"
        )?;
    }
    if job["paused"] == Value::Bool(true) {
        writeln!(
            out,
            "{:<12} yes, since {}: it fires nothing until `orchestrator schedule resume {}`",
            "paused",
            text(&job["paused_at"]),
            text(&job["id"])
        )?;
    }
    match job["last_run"]["id"].as_str() {
        Some(run) => writeln!(
            out,
            "{:<12} {run} {}",
            "last run",
            text(&job["last_run"]["status"])
        )?,
        None => writeln!(out, "{:<12} none yet", "last run")?,
    }
    Ok(EXIT_OK)
}

fn create(context: &Context, args: &CreateArgs) -> Result<u8> {
    context.init_logging(true)?;
    if let Err(err) = crate::cron::CronSchedule::parse(&args.cron) {
        bail!("`{}` is not a valid cron expression: {err}", args.cron);
    }
    let mut document = Map::new();
    document.insert("name".into(), Value::from(args.name.clone()));
    document.insert("cron".into(), Value::from(args.cron.clone()));
    document.insert("workflow".into(), Value::from(args.workflow_id.clone()));
    if let Some(zone) = &args.timezone {
        document.insert("timezone".into(), Value::from(zone.clone()));
    }
    let parameters = parse_params(args.params.as_deref())?;
    if !parameters.is_empty() {
        document.insert("parameters".into(), Value::Object(parameters));
    }
    manifests::create_manifest(context, Kind::Schedule, &args.name, Value::Object(document))
}

/// `schedule pause ID` (`paused` true) and `schedule resume ID`: through the server when one
/// runs, else in the store directly.
fn pause(context: &Context, given: &str, paused: bool) -> Result<u8> {
    context.init_logging(true)?;
    let verb = if paused { "pause" } else { "resume" };
    let job = match Backend::open(context)? {
        Backend::Remote(client) => {
            let path = super::client::ApiPath::api(&["scheduler", "jobs", given, verb]);
            client.post(&path, &Value::Object(Map::new()))?
        }
        Backend::Local(store) => {
            let objects = store.objects()?;
            let zone = &context.config.config.scheduler.timezone;
            // This process holds the store: no scheduler pass runs beside it.
            let lock = crate::scheduler::StateLock::default();
            let id = crate::scheduler::set_paused(&store, &lock, &objects, given, paused, zone)?;
            let states = crate::scheduler::states(&store)?;
            crate::scheduler::jobs_json(&objects, &states, |_| None, zone)
                .into_iter()
                .find(|job| job["id"] == id.as_str())
                .unwrap_or_default()
        }
    };
    let id = text(&job["id"]);
    let mut out = std::io::stdout().lock();
    if paused {
        writeln!(
            out,
            "paused schedule {id}: it fires nothing until `orchestrator schedule resume {id}`"
        )?;
    } else if job["suspend"] == Value::Bool(true) {
        writeln!(
            out,
            "resumed schedule {id}, but its manifest says `suspend: true`: it fires nothing until that changes"
        )?;
    } else {
        writeln!(
            out,
            "resumed schedule {id}: next fire {}",
            text(&job["next_fire"])
        )?;
    }
    Ok(EXIT_OK)
}
