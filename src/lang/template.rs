//! The one `{{ reference }}` template language: step parameters and argv elements, trigger
//! parameters filled from a webhook delivery, alert annotations.
//!
//! A text is scanned once into [`Piece`]s; a [`Context`] says what a reference names; the
//! [`Mode`] says what a reference to nothing and an unclosed `{{` become, which is where the
//! three users differ: steps are strict (an error the step reports), trigger parameters are
//! lenient (the parameter is left out, or reads as empty inside text: deliveries of one
//! trigger differ by event), and alert annotations keep what they cannot fill as written.
//!
//! A string that is exactly one reference becomes the referenced value itself (an array
//! stays an array, a number a number); references inside longer text are replaced by their
//! text. A substituted value is data: it is never scanned again.

use serde_json::Value;

/// A part of a template text, in text order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text outside `{{ }}`, as written.
    Text(&'a str),
    /// A closed `{{ ... }}`.
    Reference {
        /// What is between the braces, trimmed.
        reference: &'a str,
        /// The whole `{{ ... }}` as written.
        written: &'a str,
    },
    /// A `{{` with no `}}` after it: the rest of the text from the `{{` on. Always last.
    Unclosed(&'a str),
}

/// The pieces of `text`: text, references, and at most one unclosed `{{` at the end.
pub fn pieces(text: &str) -> Pieces<'_> {
    Pieces { rest: text }
}

/// The iterator [`pieces`] returns.
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = self.rest;
        match rest.find("{{") {
            None => {
                self.rest = "";
                Some(Piece::Text(rest))
            }
            Some(0) => {
                let after = &rest[2..];
                let Some(end) = after.find("}}") else {
                    self.rest = "";
                    return Some(Piece::Unclosed(rest));
                };
                self.rest = &after[end + 2..];
                Some(Piece::Reference {
                    reference: after[..end].trim(),
                    written: &rest[..end + 4],
                })
            }
            Some(start) => {
                self.rest = &rest[start..];
                Some(Piece::Text(&rest[..start]))
            }
        }
    }
}

/// The trimmed references of the closed `{{ ... }}` in `text`, in order; scanning stops at
/// an unclosed `{{`.
pub fn references(text: &str) -> Vec<&str> {
    pieces(text)
        .filter_map(|piece| match piece {
            Piece::Reference { reference, .. } => Some(reference),
            _ => None,
        })
        .collect()
}

/// The references of `text`, or the error for an unclosed `{{` in it.
pub fn closed_references(text: &str) -> Result<Vec<&str>, String> {
    pieces(text)
        .filter_map(|piece| match piece {
            Piece::Reference { reference, .. } => Some(Ok(reference)),
            Piece::Unclosed(_) => Some(Err(unclosed(text))),
            Piece::Text(_) => None,
        })
        .collect()
}

/// The reference when `text` (trimmed) is exactly one `{{ reference }}`.
pub fn whole_reference(text: &str) -> Option<&str> {
    text.trim()
        .strip_prefix("{{")
        .and_then(|inner| inner.strip_suffix("}}"))
        .filter(|inner| !inner.contains("{{") && !inner.contains("}}"))
        .map(str::trim)
}

/// What a template's references name.
pub trait Context {
    /// The value `reference` names; `Ok(None)` when it names nothing here, an error when it
    /// can never name anything (an unknown root, a step that has not run).
    fn resolve(&self, reference: &str) -> Result<Option<Value>, String>;
}

impl<F> Context for F
where
    F: Fn(&str) -> Result<Option<Value>, String>,
{
    fn resolve(&self, reference: &str) -> Result<Option<Value>, String> {
        self(reference)
    }
}

/// What a reference to nothing and an unclosed `{{` become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Both are errors (steps: a template that cannot be filled fails the step).
    Strict,
    /// A reference to nothing leaves a whole-reference value out and reads as empty inside
    /// text; an unclosed `{{` is an error (trigger parameters).
    Lenient,
    /// Both stay as written (alert annotations).
    Verbatim,
}

/// Fills the templates in every string inside `value` (arrays and objects too). `None` when
/// `value` is one lenient reference to nothing; inside an array or object such a value
/// becomes `null`.
pub fn render_value(
    value: &Value,
    context: &dyn Context,
    mode: Mode,
) -> Result<Option<Value>, String> {
    Ok(match value {
        Value::String(text) => render_string(text, context, mode)?,
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|item| Ok(render_value(item, context, mode)?.unwrap_or(Value::Null)))
                .collect::<Result<_, String>>()?,
        )),
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .map(|(key, item)| {
                    Ok((
                        key.clone(),
                        render_value(item, context, mode)?.unwrap_or(Value::Null),
                    ))
                })
                .collect::<Result<_, String>>()?,
        )),
        other => Some(other.clone()),
    })
}

/// Fills the templates of one string: a string that is exactly one reference becomes the
/// value itself, any other string stays a string.
pub fn render_string(
    text: &str,
    context: &dyn Context,
    mode: Mode,
) -> Result<Option<Value>, String> {
    if !text.contains("{{") {
        return Ok(Some(Value::String(text.to_owned())));
    }
    if mode != Mode::Verbatim {
        if let Some(reference) = whole_reference(text) {
            return resolve(context, reference, mode);
        }
    }
    render_text(text, context, mode).map(|text| Some(Value::String(text)))
}

/// Fills the templates of one string, always as text.
pub fn render_text(text: &str, context: &dyn Context, mode: Mode) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for piece in pieces(text) {
        match piece {
            Piece::Text(part) => out.push_str(part),
            Piece::Reference { reference, written } => match resolve(context, reference, mode)? {
                Some(Value::String(value)) => out.push_str(&value),
                Some(value) => out.push_str(&value.to_string()),
                None if mode == Mode::Verbatim => out.push_str(written),
                None => {}
            },
            Piece::Unclosed(rest) if mode == Mode::Verbatim => out.push_str(rest),
            Piece::Unclosed(_) => return Err(unclosed(text)),
        }
    }
    Ok(out)
}

/// `"; did you mean `x`?"` for a reference root close to one of `roots`, else empty: the
/// hint strict contexts append to an unknown root.
pub fn root_hint<'a>(root: &str, roots: impl IntoIterator<Item = &'a str>) -> String {
    crate::util::did_you_mean(root, roots)
        .map(|found| format!("; did you mean `{found}`?"))
        .unwrap_or_default()
}

fn resolve(context: &dyn Context, reference: &str, mode: Mode) -> Result<Option<Value>, String> {
    match context.resolve(reference)? {
        None if mode == Mode::Strict => Err(format!("`{reference}` is not set")),
        found => Ok(found),
    }
}

fn unclosed(text: &str) -> String {
    format!("unclosed `{{{{` in `{text}`")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Knows `a` (text), `n` (a number), `list` (an array), `gone` (nothing) and fails on
    /// anything else, as a strict context does.
    fn context(reference: &str) -> Result<Option<Value>, String> {
        match reference {
            "a" => Ok(Some(json!("A"))),
            "n" => Ok(Some(json!(7))),
            "list" => Ok(Some(json!(["x", 1]))),
            "gone" => Ok(None),
            other => Err(format!("unknown `{other}`")),
        }
    }

    #[test]
    fn the_scanner_splits_text_references_and_an_unclosed_rest() {
        use Piece::{Reference, Text, Unclosed};
        let r = |reference, written| Reference { reference, written };
        let cases: Vec<(&str, Vec<Piece>)> = vec![
            ("", vec![]),
            ("plain", vec![Text("plain")]),
            ("{{a}}", vec![r("a", "{{a}}")]),
            ("{{  a.b  }}", vec![r("a.b", "{{  a.b  }}")]),
            (
                "x {{ a }} y {{b}}",
                vec![Text("x "), r("a", "{{ a }}"), Text(" y "), r("b", "{{b}}")],
            ),
            ("{{ }}", vec![r("", "{{ }}")]),
            ("a {{ b", vec![Text("a "), Unclosed("{{ b")]),
            (
                "{{a}} {{ b {{c}}",
                vec![r("a", "{{a}}"), Text(" "), r("b {{c", "{{ b {{c}}")],
            ),
            ("}} {", vec![Text("}} {")]),
            ("{{{a}}}", vec![r("{a", "{{{a}}"), Text("}")]),
            ("é{{ ü }}ß", vec![Text("é"), r("ü", "{{ ü }}"), Text("ß")]),
        ];
        for (text, expected) in cases {
            assert_eq!(pieces(text).collect::<Vec<_>>(), expected, "`{text}`");
        }
    }

    #[test]
    fn whole_references_and_reference_lists() {
        let cases: [(&str, Option<&str>); 6] = [
            ("{{ a }}", Some("a")),
            ("  {{a.b}} ", Some("a.b")),
            ("x{{ a }}", None),
            ("{{ a }}{{ b }}", None),
            ("{{ a", None),
            ("a", None),
        ];
        for (text, expected) in cases {
            assert_eq!(whole_reference(text), expected, "`{text}`");
        }
        assert_eq!(references("{{ a }} and {{b}} {{ c"), ["a", "b"]);
        assert_eq!(closed_references("{{ a }} {{b}}"), Ok(vec!["a", "b"]));
        assert_eq!(
            closed_references("{{ a }} {{ c"),
            Err("unclosed `{{` in `{{ a }} {{ c`".to_owned())
        );
    }

    #[test]
    fn each_mode_renders_as_its_users_expect() {
        use Mode::{Lenient, Strict, Verbatim};
        type Rendered = Result<Option<Value>, &'static str>;
        let cases: [(&str, Mode, Rendered); 17] = [
            ("{{ n }}", Strict, Ok(Some(json!(7)))),
            (" {{list}} ", Strict, Ok(Some(json!(["x", 1])))),
            ("n={{ n }} {{a}}", Strict, Ok(Some(json!("n=7 A")))),
            ("{{ list }}!", Strict, Ok(Some(json!("[\"x\",1]!")))),
            ("{{ gone }}", Strict, Err("`gone` is not set")),
            ("x {{ gone }}", Strict, Err("`gone` is not set")),
            ("{{ what }}", Strict, Err("unknown `what`")),
            (
                "{{ a }} {{ b",
                Strict,
                Err("unclosed `{{` in `{{ a }} {{ b`"),
            ),
            ("{{ what }} {{ b", Strict, Err("unknown `what`")),
            ("{{ gone }}", Lenient, Ok(None)),
            ("[{{ gone }}]", Lenient, Ok(Some(json!("[]")))),
            ("{{ n }}", Lenient, Ok(Some(json!(7)))),
            ("{{ a", Lenient, Err("unclosed `{{` in `{{ a`")),
            ("{{ n }}", Verbatim, Ok(Some(json!("7")))),
            (
                "{{ gone }} {{a}}",
                Verbatim,
                Ok(Some(json!("{{ gone }} A"))),
            ),
            ("{{a}} {{ gone", Verbatim, Ok(Some(json!("A {{ gone")))),
            ("no braces", Strict, Ok(Some(json!("no braces")))),
        ];
        for (text, mode, expected) in cases {
            assert_eq!(
                render_string(text, &context, mode),
                expected.map_err(str::to_owned),
                "`{text}` in {mode:?}"
            );
        }
    }

    #[test]
    fn values_are_walked_and_never_scanned_twice() {
        let hostile = |_: &str| Ok(Some(json!("{{ a }}")));
        assert_eq!(
            render_value(
                &json!(["{{ x }}", {"k": "v {{ x }}"}]),
                &hostile,
                Mode::Strict
            ),
            Ok(Some(json!(["{{ a }}", {"k": "v {{ a }}"}])))
        );
        assert_eq!(
            render_value(
                &json!({"a": "{{ gone }}", "b": [1, "{{ n }}"]}),
                &context,
                Mode::Lenient
            ),
            Ok(Some(json!({"a": null, "b": [1, 7]})))
        );
        assert_eq!(
            root_hint("parms", ["params", "steps"]),
            "; did you mean `params`?"
        );
        assert_eq!(root_hint("zzz", ["params", "steps"]), "");
    }
}
