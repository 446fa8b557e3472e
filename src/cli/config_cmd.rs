//! `config show` and `config validate`.

use std::io::Write;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::{Cli, Context, OutputFormat, EXIT_FINDINGS, EXIT_OK};
use crate::config::{check_text, Environment};
use crate::diagnostics::Diagnostic;

/// `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration of an environment and where it came from.
    Show(ShowArgs),
    /// Validate every environment's configuration file against schemas/config.json.
    Validate,
}

/// Arguments of `config show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Output format (yaml unless json is asked for).
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Yaml)]
    pub output: OutputFormat,
}

/// Runs `config show` (validate is handled before configuration is loaded).
pub fn run(context: &Context, command: &ConfigCommand) -> Result<u8> {
    match command {
        ConfigCommand::Show(args) => show(context, args),
        ConfigCommand::Validate => validate(&context.cli),
    }
}

fn show(context: &Context, args: &ShowArgs) -> Result<u8> {
    let loaded = &context.config;
    let value = serde_json::to_value(&loaded.config)?;
    let mut out = std::io::stdout().lock();
    if args.output == OutputFormat::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        return Ok(EXIT_OK);
    }
    let from = match &loaded.file {
        Some(file) => file.display().to_string(),
        None => "embedded defaults".to_owned(),
    };
    writeln!(out, "# environment: {}", loaded.config.environment)?;
    writeln!(out, "# from: {from}")?;
    if !loaded.overrides.is_empty() {
        writeln!(out, "# overridden by: {}", loaded.overrides.join(", "))?;
    }
    write!(out, "{}", crate::reconcile::diff::to_yaml(&value))?;
    Ok(EXIT_OK)
}

/// `config validate`: every `config/<environment>.yaml` present, or the `--config` file.
pub fn validate(cli: &Cli) -> Result<u8> {
    let files: Vec<std::path::PathBuf> = match &cli.config {
        Some(file) => vec![file.clone()],
        None => Environment::ALL
            .iter()
            .map(|e| e.file_path())
            .filter(|p| cli.project_dir.join(p).exists())
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    if files.is_empty() {
        writeln!(
            out,
            "no configuration files under {}/config: the embedded defaults are in use (orchestrator init writes them)",
            cli.project_dir.display()
        )?;
        return Ok(EXIT_OK);
    }
    let mut problems: Vec<Diagnostic> = Vec::new();
    for file in &files {
        let path = cli.project_dir.join(file);
        let shown = file.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) => {
                problems.push(Diagnostic::error(
                    &shown,
                    0,
                    0,
                    "",
                    format!("cannot read: {err}"),
                ));
                continue;
            }
        };
        let (_, diagnostics) = check_text(&shown, &text);
        for diagnostic in &diagnostics {
            writeln!(out, "{}", diagnostic.render(Some(&text), false))?;
        }
        if diagnostics.is_empty() {
            writeln!(out, "{shown}: ok")?;
        }
        problems.extend(diagnostics);
    }
    if problems.is_empty() {
        writeln!(out, "configuration valid: {} file(s)", files.len())?;
        Ok(EXIT_OK)
    } else {
        writeln!(out, "configuration invalid: {} error(s)", problems.len())?;
        Ok(EXIT_FINDINGS)
    }
}
