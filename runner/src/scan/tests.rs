//! The scan on real files in temp dirs.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

use super::*;

/// A GitHub token, built at run time so no source file holds one.
fn github_token() -> String {
    format!("{}_{}", "ghp", "Zx8Kq2Lm9Rt4Vw7Np3Bc6Hd1Fg5Js0Ty2Ua9")
}

fn write(root: &Path, rel: &str, text: impl AsRef<[u8]>) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn spec(sarif: &[&str], fail_on: Option<Severity>) -> ScanSpec {
    ScanSpec {
        sarif: sarif.iter().map(|s| s.to_string()).collect(),
        fail_on,
    }
}

fn planted() -> tempfile::TempDir {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    write(
        root,
        "src/config.rs",
        format!(
            "pub struct Config;\n// left in by mistake\npub const TOKEN: &str = \"{}\";\n",
            github_token()
        ),
    );
    write(
        root,
        "src/main.rs",
        "fn main() {\n    println!(\"hello\");\n}\n",
    );
    write(root, "README.md", "# Example\n\nNothing secret here.\n");
    ws
}

#[test]
fn a_planted_github_token_is_found_at_its_file_and_line() {
    let ws = planted();
    let findings = scan_workspace(ws.path(), &spec(&[], Some(Severity::High))).unwrap();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    let f = &findings[0];
    assert_eq!(f.tool, TOOL);
    assert_eq!(f.rule, "github-token");
    assert_eq!(f.severity, Severity::High);
    assert_eq!(f.path.as_deref(), Some("src/config.rs"));
    assert_eq!(f.line, Some(3));
    let token = github_token();
    assert!(!f.message.contains(&token[4..12]), "{}", f.message);
    assert_eq!(
        summary(f),
        "src/config.rs:3: high github-token — GitHub personal access token (ghp_****)"
    );
    assert_eq!(failing(&findings, Some(Severity::High)).len(), 1);
    assert_eq!(failing(&findings, Some(Severity::Critical)).len(), 0);
    assert_eq!(failing(&findings, None).len(), 0);
    assert_eq!(
        failure_reason(&findings, Some(Severity::High)).as_deref(),
        Some("scan found 1 finding at or above high: src/config.rs:3 github-token")
    );
    assert_eq!(failure_reason(&findings, Some(Severity::Critical)), None);
}

#[test]
fn the_allow_list_suppresses_built_in_findings() {
    for entry in ["src/config.rs:3", "src/", "src/*.rs", "rule:github-token"] {
        let ws = planted();
        write(
            ws.path(),
            ALLOW_FILE,
            format!("# accepted: a revoked token\n{entry}\n"),
        );
        let findings = scan_workspace(ws.path(), &spec(&[], Some(Severity::High))).unwrap();
        assert!(findings.is_empty(), "{entry}: {findings:#?}");
    }
    // An entry for another line does not hide it.
    let ws = planted();
    write(ws.path(), ALLOW_FILE, "src/config.rs:4\n");
    assert_eq!(
        scan_workspace(ws.path(), &spec(&[], None)).unwrap().len(),
        1
    );
    // A broken allow-list is an error naming its line, not an empty list.
    write(ws.path(), ALLOW_FILE, "# x\n../etc\n");
    let err = scan_workspace(ws.path(), &spec(&[], None)).unwrap_err();
    assert!(err.to_string().contains(".slipway/scan-allow:2"), "{err}");
    assert!(!err.is_retryable());
}

#[test]
fn skips_git_symlinks_binary_and_large_files() {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    let outside = tempfile::tempdir().unwrap();
    let token = github_token();
    write(root, ".git/config", format!("token = {token}\n"));
    write(root, "vendor/.git/x", format!("{token}\n"));
    write(outside.path(), "secret.txt", format!("{token}\n"));
    symlink(outside.path().join("secret.txt"), root.join("link.txt")).unwrap();
    symlink(outside.path(), root.join("linked-dir")).unwrap();
    let mut binary = b"\x7fELF\0\0\0".to_vec();
    binary.extend_from_slice(token.as_bytes());
    write(root, "app.bin", binary);
    let mut big = "x\n".repeat((MAX_FILE_BYTES / 2) as usize + 1);
    big.push_str(&token);
    write(root, "big.txt", big);
    assert_eq!(scan_workspace(root, &spec(&[], None)).unwrap(), vec![]);
    // The same token in an ordinary file is found.
    write(root, "deep/er/notes.txt", format!("\n{token}\n"));
    let found = scan_workspace(root, &spec(&[], None)).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(
        (found[0].path.as_deref(), found[0].line),
        (Some("deep/er/notes.txt"), Some(2))
    );
}

/// Lock files are full of hashes: sha256 hex (Cargo.lock, poetry.lock), SRI base64
/// (package-lock.json, yarn.lock), go.sum's `h1:`. None of them is a secret.
#[test]
fn no_false_positives_on_lock_files_and_ordinary_sources() {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    // This workspace's own lock file: a real one.
    write(root, "Cargo.lock", include_str!("../../../Cargo.lock"));
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut npm = String::from(
        "{\n  \"name\": \"app\",\n  \"lockfileVersion\": 3,\n  \"requires\": true,\n  \"packages\": {\n",
    );
    let mut yarn = String::from("# yarn lockfile v1\n\n");
    let mut gosum = String::new();
    let mut poetry = String::new();
    let mut record = String::new();
    for i in 0..200 {
        let name = format!("pkg-{i}");
        let sha512 = b64.encode(Sha512::digest(name.as_bytes()));
        let sha1 = b64.encode(&Sha256::digest(name.as_bytes())[..20]);
        npm.push_str(&format!(
            "    \"node_modules/{name}\": {{\n      \"version\": \"1.{i}.0\",\n      \
             \"resolved\": \"https://registry.npmjs.org/{name}/-/{name}-1.{i}.0.tgz\",\n      \
             \"integrity\": \"sha512-{sha512}\",\n      \"dev\": true\n    }},\n"
        ));
        yarn.push_str(&format!(
            "{name}@^1.{i}.0:\n  version \"1.{i}.0\"\n  resolved \
             \"https://registry.yarnpkg.com/{name}/-/{name}-1.{i}.0.tgz#{}\"\n  \
             integrity sha1-{sha1}\n\n",
            hex::encode(&Sha256::digest(name.as_bytes())[..20])
        ));
        let h1 = b64.encode(Sha256::digest(format!("go-{i}").as_bytes()));
        gosum.push_str(&format!(
            "github.com/example/mod{i} v0.{i}.1 h1:{h1}\ngithub.com/example/mod{i} v0.{i}.1/go.mod h1:{h1}\n"
        ));
        record.push_str(&format!(
            "{name}/__init__.py,sha256={},{}\n",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(Sha256::digest(name.as_bytes())),
            100 + i
        ));
        poetry.push_str(&format!(
            "{{file = \"{name}-1.0-py3-none-any.whl\", hash = \"sha256:{}\"}},\n",
            hex::encode(Sha256::digest(name.as_bytes()))
        ));
    }
    npm.push_str("  }\n}\n");
    write(root, "web/package-lock.json", npm);
    write(root, "web/yarn.lock", yarn);
    write(root, "go.sum", gosum);
    write(root, "poetry.lock", poetry);
    write(root, "site/app-1.0.dist-info/RECORD", record);
    // Some of this crate's own sources: identifiers, paths, UUID-like ids.
    write(root, "src/spec.rs", include_str!("../spec.rs"));
    write(root, "src/artifacts.rs", include_str!("../artifacts.rs"));
    write(
        root,
        "deploy/values.yaml",
        "image: registry.example.com/team/app@sha256:3b18e512dba79e4c8300dd08aeb37f8e728b8dad3b18e512dba79e4c8300dd08\n\
         id: 550e8400-e29b-41d4-a716-446655440000\n\
         password: ${DB_PASSWORD}\n\
         token: \"{{ .Values.token }}\"\n",
    );
    let findings = scan_workspace(root, &spec(&[], Some(Severity::Note))).unwrap();
    assert!(findings.is_empty(), "{findings:#?}");
}

#[test]
fn a_sarif_high_finding_fails_fail_on_high() {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    write(
        root,
        "src/db.py",
        "query = f\"SELECT * FROM t WHERE id = {id}\"\n",
    );
    let abs = fs::canonicalize(root).unwrap().join("src/db.py");
    write(
        root,
        "reports/bandit.sarif",
        format!(
            r#"{{"version": "2.1.0", "runs": [{{
  "tool": {{"driver": {{"name": "bandit", "rules": [{{"id": "B608", "defaultConfiguration": {{"level": "error"}}}}]}}}},
  "results": [
    {{"ruleId": "B608", "message": {{"text": "Possible SQL injection"}},
      "locations": [{{"physicalLocation": {{"artifactLocation": {{"uri": "file://{}"}}, "region": {{"startLine": 1}}}}}}]}},
    {{"ruleId": "B101", "level": "note", "message": {{"text": "assert used"}}}}
  ]}}]}}"#,
            abs.display()
        ),
    );
    // A report that quotes a secret is not scanned as a source file.
    write(
        root,
        "reports/gitleaks.sarif",
        format!(
            r#"{{"version": "2.1.0", "runs": [{{"tool": {{"driver": {{"name": "gitleaks"}}}}, "results": [],
  "properties": {{"snippet": "{}"}}}}]}}"#,
            github_token()
        ),
    );
    let s = spec(&["reports/*.sarif"], Some(Severity::High));
    let findings = scan_workspace(root, &s).unwrap();
    let view: Vec<_> = findings
        .iter()
        .map(|f| {
            (
                f.tool.as_str(),
                f.rule.as_str(),
                f.severity,
                f.path.as_deref(),
                f.line,
            )
        })
        .collect();
    assert_eq!(
        view,
        vec![
            ("bandit", "B608", Severity::High, Some("src/db.py"), Some(1)),
            ("bandit", "B101", Severity::Note, None, None),
        ]
    );
    let failing = failing(&findings, s.fail_on);
    assert_eq!(failing.len(), 1);
    assert_eq!(
        failure_reason(&findings, s.fail_on).as_deref(),
        Some("scan found 1 finding at or above high: src/db.py:1 B608")
    );
}

#[test]
fn bad_sarif_input_is_a_clear_error() {
    let ws = tempfile::tempdir().unwrap();
    let root = ws.path();
    write(
        root,
        "out/report.sarif",
        "{\"version\": \"2.1.0\",\n  \"runs\": [\n    {,\n",
    );
    let err = scan_workspace(root, &spec(&["out/*.sarif"], None)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("scan `out/report.sarif`: not valid JSON at 3:6"),
        "{text}"
    );
    assert!(!err.is_retryable());
    for glob in ["../x.sarif", "/tmp/x.sarif"] {
        let err = scan_workspace(root, &spec(&[glob], None)).unwrap_err();
        assert!(err.to_string().contains("SARIF glob refused"), "{err}");
    }
}

#[test]
fn failure_reasons_name_the_first_few() {
    let f = |path: &str, line| Finding {
        tool: TOOL.into(),
        rule: "r".into(),
        severity: Severity::Critical,
        path: Some(path.into()),
        line,
        message: "m".into(),
    };
    let findings = vec![
        f("a", Some(1)),
        f("b", None),
        f("c", Some(3)),
        f("d", Some(4)),
        f("e", Some(5)),
    ];
    assert_eq!(
        failure_reason(&findings, Some(Severity::Low)).unwrap(),
        "scan found 5 findings at or above low: a:1 r, b r, c:3 r and 2 more"
    );
}
