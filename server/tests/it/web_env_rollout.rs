//! The environment page's rollouts in a real headless Chromium, on the scene of
//! `web_rollout` (the server's real routes; the test plays the controller through the
//! store functions it uses). The page shows the run page's panel for a rollout under
//! way — current step, weight, measurements and their chart — with Promote and Abort
//! for a release manager (the forms come back to the environment page) and who may
//! for a developer; it follows the rollout without a reload, and once the rollout has
//! ended shows it as the last one.

use std::time::Duration;

use server::store::rollouts::{PromoteRequest, RolloutPhase};
use server::store::{Dialect, StageStatus};

use crate::support::browser::Browser;
use crate::support::poll::eventually;
use crate::web_rollout::{OWNER, PASSWORD, Scene};

const WAIT: Duration = Duration::from_secs(30);

async fn meter(b: &Browser, panel: &str) -> serde_json::Value {
    b.js(&format!(
        "const m = document.querySelector('#env-rollouts {panel} meter'); return m ? m.value : null"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_page_shows_a_running_rollout_and_moves_it() {
    let s = Scene::start(Dialect::Sqlite).await;
    let store = &s.ts.state.store;
    let env_page = format!("{}/repos/{}/environments/prod", s.base, s.repo);
    let panel = s.panel();

    // A developer: the panel, its step, weight and chart, but no buttons.
    let b = Browser::start().await;
    b.sign_in(&s.base, "dev", PASSWORD).await;
    b.goto(&env_page).await;
    assert!(b.read("#rollouts-title").await.contains("under way"));
    let shown = b.read(&format!("#env-rollouts {panel}")).await;
    assert!(shown.contains("Paused, waiting for a promote."), "{shown}");
    let current = b
        .js(&format!(
            "return document.querySelector('#env-rollouts {panel} [aria-current=step]').textContent.trim()"
        ))
        .await;
    assert_eq!(current, "‖ pause until promoted (current step)");
    assert_eq!(meter(&b, &panel).await, 20);
    assert!(
        b.has(&format!("{panel} figure.chart svg")).await,
        "the measurements' chart"
    );
    assert_eq!(
        b.js(&format!(
            "return document.querySelectorAll('{panel} table.measurements tbody tr').length"
        ))
        .await,
        3
    );
    assert!(!b.has(&format!("#{}", s.button("promote"))).await);
    assert!(b.read(&format!("{panel} .why")).await.contains("ann"));
    b.click("form.signout button").await;

    // A release manager promotes from the environment page and comes back to it.
    b.sign_in(&s.base, "rm", PASSWORD).await;
    b.goto(&env_page).await;
    b.screenshot("environment-rollout-desktop").await;
    b.submit(&format!("#{}", s.button("promote"))).await;
    let taken = eventually("the promote request", WAIT, || async {
        let r = s.now().await;
        r.promote_request.ok_or(format!("{:?}", r.promote_request))
    })
    .await;
    assert_eq!(taken, PromoteRequest::Step);
    b.wait_text(&panel, "promote requested", WAIT).await;
    let url = b.client.current_url().await.unwrap();
    assert!(url.path().ends_with("/environments/prod"), "{url}");
    let promoted = s.audit("rollout.promote").await;
    assert_eq!(promoted.len(), 1);
    assert_eq!(promoted[0].actor, "user:rm");

    // The controller moves on: the page follows without a reload.
    b.js("window.__sameDocument = 'yes'; return null").await;
    let mut r = s.now().await;
    store.take_promote_request(r.id, OWNER).await.unwrap();
    r.step = 2;
    r.phase = RolloutPhase::Progressing;
    r.message = None;
    assert!(store.save_rollout(&r, OWNER, 1).await.unwrap());
    b.wait_text(
        &format!("{panel} [aria-current=step]"),
        "set weight 50%",
        WAIT,
    )
    .await;
    assert_eq!(meter(&b, &panel).await, 50);
    assert_eq!(
        b.js("return window.__sameDocument || 'reloaded'").await,
        "yes"
    );

    // Abort asks first, then is requested; back on the environment page.
    b.click(&format!("#{}", s.button("abort"))).await;
    b.client.accept_alert().await.unwrap();
    let r = eventually("the abort request", WAIT, || async {
        let r = s.now().await;
        if r.abort_requested {
            Ok(r)
        } else {
            Err("not yet")
        }
    })
    .await;
    assert_eq!(r.aborted_by.as_deref(), Some("user:rm"));
    b.wait_text(&panel, "abort requested by user:rm", WAIT)
        .await;
    let url = b.client.current_url().await.unwrap();
    assert!(url.path().ends_with("/environments/prod"), "{url}");

    // Ended: the page shows it as the last rollout, live no more.
    let mut r = s.now().await;
    r.phase = RolloutPhase::Aborted;
    r.message = Some("aborted by user:rm".into());
    let reason = r.message.clone();
    assert!(
        store
            .finish_rollout(&r, OWNER, StageStatus::Failure, reason.as_deref())
            .await
            .unwrap()
    );
    b.wait_text("#rollouts-title", "Last rollout", WAIT).await;
    assert_eq!(meter(&b, &panel).await, 0);
    b.resize(390, 844).await;
    b.screenshot("environment-rollout-phone").await;
    b.close().await;
}
