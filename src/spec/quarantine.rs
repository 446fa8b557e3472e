//! Quarantine manifests, compiled: which tests' failures fail no step. An entry names a
//! test by its id (`tc_…`, see `store::test_history::test_id`) or matches tests by workflow,
//! suite, classname and name globs; it applies through its `until` date (UTC) and not
//! after.

use chrono::NaiveDate;
use globset::{GlobBuilder, GlobMatcher};
use serde_json::Value;

/// One compiled entry of a Quarantine manifest.
#[derive(Debug, Clone)]
pub struct QuarantineEntry {
    /// The manifest's id.
    pub manifest: String,
    /// Its position in the manifest's `entries`.
    pub index: usize,
    /// The exact test id it names, if it names one.
    pub test: Option<String>,
    /// Globs per field (`workflow`, `suite`, `classname`, `name`), as written.
    pub patterns: Vec<(String, String)>,
    matchers: Vec<(String, GlobMatcher)>,
    /// Why.
    pub reason: String,
    /// Who is to fix it.
    pub owner: String,
    /// The last day it applies.
    pub until: NaiveDate,
}

/// The fields of a test case an entry matches against.
#[derive(Debug, Clone, Copy)]
pub struct TestFields<'a> {
    /// The test's id.
    pub id: &'a str,
    /// The workflow's id.
    pub workflow: &'a str,
    /// The workflow's name (a `workflow` glob may name either).
    pub workflow_name: &'a str,
    /// The JUnit suite.
    pub suite: &'a str,
    /// The JUnit classname.
    pub classname: &'a str,
    /// The case's name.
    pub name: &'a str,
}

impl QuarantineEntry {
    /// Whether it covers the test, whatever the date.
    pub fn matches(&self, test: &TestFields<'_>) -> bool {
        if let Some(id) = &self.test {
            return id == test.id;
        }
        !self.matchers.is_empty()
            && self
                .matchers
                .iter()
                .all(|(field, glob)| match field.as_str() {
                    "workflow" => glob.is_match(test.workflow) || glob.is_match(test.workflow_name),
                    "suite" => glob.is_match(test.suite),
                    "classname" => glob.is_match(test.classname),
                    "name" => glob.is_match(test.name),
                    _ => false,
                })
    }

    /// Whether it still applies on `today`.
    pub fn active_on(&self, today: NaiveDate) -> bool {
        today <= self.until
    }

    /// What it covers, for messages: `test tc_…` or `workflow=wf_x, name=test_*`.
    pub fn describe(&self) -> String {
        match &self.test {
            Some(id) => format!("test {id}"),
            None => self
                .patterns
                .iter()
                .map(|(field, glob)| format!("{field}={glob}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Every entry of every live Quarantine manifest.
#[derive(Debug, Clone, Default)]
pub struct QuarantineSet {
    /// The entries, in manifest order.
    pub entries: Vec<QuarantineEntry>,
}

impl QuarantineSet {
    /// Compiles the specs of Quarantine manifests, as (manifest id, spec). An entry that
    /// does not compile (validation rejects it first) is left out.
    pub fn compile<'a>(manifests: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Self {
        let mut entries = Vec::new();
        for (manifest, spec) in manifests {
            let listed = spec.get("entries").and_then(Value::as_array);
            for (index, entry) in listed.into_iter().flatten().enumerate() {
                if let Ok(entry) = compile_entry(manifest, index, entry) {
                    entries.push(entry);
                }
            }
        }
        QuarantineSet { entries }
    }

    /// The first entry covering the test on `today`.
    pub fn covering(&self, test: &TestFields<'_>, today: NaiveDate) -> Option<&QuarantineEntry> {
        self.entries
            .iter()
            .find(|entry| entry.active_on(today) && entry.matches(test))
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// One entry compiled, or what is wrong with it (a field and the problem).
pub fn compile_entry(
    manifest: &str,
    index: usize,
    entry: &Value,
) -> Result<QuarantineEntry, (String, String)> {
    let text = |field: &str| entry.get(field).and_then(Value::as_str).unwrap_or_default();
    let until = NaiveDate::parse_from_str(text("until"), "%Y-%m-%d").map_err(|err| {
        (
            "until".to_owned(),
            format!("`{}` is not a date (YYYY-MM-DD): {err}", text("until")),
        )
    })?;
    let mut patterns = Vec::new();
    let mut matchers = Vec::new();
    if let Some(fields) = entry.get("match").and_then(Value::as_object) {
        for (field, glob) in fields {
            let glob = glob.as_str().unwrap_or_default();
            let matcher = GlobBuilder::new(glob)
                .literal_separator(false)
                .build()
                .map_err(|err| {
                    (
                        format!("match/{field}"),
                        format!("`{glob}` is not a glob: {}", err.kind()),
                    )
                })?
                .compile_matcher();
            patterns.push((field.clone(), glob.to_owned()));
            matchers.push((field.clone(), matcher));
        }
    }
    Ok(QuarantineEntry {
        manifest: manifest.to_owned(),
        index,
        test: entry.get("test").and_then(Value::as_str).map(str::to_owned),
        patterns,
        matchers,
        reason: text("reason").to_owned(),
        owner: text("owner").to_owned(),
        until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields<'a>(name: &'a str, suite: &'a str) -> TestFields<'a> {
        TestFields {
            id: "tc_0123456789abcdef",
            workflow: "wf_nightly",
            workflow_name: "Nightly",
            suite,
            classname: "tests.api",
            name,
        }
    }

    fn day(text: &str) -> NaiveDate {
        NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap()
    }

    #[test]
    fn entries_match_by_id_or_by_every_glob_until_their_date() {
        let spec = json!({"entries": [
            {"match": {"workflow": "wf_nightly", "suite": "api", "name": "test_timeout_*"},
             "reason": "r", "owner": "qa", "until": "2027-01-31"},
            {"test": "tc_0123456789abcdef", "reason": "r", "owner": "qa", "until": "2026-01-01"},
        ]});
        let set = QuarantineSet::compile([("qua_known", &spec)]);
        assert_eq!(set.entries.len(), 2);
        let today = day("2027-01-31");
        let hit = set.covering(&fields("test_timeout_big", "api"), today);
        assert_eq!(hit.map(|e| e.index), Some(0));
        assert!(
            set.covering(&fields("test_ok", "api"), today).is_none(),
            "the expired id entry no longer applies"
        );
        assert!(set
            .covering(&fields("test_timeout_big", "ui"), today)
            .is_none());
        assert!(set
            .covering(&fields("test_timeout_big", "api"), day("2027-02-01"))
            .is_none());
        assert_eq!(
            set.covering(&fields("test_ok", "ui"), day("2025-12-31"))
                .map(|e| e.index),
            Some(1)
        );
        assert_eq!(
            set.entries[0].describe(),
            "workflow=wf_nightly, suite=api, name=test_timeout_*"
        );
    }

    #[test]
    fn a_workflow_glob_matches_the_id_or_the_name() {
        let spec = json!({"entries": [{"match": {"workflow": "Night*"}, "reason": "r",
            "owner": "o", "until": "2030-01-01"}]});
        let set = QuarantineSet::compile([("q", &spec)]);
        assert!(set.covering(&fields("x", "s"), day("2029-01-01")).is_some());
    }

    #[test]
    fn bad_dates_and_globs_say_which_field() {
        let bad =
            json!({"until": "31/01/2027", "reason": "r", "owner": "o", "match": {"name": "a"}});
        assert_eq!(compile_entry("q", 0, &bad).unwrap_err().0, "until");
        let glob =
            json!({"until": "2027-01-31", "reason": "r", "owner": "o", "match": {"name": "a[b"}});
        let (field, message) = compile_entry("q", 0, &glob).unwrap_err();
        assert_eq!(field, "match/name");
        assert!(message.contains("`a[b` is not a glob"), "{message}");
    }
}
