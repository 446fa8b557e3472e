//! The layer rule of ARCHITECTURE.md, enforced: every top-level module of `src/` belongs to
//! one layer, and a module may refer (`crate::x`, in `use` lines or paths) only to modules
//! of its own layer or a lower one, and never in a cycle. The checker reads the source
//! text, so it needs no build of the crate; its own tests feed it graphs that break the
//! rule, to show it fails when it must.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Bottom to top. A module missing here is an error too: a new module picks its layer.
const LAYERS: &[(&str, &[&str])] = &[
    ("base", &["util", "model", "diagnostics", "duration"]),
    ("language", &["manifest", "cron", "lang"]),
    ("spec", &["spec", "schema", "logging", "config"]),
    ("storage", &["store", "source", "events"]),
    ("reconcile", &["reconcile"]),
    ("engine", &["engine"]),
    (
        "services",
        &[
            "agents",
            "controller",
            "scheduler",
            "triggers",
            "monitor",
            "workers",
        ],
    ),
    ("http", &["api", "dashboard"]),
    ("top", &["cli", "server"]),
];

/// Module → the other modules it refers to, each with the first file that does.
type Graph = BTreeMap<String, BTreeMap<String, String>>;

/// The top-level modules `text` refers to through `crate::` paths, comments left out.
fn references(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let identifier = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        // `foo_crate::` is another path.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(group) = rest.strip_prefix('{') else {
            found.insert(identifier(rest));
            continue;
        };
        // `use crate::{a::b, c::{d, e}};`, on one line or many: the first name of each
        // item at the group's own depth.
        let mut depth = 0;
        let mut item_start = true;
        for (index, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => break,
                '}' => depth -= 1,
                ',' if depth == 0 => item_start = true,
                c if item_start && (c.is_alphanumeric() || c == '_') => {
                    found.insert(identifier(&group[index..]));
                    item_start = false;
                }
                _ => {}
            }
        }
    }
    found.remove("");
    found
}

/// The graph of `src/`: each top-level module's references to the others.
fn graph_of(src: &Path) -> Graph {
    let mut graph = Graph::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(src).expect("under src");
            let first = relative
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .expect("a name");
            let module = first.trim_end_matches(".rs").to_owned();
            if module == "main" || module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("read a source file");
            let edges = graph.entry(module.clone()).or_default();
            for target in references(&text) {
                if target != module {
                    edges
                        .entry(target)
                        .or_insert_with(|| relative.display().to_string());
                }
            }
        }
    }
    graph
}

/// Every way `graph` breaks the rule of `layers`, one line each.
fn violations(graph: &Graph, layers: &[(&str, &[&str])]) -> Vec<String> {
    let rank: BTreeMap<&str, (usize, &str)> = layers
        .iter()
        .enumerate()
        .flat_map(|(index, (layer, modules))| modules.iter().map(move |m| (*m, (index, *layer))))
        .collect();
    let mut problems = Vec::new();
    let listed: Vec<&str> = layers.iter().flat_map(|(_, m)| m.iter().copied()).collect();
    for (index, module) in listed.iter().enumerate() {
        if listed[..index].contains(module) {
            problems.push(format!("{module} is listed in two layers"));
        }
    }
    for (module, edges) in graph {
        let Some(&(from, from_layer)) = rank.get(module.as_str()) else {
            problems.push(format!(
                "src/{module} is in no layer: add it to ARCHITECTURE.md's layer rule and to LAYERS"
            ));
            continue;
        };
        for (target, file) in edges {
            // Names that are no module of the crate (a `crate::SomeItem` re-export) are
            // not edges.
            let Some(&(to, to_layer)) = rank.get(target.as_str()) else {
                if graph.contains_key(target) {
                    problems.push(format!("src/{target} is in no layer"));
                }
                continue;
            };
            if to > from {
                problems.push(format!(
                    "{file}: {module} ({from_layer}) imports {target} ({to_layer}), a higher layer"
                ));
            }
        }
    }
    // Cycles: within a layer, the modules must form a DAG.
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    let mut path: Vec<&str> = Vec::new();
    fn visit<'a>(
        node: &'a str,
        graph: &'a Graph,
        state: &mut BTreeMap<&'a str, u8>,
        path: &mut Vec<&'a str>,
        problems: &mut Vec<String>,
    ) {
        match state.get(node) {
            Some(2) => return,
            Some(1) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<&str> = path[start..].to_vec();
                cycle.push(node);
                problems.push(format!("cycle: {}", cycle.join(" -> ")));
                return;
            }
            _ => {}
        }
        state.insert(node, 1);
        path.push(node);
        if let Some(edges) = graph.get(node) {
            for target in edges.keys() {
                if graph.contains_key(target) {
                    visit(target, graph, state, path, problems);
                }
            }
        }
        path.pop();
        state.insert(node, 2);
    }
    for module in graph.keys() {
        visit(module, graph, &mut state, &mut path, &mut problems);
    }
    problems
}

#[test]
fn the_modules_of_src_keep_to_their_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&src);
    assert!(graph.len() > 10, "read too few modules: {graph:?}");
    let problems = violations(&graph, LAYERS);
    assert!(
        problems.is_empty(),
        "the layer rule (ARCHITECTURE.md) is broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_layer_of_the_table_is_named_in_architecture_md() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("ARCHITECTURE.md"))
            .expect("ARCHITECTURE.md");
    for (layer, modules) in LAYERS {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("| {layer} |")))
            .unwrap_or_else(|| panic!("ARCHITECTURE.md has no row for the {layer} layer"));
        for module in *modules {
            assert!(
                line.contains(&format!("`{module}`")),
                "ARCHITECTURE.md's {layer} row does not name `{module}`: {line}"
            );
        }
    }
}

fn graph(edges: &[(&str, &str)]) -> Graph {
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph
            .entry((*from).to_owned())
            .or_default()
            .insert((*to).to_owned(), format!("{from}.rs"));
        graph.entry((*to).to_owned()).or_default();
    }
    graph
}

const TOY: &[(&str, &[&str])] = &[("low", &["a", "b"]), ("high", &["c"])];

#[test]
fn the_checker_accepts_downward_and_sideways_edges() {
    assert_eq!(
        violations(&graph(&[("c", "a"), ("a", "b")]), TOY),
        Vec::<String>::new()
    );
}

#[test]
fn the_checker_fails_on_an_upward_edge() {
    let problems = violations(&graph(&[("a", "c")]), TOY);
    assert_eq!(
        problems,
        vec!["a.rs: a (low) imports c (high), a higher layer".to_owned()]
    );
}

#[test]
fn the_checker_fails_on_a_cycle_within_a_layer() {
    let problems = violations(&graph(&[("a", "b"), ("b", "a")]), TOY);
    assert_eq!(problems, vec!["cycle: a -> b -> a".to_owned()]);
}

#[test]
fn the_checker_fails_on_a_module_in_two_layers() {
    let twice: &[(&str, &[&str])] = &[("low", &["a"]), ("high", &["a"])];
    let problems = violations(&graph(&[]), twice);
    assert_eq!(problems, vec!["a is listed in two layers".to_owned()]);
}

#[test]
fn the_checker_fails_on_a_module_without_a_layer() {
    let problems = violations(&graph(&[("d", "a")]), TOY);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("src/d is in no layer")),
        "{problems:?}"
    );
}

#[test]
fn references_are_read_from_paths_groups_and_not_comments() {
    let text = "use crate::store::Store;\nuse crate::{model, util::did_you_mean};\nuse crate::{\n    events::{EventBus, EventKind},\n    reconcile::view::View,\n};\n// crate::server is only named here\nlet x = crate::engine::run::recover(&s); // crate::api\nlet y = other_crate::thing;\n";
    let found: Vec<String> = references(text).into_iter().collect();
    assert_eq!(
        found,
        vec!["engine", "events", "model", "reconcile", "store", "util"]
    );
}

/// Whether ARCHITECTURE.md's code map names `relative` (a path under `src/`): by its whole
/// path, or by its path inside a module directory whose row names it.
fn named_in_code_map(map: &str, relative: &Path) -> bool {
    let whole = format!("`src/{}`", relative.display());
    if map.contains(&whole) {
        return true;
    }
    let mut parts = relative.components();
    let Some(module) = parts.next() else {
        return false;
    };
    let inside = parts.as_path().display().to_string();
    let row_key = format!("| `src/{}/`", module.as_os_str().to_string_lossy());
    // A module's own row describes its `mod.rs`.
    map.lines()
        .filter(|line| line.starts_with(&row_key))
        .any(|line| inside == "mod.rs" || line.contains(&format!("`{inside}`")))
}

#[test]
fn every_source_file_is_in_the_code_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let src = root.join("src");
    let mut missing = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                // The dashboard's assets are listed by its asset table, not here.
                if path.file_name().is_some_and(|n| n == "assets") {
                    continue;
                }
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(&src).expect("under src");
                if !named_in_code_map(&text, relative) {
                    missing.push(relative.display().to_string());
                }
            }
        }
    }
    missing.sort();
    assert!(
        missing.is_empty(),
        "files ARCHITECTURE.md's code map does not name: {missing:?}"
    );
}

#[test]
fn the_code_map_check_finds_files_by_path_or_in_their_module_row() {
    let map =
        "| `src/lib.rs` | x |\n| `src/api/` | `state.rs` the state; `stats/health.rs` checks |\n";
    assert!(named_in_code_map(map, Path::new("lib.rs")));
    assert!(named_in_code_map(map, Path::new("api/state.rs")));
    assert!(named_in_code_map(map, Path::new("api/stats/health.rs")));
    assert!(!named_in_code_map(map, Path::new("api/other.rs")));
    assert!(!named_in_code_map(map, Path::new("engine/state.rs")));
    assert!(named_in_code_map(map, Path::new("api/mod.rs")));
    assert!(!named_in_code_map(map, Path::new("engine/mod.rs")));
}
