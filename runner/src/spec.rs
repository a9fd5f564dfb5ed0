//! What the runner is asked to run. The server maps a planned stage from `pipelines`
//! onto these types; the runner deliberately does not depend on `pipelines` so that
//! a remote runner host only needs this small, stable shape.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One stage: a workspace prepared from `source`, then `steps` run in order in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSpec {
    /// Unique within a run, e.g. `test (features=full)`. Backends derive resource
    /// names from it, so it may contain any characters.
    pub id: String,
    /// Container image; ignored by the local backend.
    pub image: Option<String>,
    pub source: Source,
    /// Stage-level environment, already resolved (no `${{ }}` left).
    pub env: BTreeMap<String, String>,
    pub steps: Vec<StepSpec>,
    /// Limit for the whole stage, set-up included.
    pub timeout: Option<Duration>,
    /// Globs relative to the workspace, collected after all steps succeeded.
    pub artifacts: Vec<String>,
    /// Secret *values*, masked in all output. Injecting them into the environment is
    /// the caller's job (via `env`); the runner only needs to know what to hide.
    pub secrets: Vec<String>,
}

/// Where the workspace content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An empty workspace.
    Empty,
    /// A copy of a local directory (e.g. a working tree for `slipway exec`).
    /// `.git` is copied too so that tools like `git describe` keep working; symlinks
    /// are copied as symlinks and never followed.
    Directory(PathBuf),
    /// A clone of `url` (local path or URL) with `commit` (a sha or any revision such
    /// as `HEAD`) checked out detached.
    Git { url: String, commit: String },
}

/// One step: a shell script run with `sh -e`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    pub name: String,
    pub script: String,
    /// Step-level environment; wins over the stage's.
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
}

impl StageSpec {
    /// A stage with an empty workspace and no steps; handy for tests and builders.
    pub fn new(id: impl Into<String>) -> Self {
        StageSpec {
            id: id.into(),
            image: None,
            source: Source::Empty,
            env: BTreeMap::new(),
            steps: Vec::new(),
            timeout: None,
            artifacts: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// Checks what every backend would otherwise trip over at spawn time, so the
    /// failure is a clear, non-retryable [`Error::InvalidSpec`] instead.
    pub fn validate(&self) -> Result<()> {
        if self.id.is_empty() {
            return Err(Error::InvalidSpec("stage id is empty".into()));
        }
        validate_env(&self.env, &format!("stage `{}`", self.id))?;
        for (i, step) in self.steps.iter().enumerate() {
            let what = format!("step {i} (`{}`)", step.name);
            validate_env(&step.env, &what)?;
            if step.script.contains('\0') {
                return Err(Error::InvalidSpec(format!(
                    "{what}: script contains a NUL byte"
                )));
            }
        }
        for glob in &self.artifacts {
            crate::artifacts::check_glob(glob)?;
        }
        Ok(())
    }
}

impl StepSpec {
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        StepSpec {
            name: name.into(),
            script: script.into(),
            env: BTreeMap::new(),
            timeout: None,
        }
    }
}

/// Env names must be usable by `execve` and by a shell: no `=`, no NUL, not empty.
/// Values only need to be free of NUL (the C environment block is NUL-terminated).
fn validate_env(env: &BTreeMap<String, String>, what: &str) -> Result<()> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(Error::InvalidSpec(format!(
                "{what}: invalid environment variable name {k:?}"
            )));
        }
        if v.contains('\0') {
            return Err(Error::InvalidSpec(format!(
                "{what}: environment variable {k} contains a NUL byte"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_bad_env() {
        let mut s = StageSpec::new("a");
        s.env.insert("A=B".into(), "x".into());
        assert!(matches!(s.validate(), Err(Error::InvalidSpec(_))));

        let mut s = StageSpec::new("a");
        let mut step = StepSpec::new("s", "true");
        step.env.insert("OK".into(), "nul\0".into());
        s.steps.push(step);
        assert!(matches!(s.validate(), Err(Error::InvalidSpec(_))));

        assert!(StageSpec::new("").validate().is_err());
        assert!(StageSpec::new("ok").validate().is_ok());
    }

    #[test]
    fn validate_rejects_escaping_artifact_globs() {
        let mut s = StageSpec::new("a");
        s.artifacts.push("../secret".into());
        assert!(s.validate().is_err());
    }
}
