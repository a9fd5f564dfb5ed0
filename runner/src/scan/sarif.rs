//! SARIF 2.1.0 ingestion: turns the reports a scanner wrote in the stage's steps into
//! [`Finding`]s.
//!
//! * tool: `runs[].tool.driver.name`; rule: `results[].ruleId` (or `rule.id`, or the
//!   id of the rule at `ruleIndex`).
//! * severity: a CVSS score in `properties.security-severity` (of the result, else of
//!   its rule) — critical ≥ 9, high ≥ 7, medium ≥ 4, low > 0 — else the result's
//!   `level`, else the rule's `defaultConfiguration.level`, else SARIF's default
//!   `warning`: error → high, warning → medium, note and none → note.
//! * location: the first `physicalLocation`; `artifactLocation.uri` with `file://`
//!   stripped, resolved against `uriBaseId` when the run declares it, and made relative
//!   to the workspace when it is an absolute path inside it; `region.startLine`.
//! * results of kind `pass` or `notApplicable` are not findings.
//!
//! A report that is not valid JSON, or not shaped like SARIF, is an error naming the
//! file and the line:column where reading stopped.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::finding::Finding;
use crate::spec::Severity;

/// Longest message kept from a report.
const MAX_MESSAGE_CHARS: usize = 1000;
/// Largest report read.
pub(crate) const MAX_REPORT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Deserialize)]
struct Log {
    version: Option<String>,
    #[serde(default)]
    runs: Vec<Run>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Run {
    tool: Tool,
    #[serde(default)]
    results: Option<Vec<SarifResult>>,
    #[serde(default)]
    original_uri_base_ids: BTreeMap<String, ArtifactLocation>,
}

#[derive(Deserialize)]
struct Tool {
    driver: Driver,
}

#[derive(Deserialize)]
struct Driver {
    name: String,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    id: String,
    #[serde(default)]
    default_configuration: Option<Configuration>,
    #[serde(default)]
    properties: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    short_description: Option<Message>,
}

#[derive(Deserialize)]
struct Configuration {
    level: Option<Level>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "camelCase")]
enum Level {
    None,
    Note,
    Warning,
    Error,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult {
    rule_id: Option<String>,
    rule_index: Option<usize>,
    rule: Option<RuleReference>,
    kind: Option<String>,
    level: Option<Level>,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    locations: Vec<Location>,
    #[serde(default)]
    properties: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct RuleReference {
    id: Option<String>,
    index: Option<usize>,
}

#[derive(Deserialize)]
struct Message {
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Location {
    physical_location: Option<PhysicalLocation>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation {
    artifact_location: Option<ArtifactLocation>,
    region: Option<Region>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactLocation {
    uri: Option<String>,
    uri_base_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Region {
    start_line: Option<u32>,
}

/// Reads the report at `file` (`rel` is its workspace-relative name, for messages)
/// and returns its findings; paths are made relative to `root` where they point into it.
pub fn read_report(file: &Path, rel: &str, root: &Path) -> Result<Vec<Finding>> {
    let bad = |reason: String| Error::Scan {
        path: rel.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(file).map_err(|e| Error::io(format!("reading {rel}"), e))?;
    if meta.len() > MAX_REPORT_BYTES {
        return Err(bad(format!(
            "SARIF report larger than {} MiB",
            MAX_REPORT_BYTES / 1024 / 1024
        )));
    }
    let bytes = std::fs::read(file).map_err(|e| Error::io(format!("reading {rel}"), e))?;
    parse(&bytes, root).map_err(bad)
}

/// Parses a SARIF log; the error is the reason (the caller names the file).
pub(crate) fn parse(bytes: &[u8], root: &Path) -> std::result::Result<Vec<Finding>, String> {
    let log: Log = serde_json::from_slice(bytes).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() {
            "not valid JSON"
        } else {
            "not a SARIF log"
        };
        // serde_json's message ends with "at line L column C"; say it our way.
        let msg = e.to_string();
        let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
        format!("{what} at {}:{}: {msg}", e.line(), e.column())
    })?;
    match log.version.as_deref() {
        Some("2.1.0") => {}
        Some(v) => return Err(format!("SARIF version {v:?} is not supported (want 2.1.0)")),
        None => return Err("not a SARIF log: no `version`".into()),
    }
    let mut out = Vec::new();
    for run in &log.runs {
        let driver = &run.tool.driver;
        for result in run.results.iter().flatten() {
            if matches!(result.kind.as_deref(), Some("pass" | "notApplicable")) {
                continue;
            }
            let index = result
                .rule_index
                .or_else(|| result.rule.as_ref().and_then(|r| r.index));
            let rule_id = result
                .rule_id
                .clone()
                .or_else(|| result.rule.as_ref().and_then(|r| r.id.clone()))
                .or_else(|| {
                    index
                        .and_then(|i| driver.rules.get(i))
                        .map(|r| r.id.clone())
                });
            let rule = index
                .and_then(|i| driver.rules.get(i))
                .filter(|r| rule_id.as_deref().is_none_or(|id| r.id == id))
                .or_else(|| {
                    rule_id
                        .as_deref()
                        .and_then(|id| driver.rules.iter().find(|r| r.id == id))
                });
            let severity = security_severity(result.properties.as_ref())
                .or_else(|| security_severity(rule.and_then(|r| r.properties.as_ref())))
                .unwrap_or_else(|| {
                    level_severity(
                        result
                            .level
                            .or_else(|| {
                                rule.and_then(|r| r.default_configuration.as_ref())
                                    .and_then(|c| c.level)
                            })
                            .unwrap_or(Level::Warning),
                    )
                });
            let physical = result
                .locations
                .iter()
                .find_map(|l| l.physical_location.as_ref());
            let path = physical
                .and_then(|p| p.artifact_location.as_ref())
                .and_then(|a| location_path(a, &run.original_uri_base_ids, root));
            let line = physical
                .and_then(|p| p.region.as_ref())
                .and_then(|r| r.start_line)
                .filter(|l| *l > 0);
            let message = result
                .message
                .as_ref()
                .and_then(|m| m.text.clone())
                .or_else(|| rule.and_then(|r| r.short_description.as_ref()?.text.clone()))
                .or_else(|| rule_id.clone())
                .unwrap_or_default();
            out.push(Finding {
                tool: driver.name.clone(),
                rule: rule_id.unwrap_or_else(|| "unknown".into()),
                severity,
                path,
                line,
                message: message.chars().take(MAX_MESSAGE_CHARS).collect(),
            });
        }
    }
    Ok(out)
}

/// `properties.security-severity`, a CVSS score as a string or a number.
fn security_severity(props: Option<&BTreeMap<String, Value>>) -> Option<Severity> {
    let score = match props?.get("security-severity")? {
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        Value::Number(n) => n.as_f64()?,
        _ => return None,
    };
    Some(match score {
        s if s >= 9.0 => Severity::Critical,
        s if s >= 7.0 => Severity::High,
        s if s >= 4.0 => Severity::Medium,
        s if s > 0.0 => Severity::Low,
        _ => Severity::Note,
    })
}

fn level_severity(level: Level) -> Severity {
    match level {
        Level::Error => Severity::High,
        Level::Warning => Severity::Medium,
        Level::Note | Level::None => Severity::Note,
    }
}

/// The finding's path: relative to the workspace when it points into it, else as the
/// report gave it (a scanner in a container may report paths of its own file system).
fn location_path(
    loc: &ArtifactLocation,
    bases: &BTreeMap<String, ArtifactLocation>,
    root: &Path,
) -> Option<String> {
    let uri = loc.uri.as_deref()?;
    let mut path = uri_path(uri);
    if !is_absolute(&path)
        && let Some(base) = loc
            .uri_base_id
            .as_ref()
            .and_then(|id| bases.get(id))
            .and_then(|b| b.uri.as_deref())
    {
        let base = uri_path(base);
        if is_absolute(&base) {
            path = format!("{}/{}", base.trim_end_matches('/'), path);
        }
    }
    if is_absolute(&path) {
        let roots = [
            root.to_string_lossy().into_owned(),
            std::fs::canonicalize(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ];
        for r in roots.iter().filter(|r| !r.is_empty()) {
            if let Some(rest) = path.strip_prefix(r.trim_end_matches('/'))
                && let Some(rel) = rest.strip_prefix('/')
            {
                return Some(rel.to_owned());
            }
        }
        return Some(path);
    }
    Some(path.trim_start_matches("./").to_owned())
}

fn is_absolute(path: &str) -> bool {
    path.starts_with('/')
}

/// A `file://` URI or a relative reference → a `/`-separated path, percent-decoded.
fn uri_path(uri: &str) -> String {
    let rest = match uri.strip_prefix("file://") {
        // `file:///abs`, `file://localhost/abs`
        Some(r) => match r.find('/') {
            Some(at) => &r[at..],
            None => r,
        },
        None => uri.strip_prefix("file:").unwrap_or(uri),
    };
    percent_decode(&rest.replace('\\', "/"))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Bytes, not `&str` slices: a `%` before a multi-byte character must not panic.
        if b[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                b.get(i + 1).and_then(|c| (*c as char).to_digit(16)),
                b.get(i + 2).and_then(|c| (*c as char).to_digit(16)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(results: &str, rules: &str) -> String {
        format!(
            r#"{{"version": "2.1.0", "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
  "runs": [{{"tool": {{"driver": {{"name": "semgrep", "rules": [{rules}]}}}},
    "originalUriBaseIds": {{"SRC": {{"uri": "file:///ws/"}}}},
    "results": [{results}]}}]}}"#
        )
    }

    #[test]
    fn severities_from_score_level_and_rule() {
        let rules = r#"{"id": "sqli", "defaultConfiguration": {"level": "error"}},
                       {"id": "cve", "properties": {"security-severity": "9.8"}},
                       {"id": "weak", "defaultConfiguration": {"level": "note"}}"#;
        let results = r#"
  {"ruleId": "sqli", "message": {"text": "SQL injection"},
   "locations": [{"physicalLocation": {"artifactLocation": {"uri": "src/db.rs"}, "region": {"startLine": 12}}}]},
  {"ruleId": "cve", "message": {"text": "vulnerable dependency"},
   "locations": [{"physicalLocation": {"artifactLocation": {"uri": "file:///ws/Cargo.lock"}}}]},
  {"ruleIndex": 2, "message": {"text": "weak hash"},
   "locations": [{"physicalLocation": {"artifactLocation": {"uri": "lib/a%20b.py", "uriBaseId": "SRC"}, "region": {"startLine": 1}}}]},
  {"ruleId": "x", "level": "warning", "properties": {"security-severity": 7.5}, "message": {"text": "m"}},
  {"ruleId": "y", "message": {"text": "default level"}},
  {"ruleId": "z", "kind": "pass", "message": {"text": "fine"}}
"#;
        let got = parse(report(results, rules).as_bytes(), Path::new("/ws")).unwrap();
        let view: Vec<_> = got
            .iter()
            .map(|f| (f.rule.as_str(), f.severity, f.path.as_deref(), f.line))
            .collect();
        assert_eq!(
            view,
            vec![
                ("sqli", Severity::High, Some("src/db.rs"), Some(12)),
                ("cve", Severity::Critical, Some("Cargo.lock"), None),
                ("weak", Severity::Note, Some("lib/a b.py"), Some(1)),
                ("x", Severity::High, None, None),
                ("y", Severity::Medium, None, None),
            ]
        );
        assert!(got.iter().all(|f| f.tool == "semgrep"));
        assert_eq!(got[0].message, "SQL injection");
    }

    #[test]
    fn malformed_reports_say_where() {
        let err = parse(b"{\"version\": \"2.1.0\",\n \"runs\": [}", Path::new("/ws")).unwrap_err();
        assert!(err.starts_with("not valid JSON at 2:"), "{err}");
        let err = parse(
            b"{\"version\": \"2.1.0\",\n\"runs\": [{\"tool\": {\"driver\": {\"name\": 3}}}]}",
            Path::new("/ws"),
        )
        .unwrap_err();
        assert!(err.starts_with("not a SARIF log at 2:"), "{err}");
        let err = parse(b"{\"version\": \"2.0.0\", \"runs\": []}", Path::new("/ws")).unwrap_err();
        assert!(err.contains("2.0.0"), "{err}");
        let err = parse(b"{\"runs\": []}", Path::new("/ws")).unwrap_err();
        assert!(err.contains("version"), "{err}");
    }

    #[test]
    fn uris() {
        assert_eq!(uri_path("file:///a/b%2Fc"), "/a/b/c");
        assert_eq!(uri_path("file://localhost/a"), "/a");
        assert_eq!(uri_path("src\\x.rs"), "src/x.rs");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%é%4"), "%é%4");
    }
}
