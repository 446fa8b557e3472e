//! The core of the one expression language that step `if:` conditions
//! ([`super::if_condition`]) and alert conditions ([`super::condition`]) are written in: a
//! lexer that knows each token's column, the logical structure (`or` of `and` of `not` of
//! operands, parentheses nested to a limit) and its three-valued evaluation.
//!
//! A dialect supplies the rest through [`Syntax`] (which quotes, escapes, logical symbols
//! and number forms its lexer accepts, and the words of its lexical errors) and [`Grammar`]
//! (what an operand is: an alert's `metric op number`, a step's comparison of references,
//! literals and function calls, and the names each allows). Columns count characters, from 1.

use std::fmt;

/// How deeply parentheses may nest. The parser is recursive, so a limit keeps hostile
/// input such as a million `(` from overflowing the stack.
pub const MAX_NESTING: usize = 32;

/// How many operands one expression may join. Expressions are evaluated, printed and
/// dropped recursively, so this bounds the depth of the tree as well as its size.
pub const MAX_OPERANDS: usize = 256;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CompareOp {
    /// Applies the operator as `lhs <op> rhs`, with IEEE 754 semantics for NaN.
    pub fn apply(self, lhs: f64, rhs: f64) -> bool {
        match self {
            CompareOp::Gt => lhs > rhs,
            CompareOp::Ge => lhs >= rhs,
            CompareOp::Lt => lhs < rhs,
            CompareOp::Le => lhs <= rhs,
            CompareOp::Eq => lhs == rhs,
            CompareOp::Ne => lhs != rhs,
        }
    }

    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
        }
    }
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol())
    }
}

/// Why an expression was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ExprError {
    /// The 1-based character column in the text where the problem was found.
    pub column: usize,
    /// What is wrong and what was expected instead.
    pub message: String,
}

impl ExprError {
    /// An error at `column`.
    pub fn new(column: usize, message: impl Into<String>) -> Self {
        ExprError {
            column,
            message: message.into(),
        }
    }

    /// The message validation reports for a condition field with this error (the API's
    /// condition check answers the same words).
    pub fn validation_message(&self) -> String {
        format!(
            "invalid condition at column {}: {}",
            self.column, self.message
        )
    }
}

/// What a dialect's lexer accepts.
#[derive(Debug, Clone, Copy)]
pub struct Syntax {
    /// The characters that open and close a string.
    pub quotes: &'static [char],
    /// Whether `\"` and `\\` are read inside strings (any other escape is an error).
    pub escapes: bool,
    /// Whether `&&`, `||` and `!` are the logical operators; otherwise `&&`, `||` and a `!`
    /// without `=` are errors that point to the words.
    pub logic_symbols: bool,
    /// Whether `not` is a word of the language (`and` and `or` always are).
    pub not_word: bool,
    /// Whether `and` and `or` are recognised in any case (`AND`).
    pub words_any_case: bool,
    /// Whether `{`, `}`, `,` and a lone `=` are tokens (label selectors).
    pub selectors: bool,
    /// Whether numbers have the strict form (digits, optionally `.` and digits, nothing glued
    /// after, finite); otherwise any run of digits and dots that parses.
    pub strict_numbers: bool,
    /// The words of a lexical error, given the whole text.
    pub lex_message: fn(&LexError, &str) -> String,
}

/// A lexical problem, before a dialect words it.
#[derive(Debug, Clone, PartialEq)]
pub enum LexError {
    /// A character that starts no token.
    UnexpectedChar(char),
    /// A string without its closing quote (reported at the opening quote).
    UnclosedString,
    /// A backslash followed by something other than `"` or `\` (what follows, if anything).
    UnknownEscape(String),
    /// A number that does not parse (loose numbers).
    BadNumber(String),
    /// `1.` without digits after the point.
    MissingFractionDigits,
    /// `.5` without a digit before the point.
    MissingLeadingDigit,
    /// `80%`: the number as written.
    PercentSign(String),
    /// A letter, `_` or `.` right after a number: the character and the number.
    GluedToNumber(char, String),
    /// A number too large for an `f64`.
    NumberTooLarge(String),
    /// `!` without `=` where `!` is no operator.
    LoneBang,
    /// `&&` where the word is `and`.
    DoubleAmpersand,
    /// `||` where the word is `or`.
    DoublePipe,
}

/// One lexical token with the column where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// What it is.
    pub kind: TokenKind,
    /// The 1-based character column of its first character.
    pub column: usize,
    /// Its source text, for error messages.
    pub text: String,
}

/// The kinds of tokens.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    /// A name: letters, digits, `_`, `.` and `-`, not starting with a digit.
    Word(String),
    /// A number.
    Number(f64),
    /// A string, its escapes resolved.
    Str(String),
    /// A comparison operator.
    Compare(CompareOp),
    /// A lone `=` (label selectors).
    Assign,
    /// `and` (or `&&`).
    And,
    /// `or` (or `||`).
    Or,
    /// `not` (or `!`).
    Not,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `{`
    LBrace,
    /// `}`
    RBrace,
    /// `,`
    Comma,
    /// The end of the text.
    End,
}

/// Splits a text into tokens on demand, so errors are reported in text order.
#[derive(Debug, Clone)]
pub struct Lexer<'s> {
    chars: Vec<char>,
    pos: usize,
    syntax: &'s Syntax,
    text: &'s str,
}

impl<'s> Lexer<'s> {
    /// A lexer at the start of `text`.
    pub fn new(text: &'s str, syntax: &'s Syntax) -> Self {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            syntax,
            text,
        }
    }

    /// Lexes the whole text, for dialects that report a lexical error before any other.
    pub fn check_all(mut self) -> Result<(), ExprError> {
        while self.next_token()?.kind != TokenKind::End {}
        Ok(())
    }

    /// The next token (`End` at the end, repeatedly).
    pub fn next_token(&mut self) -> Result<Token, ExprError> {
        while self.peek_char(0).is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
        let start = self.pos;
        let column = self.column();
        let Some(c) = self.peek_char(0) else {
            return Ok(Token {
                kind: TokenKind::End,
                column,
                text: String::new(),
            });
        };
        let next = self.peek_char(1);
        let syntax = self.syntax;
        let (kind, length) = match c {
            _ if c.is_alphabetic() || c == '_' => (self.word(), 0),
            _ if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                (self.number(start)?, 0)
            }
            _ if syntax.quotes.contains(&c) => (self.string(c, column)?, 0),
            '(' => (TokenKind::LParen, 1),
            ')' => (TokenKind::RParen, 1),
            '{' if syntax.selectors => (TokenKind::LBrace, 1),
            '}' if syntax.selectors => (TokenKind::RBrace, 1),
            ',' if syntax.selectors => (TokenKind::Comma, 1),
            '&' if next == Some('&') && syntax.logic_symbols => (TokenKind::And, 2),
            '&' if next == Some('&') => return Err(self.error(column, &LexError::DoubleAmpersand)),
            '|' if next == Some('|') && syntax.logic_symbols => (TokenKind::Or, 2),
            '|' if next == Some('|') => return Err(self.error(column, &LexError::DoublePipe)),
            '>' | '<' | '=' | '!' if next == Some('=') => {
                let op = match c {
                    '>' => CompareOp::Ge,
                    '<' => CompareOp::Le,
                    '=' => CompareOp::Eq,
                    _ => CompareOp::Ne,
                };
                (TokenKind::Compare(op), 2)
            }
            '>' => (TokenKind::Compare(CompareOp::Gt), 1),
            '<' => (TokenKind::Compare(CompareOp::Lt), 1),
            '=' if syntax.selectors => (TokenKind::Assign, 1),
            '!' if syntax.logic_symbols => (TokenKind::Not, 1),
            '!' if syntax.selectors => return Err(self.error(column, &LexError::LoneBang)),
            '.' if syntax.strict_numbers && next.is_some_and(|n| n.is_ascii_digit()) => {
                return Err(self.error(column, &LexError::MissingLeadingDigit))
            }
            _ => return Err(self.error(column, &LexError::UnexpectedChar(c))),
        };
        self.pos += length;
        Ok(Token {
            kind,
            column,
            text: self.text_from(start),
        })
    }

    fn error(&self, column: usize, error: &LexError) -> ExprError {
        ExprError::new(column, (self.syntax.lex_message)(error, self.text))
    }

    fn peek_char(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn column(&self) -> usize {
        self.pos + 1
    }

    fn text_from(&self, start: usize) -> String {
        self.chars
            .get(start..self.pos)
            .unwrap_or_default()
            .iter()
            .collect()
    }

    /// Reads a name or a logical word. Dots and dashes are part of a name because
    /// references and metric names are dotted and agent and step names may contain dashes.
    fn word(&mut self) -> TokenKind {
        let start = self.pos;
        while self
            .peek_char(0)
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            self.pos += 1;
        }
        let word = self.text_from(start);
        let is = |keyword: &str| {
            if self.syntax.words_any_case {
                word.eq_ignore_ascii_case(keyword)
            } else {
                word == keyword
            }
        };
        if is("and") {
            TokenKind::And
        } else if is("or") {
            TokenKind::Or
        } else if self.syntax.not_word && is("not") {
            TokenKind::Not
        } else {
            TokenKind::Word(word)
        }
    }

    fn number(&mut self, start: usize) -> Result<TokenKind, ExprError> {
        if !self.syntax.strict_numbers {
            self.pos += 1;
            while self
                .peek_char(0)
                .is_some_and(|c| c.is_ascii_digit() || c == '.')
            {
                self.pos += 1;
            }
            let literal = self.text_from(start);
            return literal
                .parse()
                .map(TokenKind::Number)
                .map_err(|_| self.error(start + 1, &LexError::BadNumber(literal)));
        }
        if self.peek_char(0) == Some('-') {
            self.pos += 1;
        }
        self.skip_digits();
        if self.peek_char(0) == Some('.') {
            self.pos += 1;
            if !self.peek_char(0).is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.error(self.column(), &LexError::MissingFractionDigits));
            }
            self.skip_digits();
        }
        let text = self.text_from(start);
        match self.peek_char(0) {
            Some('%') => return Err(self.error(self.column(), &LexError::PercentSign(text))),
            Some(c) if c.is_alphanumeric() || c == '_' || c == '.' => {
                return Err(self.error(self.column(), &LexError::GluedToNumber(c, text)))
            }
            _ => {}
        }
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(TokenKind::Number(value)),
            _ => Err(self.error(start + 1, &LexError::NumberTooLarge(text))),
        }
    }

    fn skip_digits(&mut self) {
        while self.peek_char(0).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }

    /// Reads a string up to its closing `quote`, with `\"` and `\\` escapes where the
    /// syntax has them.
    fn string(&mut self, quote: char, column: usize) -> Result<TokenKind, ExprError> {
        self.pos += 1;
        let mut value = String::new();
        loop {
            let Some(c) = self.peek_char(0) else {
                return Err(self.error(column, &LexError::UnclosedString));
            };
            self.pos += 1;
            match c {
                _ if c == quote => return Ok(TokenKind::Str(value)),
                '\\' if self.syntax.escapes => match self.peek_char(0) {
                    Some(escaped @ ('"' | '\\')) => {
                        value.push(escaped);
                        self.pos += 1;
                    }
                    other => {
                        let shown = other.map(String::from).unwrap_or_default();
                        return Err(self.error(self.pos, &LexError::UnknownEscape(shown)));
                    }
                },
                _ => value.push(c),
            }
        }
    }
}

/// An expression: operands of the dialect's kind joined by the logical operators.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr<A> {
    /// One operand (an alert's comparison, a step's comparison or value).
    Atom(A),
    /// True when the operand is false.
    Not(Box<Expr<A>>),
    /// True when both sides are true.
    And(Box<Expr<A>>, Box<Expr<A>>),
    /// True when either side is true.
    Or(Box<Expr<A>>, Box<Expr<A>>),
}

impl<A> Expr<A> {
    /// Evaluates the expression with `atom` giving each operand's truth.
    ///
    /// An operand may be unknown (`None`); unknowns follow three-valued logic: `false and
    /// unknown` is `false` and `true or unknown` is `true`, so an unknown only hides the
    /// result when the result depends on it. Both sides are always evaluated, so an error
    /// in either is reported whatever the other side is.
    pub fn evaluate_with<E>(
        &self,
        atom: &mut dyn FnMut(&A) -> Result<Option<bool>, E>,
    ) -> Result<Option<bool>, E> {
        Ok(match self {
            Expr::Atom(operand) => atom(operand)?,
            Expr::Not(inner) => inner.evaluate_with(atom)?.map(|value| !value),
            Expr::And(left, right) => {
                match (left.evaluate_with(atom)?, right.evaluate_with(atom)?) {
                    (Some(false), _) | (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                }
            }
            Expr::Or(left, right) => {
                match (left.evaluate_with(atom)?, right.evaluate_with(atom)?) {
                    (Some(true), _) | (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                }
            }
        })
    }

    /// The operands, left to right.
    pub fn atoms(&self) -> Vec<&A> {
        let mut atoms = Vec::new();
        self.collect_atoms(&mut atoms);
        atoms
    }

    fn collect_atoms<'a>(&'a self, atoms: &mut Vec<&'a A>) {
        match self {
            Expr::Atom(atom) => atoms.push(atom),
            Expr::Not(inner) => inner.collect_atoms(atoms),
            Expr::And(left, right) | Expr::Or(left, right) => {
                left.collect_atoms(atoms);
                right.collect_atoms(atoms);
            }
        }
    }
}

/// Writes the canonical text, which parses back to an equal expression.
///
/// Parentheses are added only where the tree differs from what precedence (`not` over `and`
/// over `or`) and left associativity would produce, so `a or b and c` prints without any.
impl<A: fmt::Display> fmt::Display for Expr<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Atom(atom) => write!(f, "{atom}"),
            Expr::Not(inner) => {
                f.write_str("not ")?;
                write_operand(f, inner, matches!(**inner, Expr::And(..) | Expr::Or(..)))
            }
            Expr::And(left, right) => {
                write_operand(f, left, matches!(**left, Expr::Or(..)))?;
                f.write_str(" and ")?;
                write_operand(f, right, matches!(**right, Expr::And(..) | Expr::Or(..)))
            }
            Expr::Or(left, right) => {
                write_operand(f, left, false)?;
                f.write_str(" or ")?;
                write_operand(f, right, matches!(**right, Expr::Or(..)))
            }
        }
    }
}

fn write_operand<A: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    operand: &Expr<A>,
    parenthesize: bool,
) -> fmt::Result {
    if parenthesize {
        write!(f, "({operand})")
    } else {
        write!(f, "{operand}")
    }
}

/// What a dialect adds to the shared logical structure.
pub trait Grammar {
    /// The dialect's operand.
    type Atom;

    /// Parses what the logical operators join: a comparison, or a parenthesised expression
    /// through [`Parser::nested`].
    fn operand(&mut self, parser: &mut Parser<'_>) -> Result<Expr<Self::Atom>, ExprError>;

    /// The message for parentheses nested deeper than [`MAX_NESTING`].
    fn too_deep(&self) -> String {
        format!("parentheses nested too deeply: expected at most {MAX_NESTING} levels")
    }
}

/// A recursive-descent parser over the lexer: `or` of `and` of `not` of operands.
#[derive(Debug, Clone)]
pub struct Parser<'s> {
    lexer: Lexer<'s>,
    peeked: Option<Token>,
    depth: usize,
}

impl<'s> Parser<'s> {
    /// A parser at the start of `text`.
    pub fn new(text: &'s str, syntax: &'s Syntax) -> Self {
        Parser {
            lexer: Lexer::new(text, syntax),
            peeked: None,
            depth: 0,
        }
    }

    /// The next token, left in place.
    pub fn peek(&mut self) -> Result<&Token, ExprError> {
        let token = match self.peeked.take() {
            Some(token) => token,
            None => self.lexer.next_token()?,
        };
        Ok(self.peeked.insert(token))
    }

    /// The next token, consumed.
    pub fn advance(&mut self) -> Result<Token, ExprError> {
        match self.peeked.take() {
            Some(token) => Ok(token),
            None => self.lexer.next_token(),
        }
    }

    /// Parses `or`-joined terms: the whole expression, or the inside of parentheses.
    pub fn or<G: Grammar>(&mut self, grammar: &mut G) -> Result<Expr<G::Atom>, ExprError> {
        let mut left = self.and(grammar)?;
        while self.peek()?.kind == TokenKind::Or {
            self.advance()?;
            let right = self.and(grammar)?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and<G: Grammar>(&mut self, grammar: &mut G) -> Result<Expr<G::Atom>, ExprError> {
        let mut left = self.not(grammar)?;
        while self.peek()?.kind == TokenKind::And {
            self.advance()?;
            let right = self.not(grammar)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    /// Negations are counted in a loop, so a long run of `!` needs no stack.
    fn not<G: Grammar>(&mut self, grammar: &mut G) -> Result<Expr<G::Atom>, ExprError> {
        let mut negations = 0_usize;
        while self.peek()?.kind == TokenKind::Not {
            self.advance()?;
            negations += 1;
        }
        let mut operand = grammar.operand(self)?;
        // `not not not x` is `not x` and `not not not not x` is `not not x` (a truth value,
        // where `x` may be another value), so the tree stays shallow to drop and evaluate.
        let kept = if negations > 2 {
            2 - negations % 2
        } else {
            negations
        };
        for _ in 0..kept {
            operand = Expr::Not(Box::new(operand));
        }
        Ok(operand)
    }

    /// The expression inside parentheses whose `(` (`open`) has been read, one level
    /// deeper; the caller reads the `)` and words its absence.
    pub fn nested<G: Grammar>(
        &mut self,
        grammar: &mut G,
        open: &Token,
    ) -> Result<Expr<G::Atom>, ExprError> {
        if self.depth >= MAX_NESTING {
            return Err(ExprError::new(open.column, grammar.too_deep()));
        }
        self.depth += 1;
        let inner = self.or(grammar);
        self.depth -= 1;
        inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(error: &LexError, _text: &str) -> String {
        format!("{error:?}")
    }

    /// The `if:` dialect's choices.
    const LOOSE: Syntax = Syntax {
        quotes: &['\'', '"'],
        escapes: false,
        logic_symbols: true,
        not_word: true,
        words_any_case: false,
        selectors: false,
        strict_numbers: false,
        lex_message: messages,
    };

    /// The alert dialect's choices.
    const STRICT: Syntax = Syntax {
        quotes: &['"'],
        escapes: true,
        logic_symbols: false,
        not_word: false,
        words_any_case: true,
        selectors: true,
        strict_numbers: true,
        lex_message: messages,
    };

    /// Token kinds with their columns.
    type Tokens = Vec<(TokenKind, usize)>;

    fn tokens(text: &str, syntax: &Syntax) -> Result<Tokens, ExprError> {
        let mut lexer = Lexer::new(text, syntax);
        let mut found = Vec::new();
        loop {
            let token = lexer.next_token()?;
            if token.kind == TokenKind::End {
                return Ok(found);
            }
            found.push((token.kind, token.column));
        }
    }

    #[test]
    fn tokens_carry_their_columns() {
        use TokenKind::*;
        let word = |w: &str| Word(w.to_owned());
        let string = |s: &str| Str(s.to_owned());
        let cases: Vec<(&str, &Syntax, Tokens)> = vec![
            (
                "a.b-c >= -1.5",
                &LOOSE,
                vec![
                    (word("a.b-c"), 1),
                    (Compare(CompareOp::Ge), 7),
                    (Number(-1.5), 10),
                ],
            ),
            (
                "x&&!y||z",
                &LOOSE,
                vec![
                    (word("x"), 1),
                    (And, 2),
                    (Not, 4),
                    (word("y"), 5),
                    (Or, 6),
                    (word("z"), 8),
                ],
            ),
            (
                "and or not AND",
                &LOOSE,
                vec![(And, 1), (Or, 5), (Not, 8), (word("AND"), 12)],
            ),
            (
                "'a\"b' \"c\"",
                &LOOSE,
                vec![(string("a\"b"), 1), (string("c"), 7)],
            ),
            (
                "é == 1.",
                &LOOSE,
                vec![
                    (word("é"), 1),
                    (Compare(CompareOp::Eq), 3),
                    (Number(1.0), 6),
                ],
            ),
            (
                "AND Or not",
                &STRICT,
                vec![(And, 1), (Or, 5), (word("not"), 8)],
            ),
            (
                "m{k=\"a\\\"b\"}",
                &STRICT,
                vec![
                    (word("m"), 1),
                    (LBrace, 2),
                    (word("k"), 3),
                    (Assign, 4),
                    (string("a\"b"), 5),
                    (RBrace, 11),
                ],
            ),
            (
                "(x<1,)",
                &STRICT,
                vec![
                    (LParen, 1),
                    (word("x"), 2),
                    (Compare(CompareOp::Lt), 3),
                    (Number(1.0), 4),
                    (Comma, 5),
                    (RParen, 6),
                ],
            ),
            ("", &STRICT, vec![]),
        ];
        for (text, syntax, expected) in cases {
            assert_eq!(tokens(text, syntax), Ok(expected), "`{text}`");
        }
    }

    #[test]
    fn lexical_errors_carry_their_columns() {
        let cases: [(&str, &Syntax, usize, LexError); 14] = [
            ("a = 1", &LOOSE, 3, LexError::UnexpectedChar('=')),
            ("a {", &LOOSE, 3, LexError::UnexpectedChar('{')),
            ("x == 'open", &LOOSE, 6, LexError::UnclosedString),
            ("1.2.3", &LOOSE, 1, LexError::BadNumber("1.2.3".into())),
            ("x 'single'", &STRICT, 3, LexError::UnexpectedChar('\'')),
            ("\"a\\n\"", &STRICT, 3, LexError::UnknownEscape("n".into())),
            ("\"open", &STRICT, 1, LexError::UnclosedString),
            ("1.", &STRICT, 3, LexError::MissingFractionDigits),
            (" .5", &STRICT, 2, LexError::MissingLeadingDigit),
            ("80%", &STRICT, 3, LexError::PercentSign("80".into())),
            ("1e5", &STRICT, 2, LexError::GluedToNumber('e', "1".into())),
            ("a ! b", &STRICT, 3, LexError::LoneBang),
            ("a && b", &STRICT, 3, LexError::DoubleAmpersand),
            ("a || b", &STRICT, 3, LexError::DoublePipe),
        ];
        for (text, syntax, column, error) in cases {
            assert_eq!(
                tokens(text, syntax),
                Err(ExprError::new(column, format!("{error:?}"))),
                "`{text}`"
            );
        }
    }

    #[test]
    fn unknowns_follow_three_valued_logic_and_display_is_canonical() {
        let atom = |value: Option<bool>| Box::new(Expr::Atom(value));
        let eval = |expr: &Expr<Option<bool>>| {
            expr.evaluate_with(&mut |value: &Option<bool>| Ok::<_, ()>(*value))
        };
        assert_eq!(
            eval(&Expr::And(atom(Some(false)), atom(None))),
            Ok(Some(false))
        );
        assert_eq!(eval(&Expr::And(atom(Some(true)), atom(None))), Ok(None));
        assert_eq!(
            eval(&Expr::Or(atom(None), atom(Some(true)))),
            Ok(Some(true))
        );
        assert_eq!(eval(&Expr::Not(atom(None))), Ok(None));
        assert_eq!(eval(&Expr::Not(atom(Some(false)))), Ok(Some(true)));

        let name = |n: &str| Box::new(Expr::Atom(n.to_owned()));
        let cases = [
            (
                Expr::Not(Box::new(Expr::Or(name("a"), name("b")))),
                "not (a or b)",
            ),
            (
                Expr::And(Box::new(Expr::Not(name("a"))), name("b")),
                "not a and b",
            ),
            (
                Expr::And(name("a"), Box::new(Expr::Not(name("b")))),
                "a and not b",
            ),
            (
                Expr::Or(name("a"), Box::new(Expr::And(name("b"), name("c")))),
                "a or b and c",
            ),
            (
                Expr::And(Box::new(Expr::Or(name("a"), name("b"))), name("c")),
                "(a or b) and c",
            ),
        ];
        for (expr, text) in cases {
            assert_eq!(expr.to_string(), text);
        }
    }
}
