//! The step `if:` dialect of the expression language ([`super::expr`]): `success()`,
//! `failure()`, `always()`, `cancelled()`, comparisons (`== != < <= > >=`) of references
//! (`params.*`, `steps.NAME.status`, `steps.NAME.outputs.*`, `run.*`) and literals (strings
//! in `'` or `"`, numbers, `true`, `false`, `null`), `&&`/`and`, `||`/`or`, `!`/`not`,
//! parentheses.
//!
//! The language knows the names; what they are worth during a run comes from an
//! [`IfContext`] the engine supplies. Values compare loosely, as a workflow author expects
//! of text read from step outputs: `'3' == 3`, and `<` compares numbers or numeric text.

use serde_json::Value;

use super::expr::{
    CompareOp, Expr, ExprError, Grammar, LexError, Lexer, Parser, Syntax, TokenKind, MAX_OPERANDS,
};

/// The functions a condition may call, as written.
pub const FUNCTIONS: [&str; 4] = ["success", "failure", "always", "cancelled"];

/// The roots a reference may start with.
pub const REFERENCE_ROOTS: [&str; 3] = ["params", "steps", "run"];

/// What the `if:` dialect's lexer accepts: strings in either quote without escapes, `&&`,
/// `||`, `!` and the lowercase words `and`, `or`, `not`, numbers as runs of digits and dots.
const SYNTAX: Syntax = Syntax {
    quotes: &['\'', '"'],
    escapes: false,
    logic_symbols: true,
    not_word: true,
    words_any_case: false,
    selectors: false,
    strict_numbers: false,
    lex_message,
};

/// A function of the run's state a condition may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Function {
    /// `success()`: every step this one depends on ended well and the run goes on.
    Success,
    /// `failure()`: a step this one depends on failed and the run goes on.
    Failure,
    /// `always()`: true.
    Always,
    /// `cancelled()`: the run is being cancelled.
    Cancelled,
}

/// What a condition's names are worth during a run.
pub trait IfContext {
    /// The value of a dotted reference; `null` when it is not set.
    fn reference(&self, name: &str) -> Value;
    /// The value of a function.
    fn call(&self, function: Function) -> bool;
}

/// How bare names are taken when parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// A bare name must be a reference (`params.*`, `steps.*`, `run.*`): validation, where
    /// `if: always` would otherwise read as an unset reference, false, and skip the step.
    Checked,
    /// Any bare name is a reference; an unknown one is `null` (a run).
    Any,
}

/// A parsed `if:` condition.
#[derive(Debug, Clone, PartialEq)]
pub struct IfCondition(Expr<Term>);

/// A value, or two compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    /// The value, or the left side of the comparison.
    pub left: Operand,
    /// The comparison and its right side, if any.
    pub compare: Option<(CompareOp, Operand)>,
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A string, number, `true`, `false` or `null`.
    Literal(Value),
    /// A dotted reference.
    Reference(String),
    /// A function call.
    Call(Function),
    /// A parenthesised condition: its value when it is one value, else its truth.
    Group(Box<Expr<Term>>),
}

/// Parses a condition. Lexical errors are reported before any other.
///
/// # Errors
///
/// The message of the first problem (these messages carry no column).
pub fn parse(text: &str, names: Names) -> Result<IfCondition, String> {
    Lexer::new(text, &SYNTAX)
        .check_all()
        .map_err(|e| e.message)?;
    let mut parser = Parser::new(text, &SYNTAX);
    let expr = parser
        .or(&mut IfGrammar { names, terms: 0 })
        .map_err(|e| e.message)?;
    let token = parser.advance().map_err(|e| e.message)?;
    if token.kind != TokenKind::End {
        return Err(format!(
            "unexpected `{}` in condition `{text}`",
            shown(&token.kind)
        ));
    }
    Ok(IfCondition(expr))
}

/// Checks a condition's syntax and names without evaluating references.
///
/// # Errors
///
/// The message of the first problem.
pub fn check(text: &str) -> Result<(), String> {
    parse(text, Names::Checked).map(|_| ())
}

impl IfCondition {
    /// Whether the condition holds in `context`.
    ///
    /// # Errors
    ///
    /// `<`, `<=`, `>` or `>=` between values that are not numbers.
    pub fn evaluate(&self, context: &dyn IfContext) -> Result<bool, String> {
        truth(&self.0, context)
    }
}

fn truth(expr: &Expr<Term>, context: &dyn IfContext) -> Result<bool, String> {
    let value = expr.evaluate_with(&mut |term: &Term| {
        term_value(term, context).map(|value| Some(truthy(&value)))
    })?;
    Ok(value.unwrap_or(false))
}

fn term_value(term: &Term, context: &dyn IfContext) -> Result<Value, String> {
    let left = operand_value(&term.left, context)?;
    let Some((op, right)) = &term.compare else {
        return Ok(left);
    };
    let right = operand_value(right, context)?;
    let result = match op {
        CompareOp::Eq => loose_eq(&left, &right),
        CompareOp::Ne => !loose_eq(&left, &right),
        _ => {
            let (Some(a), Some(b)) = (number(&left), number(&right)) else {
                return Err(format!("`{op}` compares numbers, got {left} and {right}"));
            };
            op.apply(a, b)
        }
    };
    Ok(Value::Bool(result))
}

fn operand_value(operand: &Operand, context: &dyn IfContext) -> Result<Value, String> {
    Ok(match operand {
        Operand::Literal(value) => value.clone(),
        Operand::Reference(name) => context.reference(name),
        Operand::Call(function) => Value::Bool(context.call(*function)),
        Operand::Group(inner) => match &**inner {
            Expr::Atom(term) => term_value(term, context)?,
            other => Value::Bool(truth(other, context)?),
        },
    })
}

/// The `if:` dialect's words for a lexical error.
fn lex_message(error: &LexError, text: &str) -> String {
    match error {
        LexError::UnclosedString => format!("unclosed string in condition `{text}`"),
        LexError::BadNumber(literal) | LexError::NumberTooLarge(literal) => {
            format!("bad number `{literal}` in condition `{text}`")
        }
        LexError::UnexpectedChar(c) => format!("unexpected `{c}` in condition `{text}`"),
        // Not produced by this syntax; worded the same way in case it ever is.
        other => format!("unexpected input ({other:?}) in condition `{text}`"),
    }
}

/// A token as the messages show it: the words `and`, `or`, `not` as their symbols, strings
/// in single quotes, numbers as read.
fn shown(kind: &TokenKind) -> String {
    match kind {
        TokenKind::Word(word) => word.clone(),
        TokenKind::Str(text) => format!("'{text}'"),
        TokenKind::Number(n) => n.to_string(),
        TokenKind::Compare(op) => op.symbol().to_owned(),
        TokenKind::And => "&&".to_owned(),
        TokenKind::Or => "||".to_owned(),
        TokenKind::Not => "!".to_owned(),
        TokenKind::LParen => "(".to_owned(),
        TokenKind::RParen => ")".to_owned(),
        TokenKind::LBrace => "{".to_owned(),
        TokenKind::RBrace => "}".to_owned(),
        TokenKind::Comma => ",".to_owned(),
        TokenKind::Assign => "=".to_owned(),
        TokenKind::End => String::new(),
    }
}

/// The `if:` dialect's operands: a value, or two values compared.
struct IfGrammar {
    names: Names,
    /// The terms read so far, against [`MAX_OPERANDS`].
    terms: usize,
}

impl Grammar for IfGrammar {
    type Atom = Term;

    fn operand(&mut self, parser: &mut Parser<'_>) -> Result<Expr<Term>, ExprError> {
        self.terms += 1;
        if self.terms > MAX_OPERANDS {
            let column = parser.peek()?.column;
            return Err(ExprError::new(
                column,
                format!("too many terms in condition: expected at most {MAX_OPERANDS}"),
            ));
        }
        let left = self.primary(parser)?;
        let compare = match parser.peek()?.kind {
            TokenKind::Compare(op) => {
                parser.advance()?;
                Some((op, self.primary(parser)?))
            }
            _ => None,
        };
        Ok(Expr::Atom(Term { left, compare }))
    }
}

impl IfGrammar {
    fn primary(&mut self, parser: &mut Parser<'_>) -> Result<Operand, ExprError> {
        let token = parser.advance()?;
        let fail = |message: String| Err(ExprError::new(token.column, message));
        match &token.kind {
            TokenKind::End => fail("condition ends too early".to_owned()),
            TokenKind::Str(text) => Ok(Operand::Literal(Value::String(text.clone()))),
            TokenKind::Number(n) => Ok(Operand::Literal(
                serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
            )),
            TokenKind::LParen => {
                let inner = parser.nested(self, &token)?;
                if parser.peek()?.kind != TokenKind::RParen {
                    return fail("missing `)` in condition".to_owned());
                }
                parser.advance()?;
                Ok(Operand::Group(Box::new(inner)))
            }
            TokenKind::Word(word) => self.word(parser, word, token.column),
            other => fail(format!("unexpected `{}` in condition", shown(other))),
        }
    }

    fn word(
        &mut self,
        parser: &mut Parser<'_>,
        word: &str,
        column: usize,
    ) -> Result<Operand, ExprError> {
        if parser.peek()?.kind == TokenKind::LParen {
            parser.advance()?;
            if parser.peek()?.kind != TokenKind::RParen {
                return Err(ExprError::new(
                    column,
                    format!("`{word}()` takes no arguments"),
                ));
            }
            parser.advance()?;
            return match word {
                "success" => Ok(Operand::Call(Function::Success)),
                "failure" => Ok(Operand::Call(Function::Failure)),
                "always" => Ok(Operand::Call(Function::Always)),
                "cancelled" => Ok(Operand::Call(Function::Cancelled)),
                other => Err(ExprError::new(
                    column,
                    format!(
                        "unknown function `{other}()`: expected success(), failure(), always() or cancelled()"
                    ),
                )),
            };
        }
        match word {
            "true" => return Ok(Operand::Literal(Value::Bool(true))),
            "false" => return Ok(Operand::Literal(Value::Bool(false))),
            "null" => return Ok(Operand::Literal(Value::Null)),
            _ => {}
        }
        let root = word.split('.').next().unwrap_or_default();
        if self.names == Names::Checked && !REFERENCE_ROOTS.contains(&root) {
            let hint = crate::util::did_you_mean(word, FUNCTIONS)
                .map(|f| format!("; did you mean `{f}()`?"))
                .unwrap_or_default();
            return Err(ExprError::new(
                column,
                format!(
                    "unknown name `{word}` (expected a function: success(), failure(), always(), cancelled(); or a reference: params.*, steps.NAME.status, steps.NAME.outputs.*, run.*){hint}"
                ),
            ));
        }
        Ok(Operand::Reference(word.to_owned()))
    }
}

/// Whether a value counts as true: not `null`, `false`, `0`, `""`, `[]` or `{}`.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn loose_eq(a: &Value, b: &Value) -> bool {
    match (number(a), number(b)) {
        (Some(x), Some(y)) if !(a.is_string() && b.is_string()) => x == y,
        _ => match (a, b) {
            (Value::String(x), Value::String(y)) => x == y,
            (Value::String(x), other) | (other, Value::String(x)) => {
                *x == other.to_string().trim_matches('"')
            }
            _ => a == b,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A run where `build` succeeded with outputs, `params.environment` is `production`,
    /// and the upstream steps failed.
    struct Failed;

    impl IfContext for Failed {
        fn reference(&self, name: &str) -> Value {
            match name {
                "params.environment" => json!("production"),
                "params.tags" => json!(["a", "b"]),
                "params.zero" => json!(0),
                "steps.build.status" => json!("succeeded"),
                "steps.build.outputs.count" => json!("3"),
                "steps.build.outputs.version" => json!("1.2.3"),
                _ => Value::Null,
            }
        }

        fn call(&self, function: Function) -> bool {
            matches!(function, Function::Failure | Function::Always)
        }
    }

    #[test]
    fn valid_conditions_evaluate() {
        let cases: [(&str, bool); 24] = [
            ("always()", true),
            ("success()", false),
            ("failure()", true),
            ("cancelled()", false),
            ("!success()", true),
            ("not not failure()", true),
            ("steps.build.status == 'succeeded'", true),
            ("steps.build.status != \"succeeded\"", false),
            ("steps.build.outputs.count >= 3", true),
            ("steps.build.outputs.count == 3", true),
            ("steps.build.outputs.count < 2.5", false),
            ("steps.build.outputs.version != ''", true),
            ("params.missing == null", true),
            ("params.missing", false),
            ("params.zero", false),
            ("params.tags", true),
            ("success() || params.environment == 'production'", true),
            ("success() or failure() and false", false),
            ("(success() or failure()) and true", true),
            ("not (params.environment == 'staging') && always()", true),
            ("(params.environment) == 'production'", true),
            ("(params.zero || true) == true", true),
            ("-1 < 0", true),
            ("  always( )  ", true),
        ];
        for (text, expected) in cases {
            let parsed = parse(text, Names::Checked).map_err(|e| format!("`{text}`: {e}"));
            assert_eq!(
                parsed.and_then(|c| c.evaluate(&Failed)),
                Ok(expected),
                "`{text}`"
            );
        }
    }

    #[test]
    fn invalid_conditions_are_reported_in_the_engines_words() {
        let unknown = "(expected a function: success(), failure(), always(), cancelled(); or a reference: params.*, steps.NAME.status, steps.NAME.outputs.*, run.*)";
        let cases: [(&str, String); 17] = [
            ("always", format!("unknown name `always` {unknown}; did you mean `always()`?")),
            ("env.X == 1", format!("unknown name `env.X` {unknown}")),
            ("AND", format!("unknown name `AND` {unknown}")),
            ("success() &&", "condition ends too early".into()),
            ("", "condition ends too early".into()),
            ("success() success()", "unexpected `success` in condition `success() success()`".into()),
            ("always() and 'x' 'y'", "unexpected `'y'` in condition `always() and 'x' 'y'`".into()),
            ("always() )", "unexpected `)` in condition `always() )`".into()),
            ("always() not", "unexpected `!` in condition `always() not`".into()),
            ("== 1", "unexpected `==` in condition".into()),
            ("(always()", "missing `)` in condition".into()),
            ("success(1)", "`success()` takes no arguments".into()),
            ("bogus()", "unknown function `bogus()`: expected success(), failure(), always() or cancelled()".into()),
            ("params.x == 'open", "unclosed string in condition `params.x == 'open`".into()),
            ("params.x == 1.2.3", "bad number `1.2.3` in condition `params.x == 1.2.3`".into()),
            ("params.x = 1", "unexpected `=` in condition `params.x = 1`".into()),
            // A lexical error is reported before an earlier parse error.
            ("== {", "unexpected `{` in condition `== {`".into()),
        ];
        for (text, message) in cases {
            assert_eq!(check(text), Err(message), "`{text}`");
        }
        let deep = format!("{}always(){}", "(".repeat(40), ")".repeat(40));
        assert_eq!(
            check(&deep),
            Err("parentheses nested too deeply: expected at most 32 levels".to_owned())
        );
        assert_eq!(check(&format!("{}always()", "!".repeat(100_000))), Ok(()));
        let long = vec!["always()"; 100_000].join(" && ");
        assert_eq!(
            check(&long),
            Err("too many terms in condition: expected at most 256".to_owned())
        );
        assert_eq!(check(&vec!["always()"; 256].join(" || ")), Ok(()));
    }

    #[test]
    fn run_time_parsing_takes_any_name_as_a_reference_and_checks_number_comparisons() {
        let parsed = parse("env.X", Names::Any).map(|c| c.evaluate(&Failed));
        assert_eq!(parsed, Ok(Ok(false)));
        let compared = parse("params.environment > 1", Names::Any).map(|c| c.evaluate(&Failed));
        assert_eq!(
            compared,
            Ok(Err(
                "`>` compares numbers, got \"production\" and 1.0".to_owned()
            ))
        );
    }
}
