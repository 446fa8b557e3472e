//! JUnit XML reports as test runners write them (pytest, cargo-nextest, Maven Surefire,
//! jest-junit): `<testsuites>` or a bare `<testsuite>`, nested suites, `<failure>` versus
//! `<error>`, `<skipped>`, per-case `<system-out>`, attributes that may be missing. Read as
//! a stream, never as a tree.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::engine::model::{TestCase, TestStatus};

/// The most text kept from one failure body or one case's output.
const MAX_TEXT: usize = 64 * 1024;

/// Why a JUnit file could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid JUnit XML at byte {position}: {message}")]
pub struct JunitError {
    /// Byte offset where reading stopped.
    pub position: u64,
    /// What was wrong.
    pub message: String,
}

fn attribute(element: &BytesStart<'_>, name: &[u8]) -> Option<String> {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.as_ref() == name)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
}

fn cap(mut text: String) -> String {
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn parse_time(text: Option<String>) -> f64 {
    text.and_then(|t| t.replace(',', "").trim().parse::<f64>().ok())
        .filter(|t| t.is_finite() && *t >= 0.0)
        .unwrap_or(0.0)
}

fn rank(status: TestStatus) -> u8 {
    match status {
        TestStatus::Passed => 0,
        TestStatus::Skipped => 1,
        TestStatus::Failed => 2,
        TestStatus::Error => 3,
    }
}

/// Which element's text is being collected.
enum Collecting {
    None,
    Outcome,
    Output,
}

/// Parses a JUnit XML report into its test cases, in document order.
pub fn parse_junit(xml: &str) -> Result<Vec<TestCase>, JunitError> {
    let mut reader = Reader::from_str(xml);
    let mut suites: Vec<String> = Vec::new();
    let mut cases = Vec::new();
    let mut current: Option<TestCase> = None;
    let mut outcome_message: Option<String> = None;
    let mut collecting = Collecting::None;
    let mut outcome_text = String::new();
    let mut output_text = String::new();
    let error = |reader: &Reader<&[u8]>, message: String| JunitError {
        position: reader.buffer_position(),
        message,
    };
    loop {
        let event = reader
            .read_event()
            .map_err(|e| error(&reader, e.to_string()))?;
        match event {
            Event::Start(ref element) | Event::Empty(ref element) => {
                let empty = matches!(event, Event::Empty(_));
                match element.local_name().as_ref() {
                    b"testsuite" if !empty => {
                        suites.push(attribute(element, b"name").unwrap_or_default())
                    }
                    b"testcase" => {
                        let classname = attribute(element, b"classname").unwrap_or_default();
                        let name = attribute(element, b"name")
                            .filter(|n| !n.is_empty())
                            .unwrap_or_else(|| {
                                if classname.is_empty() {
                                    "(unnamed)".to_owned()
                                } else {
                                    classname.clone()
                                }
                            });
                        let case = TestCase {
                            suite: suites
                                .iter()
                                .filter(|s| !s.is_empty())
                                .cloned()
                                .collect::<Vec<_>>()
                                .join("/"),
                            classname,
                            name,
                            status: TestStatus::Passed,
                            time_seconds: parse_time(attribute(element, b"time")),
                            message: None,
                            details: None,
                            output: None,
                        };
                        if empty {
                            cases.push(case);
                        } else {
                            current = Some(case);
                            output_text.clear();
                        }
                    }
                    tag @ (b"failure" | b"error" | b"skipped") if current.is_some() => {
                        let status = match tag {
                            b"failure" => TestStatus::Failed,
                            b"error" => TestStatus::Error,
                            _ => TestStatus::Skipped,
                        };
                        let case = current.as_mut().expect("checked above");
                        if rank(status) >= rank(case.status) {
                            case.status = status;
                            outcome_message = attribute(element, b"message");
                            case.message = outcome_message.clone().filter(|m| !m.is_empty());
                            case.details = None;
                            if !empty {
                                collecting = Collecting::Outcome;
                                outcome_text.clear();
                            }
                        }
                    }
                    b"system-out" | b"system-err" if current.is_some() && !empty => {
                        collecting = Collecting::Output;
                    }
                    _ => {}
                }
            }
            Event::Text(text) => {
                let text = text
                    .xml_content()
                    .map_err(|e| error(&reader, e.to_string()))?;
                push_text(&collecting, &text, &mut outcome_text, &mut output_text);
            }
            Event::GeneralRef(reference) => {
                let resolved = if reference.is_char_ref() {
                    reference
                        .resolve_char_ref()
                        .map_err(|e| error(&reader, e.to_string()))?
                        .map(String::from)
                } else {
                    let name = reference
                        .decode()
                        .map_err(|e| error(&reader, e.to_string()))?;
                    quick_xml::escape::resolve_xml_entity(&name).map(str::to_owned)
                };
                let text = resolved
                    .ok_or_else(|| error(&reader, "unknown entity reference".to_owned()))?;
                push_text(&collecting, &text, &mut outcome_text, &mut output_text);
            }
            Event::CData(data) => {
                let text = String::from_utf8_lossy(&data).into_owned();
                push_text(&collecting, &text, &mut outcome_text, &mut output_text);
            }
            Event::End(element) => match element.local_name().as_ref() {
                b"testsuite" => {
                    suites.pop();
                }
                b"testcase" => {
                    if let Some(mut case) = current.take() {
                        let output = output_text.trim();
                        if !output.is_empty() {
                            case.output = Some(cap(output.to_owned()));
                        }
                        cases.push(case);
                    }
                    collecting = Collecting::None;
                }
                b"failure" | b"error" | b"skipped" => {
                    if let (Collecting::Outcome, Some(case)) = (&collecting, current.as_mut()) {
                        let body = outcome_text.trim();
                        if !body.is_empty() {
                            case.details = Some(cap(body.to_owned()));
                            if case.message.is_none() {
                                case.message = body
                                    .lines()
                                    .map(str::trim)
                                    .find(|l| !l.is_empty())
                                    .map(str::to_owned);
                            }
                        }
                    }
                    let _ = outcome_message.take();
                    collecting = Collecting::None;
                }
                b"system-out" | b"system-err" => collecting = Collecting::None,
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    if current.is_some() || !suites.is_empty() {
        return Err(error(&reader, "the document ends inside an element".into()));
    }
    Ok(cases)
}

fn push_text(collecting: &Collecting, text: &str, outcome: &mut String, output: &mut String) {
    match collecting {
        Collecting::Outcome if outcome.len() < MAX_TEXT => outcome.push_str(text),
        Collecting::Output if output.len() < MAX_TEXT => {
            if !output.is_empty() && !output.ends_with('\n') {
                output.push('\n');
            }
            output.push_str(text);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pytest_style_report() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4" time="0.05">
<testcase classname="tests.test_api" name="test_ok" time="0.001"/>
<testcase classname="tests.test_api" name="test_fail" time="0.002"><failure message="assert 1 == 2">def test_fail():
&gt;       assert 1 == 2
E       assert 1 == 2</failure></testcase>
<testcase classname="tests.test_api" name="test_error" time="0.003"><error message="fixture failed">Traceback</error></testcase>
<testcase classname="tests.test_api" name="test_skip" time="0"><skipped type="pytest.skip" message="not today"/></testcase>
</testsuite></testsuites>"#;
        let cases = parse_junit(xml).unwrap();
        let statuses: Vec<TestStatus> = cases.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses,
            [
                TestStatus::Passed,
                TestStatus::Failed,
                TestStatus::Error,
                TestStatus::Skipped
            ]
        );
        assert_eq!(cases[1].message.as_deref(), Some("assert 1 == 2"));
        assert!(cases[1]
            .details
            .as_deref()
            .unwrap()
            .contains(">       assert 1 == 2"));
        assert_eq!(cases[0].suite, "pytest");
        assert_eq!(cases[2].time_seconds, 0.003);
        assert_eq!(cases[3].message.as_deref(), Some("not today"));
    }

    #[test]
    fn nested_suites_missing_attributes_output_and_precedence() {
        let xml = r#"<testsuites name="jest tests"><testsuite name="api"><testsuite name="users">
<testcase name="lists users"><system-out><![CDATA[GET /users]]></system-out>
<failure>expected &lt;200&gt;
at users.test.js:10</failure><error message="boom"/></testcase>
<testcase classname="only.class" time="1,234.5"><flakyFailure message="flaky"/></testcase>
</testsuite></testsuite></testsuites>"#;
        let cases = parse_junit(xml).unwrap();
        assert_eq!(cases.len(), 2);
        assert_eq!(cases[0].suite, "api/users");
        assert_eq!(cases[0].status, TestStatus::Error, "error outranks failure");
        assert_eq!(cases[0].message.as_deref(), Some("boom"));
        assert_eq!(cases[0].output.as_deref(), Some("GET /users"));
        assert_eq!(cases[1].name, "only.class");
        assert_eq!(
            cases[1].status,
            TestStatus::Passed,
            "a flaky retry is not a failure"
        );
        assert_eq!(cases[1].time_seconds, 1234.5);
    }

    #[test]
    fn failure_text_without_message_gives_the_first_line() {
        let xml = r#"<testsuite name="s"><testcase name="t"><failure>
  expected &lt;b&gt;
  more</failure></testcase></testsuite>"#;
        let cases = parse_junit(xml).unwrap();
        assert_eq!(cases[0].message.as_deref(), Some("expected <b>"));
    }

    #[test]
    fn malformed_and_empty() {
        assert!(parse_junit("").unwrap().is_empty());
        let err = parse_junit("<testsuite name=\"s\"><testcase name=\"t\">").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid JUnit XML at byte"),
            "{err}"
        );
        assert!(parse_junit("<testsuite><testcase></testsuite>").is_err());
    }
}
