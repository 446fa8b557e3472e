//! Text to values with source locations: YAML (multi-document, through serde-saphyr with
//! input budgets) and JSON (strict syntax through serde_json, `//` and `/* */` comments
//! allowed as in tsconfig). Every node keeps the line and column it came from, so a JSON
//! pointer produced by validation can be turned back into `file:line:col`.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::options::AliasLimits;
use serde_saphyr::{Budget, Options, Spanned};

/// Deepest nesting accepted in a manifest; real manifests stay far below it.
pub const MAX_DEPTH: usize = 64;
/// The most alias uses (`*name`) in one YAML file.
const MAX_ALIASES: usize = 1_000;
/// The most anchors (`&name`) in one YAML file.
const MAX_ANCHORS: usize = 1_000;
/// The most nodes in one YAML file, counting each alias expansion.
const MAX_NODES: usize = 250_000;
/// The most documents in one YAML file.
const MAX_DOCUMENTS: usize = 10_000;
/// The most events alias uses may replay per byte of a YAML file (at least
/// [`MIN_REPLAYED_EVENTS`]): an alias bomb is refused after a few times its own size in
/// nodes rather than after [`MAX_NODES`]. A 378-byte bomb cost 0.5 s and 90 MB to refuse at
/// 250,000 nodes; real files, whose aliases repeat small blocks (at most [`MAX_ALIASES`]
/// times), stay far below this.
const REPLAYED_EVENTS_PER_BYTE: usize = 10;
/// The alias replay allowance of a small YAML file.
const MIN_REPLAYED_EVENTS: usize = 10_000;

/// A parsed document: its value and where each of its nodes sits in the file.
#[derive(Debug, Clone)]
pub struct ParsedDocument {
    /// The document as JSON.
    pub value: Value,
    /// Locations of the document's nodes.
    pub locations: LocatedNode,
}

/// Where a node sits in its file, and where its children sit.
#[derive(Debug, Clone, Default)]
pub struct LocatedNode {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
    /// Children of a sequence or mapping.
    pub children: LocatedChildren,
}

/// The children of a located node.
#[derive(Debug, Clone, Default)]
pub enum LocatedChildren {
    /// A scalar.
    #[default]
    None,
    /// Sequence items in order.
    Seq(Vec<LocatedNode>),
    /// Mapping entries in order: key, key line, key column, value.
    Map(Vec<(String, u32, u32, LocatedNode)>),
}

/// A syntax error: message and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line, 0 when unknown.
    pub line: u32,
    /// 1-based column, 0 when unknown.
    pub column: u32,
    /// What the parser expected.
    pub message: String,
}

impl LocatedNode {
    /// The location of the node a JSON pointer names, falling back to the deepest ancestor
    /// that exists (a missing field is reported at the mapping that lacks it). With
    /// `key_of_last`, a mapping entry is located at its key rather than its value, which is
    /// where an unexpected field should point.
    pub fn locate(&self, pointer: &str, key_of_last: bool) -> (u32, u32) {
        let mut node = self;
        let segments: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|s| s.replace("~1", "/").replace("~0", "~"))
            .collect();
        for (index, segment) in segments.iter().enumerate() {
            let last = index + 1 == segments.len();
            match &node.children {
                LocatedChildren::Seq(items) => match segment.parse::<usize>() {
                    Ok(i) if i < items.len() => node = &items[i],
                    _ => break,
                },
                LocatedChildren::Map(entries) => {
                    match entries.iter().find(|(key, ..)| key == segment) {
                        Some((_, line, column, _)) if last && key_of_last => {
                            return (*line, *column)
                        }
                        Some((.., child)) => node = child,
                        None => break,
                    }
                }
                LocatedChildren::None => break,
            }
        }
        (node.line, node.column)
    }

    /// The located node a JSON pointer names, if it exists.
    pub fn child(&self, pointer: &str) -> Option<&LocatedNode> {
        let mut node = self;
        for segment in pointer.split('/').skip(1) {
            let segment = segment.replace("~1", "/").replace("~0", "~");
            node = match &node.children {
                LocatedChildren::Seq(items) => items.get(segment.parse::<usize>().ok()?)?,
                LocatedChildren::Map(entries) => {
                    &entries.iter().find(|(key, ..)| *key == segment)?.3
                }
                LocatedChildren::None => return None,
            };
        }
        Some(node)
    }

    /// Renames a top-level mapping key (used when a field alias is normalised).
    pub fn rename_key(&mut self, from: &str, to: &str) {
        if let LocatedChildren::Map(entries) = &mut self.children {
            for entry in entries.iter_mut().filter(|(key, ..)| key == from) {
                entry.0 = to.to_owned();
            }
        }
    }
}

/// Parses YAML text holding one or more documents. Empty documents are skipped.
pub fn parse_yaml(text: &str) -> Result<Vec<ParsedDocument>, SyntaxError> {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = MAX_ALIASES;
    budget.max_anchors = MAX_ANCHORS;
    budget.max_nodes = MAX_NODES;
    budget.max_documents = MAX_DOCUMENTS;
    let mut options = Options::default();
    options.budget = Some(budget);
    let mut alias_limits = AliasLimits::default();
    alias_limits.max_total_replayed_events = replay_limit(text);
    options.alias_limits = alias_limits;
    // YAML 1.2 core schema: only true/false are booleans, so keys and values such as `n`,
    // `y`, `no`, `on` or `off` stay the strings they look like.
    options.strict_booleans = true;
    let documents: Vec<Option<Spanned<YamlNode>>> =
        serde_saphyr::from_multiple_with_options(text, options).map_err(syntax_error)?;
    Ok(documents
        .into_iter()
        .flatten()
        .map(|node| {
            let (value, locations) = node_into_parts(node);
            ParsedDocument { value, locations }
        })
        .filter(|document| !document.value.is_null())
        .collect())
}

/// Parses JSON text (comments allowed). The syntax is checked strictly by serde_json; node
/// locations come from reading the same text as YAML, of which JSON is a subset.
pub fn parse_json(text: &str) -> Result<ParsedDocument, SyntaxError> {
    let stripped = strip_json_comments(text);
    let mut deserializer = serde_json::Deserializer::from_str(&stripped);
    let value = Value::deserialize(&mut deserializer).map_err(|err| SyntaxError {
        line: err.line() as u32,
        column: err.column() as u32,
        message: json_message(&err),
    })?;
    deserializer.end().map_err(|err| SyntaxError {
        line: err.line() as u32,
        column: err.column() as u32,
        message: json_message(&err),
    })?;
    let locations = parse_yaml(&stripped)
        .ok()
        .and_then(|mut documents| (documents.len() == 1).then(|| documents.remove(0).locations))
        .unwrap_or(LocatedNode {
            line: 1,
            column: 1,
            children: LocatedChildren::None,
        });
    Ok(ParsedDocument { value, locations })
}

/// serde_json's message without its trailing "at line N column M", which the diagnostic
/// already carries.
fn json_message(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let message = match text.rfind(" at line ") {
        Some(index) => text[..index].to_owned(),
        None => text,
    };
    format!("invalid JSON: {message}")
}

/// Replaces `//` line comments and `/* */` block comments outside strings with spaces, so
/// that lines and columns stay where they were.
pub fn strip_json_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => {
                    if let Some(escaped) = chars.next() {
                        out.push(escaped);
                    }
                }
                '"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_string = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                out.push(' ');
                for next in chars.by_ref() {
                    if next == '\n' {
                        out.push('\n');
                        break;
                    }
                    out.push(' ');
                }
            }
            ('/', Some('*')) => {
                out.push(' ');
                let mut previous = ' ';
                for next in chars.by_ref() {
                    out.push(if next == '\n' { '\n' } else { ' ' });
                    if previous == '*' && next == '/' {
                        break;
                    }
                    previous = next;
                }
            }
            _ => out.push(c),
        }
    }
    out
}

/// How many events alias uses may replay in `text`: [`REPLAYED_EVENTS_PER_BYTE`] per byte,
/// at least [`MIN_REPLAYED_EVENTS`], at most [`MAX_NODES`].
fn replay_limit(text: &str) -> usize {
    text.len()
        .saturating_mul(REPLAYED_EVENTS_PER_BYTE)
        .clamp(MIN_REPLAYED_EVENTS, MAX_NODES)
}

fn syntax_error(err: serde_saphyr::Error) -> SyntaxError {
    let (line, column) = err
        .location()
        .map(|l| (l.line() as u32, l.column() as u32))
        .unwrap_or((0, 0));
    let full = err.without_snippet().to_string();
    // The location travels separately; keep the first line of the message only.
    let message = full
        .lines()
        .next()
        .unwrap_or("invalid YAML")
        .trim()
        .to_owned();
    let message = match message.find(" at line ") {
        Some(index) => message[..index].to_owned(),
        None => message,
    };
    let message = if let Some(breach) = message.strip_prefix("budget breached: ") {
        budget_message(breach)
    } else if message.starts_with("alias replay limit exceeded") {
        too_large(&format!(
            "aliases expand to more than {REPLAYED_EVENTS_PER_BYTE} YAML events per byte of the file"
        ))
    } else {
        format!("invalid YAML: {message}")
    };
    SyntaxError {
        line,
        column,
        message,
    }
}

/// Turns serde-saphyr's `Nodes { nodes: 250001 }` into a sentence naming the limit.
fn budget_message(breach: &str) -> String {
    let variant = breach.split_whitespace().next().unwrap_or(breach);
    let what = match variant {
        "Nodes" => format!("more than {MAX_NODES} nodes once aliases are expanded"),
        "Depth" => format!("nesting deeper than {MAX_DEPTH} levels"),
        "Aliases" => format!("more than {MAX_ALIASES} alias uses"),
        "Anchors" => format!("more than {MAX_ANCHORS} anchors"),
        "Documents" => format!("more than {MAX_DOCUMENTS} documents"),
        _ => breach.to_owned(),
    };
    too_large(&what)
}

fn too_large(what: &str) -> String {
    format!(
        "YAML input too large: {what} (a limit that guards against alias bombs and runaway files)"
    )
}

/// A YAML node as serde-saphyr hands it over, children with their spans.
enum YamlNode {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
    Seq(Vec<Spanned<YamlNode>>),
    Map(Vec<(Spanned<YamlNode>, Spanned<YamlNode>)>),
}

fn node_into_parts(node: Spanned<YamlNode>) -> (Value, LocatedNode) {
    let line = node.referenced.line() as u32;
    let column = node.referenced.column() as u32;
    let (value, children) = match node.value {
        YamlNode::Null => (Value::Null, LocatedChildren::None),
        YamlNode::Bool(b) => (Value::Bool(b), LocatedChildren::None),
        YamlNode::Number(n) => (Value::Number(n), LocatedChildren::None),
        YamlNode::String(s) => (Value::String(s), LocatedChildren::None),
        YamlNode::Seq(items) => {
            let (values, located) = items.into_iter().map(node_into_parts).unzip();
            (Value::Array(values), LocatedChildren::Seq(located))
        }
        YamlNode::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            let mut located = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let key_line = key.referenced.line() as u32;
                let key_column = key.referenced.column() as u32;
                let key = match key.value {
                    YamlNode::String(s) => s,
                    YamlNode::Number(n) => n.to_string(),
                    YamlNode::Bool(b) => b.to_string(),
                    YamlNode::Null => "null".to_owned(),
                    YamlNode::Seq(_) | YamlNode::Map(_) => "<complex key>".to_owned(),
                };
                let (value, child) = node_into_parts(value);
                located.push((key.clone(), key_line, key_column, child));
                map.insert(key, value);
            }
            (Value::Object(map), LocatedChildren::Map(located))
        }
    };
    (
        value,
        LocatedNode {
            line,
            column,
            children,
        },
    )
}

impl<'de> Deserialize<'de> for YamlNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(YamlNodeVisitor)
    }
}

struct YamlNodeVisitor;

impl<'de> Visitor<'de> for YamlNodeVisitor {
    type Value = YamlNode;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<YamlNode, E> {
        Ok(YamlNode::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<YamlNode, E> {
        Ok(YamlNode::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<YamlNode, E> {
        Ok(YamlNode::Number(v.into()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<YamlNode, E> {
        Err(E::custom(format!("integer {v} is out of range")))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<YamlNode, E> {
        Err(E::custom(format!("integer {v} is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<YamlNode, E> {
        Number::from_f64(v)
            .map(YamlNode::Number)
            .ok_or_else(|| E::custom("NaN and infinity are not valid values"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<YamlNode, E> {
        Ok(YamlNode::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<YamlNode, E> {
        Ok(YamlNode::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<YamlNode, E> {
        Ok(YamlNode::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<YamlNode, E> {
        Ok(YamlNode::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<YamlNode, D::Error> {
        YamlNode::deserialize(deserializer)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<YamlNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<YamlNode>>()? {
            items.push(item);
        }
        Ok(YamlNode::Seq(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<YamlNode, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<YamlNode>>()? {
            let value = map.next_value::<Spanned<YamlNode>>()?;
            entries.push((key, value));
        }
        Ok(YamlNode::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_nodes_keep_their_locations() {
        let text = "name: a\nsteps:\n  - name: one\n    agent: shell\n";
        let documents = parse_yaml(text).unwrap();
        assert_eq!(documents.len(), 1);
        let locations = &documents[0].locations;
        assert_eq!(locations.locate("/steps/0/agent", false), (4, 12));
        assert_eq!(locations.locate("/steps/0/agent", true), (4, 5));
        // A missing field points at the mapping that lacks it.
        assert_eq!(locations.locate("/steps/0/missing", false), (3, 5));
    }

    #[test]
    fn only_true_and_false_are_booleans() {
        let text = "n: 1\ny: yes\non: off\nflag: true\nother: False\n";
        let document = &parse_yaml(text).unwrap()[0];
        assert_eq!(
            document.value,
            serde_json::json!({"n": 1, "y": "yes", "on": "off", "flag": true, "other": false})
        );
    }

    #[test]
    fn multi_document_yaml_skips_empty_documents() {
        let documents = parse_yaml("---\nname: a\n---\n---\nname: b\n").unwrap();
        let names: Vec<_> = documents.iter().map(|d| d.value["name"].clone()).collect();
        assert_eq!(names, vec![Value::from("a"), Value::from("b")]);
    }

    #[test]
    fn json_with_comments_parses_and_locates() {
        let text = "{\n  // a comment\n  \"name\": \"x\", /* more */ \"steps\": []\n}\n";
        let document = parse_json(text).unwrap();
        assert_eq!(document.value["name"], "x");
        assert_eq!(document.locations.locate("/name", true), (3, 3));
    }

    #[test]
    fn json_syntax_error_points_at_its_line() {
        let err = parse_json("{\n  \"name\": \"x\",\n}\n").unwrap_err();
        assert_eq!((err.line, err.column), (3, 1));
        assert!(
            err.message.starts_with("invalid JSON: trailing comma"),
            "{err:?}"
        );
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n",
                p = i - 1
            ));
        }
        assert!(parse_yaml(&text).is_err());
    }

    #[test]
    fn alias_bomb_is_refused_at_a_multiple_of_its_size() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x]\n");
        for (name, previous) in ["b", "c", "d", "e", "f"]
            .iter()
            .zip(["a", "b", "c", "d", "e"])
        {
            let items = vec![format!("*{previous}"); 9].join(", ");
            text.push_str(&format!("{name}: &{name} [{items}]\n"));
        }
        // 9^6 = 531,441 scalars once expanded: refused long before the node budget.
        let err = parse_yaml(&text).unwrap_err();
        assert!(
            err.message
                .contains("aliases expand to more than 10 YAML events per byte"),
            "{err:?}"
        );
        assert_eq!(replay_limit(&text), MIN_REPLAYED_EVENTS);
    }

    #[test]
    fn many_aliases_of_small_blocks_parse() {
        // A hundred small blocks, each merged into ten steps: the most aliases a file may use.
        let mut text = String::from("blocks:\n");
        for b in 0..100 {
            text.push_str(&format!(
                "  - &b{b} {{image: alpine, timeout: 10m, env: {{A: '{b}', B: '2', C: '3'}}}}\n"
            ));
        }
        text.push_str("steps:\n");
        for i in 0..MAX_ALIASES {
            text.push_str(&format!("  - {{<<: *b{}, name: s{i}}}\n", i / 10));
        }
        let documents = parse_yaml(&text).expect("a thousand merges of small blocks parse");
        let steps = documents[0].value["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), MAX_ALIASES);
        assert_eq!(steps[999]["env"]["A"], "99");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(10_000) + &"]".repeat(10_000);
        assert!(parse_yaml(&text).is_err());
        assert!(parse_json(&text).is_err());
    }
}
