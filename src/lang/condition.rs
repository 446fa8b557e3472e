//! The alert condition dialect of the expression language ([`super::expr`]), such as
//! `system.cpu_percent > 80 and workflow.failure_rate > 0.1`.
//!
//! A condition is a set of comparisons `<metric> <op> <number>` joined by `and` and `or`,
//! where `and` binds tighter than `or` and parentheses group. A metric is a dotted name,
//! optionally followed by a label selector such as `{workflow="nightly"}`. Only known
//! metrics and labels are accepted, so a typo is caught when the manifest is validated
//! instead of silently never firing.
//!
//! Errors carry the 1-based character column where the problem was found.

use std::fmt;
use std::str::FromStr;

pub use super::expr::CompareOp;
use super::expr::{Expr, ExprError, Grammar, LexError, Parser, Syntax, Token, TokenKind};

/// How many comparisons one condition may hold.
const MAX_COMPARISONS: usize = super::expr::MAX_OPERANDS;

/// Metrics about the host, which take no labels.
pub const SYSTEM_METRICS: [&str; 9] = [
    "system.cpu_percent",
    "system.memory_percent",
    "system.disk_percent",
    "system.network_rx_bytes_per_second",
    "system.network_tx_bytes_per_second",
    "system.load_average",
    "system.process_count",
    "system.orchestrator_cpu_percent",
    "system.orchestrator_rss_bytes",
];

/// Metrics about workflow runs, which may be narrowed with a `workflow` label.
const WORKFLOW_METRICS: [&str; 4] = [
    "workflow.failure_rate",
    "workflow.success_rate",
    "workflow.duration_p95_seconds",
    "workflow.runs",
];

/// Metrics about test results, which may be narrowed with a `workflow` label.
const TEST_METRICS: [&str; 5] = [
    "tests.pass_rate",
    "tests.failed",
    "tests.flaky",
    "tests.new_failures",
    "tests.quarantined",
];

/// The agent metric suffixes, used both as `agent.<name>.<suffix>` and `agent.<suffix>`.
const AGENT_SUFFIXES: [&str; 5] = [
    "error_rate",
    "success_rate",
    "duration_p95_seconds",
    "executions",
    "health_score",
];

/// The comparison operators in the order they are listed in messages.
const OPERATORS: &str = ">, >=, <, <=, ==, !=";

/// What the alert dialect's lexer accepts: double-quoted label values with `\"` and `\\`
/// escapes, `and`/`or` in any case (never `&&`/`||`), strict numbers, label selectors.
const SYNTAX: Syntax = Syntax {
    quotes: &['"'],
    escapes: true,
    logic_symbols: false,
    not_word: false,
    words_any_case: true,
    selectors: true,
    strict_numbers: true,
    lex_message,
};

/// A parsed alert condition: comparisons joined by `and` and `or` (the parser makes no
/// `Not`).
pub type Condition = Expr<Comparison>;

/// Why a condition was rejected.
pub type ConditionError = ExprError;

/// A comparison `<metric> <op> <threshold>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The metric on the left-hand side.
    pub metric: MetricRef,
    /// The comparison operator.
    pub op: CompareOp,
    /// The number on the right-hand side.
    pub threshold: f64,
}

/// A reference to a metric, with an optional label selector.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricRef {
    /// The metric name as written, such as `agent.test_runner.error_rate`.
    pub name: String,
    /// The label selector as `(key, value)` pairs in the order written; empty when absent.
    pub labels: Vec<(String, String)>,
}

/// Parses an alert condition such as `system.cpu_percent > 80`.
///
/// # Errors
///
/// Returns a [`ConditionError`] with the 1-based character column of the first problem:
/// an empty condition, an unknown metric or label, a malformed comparison or number,
/// unbalanced parentheses, trailing text, or input beyond the nesting and size limits.
pub fn parse_condition(text: &str) -> Result<Condition, ConditionError> {
    let mut parser = Parser::new(text, &SYNTAX);
    if parser.peek()?.kind == TokenKind::End {
        return Err(ExprError::new(
            1,
            "empty condition: expected a comparison like `system.cpu_percent > 80`",
        ));
    }
    let condition = parser.or(&mut AlertGrammar { comparisons: 0 })?;
    let token = parser.advance()?;
    match token.kind {
        TokenKind::End => Ok(condition),
        TokenKind::RParen => Err(ExprError::new(
            token.column,
            "unexpected `)` with no matching `(`",
        )),
        _ => Err(ExprError::new(
            token.column,
            format!(
                "expected `and`, `or` or the end of the condition, found {}",
                describe(&token)
            ),
        )),
    }
}

impl FromStr for Condition {
    type Err = ConditionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_condition(text)
    }
}

impl Condition {
    /// Evaluates the condition, reading metric values through `lookup`.
    ///
    /// A metric that `lookup` cannot provide makes its comparison unknown (`None`).
    /// Unknown values follow three-valued logic: `false and unknown` is `false` and
    /// `true or unknown` is `true`, so a missing metric only hides the result when the
    /// result depends on it.
    pub fn evaluate(&self, lookup: &dyn Fn(&MetricRef) -> Option<f64>) -> Option<bool> {
        let outcome: Result<Option<bool>, std::convert::Infallible> =
            self.evaluate_with(&mut |comparison: &Comparison| {
                Ok(lookup(&comparison.metric)
                    .map(|value| comparison.op.apply(value, comparison.threshold)))
            });
        match outcome {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// The metrics the condition reads, left to right, repeated if referenced repeatedly.
    pub fn metrics(&self) -> Vec<&MetricRef> {
        self.atoms()
            .into_iter()
            .map(|comparison| &comparison.metric)
            .collect()
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Rust prints f64 without exponents, so the threshold stays in the number syntax.
        write!(f, "{} {} {}", self.metric, self.op, self.threshold)
    }
}

impl fmt::Display for MetricRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if self.labels.is_empty() {
            return Ok(());
        }
        f.write_str("{")?;
        for (index, (key, value)) in self.labels.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{key}=\"")?;
            for c in value.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        f.write_str("}")
    }
}

/// The alert dialect's words for a lexical error.
fn lex_message(error: &LexError, _text: &str) -> String {
    match error {
        LexError::UnexpectedChar(c) => format!(
            "unexpected character `{c}`: expected a metric, a comparison, \
             a number, `and`, `or` or parentheses"
        ),
        LexError::UnclosedString => "unterminated string: expected a closing `\"`".to_owned(),
        LexError::UnknownEscape(shown) => {
            format!("unknown escape `\\{shown}`: expected `\\\"` or `\\\\`")
        }
        LexError::BadNumber(text) | LexError::NumberTooLarge(text) => {
            format!("number `{text}` is too large: expected a finite number")
        }
        LexError::MissingFractionDigits => {
            "expected digits after the decimal point, as in `0.5`".to_owned()
        }
        LexError::MissingLeadingDigit => {
            "expected a digit before the decimal point, as in `0.5`".to_owned()
        }
        LexError::PercentSign(text) => {
            format!("percent signs are not allowed: write `{text}` instead of `{text}%`")
        }
        LexError::GluedToNumber(c, text) => format!(
            "unexpected `{c}` after the number `{text}`: \
             expected a plain number like `80` or `0.5`"
        ),
        LexError::LoneBang => "unexpected `!`: expected `!=`".to_owned(),
        LexError::DoubleAmpersand => "`&&` is not supported: use `and`".to_owned(),
        LexError::DoublePipe => "`||` is not supported: use `or`".to_owned(),
    }
}

/// Describes a token for "found ..." in error messages.
fn describe(token: &Token) -> String {
    match token.kind {
        TokenKind::End => "the end of the condition".to_string(),
        _ => format!("`{}`", token.text),
    }
}

/// Checks a metric name and returns the label keys it accepts.
fn allowed_labels(name: &str) -> Result<&'static [&'static str], String> {
    if SYSTEM_METRICS.contains(&name) {
        return Ok(&[]);
    }
    if WORKFLOW_METRICS.contains(&name) || TEST_METRICS.contains(&name) {
        return Ok(&["workflow"]);
    }
    if let Some(rest) = name.strip_prefix("agent.") {
        if AGENT_SUFFIXES.contains(&rest) {
            return Ok(&["agent"]);
        }
        if let Some((agent, suffix)) = rest.split_once('.') {
            if is_agent_name(agent) && AGENT_SUFFIXES.contains(&suffix) {
                return Ok(&[]);
            }
        }
    }
    Err(unknown_metric_message(name))
}

fn is_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn unknown_metric_message(name: &str) -> String {
    if let Some(suggestion) = suggest_metric(name) {
        return format!("unknown metric `{name}`; did you mean `{suggestion}`?");
    }
    let known: Vec<String> = SYSTEM_METRICS
        .iter()
        .chain(&WORKFLOW_METRICS)
        .map(|metric| (*metric).to_string())
        .chain(
            AGENT_SUFFIXES
                .iter()
                .map(|suffix| format!("agent.<agent_name>.{suffix}")),
        )
        .chain(
            AGENT_SUFFIXES
                .iter()
                .map(|suffix| format!("agent.{suffix}")),
        )
        .chain(TEST_METRICS.iter().map(|metric| (*metric).to_string()))
        .collect();
    format!(
        "unknown metric `{name}`: expected one of {}",
        known.join(", ")
    )
}

/// Finds the known metric closest to `name`, if one is within edit distance 3.
fn suggest_metric(name: &str) -> Option<String> {
    let mut candidates: Vec<String> = SYSTEM_METRICS
        .iter()
        .chain(&WORKFLOW_METRICS)
        .chain(&TEST_METRICS)
        .map(|metric| (*metric).to_string())
        .chain(
            AGENT_SUFFIXES
                .iter()
                .map(|suffix| format!("agent.{suffix}")),
        )
        .collect();
    // A three-part name is most likely a per-agent metric, so keep the agent name the
    // user wrote and offer the agent metrics for it.
    let parts: Vec<&str> = name.split('.').collect();
    if let [_, agent, _] = parts.as_slice() {
        if is_agent_name(agent) {
            candidates.extend(
                AGENT_SUFFIXES
                    .iter()
                    .map(|suffix| format!("agent.{agent}.{suffix}")),
            );
        }
    }
    candidates
        .into_iter()
        .filter_map(|candidate| {
            edit_distance_within(name, &candidate, 3).map(|distance| (distance, candidate))
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// The Levenshtein distance between `a` and `b` (in characters) when it is at most `limit`.
fn edit_distance_within(a: &str, b: &str, limit: usize) -> Option<usize> {
    // The distance is at least the difference in length, so long inputs are rejected
    // before the quadratic table is built.
    if a.chars().count().abs_diff(b.chars().count()) > limit {
        return None;
    }
    Some(strsim::levenshtein(a, b)).filter(|&distance| distance <= limit)
}

/// The alert dialect's operands: a parenthesised condition or a metric comparison.
struct AlertGrammar {
    comparisons: usize,
}

impl Grammar for AlertGrammar {
    type Atom = Comparison;

    fn operand(&mut self, parser: &mut Parser<'_>) -> Result<Condition, ExprError> {
        let token = parser.advance()?;
        match &token.kind {
            TokenKind::LParen => {
                let inner = parser.nested(self, &token)?;
                let close = parser.advance()?;
                if close.kind == TokenKind::RParen {
                    Ok(inner)
                } else {
                    Err(ExprError::new(
                        close.column,
                        format!(
                            "expected `)` to close the `(` at column {}, found {}",
                            token.column,
                            describe(&close)
                        ),
                    ))
                }
            }
            TokenKind::Word(name) => {
                let name = name.clone();
                self.comparison(parser, name, token.column)
            }
            TokenKind::Number(_) => Err(ExprError::new(
                token.column,
                format!(
                    "expected a metric name or `(`, found {}: write the metric first, \
                     as in `system.cpu_percent > 80`",
                    describe(&token)
                ),
            )),
            _ => Err(ExprError::new(
                token.column,
                format!("expected a metric name or `(`, found {}", describe(&token)),
            )),
        }
    }
}

impl AlertGrammar {
    fn comparison(
        &mut self,
        parser: &mut Parser<'_>,
        name: String,
        column: usize,
    ) -> Result<Condition, ExprError> {
        self.comparisons += 1;
        if self.comparisons > MAX_COMPARISONS {
            return Err(ExprError::new(
                column,
                format!("too many comparisons: expected at most {MAX_COMPARISONS}"),
            ));
        }
        let allowed = allowed_labels(&name).map_err(|message| ExprError::new(column, message))?;
        let labels = if parser.peek()?.kind == TokenKind::LBrace {
            labels(parser, &name, allowed)?
        } else {
            Vec::new()
        };
        let metric = MetricRef { name, labels };

        let token = parser.advance()?;
        let op = match token.kind {
            TokenKind::Compare(op) => op,
            TokenKind::Assign => {
                return Err(ExprError::new(
                    token.column,
                    format!("expected a comparison operator ({OPERATORS}), found `=`: use `==` for equality"),
                ))
            }
            _ => {
                return Err(ExprError::new(
                    token.column,
                    format!(
                        "expected a comparison operator ({OPERATORS}) after `{metric}`, found {}",
                        describe(&token)
                    ),
                ))
            }
        };

        let token = parser.advance()?;
        let threshold = match token.kind {
            TokenKind::Number(value) => value,
            TokenKind::End => {
                return Err(ExprError::new(
                    token.column,
                    format!("expected a number after `{op}`"),
                ))
            }
            _ => {
                return Err(ExprError::new(
                    token.column,
                    format!("expected a number after `{op}`, found {}", describe(&token)),
                ))
            }
        };
        Ok(Expr::Atom(Comparison {
            metric,
            op,
            threshold,
        }))
    }
}

/// Parses `{key="value", ...}` after a metric name; the `{` has been peeked.
fn labels(
    parser: &mut Parser<'_>,
    metric: &str,
    allowed: &[&str],
) -> Result<Vec<(String, String)>, ExprError> {
    let open = parser.advance()?;
    if allowed.is_empty() {
        return Err(ExprError::new(
            open.column,
            format!("metric `{metric}` takes no labels"),
        ));
    }
    let mut labels: Vec<(String, String)> = Vec::new();
    loop {
        let token = parser.advance()?;
        let key = match &token.kind {
            TokenKind::RBrace => return Ok(labels),
            // `and` and `or` are label names here, as any other word.
            TokenKind::Word(_) | TokenKind::And | TokenKind::Or => token.text.clone(),
            TokenKind::End => return Err(unclosed_selector(&open, &token)),
            _ => {
                return Err(ExprError::new(
                    token.column,
                    format!("expected a label name or `}}`, found {}", describe(&token)),
                ))
            }
        };
        if !allowed.contains(&key.as_str()) {
            let expected: Vec<String> = allowed.iter().map(|key| format!("`{key}`")).collect();
            return Err(ExprError::new(
                token.column,
                format!(
                    "unknown label `{key}` for metric `{metric}`: expected {}",
                    expected.join(" or ")
                ),
            ));
        }
        if labels.iter().any(|(existing, _)| *existing == key) {
            return Err(ExprError::new(
                token.column,
                format!("label `{key}` is given twice: expected each label at most once"),
            ));
        }

        let token = parser.advance()?;
        match token.kind {
            TokenKind::Assign => {}
            TokenKind::Compare(CompareOp::Ne) => {
                return Err(ExprError::new(
                    token.column,
                    format!("only `=` label matchers are supported: write `{key}=\"...\"`"),
                ))
            }
            _ => {
                return Err(ExprError::new(
                    token.column,
                    format!(
                        "expected `=` after label `{key}`, found {}",
                        describe(&token)
                    ),
                ))
            }
        }

        let token = parser.advance()?;
        let TokenKind::Str(value) = token.kind else {
            return Err(ExprError::new(
                token.column,
                format!(
                    "expected a double-quoted value after `{key}=`, found {}",
                    describe(&token)
                ),
            ));
        };
        if key == "agent" && !is_agent_name(&value) {
            return Err(ExprError::new(
                token.column,
                format!("invalid agent name `{value}`: expected letters, digits, `_` or `-`"),
            ));
        }
        labels.push((key, value));

        let token = parser.advance()?;
        match token.kind {
            TokenKind::Comma => {}
            TokenKind::RBrace => return Ok(labels),
            TokenKind::End => return Err(unclosed_selector(&open, &token)),
            _ => {
                return Err(ExprError::new(
                    token.column,
                    format!(
                        "expected `,` or `}}` in the label selector, found {}",
                        describe(&token)
                    ),
                ))
            }
        }
    }
}

fn unclosed_selector(open: &Token, end: &Token) -> ExprError {
    ExprError::new(
        end.column,
        format!(
            "expected `}}` to close the label selector opened at column {}",
            open.column
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compare(name: &str, op: CompareOp, threshold: f64) -> Condition {
        Expr::Atom(Comparison {
            metric: MetricRef {
                name: name.to_string(),
                labels: Vec::new(),
            },
            op,
            threshold,
        })
    }

    fn and(left: Condition, right: Condition) -> Condition {
        Expr::And(Box::new(left), Box::new(right))
    }

    fn or(left: Condition, right: Condition) -> Condition {
        Expr::Or(Box::new(left), Box::new(right))
    }

    fn error_of(text: &str) -> ConditionError {
        match parse_condition(text) {
            Ok(condition) => panic!("expected `{text}` to be rejected, got {condition:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn guide_examples_parse() {
        assert_eq!(
            parse_condition("system.cpu_percent > 80"),
            Ok(compare("system.cpu_percent", CompareOp::Gt, 80.0))
        );
        assert_eq!(
            parse_condition("workflow.failure_rate > 0.1"),
            Ok(compare("workflow.failure_rate", CompareOp::Gt, 0.1))
        );
    }

    #[test]
    fn every_operator_parses() {
        let cases = [
            (">", CompareOp::Gt),
            (">=", CompareOp::Ge),
            ("<", CompareOp::Lt),
            ("<=", CompareOp::Le),
            ("==", CompareOp::Eq),
            ("!=", CompareOp::Ne),
        ];
        for (symbol, op) in cases {
            let text = format!("tests.failed{symbol}-2.5");
            assert_eq!(
                parse_condition(&text),
                Ok(compare("tests.failed", op, -2.5))
            );
        }
    }

    #[test]
    fn and_binds_tighter_than_or() {
        let parsed = parse_condition(
            "system.cpu_percent > 80 or system.memory_percent > 90 and tests.failed > 0",
        )
        .unwrap();
        let expected = or(
            compare("system.cpu_percent", CompareOp::Gt, 80.0),
            and(
                compare("system.memory_percent", CompareOp::Gt, 90.0),
                compare("tests.failed", CompareOp::Gt, 0.0),
            ),
        );
        assert_eq!(parsed, expected);

        let grouped = parse_condition(
            "(system.cpu_percent > 80 or system.memory_percent > 90) AND tests.failed > 0",
        )
        .unwrap();
        let expected = and(
            or(
                compare("system.cpu_percent", CompareOp::Gt, 80.0),
                compare("system.memory_percent", CompareOp::Gt, 90.0),
            ),
            compare("tests.failed", CompareOp::Gt, 0.0),
        );
        assert_eq!(grouped, expected);
    }

    #[test]
    fn metrics_with_labels_parse() {
        let parsed =
            parse_condition(r#"workflow.failure_rate{workflow="nightly \"full\" \\ run"} >= 0.25"#)
                .unwrap();
        let Expr::Atom(comparison) = &parsed else {
            panic!("expected a comparison, got {parsed:?}");
        };
        assert_eq!(
            comparison.metric.labels,
            vec![(
                "workflow".to_string(),
                r#"nightly "full" \ run"#.to_string()
            )]
        );

        for text in [
            "agent.test_runner.error_rate > 0.5",
            "agent.code-review-2.health_score < 50",
            r#"agent.success_rate{agent="test_runner"} < 0.9"#,
            r#"tests.flaky{ workflow = "ci", } > 3"#,
            "workflow.runs{} == 0",
        ] {
            assert!(parse_condition(text).is_ok(), "`{text}` should parse");
        }
    }

    #[test]
    fn the_test_classes_are_metrics_per_workflow() {
        let condition =
            parse_condition(r#"tests.new_failures{workflow="ci"} > 0 or tests.quarantined >= 5"#)
                .unwrap();
        let values = |new_failures: f64, quarantined: f64| {
            move |metric: &MetricRef| match (metric.name.as_str(), metric.labels.as_slice()) {
                ("tests.new_failures", [(key, value)]) if key == "workflow" && value == "ci" => {
                    Some(new_failures)
                }
                ("tests.quarantined", []) => Some(quarantined),
                _ => None,
            }
        };
        assert_eq!(condition.evaluate(&values(0.0, 4.0)), Some(false));
        assert_eq!(condition.evaluate(&values(1.0, 0.0)), Some(true));
        assert_eq!(condition.evaluate(&values(0.0, 5.0)), Some(true));
        let err = error_of("tests.new_failure > 0");
        assert!(
            err.message.contains("did you mean `tests.new_failures`"),
            "{}",
            err.message
        );
        let err = error_of(r#"tests.quarantined{agent="x"} > 0"#);
        assert!(err.message.contains("workflow"), "{}", err.message);
    }

    #[test]
    fn evaluate_follows_precedence() {
        let condition = parse_condition(
            "system.cpu_percent > 80 or system.memory_percent > 90 and tests.failed > 0",
        )
        .unwrap();
        let values = |cpu: f64, memory: f64, failed: f64| {
            move |metric: &MetricRef| match metric.name.as_str() {
                "system.cpu_percent" => Some(cpu),
                "system.memory_percent" => Some(memory),
                "tests.failed" => Some(failed),
                _ => None,
            }
        };
        assert_eq!(condition.evaluate(&values(85.0, 0.0, 0.0)), Some(true));
        assert_eq!(condition.evaluate(&values(10.0, 95.0, 0.0)), Some(false));
        assert_eq!(condition.evaluate(&values(10.0, 95.0, 1.0)), Some(true));
        assert_eq!(condition.evaluate(&values(80.0, 90.0, 1.0)), Some(false));

        let grouped = parse_condition(
            "(system.cpu_percent > 80 or system.memory_percent > 90) and tests.failed > 0",
        )
        .unwrap();
        assert_eq!(grouped.evaluate(&values(85.0, 0.0, 0.0)), Some(false));
        assert_eq!(grouped.evaluate(&values(85.0, 0.0, 2.0)), Some(true));
    }

    #[test]
    fn evaluate_treats_missing_metrics_as_unknown() {
        let only_cpu = |cpu: f64| {
            move |metric: &MetricRef| (metric.name == "system.cpu_percent").then_some(cpu)
        };
        let or_condition = parse_condition("system.cpu_percent > 80 or tests.failed > 0").unwrap();
        assert_eq!(or_condition.evaluate(&only_cpu(90.0)), Some(true));
        assert_eq!(or_condition.evaluate(&only_cpu(10.0)), None);
        let and_condition =
            parse_condition("system.cpu_percent > 80 and tests.failed > 0").unwrap();
        assert_eq!(and_condition.evaluate(&only_cpu(10.0)), Some(false));
        assert_eq!(and_condition.evaluate(&only_cpu(90.0)), None);
    }

    #[test]
    fn compare_op_apply_matches_symbols() {
        assert!(CompareOp::Gt.apply(2.0, 1.0) && !CompareOp::Gt.apply(1.0, 1.0));
        assert!(CompareOp::Ge.apply(1.0, 1.0) && !CompareOp::Ge.apply(0.0, 1.0));
        assert!(CompareOp::Lt.apply(0.0, 1.0) && !CompareOp::Lt.apply(1.0, 1.0));
        assert!(CompareOp::Le.apply(1.0, 1.0) && !CompareOp::Le.apply(2.0, 1.0));
        assert!(CompareOp::Eq.apply(1.0, 1.0) && !CompareOp::Eq.apply(2.0, 1.0));
        assert!(CompareOp::Ne.apply(2.0, 1.0) && !CompareOp::Ne.apply(1.0, 1.0));
        assert!(!CompareOp::Eq.apply(f64::NAN, f64::NAN));
    }

    #[test]
    fn metrics_are_listed_left_to_right() {
        let condition = parse_condition(
            r#"tests.failed > 0 and (agent.error_rate{agent="a"} > 0.1 or tests.failed > 5)"#,
        )
        .unwrap();
        let names: Vec<String> = condition.metrics().iter().map(|m| m.to_string()).collect();
        assert_eq!(
            names,
            [
                "tests.failed",
                r#"agent.error_rate{agent="a"}"#,
                "tests.failed"
            ]
        );
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        let cases = [
            ("system.cpu_percent>80", "system.cpu_percent > 80"),
            (
                "workflow.failure_rate > 0.10",
                "workflow.failure_rate > 0.1",
            ),
            ("tests.failed != -0.5", "tests.failed != -0.5"),
            (
                "system.cpu_percent > 80 OR system.disk_percent > 1 and tests.failed > 0",
                "system.cpu_percent > 80 or system.disk_percent > 1 and tests.failed > 0",
            ),
            (
                "(system.cpu_percent > 80 or system.disk_percent > 1) and tests.failed > 0",
                "(system.cpu_percent > 80 or system.disk_percent > 1) and tests.failed > 0",
            ),
            (
                "tests.failed > 0 and (tests.flaky > 1 and tests.pass_rate < 0.9)",
                "tests.failed > 0 and (tests.flaky > 1 and tests.pass_rate < 0.9)",
            ),
            (
                "tests.failed > 0 or (tests.flaky > 1 or tests.pass_rate < 0.9)",
                "tests.failed > 0 or (tests.flaky > 1 or tests.pass_rate < 0.9)",
            ),
            ("((tests.failed > 0))", "tests.failed > 0"),
            (
                r#"workflow.runs{workflow="a\"b\\c"} >= 100000000000000000000000"#,
                r#"workflow.runs{workflow="a\"b\\c"} >= 100000000000000000000000"#,
            ),
            (
                "system.load_average < 0.0000001",
                "system.load_average < 0.0000001",
            ),
        ];
        for (text, canonical) in cases {
            let parsed = parse_condition(text).unwrap();
            let printed = parsed.to_string();
            assert_eq!(printed, canonical, "condition `{text}`");
            assert_eq!(parse_condition(&printed), Ok(parsed), "condition `{text}`");
        }
    }

    #[test]
    fn built_trees_round_trip_through_display() {
        let a = || compare("tests.failed", CompareOp::Gt, 0.0);
        let b = || compare("tests.flaky", CompareOp::Ge, 2.0);
        let c = || compare("system.cpu_percent", CompareOp::Lt, 1.5);
        let trees = [
            and(or(a(), b()), c()),
            and(a(), or(b(), c())),
            and(a(), and(b(), c())),
            or(a(), or(b(), c())),
            or(and(a(), b()), and(b(), c())),
            and(or(a(), b()), or(b(), and(c(), a()))),
        ];
        for tree in trees {
            assert_eq!(
                parse_condition(&tree.to_string()),
                Ok(tree.clone()),
                "{tree}"
            );
        }
    }

    #[test]
    fn errors_have_columns_and_exact_messages() {
        let cases: [(&str, usize, &str); 27] = [
            ("system.cpu_percent >", 21, "expected a number after `>`"),
            (
                "system.cpu_precent > 80",
                1,
                "unknown metric `system.cpu_precent`; did you mean `system.cpu_percent`?",
            ),
            (
                "tests.failed > 0 and agent.runner.eror_rate > 1",
                22,
                "unknown metric `agent.runner.eror_rate`; did you mean `agent.runner.error_rate`?",
            ),
            (
                "",
                1,
                "empty condition: expected a comparison like `system.cpu_percent > 80`",
            ),
            (
                "   ",
                1,
                "empty condition: expected a comparison like `system.cpu_percent > 80`",
            ),
            (
                "(tests.failed > 0",
                18,
                "expected `)` to close the `(` at column 1, found the end of the condition",
            ),
            (
                "tests.failed > 0)",
                17,
                "unexpected `)` with no matching `(`",
            ),
            (
                "tests.failed > 0 tests.flaky > 1",
                18,
                "expected `and`, `or` or the end of the condition, found `tests.flaky`",
            ),
            (
                "tests.failed 5",
                14,
                "expected a comparison operator (>, >=, <, <=, ==, !=) after `tests.failed`, \
                 found `5`",
            ),
            (
                "tests.failed = 5",
                14,
                "expected a comparison operator (>, >=, <, <=, ==, !=), found `=`: \
                 use `==` for equality",
            ),
            (
                "tests.failed > abc",
                16,
                "expected a number after `>`, found `abc`",
            ),
            (
                "system.cpu_percent > 80%",
                24,
                "percent signs are not allowed: write `80` instead of `80%`",
            ),
            (
                "80 < system.cpu_percent",
                1,
                "expected a metric name or `(`, found `80`: write the metric first, \
                 as in `system.cpu_percent > 80`",
            ),
            (
                "and tests.failed > 0",
                1,
                "expected a metric name or `(`, found `and`",
            ),
            (
                "tests.failed > 0 and",
                21,
                "expected a metric name or `(`, found the end of the condition",
            ),
            (
                r#"system.cpu_percent{host="a"} > 80"#,
                19,
                "metric `system.cpu_percent` takes no labels",
            ),
            (
                r#"workflow.runs{agent="a"} > 1"#,
                15,
                "unknown label `agent` for metric `workflow.runs`: expected `workflow`",
            ),
            (
                r#"workflow.runs{workflow="a", workflow="b"} > 1"#,
                29,
                "label `workflow` is given twice: expected each label at most once",
            ),
            (
                r#"workflow.runs{workflow="a > 1"#,
                24,
                "unterminated string: expected a closing `\"`",
            ),
            (
                r#"workflow.runs{workflow="a\n"} > 1"#,
                26,
                r#"unknown escape `\n`: expected `\"` or `\\`"#,
            ),
            (
                r#"workflow.runs{workflow!="a"} > 1"#,
                23,
                r#"only `=` label matchers are supported: write `workflow="..."`"#,
            ),
            (
                r#"workflow.runs{workflow="a" > 1"#,
                28,
                "expected `,` or `}` in the label selector, found `>`",
            ),
            (
                r#"agent.error_rate{agent="bad name"} > 1"#,
                24,
                "invalid agent name `bad name`: expected letters, digits, `_` or `-`",
            ),
            (
                "tests.failed > 1.",
                18,
                "expected digits after the decimal point, as in `0.5`",
            ),
            (
                "tests.failed > .5",
                16,
                "expected a digit before the decimal point, as in `0.5`",
            ),
            (
                "tests.failed > 0 && tests.flaky > 0",
                18,
                "`&&` is not supported: use `and`",
            ),
            (
                "tests.failed > 1e5",
                17,
                "unexpected `e` after the number `1`: expected a plain number like `80` or `0.5`",
            ),
        ];
        for (text, column, message) in cases {
            let err = error_of(text);
            assert_eq!(
                (err.column, err.message.as_str()),
                (column, message),
                "condition `{text}`"
            );
        }
    }

    #[test]
    fn unknown_metrics_without_a_close_match_list_the_allowed_ones() {
        let err = error_of("cpu > 80");
        assert_eq!(err.column, 1);
        assert!(err
            .message
            .starts_with("unknown metric `cpu`: expected one of system.cpu_percent, "));
        assert!(err.message.contains("agent.<agent_name>.error_rate"));
        assert!(err.message.contains("agent.health_score"));
        assert!(err
            .message
            .ends_with("tests.new_failures, tests.quarantined"));
        assert_eq!(err.to_string(), format!("column 1: {}", err.message));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        let err = error_of("tests.failed > 0 and système.cpu > 1");
        assert_eq!(err.column, 22);
        let err = error_of(r#"workflow.runs{workflow="é"} > "#);
        assert_eq!(err.column, 31);
    }

    #[test]
    fn deep_or_long_input_is_rejected_without_overflowing() {
        let deep = format!(
            "{}tests.failed > 0{}",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        assert_eq!(
            error_of(&deep).message,
            "parentheses nested too deeply: expected at most 32 levels"
        );
        let nested = format!("{}tests.failed > 0{}", "(".repeat(32), ")".repeat(32));
        assert!(parse_condition(&nested).is_ok());
        let long = vec!["tests.failed > 0"; 100_000].join(" and ");
        assert_eq!(
            error_of(&long).message,
            "too many comparisons: expected at most 256"
        );
        let allowed = vec!["tests.failed > 0"; 256].join(" or ");
        assert!(parse_condition(&allowed).is_ok());
    }

    #[test]
    fn odd_inputs_never_panic() {
        let inputs = [
            "",
            "\t\n ",
            "(",
            ")",
            "{",
            "}",
            "\"",
            "\\",
            "-",
            "--5",
            ">",
            "!",
            "=",
            "&",
            "|",
            "日本語 > 1",
            "tests.failed > 日本",
            "🦀",
            "tests.failed > 99999999999999999999",
            "tests.failed > -99999999999999999999.99999999999999999999",
            "system.cpu_percent{",
            "workflow.runs{workflow",
            "workflow.runs{workflow=",
            "workflow.runs{workflow=\"",
            "workflow.runs{workflow=\"\\",
            "workflow.runs{,} > 1",
            "agent..error_rate > 1",
            "agent.a.b.error_rate > 1",
            "tests.failed > 1 or",
            "() > 1",
            "tests.failed >= = 1",
        ];
        for input in inputs {
            let _ = parse_condition(input);
        }
        let huge = format!("tests.failed > {}", "9".repeat(400));
        assert_eq!(
            error_of(&huge).message,
            format!(
                "number `{}` is too large: expected a finite number",
                "9".repeat(400)
            )
        );
        assert!(parse_condition("tests.failed > 99999999999999999999").is_ok());
    }
}
