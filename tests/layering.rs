//! The source reads top-down: no file of `src/` imports (through `crate::`, `super::` or
//! `self::` paths, test modules aside) a file that imports it back, directly or through others,
//! and no top-level module imports one that imports it. A new circle fails here with its
//! files named.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file of `src/` by module path (`train::step`; a `mod.rs` is its folder's module).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            let mut pre = prefix.to_vec();
            pre.push(name);
            modules(&p, &pre, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            // Test-only files (`#[cfg(test)] mod tests;`) are not part of the layering.
            if stem == "tests" {
                continue;
            }
            let mut m = prefix.to_vec();
            if !matches!(stem, "mod" | "lib" | "main") {
                m.push(stem.to_string());
            }
            out.insert(m.join("::"), p.clone());
        }
    }
}

/// The text before the file's `#[cfg(test)] mod tests` block.
fn non_test(src: &str) -> &str {
    match src.find("#[cfg(test)]\nmod tests") {
        Some(i) => &src[..i],
        None => src,
    }
}

/// The module a path like `crate::a::b::C` or `super::x::Y` names, seen from `module`: the
/// longest prefix that is a file (`super` is one level up per occurrence, `self` the module).
fn resolve(files: &BTreeMap<String, PathBuf>, module: &str, path: &[&str]) -> Option<String> {
    let mut cur: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let mut rest = path;
    match rest.first() {
        Some(&"crate") => {
            cur.clear();
            rest = &rest[1..];
        }
        Some(&"super") => {
            while rest.first() == Some(&"super") {
                cur.pop();
                rest = &rest[1..];
            }
        }
        Some(&"self") => rest = &rest[1..],
        _ => return None,
    }
    (0..=rest.len()).rev().find_map(|i| {
        let cand: Vec<&str> = cur
            .iter()
            .copied()
            .chain(rest[..i].iter().copied())
            .collect();
        let c = cand.join("::");
        files.contains_key(&c).then_some(c)
    })
}

/// The import edges of every file.
fn graph(files: &BTreeMap<String, PathBuf>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, p) in files {
        let text = std::fs::read_to_string(p).unwrap();
        let s = non_test(&text);
        // Every `crate::..`, `super::..`, `self::..` path, groups `{a, b::c}` expanded.
        for start in ["crate::", "super::", "self::"] {
            let mut from = 0;
            while let Some(i) = s[from..].find(start) {
                let at = from + i;
                from = at + start.len();
                let before = s[..at].chars().last().unwrap_or(' ');
                if before.is_alphanumeric() || before == '_' {
                    continue;
                }
                let tail: String = s[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':' || *c == '{')
                    .collect();
                let tail = tail.trim_end_matches(':');
                let mut targets = Vec::new();
                match tail.find('{') {
                    Some(b) => {
                        let base = tail[..b].trim_end_matches(':').to_string();
                        let group_end = s[at + b..].find('}').map(|e| at + b + e).unwrap_or(at + b);
                        targets.push(base.clone());
                        for part in s[at + b + 1..group_end].split(',') {
                            let part = part.trim().split(" as ").next().unwrap_or("");
                            let part = part.split("::{").next().unwrap_or("").trim();
                            if !part.is_empty() && part != "self" {
                                targets.push(format!("{base}::{part}"));
                            }
                        }
                    }
                    None => targets.push(tail.to_string()),
                }
                for t in targets {
                    let segs: Vec<&str> = t.split("::").filter(|x| !x.is_empty()).collect();
                    if let Some(r) = resolve(files, m, &segs) {
                        if &r != m {
                            edges.entry(m.clone()).or_default().insert(r);
                        }
                    }
                }
            }
        }
    }
    edges
}

/// Tarjan's strongly connected components: the state of one walk.
#[derive(Default)]
struct Tarjan {
    index: BTreeMap<String, usize>,
    low: BTreeMap<String, usize>,
    stack: Vec<String>,
    on: BTreeSet<String>,
    out: Vec<Vec<String>>,
    next: usize,
}

impl Tarjan {
    fn visit(&mut self, v: &str, edges: &BTreeMap<String, BTreeSet<String>>) {
        self.index.insert(v.to_string(), self.next);
        self.low.insert(v.to_string(), self.next);
        self.next += 1;
        self.stack.push(v.to_string());
        self.on.insert(v.to_string());
        for w in edges.get(v).into_iter().flatten() {
            let seen = self.index.get(w).copied();
            let reach = match seen {
                None => {
                    self.visit(w, edges);
                    Some(self.low[w])
                }
                Some(i) if self.on.contains(w) => Some(i),
                Some(_) => None,
            };
            if let Some(r) = reach {
                let lv = self.low[v].min(r);
                self.low.insert(v.to_string(), lv);
            }
        }
        if self.low[v] == self.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                self.out.push(comp);
            }
        }
    }
}

/// The strongly connected components with more than one member: the import circles.
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<String> = edges
        .iter()
        .flat_map(|(a, bs)| std::iter::once(a.clone()).chain(bs.iter().cloned()))
        .collect();
    let mut t = Tarjan::default();
    for v in &nodes {
        if !t.index.contains_key(v) {
            t.visit(v, edges);
        }
    }
    t.out
}

fn describe(c: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> String {
    c.iter()
        .map(|a| {
            let to: Vec<&String> = edges
                .get(a)
                .into_iter()
                .flatten()
                .filter(|b| c.contains(b))
                .collect();
            format!("{a} -> {to:?}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[test]
fn no_file_or_top_level_module_imports_one_that_imports_it() {
    let mut files = BTreeMap::new();
    modules(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src").as_path(),
        &[],
        &mut files,
    );
    assert!(files.contains_key("train::step") && files.contains_key(""));
    let edges = graph(&files);
    // The graph is real: the step imports the micro-batch, the stage the run directory.
    assert!(edges["train::step"].contains("train::micro"));
    assert!(edges["train::stage"].contains("run"));
    let c = circles(&edges);
    let msg: Vec<String> = c.iter().map(|x| describe(x, &edges)).collect();
    assert!(c.is_empty(), "import circles between files: {msg:#?}");
    // Top-level modules (`commands` and the crate root dispatch to everything: left out).
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, bs) in &edges {
        let ta = a.split("::").next().unwrap_or("").to_string();
        for b in bs {
            let tb = b.split("::").next().unwrap_or("").to_string();
            if ta != tb && !ta.is_empty() && !tb.is_empty() && ta != "commands" {
                top.entry(ta.clone()).or_default().insert(tb);
            }
        }
    }
    let c = circles(&top);
    let msg: Vec<String> = c.iter().map(|x| describe(x, &top)).collect();
    assert!(
        c.is_empty(),
        "import circles between top-level modules: {msg:#?}"
    );
}

#[test]
fn the_checker_finds_a_circle() {
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    e.entry("a".into()).or_default().insert("b".into());
    e.entry("b".into()).or_default().insert("c".into());
    e.entry("c".into()).or_default().insert("a".into());
    e.entry("c".into()).or_default().insert("d".into());
    assert_eq!(
        circles(&e),
        vec![vec!["a".to_string(), "b".into(), "c".into()]]
    );
}
