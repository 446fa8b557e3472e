//! JUnit XML reports as test runners write them (pytest, cargo-nextest, Maven Surefire,
//! jest-junit): `<testsuites>` or a bare `<testsuite>`, nested suites, `<failure>` versus
//! `<error>`, `<skipped>`, per-case `<system-out>`, retried attempts, attributes that may be
//! missing. Read as a stream, never as a tree.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::model::{TestCase, TestStatus};

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

/// Whether an element records an earlier attempt of a retried case: cargo-nextest and
/// Surefire write `<rerunFailure>`/`<rerunError>` beside the final `<failure>`/`<error>`,
/// and `<flakyFailure>`/`<flakyError>` in a case that passed on a retry, each with its own
/// message, stack trace, `<system-out>` and `<system-err>`. The case's status, message and
/// output are those of its own attempt, so everything inside these elements is skipped: a
/// flaky pass stays a pass with no failure text, and a retry's output does not join the
/// case's.
fn is_retry(tag: &[u8]) -> bool {
    matches!(
        tag,
        b"rerunFailure" | b"rerunError" | b"flakyFailure" | b"flakyError"
    )
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
    // How many retry elements (see `is_retry`) the reader is inside.
    let mut retry_depth = 0usize;
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
                            class: None,
                        };
                        if empty {
                            cases.push(case);
                        } else {
                            current = Some(case);
                            output_text.clear();
                            retry_depth = 0;
                        }
                    }
                    tag if is_retry(tag) && current.is_some() && !empty => retry_depth += 1,
                    tag @ (b"failure" | b"error" | b"skipped")
                        if current.is_some() && retry_depth == 0 =>
                    {
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
                    b"system-out" | b"system-err"
                        if current.is_some() && retry_depth == 0 && !empty =>
                    {
                        // One line break between elements, never between the text, CDATA
                        // and entity pieces of one element.
                        if !output_text.is_empty() && !output_text.ends_with('\n') {
                            output_text.push('\n');
                        }
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
                tag if is_retry(tag) => retry_depth = retry_depth.saturating_sub(1),
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
        Collecting::Output if output.len() < MAX_TEXT => output.push_str(text),
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

    const PYTEST: &str = include_str!("../../tests/fixtures/junit/pytest.xml");
    const NEXTEST: &str = include_str!("../../tests/fixtures/junit/nextest.xml");
    const SUREFIRE: &str = include_str!("../../tests/fixtures/junit/surefire.xml");
    const JEST: &str = include_str!("../../tests/fixtures/junit/jest-junit.xml");
    const CDATA_ENTITIES: &str = include_str!("../../tests/fixtures/junit/cdata_entities.xml");

    fn statuses(cases: &[TestCase]) -> Vec<TestStatus> {
        cases.iter().map(|c| c.status).collect()
    }

    fn names(cases: &[TestCase]) -> Vec<&str> {
        cases.iter().map(|c| c.name.as_str()).collect()
    }

    /// `pytest -o junit_logging=out-err --junitxml=…` (pytest 9.2): one line, `<testsuites
    /// name="pytest tests">` around `<testsuite name="pytest">`, captured output under
    /// 80-column headers, a skip with both a message and a body.
    #[test]
    fn pytest_fixture() {
        use TestStatus::*;
        let cases = parse_junit(PYTEST).unwrap();
        assert_eq!(
            names(&cases),
            [
                "test_total_of_empty_cart",
                "test_applies_ten_percent[100-90]",
                "test_applies_ten_percent[250-200]",
                "test_currency_symbol",
                "test_saves_order",
                "test_refund",
            ]
        );
        assert_eq!(
            statuses(&cases),
            [Passed, Passed, Failed, Failed, Error, Skipped]
        );
        assert!(cases.iter().all(|c| c.suite == "pytest"), "{cases:?}");
        assert_eq!(cases[0].classname, "tests.test_orders");
        assert_eq!(cases[1].classname, "tests.test_orders.TestDiscount");
        let times: Vec<f64> = cases.iter().map(|c| c.time_seconds).collect();
        assert_eq!(times, [0.001, 0.001, 0.001, 0.001, 0.0, 0.0]);

        let out = format!("{:-^80}", " Captured Out ");
        let err = format!("{:-^80}", " Captured Err ");
        assert_eq!(
            cases[1].output.as_deref(),
            Some(
                format!("{out}\npricing 100 with 10% off\n\n{err}\ndiscount service: cache miss")
                    .as_str()
            )
        );
        assert_eq!(cases[1].message, None);

        let failed = &cases[2];
        assert_eq!(failed.message.as_deref(), Some("assert (250 * 0.9) == 200"));
        let details = failed.details.as_deref().unwrap();
        assert!(
            details.starts_with("self = <tests.test_orders.TestDiscount object at 0x"),
            "{details}"
        );
        assert!(details.contains("\n>       assert price * 0.9 == expected\n"));
        assert!(details.ends_with("tests/test_orders.py:19: AssertionError"));
        assert!(failed
            .output
            .as_deref()
            .unwrap()
            .contains("pricing 250 with 10% off"));

        // pytest writes the assertion's newlines as `&#10;` inside the attribute.
        assert_eq!(
            cases[3].message.as_deref(),
            Some("AssertionError: symbols are not codes\nassert '€' == 'EUR'\n  \n  - EUR\n  + €")
        );
        assert_eq!(
            cases[4].message.as_deref(),
            Some(
                "failed on setup with \"ConnectionError: could not connect to server: \
                 Connection refused\""
            )
        );
        assert!(cases[4]
            .details
            .as_deref()
            .unwrap()
            .ends_with("tests/conftest.py:6: ConnectionError"));
        assert_eq!(cases[5].message.as_deref(), Some("payment sandbox is down"));
        assert_eq!(
            cases[5].details.as_deref(),
            Some("/tmp/shop/tests/test_orders.py:30: payment sandbox is down")
        );
    }

    /// `cargo nextest run` (0.9.143) with `retries = 1` and a JUnit path: a suite per test
    /// binary, `<rerunFailure>` after a failure that failed again, `<flakyFailure>` in a test
    /// that passed on its retry, each retry with its own `<system-out>`/`<system-err>`.
    #[test]
    fn nextest_fixture() {
        use TestStatus::*;
        let cases = parse_junit(NEXTEST).unwrap();
        assert_eq!(
            names(&cases),
            [
                "tests::balance_of_nothing_is_zero",
                "tests::parses_negative_amounts",
                "round_trips_entries",
                "rejects_stale_cursor",
                "uploads_batch_after_retry",
            ]
        );
        assert_eq!(
            statuses(&cases),
            [Passed, Failed, Passed, Failed, Passed],
            "a retry that failed is no extra case, and a flaky pass is a pass"
        );
        let suites: Vec<&str> = cases.iter().map(|c| c.suite.as_str()).collect();
        assert_eq!(
            suites,
            [
                "ledger",
                "ledger",
                "ledger::sync",
                "ledger::sync",
                "ledger::sync"
            ]
        );
        assert_eq!(cases[3].classname, "ledger::sync");
        let times: Vec<f64> = cases.iter().map(|c| c.time_seconds).collect();
        assert_eq!(times, [0.009, 0.009, 0.010, 0.014, 0.010]);

        let failed = &cases[1];
        assert_eq!(
            failed.message.as_deref(),
            Some("thread 'tests::parses_negative_amounts' (6561) panicked at src/lib.rs:22:9")
        );
        assert_eq!(
            failed.details.as_deref(),
            Some(
                "thread 'tests::parses_negative_amounts' (6561) panicked at src/lib.rs:22:9:\n\
                 assertion `left == right` failed\n  left: -42\n right: -41\n\
                 note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace"
            )
        );
        // The case's own output: the first attempt's, not the retry's (pid 6565).
        let output = failed.output.as_deref().unwrap();
        assert!(
            output.starts_with("running 1 test\nparsing \"-42\"\n"),
            "{output}"
        );
        assert!(output.contains("\nwarning: locale is C\n"), "{output}");
        assert!(output.contains("(6561)"), "{output}");
        assert!(!output.contains("(6565)"), "{output}");
        assert_eq!(output.matches("running 1 test").count(), 1, "{output}");

        assert_eq!(
            cases[3].message.as_deref(),
            Some("thread 'rejects_stale_cursor' (6567) panicked at tests/sync.rs:19:7")
        );
        assert!(cases[3].details.as_deref().unwrap().contains(
            "called `Result::unwrap()` on an `Err` value: \"cursor 17 is older than 18\""
        ));

        let flaky = &cases[4];
        assert_eq!(
            (&flaky.message, &flaky.details, &flaky.output),
            (&None, &None, &None),
            "the failed attempt's panic and output are not the passing case's"
        );
    }

    /// Maven Surefire 3 `TEST-*.xml`: a bare `<testsuite>` with `xsi` attributes and
    /// `<properties>`, CDATA stack traces and output, `<skipped message>`, and a test that
    /// passed on a rerun (`-Dsurefire.rerunFailingTestsCount`) with a nested `<flakyFailure>`.
    #[test]
    fn surefire_fixture() {
        use TestStatus::*;
        let cases = parse_junit(SUREFIRE).unwrap();
        assert_eq!(
            names(&cases),
            [
                "placesOrder",
                "rejectsEmptyCart",
                "loadsPriceList",
                "refundsOrder",
                "syncsInventory",
            ]
        );
        assert_eq!(statuses(&cases), [Passed, Failed, Error, Skipped, Passed]);
        assert!(cases
            .iter()
            .all(|c| c.suite == "com.example.shop.OrderServiceTest"
                && c.classname == "com.example.shop.OrderServiceTest"));
        let times: Vec<f64> = cases.iter().map(|c| c.time_seconds).collect();
        assert_eq!(times, [0.012, 0.031, 0.004, 0.0, 0.009]);

        let failed = &cases[1];
        assert_eq!(
            failed.message.as_deref(),
            Some("expected: <400> but was: <200>")
        );
        let details = failed.details.as_deref().unwrap();
        assert!(
            details.starts_with(
                "org.opentest4j.AssertionFailedError: expected: <400> but was: <200>\n\tat org."
            ),
            "{details}"
        );
        assert!(
            details.ends_with("\tat java.base/java.util.ArrayList.forEach(ArrayList.java:1511)")
        );
        assert_eq!(
            failed.output.as_deref(),
            Some(
                "12:00:01.234 [main] INFO com.example.shop.OrderService -- validating cart 7 \
                 (0 items)"
            )
        );

        let error = &cases[2];
        assert_eq!(
            error.message.as_deref(),
            Some("prices.csv (No such file or directory)")
        );
        assert!(error
            .details
            .as_deref()
            .unwrap()
            .contains("\tat java.base/java.io.FileInputStream.<init>(FileInputStream.java:157)\n"));
        assert_eq!(
            error.output.as_deref(),
            Some("WARN price list not found, falling back to defaults")
        );

        assert_eq!(
            cases[3].message.as_deref(),
            Some("refunds are not implemented yet")
        );
        assert_eq!(cases[3].details, None);

        let flaky = &cases[4];
        assert_eq!((&flaky.message, &flaky.details), (&None, &None));
        assert_eq!(
            flaky.output.as_deref(),
            Some("connecting to inventory at localhost:8081\nsynced 3 items"),
            "the rerun's nested <system-out> is not the case's"
        );
    }

    /// jest-junit 17 defaults under jest 30: `<testsuites name="jest tests">`, a suite per
    /// file named after its first `describe` (`undefined` without one), classname and name
    /// both "describe… title", a `<failure>` with no attributes, `<skipped/>` for `it.skip`
    /// and a bare `<testcase>` for `it.todo`.
    #[test]
    fn jest_junit_fixture() {
        use TestStatus::*;
        let cases = parse_junit(JEST).unwrap();
        assert_eq!(
            names(&cases),
            [
                "Cart total is zero when empty",
                "Cart total multiplies price by quantity",
                "Cart coupons halves with HALF",
                "Cart coupons ignores an unknown code",
                "Cart coupons stacks two coupons",
                "Cart coupons expires at midnight",
                " formats a total of 1 & 2 as <3>",
            ]
        );
        assert!(cases.iter().all(|c| c.classname == c.name), "{cases:?}");
        assert_eq!(
            statuses(&cases),
            [Passed, Failed, Passed, Failed, Skipped, Passed, Passed]
        );
        let suites: Vec<&str> = cases.iter().map(|c| c.suite.as_str()).collect();
        assert_eq!(suites, [&["Cart"; 6][..], &["undefined"]].concat());
        let times: Vec<f64> = cases.iter().map(|c| c.time_seconds).collect();
        assert_eq!(times, [0.002, 0.002, 0.0, 0.0, 0.0, 0.0, 0.001]);

        let failed = &cases[1];
        assert_eq!(
            failed.message.as_deref(),
            Some("Error: expect(received).toBe(expected) // Object.is equality"),
            "no message attribute: the body's first line"
        );
        let details = failed.details.as_deref().unwrap();
        assert!(
            details.contains("\n\nExpected: 8\nReceived: 7\n"),
            "{details}"
        );
        assert!(
            details.contains("\n    at new Promise (<anonymous>)\n"),
            "{details}"
        );
        assert_eq!(
            cases[3].message.as_deref(),
            Some("Error: unknown coupon BOGUS")
        );
        assert_eq!((&cases[4].message, &cases[4].details), (&None, &None));
        assert!(cases.iter().all(|c| c.output.is_none()));
    }

    /// Text split across CDATA sections (one of them the `]]]]><![CDATA[>` idiom for a
    /// literal `]]>`), predefined and numeric entities, and names outside ASCII.
    #[test]
    fn cdata_and_entities_fixture() {
        use TestStatus::*;
        let cases = parse_junit(CDATA_ENTITIES).unwrap();
        assert_eq!(
            names(&cases),
            [
                "lehnt IBAN mit Prüfziffer 00 ab",
                "日本語の口座名義 🏦",
                "Λογαριασμός",
                "Zahlung → Bestätigung",
            ]
        );
        assert_eq!(statuses(&cases), [Failed, Failed, Error, Passed]);
        assert!(cases
            .iter()
            .all(|c| c.suite == "Überweisungen" && c.classname == "überweisung.SEPA"));
        let times: Vec<f64> = cases.iter().map(|c| c.time_seconds).collect();
        assert_eq!(times, [0.125, 0.25, 0.1, 0.025]);

        assert_eq!(
            cases[0].message.as_deref(),
            Some("expected <rejected> & got <accepted>\nsecond line of the message")
        );
        assert_eq!(
            cases[0].details.as_deref(),
            Some(
                "AssertionError: expected <rejected> & got <accepted>\n    at check (sepa.js:12:5)"
            )
        );

        let mixed = &cases[1];
        let first_line = "expected <田中> & got <tanaka> — raw <CDATA> & ]]> part and \
                          \"quoted\" 'text'";
        assert_eq!(mixed.message.as_deref(), Some(first_line));
        assert_eq!(
            mixed.details.as_deref(),
            Some(format!("{first_line}\nat names.test.js:7").as_str())
        );
        assert_eq!(
            mixed.output.as_deref(),
            Some(
                "Betrag: 12,50 €\nEmpfänger: <Müller & Söhne>\n\
                 Warnung: <Zeitüberschreitung> & Wiederholung"
            ),
            "entities inside one <system-out> do not split it into lines"
        );

        assert_eq!(
            cases[2].message.as_deref(),
            Some("TypeError: Cannot read properties of undefined (reading 'iban')"),
            "an empty message attribute falls back to the body"
        );
        assert_eq!(
            (&cases[3].message, &cases[3].details, &cases[3].output),
            (&None, &None, &None)
        );
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
