//! The rules of the module graph, checked on the sources (test only): the
//! library's top-level modules form no cycle, and the directions issue 15
//! set stay as they are (docs/architecture.md draws them). That the server
//! does not depend on flowmeter-bench is checked on the dependency tree
//! (tests/integration/workspace_deps.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|x| x == "rs") {
            let text = std::fs::read_to_string(&path).expect("a source file");
            out.push((path, text));
        }
    }
    out
}

/// The code lines (not comments) of the files under `src/{under}` that
/// name one of `needles`, as `path:line: text`.
fn offenders(under: &str, skip: &[&str], needles: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = Vec::new();
    for (path, text) in sources(&src.join(under)) {
        let rel = path.strip_prefix(&src).unwrap_or(&path);
        if skip.iter().any(|s| rel.starts_with(s)) {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if needles.iter().any(|w| code.contains(w)) {
                found.push(format!("src/{}:{}: {code}", rel.display(), n + 1));
            }
        }
    }
    found
}

/// Dependencies point one way: the library returns data and the CLI
/// renders it, so no module outside `cli/` may use the CLI, its tables
/// or its human formatting.
#[test]
fn no_library_module_imports_the_cli() {
    let found = offenders(
        "",
        &["cli", "main.rs", "layering.rs"],
        &[
            "crate::cli",
            "crate::table",
            "crate::human",
            "flowmeter::cli",
        ],
    );
    assert!(
        found.is_empty(),
        "library code importing the CLI (return typed data and render it in src/cli/ instead):\n{}",
        found.join("\n")
    );
}

/// The two cycles issue 15 broke stay broken: the hub's WebSocket
/// handler has its own state and errors (not the API's), and alert rules
/// are loaded by `alert`, not by the processor registry.
#[test]
fn the_hub_does_not_import_the_api_nor_the_processors_the_alerts() {
    let mut found = offenders("hub", &[], &["crate::api"]);
    found.extend(offenders("processor", &[], &["crate::alert"]));
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The benchmark and the load generator live in crates/flowmeter-bench,
/// which the server does not depend on (issue 15): they do not come back
/// as modules of the server.
#[test]
fn the_bench_and_the_load_generator_are_not_server_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for gone in ["bench", "bench.rs", "loadgen", "loadgen.rs"] {
        assert!(
            !src.join(gone).exists(),
            "src/{gone}: the bench and the load generator belong in crates/flowmeter-bench"
        );
    }
}

/// The top-level modules of `src/` (files and directories, not `main` nor
/// `lib`), each with the other top-level modules its non-test code names as
/// `crate::<module>`.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (path, text) in sources(&src) {
        let rel = path.strip_prefix(&src).unwrap_or(&path);
        let Some(top) = rel.iter().next().and_then(|c| c.to_str()) else {
            continue;
        };
        let top = top.trim_end_matches(".rs").to_string();
        if top == "main" || top == "lib" || top == "layering" {
            continue;
        }
        // a file's unit tests may reach anywhere: only the code before them
        // counts, and none of a test-only file (`#![cfg(test)]`)
        if text.contains("#![cfg(test)]") {
            continue;
        }
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        files.entry(top).or_default().push(code.to_string());
    }
    let names: BTreeSet<String> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(m, texts)| {
            let mut to = BTreeSet::new();
            for text in texts {
                for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
                    for part in line.split("crate::").skip(1) {
                        let name: String = part
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        if name != *m && names.contains(&name) {
                            to.insert(name);
                        }
                    }
                }
            }
            (m.clone(), to)
        })
        .collect()
}

/// The modules from which `from` is reachable through `g`, `from` included
/// only when a path leads back to it.
fn reaching(g: &BTreeMap<String, BTreeSet<String>>, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = g
        .get(from)
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    while let Some(m) = todo.pop() {
        if seen.insert(m.to_string()) {
            todo.extend(g.get(m).into_iter().flatten().map(String::as_str));
        }
    }
    seen
}

/// The library's top-level modules import each other in one direction only
/// (roughly event → stream → processor → store / view → hub → alert → api →
/// app → cli). Alert rules name a view's measure and ask the hub for it;
/// the hub knows nothing of alerts.
#[test]
fn the_top_level_modules_form_no_cycle() {
    let g = module_graph();
    assert!(g.len() > 15, "the sources were found: {:?}", g.keys());
    let mut cycles = Vec::new();
    for m in g.keys() {
        let back = reaching(&g, m);
        if back.contains(m) {
            let with: Vec<&String> = g
                .keys()
                .filter(|o| *o != m && back.contains(*o) && reaching(&g, o).contains(m))
                .collect();
            cycles.push(format!("{m} ⇄ {with:?}"));
        }
    }
    assert!(
        cycles.is_empty(),
        "module cycles (move the shared part below both, or invert one import):\n{}",
        cycles.join("\n")
    );
    let hub = g.get("hub").cloned().unwrap_or_default();
    assert!(!hub.contains("alert"), "the hub imports alert: {hub:?}");
}
