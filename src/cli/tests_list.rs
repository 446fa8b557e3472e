//! `tests list` and `tests show`: the tests' histories, read from the store this process
//! opens or through the running server's `GET /api/tests` and `GET /api/tests/{id}` —
//! the same queries (`api::test_history`), so both print the same.

use std::io::Write;

use anyhow::{bail, Context as _, Result};
use chrono::Utc;
use clap::Args;

use super::backend::Backend;
use super::client::{ApiFailure, ApiPath};
use super::manifests::{escape_control, table};
use super::workflow::human_ms;
use super::{Context, OutputFormat, EXIT_OK};
use crate::api::test_history::{
    list_tests, show_test, TestDetail, TestFilter, TestList, TestQuery, MAX_LIMIT,
};

/// Arguments of `tests list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tests of this workflow (its id or name).
    #[arg(long)]
    pub workflow: Option<String>,
    /// Which tests: flaky, failing (last result failed or errored), new (last result a new
    /// failure), slow (slowest first) or quarantined (covered by a Quarantine in force).
    #[arg(long, value_parser = parse_filter)]
    pub status: Option<TestFilter>,
    /// At most this many tests (1 to 10000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT as u64))]
    pub limit: u64,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

/// Arguments of `tests show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The test's id (`tc_` and 16 hex digits, as `tests list` shows).
    pub id: String,
    /// At most this many results of its timeline, newest first (1 to 10000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=MAX_LIMIT as u64))]
    pub limit: u64,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: OutputFormat,
}

fn parse_filter(text: &str) -> Result<TestFilter, String> {
    TestFilter::parse(text)
}

/// `tests list`.
pub fn list(context: &Context, args: &ListArgs) -> Result<u8> {
    let query = TestQuery {
        workflow: args.workflow.clone(),
        status: args.status,
        limit: args.limit as usize,
    };
    let list = match Backend::open(context)? {
        Backend::Local(store) => {
            list_tests(&store, &store.objects()?, &query, Utc::now().date_naive())?
        }
        Backend::Remote(client) => {
            let mut path = ApiPath::api(&["tests"]).query("limit", query.limit);
            if let Some(workflow) = &query.workflow {
                path = path.query("workflow", workflow);
            }
            if let Some(status) = query.status {
                path = path.query("status", status);
            }
            serde_json::from_value(client.get(&path)?)
                .context("the server's tests are not in the expected shape")?
        }
    };
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?,
        OutputFormat::Yaml => write!(
            out,
            "{}",
            crate::reconcile::diff::to_yaml(&serde_json::to_value(&list)?)
        )?,
        OutputFormat::Table => write!(out, "{}", list_table(&list))?,
    }
    Ok(EXIT_OK)
}

/// The list as a table, with the quarantine list after it when the filter asks for it.
fn list_table(list: &TestList) -> String {
    if list.tests.is_empty() {
        let what = list
            .status
            .map_or("tests".to_owned(), |s| format!("{s} tests"));
        return format!("no {what} in the history\n");
    }
    let rows: Vec<[String; 8]> = list
        .tests
        .iter()
        .map(|t| {
            let mut flags = Vec::new();
            if t.flaky {
                flags.push("flaky".to_owned());
            }
            if let Some(q) = &t.quarantine {
                flags.push(format!("quarantined until {}", q.until));
            }
            [
                t.id.clone(),
                t.workflow.clone(),
                test_name(&t.suite, &t.classname, &t.name),
                format!("{}/{}", status_word(t.last_status), t.last_class.as_str()),
                t.recent.clone(),
                format!("{:.0}%", t.failure_rate * 100.0),
                human_ms(t.mean_duration_ms.round() as u64),
                flags.join(", "),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "TEST", "WORKFLOW", "NAME", "LAST", "RECENT", "FAILING", "MEAN", "NOTE",
        ],
        &rows,
    );
    if list.total > list.tests.len() {
        text.push_str(&format!(
            "({} of {}; --limit shows more)\n",
            list.tests.len(),
            list.total
        ));
    }
    if list.status == Some(TestFilter::Quarantined) && !list.quarantines.is_empty() {
        let rows: Vec<[String; 6]> = list
            .quarantines
            .iter()
            .map(|q| {
                [
                    q.manifest.clone(),
                    q.covers.clone(),
                    q.owner.clone(),
                    if q.active {
                        q.until.clone()
                    } else {
                        format!("{} (expired)", q.until)
                    },
                    q.tests.to_string(),
                    q.reason.clone(),
                ]
            })
            .collect();
        text.push('\n');
        text.push_str(&table(
            &["QUARANTINE", "COVERS", "OWNER", "UNTIL", "TESTS", "REASON"],
            &rows,
        ));
    }
    text
}

/// `tests show`.
pub fn show(context: &Context, args: &ShowArgs) -> Result<u8> {
    let limit = args.limit as usize;
    let detail: Option<TestDetail> = match Backend::open(context)? {
        Backend::Local(store) => show_test(
            &store,
            &store.objects()?,
            &args.id,
            limit,
            Utc::now().date_naive(),
        )?,
        Backend::Remote(client) => {
            match client.get(&ApiPath::api(&["tests", &args.id]).query("limit", limit)) {
                Ok(value) => Some(
                    serde_json::from_value(value)
                        .context("the server's test is not in the expected shape")?,
                ),
                Err(err) if ApiFailure::is_not_found(&err) => None,
                Err(err) => return Err(err),
            }
        }
    };
    let Some(detail) = detail else {
        bail!(
            "{}",
            crate::api::test_history::unknown_test(&args.id).replace(
                "`GET /api/tests` lists them",
                "`orchestrator tests list` lists them"
            )
        );
    };
    let mut out = std::io::stdout().lock();
    match args.output {
        OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&detail)?)?,
        OutputFormat::Yaml => write!(
            out,
            "{}",
            crate::reconcile::diff::to_yaml(&serde_json::to_value(&detail)?)
        )?,
        OutputFormat::Table => write!(out, "{}", detail_text(&detail))?,
    }
    Ok(EXIT_OK)
}

/// A test's record, quarantine and timeline, as text.
fn detail_text(detail: &TestDetail) -> String {
    let t = &detail.test;
    let mut text = format!(
        "test {} of {}\n{}\n",
        t.id,
        t.workflow,
        escape_control(&test_name(&t.suite, &t.classname, &t.name))
    );
    text.push_str(&format!(
        "last {} ({}) in {} at {}\n",
        status_word(t.last_status),
        t.last_class.as_str(),
        t.last_run,
        t.last_revision
    ));
    text.push_str(&format!(
        "recent {}: {} flip{}, {} of {} results failed ({:.0}%), mean {}\n",
        t.recent,
        detail.flips,
        if detail.flips == 1 { "" } else { "s" },
        t.failures,
        t.results,
        detail.failure_rate * 100.0,
        human_ms(t.mean_duration_ms.round() as u64)
    ));
    if t.flaky {
        text.push_str(&format!(
            "flaky: {}\n",
            escape_control(t.flaky_reason.as_deref().unwrap_or("yes"))
        ));
    }
    if let Some(q) = &detail.quarantine {
        text.push_str(&format!(
            "quarantined by {} (entry {}) until {}{}, owner {}: {}\n",
            q.manifest,
            q.index,
            q.until,
            if q.active { "" } else { " (expired)" },
            escape_control(&q.owner),
            escape_control(&q.reason)
        ));
    }
    let rows: Vec<[String; 8]> = detail
        .timeline
        .iter()
        .map(|entry| {
            let r = &entry.result;
            [
                r.run_id.clone(),
                r.attempt.to_string(),
                r.revision.clone(),
                r.worker.clone().unwrap_or_else(|| "-".into()),
                status_word(r.status).to_owned(),
                r.class.as_str().to_owned(),
                human_ms(r.duration_ms),
                entry
                    .failure_message
                    .as_deref()
                    .map(|m| first_line(m, 80))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    text.push('\n');
    text.push_str(&table(
        &[
            "RUN", "ATTEMPT", "REVISION", "WORKER", "STATUS", "CLASS", "DURATION", "FAILURE",
        ],
        &rows,
    ));
    if !detail.failure_groups.is_empty() {
        text.push_str("\nfailure groups:\n");
        for g in &detail.failure_groups {
            text.push_str(&format!(
                "  {} ×{}: {}\n",
                g.group.digest,
                g.count,
                escape_control(&first_line(&g.group.normalised, 200))
            ));
        }
    }
    text
}

fn test_name(suite: &str, classname: &str, name: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in [suite, classname, name] {
        if !part.is_empty() {
            parts.push(part);
        }
    }
    parts.join(" › ")
}

fn status_word(status: crate::model::TestStatus) -> &'static str {
    use crate::model::TestStatus as S;
    match status {
        S::Passed => "passed",
        S::Failed => "failed",
        S::Error => "error",
        S::Skipped => "skipped",
    }
}

/// The first line of a message, at most `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > max {
        format!("{}…", line.chars().take(max).collect::<String>())
    } else {
        line.to_owned()
    }
}
