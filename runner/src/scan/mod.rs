//! The work of a `kind: scan` stage, after its steps: the built-in secret scan of the
//! workspace ([`secrets`]), filtered by the allow-list ([`allow`]), plus the SARIF
//! reports the steps wrote ([`sarif`]).
//!
//! [`scan_workspace`] is blocking and reads the workspace only. What the stage makes of
//! the findings is the caller's: [`failing`] picks those at or above `fail_on`,
//! [`summary`] is the one-line form for the step log, and [`failure_reason`] the
//! stage's reason when it fails because of them.
//!
//! The built-in scan reads every regular file except: anything under a `.git`
//! directory, symlinks (never followed), files over [`MAX_FILE_BYTES`], binary files
//! (a NUL byte in the first 8 KiB), and the SARIF reports themselves (a scanner's
//! report may quote what it found; its findings come in through SARIF).

pub mod allow;
pub mod sarif;
mod secrets;

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::Path;

use crate::error::{Error, Result};
use crate::finding::Finding;
use crate::spec::{ScanSpec, Severity};

pub use allow::{ALLOW_FILE, AllowList};

/// The built-in scan's tool name.
pub const TOOL: &str = "slipway-secrets";
/// Larger files are not read by the built-in scan (they are data, not configuration).
pub const MAX_FILE_BYTES: u64 = 2 * 1024 * 1024;
/// At most this many built-in findings in all; past it the rest are dropped (logged).
pub const MAX_FINDINGS: usize = 1000;
/// Directory depth the walk goes to at most.
const MAX_DEPTH: usize = 128;
/// How much of a file is looked at to tell binary from text.
const BINARY_SNIFF: usize = 8 * 1024;

/// Scans the workspace at `root`: the SARIF reports matching `spec.sarif` (in the
/// order of their paths) after the built-in secret findings (by path and line) that
/// the allow-list does not accept. Blocking.
pub fn scan_workspace(root: &Path, spec: &ScanSpec) -> Result<Vec<Finding>> {
    for glob in &spec.sarif {
        crate::artifacts::check_glob(glob).map_err(|e| Error::Scan {
            path: glob.clone(),
            reason: format!("SARIF glob refused: {e}"),
        })?;
    }
    let reports = crate::artifacts::matching_files(root, &spec.sarif)?;
    if !spec.sarif.is_empty() && reports.is_empty() {
        tracing::warn!(globs = ?spec.sarif, "no SARIF report matched");
    }
    let allow = AllowList::load(root)?;
    let skip: BTreeSet<&str> = reports.iter().map(|(rel, _)| rel.as_str()).collect();
    let mut findings = Vec::new();
    walk(root, "", 0, &skip, &mut |rel, path| {
        for hit in scan_file(path)? {
            let finding = Finding {
                tool: TOOL.to_owned(),
                rule: hit.rule.to_owned(),
                severity: hit.severity,
                path: Some(rel.to_owned()),
                line: Some(hit.line),
                message: hit.message,
            };
            if !allow.allows(&finding) {
                findings.push(finding);
            }
        }
        Ok(findings.len() < MAX_FINDINGS)
    })?;
    if findings.len() >= MAX_FINDINGS {
        tracing::warn!(
            max = MAX_FINDINGS,
            "the secret scan stopped at its finding limit"
        );
        findings.truncate(MAX_FINDINGS);
    }
    let canonical_root = fs::canonicalize(root)
        .map_err(|e| Error::io(format!("resolving workspace {}", root.display()), e))?;
    for (rel, path) in &reports {
        findings.extend(sarif::read_report(path, rel, &canonical_root)?);
    }
    Ok(findings)
}

/// The findings at or above `fail_on` (none when `fail_on` is `None`).
pub fn failing(findings: &[Finding], fail_on: Option<Severity>) -> Vec<&Finding> {
    match fail_on {
        None => Vec::new(),
        Some(min) => findings.iter().filter(|f| f.severity >= min).collect(),
    }
}

/// One line for the step log: `path:line: severity rule — message`.
pub fn summary(f: &Finding) -> String {
    format!(
        "{}: {} {} — {}",
        location(f),
        f.severity.as_str(),
        f.rule,
        f.message
    )
}

/// `path:line`, `path`, or `(no file)`.
pub fn location(f: &Finding) -> String {
    match (&f.path, f.line) {
        (Some(p), Some(l)) => format!("{p}:{l}"),
        (Some(p), None) => p.clone(),
        (None, _) => "(no file)".to_owned(),
    }
}

/// The reason a scan stage failed, e.g. `scan found 1 finding at or above high:
/// src/config.rs:3 github-token` (the first few findings are named); `None` when no
/// finding reaches `fail_on`.
pub fn failure_reason(findings: &[Finding], fail_on: Option<Severity>) -> Option<String> {
    const NAMED: usize = 3;
    let failing = failing(findings, fail_on);
    let min = fail_on?;
    if failing.is_empty() {
        return None;
    }
    let n = failing.len();
    let named: Vec<String> = failing
        .iter()
        .take(NAMED)
        .map(|f| format!("{} {}", location(f), f.rule))
        .collect();
    let more = if n > NAMED {
        format!(" and {} more", n - NAMED)
    } else {
        String::new()
    };
    Some(format!(
        "scan found {n} finding{} at or above {}: {}{more}",
        if n == 1 { "" } else { "s" },
        min.as_str(),
        named.join(", ")
    ))
}

/// Calls `visit(relative path, path)` for each regular file under `dir`, sorted by
/// name; stops early when `visit` returns `false`.
fn walk(
    dir: &Path,
    rel_dir: &str,
    depth: usize,
    skip: &BTreeSet<&str>,
    visit: &mut dyn FnMut(&str, &Path) -> Result<bool>,
) -> Result<bool> {
    if depth > MAX_DEPTH {
        tracing::warn!(dir = %dir.display(), "secret scan: directory nesting too deep; skipped");
        return Ok(true);
    }
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let rel = if rel_dir.is_empty() {
            name.into_owned()
        } else {
            format!("{rel_dir}/{name}")
        };
        let path = entry.path();
        // `file_type` of a dir entry does not follow symlinks.
        let ft = entry
            .file_type()
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
        if ft.is_dir() {
            if entry.file_name() == ".git" {
                continue;
            }
            if !walk(&path, &rel, depth + 1, skip, visit)? {
                return Ok(false);
            }
        } else if ft.is_file() && !skip.contains(rel.as_str()) && !visit(&rel, &path)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The secret hits of one file; nothing for large or binary files.
fn scan_file(path: &Path) -> Result<Vec<secrets::Hit>> {
    let file =
        fs::File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut data = Vec::new();
    // Read one byte past the cap to know whether the file is over it.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    if data.len() as u64 > MAX_FILE_BYTES {
        tracing::debug!(file = %path.display(), "secret scan: file too large; skipped");
        return Ok(Vec::new());
    }
    if data[..data.len().min(BINARY_SNIFF)].contains(&0) {
        return Ok(Vec::new());
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    Ok(secrets::scan_text(
        &String::from_utf8_lossy(&data),
        secrets::FileKind::of(&name),
    ))
}

#[cfg(test)]
mod tests;
