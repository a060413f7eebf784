//! The layer rules of the crate, checked by reading its own source (a unit test, run by CI).
//!
//! Why a test and not a convention: eleven rounds of features let imports creep both ways until
//! three files imported each other in a ring and a reader could not tell which layer owned what.
//! The rules, from the top down:
//!
//! 1. user API: `lib.rs`, `cluster`, `client`, `session`, `debug`, and `rpc` (the gRPC service,
//!    which calls into the node the way an application does), and `simulation` (drives whole
//!    nodes)
//! 2. node: the run loop and its handle (`node`)
//! 3. `storage`, `transport`, `state_machine`
//! 4. `config`, `error`, `tls`, `metrics`
//!
//! A file may import files of its own layer or of layers below it. No two files may import each
//! other, directly or through others (a cycle), except the ones listed in `KNOWN_CYCLES`, which
//! are debts with an issue, and at most `MAX_UPWARD` imports may point up a layer, none of them
//! from `node` to the user API.
//!
//! How imports are found: every `use` item and every `crate::a::b` path in code (comments are
//! skipped). A path is resolved through the module tree to the file that defines the item; a
//! name a `mod.rs` re-exports (`pub use child::Name`) resolves to the child that defines it, so
//! importing through a re-export counts as importing the defining file.

#![cfg(test)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Imports that may point up a layer (see the module docs).
const MAX_UPWARD: usize = 3;

/// Cycles that exist today and are to be removed (each as its files, sorted). The check fails on
/// any other cycle, and on a listed one that no longer exists (so the list only shrinks).
const KNOWN_CYCLES: &[&[&str]] = &[
    // `submit` is an `impl RaftNode` block in a file of its own (issue 22: owners, not halves).
    &["node::handle", "node::submit"],
    // The run loop's methods live in several files that import the loop back (issue 22).
    &["node::removal", "node::run_loop", "node::snapshotting"],
];

/// The layer of a module path (its first segment), 1 = top.
fn layer(module: &[String]) -> usize {
    match module.first().map(String::as_str) {
        None
        | Some(
            "cluster" | "client" | "session" | "debug" | "rpc" | "layers" | "fuzzing"
            | "simulation",
        ) => 1,
        Some("node") => 2,
        Some("storage" | "transport" | "state_machine") => 3,
        Some(_) => 4,
    }
}

/// One source file: its module path and what it imports.
struct SourceFile {
    /// Child modules declared in it (`mod x;`).
    children: BTreeSet<String>,
    /// Names it re-exports with `use`, and the path each comes from (as written).
    uses: BTreeMap<String, Vec<String>>,
    /// Every path it imports, as written (`crate::`, `super::`, `self::` or a child's name).
    imports: Vec<Vec<String>>,
}

/// Code without comments (line comments, doc comments and block comments) and string literals.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
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
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if !escaped && c == '"' {
                        break;
                    }
                    escaped = !escaped && c == '\\';
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Expand one `use` tree (`a::{b, c::d as e}`) into its paths and the names they bind.
fn expand_use(tree: &str, prefix: &[String], out: &mut Vec<(Vec<String>, String)>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let mut base = prefix.to_vec();
        base.extend(head);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand_use(&inner[start..i], &base, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand_use(&inner[start..], &base, out);
        return;
    }
    if tree.is_empty() {
        return;
    }
    let (path, alias) = match tree.split_once(" as ") {
        Some((p, a)) => (p.trim(), Some(a.trim())),
        None => (tree, None),
    };
    let mut full = prefix.to_vec();
    full.extend(path.split("::").map(|s| s.trim().to_string()));
    let name = alias
        .map(String::from)
        .or_else(|| full.last().cloned())
        .unwrap_or_default();
    out.push((full, name));
}

fn parse(text: &str) -> SourceFile {
    let mut code = strip(text);
    // A file's unit tests (`#[cfg(test)] mod tests { .. }`, last by convention) may import
    // anything; they are not part of the layers.
    if let Some(at) = code.find("#[cfg(test)]\nmod tests {") {
        code.truncate(at);
    }
    let mut children = BTreeSet::new();
    let mut uses = BTreeMap::new();
    let mut imports = Vec::new();
    // `mod x;` declarations and `use` items (which may span lines), found at the start of a
    // line (rustfmt puts every item there), after any visibility.
    let mut lines = code.lines();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        let (visibility, rest) = match trimmed.split_once(' ') {
            Some((first, rest)) if first.starts_with("pub") => (true, rest.trim_start()),
            _ => (false, trimmed),
        };
        let (kw, rest) = match rest.split_once(' ') {
            Some((kw @ ("use" | "mod"), rest)) => (kw, rest),
            _ => continue,
        };
        let mut item = rest.to_string();
        while !(item.contains(';') || kw == "mod" && item.contains('{')) {
            match lines.next() {
                Some(next) => {
                    item.push(' ');
                    item.push_str(next.trim());
                }
                None => break,
            }
        }
        let item = item.split(';').next().unwrap_or("").trim().to_string();
        if kw == "mod" {
            if !item.contains('{') && !item.is_empty() {
                children.insert(item);
            }
            continue;
        }
        let mut expanded = Vec::new();
        expand_use(&item, &[], &mut expanded);
        for (path, name) in expanded {
            uses.insert(name, path.clone());
            // A `pub use` only re-exports: the file's own code does not depend on it.
            if !visibility {
                imports.push(path);
            }
        }
    }
    // `crate::a::b` paths in expressions and types (not in `use` items, handled above).
    let mut in_use_item = vec![false; code.len()];
    let mut offset = 0;
    for line in code.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let rest = match trimmed.split_once(' ') {
            Some((first, rest)) if first.starts_with("pub") => rest.trim_start(),
            _ => trimmed,
        };
        if rest.starts_with("use ") {
            let end = code[offset..].find(';').map_or(code.len(), |e| offset + e);
            in_use_item[offset..end].fill(true);
        }
        offset += line.len();
    }
    let inline = code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
        .map(|(at, _)| at)
        .collect::<BTreeSet<usize>>();
    for at in inline {
        if in_use_item[at] {
            continue;
        }
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let path: Vec<String> = code[at..]
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or("")
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        imports.push(path);
    }
    SourceFile {
        children,
        uses,
        imports,
    }
}

/// Every `.rs` file under `src/` with its module path.
fn load(src: &Path) -> BTreeMap<Vec<String>, (PathBuf, SourceFile)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(src, &mut paths);
    let mut files = BTreeMap::new();
    for path in paths {
        let rel = path.strip_prefix(src).expect("under src");
        let mut module: Vec<String> = rel
            .with_extension("")
            .iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        if module.last().is_some_and(|m| m == "mod" || m == "lib") {
            module.pop();
        }
        if module.last().is_some_and(|m| m == "tests") {
            continue; // a unit test module in a file of its own
        }
        let text = std::fs::read_to_string(&path).expect("read source");
        let file = parse(&text);
        files.insert(module, (rel.to_path_buf(), file));
    }
    files
}

/// The file (module path) that defines what `path` (as written in `from`) names.
fn resolve(
    files: &BTreeMap<Vec<String>, (PathBuf, SourceFile)>,
    from: &[String],
    path: &[String],
    depth: usize,
) -> Option<Vec<String>> {
    if depth > 8 {
        return None;
    }
    let mut module: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") => from[..from.len().saturating_sub(1)].to_vec(),
        Some("self") => from.to_vec(),
        Some(first)
            if files
                .get(from)
                .is_some_and(|(_, f)| f.children.contains(first)) =>
        {
            from.to_vec()
        }
        _ => return None, // another crate (std, raft, tokio, ...)
    };
    let skip = usize::from(matches!(
        path.first().map(String::as_str),
        Some("crate" | "super" | "self")
    ));
    let mut rest = &path[skip..];
    while let Some(seg) = rest.first() {
        if seg == "super" {
            module.pop();
            rest = &rest[1..];
            continue;
        }
        let (_, file) = files.get(&module)?;
        if file.children.contains(seg) {
            module.push(seg.clone());
            rest = &rest[1..];
            continue;
        }
        // An item of this module: defined here, or re-exported from elsewhere.
        if let Some(source) = file.uses.get(seg) {
            if let Some(found) = resolve(files, &module, source, depth + 1) {
                return Some(found);
            }
        }
        return Some(module);
    }
    Some(module)
}

/// File-level import edges (importer -> imported), without self-edges.
fn edges(
    files: &BTreeMap<Vec<String>, (PathBuf, SourceFile)>,
) -> BTreeSet<(Vec<String>, Vec<String>)> {
    let mut out = BTreeSet::new();
    for (module, (_, file)) in files {
        for path in &file.imports {
            if let Some(target) = resolve(files, module, path, 0) {
                if target != *module && files.contains_key(&target) {
                    out.insert((module.clone(), target));
                }
            }
        }
    }
    out
}

/// Strongly connected components of more than one file (Tarjan).
fn cycles(edges: &BTreeSet<(Vec<String>, Vec<String>)>) -> Vec<Vec<String>> {
    let mut graph: BTreeMap<&Vec<String>, Vec<&Vec<String>>> = BTreeMap::new();
    for (a, b) in edges {
        graph.entry(a).or_default().push(b);
        graph.entry(b).or_default();
    }
    struct State<'a> {
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(
        v: &'a Vec<String>,
        graph: &BTreeMap<&'a Vec<String>, Vec<&'a Vec<String>>>,
        st: &mut State<'a>,
    ) {
        let n = st.index.len();
        st.index.insert(v, n);
        st.low.insert(v, n);
        st.stack.push(v);
        st.on_stack.insert(v);
        for &w in &graph[v] {
            if !st.index.contains_key(w) {
                visit(w, graph, st);
                let low = st.low[v].min(st.low[w]);
                st.low.insert(v, low);
            } else if st.on_stack.contains(w) {
                let low = st.low[v].min(st.index[w]);
                st.low.insert(v, low);
            }
        }
        if st.low[v] == st.index[v] {
            let mut component = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on_stack.remove(w);
                component.push(w.join("::"));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                st.out.push(component);
            }
        }
    }
    let mut st = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !st.index.contains_key(v) {
            visit(v, &graph, &mut st);
        }
    }
    st.out.sort();
    st.out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn module_name(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_import_cycles_between_files_beyond_the_known_ones() {
    let files = load(&src_dir());
    let found = cycles(&edges(&files));
    let known: Vec<Vec<String>> = KNOWN_CYCLES
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    let new: Vec<&Vec<String>> = found.iter().filter(|c| !known.contains(c)).collect();
    let gone: Vec<&Vec<String>> = known.iter().filter(|c| !found.contains(c)).collect();
    assert!(
        new.is_empty(),
        "import cycles between files (each line one cycle); break them by moving the shared \
         item down a layer or passing it in:\n{}",
        new.iter()
            .map(|c| c.join(" <-> "))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        gone.is_empty(),
        "these known cycles are gone: remove them from KNOWN_CYCLES:\n{gone:?}"
    );
}

#[test]
fn imports_point_down_the_layers() {
    let files = load(&src_dir());
    let upward: Vec<String> = edges(&files)
        .into_iter()
        .filter(|(a, b)| layer(b) < layer(a))
        .map(|(a, b)| format!("{} -> {}", module_name(&a), module_name(&b)))
        .collect();
    let from_node_to_api: Vec<&String> = upward
        .iter()
        .filter(|e| e.starts_with("node") && layer_of_target(e) == 1)
        .collect();
    assert!(
        from_node_to_api.is_empty(),
        "the node layer imports the user API: {from_node_to_api:?}"
    );
    assert!(
        upward.len() <= MAX_UPWARD,
        "{} imports point up a layer (at most {MAX_UPWARD}):\n{}",
        upward.len(),
        upward.join("\n")
    );
}

fn layer_of_target(edge: &str) -> usize {
    let target = edge.split(" -> ").nth(1).unwrap_or("");
    let module: Vec<String> = target.split("::").map(String::from).collect();
    layer(&module)
}

#[test]
fn the_checker_sees_a_cycle_and_resolves_re_exports() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    };
    write("lib.rs", "mod a;\nmod b;\n");
    write("a/mod.rs", "mod inner;\npub use inner::Thing;\n");
    write(
        "a/inner.rs",
        "// use crate::b::Gone; (a comment)\nuse crate::b::Other;\npub struct Thing;\n",
    );
    write("b.rs", "use crate::a::{Thing as T};\npub struct Other;\n");
    let files = load(dir.path());
    let e = edges(&files);
    let s = |m: &str| m.split("::").map(String::from).collect::<Vec<_>>();
    assert!(e.contains(&(s("b"), s("a::inner"))), "{e:?}");
    assert!(e.contains(&(s("a::inner"), s("b"))), "{e:?}");
    assert_eq!(
        cycles(&e),
        vec![vec!["a::inner".to_string(), "b".to_string()]]
    );
}
