//! The host's dependency direction, checked: every top-level module (a folder under `src/`)
//! may use only the modules in layers below it, so the graph has no cycle and a reader can
//! learn the host bottom-up. ARCHITECTURE.md draws the same picture.
//!
//! The check reads the sources: every `crate::<module>` path outside comments, in every file
//! of a folder, counts as a use of `<module>` by that folder. Within a folder, the files other
//! than `mod.rs` must not form a cycle among themselves either (`super::x` and `crate::<same
//! folder>::x` paths are read the same way).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first. A module may use modules of its own layer's predecessors only.
const LAYERS: &[&[&str]] = &[
    &["io"],
    &["plot"],
    &["plugins"],
    &["config"],
    &["engine"],
    &["data"],
    &["diffusion"],
    &["eval"],
    &["run"],
    &["study"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Source text without `//` comments (doc comments included) and string literals' contents.
fn code_only(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let mut in_str = false;
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if !in_str && c == '/' && chars.peek() == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' && prev != '\'' {
                in_str = !in_str;
            } else if !in_str {
                out.push(c);
            }
            prev = c;
        }
        out.push('\n');
    }
    out
}

/// Every identifier that follows `prefix` (`crate::`, `super::`) in `code`.
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut v = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().next_back();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        v.push(&rest[..end]);
    }
    v
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `folder -> used folders` and, per folder, `file -> used sibling files`.
type Uses = BTreeMap<String, BTreeSet<String>>;

fn read_uses() -> (Uses, BTreeMap<String, Uses>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut top = Uses::new();
    let mut within: BTreeMap<String, Uses> = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap();
        let parts: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if parts.len() == 1 {
            continue; // lib.rs, main.rs, this file: the crate root declares, it does not use.
        }
        let folder = parts[0].clone();
        let file = parts[1].clone();
        let code = code_only(&std::fs::read_to_string(&f).unwrap());
        for m in paths_after(&code, "crate::") {
            if m != folder && m.chars().next().is_some_and(|c| c.is_lowercase()) {
                top.entry(folder.clone()).or_default().insert(m.to_string());
            }
        }
        if parts.len() == 2 && file != "mod" {
            let siblings = within.entry(folder.clone()).or_default();
            let mut used: BTreeSet<String> = paths_after(&code, "super::")
                .into_iter()
                .map(str::to_string)
                .collect();
            let own = format!("{folder}::");
            used.extend(
                paths_after(&code, &format!("crate::{own}"))
                    .into_iter()
                    .map(str::to_string),
            );
            used.remove(&file);
            siblings.entry(file).or_default().extend(used);
        }
    }
    (top, within)
}

/// A cycle in `g` restricted to its own keys, if any.
fn find_cycle(g: &Uses) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Uses,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g
            .get(n)
            .into_iter()
            .flatten()
            .filter(|m| g.contains_key(*m))
        {
            match state.get(m).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[at..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, g, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn every_folder_uses_only_lower_layers() {
    let (top, _) = read_uses();
    let mut wrong = Vec::new();
    for (folder, used) in &top {
        let Some(l) = layer_of(folder) else {
            wrong.push(format!(
                "`{folder}` is in no layer: add it to LAYERS and ARCHITECTURE.md"
            ));
            continue;
        };
        for u in used {
            match layer_of(u) {
                Some(lu) if lu < l => {}
                Some(_) => wrong.push(format!("`{folder}` uses `{u}`, which is not below it")),
                None => {}
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn files_within_a_folder_form_no_cycle() {
    let (_, within) = read_uses();
    for (folder, g) in &within {
        if let Some(c) = find_cycle(g) {
            panic!("import cycle in {folder}/: {}", c.join(" → "));
        }
    }
}

#[test]
fn the_checker_sees_uses_and_cycles() {
    let code = code_only("use crate::config::X; // crate::study\nlet s = \"crate::cli\";\n");
    assert_eq!(paths_after(&code, "crate::"), vec!["config"]);
    let mut g = Uses::new();
    g.insert("a".into(), ["b".to_string()].into());
    g.insert("b".into(), ["c".to_string()].into());
    g.insert("c".into(), ["a".to_string()].into());
    assert_eq!(find_cycle(&g).unwrap(), vec!["a", "b", "c", "a"]);
    g.get_mut("c").unwrap().clear();
    assert!(find_cycle(&g).is_none());
}
