//! `init [DIR]`: scaffolds a project with configuration for the four environments, the
//! manifest directories holding working examples, the JSON Schemas their modelines name
//! (`schemas/`), and a .gitignore. The files written are
//! the ones this repository itself runs on, embedded at build time.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use super::{Cli, EXIT_OK};
use crate::config::Environment;

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to scaffold (created if missing; default: the project directory).
    pub dir: Option<PathBuf>,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

/// Every file `init` writes, as (project-relative path, content).
pub fn scaffold_files() -> Vec<(String, &'static str)> {
    let mut files: Vec<(String, &'static str)> = Environment::ALL
        .iter()
        .map(|e| (e.file_path().display().to_string(), e.default_file()))
        .collect();
    // The schemas the manifests' `yaml-language-server` modelines name (`../schemas/...`).
    files.extend(
        crate::schema::published()
            .into_iter()
            .map(|(file, text)| (format!("schemas/{file}"), text)),
    );
    files.extend([
        (
            "workflows/api_tests.json".to_owned(),
            include_str!("../../workflows/api_tests.json"),
        ),
        (
            "workflows/smoke.yaml".to_owned(),
            include_str!("../../workflows/smoke.yaml"),
        ),
        (
            "workflows/api_tests_production.yaml".to_owned(),
            include_str!("../../workflows/api_tests_production.yaml"),
        ),
        (
            "templates/api_test_suite.json".to_owned(),
            include_str!("../../templates/api_test_suite.json"),
        ),
        (
            "agents/test_runner.yaml".to_owned(),
            include_str!("../../agents/test_runner.yaml"),
        ),
        (
            "schedules/nightly.yaml".to_owned(),
            include_str!("../../schedules/nightly.yaml"),
        ),
        (
            "alerts/alerts.json".to_owned(),
            include_str!("../../alerts/alerts.json"),
        ),
        (
            "triggers/github.yaml".to_owned(),
            include_str!("../../triggers/github.yaml"),
        ),
        (
            "suites/setup.sh".to_owned(),
            include_str!("../../suites/setup.sh"),
        ),
        (
            "suites/api.sh".to_owned(),
            include_str!("../../suites/api.sh"),
        ),
        (
            ".gitignore".to_owned(),
            "data/\nlogs/\nreports/\n.orchestrator/\n",
        ),
    ]);
    files
}

/// Runs `init`.
pub fn run(cli: &Cli, args: &InitArgs) -> Result<u8> {
    let root = match &args.dir {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => cli.project_dir.join(dir),
        None => cli.project_dir.clone(),
    };
    let files = scaffold_files();
    if !args.force {
        let existing: Vec<&str> = files
            .iter()
            .filter(|(path, _)| root.join(path).exists())
            .map(|(path, _)| path.as_str())
            .collect();
        if !existing.is_empty() {
            bail!(
                "{} already has {}: nothing written; use --force to overwrite",
                root.display(),
                existing.join(", ")
            );
        }
    }
    let mut out = std::io::stdout().lock();
    for (path, content) in &files {
        let target = root.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create directory {}", parent.display()))?;
        }
        fs::write(&target, content)
            .with_context(|| format!("cannot write {}", target.display()))?;
        writeln!(out, "created {path}")?;
    }
    writeln!(
        out,
        "initialised {}; next: orchestrator validate && orchestrator apply",
        root.display()
    )?;
    Ok(EXIT_OK)
}
