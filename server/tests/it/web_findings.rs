//! A run's scan findings on its page, in a real headless Chromium against the real
//! `slipway server`: a scan stage reads a SARIF report with findings of several
//! severities and the built-in secret scan finds a planted token; the page groups them
//! worst first, each group with its word and shape beside its colour, each finding
//! with its rule, place and stage — the same findings the API answers.

use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::ui::{PASSWORD, Ui};

const WAIT: Duration = Duration::from_secs(60);

/// A SARIF report: a critical CVE (by CVSS score), a medium warning, a note.
const SARIF: &str = r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"depcheck"}},"results":[
{"ruleId":"CVE-2026-0001","level":"error","properties":{"security-severity":"9.8"},"message":{"text":"remote code execution in libfoo"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"app/Cargo.lock"},"region":{"startLine":42}}}]},
{"ruleId":"weak-hash","level":"warning","message":{"text":"md5 used for integrity"},"locations":[{"physicalLocation":{"artifactLocation":{"uri":"app/hash.sh"},"region":{"startLine":7}}}]},
{"ruleId":"todo-comment","level":"note","message":{"text":"a TODO left in"}}
]}]}"#;

const PIPELINE: &str = r#"stages:
  build:
    steps: [echo built]
  scan:
    kind: scan
    needs: [build]
    sarif: [reports/*.sarif]
    fail_on: critical
    steps:
      - name: depcheck
        run: mkdir -p reports && cp depcheck.sarif reports/
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_findings_are_grouped_by_severity_on_the_run_page() {
    let ui = Ui::start(&[("dev", "developer")]).await;
    // A token the built-in secret scan finds (high), never shown by value.
    let token = ["ghp_", "Q8wE3rT6yU", "9iO2pA5sD8", "fG1hJ4kL7z", "X0cV3b"].concat();
    let settings = format!("# settings\nLOG_LEVEL=info\nGITHUB_TOKEN={token}\n");
    ui.push_files(
        &[
            (".slipway.yml", PIPELINE),
            ("depcheck.sarif", SARIF),
            ("config/settings.env", &settings),
        ],
        "1",
    )
    .await;
    ui.wait_status(1, "failure").await;
    let api = ui
        .api(
            "GET",
            "/api/repos/team/app/runs/1/findings",
            &ui.admin,
            None,
        )
        .await;
    let stored = api.as_array().unwrap().len();
    assert!(stored >= 4, "{api:#}");

    let b = Browser::start().await;
    b.sign_in(&ui.base(), "dev", PASSWORD).await;
    b.goto(&format!("{}/repos/team/app/runs/1", ui.base()))
        .await;
    // Groups worst first, only the severities present.
    let order = b
        .js("return [...document.querySelectorAll('#findings details')].map(d => d.dataset.severity)")
        .await;
    assert_eq!(
        order,
        serde_json::json!(["critical", "high", "medium", "note"]),
        "{order}"
    );
    // Every finding the API has is on the page.
    let shown = b
        .js("return document.querySelectorAll('#findings li').length")
        .await;
    assert_eq!(shown.as_u64().unwrap() as usize, stored);
    let critical = b.text("#findings-critical").await;
    assert!(
        critical.contains("CVE-2026-0001")
            && critical.contains("app/Cargo.lock:42")
            && critical.contains("remote code execution")
            && critical.contains("depcheck in scan"),
        "{critical}"
    );
    let high = b.text("#findings-high").await;
    assert!(high.contains("config/settings.env:3"), "{high}");
    assert!(b.text("#findings-medium").await.contains("app/hash.sh:7"));
    assert!(b.text("#findings-note").await.contains("todo-comment"));
    // Each severity reads without colour: its word and its own shape.
    let icons = b
        .js("return [...document.querySelectorAll('#findings summary .sev')].map(s => s.innerText.trim())")
        .await;
    assert_eq!(
        icons,
        serde_json::json!(["‼ CRITICAL", "▲ HIGH", "◆ MEDIUM", "ℹ NOTE"]),
        "{icons}"
    );
    // And colours differ between the groups.
    let colours = b
        .js("return [...document.querySelectorAll('#findings summary .sev')].map(s => getComputedStyle(s).color)")
        .await;
    let distinct: std::collections::HashSet<String> = colours
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(distinct.len(), 4, "{colours}");
    // The secret itself is nowhere on the page.
    let html = b.client.source().await.unwrap();
    assert!(!html.contains(&token));
    b.screenshot("run-findings-desktop").await;
    b.resize(390, 844).await;
    b.screenshot("run-findings-phone").await;
    // The groups fold: a person can close one with the keyboard-reachable summary.
    b.click("#findings-note summary").await;
    b.wait_text("#findings-critical", "CVE", WAIT).await;
    // Bounded: a live refresh of the page may be patching it as the click lands, and
    // the fold must survive it.
    crate::support::poll::poll_until(WAIT, || async {
        let open = b
            .js("return [...document.querySelectorAll('#findings details')].map(d => d.id + '=' + d.open).join(' ')")
            .await;
        let open = open.as_str().unwrap_or_default().to_owned();
        if open.contains("findings-note=false") { Ok(()) } else { Err(open) }
    })
    .await
    .unwrap_or_else(|t| panic!("the folded group opened again: {}", t.state));
    assert_eq!(
        b.js("return document.getElementById('findings-critical').open")
            .await,
        true
    );
    b.close().await;
}
