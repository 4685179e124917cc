//! The layers of `src/` import one way only. Each folder (or top-level file) of the crate
//! is a layer; this test reads every `crate::<layer>` path in the code of each layer and
//! fails when a layer names one it may not. The allowlist below is the architecture
//! (docs/design.md draws it); it is checked to be free of cycles, so the rule cannot rot
//! into "everything imports everything".
//!
//! It also checks the two crates beside the broker: the codec (`protocol/`) depends on no
//! crate of the workspace, and `loadgen` depends on the codec and nothing else of warren's.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// What each layer may import, besides itself. `bin` (the binaries) may import anything.
const LAYERS: &[(&str, &[&str])] = &[
    ("util", &[]),
    ("model", &["util"]),
    ("config", &["util", "model"]),
    ("metadata", &["util", "model", "config"]),
    ("store", &["util", "model", "config", "metadata"]),
    ("broker", &["util", "model", "config", "metadata", "store"]),
    ("net", &["util", "config"]),
    ("mgmt", &["util", "model", "config", "metadata", "broker"]),
    (
        "shard",
        &[
            "util", "model", "config", "metadata", "store", "broker", "net", "mgmt",
        ],
    ),
    (
        "fuzzing",
        &["util", "model", "config", "metadata", "store", "broker"],
    ),
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a source file belongs to: its folder under `src/`, or its file stem for a
/// top-level file (`config.rs` is the layer `config`).
fn layer_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::<name>` in the code of a file, with its line number; comments are skipped.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            // `warren_protocol::…` and other crates' paths end in "crate" only by accident;
            // a path to this crate starts with `crate` as a whole word.
            let before = &rest[..at];
            let whole_word = before
                .chars()
                .last()
                .is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if whole_word && !name.is_empty() {
                found.push((number + 1, name));
            }
            rest = after;
        }
    }
    found
}

#[test]
fn layers_import_one_way_only() {
    let src = root().join("src");
    let allowed: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(layer, deps)| (*layer, deps.iter().copied().collect()))
        .collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut layers_seen = BTreeSet::new();
    for file in &files {
        let layer = layer_of(&src, file);
        if layer == "lib" || layer == "bin" {
            continue;
        }
        layers_seen.insert(layer.clone());
        let Some(may) = allowed.get(layer.as_str()) else {
            violations.push(format!(
                "{}: the layer `{layer}` is not in tests/layers.rs's LAYERS: add it with what it may import",
                file.display()
            ));
            continue;
        };
        let text = fs::read_to_string(file).unwrap();
        for (line, name) in crate_paths(&text) {
            if name == layer || may.contains(name.as_str()) {
                continue;
            }
            violations.push(format!(
                "{}:{line}: `{layer}` imports `crate::{name}`, which it may not (it may import: {})",
                file.strip_prefix(root()).unwrap().display(),
                may.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    assert!(
        layers_seen.len() >= 6,
        "too few layers found under src/ ({layers_seen:?}): is the test reading the right folder?"
    );
    assert!(
        violations.is_empty(),
        "imports against the layers:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_allowlist_has_no_cycles() {
    // Depth-first search over the allowlist; a layer seen again on the current path is a cycle.
    fn visit<'a>(
        layer: &'a str,
        graph: &BTreeMap<&'a str, &'a [&'a str]>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(layer) {
            return;
        }
        assert!(
            !path.contains(&layer),
            "the layers import each other in a circle: {} -> {layer}",
            path.join(" -> ")
        );
        path.push(layer);
        for dep in graph.get(layer).copied().unwrap_or(&[]) {
            visit(dep, graph, path, done);
        }
        path.pop();
        done.insert(layer);
    }
    let graph: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut done = BTreeSet::new();
    for (layer, _) in LAYERS {
        visit(layer, &graph, &mut Vec::new(), &mut done);
    }
}

/// The `[dependencies]` section of a Cargo.toml, as the names it lists.
fn dependencies(manifest: &Path) -> Vec<String> {
    let text = fs::read_to_string(manifest).unwrap();
    let mut names = Vec::new();
    let mut in_deps = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
            continue;
        }
        if in_deps && !line.is_empty() && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                names.push(name.trim().to_string());
            }
        }
    }
    names
}

#[test]
fn the_codec_and_loadgen_stand_apart_from_the_broker() {
    let codec = dependencies(&root().join("protocol/Cargo.toml"));
    assert!(
        !codec
            .iter()
            .any(|d| d.starts_with("warren") || d == "loadgen"),
        "the codec crate depends on a crate of the workspace: {codec:?}"
    );
    let loadgen = dependencies(&root().join("loadgen/Cargo.toml"));
    assert!(
        loadgen.iter().any(|d| d == "warren-protocol"),
        "loadgen should speak AMQP through warren-protocol: {loadgen:?}"
    );
    assert!(
        !loadgen.iter().any(|d| d == "warren"),
        "loadgen depends on the broker crate; it may use only the codec: {loadgen:?}"
    );
    let mut files = Vec::new();
    rust_files(&root().join("loadgen/src"), &mut files);
    rust_files(&root().join("protocol/src"), &mut files);
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains("warren::"),
            "{} names the broker crate (`warren::`)",
            file.display()
        );
    }
}

/// The crates warrenctl may name: it is a client of the management HTTP API, so it stands
/// apart from the broker like loadgen does and could move to its own crate unchanged.
const WARRENCTL_CRATES: &[&str] = &[
    "std",
    "core",
    "alloc",
    "crate",
    "self",
    "super",
    "clap",
    "ureq",
    "base64",
    "serde_json",
];

#[test]
fn warrenctl_imports_nothing_of_the_broker() {
    let mut files = Vec::new();
    rust_files(&root().join("src/bin/warrenctl"), &mut files);
    assert!(
        !files.is_empty(),
        "no warrenctl sources under src/bin/warrenctl: is the test reading the right folder?"
    );
    let mut violations = Vec::new();
    for file in &files {
        let text = fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = match line.find("//") {
                Some(at) => &line[..at],
                None => line,
            };
            for broker in ["warren::", "warren_protocol"] {
                if code.contains(broker) {
                    violations.push(format!(
                        "{}:{}: names the broker (`{broker}`)",
                        file.display(),
                        number + 1
                    ));
                }
            }
            // The first segment of each `use` path, and of each `name::` path at the
            // start of an expression, must be an allowed crate or this binary's module.
            let trimmed = code.trim_start();
            if let Some(path) = trimmed
                .strip_prefix("use ")
                .or_else(|| trimmed.strip_prefix("pub use "))
            {
                let first: String = path
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let own_module = files
                    .iter()
                    .any(|f| f.file_stem().is_some_and(|s| s.to_string_lossy() == first));
                // `use Command::*` names this binary's own enum, not a crate.
                let local_type = first.starts_with(|c: char| c.is_ascii_uppercase());
                if !WARRENCTL_CRATES.contains(&first.as_str()) && !own_module && !local_type {
                    violations.push(format!(
                        "{}:{}: warrenctl uses `{first}`, which is not among its crates ({})",
                        file.display(),
                        number + 1,
                        WARRENCTL_CRATES.join(", ")
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
