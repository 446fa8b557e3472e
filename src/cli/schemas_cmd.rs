//! `schemas export DIR`: writes the published JSON Schemas (one per manifest kind and
//! `config.json`) into a directory, so an editor's `# yaml-language-server: $schema=...`
//! modeline, `check-jsonschema --schemafile` or a CI job can read them from anywhere. The
//! same files `init` writes into a project's `schemas/` and the server serves at
//! `/schemas/<file>`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::Subcommand;

use super::{Cli, EXIT_OK};

/// `schemas` subcommands.
#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Write every schema (workflow.json, schedule.json, ..., config.json) into DIR,
    /// replacing files of the same names; DIR is created if missing.
    Export {
        /// Target directory (relative to the project directory).
        dir: PathBuf,
    },
}

/// Runs a `schemas` subcommand; needs no configuration.
pub fn run(cli: &Cli, command: &SchemasCommand) -> Result<u8> {
    match command {
        SchemasCommand::Export { dir } => {
            let target = cli.project_dir.join(dir);
            let mut out = std::io::stdout().lock();
            for path in export(&target)? {
                writeln!(out, "wrote {}", path.display())?;
            }
            Ok(EXIT_OK)
        }
    }
}

/// Writes every published schema into `dir` (created if missing); returns the paths written.
pub fn export(dir: &Path) -> Result<Vec<PathBuf>> {
    fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    crate::schema::published()
        .into_iter()
        .map(|(file, text)| {
            let path = dir.join(file);
            fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
            Ok(path)
        })
        .collect()
}

/// Writes into `<project>/schemas/` each published schema the directory lacks (see
/// [`crate::source::dir::ensure_schemas`]).
pub fn ensure_in_project(project_dir: &Path) -> Result<()> {
    crate::source::dir::ensure_schemas(project_dir).with_context(|| {
        format!(
            "cannot write the schemas into {}",
            project_dir.join("schemas").display()
        )
    })
}
