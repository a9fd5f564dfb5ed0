//! Problems found in pipeline files, rendered like rustc's (without colour: the CLI adds it).

use std::fmt;

use serde::{Deserialize, Serialize};

/// How bad a [`Diagnostic`] is. Only errors make `parse` fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem in one pipeline file. `line` and `column` are 1-based and point at the
/// offending key or value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// Stable, kebab-case identifier (see [`codes`]); tools may match on it.
    pub code: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}]: {}", self.severity, self.code, self.message)?;
        write!(f, "\n  --> {}:{}:{}", self.file, self.line, self.column)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  = hint: {hint}")?;
        }
        Ok(())
    }
}

/// A 1-based position in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

/// The stable diagnostic codes. Kept in one place so the docs, tests and CLI agree.
pub mod codes {
    pub const YAML_SYNTAX: &str = "yaml-syntax";
    pub const YAML_UNSUPPORTED: &str = "yaml-unsupported";
    pub const NOT_A_MAPPING: &str = "not-a-mapping";
    pub const EMPTY_FILE: &str = "empty-file";
    pub const DUPLICATE_KEY: &str = "duplicate-key";
    pub const UNKNOWN_KEY: &str = "unknown-key";
    pub const WRONG_TYPE: &str = "wrong-type";
    pub const MISSING_KEY: &str = "missing-key";
    pub const INVALID_VALUE: &str = "invalid-value";
    pub const INVALID_NAME: &str = "invalid-name";
    pub const UNKNOWN_STAGE_KIND: &str = "unknown-stage-kind";
    pub const UNKNOWN_NEED: &str = "unknown-need";
    pub const NEEDS_CYCLE: &str = "needs-cycle";
    pub const INVALID_CRON: &str = "invalid-cron";
    pub const INVALID_GLOB: &str = "invalid-glob";
    pub const INVALID_DURATION: &str = "invalid-duration";
    pub const INVALID_ENV_NAME: &str = "invalid-env-name";
    pub const INVALID_RETRY: &str = "invalid-retry";
    pub const INVALID_QUANTITY: &str = "invalid-quantity";
    pub const INVALID_LABEL: &str = "invalid-label";
    pub const INVALID_PATH: &str = "invalid-path";
    /// An image reference the runner would refuse to push to (`push:`).
    pub const INVALID_IMAGE_REF: &str = "invalid-image-ref";
    pub const INVALID_WEIGHT: &str = "invalid-weight";
    /// A canary step its traffic mode cannot do (`mirror` with `replicas`, …).
    pub const TRAFFIC_NOT_SUPPORTED: &str = "traffic-not-supported";
    pub const INVALID_MATRIX: &str = "invalid-matrix";
    pub const MATRIX_TOO_LARGE: &str = "matrix-too-large";
    /// A file over [`crate::MAX_FILE_BYTES`].
    pub const FILE_TOO_LARGE: &str = "file-too-large";
    /// A pipeline planning more than [`crate::MAX_STAGES`] stages.
    pub const TOO_MANY_STAGES: &str = "too-many-stages";
    pub const DUPLICATE_STEP: &str = "duplicate-step";
    pub const DUPLICATE_PIPELINE: &str = "duplicate-pipeline";
    pub const NO_STEPS: &str = "no-steps";
    pub const INVALID_EXPRESSION: &str = "invalid-expression";
    pub const UNKNOWN_EXPRESSION: &str = "unknown-expression";
    pub const EXPRESSION_NOT_ALLOWED: &str = "expression-not-allowed";
    /// A pod setting outside the allow-list (`privileged`, `hostPath`, …).
    pub const POD_SETTING_NOT_ALLOWED: &str = "pod-setting-not-allowed";
    /// A malformed `kubernetes:` setting (label, toleration, service account name).
    pub const INVALID_POD_SETTING: &str = "invalid-pod-setting";
    /// `kubernetes.service_account` in a run that is not trusted (reported by the
    /// server when it plans the run, not by `parse`).
    pub const UNTRUSTED_SERVICE_ACCOUNT: &str = "untrusted-service-account";

    /// Every code, for documentation and for tests that check coverage.
    pub const ALL: &[&str] = &[
        YAML_SYNTAX,
        YAML_UNSUPPORTED,
        NOT_A_MAPPING,
        EMPTY_FILE,
        DUPLICATE_KEY,
        UNKNOWN_KEY,
        WRONG_TYPE,
        MISSING_KEY,
        INVALID_VALUE,
        INVALID_NAME,
        UNKNOWN_STAGE_KIND,
        UNKNOWN_NEED,
        NEEDS_CYCLE,
        INVALID_CRON,
        INVALID_GLOB,
        INVALID_DURATION,
        INVALID_ENV_NAME,
        INVALID_RETRY,
        INVALID_QUANTITY,
        INVALID_LABEL,
        INVALID_PATH,
        INVALID_IMAGE_REF,
        INVALID_WEIGHT,
        TRAFFIC_NOT_SUPPORTED,
        INVALID_MATRIX,
        MATRIX_TOO_LARGE,
        FILE_TOO_LARGE,
        TOO_MANY_STAGES,
        DUPLICATE_STEP,
        DUPLICATE_PIPELINE,
        NO_STEPS,
        INVALID_EXPRESSION,
        UNKNOWN_EXPRESSION,
        EXPRESSION_NOT_ALLOWED,
        POD_SETTING_NOT_ALLOWED,
        INVALID_POD_SETTING,
        UNTRUSTED_SERVICE_ACCOUNT,
    ];
}

/// "did you mean `x`?" for a misspelt word, if one candidate is close enough.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_rustc() {
        let d = Diagnostic {
            severity: Severity::Error,
            code: codes::UNKNOWN_KEY.into(),
            file: ".slipway.yml".into(),
            line: 4,
            column: 5,
            message: "unknown key `imgae` in stage `build`".into(),
            hint: did_you_mean("imgae", ["image", "steps"]),
        };
        assert_eq!(
            d.to_string(),
            "error[unknown-key]: unknown key `imgae` in stage `build`\n  --> .slipway.yml:4:5\n  = hint: did you mean `image`?"
        );
    }

    #[test]
    fn no_suggestion_for_unrelated_words() {
        assert_eq!(did_you_mean("zzz", ["image", "steps"]), None);
    }
}
