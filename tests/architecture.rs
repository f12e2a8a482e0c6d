//! The server's module graph has no circles.
//!
//! Lists every `crate::` and `super::` dependency between the server's file
//! modules (`server/routing/view.rs` is `routing::view`, a `mod.rs` is its
//! folder's module), from `use` trees and inline paths alike, and fails on a
//! cycle, naming it. Test modules (`#[cfg(test)]` and after) are left out.
//! `AGENTRY_PRINT_MODULES=1` prints the graph.
//!
//! And every `tonic::Status` the server sends is built by the one mapping,
//! `From<Error> for Status` in `server/error.rs`, so that it carries its
//! `ErrorInfo`: no other file calls a constructor of `Status`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read server/") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `server/a/b.rs` → `a::b`; `server/a/mod.rs` → `a`; `server/lib.rs` → ``.
fn module_of(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).expect("under server/");
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts.join("::")
}

/// Strips comments and string literals, so that paths in them do not count.
fn code(source: &str) -> String {
    let source = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    match (escaped, c) {
                        (false, '\\') => escaped = true,
                        (false, '"') => break,
                        _ => escaped = false,
                    }
                }
                out.push_str("\"\"");
            }
            c => out.push(c),
        }
    }
    out
}

/// Expands a use tree (`crate::a::{b, c::d}`) into its paths.
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or_default().trim();
            out.push(format!("{prefix}{path}"));
        }
        Some(open) => {
            let head = &tree[..open];
            let inner = &tree[open + 1..tree.rfind('}').expect("closing brace")];
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&inner[start..i], &format!("{prefix}{head}"), out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand(&inner[start..], &format!("{prefix}{head}"), out);
            }
        }
    }
}

/// Every path a file names that starts with `crate::` or `super::`.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let end = rest[at..].find(';').map_or(rest.len(), |e| at + e);
        if before_ok {
            expand(&rest[at + 4..end], "", &mut out);
        }
        rest = &rest[(at + 4).min(end)..];
    }
    // Inline paths (`crate::configurations::store::get(...)`).
    for start in ["crate::", "super::"] {
        let mut rest = code;
        while let Some(at) = rest.find(start) {
            let tail = &rest[at..];
            let len = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            out.push(tail[..len].trim_end_matches(':').to_owned());
            rest = &tail[len.max(1)..];
        }
    }
    out
}

/// The file module a path names: its longest prefix that is one.
fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else {
        format!("{parent}::{child}")
    }
}

fn resolve(from: &str, path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut segments: Vec<&str> = path.split("::").map(str::trim).collect();
    let mut base: Vec<String> = match segments.first() {
        Some(&"crate") => {
            segments.remove(0);
            Vec::new()
        }
        Some(&"super") => {
            let mut base: Vec<String> = from
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
            // In `a/b.rs` super is `a`; in `a/mod.rs` (module `a`) it is a's parent.
            while segments.first() == Some(&"super") {
                segments.remove(0);
                base.pop();
            }
            base
        }
        Some(&"self") => {
            segments.remove(0);
            from.split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        }
        // A child module by its own name (`use service::RegistrationApi` in a mod.rs).
        Some(first) if modules.contains(&join(from, first)) => from
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        _ => return None,
    };
    let mut best = None;
    let candidate = base.join("::");
    if modules.contains(&candidate) {
        best = Some(candidate);
    }
    for segment in segments {
        if segment == "self" || segment == "*" || segment.is_empty() {
            continue;
        }
        base.push(segment.to_owned());
        let candidate = base.join("::");
        if modules.contains(&candidate) {
            best = Some(candidate);
        }
    }
    best
}

fn graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("server");
    let mut all = Vec::new();
    files(&root, &mut all);
    let modules: BTreeSet<String> = all.iter().map(|f| module_of(&root, f)).collect();
    let mut graph = Graph::new();
    for file in &all {
        let from = module_of(&root, file);
        if from == "main" {
            continue; // the binary: a crate of its own.
        }
        let source = std::fs::read_to_string(file).expect("read source");
        let deps = graph.entry(from.clone()).or_default();
        for path in paths(&code(&source)) {
            if let Some(to) = resolve(&from, &path, &modules)
                && to != from
                && !to.is_empty()
            {
                deps.insert(to);
            }
        }
    }
    graph
}

/// A cycle of `graph`, if it has one.
fn cycle(graph: &Graph) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &str,
        graph: &Graph,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let at = stack.iter().position(|n| n == node).expect("on the stack");
                let mut cycle = stack[at..].to_vec();
                cycle.push(node.to_owned());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.to_owned(), Mark::Open);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.to_owned(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut marks, &mut Vec::new()) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn the_server_module_graph_has_no_cycles() {
    let graph = graph();
    if std::env::var_os("AGENTRY_PRINT_MODULES").is_some() {
        for (from, to) in &graph {
            println!(
                "{from:<28} -> {}",
                to.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    // The parser sees what it must: a few edges that exist for sure.
    let sees = |from: &str, to: &str| graph.get(from).is_some_and(|d| d.contains(to));
    assert!(sees("routing::view", "feed"), "routing::view -> feed");
    assert!(sees("registrations::service", "registrations::stream"));
    assert!(sees("server", "routing::writer"));
    assert!(sees("registrations", "registrations::service"));
    if let Some(cycle) = cycle(&graph) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checker_finds_a_cycle_when_there_is_one() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    graph.entry("c".into()).or_default().insert("a".into());
    graph.entry("d".into()).or_default().insert("a".into());
    assert_eq!(cycle(&graph).expect("a cycle"), ["a", "b", "c", "a"]);
    graph.get_mut("c").expect("c").clear();
    assert_eq!(cycle(&graph), None);
}

#[test]
fn use_trees_and_relative_paths_resolve_to_file_modules() {
    let modules: BTreeSet<String> = [
        "routing",
        "routing::view",
        "routing::writer",
        "feed",
        "error",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut out = Vec::new();
    expand(
        "crate::routing::{view::{View, Filter}, writer as w}",
        "",
        &mut out,
    );
    assert_eq!(
        out,
        [
            "crate::routing::view::View",
            "crate::routing::view::Filter",
            "crate::routing::writer"
        ]
    );
    let found: Vec<_> = out
        .iter()
        .filter_map(|p| resolve("feed", p, &modules))
        .collect();
    assert_eq!(found, ["routing::view", "routing::view", "routing::writer"]);
    assert_eq!(
        resolve("routing::view", "super::writer::LeaseWriter", &modules).as_deref(),
        Some("routing::writer")
    );
    assert_eq!(
        resolve("routing::view", "crate::error::Result", &modules).as_deref(),
        Some("error")
    );
    assert_eq!(
        resolve("routing", "view::View", &modules).as_deref(),
        Some("routing::view")
    );
    assert_eq!(resolve("routing", "tonic::Status", &modules), None);
    let code = code("// crate::routing::view\nlet s = \"crate::feed\"; use crate::error::Error;");
    assert_eq!(paths(&code), ["crate::error::Error", "crate::error::Error"]);
}

/// The constructors of `Status` other than `From` that `code` calls, as
/// `Status::name`: a status built so skips the mapping and its details.
fn raw_statuses(code: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("Status::") {
        let named_so = !code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        let rest = &code[at + "Status::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let called = rest[name.len()..].trim_start().starts_with('(');
        let constructor = name.starts_with(|c: char| c.is_ascii_lowercase());
        if named_so && called && constructor && name != "from" {
            found.push(format!("Status::{name}"));
        }
    }
    found
}

#[test]
fn statuses_are_built_only_by_the_error_mapping() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("server");
    let mut all = Vec::new();
    files(&root, &mut all);
    let mut raw = Vec::new();
    for file in all {
        let relative = file.strip_prefix(&root).expect("under server/");
        if relative == Path::new("error.rs") {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("read");
        for (n, line) in code(&source).lines().enumerate() {
            for status in raw_statuses(line) {
                raw.push(format!("server/{}:{}: {status}", relative.display(), n + 1));
            }
        }
    }
    assert!(
        raw.is_empty(),
        "statuses built outside server/error.rs (return an Error, or Status::from(Error::…)):\n{}",
        raw.join("\n")
    );
}

#[test]
fn the_status_checker_sees_constructors_and_nothing_else() {
    assert_eq!(
        raw_statuses(
            "Err(Status::aborted(x)); tonic::Status::new(Code::Ok, m); Status::with_details (c, m, d)"
        ),
        ["Status::aborted", "Status::new", "Status::with_details"]
    );
    assert!(
        raw_statuses(
            "Status::from(Error::Aborted(x)); HealthStatus::from_db_name(n); \
             ServingStatus::try_from(s); Status::Code; fn f() -> tonic::Status"
        )
        .is_empty()
    );
}
