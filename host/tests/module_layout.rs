//! The layout tells the architecture only if dependencies point one way: no two sibling modules of
//! the host or of a plugin may use each other, directly or around a ring. This reads the sources
//! (use trees and inline `crate::`/`super::`/`self::` paths, test modules left out) and fails
//! naming every cycle and the lines that make it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside one crate: `["kubelet", "server"]`.
type ModPath = Vec<String>;

/// Where one module refers to another: `host/src/kubelet/exec.rs:12`.
type Site = String;

/// Cycles that exist and are being taken apart: none left. A new one fails the test; if one has to
/// be accepted for a while, it is listed here with its reason, and the test fails once it is gone.
const KNOWN_CYCLES: &[&str] = &[];

#[test]
fn no_module_of_the_host_or_a_plugin_uses_a_sibling_that_uses_it_back() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ is inside the repository");
    let mut crates = vec![repo.join("host/src")];
    let mut plugins: Vec<PathBuf> = std::fs::read_dir(repo.join("plugins"))
        .expect("plugins/ exists")
        .filter_map(|e| e.ok().map(|e| e.path().join("src")))
        .filter(|p| p.is_dir())
        .collect();
    plugins.sort();
    crates.extend(plugins);

    let (mut new, mut seen) = (Vec::new(), BTreeSet::new());
    for src in &crates {
        let graph = sibling_graph(src, repo);
        for cycle in cycles(&graph) {
            let (title, detail) = describe(src, repo, &cycle, &graph);
            if !KNOWN_CYCLES.contains(&title.as_str()) {
                new.push(format!("{title}\n{detail}"));
            }
            seen.insert(title);
        }
    }
    let gone: Vec<&&str> = KNOWN_CYCLES.iter().filter(|k| !seen.contains(**k)).collect();
    assert!(new.is_empty(), "new module cycles:\n\n{}", new.join("\n\n"));
    assert!(gone.is_empty(), "cycles no longer there, take them off KNOWN_CYCLES: {gone:?}");
}

#[test]
fn the_checker_finds_a_cycle_between_siblings_and_ignores_children_using_their_parent() {
    let dir = std::env::temp_dir().join(format!("vkhost-module-layout-{}", std::process::id()));
    let write = |rel: &str, text: &str| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("src/lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("src/a/mod.rs", "pub mod inner;\nuse crate::b::Thing;\npub struct Root;\n");
    write("src/a/inner.rs", "use super::Root;\nuse crate::{c::Other, a::Root as R};\n");
    write("src/b.rs", "pub struct Thing;\nfn f() { let _ = crate::a::inner::g(); }\n");
    write(
        "src/c.rs",
        "pub struct Other;\n// use crate::a::Root; (a comment)\n#[cfg(test)]\nmod tests {\n    use crate::b::Thing;\n}\n",
    );
    let graph = sibling_graph(&dir.join("src"), &dir);
    let found = cycles(&graph);
    std::fs::remove_dir_all(&dir).ok();
    let names: Vec<Vec<String>> = found.iter().map(|c| c.iter().map(|m| m.join("::")).collect()).collect();
    assert_eq!(names, vec![vec!["a".to_string(), "b".to_string()]], "a <-> b only; c's uses are a comment and a test");
}

/// Edges between sibling modules, with the sites that make each one.
type Graph = BTreeMap<(ModPath, ModPath), Vec<Site>>;

fn sibling_graph(src: &Path, repo: &Path) -> Graph {
    let files = rust_files(src);
    let modules: BTreeSet<ModPath> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let here = module_of(src, file);
        let text = std::fs::read_to_string(file).unwrap_or_default();
        for (line, path) in referenced_paths(&strip(&text)) {
            let Some(target) = resolve(&here, &path, &modules) else { continue };
            // The first level at which the two paths part: an edge between those two siblings.
            let split = here.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if split < here.len() && split < target.len() {
                let site = format!("{}:{line}", file.strip_prefix(repo).unwrap_or(file).display());
                graph.entry((here[..=split].to_vec(), target[..=split].to_vec())).or_default().push(site);
            }
        }
    }
    graph
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// `src/kubelet/spdy/mod.rs` -> `kubelet::spdy`; `src/lib.rs` and `src/main.rs` -> the root.
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The source without comments, string literals and `#[cfg(test)]` modules.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if text[i..].starts_with("/*") {
            let end = text[i + 2..].find("*/").map_or(bytes.len(), |e| i + 2 + e + 2);
            out.extend(text[i..end].chars().filter(|c| *c == '\n'));
            i = end;
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                } else if bytes[i] == b'\n' {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if text[i..].starts_with("#[cfg(test)]") {
            // A test module is the rest of the block that follows; tests may reach anywhere.
            let rest = &text[i..];
            let Some(open) = rest.find('{') else { break };
            let (mut depth, mut j) = (0usize, i + open);
            while j < bytes.len() {
                match bytes[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            out.extend(text[i..j.min(bytes.len())].chars().filter(|c| *c == '\n'));
            i = j + 1;
        } else {
            let c = text[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Every path a file names that starts with `crate`, `super` or `self`, with its line: use trees
/// expanded, inline paths in code too.
fn referenced_paths(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    // Use trees, which may span lines and nest braces.
    let mut rest = 0;
    while let Some(at) = text[rest..].find("use ").map(|p| rest + p) {
        let word_start = at == 0 || !text.as_bytes()[at - 1].is_ascii_alphanumeric() && text.as_bytes()[at - 1] != b'_';
        let end = text[at..].find(';').map_or(text.len(), |e| at + e);
        if word_start {
            for path in expand_use_tree(&text[at + 4..end]) {
                out.push((line_of(at), path));
            }
        }
        rest = end.min(text.len() - 1).max(at + 1);
    }
    // Inline paths: `crate::x::y(...)`, `super::x::Y { .. }`.
    for root in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = text[from..].find(root).map(|p| from + p) {
            let before = at.checked_sub(1).map(|b| text.as_bytes()[b]);
            let in_use = text[..at].rfind("use ").is_some_and(|u| !text[u..at].contains(';'));
            if !in_use && !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                let path: String =
                    text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
                out.push((line_of(at), path.split("::").filter(|s| !s.is_empty()).map(String::from).collect()));
            }
            from = at + root.len();
        }
    }
    out
}

/// `crate::a::{b, c::{d, e as f}, self}` -> `crate::a::b`, `crate::a::c::d`, `crate::a::c::e`, `crate::a`.
fn expand_use_tree(tree: &str) -> Vec<Vec<String>> {
    fn walk(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if let Some(open) = tree.find('{') {
            let head: Vec<String> =
                tree[..open].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut base = prefix.to_vec();
            base.extend(head);
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        walk(&base, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            walk(&base, &inner[start..], out);
        } else if !tree.is_empty() {
            let tree = tree.split(" as ").next().unwrap_or(tree);
            let mut path = prefix.to_vec();
            path.extend(tree.split("::").map(str::trim).filter(|s| !s.is_empty() && *s != "self").map(String::from));
            out.push(path);
        }
    }
    let tree = tree.trim().trim_start_matches("pub(crate)").trim_start_matches("pub").trim();
    let mut out = Vec::new();
    walk(&[], tree, &mut out);
    out
}

/// The module a path names (the longest known prefix), or None for paths outside the crate.
fn resolve(here: &ModPath, path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut parts = path.iter();
    let mut base: ModPath = match parts.next()?.as_str() {
        "crate" => Vec::new(),
        "super" => here[..here.len().checked_sub(1)?].to_vec(),
        "self" => here.clone(),
        _ => return None,
    };
    let mut rest: Vec<&String> = parts.collect();
    while rest.first().is_some_and(|p| *p == "super") {
        base.pop();
        rest.remove(0);
    }
    let mut best = base.clone();
    for part in rest {
        base.push(part.clone());
        if modules.contains(&base) {
            best = base.clone();
        } else {
            break;
        }
    }
    Some(best)
}

/// Strongly connected groups of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<ModPath>> {
    let mut next: BTreeMap<&ModPath, Vec<&ModPath>> = BTreeMap::new();
    for (from, to) in graph.keys() {
        next.entry(from).or_default().push(to);
        next.entry(to).or_default();
    }
    struct Tarjan<'a> {
        next: &'a BTreeMap<&'a ModPath, Vec<&'a ModPath>>,
        index: BTreeMap<&'a ModPath, (usize, usize)>,
        stack: Vec<&'a ModPath>,
        on_stack: BTreeSet<&'a ModPath>,
        found: Vec<Vec<ModPath>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a ModPath) {
            let n = self.index.len();
            self.index.insert(v, (n, n));
            self.stack.push(v);
            self.on_stack.insert(v);
            for &w in &self.next[v] {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.index[v].1.min(self.index[w].1);
                    self.index.get_mut(v).unwrap().1 = low;
                } else if self.on_stack.contains(w) {
                    let low = self.index[v].1.min(self.index[w].0);
                    self.index.get_mut(v).unwrap().1 = low;
                }
            }
            if self.index[v].0 == self.index[v].1 {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.found.push(group);
                }
            }
        }
    }
    let mut t =
        Tarjan { next: &next, index: BTreeMap::new(), stack: Vec::new(), on_stack: BTreeSet::new(), found: Vec::new() };
    for v in next.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.found.sort();
    t.found
}

/// The cycle's one-line title and the edges that make it.
fn describe(src: &Path, repo: &Path, cycle: &[ModPath], graph: &Graph) -> (String, String) {
    let name = |m: &ModPath| if m.is_empty() { "crate".to_string() } else { m.join("::") };
    let crate_name = src.strip_prefix(repo).unwrap_or(src).display();
    let title = format!("{crate_name}: {}", cycle.iter().map(name).collect::<Vec<_>>().join(" <-> "));
    let mut lines = Vec::new();
    for ((from, to), sites) in graph {
        if cycle.contains(from) && cycle.contains(to) {
            lines.push(format!("  {} -> {}: {}", name(from), name(to), sites.join(", ")));
        }
    }
    (title, lines.join("\n"))
}
