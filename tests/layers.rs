//! The layers of `src/`, checked: each top-level module imports only modules of lower layers,
//! and no two files import each other, directly or around a loop. The layers, lowest first,
//! are the ones `docs/ARCHITECTURE.md` draws: data flows one way, from the receivers through the
//! aggregator and the store to the query layer and what reads it; shared vocabulary is at the
//! bottom and rendering is a leaf.
//!
//! Imports are read from the code itself (`crate::…` paths and `super::…` paths), outside
//! comments and `#[cfg(test)]` modules, which may reach anywhere. And no file grows past 700
//! lines outside its tests: one job per file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may import from lower layers only.
const LAYERS: &[&[&str]] = &[
    &["vocab", "self_metrics"],
    &["model", "budget", "render", "supervise", "tls"],
    &["memsize"],
    &["aggregate"],
    &["store"],
    &["pipeline"],
    &["export"],
    &["forward"],
    &["ingest", "query"],
    &["notify", "dashboards"],
    &["alerts"],
    &["web"],
    &["config"],
    &["app"],
    &["lib", "main"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `src/a.rs` is `a`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|last| last == "mod") && parts.len() > 1 {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The code of a file without its test module and without comment lines.
fn code_outside_tests(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod ") {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Paths like `crate::a::b::Item` or `super::x`, as their segments (`super` resolved).
fn imported_paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let rest = &code[at + start.len()..];
            let segments: Vec<String> = rest
                .split("::")
                .map(|s| {
                    s.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect::<String>()
                })
                .take_while(|s| !s.is_empty())
                .collect();
            let mut path = if start == "super::" {
                // `super` of a file module is its parent; of `a/mod.rs` too.
                module[..module.len().saturating_sub(1)].to_vec()
            } else {
                Vec::new()
            };
            path.extend(segments);
            paths.push(path);
        }
    }
    paths
}

/// The longest known module that `path` starts with.
fn resolve(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
}

struct Graph {
    edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
}

fn import_graph() -> Graph {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let module = module_path(&src, file);
        let text = std::fs::read_to_string(file).expect("readable source");
        let code = code_outside_tests(&text);
        let targets: BTreeSet<Vec<String>> = imported_paths(&code, &module)
            .iter()
            .filter_map(|path| resolve(path, &modules))
            .filter(|target| *target != module)
            // A module's own submodules are its parts, not its dependencies.
            .filter(|target| !target.starts_with(&module))
            .collect();
        edges.insert(module, targets);
    }
    Graph { edges }
}

#[test]
fn top_level_modules_import_only_lower_layers() {
    let graph = import_graph();
    let mut wrong = Vec::new();
    for (module, targets) in &graph.edges {
        let top = &module[0];
        let layer = layer_of(top).unwrap_or_else(|| panic!("{top} has no layer in LAYERS"));
        for target in targets {
            let target_top = &target[0];
            if target_top == top {
                continue;
            }
            let target_layer = layer_of(target_top)
                .unwrap_or_else(|| panic!("{target_top} has no layer in LAYERS"));
            if target_layer >= layer {
                wrong.push(format!(
                    "{} imports {}",
                    module.join("::"),
                    target.join("::")
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_file_imports_itself_around_a_loop() {
    let graph = import_graph();
    // Depth-first search for a back edge; reports the first loop found.
    fn visit(
        module: &Vec<String>,
        graph: &Graph,
        on_path: &mut Vec<Vec<String>>,
        done: &mut BTreeSet<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        if let Some(at) = on_path.iter().position(|m| m == module) {
            let mut cycle = on_path[at..].to_vec();
            cycle.push(module.clone());
            return Some(cycle);
        }
        if done.contains(module) {
            return None;
        }
        on_path.push(module.clone());
        for target in graph.edges.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(target, graph, on_path, done) {
                return Some(cycle);
            }
        }
        on_path.pop();
        done.insert(module.clone());
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.edges.keys() {
        if let Some(cycle) = visit(module, &graph, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("::")).collect();
            panic!("import loop: {}", names.join(" → "));
        }
    }
}

#[test]
fn the_graph_is_read_from_the_code() {
    // The checks above mean something only if imports are found at all.
    let graph = import_graph();
    let query = graph
        .edges
        .get(&vec!["query".to_string()])
        .expect("query.rs");
    assert!(query.contains(&vec!["store".to_string(), "read".to_string()]));
    assert!(query.contains(&vec!["vocab".to_string()]));
}

#[test]
fn no_file_is_over_700_lines_outside_its_tests() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut long = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        let code = match text.find("#[cfg(test)]\nmod tests") {
            Some(at) => &text[..at],
            None => &text,
        };
        let lines = code.lines().count();
        if lines > 700 {
            long.push(format!("{}: {lines} lines", file.display()));
        }
    }
    assert!(long.is_empty(), "files to split:\n{}", long.join("\n"));
}
