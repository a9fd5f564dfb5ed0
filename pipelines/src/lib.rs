//! Slipway's pipeline-as-code model: parse and validate pipeline YAML into a
//! [`Pipeline`], and plan it for an [`EventContext`] into a [`Plan`].
//!
//! Pure by design (no I/O, no async): the server reads files from a commit tree and
//! hands their text here, so parsing is deterministic and testable, and the same code
//! runs in `slipway validate` on a laptop.
//!
//! Two layers: [`raw`] mirrors the YAML (and generates [`json_schema`]); the reader
//! builds the validated [`model`] from a spanned YAML tree so that every problem in a
//! file is reported with `file:line:column`, not just the first.

mod crontab;
pub mod diagnostic;
mod duration;
pub mod event;
pub mod expr;
mod image_ref;
pub mod label;
pub mod limits;
pub mod matrix;
pub mod model;
pub mod plan;
mod quantity;
pub mod raw;
mod read;
mod schema;
mod source;
mod validate;
mod when;
mod yaml;

use std::collections::HashMap;

use sha2::{Digest, Sha256};

pub use crate::crontab::normalize_cron;
pub use crate::diagnostic::{Diagnostic, Severity, codes};
pub use crate::duration::parse_duration;
pub use crate::event::{Event, EventContext};
pub use crate::label::{BACKEND_LABEL_PREFIX, IMAGE_BACKEND, backend_label, check_label};
pub use crate::limits::{MAX_FILE_BYTES, MAX_STAGES};
pub use crate::matrix::MATRIX_LIMIT;
pub use crate::model::*;
pub use crate::plan::{
    Plan, PlanError, PlannedKind, PlannedService, PlannedStage, PlannedStep, SkippedStage, plan,
    untrusted_service_accounts,
};
pub use crate::quantity::{parse_cpu, parse_disk, parse_memory};
pub use crate::schema::json_schema;
pub use crate::when::{check_ref_pattern, ref_matches};

use crate::diagnostic::Pos;
use crate::read::{Ctx, read_pipeline};

/// Is `path` (relative to the repository root, `/`-separated) a pipeline file?
/// `.slipway.yml` / `.slipway.yaml` at the root, or `.slipway/<name>.yml|yaml` (one
/// level: nested directories are left for other tools' files).
pub fn is_pipeline_path(path: &str) -> bool {
    if path == ".slipway.yml" || path == ".slipway.yaml" {
        return true;
    }
    let Some(rest) = path.strip_prefix(".slipway/") else {
        return false;
    };
    !rest.contains('/') && file_stem(rest).is_some_and(|s| !s.is_empty() && !s.starts_with('.'))
}

fn file_stem(name: &str) -> Option<&str> {
    name.strip_suffix(".yml")
        .or_else(|| name.strip_suffix(".yaml"))
}

/// `.slipway.yml` → `default`; `.slipway/deploy.yml` → `deploy`.
fn default_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    match file_stem(base) {
        Some(".slipway") | Some("") | None => "default".to_string(),
        Some(stem) => stem.to_string(),
    }
}

/// Parses one pipeline file. `Err` holds every diagnostic (errors and warnings), sorted
/// by position; on success, warnings are in `pipeline.warnings`.
pub fn parse(path: &str, text: &str) -> Result<Pipeline, Vec<Diagnostic>> {
    if text.len() > MAX_FILE_BYTES {
        return Err(vec![Diagnostic {
            severity: Severity::Error,
            code: codes::FILE_TOO_LARGE.into(),
            file: path.to_string(),
            line: 1,
            column: 1,
            message: format!(
                "the file is {} bytes; pipeline files are limited to {MAX_FILE_BYTES} bytes",
                text.len()
            ),
            hint: Some("split it into several pipelines under `.slipway/`".into()),
        }]);
    }
    let yaml_sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let (loaded, yaml_errors) = yaml::load(text);
    let (node, ignored) = match loaded {
        Some(l) => (Some(l.node), l.ignored_keys),
        None => (None, Default::default()),
    };
    let mut ctx = Ctx::new(path, text, ignored);
    for e in yaml_errors {
        ctx.error(e.code, e.pos, e.message, e.hint);
    }
    let pipeline = node.and_then(|n| read_pipeline(&mut ctx, &n, default_name(path), yaml_sha256));
    let mut diags = ctx.diags;
    diags.sort_by_key(|d| (d.line, d.column));
    match pipeline {
        Some(mut p) if !diags.iter().any(Diagnostic::is_error) => {
            p.warnings = diags;
            Ok(p)
        }
        _ => Err(diags),
    }
}

/// Parses all of a repository's pipeline files (`(path, text)` pairs) and checks what
/// spans files: pipeline names must be unique. Every diagnostic from every file is returned.
pub fn load(files: &[(String, String)]) -> Result<Vec<Pipeline>, Vec<Diagnostic>> {
    let mut pipelines = Vec::new();
    let mut diags = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for (path, text) in files {
        match parse(path, text) {
            Ok(p) => {
                if let Some(first) = names.get(&p.name) {
                    let pos = name_key_pos(text);
                    diags.push(Diagnostic {
                        severity: Severity::Error,
                        code: codes::DUPLICATE_PIPELINE.into(),
                        file: path.clone(),
                        line: pos.line,
                        column: pos.column,
                        message: format!("duplicate pipeline name `{}`", p.name),
                        hint: Some(format!(
                            "`{first}` already defines `{}`; set a different `name:`",
                            p.name
                        )),
                    });
                } else {
                    names.insert(p.name.clone(), path.clone());
                }
                pipelines.push(p);
            }
            Err(d) => diags.extend(d),
        }
    }
    if diags.iter().any(Diagnostic::is_error) {
        Err(diags)
    } else {
        Ok(pipelines)
    }
}

/// Position of a top-level `name:` key, else the start of the file.
fn name_key_pos(text: &str) -> Pos {
    text.lines()
        .position(|l| {
            l.starts_with("name:") || l.starts_with("\"name\":") || l.starts_with("'name':")
        })
        .map_or(Pos::START, |i| Pos {
            line: i + 1,
            column: 1,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_paths() {
        assert!(is_pipeline_path(".slipway.yml"));
        assert!(is_pipeline_path(".slipway.yaml"));
        assert!(is_pipeline_path(".slipway/deploy.yml"));
        assert!(is_pipeline_path(".slipway/deploy.yaml"));
        assert!(!is_pipeline_path(".slipway/a/b.yml"));
        assert!(!is_pipeline_path(".slipway/.yml"));
        assert!(!is_pipeline_path("sub/.slipway.yml"));
        assert!(!is_pipeline_path(".slipway/deploy.json"));
        assert!(!is_pipeline_path(".slipway"));
    }

    #[test]
    fn default_names() {
        assert_eq!(default_name(".slipway.yml"), "default");
        assert_eq!(default_name(".slipway.yaml"), "default");
        assert_eq!(default_name(".slipway/deploy.yml"), "deploy");
    }
}
