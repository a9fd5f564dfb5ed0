//! `pipelines` is the pure model: no async runtime, no I/O crate, no I/O calls. Every
//! other crate relies on being able to call it anywhere (a parser that does I/O would
//! read the working tree instead of the commit, and could not be fuzzed cheaply).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "async-std",
    "smol",
    "mio",
    "futures",
    "hyper",
    "reqwest",
    "axum",
    "tower",
    "sqlx",
    "kube",
    "kube-client",
    "bollard",
    "git2",
    "libgit2-sys",
    "tempfile",
    "walkdir",
];

#[test]
fn pipelines_depends_on_no_async_runtime_or_io_crate() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let nodes: HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    let root = names
        .iter()
        .find(|(_, name)| **name == "pipelines")
        .map(|(id, _)| *id)
        .unwrap();
    // Walk normal (non-dev, non-build) dependencies transitively.
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(names[id]) {
            continue;
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null());
            if normal {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let bad: Vec<_> = FORBIDDEN_CRATES
        .iter()
        .filter(|c| seen.contains(**c))
        .collect();
    assert!(
        bad.is_empty(),
        "pipelines pulls in {bad:?} (all deps: {seen:?})"
    );
    assert!(
        seen.contains("marked-yaml"),
        "the walk found nothing: {seen:?}"
    );
}

#[test]
fn pipelines_source_makes_no_io_calls() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines/src");
    let mut offenders = Vec::new();
    let mut dirs = vec![src];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for needle in [
                "std::fs",
                "std::net",
                "std::process",
                "std::env",
                "File::open",
            ] {
                if text.contains(needle) {
                    offenders.push(format!("{}: {needle}", path.display()));
                }
            }
        }
    }
    assert!(offenders.is_empty(), "I/O in pipelines: {offenders:?}");
}
