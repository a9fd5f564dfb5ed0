//! What stages produce besides a status: outputs (`${{ stages.<name>.outputs.<key> }}`,
//! an image stage's `image` and `digest`), scan findings, and the pushed image's
//! artifact record. Written in the transaction that finishes the stage
//! ([`Store::finish_stage_with`](super::Store::finish_stage_with)); each attempt replaces
//! what the previous attempt of the stage wrote.

use std::collections::BTreeMap;

use runner::{Finding, Severity};
use serde::Serialize;
use sqlx::query;

use super::row::{RowExt, rows};
use super::{Error, Result, RunId, StageId, Store, Tx};

/// An image stage's output naming the pushed reference.
pub const OUTPUT_IMAGE: &str = "image";
/// An image stage's output holding the pushed manifest digest (`sha256:<hex>`).
pub const OUTPUT_DIGEST: &str = "digest";

/// Most outputs one stage may report.
pub const MAX_OUTPUTS: usize = 100;
/// Longest output value, in bytes.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Most findings stored for one stage; the rest are dropped (the count is logged).
pub const MAX_FINDINGS: usize = 5000;
const MAX_MESSAGE_CHARS: usize = 2000;
const MAX_FIELD_CHARS: usize = 1000;

/// What a stage reported with its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageResults {
    pub outputs: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
}

impl StageResults {
    /// Checks runner-supplied results before they are stored: outputs must be usable
    /// (names of letters, digits, `_`, `-`, `.`; bounded values without NUL; a valid
    /// `digest` when `image` is set) or the whole report is refused with the reason;
    /// findings are cut to size (at most [`MAX_FINDINGS`], long texts shortened, NUL
    /// removed, which PostgreSQL cannot store), never refused.
    pub fn sanitized(mut self) -> Result<StageResults, String> {
        if self.outputs.len() > MAX_OUTPUTS {
            return Err(format!(
                "{} outputs (at most {MAX_OUTPUTS})",
                self.outputs.len()
            ));
        }
        for (name, value) in &self.outputs {
            let valid = !name.is_empty()
                && name.len() <= 128
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !valid {
                return Err(format!("output name {name:?} is not valid"));
            }
            if value.len() > MAX_OUTPUT_BYTES || value.contains('\0') {
                return Err(format!(
                    "output `{name}` is longer than {MAX_OUTPUT_BYTES} bytes or holds a NUL byte"
                ));
            }
        }
        if let (Some(_), Some(digest)) = (
            self.outputs.get(OUTPUT_IMAGE),
            self.outputs.get(OUTPUT_DIGEST),
        ) && digest_hex(digest).is_none()
        {
            return Err(format!(
                "output `digest` must be `sha256:` and 64 hex digits, not {digest:?}"
            ));
        }
        if self.findings.len() > MAX_FINDINGS {
            tracing::warn!(
                reported = self.findings.len(),
                kept = MAX_FINDINGS,
                "too many findings; keeping the first"
            );
            self.findings.truncate(MAX_FINDINGS);
        }
        let clean = |s: &str, max: usize| -> String {
            s.chars().filter(|c| *c != '\0').take(max).collect()
        };
        for f in &mut self.findings {
            f.tool = clean(&f.tool, MAX_FIELD_CHARS);
            f.rule = clean(&f.rule, MAX_FIELD_CHARS);
            f.path = f.path.as_deref().map(|p| clean(p, MAX_FIELD_CHARS));
            f.message = clean(&f.message, MAX_MESSAGE_CHARS);
        }
        Ok(self)
    }
}

/// A stored finding, with the key of the stage that reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoredFinding {
    pub id: i64,
    pub run_id: RunId,
    pub stage_id: StageId,
    /// The stage's key within the run, e.g. `scan` or `ci/scan`.
    pub stage_key: String,
    /// `slipway-secrets` for the built-in secret scan, else the SARIF tool's name.
    pub tool: String,
    pub rule: String,
    /// `note`, `low`, `medium`, `high` or `critical`.
    #[schema(value_type = String, example = "high")]
    pub severity: Severity,
    /// Relative to the workspace; absent when the report named no file.
    pub path: Option<String>,
    /// 1-based.
    pub line: Option<i64>,
    pub message: String,
    pub created_at: i64,
}

/// One output of a finished stage of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutput {
    pub stage_id: StageId,
    pub stage_key: String,
    /// The plan's stage name (`stages.<name>` in expressions; the same for every
    /// expansion of a matrix stage); `None` if the stored spec has none.
    pub stage_name: Option<String>,
    pub name: String,
    pub value: String,
}

/// An image a stage pushed (an `artifacts` row of kind `image`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImageRecord {
    pub stage_id: StageId,
    pub stage_key: String,
    /// The reference pushed, e.g. `registry.example.com/team/app:1.2`.
    pub reference: String,
    /// `sha256:<hex>` of the pushed manifest: use the image by this, never by its tag.
    pub digest: String,
}

impl Store {
    /// Replaces the results of `stage` with `results` inside `tx` (the stage's previous
    /// attempt may have written some). An image stage's `image` + `digest` outputs also
    /// record an `image` artifact.
    pub(crate) async fn write_results_tx(
        &self,
        tx: &mut Tx,
        run: RunId,
        stage: StageId,
        results: &StageResults,
    ) -> Result<()> {
        let now = self.now_ms();
        for table in [
            "DELETE FROM findings WHERE stage_id = $1",
            "DELETE FROM stage_outputs WHERE stage_id = $1",
            "DELETE FROM artifacts WHERE stage_id = $1 AND kind = 'image'",
        ] {
            query(table).bind(stage).execute(&mut **tx).await?;
        }
        for (name, value) in &results.outputs {
            query("INSERT INTO stage_outputs (stage_id, name, value) VALUES ($1, $2, $3)")
                .bind(stage)
                .bind(name)
                .bind(value)
                .execute(&mut **tx)
                .await?;
        }
        for f in &results.findings {
            query(
                "INSERT INTO findings (run_id, stage_id, tool, rule, severity, path, line, \
                 message, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(run)
            .bind(stage)
            .bind(&f.tool)
            .bind(&f.rule)
            .bind(f.severity.as_str())
            .bind(&f.path)
            .bind(f.line.map(i64::from))
            .bind(&f.message)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        if let (Some(reference), Some(digest)) = (
            results.outputs.get(OUTPUT_IMAGE),
            results.outputs.get(OUTPUT_DIGEST),
        ) {
            let hex = digest_hex(digest).ok_or_else(|| {
                Error::Invalid(format!(
                    "output `digest` must be `sha256:` and 64 hex digits, not {digest:?}"
                ))
            })?;
            query(
                "INSERT INTO artifacts (run_id, stage_id, name, kind, sha256, size, created_at) \
                 VALUES ($1, $2, $3, 'image', $4, 0, $5) ON CONFLICT (stage_id, name) DO UPDATE \
                 SET kind = excluded.kind, sha256 = excluded.sha256, size = excluded.size, \
                 created_at = excluded.created_at",
            )
            .bind(run)
            .bind(stage)
            .bind(reference)
            .bind(hex)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// A run's findings, by stage then as reported.
    pub async fn list_findings(&self, run: RunId) -> Result<Vec<StoredFinding>> {
        let rs = query(
            "SELECT f.id, f.run_id, f.stage_id, s.stage_key, f.tool, f.rule, f.severity, f.path, \
             f.line, f.message, f.created_at FROM findings f JOIN stages s ON s.id = f.stage_id \
             WHERE f.run_id = $1 ORDER BY f.stage_id, f.id",
        )
        .bind(run)
        .fetch_all(&self.read)
        .await?;
        rows(&rs, |r| {
            Ok(StoredFinding {
                id: r.int("id")?,
                run_id: r.int("run_id")?,
                stage_id: r.int("stage_id")?,
                stage_key: r.text("stage_key")?,
                tool: r.text("tool")?,
                rule: r.text("rule")?,
                severity: severity(&r.text("severity")?)?,
                path: r.opt_text("path")?,
                line: r.opt_int("line")?,
                message: r.text("message")?,
                created_at: r.int("created_at")?,
            })
        })
    }

    /// The images a run's stages pushed, by stage.
    pub async fn list_images(&self, run: RunId) -> Result<Vec<ImageRecord>> {
        let rs = query(
            "SELECT a.stage_id, s.stage_key, a.name, a.sha256 FROM artifacts a \
             JOIN stages s ON s.id = a.stage_id WHERE a.run_id = $1 AND a.kind = 'image' \
             ORDER BY a.stage_id, a.name",
        )
        .bind(run)
        .fetch_all(&self.read)
        .await?;
        rows(&rs, |r| {
            Ok(ImageRecord {
                stage_id: r.int("stage_id")?,
                stage_key: r.text("stage_key")?,
                reference: r.text("name")?,
                digest: format!("sha256:{}", r.text("sha256")?),
            })
        })
    }

    /// The outputs of a run's stages, by stage id then name.
    pub async fn run_outputs(&self, run: RunId) -> Result<Vec<RunOutput>> {
        let rs = query(
            "SELECT o.stage_id, s.stage_key, s.spec, o.name, o.value FROM stage_outputs o \
             JOIN stages s ON s.id = o.stage_id WHERE s.run_id = $1 ORDER BY o.stage_id, o.name",
        )
        .bind(run)
        .fetch_all(&self.read)
        .await?;
        rows(&rs, |r| {
            let spec: serde_json::Value = r.json("spec")?;
            Ok(RunOutput {
                stage_id: r.int("stage_id")?,
                stage_key: r.text("stage_key")?,
                stage_name: spec["stage"].as_str().map(str::to_string),
                name: r.text("name")?,
                value: r.text("value")?,
            })
        })
    }
}

/// `sha256:<64 hex>` → the hex, lowercased.
pub fn digest_hex(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

fn severity(text: &str) -> Result<Severity> {
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map_err(|_| Error::Corrupt(format!("unexpected severity {text:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let hex = "a".repeat(64);
        assert_eq!(digest_hex(&format!("sha256:{hex}")), Some(hex.clone()));
        assert_eq!(digest_hex(&format!("sha256:{}", "A".repeat(64))), Some(hex));
        assert_eq!(digest_hex("sha256:abc"), None);
        assert_eq!(digest_hex(&"a".repeat(64)), None);
        for s in [
            Severity::Note,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ] {
            assert_eq!(severity(s.as_str()).unwrap(), s);
        }
        assert!(severity("urgent").is_err());
    }

    #[test]
    fn runner_results_are_checked_and_cut_to_size() {
        let finding = |message: String| Finding {
            tool: "t".into(),
            rule: "r\0".into(),
            severity: Severity::Low,
            path: Some("p".into()),
            line: Some(1),
            message,
        };
        let results = StageResults {
            outputs: [("digest".to_string(), "sha256:abc".to_string())].into(),
            findings: vec![finding("m".repeat(MAX_MESSAGE_CHARS + 10)); MAX_FINDINGS + 1],
        };
        // `digest` alone (no `image`) is an ordinary output.
        let ok = results.clone().sanitized().unwrap();
        assert_eq!(ok.findings.len(), MAX_FINDINGS);
        assert_eq!(ok.findings[0].message.chars().count(), MAX_MESSAGE_CHARS);
        assert_eq!(ok.findings[0].rule, "r");

        let mut with_image = results.clone();
        with_image
            .outputs
            .insert(OUTPUT_IMAGE.into(), "reg/app:1".into());
        let err = with_image.sanitized().unwrap_err();
        assert!(err.contains("sha256:abc"), "{err}");
        for (name, value) in [
            ("", "v"),
            ("a b", "v"),
            ("ok", "nul\0"),
            ("big", &"x".repeat(MAX_OUTPUT_BYTES + 1)),
        ] {
            let bad = StageResults {
                outputs: [(name.to_string(), value.to_string())].into(),
                findings: Vec::new(),
            };
            assert!(bad.sanitized().is_err(), "{name:?}");
        }
        let many = StageResults {
            outputs: (0..=MAX_OUTPUTS)
                .map(|i| (format!("k{i}"), "v".into()))
                .collect(),
            findings: Vec::new(),
        };
        assert!(many.sanitized().is_err());
    }
}
