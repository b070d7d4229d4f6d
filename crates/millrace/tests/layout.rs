//! The library's layout rules, read from its source as text (run alone with
//! `cargo test -p millrace --test layout`):
//!
//! - its top-level modules import one way only: no two of them import each other, directly or
//!   through others (every `crate::<module>` path outside comments and `#[cfg(test)]` items, per
//!   top-level module, a name re-exported at the crate root counted as its module, and the
//!   strongly connected components of that graph, by Tarjan);
//! - no file holds more than [`MAX_LINES`] lines outside its tests (doc comments and comments
//!   counted; blank lines and `#[cfg(test)]` items not): a file that grows past it is split by
//!   concept;
//! - every file opens with a `//!` line that says what it owns.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The most non-blank lines outside tests one library file may hold.
const MAX_LINES: usize = 400;

/// Which top-level module imports which, with the files the paths are in.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src` without the items under `#[cfg(test)]`.
fn outside_tests(src: &str) -> String {
    let mut out = String::new();
    let mut lines = src.lines();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            // Skip the next item: a `mod x;` line, or up to the brace that closes it.
            let mut depth = 0i64;
            let mut opened = false;
            for line in lines.by_ref() {
                depth += line.matches('{').count() as i64 - line.matches('}').count() as i64;
                opened |= line.contains('{');
                if (opened && depth <= 0) || (!opened && line.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The code of `src` without comments and without the items under `#[cfg(test)]`.
fn code_outside_tests(src: &str) -> String {
    outside_tests(src)
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The modules `code` names as `crate::<module>`, also inside `crate::{a, b::c}`.
fn named_modules(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut names = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            names.extend(group.split(',').map(ident));
        } else {
            names.insert(ident(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// The names `lib.rs` re-exports at the crate root (`pub use module::{A, b};`), with their module,
/// so that `crate::A` counts as a use of `module`.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    for statement in code_outside_tests(lib).split(';') {
        let Some(path) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim_start_matches('{').trim_end_matches('}');
        for item in items.split(',') {
            let name = item.rsplit("::").next().unwrap_or(item).trim();
            if !name.is_empty() {
                names.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    names
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let reexports = root_reexports(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    assert!(reexports.contains_key("ConsumerId"), "{reexports:?}");
    let mut graph = Graph::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let name = rel.file_name().unwrap().to_str().unwrap();
        // Test-only files (declared under `#[cfg(test)]`).
        if name == "tests.rs" || name == "proptests.rs" {
            continue;
        }
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let top = top.strip_suffix(".rs").unwrap_or(top).to_owned();
        if top == "lib" {
            continue;
        }
        let code = code_outside_tests(&std::fs::read_to_string(&file).unwrap());
        let edges = graph.entry(top.clone()).or_default();
        for name in named_modules(&code) {
            let module = reexports.get(&name).cloned().unwrap_or(name);
            if module != top {
                edges
                    .entry(module)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    graph
}

/// The strongly connected components of `graph` with more than one module.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        graph: &'a Graph,
        next: usize,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let at = self.stack.iter().rposition(|x| *x == v).unwrap();
                let component: Vec<String> = self.stack.drain(at..).map(str::to_owned).collect();
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        next: 0,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !tarjan.index.contains_key(v.as_str()) {
            tarjan.visit(v);
        }
    }
    tarjan.found
}

#[test]
fn no_two_top_level_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph(&src);
    assert!(
        graph.len() > 20,
        "the modules were read: {:?}",
        graph.keys()
    );
    let mut report = String::new();
    for cycle in cycles(&graph) {
        report.push_str(&format!("cycle: {}\n", cycle.join(", ")));
        for a in &cycle {
            for (b, files) in &graph[a] {
                if cycle.contains(b) {
                    report.push_str(&format!("  {a} -> {b} in {files:?}\n"));
                }
            }
        }
    }
    assert!(report.is_empty(), "import cycles:\n{report}");
}

/// Lines of `text` that are not blank.
fn non_blank(text: &str) -> usize {
    text.lines().filter(|l| !l.trim().is_empty()).count()
}

#[test]
fn no_library_file_is_over_the_line_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 50, "the files were read: {files:?}");
    let mut over: Vec<String> = files
        .iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_str().unwrap();
            name != "tests.rs" && name != "proptests.rs"
        })
        .filter_map(|f| {
            let n = non_blank(&outside_tests(&std::fs::read_to_string(f).unwrap()));
            (n > MAX_LINES)
                .then(|| format!("{} ({n} lines)", f.strip_prefix(&src).unwrap().display()))
        })
        .collect();
    over.sort();
    assert!(
        over.is_empty(),
        "over {MAX_LINES} lines outside tests; split each by concept: {over:#?}"
    );
}

#[test]
fn every_library_file_says_first_what_it_owns() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut silent: Vec<String> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            !text.trim_start().starts_with("//!")
        })
        .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
        .collect();
    silent.sort();
    assert!(
        silent.is_empty(),
        "files that do not open with a `//!` line saying what they own: {silent:#?}"
    );
}

#[test]
fn the_checks_see_a_cycle_and_count_code_only() {
    let mut graph = Graph::new();
    for (a, b) in [
        ("decode", "trace"),
        ("trace", "handler"),
        ("handler", "decode"),
    ] {
        graph
            .entry(a.to_owned())
            .or_default()
            .insert(b.to_owned(), BTreeSet::new());
    }
    graph.entry("entry".to_owned()).or_default();
    let found = cycles(&graph);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 3, "{found:?}");
    let code = code_outside_tests(
        "use crate::{a::X, b};\n// crate::c\n#[cfg(test)]\nmod tests {\n    use crate::d;\n}\nfn f() { crate::e::g() }\n",
    );
    assert_eq!(
        named_modules(&code),
        ["a", "b", "e"].into_iter().map(str::to_owned).collect()
    );
    assert_eq!(non_blank(&code), 2, "{code}");
    let reexports = root_reexports("pub use a::{B, c::D};\npub use e::F;\nuse g::H;\n");
    assert_eq!(
        reexports.into_iter().collect::<Vec<_>>(),
        [("B", "a"), ("D", "a"), ("F", "e")].map(|(n, m)| (n.to_owned(), m.to_owned()))
    );
    let kept = outside_tests("/// doc\nfn f() {}\n\n#[cfg(test)]\nmod tests {\n    fn g() {}\n}\n");
    assert_eq!(non_blank(&kept), 2, "{kept}");
}
