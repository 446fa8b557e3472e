//! `orchestrator tests ...`: what the orchestrator knows about a workflow's tests.
//! `tests list` and `tests show ID` (every test's history: the lists and one test's
//! timeline) are `tests_list.rs`'s.
//! `tests affected --workflow W --from REV [--to REV]` prints the plan impact selection
//! (`select: affected`) makes for a change: which `run_tests` suites would run or be
//! skipped, and which changed paths decided it. Revisions are read in the git source's
//! repository (its mirror under the data directory) when the project follows one, else in
//! the repository whose work tree holds the project. `tests quarantine suggest` is
//! `tests_quarantine.rs`'s.

use std::collections::BTreeSet;
use std::io::Write as _;

use anyhow::{bail, Context as _, Result};
use clap::Subcommand;
use serde_json::json;

use super::backend::Backend;
use super::manifests::table;
use super::tests_quarantine;
use super::{tests_list, Context, OutputFormat, EXIT_OK};
use crate::engine::expand::Scope;
use crate::engine::{impact, run};
use crate::source::changes::{short, Repo};
use crate::spec::impact::{decide, selects_affected, Baseline};
use crate::spec::workflow::WorkflowSpec;

/// The `tests` commands.
#[derive(Debug, Subcommand)]
pub enum TestsCommand {
    /// List tests by what their history says: flaky, failing, new failures, slowest,
    /// quarantined.
    List(tests_list::ListArgs),
    /// Show a test: its record, the Quarantine entry covering it, and its timeline across
    /// runs and revisions.
    Show(tests_list::ShowArgs),
    /// Which test suites a change affects: the plan a workflow's `select: affected` steps
    /// would follow between two revisions (exit 2 on a revision that does not exist).
    Affected(AffectedArgs),
    /// Quarantine manifests for flaky tests (`tests quarantine suggest`).
    #[command(subcommand)]
    Quarantine(tests_quarantine::QuarantineCommand),
}

/// Arguments of `tests affected`.
#[derive(Debug, clap::Args)]
pub struct AffectedArgs {
    /// Workflow id (or name).
    #[arg(long)]
    pub workflow: String,
    /// The revision the change starts from (a commit sha, branch or tag).
    #[arg(long)]
    pub from: String,
    /// The revision the change ends at.
    #[arg(long, default_value = "HEAD")]
    pub to: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Runs a `tests` command.
pub fn run(context: &Context, command: &TestsCommand) -> Result<u8> {
    context.init_logging(true)?;
    match command {
        TestsCommand::List(args) => tests_list::list(context, args),
        TestsCommand::Show(args) => tests_list::show(context, args),
        TestsCommand::Affected(args) => affected(context, args),
        TestsCommand::Quarantine(command) => tests_quarantine::run(context, command),
    }
}

/// The repository `--from`/`--to` name revisions of.
fn repository(context: &Context) -> Result<Repo> {
    let git = context
        .config
        .config
        .source
        .as_ref()
        .and_then(|s| s.git.as_ref());
    if let Some(git) = git {
        let path = std::path::PathBuf::from(git.path.as_deref().unwrap_or("."));
        return Repo::git_source(&context.data_dir(), &path).with_context(|| {
            format!(
                "the git source's repository is not fetched yet (no mirror in {}): `orchestrator start` fetches it",
                crate::source::changes::mirror_dir(&context.data_dir()).display()
            )
        });
    }
    Repo::project(&context.config.project_dir).with_context(|| {
        format!(
            "the project {} is not in a git work tree and follows no git source (source.git): --from and --to name revisions of one",
            context.config.project_dir.display()
        )
    })
}

fn affected(context: &Context, args: &AffectedArgs) -> Result<u8> {
    let repo = repository(context)?;
    let from = repo.resolve(&args.from).context("--from")?;
    let to = repo.resolve(&args.to).context("--to")?;
    let files = repo.changed_files(&from, &to)?;
    let objects = Backend::open(context)?.objects()?;
    let record = run::find_workflow_in(&objects, &args.workflow)?;
    let expanded = run::expand_workflow_in(&objects, &record.spec.clone().unwrap_or_default())?;
    let workflow = expanded.workflow;
    let spec = WorkflowSpec::compile(&workflow);
    let agents = run::agent_configs(&objects);
    let given = expanded.preset.clone();
    let scope = Scope {
        params: crate::spec::params::resolve(expanded.declared.as_ref(), &given).unwrap_or(given),
        ..Scope::default()
    };
    let (steps, claims) = impact::selectables(&workflow, &spec, &agents, &scope, true);
    if steps.is_empty() {
        bail!(
            "workflow {} has no test_runner run_tests step with a test_suite: there is nothing to select",
            record.key.id
        );
    }
    let used: BTreeSet<String> = steps
        .iter()
        .map(|(index, _)| spec.steps[*index].agent.clone())
        .collect();
    let manifests =
        impact::manifest_paths(&objects, &record.key.id, &workflow, &used, &repo.prefix);
    let selectable: Vec<_> = steps.iter().map(|(_, s)| s.clone()).collect();
    let baseline = Baseline::Changes {
        from: format!("{}..{} in {}", short(&from), short(&to), repo.label),
        files: files.clone(),
    };
    let plan = decide(baseline, &selectable, &claims, &manifests);
    let selected: Vec<bool> = steps
        .iter()
        .map(|(index, _)| selects_affected(&spec.steps[*index].raw, &workflow))
        .collect();
    if args.output != OutputFormat::Table {
        let mut steps_json = Vec::new();
        for (decision, selects) in plan.steps.iter().zip(&selected) {
            let mut value = serde_json::to_value(decision)?;
            value["select"] = json!(if *selects { "affected" } else { "all" });
            steps_json.push(value);
        }
        let value = json!({
            "workflow": record.key.id,
            "repository": repo.label,
            "from": from,
            "to": to,
            "changed_files": files,
            "everything": plan.everything,
            "manifests": manifests,
            "steps": steps_json,
        });
        let mut out = std::io::stdout().lock();
        match args.output {
            OutputFormat::Yaml => write!(out, "{}", crate::reconcile::diff::to_yaml(&value))?,
            _ => writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?,
        }
        return Ok(EXIT_OK);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} changed between {} and {} in {}",
        record.key.id,
        match files.len() {
            1 => "1 file".to_owned(),
            n => format!("{n} files"),
        },
        short(&from),
        short(&to),
        repo.label
    )?;
    for file in &files {
        writeln!(out, "  {file}")?;
    }
    if let Some(why) = &plan.everything {
        writeln!(out, "everything runs: {why}")?;
    }
    let rows: Vec<[String; 5]> = plan
        .steps
        .iter()
        .zip(&selected)
        .map(|(decision, selects)| {
            let verdict = if decision.run { "run" } else { "skip" };
            let why = if *selects {
                decision.reason.clone()
            } else {
                format!(
                    "{} (the step has no `select: affected`: it runs anyway)",
                    decision.reason
                )
            };
            [
                decision.step.clone(),
                decision.suite.clone(),
                verdict.to_owned(),
                if decision.paths.is_empty() {
                    "-".to_owned()
                } else {
                    decision.paths.join(", ")
                },
                why,
            ]
        })
        .collect();
    write!(
        out,
        "{}",
        table(&["STEP", "SUITE", "PLAN", "PATHS", "WHY"], &rows)
    )?;
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    #[test]
    fn affected_takes_its_flags() {
        let cli = Cli::parse_from([
            "orchestrator",
            "tests",
            "affected",
            "--workflow",
            "wf_a",
            "--from",
            "HEAD~1",
            "-o",
            "json",
        ]);
        let Command::Tests(TestsCommand::Affected(args)) = cli.command else {
            panic!("not tests affected");
        };
        assert_eq!(args.workflow, "wf_a");
        assert_eq!(args.from, "HEAD~1");
        assert_eq!(args.to, "HEAD");
        assert_eq!(args.output, OutputFormat::Json);
        assert!(Cli::try_parse_from(["orchestrator", "tests", "affected", "--from", "a"]).is_err());
    }
}
