//! `trigger create webhook | list | show ID | deliveries ID`: webhook triggers, through the
//! running server when there is one (deliveries live in the store, which the server holds),
//! else the store.

use std::io::Write;

use crate::cli::OutputArgs;
use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

use super::backend::Backend;
use super::client::{ApiFailure, ApiPath};
use super::manifests::{self, table};
use super::{Context, OutputFormat, EXIT_OK};
use crate::manifest::Kind;
use crate::store::ObjectRecord;
use crate::triggers::{deliveries, DeliveryRecord, TriggerSpec};

/// `trigger` subcommands.
#[derive(Debug, Subcommand)]
pub enum TriggerCommand {
    /// Write a trigger manifest into triggers/ and apply it; prints its id.
    #[command(subcommand)]
    Create(CreateCommand),
    /// List the triggers in force.
    List(OutputArgs),
    /// Show one trigger and its latest deliveries.
    Show(ShowArgs),
    /// What happened to a trigger's deliveries, newest first.
    Deliveries(DeliveriesArgs),
}

/// `trigger create` kinds.
#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// A webhook: deliveries to `/hooks/...` that start a workflow.
    Webhook(WebhookArgs),
}

/// Who sends the deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProviderArg {
    /// GitHub (X-GitHub-Event, X-GitHub-Delivery, X-Hub-Signature-256).
    Github,
    /// Any other sender.
    Generic,
}

/// Arguments of `trigger create webhook`.
#[derive(Debug, Args)]
pub struct WebhookArgs {
    /// The path it listens on, under /hooks/ (e.g. /hooks/github).
    #[arg(long)]
    pub url: String,
    /// The workflow each accepted delivery runs (its id).
    #[arg(long)]
    pub workflow: String,
    /// Events that start a run, comma-separated (push,pull_request).
    #[arg(long, value_delimiter = ',')]
    pub events: Vec<String>,
    /// The secret deliveries are signed with, as a reference: env:NAME or file:PATH
    /// (default: the secret of another trigger on the same path, else env:GITHUB_WEBHOOK_SECRET,
    /// or env:WEBHOOK_SECRET for the generic provider).
    #[arg(long, conflicts_with = "insecure")]
    pub secret: Option<String>,
    /// No secret: accept unsigned deliveries (`insecure: true` in the manifest); anyone who
    /// can reach the server can then start the workflow.
    #[arg(long)]
    pub insecure: bool,
    /// Branch globs, comma-separated (main,release/*).
    #[arg(long, value_delimiter = ',')]
    pub branches: Vec<String>,
    /// Actions accepted for events that carry one, comma-separated (opened,synchronize).
    #[arg(long, value_delimiter = ',')]
    pub actions: Vec<String>,
    /// Globs of changed files a push must touch, comma-separated (src/**,*.md).
    #[arg(long, value_delimiter = ',')]
    pub paths: Vec<String>,
    /// Who sends the deliveries.
    #[arg(long, value_enum, default_value = "github")]
    pub provider: ProviderArg,
    /// The trigger's name (default: the path and the workflow, e.g. `github wf_smoke`); its
    /// id and file name are derived from it.
    #[arg(long)]
    pub name: Option<String>,
}

/// Arguments of `trigger show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Trigger id (or name).
    pub id: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `trigger deliveries`.
#[derive(Debug, Args)]
pub struct DeliveriesArgs {
    /// Trigger id (or name).
    pub id: String,
    /// How many deliveries, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Runs a `trigger` subcommand.
pub fn run(context: &Context, command: &TriggerCommand) -> Result<u8> {
    match command {
        TriggerCommand::Create(CreateCommand::Webhook(args)) => create(context, args),
        TriggerCommand::List(args) => list(context, args),
        TriggerCommand::Show(args) => show(context, args),
        TriggerCommand::Deliveries(args) => list_deliveries(context, args),
    }
}

fn create(context: &Context, args: &WebhookArgs) -> Result<u8> {
    if let Some(secret) = &args.secret {
        if !(secret.starts_with("env:") || secret.starts_with("file:")) || secret.len() < 5 {
            bail!("--secret takes a reference, env:NAME or file:PATH, never the secret itself (it would be written into the manifest)");
        }
    }
    let path = if args.url.starts_with('/') {
        args.url.clone()
    } else {
        format!("/{}", args.url)
    };
    let Some(rest) = path.strip_prefix(crate::triggers::HOOKS_PREFIX) else {
        bail!(
            "--url must be a path under /hooks/, e.g. /hooks/github (got `{}`)",
            args.url
        );
    };
    // Named after what it does, the path and the workflow, so that several triggers on one
    // path (one GitHub webhook starting several workflows) get files and ids of their own.
    let name = args.name.clone().unwrap_or_else(|| {
        format!("{} {}", rest.replace('/', " ").trim(), args.workflow)
            .trim()
            .to_owned()
    });
    if crate::manifest::slug(&name).is_empty() {
        bail!("the name `{name}` has no letters or digits to derive an id from: pass --name");
    }
    let mut manifest = Map::new();
    manifest.insert("name".into(), Value::from(name.clone()));
    manifest.insert("type".into(), Value::from("webhook"));
    manifest.insert("path".into(), Value::from(path.clone()));
    manifest.insert(
        "provider".into(),
        Value::from(match args.provider {
            ProviderArg::Github => "github",
            ProviderArg::Generic => "generic",
        }),
    );
    manifest.insert("workflow".into(), Value::from(args.workflow.clone()));
    for (field, values) in [
        ("events", &args.events),
        ("branches", &args.branches),
        ("actions", &args.actions),
        ("paths", &args.paths),
    ] {
        let values: Vec<&str> = values
            .iter()
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .collect();
        if !values.is_empty() {
            manifest.insert(field.into(), json!(values));
        }
    }
    if args.insecure {
        manifest.insert("insecure".into(), Value::Bool(true));
    } else {
        let secret = match &args.secret {
            Some(secret) => secret.clone(),
            None => match secret_of_path(context, &path) {
                Some((other, secret)) => {
                    eprintln!(
                        "note: using the secret of {other}, which listens on {path} too ({secret}): a sender signs a delivery once for every trigger of its path"
                    );
                    secret
                }
                None => match args.provider {
                    ProviderArg::Github => "env:GITHUB_WEBHOOK_SECRET",
                    ProviderArg::Generic => "env:WEBHOOK_SECRET",
                }
                .to_owned(),
            },
        };
        manifest.insert("secret".into(), Value::from(secret));
    }
    // Written into triggers/ and applied with the whole project, as `workflow create`
    // does; refused in git-source mode.
    let code = manifests::create_manifest(context, Kind::Trigger, &name, Value::Object(manifest))?;
    if code == EXIT_OK {
        println!("deliveries to {path} run {}", args.workflow);
    }
    Ok(code)
}

/// The id and secret reference of a trigger the project's manifests declare on `path`, if
/// any declares one with a secret: the default secret of another trigger on that path.
fn secret_of_path(context: &Context, path: &str) -> Option<(String, String)> {
    let (snapshot, _) = crate::reconcile::load_manifests(&context.config, &[]).ok()?;
    let desired = crate::reconcile::desired_set(&snapshot);
    desired
        .objects
        .values()
        .filter(|o| o.key.kind == Kind::Trigger && o.spec["path"] == path)
        .find_map(|o| {
            let secret = o.spec["secret"].as_str()?;
            Some((o.key.id.clone(), secret.to_owned()))
        })
}

/// The live triggers among the records.
fn triggers_of(records: impl IntoIterator<Item = ObjectRecord>) -> Vec<TriggerSpec> {
    records
        .into_iter()
        .filter(|r| r.key.kind == Kind::Trigger && r.is_live())
        .filter_map(|r| {
            TriggerSpec::from_spec(
                &r.key.id,
                &r.name,
                r.spec.as_deref().unwrap_or(&Value::Null),
            )
            .ok()
        })
        .collect()
}

fn find(triggers: Vec<TriggerSpec>, id: &str) -> Result<TriggerSpec> {
    let names: Vec<String> = triggers.iter().map(|t| t.id.clone()).collect();
    if let Some(found) = triggers
        .iter()
        .position(|t| t.id == id)
        .or_else(|| triggers.iter().position(|t| t.name == id))
    {
        return Ok(triggers.into_iter().nth(found).expect("found"));
    }
    let hint = crate::util::did_you_mean(id, names.iter().map(String::as_str))
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    bail!("no trigger `{id}` in the store{hint} (`orchestrator trigger list` shows them)")
}

fn print_value(output: OutputFormat, value: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if output == OutputFormat::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    } else {
        write!(out, "{}", crate::reconcile::diff::to_yaml(value))?;
    }
    Ok(())
}

fn list(context: &Context, args: &OutputArgs) -> Result<u8> {
    context.init_logging(true)?;
    let triggers = triggers_of(Backend::open(context)?.objects()?.into_values());
    if args.output != OutputFormat::Table {
        let summaries: Vec<Value> = triggers.iter().map(TriggerSpec::summary).collect();
        print_value(args.output, &Value::Array(summaries))?;
        return Ok(EXIT_OK);
    }
    let list = |items: &[String]| {
        if items.is_empty() {
            "any".to_owned()
        } else {
            items.join(",")
        }
    };
    let rows: Vec<[String; 7]> = triggers
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                t.path.clone(),
                t.summary()["provider"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                t.workflow.clone(),
                list(&t.events),
                list(&t.branches),
                match (&t.secret, t.enabled) {
                    (_, false) => "disabled".to_owned(),
                    (Some(_), true) => "signed".to_owned(),
                    (None, true) => "no secret".to_owned(),
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "PATH", "PROVIDER", "WORKFLOW", "EVENTS", "BRANCHES", "SECRET"],
            &rows
        )
    );
    Ok(EXIT_OK)
}

/// A trigger's newest deliveries and how many are kept: from the server, or the store.
fn deliveries_of(
    backend: &Backend,
    id: &str,
    limit: usize,
) -> Result<(Vec<DeliveryRecord>, usize)> {
    match backend {
        Backend::Local(store) => Ok(deliveries::list(store, id, limit)?),
        Backend::Remote(client) => {
            let path = ApiPath::api(&["triggers", id, "deliveries"]).query("limit", limit);
            let value = match client.get(&path) {
                Ok(value) => value,
                // No such trigger and nothing kept for it: the caller says so, in the same
                // words as without a server.
                Err(err) if ApiFailure::is_not_found(&err) => return Ok((Vec::new(), 0)),
                Err(err) => return Err(err),
            };
            let records: Vec<DeliveryRecord> = serde_json::from_value(value["deliveries"].clone())
                .context("the server's deliveries are not in the expected shape")?;
            Ok((records, value["total"].as_u64().unwrap_or(0) as usize))
        }
    }
}

fn show(context: &Context, args: &ShowArgs) -> Result<u8> {
    context.init_logging(true)?;
    let backend = Backend::open(context)?;
    let records = backend.objects()?;
    let trigger = find(triggers_of(records.values().cloned()), &args.id)?;
    let record = records
        .values()
        .find(|r| r.key.kind == Kind::Trigger && r.key.id == trigger.id)
        .cloned();
    let (recent, total) = deliveries_of(&backend, &trigger.id, 10)?;
    if args.output != OutputFormat::Table {
        let mut value = trigger.summary();
        value["source_file"] = json!(record.as_ref().map(|r| &r.source_file));
        value["deliveries"] = json!(total);
        value["recent_deliveries"] = json!(recent);
        print_value(args.output, &value)?;
        return Ok(EXIT_OK);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} ({})  from {}",
        trigger.id,
        trigger.name,
        record.as_ref().map_or("?", |r| r.source_file.as_str())
    )?;
    let mut summary = trigger.summary();
    if let Value::Object(map) = &mut summary {
        map.shift_remove("id");
        map.shift_remove("name");
    }
    write!(out, "{}", crate::reconcile::diff::to_yaml(&summary))?;
    writeln!(out, "\nrecent deliveries ({total} kept):")?;
    if recent.is_empty() {
        writeln!(out, "  none")?;
    }
    write!(out, "{}", indent(&delivery_table(&recent)))?;
    Ok(EXIT_OK)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn delivery_table(records: &[DeliveryRecord]) -> String {
    if records.is_empty() {
        return String::new();
    }
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            let event = match (&r.event, &r.action) {
                (Some(event), Some(action)) => format!("{event}.{action}"),
                (Some(event), None) => event.clone(),
                (None, _) => "-".to_owned(),
            };
            [
                r.delivery.clone(),
                event,
                r.result.as_str().to_owned(),
                r.run_id.clone().unwrap_or_else(|| "-".to_owned()),
                r.received_at.clone(),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &["DELIVERY", "EVENT", "RESULT", "RUN", "TIME", "REASON"],
        &rows,
    )
}

fn list_deliveries(context: &Context, args: &DeliveriesArgs) -> Result<u8> {
    context.init_logging(true)?;
    if args.limit == 0 {
        bail!("--limit must be at least 1");
    }
    let backend = Backend::open(context)?;
    // A trigger no longer in force still shows the deliveries it kept.
    let id = match find(triggers_of(backend.objects()?.into_values()), &args.id) {
        Ok(trigger) => trigger.id,
        Err(err) => {
            if deliveries_of(&backend, &args.id, 1)?.1 == 0 {
                return Err(err);
            }
            args.id.clone()
        }
    };
    let (records, total) = deliveries_of(&backend, &id, args.limit)?;
    if args.output != OutputFormat::Table {
        print_value(
            args.output,
            &json!({"trigger": id, "deliveries": records, "total": total}),
        )?;
        return Ok(EXIT_OK);
    }
    if records.is_empty() {
        println!("no deliveries for {id} yet");
        return Ok(EXIT_OK);
    }
    print!("{}", delivery_table(&records));
    if total > records.len() {
        println!("({} of {total} kept; --limit shows more)", records.len());
    }
    Ok(EXIT_OK)
}
