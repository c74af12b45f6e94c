//! The workspace's layering, checked: which crate may depend on which (from `cargo metadata`),
//! and no import circles between the modules of a crate (from the `crate::`, `super::` and
//! `self::` paths each source file names).
//!
//! Rule for modules: a module may use what its ancestors define (a phase uses its engine's
//! context) and an ancestor may use its descendants; between any other two modules, the uses,
//! lifted to the children of their closest common ancestor, must form no circle. Unit tests
//! (`#[cfg(test)] mod tests`, at the end of a file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::repo_root;

/// Module path -> (module path it uses -> the first path that showed it, for the message).
type Uses = BTreeMap<Vec<String>, BTreeMap<Vec<String>, String>>;

#[test]
fn workspace_crates_depend_only_downwards() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let local: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let deps = |name: &str| -> BTreeSet<String> {
        let p = packages.iter().find(|p| p["name"] == name).unwrap();
        p["dependencies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"].is_null()) // normal dependencies, not dev or build
            .map(|d| d["name"].as_str().unwrap().to_string())
            .filter(|d| local.contains(d.as_str()))
            .collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(deps("kiln-signing"), set(&[]), "kiln-signing is the bottom");
    assert_eq!(deps("kiln-apply"), set(&["kiln-signing"]));
    assert_eq!(deps("kiln-builder"), set(&["kiln-signing", "kiln-apply"]));
    assert_eq!(deps("kiln-firstboot"), set(&["kiln-signing", "kiln-apply"]));
}

/// Circles that are known and tolerated: none. The test fails on any circle not listed here,
/// and on a listed one that is gone (so that a list, if one is ever needed, only shrinks).
const KNOWN_CIRCLES: &[&str] = &[];

#[test]
fn no_crate_has_an_import_circle_but_the_known_ones() {
    let root = repo_root();
    let mut found = Vec::new();
    for krate in ["signing", "apply", "firstboot", "builder"] {
        let src = root.join(krate).join("src");
        let uses = module_uses(&src);
        assert!(uses.len() > 3, "{krate}: no modules found under {src:?}");
        for circle in circles(&uses) {
            found.push(format!("{krate}: {circle}"));
        }
    }
    let name = |c: &String| c.split(": ").take(2).collect::<Vec<_>>().join(": ");
    let new: Vec<&String> = found
        .iter()
        .filter(|c| !KNOWN_CIRCLES.contains(&name(c).as_str()))
        .collect();
    assert!(new.is_empty(), "new import circles:\n  {new:#?}");
    let gone: Vec<&&str> = KNOWN_CIRCLES
        .iter()
        .filter(|k| !found.iter().any(|c| name(c) == **k))
        .collect();
    assert!(
        gone.is_empty(),
        "these circles are gone: take them off KNOWN_CIRCLES: {gone:?}"
    );
}

/// The checker finds a circle where there is one (and none in a layered tree).
#[test]
fn the_circle_check_finds_a_circle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    let write = |p: &str, s: &str| {
        let p = src.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, s).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a/mod.rs", "pub mod x;\nuse crate::b::B;\n");
    write(
        "a/x.rs",
        "use super::A; // parent: fine\nuse crate::c::{self, C};\n",
    );
    write("b.rs", "use crate::c::C;\n");
    write(
        "c.rs",
        "pub struct C;\n#[cfg(test)]\nmod tests { use crate::a::A; }\n",
    );
    // Unit tests in their own file may use the whole crate.
    write("b/tests.rs", "use crate::a::A;\n");
    assert_eq!(circles(&module_uses(src)), Vec::<String>::new());
    write("c.rs", "pub struct C;\nfn f() { crate::a::x::g() }\n");
    let found = circles(&module_uses(src));
    assert!(
        found
            .iter()
            .any(|c| c.starts_with("a -> c -> a: ") && c.contains("c uses crate::a::x::g")),
        "{found:?}"
    );
}

/// Every module of the crate under `src` (from its files) and the modules each one names.
fn module_uses(src: &Path) -> Uses {
    let mut files = Vec::new();
    walk(src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
        .filter_map(|f| Some((module_of(src, &f)?, f)))
        // Unit tests in a file of their own (`#[cfg(test)] mod tests;`), like those in a
        // module's own file below: tests may use the whole crate.
        .filter(|(m, _)| m.last().is_none_or(|s| s != "tests"))
        .collect();
    let mut uses = Uses::new();
    for (m, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let text = match text.find("#[cfg(test)]\nmod tests") {
            Some(i) => &text[..i],
            None => &text[..],
        };
        let text: String = text
            .lines()
            .map(|l| match l.find("//") {
                Some(i) => &l[..i],
                None => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        for path in paths(&text) {
            let mut segs: Vec<&str> = path.split("::").collect();
            let mut abs: Vec<String> = match segs[0] {
                "crate" => Vec::new(),
                "self" => m.clone(),
                "super" => {
                    let mut p = m.clone();
                    while segs.first() == Some(&"super") {
                        p.pop();
                        segs.remove(0);
                    }
                    segs.insert(0, "super");
                    p
                }
                _ => continue,
            };
            abs.extend(segs[1..].iter().map(|s| s.to_string()));
            // The longest prefix that is a module of a file.
            let target = (0..=abs.len())
                .rev()
                .map(|n| abs[..n].to_vec())
                .find(|p| modules.contains_key(p))
                .unwrap_or_default();
            if &target != m {
                uses.entry(m.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| path.clone());
            }
        }
        uses.entry(m.clone()).or_default();
    }
    uses
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// `lib.rs`/`main.rs` -> [], `a.rs` or `a/mod.rs` -> [a], `a/b.rs` -> [a, b]; `None` for a
/// second crate root (`bin/...`).
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut segs: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if segs == ["lib"] || segs == ["main"] {
        return Some(Vec::new());
    }
    if segs.first().is_some_and(|s| s == "bin") {
        return None;
    }
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    Some(segs)
}

/// Every `crate::`, `super::` and `self::` path in `text`, with `use` groups
/// (`crate::{a::b, c}`) expanded.
fn paths(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|k| bytes[i..].starts_with(k.as_bytes()));
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        match starts {
            Some(_) if boundary => {
                let (found, end) = path_at(text, i, "");
                out.extend(found);
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

/// Parses the path (or use tree) at `i`, prefixed by `prefix`; returns the paths and the end.
fn path_at(text: &str, mut i: usize, prefix: &str) -> (Vec<String>, usize) {
    let bytes = text.as_bytes();
    let mut path = prefix.to_string();
    loop {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
            i += 1;
        }
        path.push_str(&text[start..i]);
        if bytes[i..].starts_with(b"::{") {
            path.push_str("::");
            i += 3;
            let mut out = Vec::new();
            loop {
                while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b',') {
                    i += 1;
                }
                if i >= bytes.len() || bytes[i] == b'}' {
                    return (out, i + 1);
                }
                let (found, end) = path_at(text, i, &path);
                out.extend(found);
                // Skip `as name` and anything else up to the next item.
                i = end;
                while i < bytes.len() && bytes[i] != b',' && bytes[i] != b'}' {
                    i += 1;
                }
            }
        }
        if bytes[i..].starts_with(b"::") {
            path.push_str("::");
            i += 2;
            continue;
        }
        let path = path
            .trim_end_matches("::self")
            .trim_end_matches("::")
            .to_string();
        return (vec![path], i);
    }
}

/// The circles of `uses`, each as `a -> b -> a` (children of the same module, by the rule of
/// the module documentation), with the paths that make each step.
fn circles(uses: &Uses) -> Vec<String> {
    // Lifted edges: parent -> (child -> child it uses, why).
    let mut levels: BTreeMap<Vec<String>, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for (from, targets) in uses {
        for (to, why) in targets {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // one is the other's ancestor
            }
            levels
                .entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .entry(to[common].clone())
                .or_insert_with(|| format!("{} uses {why}", display(from)));
        }
    }
    let mut found = BTreeSet::new();
    for (parent, graph) in &levels {
        for start in graph.keys() {
            // Depth-first from `start`, looking for a way back to it.
            let mut stack = vec![(start.clone(), vec![start.clone()], Vec::<String>::new())];
            let mut seen = BTreeSet::new();
            while let Some((node, trail, whys)) = stack.pop() {
                for (next, why) in graph.get(&node).into_iter().flatten() {
                    let mut whys = whys.clone();
                    whys.push(why.clone());
                    if next == start {
                        let mut names = trail.clone();
                        names.push(start.clone());
                        // One report per circle, whichever module it starts from.
                        let mut key = trail.clone();
                        key.sort();
                        if found.iter().all(|(k, _): &(Vec<String>, String)| k != &key) {
                            let at = if parent.is_empty() {
                                String::new()
                            } else {
                                format!(" (in {})", display(parent))
                            };
                            found.insert((
                                key,
                                format!("{}{at}: {}", names.join(" -> "), whys.join("; ")),
                            ));
                        }
                    } else if seen.insert(next.clone()) {
                        let mut trail = trail.clone();
                        trail.push(next.clone());
                        stack.push((next.clone(), trail, whys));
                    }
                }
            }
        }
    }
    found.into_iter().map(|(_, s)| s).collect()
}

fn display(m: &[String]) -> String {
    if m.is_empty() {
        "the crate root".into()
    } else {
        m.join("::")
    }
}
