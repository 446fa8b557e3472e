//! `validate`, `diff`, `apply` and `get`: manifests from the project's directories (or the
//! paths given) through validation, the plan, and the store.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::backend::Backend;
use super::client::{ApiClient, ApiPath};
use super::{Context, OutputFormat, EXIT_ERROR, EXIT_FINDINGS, EXIT_OK};
use crate::diagnostics::{count, Diagnostic};
use crate::manifest::Kind;
use crate::reconcile::{self, diff::render_change, ApplyReport, Plan, Prepared, ReconcileOptions};
use crate::source::Snapshot;
use crate::store::{ObjectRecord, Store};

/// Arguments of `validate`.
#[derive(Debug, Args)]
#[command(after_help = "\
Formats (-o):
  table  compiler-style diagnostics with the source line, then
         `validated N objects in N files: N errors, N warnings`
  json   {revision, files, objects, errors, warnings, diagnostics}; each diagnostic has
         severity, file, line, column, pointer (JSON pointer) and message
  yaml   the same as YAML

Exit codes:
  0  no errors (warnings allowed)
  1  errors in the manifests
  2  the command could not run: a path that does not exist, unreadable configuration,
     a directory with neither manifests nor configuration, stdin that is not UTF-8

`-` as a PATH reads manifests from stdin (shown as <stdin>): `orchestrator validate - < x.yaml`.
Documents read there must say their `kind`.")]
pub struct ValidateArgs {
    /// Files or directories (default: the configured manifest directories); `-` is stdin.
    pub paths: Vec<PathBuf>,
    /// Output format: table (compiler-style diagnostics), json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `diff`.
#[derive(Debug, Args)]
#[command(after_help = "\
Formats (-o):
  table  a unified diff per object, then `N to create, N to update, N to delete`
  json   {plan: {create, update, delete, unchanged, invalid, kept}, summary, diagnostics}
  yaml   the same as YAML

Exit codes:
  0  no differences
  1  differences
  2  invalid manifests, or the command could not run")]
pub struct DiffArgs {
    /// Files or directories (default: the configured manifest directories).
    pub paths: Vec<PathBuf>,
    /// Output format: table (unified diffs), json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Files or directories (default: the configured manifest directories).
    pub paths: Vec<PathBuf>,
    /// Show what would be done; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Remove objects whose manifests are gone.
    #[arg(long)]
    pub prune: bool,
    /// Output format: table (one line per change) or json.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// Only objects of this kind: workflow, workflowtemplate, agent, schedule, alert,
    /// trigger, dashboard or quarantine.
    #[arg(value_parser = parse_kind)]
    pub kind: Option<Kind>,
    /// Only the object with this id; with -o json or yaml, the object itself (not a list).
    pub id: Option<String>,
    /// Include pruned objects.
    #[arg(long)]
    pub all: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

fn parse_kind(text: &str) -> Result<Kind, String> {
    Kind::parse(text).ok_or_else(|| {
        format!(
            "unknown kind `{text}`: expected one of {}",
            Kind::ALL.map(|k| k.as_str().to_lowercase()).join(", ")
        )
    })
}

/// The manifests the command works on, read into memory.
struct Loaded {
    snapshot: Snapshot,
    /// Source paths given on the command line, as shown in records (for scoping deletions).
    scope: Option<Vec<String>>,
}

/// How stdin is shown in diagnostics when `-` is given as a path.
const STDIN_NAME: &str = "<stdin>";

/// [`load`] where `-` among the paths is a manifest stream read from stdin.
fn load_with_stdin(context: &Context, paths: &[PathBuf]) -> Result<Loaded> {
    use anyhow::Context as _;
    if !paths.iter().any(|p| p.as_os_str() == "-") {
        return load(context, paths);
    }
    let others: Vec<PathBuf> = paths
        .iter()
        .filter(|p| p.as_os_str() != "-")
        .cloned()
        .collect();
    let mut loaded = if others.is_empty() {
        Loaded {
            snapshot: Snapshot::default(),
            scope: Some(Vec::new()),
        }
    } else {
        load(context, &others)?
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut bytes)
        .context("cannot read stdin")?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "stdin is not UTF-8 text (invalid byte at {})",
            e.utf8_error().valid_up_to()
        )
    })?;
    let snapshot = &mut loaded.snapshot;
    snapshot.files.push(crate::source::SourceFile {
        path: STDIN_NAME.to_owned(),
        text,
    });
    let files: Vec<(String, &[u8])> = snapshot
        .files
        .iter()
        .map(|f| (f.path.clone(), f.text.as_bytes()))
        .collect();
    snapshot.revision = crate::source::revision_of("dir", &files);
    if let Some(scope) = &mut loaded.scope {
        scope.push(STDIN_NAME.to_owned());
    }
    Ok(loaded)
}

fn load(context: &Context, paths: &[PathBuf]) -> Result<Loaded> {
    let (snapshot, scope) = reconcile::load_manifests(&context.config, paths)?;
    let config = &context.config;
    if paths.is_empty()
        && config.file.is_none()
        && snapshot.files.is_empty()
        && snapshot.diagnostics.is_empty()
    {
        anyhow::bail!(
            "{} is not a project: no manifests in {} and no {} (`orchestrator init` scaffolds a project; `-C DIR` names another directory)",
            std::fs::canonicalize(&config.project_dir)
                .unwrap_or_else(|_| config.project_dir.clone())
                .display(),
            config
                .config
                .manifests
                .paths
                .iter()
                .map(|p| format!("{}/", p.display()))
                .collect::<Vec<_>>()
                .join(", "),
            config.config.environment.file_path().display()
        );
    }
    Ok(Loaded { snapshot, scope })
}

/// A reconcile's plan, diagnostics and report, computed here or by the running server.
struct Reconciled {
    plan: Plan,
    diagnostics: Vec<Diagnostic>,
    report: ApplyReport,
}

impl Reconciled {
    fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Reconciles the loaded manifests against the store (with `dry_run`, only plans). While a
/// server holds the store the server does it (`POST /api/diff` or `/api/apply`).
fn reconcile_loaded(
    context: &Context,
    loaded: &Loaded,
    prune: bool,
    dry_run: bool,
) -> Result<Reconciled> {
    if let Some(client) = ApiClient::for_context(context)? {
        let route = ApiPath::api(&[if dry_run { "diff" } else { "apply" }]);
        let paths = loaded.scope.clone().unwrap_or_default();
        let outcome = client.post(&route, &serde_json::json!({"paths": paths, "prune": prune}))?;
        let field = |name: &str| outcome.get(name).cloned().unwrap_or_default();
        return Ok(Reconciled {
            plan: serde_json::from_value(field("plan"))?,
            diagnostics: serde_json::from_value(field("diagnostics"))?,
            report: serde_json::from_value(field("report"))?,
        });
    }
    let store = if dry_run {
        super::backend::local_store(context)?
    } else {
        Store::open(&context.data_dir())?
    };
    let prepared = reconcile::prepare(
        &store,
        &loaded.snapshot,
        &ReconcileOptions {
            source: "dir".to_owned(),
            scope: loaded.scope.clone(),
            prune,
            use_memo: true,
        },
    )?;
    tracing::debug!(
        revision = %prepared.revision,
        from_memo = prepared.from_memo,
        "plan prepared"
    );
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let report = reconcile::apply(&store, &prepared, dry_run, &now)?;
    let Prepared {
        plan, diagnostics, ..
    } = prepared;
    Ok(Reconciled {
        plan,
        diagnostics,
        report,
    })
}

/// Renders diagnostics with source snippets.
fn render_diagnostics(snapshot: &Snapshot, diagnostics: &[Diagnostic], color: bool) -> String {
    let texts: HashMap<&str, &str> = snapshot
        .files
        .iter()
        .map(|f| (f.path.as_str(), f.text.as_str()))
        .collect();
    diagnostics
        .iter()
        .map(|d| d.render(texts.get(d.file.as_str()).copied(), color) + "\n")
        .collect()
}

fn problems_line(diagnostics: &[Diagnostic]) -> String {
    let (errors, warnings) = count(diagnostics);
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    format!(
        "{}, {}",
        plural(errors, "error"),
        plural(warnings, "warning")
    )
}

/// `validate`.
pub fn validate(context: &Context, args: &ValidateArgs) -> Result<u8> {
    context.init_logging(false)?;
    let loaded = load_with_stdin(context, &args.paths)?;
    let project_dir = context.config.project_dir.clone();
    let secrets = move |reference: &str| resolves_here(reference, &project_dir);
    let desired = &reconcile::desired_set_with(
        &loaded.snapshot,
        &reconcile::Surroundings {
            channels: Some(configured_channels(context)),
            secrets: Some(&secrets),
            workers: super::worker_cmd::workers_seen(context),
            today: Some(chrono::Utc::now().date_naive()),
            tests: super::tests_quarantine::known_tests(context),
        },
    );
    let objects = desired.objects.len() + desired.invalid.len();
    let files = loaded.snapshot.files.len() + count_unreadable(&loaded.snapshot);
    let mut out = std::io::stdout().lock();
    if args.output == OutputFormat::Json || args.output == OutputFormat::Yaml {
        let (errors, warnings) = count(&desired.diagnostics);
        let report = serde_json::json!({
            "revision": desired.revision,
            "files": files,
            "objects": objects,
            "errors": errors,
            "warnings": warnings,
            "diagnostics": desired.diagnostics,
        });
        write_value(&mut out, args.output, &report)?;
    } else {
        write!(
            out,
            "{}",
            render_diagnostics(&loaded.snapshot, &desired.diagnostics, context.color)
        )?;
        writeln!(
            out,
            "validated {objects} object{} in {files} file{}: {}",
            if objects == 1 { "" } else { "s" },
            if files == 1 { "" } else { "s" },
            problems_line(&desired.diagnostics)
        )?;
    }
    Ok(if desired.has_errors() {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}

/// The notification channels the configuration of some environment defines (the one in
/// force, and every `config/<environment>.yaml` that loads).
fn configured_channels(context: &Context) -> std::collections::BTreeSet<String> {
    let mut channels: std::collections::BTreeSet<String> = context
        .config
        .config
        .notifications
        .channels
        .keys()
        .cloned()
        .collect();
    for environment in crate::config::Environment::ALL {
        let options = crate::config::ConfigOptions {
            project_dir: context.config.project_dir.clone(),
            environment: Some(environment),
            config_file: None,
            env_vars: Vec::new(),
        };
        if let Ok(loaded) = crate::config::load(&options) {
            channels.extend(loaded.config.notifications.channels.into_keys());
        }
    }
    channels
}

/// Whether a secret reference resolves in this process's environment: `env:NAME` a set
/// variable, `file:PATH` (relative to the project) a readable file.
fn resolves_here(reference: &str, project_dir: &std::path::Path) -> Result<(), String> {
    if let Some(name) = reference.strip_prefix("env:") {
        return match std::env::var_os(name) {
            Some(_) => Ok(()),
            None => Err(format!(
                "the environment variable {name} is not set (a step or delivery that needs it fails)"
            )),
        };
    }
    if let Some(path) = reference.strip_prefix("file:") {
        let full = project_dir.join(path);
        return std::fs::File::open(&full)
            .map(|_| ())
            .map_err(|err| format!("{} cannot be read: {err}", full.display()));
    }
    Ok(())
}

/// A document as pretty JSON, or as YAML.
fn write_value(
    out: &mut impl Write,
    format: OutputFormat,
    value: &serde_json::Value,
) -> Result<()> {
    if format == OutputFormat::Yaml {
        write!(out, "{}", reconcile::diff::to_yaml(value))?;
    } else {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    }
    Ok(())
}

fn count_unreadable(snapshot: &Snapshot) -> usize {
    let mut files: Vec<&str> = snapshot
        .diagnostics
        .iter()
        .map(|d| d.file.as_str())
        .collect();
    files.dedup();
    files.len()
}

/// `diff`.
pub fn diff(context: &Context, args: &DiffArgs) -> Result<u8> {
    context.init_logging(true)?;
    let loaded = load(context, &args.paths)?;
    let prepared = reconcile_loaded(context, &loaded, false, true)?;
    let plan = &prepared.plan;
    let mut out = std::io::stdout().lock();
    if args.output == OutputFormat::Table {
        eprint!(
            "{}",
            render_diagnostics(
                &loaded.snapshot,
                &prepared.diagnostics,
                std::io::IsTerminal::is_terminal(&std::io::stderr()) && context.color
            )
        );
        write!(out, "{}", render_plan(plan, context.color))?;
        writeln!(out, "{}", plan.summary())?;
    } else {
        let value = serde_json::json!({
            "plan": plan,
            "summary": plan.summary(),
            "diagnostics": prepared.diagnostics,
        });
        write_value(&mut out, args.output, &value)?;
    }
    Ok(if prepared.has_errors() {
        EXIT_ERROR
    } else if plan.has_changes() {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}

fn render_plan(plan: &Plan, color: bool) -> String {
    let (bold, reset) = if color {
        ("\x1b[1m", "\x1b[0m")
    } else {
        ("", "")
    };
    let mut out = String::new();
    for (changes, what) in [
        (&plan.create, "create"),
        (&plan.update, "update"),
        (
            &plan.delete,
            "delete (manifest removed; apply --prune removes it)",
        ),
    ] {
        for change in changes {
            out.push_str(&format!(
                "{bold}{} {} ({}): {what}{reset}\n",
                change.key.kind, change.key.id, change.file
            ));
            out.push_str(&render_change(change, color));
        }
    }
    for held in &plan.invalid {
        let note = if held.last_good_in_force {
            "invalid manifest: the last good version stays in force"
        } else {
            "invalid manifest: not applied"
        };
        out.push_str(&format!(
            "{bold}{} {} ({}): {note}{reset}\n",
            held.key.kind, held.key.id, held.file
        ));
    }
    for key in &plan.kept {
        out.push_str(&format!(
            "{bold}{} {}: kept, its file cannot be read{reset}\n",
            key.kind, key.id
        ));
    }
    out
}

/// `apply`.
pub fn apply(context: &Context, args: &ApplyArgs) -> Result<u8> {
    context.init_logging(true)?;
    let loaded = load(context, &args.paths)?;
    let prepared = reconcile_loaded(context, &loaded, args.prune, args.dry_run)?;
    let plan = &prepared.plan;
    let report = &prepared.report;
    tracing::info!(
        revision = %report.revision,
        created = report.created.len(),
        updated = report.updated.len(),
        pruned = report.pruned.len(),
        unchanged = report.unchanged,
        invalid = report.invalid.len(),
        dry_run = report.dry_run,
        "apply finished"
    );
    let mut out = std::io::stdout().lock();
    if matches!(args.output, OutputFormat::Json | OutputFormat::Yaml) {
        let mut value = serde_json::to_value(report)?;
        value["diagnostics"] = serde_json::to_value(&prepared.diagnostics)?;
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        eprint!(
            "{}",
            render_diagnostics(&loaded.snapshot, &prepared.diagnostics, false)
        );
        let suffix = if args.dry_run { " (dry run)" } else { "" };
        for (keys, verb) in [
            (&report.created, "created"),
            (&report.updated, "configured"),
            (&report.pruned, "pruned"),
        ] {
            for key in keys {
                writeln!(out, "{} {} {verb}{suffix}", key.kind, key.id)?;
            }
        }
        for key in &report.not_pruned {
            writeln!(
                out,
                "{} {} not pruned: its manifest is gone (apply --prune removes it)",
                key.kind, key.id
            )?;
        }
        for held in &plan.invalid {
            let what = if held.last_good_in_force {
                "invalid: the last good version stays in force"
            } else {
                "invalid: not applied"
            };
            writeln!(out, "{} {} {what}", held.key.kind, held.key.id)?;
        }
        for key in &report.kept {
            writeln!(out, "{} {} kept: its file cannot be read", key.kind, key.id)?;
        }
        writeln!(
            out,
            "{}revision {}: {} created, {} configured, {} pruned, {} unchanged, {} invalid; {}",
            if args.dry_run {
                "dry run, nothing written: "
            } else {
                "applied "
            },
            report.revision,
            report.created.len(),
            report.updated.len(),
            report.pruned.len(),
            report.unchanged,
            report.invalid.len(),
            problems_line(&prepared.diagnostics)
        )?;
    }
    Ok(if prepared.has_errors() {
        EXIT_FINDINGS
    } else {
        EXIT_OK
    })
}

/// `get`.
pub fn get(context: &Context, args: &GetArgs) -> Result<u8> {
    context.init_logging(true)?;
    let store = Backend::open(context)?;
    let records: Vec<ObjectRecord> = store
        .objects()?
        .into_values()
        .filter(|r| args.kind.is_none_or(|k| r.key.kind == k))
        .filter(|r| args.id.as_ref().is_none_or(|id| &r.key.id == id))
        .filter(|r| args.all || r.status != crate::store::ObjectStatus::Pruned)
        .collect();
    if args.id.is_some() && records.is_empty() {
        anyhow::bail!(
            "no {} with id `{}` in the store",
            args.kind.map_or("object".to_owned(), |k| k.to_string()),
            args.id.as_deref().unwrap_or_default()
        );
    }
    let mut out = std::io::stdout().lock();
    match args.output {
        // One object asked for by id is the object itself, as kubectl answers.
        OutputFormat::Json | OutputFormat::Yaml => {
            let value = match (&args.id, records.as_slice()) {
                (Some(_), [record]) => serde_json::to_value(record)?,
                _ => serde_json::to_value(&records)?,
            };
            write_value(&mut out, args.output, &value)?;
        }
        OutputFormat::Table => {
            let rows: Vec<[String; 6]> = records
                .iter()
                .map(|r| {
                    [
                        r.key.kind.to_string(),
                        r.key.id.clone(),
                        r.name.clone(),
                        serde_json::to_value(r.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        r.applied_revision.clone().unwrap_or_else(|| "-".into()),
                        r.source_file.clone(),
                    ]
                })
                .collect();
            write!(
                out,
                "{}",
                table(&["KIND", "ID", "NAME", "STATUS", "REVISION", "FILE"], &rows)
            )?;
        }
    }
    Ok(EXIT_OK)
}

/// Left-aligned columns separated by two spaces. Control characters in a cell are shown
/// escaped ([`escape_control`]): a name holding a terminal escape sequence cannot recolour,
/// move or rewrite what the terminal shows.
pub fn table<const N: usize>(headers: &[&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.clone().map(|cell| escape_control(&cell).into_owned()))
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

/// Text with its control characters escaped for a terminal: `\t`, `\n`, `\r`, other C0
/// and C1 controls and DEL as `\x1b`-style hex, and the bidirectional overrides and isolates
/// (which reorder what follows them on screen) as `\u{202e}`. Anything else is unchanged.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) && (c as u32) < 0x100 => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Writes a new manifest of `kind` for `name` into its directory (`workflows/<slug>.yaml`,
/// ...) and reconciles the project, so the file stays the source of truth: what
/// `workflow create` and `schedule create` do. Reports `created KIND ID in FILE`; when the
/// object does not apply, the file is removed again and the problems are shown.
pub fn create_manifest(
    context: &Context,
    kind: Kind,
    name: &str,
    document: serde_json::Value,
) -> Result<u8> {
    create_manifest_from(context, kind, name, document, None)
}

/// The file a created manifest's document was read from (`workflow create --config FILE`):
/// its problems are shown there, at the line and column of the field.
pub struct Origin {
    /// The file as the user named it.
    pub file: String,
    /// Its text.
    pub text: String,
    /// The document read from it, with locations.
    pub document: crate::manifest::parse::ParsedDocument,
}

/// [`create_manifest`] for a document read from `origin`. The new manifest is checked
/// with the project's others before anything is written: when it would not apply, its
/// problems are shown (in `origin`, or by field) and nothing is left behind, no file and no
/// record.
pub fn create_manifest_from(
    context: &Context,
    kind: Kind,
    name: &str,
    document: serde_json::Value,
    origin: Option<Origin>,
) -> Result<u8> {
    use anyhow::{bail, Context as _};
    let slug = crate::manifest::slug(name);
    if slug.is_empty() {
        bail!("the name `{name}` has no letters or digits to derive an id from");
    }
    let relative = std::path::Path::new(kind.directory()).join(format!("{slug}.yaml"));
    let noun = kind.as_str().to_ascii_lowercase();
    if let Some(hint) = crate::controller::git::commit_instead_hint(&context.config, &relative) {
        bail!("{noun} create writes no files in git-source mode: {hint}");
    }
    let path = context.config.project_dir.join(&relative);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if path.exists() {
        bail!(
            "{} exists already: edit it, or pick another name",
            path.display()
        );
    }
    let schema = match kind {
        Kind::WorkflowTemplate => "workflow-template",
        other => other.directory().trim_end_matches('s'),
    };
    let text = format!(
        "# yaml-language-server: $schema=../schemas/{schema}.json\n{}",
        reconcile::diff::to_yaml(&document)
    );
    let noun_title = noun.clone();
    if !check_new_manifest(context, &relative, &text, origin.as_ref(), &noun_title)? {
        eprintln!("the {noun} was not created; fix the problems above and try again");
        return Ok(EXIT_FINDINGS);
    }
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    // The modeline's target; without it the manifest is as valid, so this only warns.
    if let Err(err) = super::schemas_cmd::ensure_in_project(&context.config.project_dir) {
        eprintln!("warning: {err:#}: the manifest's `$schema` modeline does not resolve");
    }
    // The whole project is reconciled, not just the new file: what the object relies on
    // (agents, templates, the workflow a schedule runs) must be in force with it.
    let code = apply(
        context,
        &ApplyArgs {
            paths: Vec::new(),
            dry_run: false,
            prune: false,
            output: OutputFormat::Table,
        },
    )?;
    let id = format!("{}{slug}", kind.id_prefix());
    let created = Backend::open(context)?.objects()?.values().any(|r| {
        r.key.kind == kind
            && r.key.id == id
            && r.is_live()
            && r.status == crate::store::ObjectStatus::Applied
    });
    if created {
        println!("created {noun} {id} in {}", relative.display());
        if code != EXIT_OK {
            eprintln!(
                "note: other manifests in the project have problems (shown above); {id} is applied"
            );
        }
        Ok(EXIT_OK)
    } else {
        let _ = std::fs::remove_file(&path);
        eprintln!("the {noun} was not created; fix the problems above and try again");
        Ok(EXIT_FINDINGS)
    }
}

/// Checks the text a create command would write as `relative` together with the project's
/// other manifests, and shows its errors: in `origin` at their line and column when the
/// document came from a file, else by field (the file does not exist). Whether it is valid.
fn check_new_manifest(
    context: &Context,
    relative: &std::path::Path,
    text: &str,
    origin: Option<&Origin>,
    noun: &str,
) -> Result<bool> {
    let shown = relative.display().to_string();
    let (mut snapshot, _) = reconcile::load_manifests(&context.config, &[])?;
    snapshot.files.retain(|f| f.path != shown);
    snapshot.files.push(crate::source::SourceFile {
        path: shown.clone(),
        text: text.to_owned(),
    });
    let desired = reconcile::desired_set(&snapshot);
    let problems: Vec<&Diagnostic> = desired
        .diagnostics
        .iter()
        .filter(|d| d.file == shown && d.is_error())
        .collect();
    if problems.is_empty() {
        return Ok(true);
    }
    let generated = crate::manifest::parse::parse_yaml(text)
        .ok()
        .and_then(|mut documents| (!documents.is_empty()).then(|| documents.remove(0)));
    let mut out = String::new();
    for problem in problems {
        match (origin, &generated) {
            (Some(origin), Some(generated)) => {
                // The pointer is the same in both documents; an unknown field is shown at
                // its key, as in the generated text.
                let at_key = generated.locations.locate(&problem.pointer, true)
                    == (problem.line, problem.column)
                    && generated.locations.locate(&problem.pointer, false)
                        != (problem.line, problem.column);
                let (line, column) = origin.document.locations.locate(&problem.pointer, at_key);
                let moved = Diagnostic {
                    file: origin.file.clone(),
                    line,
                    column,
                    ..problem.clone()
                };
                out.push_str(&moved.render(Some(&origin.text), context.color));
                out.push('\n');
            }
            _ => {
                let field = problem.pointer.trim_start_matches('/');
                let place = if field.is_empty() {
                    String::new()
                } else {
                    format!(" (the {noun}'s `{field}`)")
                };
                out.push_str(&format!("error: {}{place}\n", problem.message));
            }
        }
    }
    eprint!("{out}");
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_in_table_cells() {
        assert_eq!(escape_control("plain name"), "plain name");
        assert_eq!(escape_control("\x1b[31mred\x1b[0m"), "\\x1b[31mred\\x1b[0m");
        assert_eq!(
            escape_control("a\rb\nc\td\x7f\u{9b}"),
            "a\\rb\\nc\\td\\x7f\\x9b"
        );
        assert_eq!(escape_control("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape_control("ünïcödé 名前"), "ünïcödé 名前");
        let out = table(&["ID", "NAME"], &[["wf_a".into(), "\x1b[2Jboom".into()]]);
        assert_eq!(out, "ID    NAME\nwf_a  \\x1b[2Jboom\n");
        assert!(!out.contains('\x1b'));
    }
}
