//! The user docs against the format: `docs/pipeline.md` documents every key of the JSON
//! Schema `slipway schema` prints, and every whole pipeline shown in `docs/pipeline.md`
//! and `docs/migrating.md` validates.
//!
//! A key counts as documented when it is written in backticks in the first cell of a
//! row of a table whose first column is headed `Key` (the key, or a dotted path ending
//! in it: `approval.role`), a table that also gives its type, default and meaning.
//! A whole pipeline is a ```` ```yaml ```` block whose first line that is not blank or a
//! comment starts with a top-level key (`stages:`, `on:`, …). Another tool's YAML is
//! fenced as ```` ```yaml <its file name> ```` and left alone.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

fn doc_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

fn read_doc(name: &str) -> String {
    let path = doc_path(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Every property name anywhere in the schema (top level and every `$defs` entry).
fn schema_properties(node: &Value, out: &mut BTreeSet<String>) {
    match node {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            for v in map.values() {
                schema_properties(v, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                schema_properties(v, out);
            }
        }
        _ => {}
    }
}

/// The backticked words of `text`.
fn backticked(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// Keys a table documents: backticked in the first cell of a row of a table whose
/// header's first cell is `Key` (a dotted path counts for its last part).
fn documented_keys(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut in_code = false;
    // `Some(is_key_table)` while inside a table.
    let mut table: Option<bool> = None;
    for line in markdown.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            in_code = !in_code;
        }
        let Some(row) = line.strip_prefix('|').filter(|_| !in_code) else {
            table = None;
            continue;
        };
        let first = row.split('|').next().unwrap_or_default().trim();
        let Some(is_key_table) = table else {
            table = Some(first == "Key");
            continue;
        };
        if is_key_table {
            for word in backticked(first) {
                out.insert(word.rsplit('.').next().unwrap_or(word).to_string());
            }
        }
    }
    out
}

#[test]
fn pipeline_reference_documents_every_schema_key() {
    let schema = pipelines::json_schema();
    let mut keys = BTreeSet::new();
    schema_properties(&schema, &mut keys);
    assert!(
        keys.contains("stages") && keys.contains("toleration_seconds"),
        "the schema walk found too little: {keys:?}"
    );
    let documented = documented_keys(&read_doc("pipeline.md"));
    let missing: Vec<&String> = keys.iter().filter(|k| !documented.contains(*k)).collect();
    assert!(
        missing.is_empty(),
        "docs/pipeline.md does not document these keys of the JSON Schema (write each as \
         `key` in the first cell of a row of a `| Key | Type | Default | Meaning |` table): {missing:?}"
    );
}

/// One fenced block: its info string, the line it starts on, its text.
struct Block {
    info: String,
    line: usize,
    text: String,
}

fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        match (&mut open, trimmed.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_string(),
                    line: i + 1,
                    text: String::new(),
                });
            }
            (Some(_), Some(_)) => blocks.extend(open.take()),
            (Some(b), None) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

fn is_whole_pipeline(block: &Block, top_keys: &BTreeSet<String>) -> bool {
    if block.info != "yaml" {
        return false;
    }
    let first = block
        .text
        .lines()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    first.is_some_and(|l| {
        l.split_once(':')
            .is_some_and(|(key, _)| top_keys.contains(key))
    })
}

#[test]
fn every_pipeline_in_the_docs_validates() {
    let schema = pipelines::json_schema();
    let top_keys: BTreeSet<String> = schema["properties"]
        .as_object()
        .expect("the schema's top level has properties")
        .keys()
        .cloned()
        .collect();
    let mut failures = Vec::new();
    for (doc, at_least) in [("pipeline.md", 10), ("migrating.md", 3)] {
        let markdown = read_doc(doc);
        let blocks = code_blocks(&markdown);
        let mut checked = 0;
        for (n, block) in blocks.iter().enumerate() {
            if !is_whole_pipeline(block, &top_keys) {
                continue;
            }
            checked += 1;
            let shown = format!("docs/{doc}, block {} (line {})", n + 1, block.line);
            match pipelines::parse(".slipway.yml", &block.text) {
                Ok(p) if p.warnings.is_empty() => {}
                Ok(p) => failures.push(format!(
                    "{shown}: warnings\n{}",
                    render(&p.warnings, doc, block.line)
                )),
                Err(diags) => {
                    failures.push(format!("{shown}:\n{}", render(&diags, doc, block.line)))
                }
            }
        }
        assert!(
            checked >= at_least,
            "docs/{doc}: only {checked} whole pipelines found (expected at least {at_least}); \
             did the block convention change?"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Each diagnostic, with the line of the docs it points at (`fence`: the block's
/// opening line, so the block's line 1 is the line after it).
fn render(diags: &[pipelines::Diagnostic], doc: &str, fence: usize) -> String {
    diags
        .iter()
        .map(|d| format!("at docs/{doc}:{}\n{d}", fence + d.line))
        .collect::<Vec<_>>()
        .join("\n")
}
