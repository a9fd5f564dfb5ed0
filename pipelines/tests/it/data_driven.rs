//! Snapshot tests over `test_data/`:
//! - `<name>.yml` + `<name>.diagnostics`: the rendered diagnostics of an invalid file;
//! - `<name>.yml` + `<name>.ctx.json` + `<name>.plan.json`: the plan for that event (or
//!   `{"error": "..."}` when planning fails);
//! - `<name>.load/` (a repository's pipeline files) + `<name>.load.diagnostics`: `load`.
//!
//! Files are parsed as `.slipway/<name>.yml`, so the pipeline is called `<name>`.
//! Run with `UPDATE_SNAPSHOTS=1` to rewrite the expected files after checking the diff.

use std::fs;
use std::path::{Path, PathBuf};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("test_data")
}

fn updating() -> bool {
    std::env::var("UPDATE_SNAPSHOTS").is_ok_and(|v| v == "1")
}

fn render(diags: &[pipelines::Diagnostic]) -> String {
    let mut out = diags
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n\n");
    out.push('\n');
    out
}

/// Compares (or with UPDATE_SNAPSHOTS=1 writes) one expected file; returns a failure note.
fn check(expected_path: &Path, actual: &str) -> Option<String> {
    let expected = fs::read_to_string(expected_path).ok();
    if expected.as_deref() == Some(actual) {
        return None;
    }
    if updating() {
        fs::write(expected_path, actual).expect("write snapshot");
        return None;
    }
    Some(format!(
        "--- {} ---\nexpected:\n{}\nactual:\n{}",
        expected_path.display(),
        expected.as_deref().unwrap_or("<missing file>"),
        actual
    ))
}

#[test]
fn snapshots() {
    let mut entries: Vec<PathBuf> = fs::read_dir(data_dir())
        .expect("test_data exists")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    let mut failures = Vec::new();
    let mut count = 0;
    for path in entries {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() && file_name.ends_with(".load") {
            count += 1;
            failures.extend(check_load(&path));
            continue;
        }
        let Some(stem) = file_name.strip_suffix(".yml") else {
            continue;
        };
        count += 1;
        let text = fs::read_to_string(&path).expect("read yml");
        let virtual_path = format!(".slipway/{stem}.yml");
        let parsed = pipelines::parse(&virtual_path, &text);
        let ctx_path = path.with_file_name(format!("{stem}.ctx.json"));
        if ctx_path.exists() {
            let pipeline = match parsed {
                Ok(p) => p,
                Err(d) => {
                    failures.push(format!("--- {file_name} should parse ---\n{}", render(&d)));
                    continue;
                }
            };
            let ctx: pipelines::EventContext =
                serde_json::from_str(&fs::read_to_string(&ctx_path).expect("read ctx"))
                    .expect("valid EventContext json");
            let actual = match pipelines::plan(&pipeline, &ctx) {
                Ok(plan) => {
                    // A stored plan must read back identically (runs are re-run from it).
                    let json = serde_json::to_string(&plan).expect("serialize plan");
                    let back: pipelines::Plan =
                        serde_json::from_str(&json).expect("plan round-trips");
                    assert_eq!(back, plan, "{file_name}: plan round-trip");
                    serde_json::to_string_pretty(&plan).expect("serialize plan")
                }
                Err(e) => {
                    serde_json::to_string_pretty(&serde_json::json!({ "error": e.to_string() }))
                        .expect("serialize error")
                }
            } + "\n";
            failures.extend(check(
                &path.with_file_name(format!("{stem}.plan.json")),
                &actual,
            ));
        } else {
            let actual = match parsed {
                Ok(p) if p.warnings.is_empty() => "ok\n".to_string(),
                Ok(p) => render(&p.warnings),
                Err(d) => render(&d),
            };
            failures.extend(check(
                &path.with_file_name(format!("{stem}.diagnostics")),
                &actual,
            ));
        }
    }
    assert!(count > 0, "no test data found");
    assert!(
        failures.is_empty(),
        "{} snapshot(s) differ (UPDATE_SNAPSHOTS=1 to bless):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

fn check_load(dir: &Path) -> Option<String> {
    let mut files = Vec::new();
    collect(dir, dir, &mut files);
    files.sort();
    let actual = match pipelines::load(&files) {
        Ok(ps) => format!(
            "ok: {}\n",
            ps.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(d) => render(&d),
    };
    let name = dir.file_name()?.to_str()?;
    check(&dir.with_file_name(format!("{name}.diagnostics")), &actual)
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in fs::read_dir(dir).expect("read dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            if pipelines::is_pipeline_path(&rel) {
                out.push((rel, fs::read_to_string(&p).expect("read")));
            }
        }
    }
}

#[test]
fn json_schema_has_stages() {
    let schema = pipelines::json_schema();
    let text = serde_json::to_string(&schema).expect("schema serializes");
    let back: serde_json::Value = serde_json::from_str(&text).expect("schema is valid JSON");
    assert!(back["properties"]["stages"].is_object(), "{back:#}");
    assert_eq!(back["title"], "Slipway pipeline");
}

#[test]
fn design_example_parses_cleanly() {
    let text = fs::read_to_string(data_dir().join("design_example.yml")).expect("read");
    let p = pipelines::parse(".slipway.yml", &text).unwrap_or_else(|d| panic!("{}", render(&d)));
    assert_eq!(p.name, "default");
    assert!(p.warnings.is_empty());
    let names: Vec<&str> = p.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["build", "test", "scan", "image", "staging", "production"]
    );
    assert_eq!(p.yaml_sha256.len(), 64);
}

/// Every valid file in test_data also deserializes into the serde mirror types, so the
/// published schema and the reader describe the same format.
#[test]
fn valid_files_deserialize_into_raw_types() {
    for e in fs::read_dir(data_dir()).expect("dir") {
        let path = e.expect("entry").path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".yml"))
        else {
            continue;
        };
        let text = fs::read_to_string(&path).expect("read");
        if pipelines::parse(".slipway.yml", &text).is_err() {
            continue;
        }
        let node = marked_yaml::parse_yaml_with_options(
            0,
            &text,
            marked_yaml::LoaderOptions::default().prevent_coercion(true),
        )
        .expect("valid yaml");
        let raw: Result<pipelines::raw::PipelineFile, _> = serde_json::from_value(to_json(&node));
        assert!(raw.is_ok(), "{stem}: {:?}", raw.err());
    }
}

/// YAML tree → JSON with YAML 1.2 core-schema typing of plain scalars.
fn to_json(node: &marked_yaml::Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        marked_yaml::Node::Scalar(s) => {
            let v = s.as_str();
            if !s.may_coerce() {
                return Value::String(v.to_string());
            }
            match v {
                "" | "~" | "null" => Value::Null,
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => v
                    .parse::<i64>()
                    .map(Value::from)
                    .or_else(|_| v.parse::<f64>().map(Value::from))
                    .unwrap_or_else(|_| Value::String(v.to_string())),
            }
        }
        marked_yaml::Node::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        marked_yaml::Node::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

/// Plans are stored with runs and read back for reruns: every blessed plan — most
/// written before `runs_on` and `container` existed — still deserializes.
#[test]
fn stored_plans_read_back() {
    let mut count = 0;
    for e in fs::read_dir(data_dir()).expect("dir") {
        let path = e.expect("entry").path();
        if !path.to_string_lossy().ends_with(".plan.json") {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
        if value.get("error").is_some() {
            continue;
        }
        let plan: Result<pipelines::Plan, _> = serde_json::from_value(value);
        assert!(plan.is_ok(), "{}: {:?}", path.display(), plan.err());
        count += 1;
    }
    assert!(count > 5, "too few plans found: {count}");
}
