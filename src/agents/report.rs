//! Run reports for the `report_generator` agent: a self-contained HTML page (detailed or
//! summary, compared with the workflow's previous run), JUnit XML of the run's test suites
//! and JSON. Each renders the run record and steps it is given, so a report written once
//! the run is final says what the run record says.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::model::{RunRecord, Status, StepRecord, TestCase, TestClass, TestStatus, TestSummary};

/// One run with its steps, as a report shows it.
pub struct RunView<'a> {
    /// The run.
    pub run: &'a RunRecord,
    /// Its steps.
    pub steps: &'a [StepRecord],
}

impl RunView<'_> {
    fn cases(&self) -> impl Iterator<Item = &TestCase> {
        self.steps.iter().flat_map(|s| &s.tests)
    }

    fn summary(&self) -> TestSummary {
        TestSummary::of(self.cases())
    }
}

/// The HTML report's layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HtmlTemplate {
    /// Everything: steps, every test case, failures expanded, the comparison.
    Detailed,
    /// Header, test counts, steps and the comparison's counts.
    Summary,
}

impl HtmlTemplate {
    /// `detailed` or `summary`.
    pub fn parse(name: &str) -> Option<HtmlTemplate> {
        match name {
            "detailed" => Some(HtmlTemplate::Detailed),
            "summary" => Some(HtmlTemplate::Summary),
            _ => None,
        }
    }
}

/// Escapes text for HTML and XML.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn human(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

fn colour(status: Status) -> &'static str {
    match status {
        Status::Succeeded => "#1a7f37",
        Status::Failed | Status::TimedOut | Status::Interrupted => "#cf222e",
        Status::Cancelled | Status::Skipped => "#9a6700",
        Status::Queued | Status::Running => "#0969da",
    }
}

fn pass_rate(summary: TestSummary) -> Option<f64> {
    (summary.total > summary.skipped)
        .then(|| 100.0 * f64::from(summary.passed) / f64::from(summary.total - summary.skipped))
}

fn case_key(case: &TestCase) -> (String, String, String) {
    (
        case.suite.clone(),
        case.classname.clone(),
        case.name.clone(),
    )
}

/// A case's class as the report says it.
fn class_text(class: TestClass) -> &'static str {
    match class {
        TestClass::NewFailure => "new failure",
        TestClass::StillFailing => "still failing",
        TestClass::Fixed => "fixed",
        TestClass::Flaky => "flaky",
        TestClass::Quarantined => "quarantined",
        TestClass::Passed => "passed",
        TestClass::Skipped => "skipped",
    }
}

fn failing(case: &TestCase) -> bool {
    matches!(case.status, TestStatus::Failed | TestStatus::Error)
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1f2328;background:#fff}\
table{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}th,td{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #d0d7de;vertical-align:top}\
.badge{color:#fff;border-radius:1rem;padding:.1rem .6rem;font-weight:600}.bar{background:#0969da;height:.6rem;border-radius:.3rem}\
pre{background:#f6f8fa;padding:.5rem;overflow:auto;max-height:20rem}.muted{color:#656d76}\
@media (prefers-color-scheme: dark){body{background:#0d1117;color:#e6edf3}th,td{border-color:#30363d}pre{background:#161b22}.muted{color:#8d96a0}}";

/// A self-contained HTML page (inline CSS, no scripts, no external resources).
pub fn render_html(
    current: &RunView<'_>,
    previous: Option<&RunView<'_>>,
    template: HtmlTemplate,
    generated_at: &str,
) -> String {
    let run = current.run;
    let summary = current.summary();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>{} · {}</title><style>{STYLE}</style></head><body>",
        escape(&run.workflow_name),
        escape(&run.id)
    );
    let _ = write!(
        html,
        "<h1>{}</h1><p><span class=\"badge\" style=\"background:{}\">{}</span> run <code>{}</code> of <code>{}</code>, triggered by {}</p>",
        escape(&run.workflow_name),
        colour(run.status),
        run.status,
        escape(&run.id),
        escape(&run.workflow_id),
        escape(&run.trigger.kind)
    );
    let _ = write!(
        html,
        "<p class=\"muted\">started {} · duration {}{}</p>",
        escape(run.started_at.as_deref().unwrap_or(&run.created_at)),
        run.duration_ms.map_or("running".to_owned(), human),
        if run.parameters.is_empty() {
            String::new()
        } else {
            format!(
                " · parameters <code>{}</code>",
                escape(&Value::Object(run.parameters.clone()).to_string())
            )
        }
    );
    // The counts as people read them ("212 passed, 2 new failures, 1 flaky, 3
    // quarantined"), then every count.
    let _ = write!(
        html,
        "<h2>Tests</h2><p class=\"classes\"><strong>{}</strong></p>",
        escape(&summary.describe())
    );
    let _ = write!(
        html,
        "<p>{} total · {} passed · {} failed · {} errors · {} skipped{}</p>",
        summary.total,
        summary.passed,
        summary.failed,
        summary.errors,
        summary.skipped,
        pass_rate(summary).map_or(String::new(), |r| format!(" · pass rate {r:.1}%"))
    );
    let longest = current
        .steps
        .iter()
        .filter_map(|s| s.duration_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    html.push_str("<h2>Steps</h2><table><tr><th>Step</th><th>Agent</th><th>Status</th><th>Attempts</th><th>Duration</th><th>Exit</th><th>Message</th></tr>");
    for step in current.steps {
        let duration = step.duration_ms.unwrap_or(0);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}.{}</td><td style=\"color:{}\">{}</td><td>{}</td><td>{}<div class=\"bar\" style=\"width:{:.0}%\"></div></td><td>{}</td><td>{}</td></tr>",
            escape(&step.name),
            escape(&step.agent),
            escape(&step.action),
            colour(step.status),
            step.status,
            step.attempts.len(),
            step.duration_ms.map_or("-".to_owned(), human),
            100.0 * duration as f64 / longest as f64,
            step.exit_code.map_or("-".to_owned(), |c| c.to_string()),
            escape(step.message.as_deref().unwrap_or(""))
        );
    }
    html.push_str("</table>");
    if let Some(previous) = previous {
        let before = previous.summary();
        let old: std::collections::HashMap<_, _> =
            previous.cases().map(|c| (case_key(c), c.status)).collect();
        let newly_failing: Vec<&TestCase> = current
            .cases()
            .filter(|c| failing(c) && old.get(&case_key(c)) == Some(&TestStatus::Passed))
            .collect();
        let fixed: Vec<&TestCase> = current
            .cases()
            .filter(|c| {
                c.status == TestStatus::Passed
                    && old
                        .get(&case_key(c))
                        .is_some_and(|s| matches!(s, TestStatus::Failed | TestStatus::Error))
            })
            .collect();
        let _ = write!(
            html,
            "<h2>Compared with {}</h2><p>status {} → {}",
            escape(&previous.run.id),
            previous.run.status,
            run.status
        );
        if let (Some(a), Some(b)) = (previous.run.duration_ms, run.duration_ms) {
            let change = b as f64 - a as f64;
            let _ = write!(
                html,
                " · duration {} → {} ({}{:.0}%)",
                human(a),
                human(b),
                if change >= 0.0 { "+" } else { "" },
                100.0 * change / (a.max(1) as f64)
            );
        }
        if let (Some(a), Some(b)) = (pass_rate(before), pass_rate(summary)) {
            let _ = write!(html, " · pass rate {a:.1}% → {b:.1}%");
        }
        let _ = write!(
            html,
            " · {} newly failing · {} fixed</p>",
            newly_failing.len(),
            fixed.len()
        );
        if template == HtmlTemplate::Detailed {
            for (title, cases) in [("Newly failing", &newly_failing), ("Fixed", &fixed)] {
                if !cases.is_empty() {
                    let _ = write!(html, "<h3>{title}</h3><ul>");
                    for case in cases.iter() {
                        let _ = write!(
                            html,
                            "<li>{} {}</li>",
                            escape(&case.classname),
                            escape(&case.name)
                        );
                    }
                    html.push_str("</ul>");
                }
            }
        }
    }
    if template == HtmlTemplate::Detailed && summary.total > 0 {
        let failures: Vec<&TestCase> = current.cases().filter(|c| failing(c)).collect();
        if !failures.is_empty() {
            html.push_str("<h2>Failures</h2>");
            for case in failures {
                let _ = write!(
                    html,
                    "<h3>{} › {} › {}{}</h3><p>{}</p>",
                    escape(&case.suite),
                    escape(&case.classname),
                    escape(&case.name),
                    case.class
                        .map(|c| format!(" <span class=\"class\">({})</span>", class_text(c)))
                        .unwrap_or_default(),
                    escape(case.message.as_deref().unwrap_or(""))
                );
                if let Some(details) = &case.details {
                    let _ = write!(html, "<pre>{}</pre>", escape(details));
                }
            }
        }
        html.push_str("<h2>All test cases</h2><table><tr><th>Suite</th><th>Class</th><th>Name</th><th>Status</th><th>Classified</th><th>Time</th></tr>");
        for case in current.cases() {
            let _ = write!(
                html,
                "<tr data-class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{:.3} s</td></tr>",
                case.class.map_or("", TestClass::as_str),
                escape(&case.suite),
                escape(&case.classname),
                escape(&case.name),
                case.status,
                case.class.map_or("-", class_text),
                case.time_seconds
            );
        }
        html.push_str("</table>");
    }
    let _ = writeln!(
        html,
        "<p class=\"muted\">generated {} by orchestrator</p></body></html>",
        escape(generated_at)
    );
    html
}

/// JUnit XML of the run's test results: the suites the steps reported, each with its own
/// cases in order (a step's cases without a suite name go in a suite named after the
/// step). The steps themselves are not test cases, so the root's totals are the run's test
/// totals and its `time` is the sum of its cases' times.
pub fn render_junit(current: &RunView<'_>) -> String {
    let mut suites = String::new();
    let mut total_time = 0.0;
    for step in current.steps {
        // The step's suites in the order their first case appears.
        let mut groups: Vec<(&str, Vec<&TestCase>)> = Vec::new();
        for case in &step.tests {
            let name = if case.suite.is_empty() {
                step.name.as_str()
            } else {
                case.suite.as_str()
            };
            match groups.iter_mut().find(|(n, _)| *n == name) {
                Some((_, cases)) => cases.push(case),
                None => groups.push((name, vec![case])),
            }
        }
        for (name, cases) in groups {
            let summary = TestSummary::of(cases.iter().copied());
            let time: f64 = cases.iter().map(|c| c.time_seconds).sum();
            total_time += time;
            let _ = writeln!(
                suites,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{time:.3}\">",
                escape(name),
                summary.total,
                summary.failed,
                summary.errors,
                summary.skipped
            );
            for case in cases {
                write_case(&mut suites, case);
            }
            suites.push_str("  </testsuite>\n");
        }
    }
    let totals = current.summary();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{total_time:.3}\">\n{suites}</testsuites>\n",
        escape(&current.run.workflow_name),
        totals.total,
        totals.failed,
        totals.errors,
        totals.skipped,
    )
}

/// One `<testcase>`: its outcome element with message and details, and its output.
fn write_case(out: &mut String, case: &TestCase) {
    let _ = write!(
        out,
        "    <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
        escape(&case.classname),
        escape(&case.name),
        case.time_seconds
    );
    let tag = match case.status {
        TestStatus::Passed => None,
        TestStatus::Failed => Some("failure"),
        TestStatus::Error => Some("error"),
        TestStatus::Skipped => Some("skipped"),
    };
    if tag.is_none() && case.output.is_none() {
        out.push_str("/>\n");
        return;
    }
    out.push('>');
    if let Some(tag) = tag {
        let _ = write!(
            out,
            "<{tag} message=\"{}\">{}</{tag}>",
            escape(case.message.as_deref().unwrap_or("")),
            escape(case.details.as_deref().unwrap_or(""))
        );
    }
    if let Some(output) = &case.output {
        let _ = write!(out, "<system-out>{}</system-out>", escape(output));
    }
    out.push_str("</testcase>\n");
}

/// The run, its steps and its tests as one JSON value.
pub fn render_json(current: &RunView<'_>) -> Value {
    json!({
        "run": current.run,
        "steps": current.steps,
        "tests": current.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Trigger;

    fn run() -> (RunRecord, Vec<StepRecord>) {
        let run = RunRecord {
            id: "run_1".into(),
            workflow_id: "wf_x".into(),
            workflow_name: "X <script>".into(),
            status: Status::Failed,
            parameters: serde_json::Map::new(),
            trigger: Trigger {
                kind: "cli".into(),
                details: serde_json::Map::new(),
            },
            workflow: json!({}),
            steps: vec!["tests".into()],
            created_at: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            finished_at: None,
            duration_ms: Some(1500),
            message: None,
            tests: TestSummary::default(),
            rerun_of: None,
            revision: None,
            pid: None,
        };
        let case = |name: &str, status| TestCase {
            suite: "api".into(),
            classname: "c".into(),
            name: name.into(),
            status,
            time_seconds: 0.5,
            message: Some("<b>boom</b>".into()),
            details: None,
            output: None,
            class: None,
        };
        let step = StepRecord {
            run_id: "run_1".into(),
            index: 0,
            name: "tests".into(),
            agent: "test_runner".into(),
            action: "run_tests".into(),
            status: Status::Failed,
            attempts: Vec::new(),
            started_at: None,
            finished_at: None,
            duration_ms: Some(1200),
            exit_code: Some(1),
            message: None,
            outputs: serde_json::Map::new(),
            log: "x".into(),
            pgid: None,
            tests: vec![case("a", TestStatus::Passed), case("b", TestStatus::Failed)],
            artifacts: Vec::new(),
        };
        (run, vec![step])
    }

    #[test]
    fn html_escapes_and_compares() {
        let (current_run, current_steps) = run();
        let (previous_run, mut previous_steps) = run();
        previous_steps[0].tests[1].status = TestStatus::Passed;
        let current = RunView {
            run: &current_run,
            steps: &current_steps,
        };
        let previous = RunView {
            run: &previous_run,
            steps: &previous_steps,
        };
        let html = render_html(&current, Some(&previous), HtmlTemplate::Detailed, "now");
        assert!(!html.contains("<script>"));
        assert!(html.contains("X &lt;script&gt;"));
        assert!(html.contains("1 newly failing"));
        assert!(html.contains("&lt;b&gt;boom&lt;/b&gt;"));
        let summary = render_html(&current, None, HtmlTemplate::Summary, "now");
        assert!(!summary.contains("All test cases"));
    }

    #[test]
    fn html_says_the_classes_and_marks_each_case() {
        let (run, mut steps) = run();
        steps[0].tests[0].class = Some(TestClass::Passed);
        steps[0].tests[1].class = Some(TestClass::Quarantined);
        let mut flaky = steps[0].tests[1].clone();
        flaky.name = "c".into();
        flaky.class = Some(TestClass::Flaky);
        steps[0].tests.push(flaky);
        let html = render_html(
            &RunView {
                run: &run,
                steps: &steps,
            },
            None,
            HtmlTemplate::Detailed,
            "now",
        );
        assert!(
            html.contains("<strong>1 passed, 1 flaky, 1 quarantined</strong>"),
            "{html}"
        );
        assert!(
            html.contains("<tr data-class=\"quarantined\"><td>api</td><td>c</td><td>b</td><td>Failed</td><td>quarantined</td>"),
            "{html}"
        );
        assert!(html.contains("<tr data-class=\"flaky\">"), "{html}");
        assert!(
            html.contains("<h3>api › c › b <span class=\"class\">(quarantined)</span></h3>"),
            "{html}"
        );
    }

    #[test]
    fn junit_round_trips() {
        let (run, mut steps) = run();
        steps[0].tests[0].output = Some("said <hi>".into());
        let xml = render_junit(&RunView {
            run: &run,
            steps: &steps,
        });
        let cases = crate::engine::junit::parse_junit(&xml).unwrap();
        assert_eq!(
            cases.len(),
            2,
            "the test cases, and no case per step: {xml}"
        );
        assert_eq!(cases[0].suite, "api", "the suite's own name: {xml}");
        assert_eq!(cases[0].output.as_deref(), Some("said <hi>"));
        assert_eq!(cases[1].status, TestStatus::Failed);
        assert_eq!(cases[1].message.as_deref(), Some("<b>boom</b>"));
        assert!(
            xml.contains("<testsuites name=\"X &lt;script&gt;\" tests=\"2\" failures=\"1\" errors=\"0\" skipped=\"0\" time=\"1.000\">"),
            "{xml}"
        );
        let value = render_json(&RunView {
            run: &run,
            steps: &steps,
        });
        assert_eq!(value["tests"]["failed"], 1);
    }
}
