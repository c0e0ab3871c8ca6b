//! The layering of `src/` (docs/DESIGN.md): every import points down.
//!
//! `error (and sync) → crypto → format → storage → table → query → engine → (migrate,
//! fuzzing, the CLI)`: a file may name (`crate::...`) only its own layer and
//! the layers below it. Names the crate root re-exports (`crate::Error`,
//! `crate::FileKind`, ...) count as the layer that defines them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, lowest first.
const LAYERS: &[&str] = &["error", "crypto", "format", "storage", "table", "query", "engine", "top"];

/// The layer of a top-level module of the crate.
fn layer_of_module(m: &str) -> Option<usize> {
    let name = match m {
        "migrate" | "fuzzing" | "db" | "txn" => "top",
        // The lock helper sits with the error type at the bottom.
        "sync" => "error",
        other => other,
    };
    LAYERS.iter().position(|l| *l == name)
}

/// The first path segment of every `crate::...` path in `src` (a `use
/// crate::{A, b::C}` group gives `A` and `b`), with its line.
fn crate_paths(src: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in src.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                // Top-level items of the group (it may span lines; the rest is
                // looked at line by line, which catches nested `crate::` too).
                let mut depth = 0;
                let mut item = String::new();
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.push((n + 1, first_segment(&item)));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(c);
                }
                if !item.trim().is_empty() {
                    out.push((n + 1, first_segment(&item)));
                }
            } else {
                out.push((n + 1, first_segment(after)));
            }
            rest = after;
        }
    }
    out.retain(|(_, s)| !s.is_empty());
    out
}

fn first_segment(s: &str) -> String {
    s.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Names the crate root re-exports, and the layer each comes from.
fn root_reexports(lib: &str) -> BTreeMap<String, usize> {
    let mut map = BTreeMap::new();
    let flat: String = lib.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join(" ");
    for stmt in flat.split(';') {
        let stmt = stmt.trim();
        let Some(path) = stmt.strip_prefix("pub use ") else { continue };
        let module = first_segment(path);
        let Some(layer) = layer_of_module(&module) else { continue };
        let names: Vec<&str> = match (path.find('{'), path.rfind('}')) {
            (Some(a), Some(b)) => path[a + 1..b].split(',').collect(),
            _ => vec![path.rsplit("::").next().unwrap_or("")],
        };
        for n in names {
            let n = n.trim().rsplit("::").next().unwrap_or("").trim();
            if !n.is_empty() {
                map.insert(n.to_string(), layer);
            }
        }
    }
    map
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

/// Every import in `src/` that points up, as "file:line: layer → layer (name)".
fn violations(src: &Path) -> Vec<String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let roots = root_reexports(&lib);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut bad = Vec::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs");
        let own = match module {
            "lib" | "bin" => LAYERS.len(), // the root and the CLI may use everything
            m => layer_of_module(m).unwrap_or_else(|| panic!("{} is in no layer: add it to LAYERS", rel.display())),
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (line, seg) in crate_paths(&text) {
            let target = layer_of_module(&seg).or_else(|| roots.get(&seg).copied());
            if let Some(t) = target
                && t > own
            {
                bad.push(format!("{}:{line}: {} → {} ({seg})", rel.display(), LAYERS[own], LAYERS[t]));
            }
        }
    }
    bad
}

#[test]
fn every_import_in_src_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let bad = violations(&src);
    assert!(bad.is_empty(), "imports that point up the layers:\n{}", bad.join("\n"));
}

#[test]
fn the_check_catches_an_import_that_points_up() {
    // A copy of the tree with one lower-layer file naming the engine.
    let t = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in &files {
        let to = t.path().join(f.strip_prefix(&src).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(f, to).unwrap();
    }
    let victim = t.path().join("storage/segment.rs");
    let text = std::fs::read_to_string(&victim).unwrap();
    std::fs::write(&victim, format!("use crate::engine::Options;\n{text}")).unwrap();
    let bad = violations(t.path());
    assert_eq!(bad, vec!["storage/segment.rs:1: storage → engine (engine)".to_string()]);
    // A root re-export counts as the layer that defines it.
    std::fs::write(&victim, format!("use crate::{{Error, Db}};\n{text}")).unwrap();
    assert_eq!(violations(t.path()), vec!["storage/segment.rs:1: storage → engine (Db)".to_string()]);
}
