//! The module structure stays a layering: no top-level module of `src/` depends on one that
//! depends back on it, however far round. A dependency is any `crate::<module>` (or
//! `super::<module>` reaching the crate root) in a module's code before its `#[cfg(test)]`,
//! doc links included, so a test may use what it likes. ARCHITECTURE.md shows the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that depend on no other module of the crate: everything may use them.
const LEAVES: [&str; 6] = ["reading", "settings", "backoff", "score", "metrics", "worker"];

/// One reason for an edge: where it is written.
type Evidence = (PathBuf, usize);

/// Top-level module → the top-level modules it uses, with the first place each use is written.
type Graph = BTreeMap<String, BTreeMap<String, Evidence>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifier at the start of `s`.
fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
    &s[..end]
}

/// The first identifier of every item of a `{a, b::c, d::{e, f}}` group (`s` starts after `{`).
fn group_heads(s: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                heads.push(ident(s[start..i].trim_start()));
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                heads.push(ident(s[start..i].trim_start()));
                start = i + 1;
            }
            _ => {}
        }
    }
    heads.into_iter().filter(|h| !h.is_empty()).collect()
}

/// The top-level modules `code` names: after `crate::`, or after as many `super::` as lead from
/// a module at `depth` (1 for `src/x.rs` and `src/x/mod.rs`) to the crate root.
fn named_modules(code: &str, depth: usize) -> Vec<(usize, String)> {
    let root_super = "super::".repeat(depth);
    let mut out = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for prefix in ["crate::", root_super.as_str()] {
            for (i, _) in line.match_indices(prefix) {
                let before = line[..i].chars().next_back();
                let rest = &line[i + prefix.len()..];
                // `$crate::`, `my_crate::`, or a `super::` that is part of a longer chain.
                if before.is_some_and(|c| is_ident(c) || c == '$' || c == ':') || rest.starts_with("super::") {
                    continue;
                }
                let heads = match rest.strip_prefix('{') {
                    Some(group) => group_heads(group),
                    None => vec![ident(rest)],
                };
                out.extend(heads.into_iter().filter(|h| !h.is_empty()).map(|h| (n + 1, h.to_string())));
            }
        }
    }
    out
}

/// The graph of `src/`'s top-level modules (`lib.rs` and `main.rs` are the root, not a module).
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let parts: Vec<String> = rel.with_extension("").iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
            continue;
        }
        let module = parts[0].clone();
        // `src/x/mod.rs` is the module `x` itself, one level down like `src/x.rs`.
        let depth = parts.len() - usize::from(parts.last().is_some_and(|p| p == "mod"));
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let edges = graph.entry(module.clone()).or_default();
        for (line, target) in named_modules(code, depth) {
            if target != module && !matches!(target.as_str(), "self" | "super" | "crate") {
                edges.entry(target).or_insert_with(|| (rel.to_path_buf(), line));
            }
        }
    }
    graph
}

/// A cycle of the graph, if it has one, as the modules along it (the first repeated at the end).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        graph: &Graph,
        m: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(m) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let from = path.iter().position(|p| p == m).unwrap_or(0);
                let mut cycle = path[from..].to_vec();
                cycle.push(m.to_string());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for next in graph.get(m).into_iter().flat_map(BTreeMap::keys) {
            if let Some(cycle) = visit(graph, next, marks, path) {
                return Some(cycle);
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|m| visit(graph, m, &mut marks, &mut Vec::new()))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn show(graph: &Graph) -> String {
    graph
        .iter()
        .map(|(m, to)| format!("{m} -> {}", to.keys().cloned().collect::<Vec<_>>().join(" ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_top_level_modules_depend_on_each_other_without_a_cycle() {
    let graph = module_graph(&src());
    if let Some(cycle) = find_cycle(&graph) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|w| {
                let (file, line) = &graph[&w[0]][&w[1]];
                format!("  {} -> {}   (src/{}:{line})", w[0], w[1], file.display())
            })
            .collect();
        panic!(
            "the modules of src/ depend on each other in a circle:\n{}\n\
             Move what both need into the lower module, or pass it in from above \
             (ARCHITECTURE.md, \"Modules\", shows the layers).\n\nThe whole graph:\n{}",
            steps.join("\n"),
            show(&graph)
        );
    }
}

#[test]
fn the_leaves_depend_on_no_other_module() {
    let graph = module_graph(&src());
    for leaf in LEAVES {
        let uses = graph.get(leaf).unwrap_or_else(|| panic!("no module {leaf} in src/"));
        let named: Vec<String> =
            uses.iter().map(|(to, (file, line))| format!("{to} (src/{}:{line})", file.display())).collect();
        assert!(named.is_empty(), "{leaf} is a leaf that every module may use, but it uses {}", named.join(", "));
    }
}

#[test]
fn the_graph_sees_what_the_code_uses() {
    let graph = module_graph(&src());
    assert!(graph.len() > 20, "{}", show(&graph));
    let uses = |from: &str, to: &str| graph.get(from).is_some_and(|t| t.contains_key(to));
    // A `use crate::{a, b::C}` group, a plain path and a path in an expression.
    assert!(uses("daemon", "core") && uses("daemon", "admin") && uses("core", "store"), "{}", show(&graph));
    assert!(uses("supervisor", "daemon") && !uses("daemon", "supervisor"), "{}", show(&graph));

    let found = |code: &str, depth: usize| -> BTreeSet<String> {
        named_modules(code, depth).into_iter().map(|(_, m)| m).collect()
    };
    let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(found("use crate::{a::{B, C}, b, c::D};", 1), set(&["a", "b", "c"]));
    assert_eq!(found("let x = crate::d::now(); $crate::e::f(); other_crate::g::h();", 1), set(&["d"]));
    assert_eq!(found("use super::i; use super::super::j;", 1), set(&["i"]));
    assert_eq!(found("use super::i; use super::super::j;", 2), set(&["j"]));
}
