//! What a scan stage reports: one [`Finding`] per problem, from the built-in secret
//! scan or from a SARIF report a scanner wrote.

use serde::{Deserialize, Serialize};

use crate::spec::Severity;

/// One problem found in the workspace. Never holds the secret it found: `message`
/// names the rule, the location says where to look.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Finding {
    /// `slipway-secrets` for the built-in scan, else the SARIF tool's driver name.
    pub tool: String,
    /// Rule id, e.g. `github-token` or a SARIF `ruleId`.
    pub rule: String,
    pub severity: Severity,
    /// Relative to the workspace, `/`-separated; `None` when the report gave no file.
    pub path: Option<String>,
    /// 1-based.
    pub line: Option<u32>,
    pub message: String,
}
