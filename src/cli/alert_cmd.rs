//! `alert list | show ID | silence | silences | unsilence ID`: alert rules with their state,
//! value and last notification, and the silences that mute them. Through the running
//! server when there is one (it holds the store), else the store; the output is the same.

use std::collections::BTreeMap;
use std::io::Write;

use crate::cli::OutputArgs;
use anyhow::{bail, Context as _, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::backend::Backend;
use super::client::{ApiFailure, ApiPath};
use super::manifests::table;
use super::{Context, OutputFormat, EXIT_OK};
use crate::monitor::alerts::{self, SilenceRequest};

/// `alert` subcommands.
#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// List alert rules: state, since when, value, severity, silences, last notification.
    List(OutputArgs),
    /// Show one alert rule: its condition, status, notifications and history.
    Show(ShowArgs),
    /// Mute the notifications of an alert (by id or name) or of alerts with some labels.
    Silence(SilenceArgs),
    /// List silences: active, pending, and expired ones until they are pruned.
    Silences(OutputArgs),
    /// Expire a silence now.
    Unsilence(UnsilenceArgs),
}

/// Arguments of `alert show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Alert id (or name).
    pub id: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `alert silence`.
#[derive(Debug, Args)]
pub struct SilenceArgs {
    /// The alert to silence, by id or name; or give --label.
    pub id: Option<String>,
    /// Silence alerts whose label KEY equals VALUE (repeatable; all must match). `alertname`
    /// is the alert's name.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// How long, from now: 30m, 2h, 1d (default 1h).
    #[arg(long = "for", value_name = "DURATION", conflicts_with = "until")]
    pub duration: Option<String>,
    /// Until when, RFC 3339 (2026-05-01T18:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Why (default: `silenced from the command line` and what it mutes).
    #[arg(long)]
    pub comment: Option<String>,
    /// Who silences (default: $USER).
    #[arg(long)]
    pub author: Option<String>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `alert unsilence`.
#[derive(Debug, Args)]
pub struct UnsilenceArgs {
    /// The silence id (`alert silences` lists them).
    pub id: String,
}

/// Runs an `alert` subcommand.
pub fn run(context: &Context, command: &AlertCommand) -> Result<u8> {
    context.init_logging(true)?;
    match command {
        AlertCommand::List(args) => list(context, args),
        AlertCommand::Show(args) => show(context, args),
        AlertCommand::Silence(args) => silence(context, args),
        AlertCommand::Silences(args) => list_silences(context, args),
        AlertCommand::Unsilence(args) => unsilence(context, args),
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

/// A time as tables show it: RFC 3339 to the second.
fn time(value: &Value) -> String {
    value
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| {
            t.with_timezone(&Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|| text(value))
}

/// The value of an alert as tables show it.
fn value_text(alert: &Value) -> String {
    if alert["no_data"] == Value::Bool(true) && alert["value"].is_null() {
        return "no data".to_owned();
    }
    alerts::format_value(alert["value"].as_f64()).replace("no data", "-")
}

/// The last notification in a line: `firing 2026-...Z, 2/2 delivered` or `... muted`.
fn notification_text(alert: &Value) -> String {
    let last = &alert["last_notification"];
    if last.is_null() {
        return "-".to_owned();
    }
    let head = format!("{} {}", text(&last["status"]), time(&last["at"]));
    if last["muted_by"].as_array().is_some_and(|m| !m.is_empty()) {
        return format!("{head}, muted");
    }
    let channels: Vec<&str> = last["channels"]
        .as_array()
        .map(|c| c.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if channels.is_empty() {
        return format!("{head}, no channels");
    }
    let at = last["at"].as_str().unwrap_or_default();
    let mut delivered = 0;
    let mut failed = 0;
    for channel in &channels {
        let record = &alert["notifications"][channel];
        if record["queued_at"].as_str() != Some(at) {
            continue;
        }
        match record["outcome"]["delivered"].as_bool() {
            Some(true) => delivered += 1,
            Some(false) => failed += 1,
            None => {}
        }
    }
    let pending = channels.len() - delivered - failed;
    let mut parts = vec![format!("{delivered}/{} delivered", channels.len())];
    if failed > 0 {
        parts.push(format!("{failed} failed"));
    }
    if pending > 0 {
        parts.push(format!("{pending} in progress"));
    }
    format!("{head}, {}", parts.join(", "))
}

/// Every alert as `GET /api/alerts` shows it.
fn alerts_of(backend: &Backend) -> Result<Vec<Value>> {
    match backend {
        Backend::Remote(client) => {
            let answer = client.get(&ApiPath::api(&["alerts"]))?;
            Ok(answer["alerts"].as_array().cloned().unwrap_or_default())
        }
        Backend::Local(store) => {
            let rules = alerts::rules(&store.objects()?);
            let states = alerts::load_states(store)?;
            let silences = alerts::silences(store)?;
            Ok(alerts::alerts_json(&rules, &states, &silences, Utc::now()))
        }
    }
}

fn list(context: &Context, args: &OutputArgs) -> Result<u8> {
    let list = alerts_of(&Backend::open(context)?)?;
    if args.output != OutputFormat::Table {
        print_value(args.output, &Value::Array(list))?;
        return Ok(EXIT_OK);
    }
    if list.is_empty() {
        println!("no alert rules in force (alert manifests go in alerts/)");
        return Ok(EXIT_OK);
    }
    let rows: Vec<[String; 8]> = list
        .iter()
        .map(|alert| {
            let state = if alert["enabled"] == Value::Bool(false) {
                "disabled".to_owned()
            } else {
                text(&alert["state"])
            };
            [
                text(&alert["id"]),
                text(&alert["name"]),
                state,
                time(&alert["since"]),
                value_text(alert),
                text(&alert["severity"]),
                alert["silenced_by"]
                    .as_array()
                    .filter(|s| !s.is_empty())
                    .map(|s| s.iter().map(text).collect::<Vec<_>>().join(","))
                    .unwrap_or_else(|| "-".to_owned()),
                notification_text(alert),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "ID",
                "NAME",
                "STATE",
                "SINCE",
                "VALUE",
                "SEVERITY",
                "SILENCED BY",
                "LAST NOTIFICATION"
            ],
            &rows
        )
    );
    Ok(EXIT_OK)
}

/// One alert with its history, as `GET /api/alerts/{id}` shows it.
fn alert_of(backend: &Backend, id: &str) -> Result<Value> {
    match backend {
        Backend::Remote(client) => Ok(client.get(&ApiPath::api(&["alerts", id]))?),
        Backend::Local(store) => {
            let rules = alerts::rules(&store.objects()?);
            let rule = alerts::find_rule(&rules, id).map_err(anyhow::Error::msg)?;
            let status = store.state::<alerts::AlertStatus>(alerts::STATE_TREE, &rule.id)?;
            let silences = alerts::silences(store)?;
            let mut value = alerts::alert_json(rule, status.as_ref(), &silences, Utc::now());
            value["history"] = json!(alerts::history(store, &rule.id)?);
            Ok(value)
        }
    }
}

fn show(context: &Context, args: &ShowArgs) -> Result<u8> {
    let alert = alert_of(&Backend::open(context)?, &args.id)?;
    if args.output != OutputFormat::Table {
        print_value(args.output, &alert)?;
        return Ok(EXIT_OK);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} ({})  from {}",
        text(&alert["id"]),
        text(&alert["name"]),
        text(&alert["source_file"])
    )?;
    let state = if alert["enabled"] == Value::Bool(false) {
        "disabled".to_owned()
    } else if alert["since"].is_null() {
        text(&alert["state"])
    } else {
        format!("{} since {}", text(&alert["state"]), time(&alert["since"]))
    };
    let rows = [
        ("state", state),
        ("condition", text(&alert["condition"])),
        ("value", value_text(&alert)),
        ("duration", text(&alert["duration"])),
        ("severity", text(&alert["severity"])),
        ("actions", list_text(&alert["actions"])),
        ("repeat", text(&alert["repeat_interval"])),
        (
            "resolved",
            if alert["send_resolved"] == Value::Bool(true) {
                "notified".to_owned()
            } else {
                "not notified".to_owned()
            },
        ),
        ("fired at", time(&alert["fired_at"])),
        ("resolved at", time(&alert["resolved_at"])),
        ("evaluated", time(&alert["last_evaluation"])),
        ("silenced by", list_text(&alert["silenced_by"])),
        ("notified", notification_text(&alert)),
    ];
    for (label, value) in rows {
        writeln!(out, "{label:<12} {value}")?;
    }
    if let Some(values) = alert["values"].as_object().filter(|v| v.len() > 1) {
        for (metric, value) in values {
            writeln!(
                out,
                "{:<12} {metric} = {}",
                "",
                alerts::format_value(value.as_f64())
            )?;
        }
    }
    writeln!(out, "\nlabels:")?;
    for (key, value) in alert["labels"].as_object().into_iter().flatten() {
        writeln!(out, "  {key}={}", text(value))?;
    }
    writeln!(out, "annotations:")?;
    for (key, value) in alert["annotations"].as_object().into_iter().flatten() {
        writeln!(out, "  {key}: {}", text(value))?;
    }
    if let Some(channels) = alert["notifications"].as_object().filter(|c| !c.is_empty()) {
        writeln!(out, "channels:")?;
        let rows: Vec<[String; 5]> = channels
            .iter()
            .map(|(channel, record)| {
                let outcome = &record["outcome"];
                [
                    channel.clone(),
                    text(&record["status"]),
                    time(&record["queued_at"]),
                    match outcome["delivered"].as_bool() {
                        Some(true) => {
                            format!("delivered ({} attempts)", text(&outcome["attempts"]))
                        }
                        Some(false) => {
                            format!("failed after {} attempts", text(&outcome["attempts"]))
                        }
                        None => "in progress".to_owned(),
                    },
                    outcome["error"].as_str().unwrap_or("").to_owned(),
                ]
            })
            .collect();
        for line in table(&["CHANNEL", "STATUS", "QUEUED", "OUTCOME", "ERROR"], &rows).lines() {
            writeln!(out, "  {line}")?;
        }
    }
    writeln!(out, "history:")?;
    let history = alert["history"].as_array().cloned().unwrap_or_default();
    if history.is_empty() {
        writeln!(out, "  no transitions yet")?;
    }
    for entry in history.iter().rev() {
        let note = entry["note"]
            .as_str()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        writeln!(
            out,
            "  {}  {} -> {}  value {}{note}",
            time(&entry["at"]),
            text(&entry["from"]),
            text(&entry["to"]),
            alerts::format_value(entry["value"].as_f64())
        )?;
    }
    Ok(EXIT_OK)
}

fn list_text(value: &Value) -> String {
    match value.as_array() {
        Some(items) if !items.is_empty() => items.iter().map(text).collect::<Vec<_>>().join(", "),
        _ => "-".to_owned(),
    }
}

fn silence(context: &Context, args: &SilenceArgs) -> Result<u8> {
    let mut labels = BTreeMap::new();
    for label in &args.labels {
        let Some((key, value)) = label.split_once('=') else {
            bail!("--label `{label}` is not KEY=VALUE (e.g. --label severity=critical)");
        };
        if key.trim().is_empty() {
            bail!("--label `{label}` has an empty key: expected KEY=VALUE");
        }
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    if args.id.is_none() && labels.is_empty() {
        bail!("say what to silence: an alert id or name, or --label KEY=VALUE");
    }
    let ends_at = match &args.until {
        Some(until) => Some(
            DateTime::parse_from_rfc3339(until)
                .with_context(|| {
                    format!(
                        "--until `{until}` is not an RFC 3339 time such as 2026-05-01T18:00:00Z"
                    )
                })?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let comment = args.comment.clone().unwrap_or_else(|| {
        let what: Vec<String> = args
            .id
            .iter()
            .cloned()
            .chain(labels.iter().map(|(k, v)| format!("{k}={v}")))
            .collect();
        format!("silenced from the command line: {}", what.join(", "))
    });
    let request = SilenceRequest {
        alert: args.id.clone(),
        labels,
        ends_at,
        duration: match (&args.duration, ends_at) {
            (Some(d), _) => Some(d.clone()),
            (None, None) => Some("1h".to_owned()),
            (None, Some(_)) => None,
        },
        comment,
        created_by: Some(args.author.clone().unwrap_or_else(|| {
            std::env::var("USER")
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| "cli".to_owned())
        })),
        ..SilenceRequest::default()
    };
    let created = match Backend::open(context)? {
        Backend::Remote(client) => client
            .post(&ApiPath::api(&["silences"]), &silence_body(&request))
            .context("cannot create the silence")?,
        Backend::Local(store) => {
            let rules = alerts::rules(&store.objects()?);
            let silence = request
                .into_silence(&rules, Utc::now())
                .map_err(|e| anyhow::anyhow!("cannot create the silence: {e}"))?;
            alerts::put_silence(&store, &silence)?;
            silence.to_json(&rules, Utc::now())
        }
    };
    if args.output != OutputFormat::Table {
        print_value(args.output, &created)?;
        return Ok(EXIT_OK);
    }
    println!(
        "{} mutes {} until {}",
        text(&created["id"]),
        matchers_text(&created),
        time(&created["ends_at"])
    );
    let matched = list_text(&created["alerts"]);
    println!(
        "alerts it matches now: {}",
        if matched == "-" {
            "none".to_owned()
        } else {
            matched
        }
    );
    Ok(EXIT_OK)
}

/// The body of `POST /api/silences` for a request.
fn silence_body(request: &SilenceRequest) -> Value {
    json!({
        "alert": request.alert,
        "labels": request.labels,
        "ends_at": request.ends_at,
        "duration": request.duration,
        "comment": request.comment,
        "created_by": request.created_by,
    })
}

fn matchers_text(silence: &Value) -> String {
    silence["matchers"]
        .as_array()
        .map(|m| {
            m.iter()
                .map(|m| format!("{}={}", text(&m["name"]), text(&m["value"])))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn list_silences(context: &Context, args: &OutputArgs) -> Result<u8> {
    let list = match Backend::open(context)? {
        Backend::Remote(client) => client.get(&ApiPath::api(&["silences"]))?["silences"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Backend::Local(store) => {
            let rules = alerts::rules(&store.objects()?);
            let now = Utc::now();
            alerts::silences(&store)?
                .iter()
                .map(|s| s.to_json(&rules, now))
                .collect()
        }
    };
    if args.output != OutputFormat::Table {
        print_value(args.output, &Value::Array(list))?;
        return Ok(EXIT_OK);
    }
    if list.is_empty() {
        println!("no silences");
        return Ok(EXIT_OK);
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|s| {
            [
                text(&s["id"]),
                text(&s["state"]),
                matchers_text(s),
                time(&s["ends_at"]),
                list_text(&s["alerts"]),
                text(&s["created_by"]),
                text(&s["comment"]),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "STATE", "MATCHERS", "ENDS", "ALERTS", "BY", "COMMENT"],
            &rows
        )
    );
    Ok(EXIT_OK)
}

fn unsilence(context: &Context, args: &UnsilenceArgs) -> Result<u8> {
    let missing = || {
        anyhow::anyhow!(
            "no silence `{}` (`orchestrator alert silences` lists them)",
            args.id
        )
    };
    let expired = match Backend::open(context)? {
        Backend::Remote(client) => match client.delete(&ApiPath::api(&["silences", &args.id])) {
            Ok(expired) => expired,
            Err(err) if ApiFailure::is_not_found(&err) => return Err(missing()),
            Err(err) => return Err(err),
        },
        Backend::Local(store) => {
            let rules = alerts::rules(&store.objects()?);
            let now = Utc::now();
            match alerts::expire_silence(&store, &args.id, now)? {
                Some(silence) => silence.to_json(&rules, now),
                None => return Err(missing()),
            }
        }
    };
    println!(
        "{} expired at {}",
        text(&expired["id"]),
        time(&expired["ends_at"])
    );
    Ok(EXIT_OK)
}
