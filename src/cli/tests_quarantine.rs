//! `tests quarantine suggest`: a ready Quarantine manifest for the tests that are flaky now
//! (one entry per test, by its exact id, with a comment naming it, the reason its history
//! gives, an `owner` left for the user, `until` in 30 days), to save under `quarantine/` and
//! commit. Also [`known_tests`], the tests `validate` checks Quarantine entries against.
//! Both read `GET /api/quarantine/tests` from a running server, else the store.

use std::io::Write;

use anyhow::{Context as _, Result};
use chrono::{Days, NaiveDate, Utc};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{ApiClient, ApiPath};
use super::{Context, OutputFormat, EXIT_OK};
use crate::api::quarantine::{quarantine_tests, QuarantineTest, QuarantineTests};
use crate::schema::semantic::KnownTest;
use crate::store::Store;

/// How long a suggested quarantine applies: long enough to fix a test, short enough that
/// it is looked at again.
pub const SUGGESTED_DAYS: u64 = 30;

/// The `tests quarantine` commands.
#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// Print a Quarantine manifest for the tests that are flaky now (fill in each owner,
    /// save it under quarantine/, commit it); says so when there are none.
    Suggest(SuggestArgs),
}

/// Runs a `tests quarantine` command.
pub fn run(context: &Context, command: &QuarantineCommand) -> Result<u8> {
    match command {
        QuarantineCommand::Suggest(args) => suggest(context, args),
    }
}

/// Arguments of `tests quarantine suggest`.
#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// Only the tests of this workflow (its id or name).
    #[arg(long)]
    pub workflow: Option<String>,
    /// Output format: YAML with comments (the default, and `yaml`), or the manifest as JSON.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// `tests quarantine suggest`.
pub fn suggest(context: &Context, args: &SuggestArgs) -> Result<u8> {
    let tests = read_tests(context)?;
    let today = Utc::now().date_naive();
    let suggestion = Suggestion::of(&tests.tests, args.workflow.as_deref(), today);
    let mut out = std::io::stdout().lock();
    if suggestion.entries.is_empty() {
        let scope = args
            .workflow
            .as_deref()
            .map(|w| format!(" in workflow `{w}`"))
            .unwrap_or_default();
        let covered = if suggestion.covered > 0 {
            format!(
                " ({} flaky test{} already quarantined)",
                suggestion.covered,
                if suggestion.covered == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        };
        let line = format!("no flaky tests{scope} to quarantine{covered}");
        if args.output == OutputFormat::Json {
            eprintln!("{line}");
        } else {
            writeln!(out, "{line}")?;
        }
        return Ok(EXIT_OK);
    }
    match args.output {
        OutputFormat::Json => {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&suggestion.manifest())?
            )?;
        }
        OutputFormat::Table | OutputFormat::Yaml => write!(out, "{}", suggestion.yaml())?,
    }
    Ok(EXIT_OK)
}

/// Every test there are results of, for `validate` to check Quarantine entries against:
/// from the running server, else the store. `None` when no test has results yet (or
/// nothing can be read): then nothing is checked.
pub fn known_tests(context: &Context) -> Option<Vec<KnownTest>> {
    let tests = match ApiClient::for_context(context) {
        Ok(Some(client)) => remote_tests(&client).ok(),
        _ => {
            let data_dir = context.data_dir();
            if Store::exists(&data_dir) {
                Store::open(&data_dir)
                    .ok()
                    .and_then(|store| quarantine_tests(&store).ok())
            } else {
                None
            }
        }
    }?;
    let known: Vec<KnownTest> = tests.tests.into_iter().map(|t| t.test).collect();
    (!known.is_empty()).then_some(known)
}

fn read_tests(context: &Context) -> Result<QuarantineTests> {
    match ApiClient::for_context(context)? {
        Some(client) => remote_tests(&client),
        None => {
            let store = super::backend::local_store(context)?;
            Ok(quarantine_tests(&store)?)
        }
    }
}

fn remote_tests(client: &ApiClient) -> Result<QuarantineTests> {
    let value = client.get(&ApiPath::api(&["quarantine", "tests"]))?;
    serde_json::from_value(value).context("the server's tests are not in the expected shape")
}

/// The manifest for the flaky tests no live quarantine covers.
struct Suggestion<'a> {
    entries: Vec<&'a QuarantineTest>,
    /// Flaky tests left out because a quarantine covers them already.
    covered: usize,
    today: NaiveDate,
    until: NaiveDate,
    workflow: Option<&'a str>,
}

impl<'a> Suggestion<'a> {
    fn of(tests: &'a [QuarantineTest], workflow: Option<&'a str>, today: NaiveDate) -> Self {
        let flaky: Vec<&QuarantineTest> = tests
            .iter()
            .filter(|t| t.flaky)
            .filter(|t| workflow.is_none_or(|w| t.test.workflow == w || t.test.workflow_name == w))
            .collect();
        let covered = flaky.iter().filter(|t| t.covered_by.is_some()).count();
        let mut entries: Vec<&QuarantineTest> = flaky
            .into_iter()
            .filter(|t| t.covered_by.is_none())
            .collect();
        entries.sort_by(|a, b| {
            let key = |t: &QuarantineTest| {
                (
                    t.test.workflow.clone(),
                    t.test.suite.clone(),
                    t.test.classname.clone(),
                    t.test.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        Suggestion {
            entries,
            covered,
            today,
            until: today
                .checked_add_days(Days::new(SUGGESTED_DAYS))
                .unwrap_or(today),
            workflow,
        }
    }

    fn name(&self) -> String {
        match self.workflow {
            Some(workflow) => format!("Flaky tests of {workflow} {}", self.today),
            None => format!("Flaky tests {}", self.today),
        }
    }

    fn reason(test: &QuarantineTest) -> String {
        match &test.flaky_reason {
            Some(why) => format!("flaky: {why}"),
            None => "flaky".to_owned(),
        }
    }

    /// The manifest as JSON, `owner` empty (which validation refuses until it is filled).
    fn manifest(&self) -> Value {
        let entries: Vec<Value> = self
            .entries
            .iter()
            .map(|t| {
                json!({
                    "test": t.test.id,
                    "reason": Self::reason(t),
                    "owner": "",
                    "until": self.until.to_string(),
                })
            })
            .collect();
        json!({"kind": "Quarantine", "name": self.name(), "entries": entries})
    }

    /// The manifest as YAML with comments: what to fill in, and each test's names.
    fn yaml(&self) -> String {
        let count = self.entries.len();
        let mut text = format!(
            "# {count} flaky test{} (`orchestrator tests quarantine suggest`, {}).\n\
             # Fill in each `owner` (who is to fix the test: validation refuses an empty one),\n\
             # save this under quarantine/, check it with `orchestrator validate` and commit it.\n\
             # A quarantined test's failures fail no step until `until`; its results are still\n\
             # recorded and shown as quarantined.\n",
            if count == 1 { " is" } else { "s are" },
            self.today
        );
        if self.covered > 0 {
            text.push_str(&format!(
                "# ({} more flaky test{} already quarantined.)\n",
                self.covered,
                if self.covered == 1 { " is" } else { "s are" }
            ));
        }
        text.push_str("kind: Quarantine\n");
        text.push_str(&format!("name: {}\n", yaml_string(&self.name())));
        text.push_str("entries:\n");
        for t in &self.entries {
            let workflow = if t.test.workflow_name != t.test.workflow {
                format!("{} ({})", t.test.workflow, t.test.workflow_name)
            } else {
                t.test.workflow.clone()
            };
            text.push_str(&format!(
                "  # workflow {}, suite {}, classname {}, name {}\n",
                one_line(&workflow),
                one_line(&t.test.suite),
                one_line(&t.test.classname),
                one_line(&t.test.name)
            ));
            text.push_str(&format!("  - test: {}\n", t.test.id));
            text.push_str(&format!("    reason: {}\n", yaml_string(&Self::reason(t))));
            text.push_str("    owner: \"\"  # required: who is to fix it (a team or a person)\n");
            text.push_str(&format!("    until: {}\n", self.until));
        }
        text
    }
}

/// A string as a double-quoted YAML scalar (JSON's escapes are YAML's).
fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".to_owned())
}

/// Text for a comment: one line, control characters shown as spaces, `""` when empty.
fn one_line(text: &str) -> String {
    if text.is_empty() {
        return "\"\"".to_owned();
    }
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test(id: &str, name: &str, flaky: bool, covered: bool) -> QuarantineTest {
        QuarantineTest {
            test: KnownTest {
                id: id.to_owned(),
                workflow: "wf_nightly".to_owned(),
                workflow_name: "Nightly".to_owned(),
                suite: "api".to_owned(),
                classname: "tests.api".to_owned(),
                name: name.to_owned(),
            },
            flaky,
            flaky_reason: flaky.then(|| "passed and failed on git:1a2b".to_owned()),
            covered_by: covered.then(|| "qua_x#0".to_owned()),
        }
    }

    #[test]
    fn suggests_flaky_tests_no_quarantine_covers_with_an_empty_owner() {
        let tests = [
            test("tc_00000000000000b2", "test_b", true, false),
            test("tc_00000000000000a1", "test_a\nsecond", true, false),
            test("tc_00000000000000c3", "test_c", false, false),
            test("tc_00000000000000d4", "test_d", true, true),
        ];
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        let suggestion = Suggestion::of(&tests, Some("Nightly"), today);
        assert_eq!(suggestion.covered, 1);
        let yaml = suggestion.yaml();
        let parsed = crate::manifest::parse::parse_yaml(&yaml).unwrap();
        let value = &parsed[0].value;
        assert_eq!(value["kind"], "Quarantine");
        assert_eq!(value["entries"].as_array().unwrap().len(), 2);
        assert_eq!(value["entries"][0]["test"], "tc_00000000000000a1");
        assert_eq!(value["entries"][0]["owner"], "");
        assert_eq!(value["entries"][0]["until"], "2027-01-06");
        assert_eq!(
            value["entries"][0]["reason"],
            "flaky: passed and failed on git:1a2b"
        );
        assert!(
            yaml.contains("# workflow wf_nightly (Nightly), suite api, classname tests.api, name test_a second\n"),
            "{yaml}"
        );
        assert_eq!(&suggestion.manifest(), value);
        assert!(Suggestion::of(&tests, Some("wf_other"), today)
            .entries
            .is_empty());
    }
}
