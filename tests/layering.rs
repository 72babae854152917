//! The module layering of `src/`: no import cycle between top-level modules, and the bottom
//! layers import nothing above them.
//!
//! Read from the source text rather than from the compiler, so it needs no build of its own and
//! fails with the edges that close a cycle. Every `crate::<top>` path counts, in code and in unit
//! tests alike (comments and string literals do not): a test module that reaches up is coupling
//! all the same. Paths that stay inside one top-level module (`super::`, `self::`) do not cross a
//! module boundary and are not edges.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The lower layers and all they may import. The bottom ones (`duration`, `timefmt`, `root`,
/// `failpoint`, `window`, `pki`, `policy`) are plain data and pure functions every other layer
/// uses; `pki` reads files through `root`'s safe walk, and `policy` assesses what `inventory`
/// found (discovery comes before assessment in the flow). The configuration depends on no
/// subsystem: subsystems read their table from it, and a subsystem's lower files get a settings
/// type of their own, built in the subsystem's `mod.rs` (`lease::etcd::EtcdOptions`,
/// `issuer::cfssl::Remote`).
const LOWER: &[(&str, &[&str])] = &[
    ("duration", &[]),
    ("timefmt", &[]),
    ("root", &[]),
    ("failpoint", &[]),
    ("window", &["duration", "timefmt"]),
    ("pki", &["duration", "timefmt", "root", "failpoint"]),
    (
        "policy",
        &["duration", "timefmt", "window", "pki", "inventory"],
    ),
    ("config", &["duration", "timefmt", "root", "pki", "window"]),
];

/// Edges that close a cycle or reach up today and are being cut; each must still exist (so the
/// list only shrinks), and the checks above hold with them left out.
const BEING_CUT: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeMap<String, Vec<String>>>;

#[test]
fn top_level_modules_form_no_cycle() {
    let mut graph = import_graph();
    for (from, to) in BEING_CUT {
        let edge = graph.get_mut(*from).and_then(|edges| edges.remove(*to));
        assert!(
            edge.is_some(),
            "{from} -> {to} is gone: take it off BEING_CUT"
        );
    }
    let cycles = cycles(&graph);
    // Printed on success too (`--nocapture`), so a note can quote the graph as it stands.
    for (from, edges) in &graph {
        let to: Vec<&str> = edges.keys().map(String::as_str).collect();
        println!("{from} -> {}", to.join(", "));
    }
    let mut report = String::new();
    for cycle in &cycles {
        report.push_str(&format!("cycle: {}\n", cycle.join(" <-> ")));
        for from in cycle {
            for (to, files) in &graph[from] {
                if cycle.contains(to) {
                    report.push_str(&format!("  {from} -> {to}: {}\n", files.join(", ")));
                }
            }
        }
    }
    print!("{report}");
    assert!(
        cycles.is_empty(),
        "import cycles between top-level modules:\n{report}"
    );
}

#[test]
fn lower_layers_import_only_what_they_may() {
    let graph = import_graph();
    let mut wrong = Vec::new();
    for (module, allowed) in LOWER {
        let Some(edges) = graph.get(*module) else {
            continue;
        };
        for (to, files) in edges {
            if !allowed.contains(&to.as_str()) && !BEING_CUT.contains(&(*module, to.as_str())) {
                wrong.push(format!("{module} -> {to}: {}", files.join(", ")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "lower layers reach up:\n{}",
        wrong.join("\n")
    );
}

/// Subsystems whose files below `mod.rs` get their own settings type: only the files listed
/// may import `config` (the boundary where the settings are built from it). `issuer` reads no
/// configuration at all (`issuer::cfssl::Remote` is built by its callers); `rotation` builds
/// `rotation::signing` from `[issuer]` and `[renew]` in its `mod.rs` (issue 12).
const CONFIG_ONLY_AT_THE_BOUNDARY: &[(&str, &[&str])] =
    &[("issuer", &[]), ("rotation", &["rotation/mod.rs"])];

#[test]
fn subsystems_read_the_configuration_only_at_their_boundary() {
    let graph = import_graph();
    let mut wrong = Vec::new();
    for (module, boundary) in CONFIG_ONLY_AT_THE_BOUNDARY {
        let files = graph
            .get(*module)
            .and_then(|edges| edges.get("config"))
            .cloned()
            .unwrap_or_default();
        for file in files {
            if !boundary.contains(&file.as_str()) {
                wrong.push(format!("{file} imports config"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "below the boundary, a subsystem takes its own settings type:\n{}",
        wrong.join("\n")
    );
}

/// The test's own reader, checked on the forms it must see and the ones it must not.
#[test]
fn the_reader_sees_paths_and_skips_comments_and_strings() {
    let text = r###"
        use crate::config::Settings;
        use crate::{pki::layout, policy::{Status, Windows}};
        // use crate::daemon::Daemon;
        /* crate::sandbox /* nested */ crate::store */
        let s = "crate::watch";
        let r = r#"crate::events "quoted""#;
        let c = '"'; let l: &'static str = "x"; crate::history::load();
        macro_rules! m { () => { $crate::logging::x() } }
    "###;
    let found: BTreeSet<String> = crate_paths(text).into_iter().collect();
    let expected: BTreeSet<String> = ["config", "pki", "policy", "history"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(found, expected);
}

/// `from -> to -> files that make the edge`, for every top-level module of `src/`.
fn import_graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let Some(top) = top_module(relative) else {
            continue;
        };
        let text =
            fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        let edges = graph.entry(top.clone()).or_default();
        for to in crate_paths(&text) {
            if to != top {
                let files = edges.entry(to).or_default();
                let name = relative.display().to_string();
                if !files.contains(&name) {
                    files.push(name);
                }
            }
        }
    }
    graph
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// `config/layer.rs` and `config.rs` belong to `config`; `lib.rs` and `main.rs` are the root.
fn top_module(relative: &Path) -> Option<String> {
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

/// The top-level module of every `crate::` path in `text`, outside comments and literals.
fn crate_paths(text: &str) -> Vec<String> {
    let code = strip_comments_and_literals(text);
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(offset) = code[at..].find("crate::") {
        let start = at + offset;
        at = start + "crate::".len();
        let before = start.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b == b'$' || b == b'_' || b.is_ascii_alphanumeric()) {
            continue;
        }
        let rest = &code[at..];
        if let Some(group) = rest.strip_prefix('{') {
            found.extend(group_heads(group));
        } else if let Some(head) = ident(rest) {
            found.push(head.to_string());
        }
    }
    found
}

/// The first segment of each item of a `{a::b, c, d::{e, f}}` group (text after the `{`).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 1;
    let mut item_start = true;
    let chars = group.char_indices();
    for (i, c) in chars {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => item_start = true,
            c if c.is_whitespace() => {}
            _ if item_start && depth == 1 => {
                item_start = false;
                if let Some(head) = ident(&group[i..])
                    && head != "self"
                {
                    heads.push(head.to_string());
                }
            }
            _ => {}
        }
    }
    heads
}

fn ident(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c == '_' || c.is_ascii_alphanumeric()))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// `text` with comments, string and char literals blanked (lengths kept), so a path written in
/// prose or in a message is no edge.
fn strip_comments_and_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if let Some(len) = raw_string_len(&chars[i..]) {
            i += len;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x', '\n', '\''); a lifetime ('a) has no closing quote.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The length of a raw string literal (`r"…"`, `r#"…"#`, `br"…"`) starting here, if one does.
fn raw_string_len(chars: &[char]) -> Option<usize> {
    let mut i = usize::from(chars.first() == Some(&'b'));
    if chars.get(i) != Some(&'r') {
        return None;
    }
    i += 1;
    let mut hashes = 0;
    while chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    if chars.get(i) != Some(&'"') {
        return None;
    }
    i += 1;
    while i < chars.len() {
        if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
            return Some(i + 1 + hashes);
        }
        i += 1;
    }
    Some(chars.len())
}

/// The strongly connected components with more than one module: each is a set of modules that
/// import one another in a ring (Tarjan's algorithm).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            let graph = self.graph;
            for w in graph.get(v).into_iter().flat_map(|edges| edges.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !tarjan.index.contains_key(v.as_str()) {
            tarjan.visit(v);
        }
    }
    tarjan.found
}
