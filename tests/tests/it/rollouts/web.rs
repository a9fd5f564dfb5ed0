//! The run page's rollout panel against a real rollout: the real server process drives
//! a canary in the kube double with a real HTTP background analysis, and a release
//! manager in a real headless Chromium watches it pause, sees the measurements arrive
//! without a reload, clicks Promote, and watches it end on the new digest.

use std::time::Duration;

use super::Health;
use super::rig::{Rig, WITHIN};
use crate::browser::Browser;

const PASSWORD: &str = "a long enough password";

fn pipeline(image: &str, health: &str) -> String {
    format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    target: {{ deployment: web }}
    image: {image}
    strategy:
      canary:
        analysis:
          interval: 1s
          http: {{ url: "{health}", json: {{ path: "$.status", equals: ok }} }}
        steps:
          - weight: 50
          - pause: {{}}
          - weight: 100
"#
    )
}

/// The digest reference as the panel shortens it (12 hex digits).
fn short(image: &str) -> String {
    let (name, hex) = image.split_once("@sha256:").unwrap();
    format!("{name}@sha256:{}", &hex[..12])
}

async fn rows(b: &Browser) -> u64 {
    b.js("return document.querySelectorAll('.rollout table.measurements tbody tr').length")
        .await
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_run_page_follows_a_real_canary_and_its_promote_button_moves_it_on() {
    let mut rig = Rig::start(2).await;
    let health = Health::start().await;
    let run = rig.push(&pipeline(&rig.images.v2, &health.url())).await;
    rig.rollout_when(run, "deploy", "the pause after weight 50", |v| {
        v["rollout"]["phase"] == "paused" && v["rollout"]["step"] == 1
    })
    .await;

    let b = Browser::start().await;
    let base = rig.p.url("");
    b.sign_in(&base, "rm", PASSWORD).await;
    b.goto(&format!("{base}/repos/team/app/runs/{run}")).await;
    let panel = ".rollout[data-stage=deploy]";
    b.wait_text(
        &format!("{panel} .headline"),
        "Paused, waiting for a promote",
        WITHIN,
    )
    .await;
    let current = b.read(&format!("{panel} [aria-current=step]")).await;
    assert!(current.contains("pause until promoted"), "{current}");
    assert_eq!(
        b.js(&format!(
            "return document.querySelector('{panel} meter').value"
        ))
        .await,
        50
    );
    let images = b.read(&format!("{panel} .images")).await;
    assert!(
        images.contains(&short(&rig.images.v1)) && images.contains(&short(&rig.images.v2)),
        "{images}"
    );

    // The background analysis measures every second; the table grows without a reload.
    b.js("window.__sameDocument = 'yes'; return null").await;
    let before = rows(&b).await;
    rig.wait("new measurements on the page", || async {
        let now = rows(&b).await;
        if now >= before + 2 {
            Ok(())
        } else {
            Err(format!("{now} rows (were {before})"))
        }
    })
    .await;
    assert_eq!(
        b.js("return window.__sameDocument || 'reloaded'").await,
        "yes"
    );
    let newest = b
        .read(&format!("{panel} table.measurements tbody tr"))
        .await;
    assert!(
        newest.contains("background") && newest.contains("pass"),
        "{newest}"
    );
    b.screenshot("rollout-live-paused-desktop").await;

    // Promote: the real controller takes it, sets weight 100 and finishes.
    b.submit(&format!("{panel} button[id$='-promote']")).await;
    b.js("window.__sameDocument = 'yes'; return null").await;
    let done = rig.finished(run).await;
    assert_eq!(
        done["run"]["status"],
        "success",
        "{done:#}\n{}",
        rig.server_log_tail()
    );
    assert_eq!(rig.stable_image().await, rig.images.v2);
    // The stage's one step (the controller's log) ends as the rollout did.
    let deploy = done["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["key"] == "deploy"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(deploy["steps"][0]["status"], "success", "{deploy:#}");
    b.wait_text(&format!("{panel} .headline"), "Succeeded", WITHIN)
        .await;
    b.wait_text("#run-status", "success", Duration::from_secs(30))
        .await;
    assert_eq!(
        b.js("return window.__sameDocument || 'reloaded'").await,
        "yes"
    );
    assert_eq!(
        b.js(&format!(
            "return document.querySelectorAll('{panel} .rollout-steps li.st-done').length"
        ))
        .await,
        4
    );
    b.screenshot("rollout-live-succeeded-desktop").await;
    let (_, audit) = rig
        .api(
            "GET",
            "/api/audit?action=rollout.promote",
            &rig.admin.clone(),
            None,
        )
        .await;
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{audit:#}");
    assert_eq!(entries[0]["actor"], "user:rm");
    b.close().await;
    rig.double.shutdown().await;
}
