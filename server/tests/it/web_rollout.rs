//! The run page's rollout panel in a real headless Chromium (WebDriver) against the
//! server's real routes, with the rollout's state written through the store functions
//! the rollout controller itself uses (`start_rollout`, `save_rollout`,
//! `record_measurement`, `take_promote_request`, `finish_rollout`) — no cluster, and
//! no controller loop to race: this test plays the controller, so every state the
//! panel shows is one the controller writes.
//!
//! What a person does goes through the page: a developer sees the panel and who may
//! act but no buttons, and a promote forged with their session is refused and
//! audited; a form without the session's CSRF token is refused; a release manager
//! reaches Promote with the keyboard and the request is taken; the panel follows the
//! controller live (no reload); Abort asks first; a failed rollout shows its reason and
//! Retry starts a promotion run. On SQLite and PostgreSQL. Screenshots:
//! `<target>/screenshots/rollout-*.png`.

use std::time::Duration;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use server::delivery::gate::EnvironmentRules;
use server::store::environments::EnvironmentUpdate;
use server::store::rollouts::{Measurement, PromoteRequest, RolloutPhase, RolloutRecord};
use server::store::{Dialect, Role, StageStatus};

use crate::support::both_databases;
use crate::support::browser::Browser;
use crate::support::poll::eventually;
use crate::support::test_server::TestServer;

const WAIT: Duration = Duration::from_secs(30);
pub(crate) const PASSWORD: &str = "correct horse battery staple";
/// The test's controller: it holds every rollout's lease for a day.
pub(crate) const OWNER: &str = "test-controller";
const DIGEST: &str = "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945";

fn pipeline() -> String {
    format!(
        r#"stages:
  deploy:
    kind: deploy
    environment: prod
    target: {{ deployment: web, service: web }}
    image: registry.example.com/shop/web@sha256:{DIGEST}
    strategy:
      canary:
        traffic: {{ gateway: {{ route: web }} }}
        analysis:
          interval: 10s
          failure_limit: 1
          prometheus: {{ address: "http://prometheus:9090", query: "sum(rate(errors[1m]))", pass: "< 0.05" }}
        steps:
          - weight: 20
          - pause: {{}}
          - weight: 50
          - weight: 100
"#
    )
}

/// The server's routes on loopback (no workers), `team/app-0` with a run of the
/// pipeline whose rollout the test controller started, and two people. Also the scene
/// of the environment page's rollout test (`web_env_rollout`).
pub(crate) struct Scene {
    pub ts: TestServer,
    pub base: String,
    pub repo: String,
    pub rollout: RolloutRecord,
}

impl Scene {
    pub async fn start(db: Dialect) -> Scene {
        let ts = TestServer::builder().on(db).build().await;
        let addr = ts.serve_routes().await;
        let store = &ts.state.store;
        for (name, role) in [("rm", Role::ReleaseManager), ("dev", Role::Developer)] {
            server::admin::people::add_user(
                store,
                "test",
                name,
                zeroize::Zeroizing::new(PASSWORD.to_string()),
                Some((role, None)),
            )
            .await
            .unwrap();
        }
        let yaml = pipeline();
        let (repo, sha) = ts.repo(&[(".slipway.yml", &yaml)]).await;
        let rules = EnvironmentRules {
            approver_users: vec!["ann".into()],
            ..Default::default()
        };
        store
            .put_environment(
                "test",
                &repo,
                "prod",
                EnvironmentUpdate {
                    rules,
                    namespace: Some("shop".into()),
                    kubeconfig_enc: None,
                },
            )
            .await
            .unwrap();
        let run = ts.run(&repo, &sha, &yaml, false).await;
        let stage = ts.stage(run.id, "deploy").await.stage;
        assert_eq!(
            stage.status,
            StageStatus::Queued,
            "{}",
            ts.dump(run.id).await
        );
        let new = server::rollout::start::new_rollout(store, &stage)
            .await
            .unwrap()
            .unwrap();
        let mut r = store
            .start_rollout(stage.id, OWNER, 86_400_000, &new)
            .await
            .unwrap()
            .expect("the queued rollout stage starts");
        // As the controller's first ticks leave it: the stable version read, weight 20
        // set, paused for a person; the background analysis measured three times.
        r.stable_image = Some("registry.example.com/shop/web:v1".into());
        r.step = 1;
        r.phase = RolloutPhase::Paused;
        r.message = Some("waiting for a promote".into());
        assert!(store.save_rollout(&r, OWNER, 0).await.unwrap());
        let now = store.now_ms();
        for (seq, outcome, value, detail) in [
            (1, "pass", "0.01", "0.01 < 0.05"),
            (2, "pass", "0.02", "0.02 < 0.05"),
            (3, "fail", "0.31", "0.31 is not < 0.05"),
        ] {
            let m = Measurement {
                step: -1,
                analysis: "background".into(),
                seq,
                check: "prometheus sum(rate(errors[1m]))".into(),
                outcome: outcome.into(),
                value: Some(value.into()),
                detail: detail.into(),
                at: now - (4 - seq) * 10_000,
            };
            store.record_measurement(r.id, &m).await.unwrap();
        }
        let rollout = store.rollout_of_stage(stage.id).await.unwrap().unwrap();
        Scene {
            base: format!("http://{addr}"),
            repo: repo.name,
            rollout,
            ts,
        }
    }

    fn run_page(&self) -> String {
        format!("{}/repos/{}/runs/1", self.base, self.repo)
    }

    pub fn panel(&self) -> String {
        format!("#rollout-{}", self.rollout.stage_id)
    }

    pub fn button(&self, which: &str) -> String {
        format!("rollout-{}-{which}", self.rollout.stage_id)
    }

    pub async fn now(&self) -> RolloutRecord {
        self.ts
            .state
            .store
            .rollout_of_stage(self.rollout.stage_id)
            .await
            .unwrap()
            .unwrap()
    }

    pub async fn audit(&self, action: &str) -> Vec<server::store::audit::AuditEntry> {
        let filter = server::store::audit::AuditFilter {
            action: Some(action.into()),
            ..Default::default()
        };
        self.ts
            .state
            .store
            .list_audit_newest(&filter)
            .await
            .unwrap()
    }

    /// A session over plain HTTP: its cookie and its CSRF token.
    async fn session(&self, name: &str) -> (reqwest::Client, String, String) {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = http
            .post(format!("{}/login", self.base))
            .form(&[("name", name), ("password", PASSWORD), ("next", "/")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303, "sign-in");
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        let page = http
            .get(self.run_page())
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = page
            .split("data-csrf=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        (http, cookie, csrf)
    }

    async fn post(
        &self,
        who: &(reqwest::Client, String, String),
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String) {
        let r = who
            .0
            .post(format!(
                "{}/repos/{}/runs/1/rollout/{path}",
                self.base, self.repo
            ))
            .header("cookie", &who.1)
            .form(form)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

async fn press(b: &Browser, key: Key) {
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key.into() })
        .then(KeyAction::Up { value: key.into() });
    b.client.perform_actions(keys).await.unwrap();
}

async fn js_str(b: &Browser, script: &str) -> String {
    b.js(script).await.as_str().unwrap_or_default().to_string()
}

async fn a_developer_sees_the_rollout_but_may_not_move_it(db: Dialect) {
    let s = Scene::start(db).await;
    let b = Browser::start().await;
    b.sign_in(&s.base, "dev", PASSWORD).await;
    b.goto(&s.run_page()).await;
    let panel = s.panel();
    assert_eq!(
        js_str(
            &b,
            &format!("return document.querySelector('{panel}').dataset.phase")
        )
        .await,
        "paused"
    );
    let shown = b.read(&panel).await;
    assert!(shown.contains("Paused, waiting for a promote."), "{shown}");
    assert!(shown.contains("canary, through HTTPRoute web"), "{shown}");
    // The steps: the first done, the pause current, the rest to come.
    let steps = b
        .js(&format!(
            "return [...document.querySelectorAll('{panel} .rollout-steps li')].map(l => l.className + ' ' + l.textContent.trim())"
        ))
        .await;
    let steps: Vec<&str> = steps
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(steps.len(), 5, "{steps:?}");
    assert!(
        steps[0].starts_with("st-done ✓ set weight 20%"),
        "{steps:?}"
    );
    assert!(
        steps[1].starts_with("st-current ‖ pause until promoted"),
        "{steps:?}"
    );
    assert!(steps[2].starts_with("st-todo"), "{steps:?}");
    assert_eq!(
        js_str(
            &b,
            &format!(
                "return document.querySelector('{panel} [aria-current=step]').textContent.trim()"
            )
        )
        .await,
        "‖ pause until promoted (current step)"
    );
    assert_eq!(
        b.js(&format!(
            "return document.querySelector('{panel} meter').value"
        ))
        .await,
        20
    );
    // Stable → new, the digest short with the whole reference in its title.
    let new = b.read(&format!("{panel} .new-image")).await;
    assert_eq!(new, "registry.example.com/shop/web@sha256:4f53cda18c2b");
    assert_eq!(
        js_str(
            &b,
            &format!("return document.querySelector('{panel} .new-image').title")
        )
        .await,
        format!("registry.example.com/shop/web@sha256:{DIGEST}")
    );
    assert!(
        b.read(&format!("{panel} .images"))
            .await
            .starts_with("registry.example.com/shop/web:v1")
    );
    // Measurements newest first, the failing one marked.
    let rows = b
        .js(&format!(
            "return [...document.querySelectorAll('{panel} table.measurements tbody tr')].map(r => r.className + '|' + r.cells[2].textContent + '|' + r.cells[4].textContent.trim() + '|' + r.cells[5].textContent)"
        ))
        .await;
    assert_eq!(
        rows,
        serde_json::json!(["m-bad|3|✗ fail|0.31", "|2|✓ pass|0.02", "|1|✓ pass|0.01"])
    );
    assert!(b.has(&format!("{panel} figure.chart svg path.fail")).await);
    // No buttons, and a line saying who may.
    for which in ["promote", "promote-full", "abort", "retry"] {
        assert!(!b.has(&format!("#{}", s.button(which))).await, "{which}");
    }
    let why = b.read(&format!("{panel} .why")).await;
    assert!(
        why.contains(&format!("a release manager on {}", s.repo))
            && why.contains("approver of environment prod (ann)"),
        "{why}"
    );
    b.screenshot("rollout-developer-desktop").await;

    // A promote forged with the developer's own session and token: refused, audited.
    let dev = s.session("dev").await;
    let (status, page) = s
        .post(
            &dev,
            "promote",
            &[("_csrf", dev.2.as_str()), ("stage", "deploy")],
        )
        .await;
    assert_eq!(status, 403, "{page}");
    assert!(
        page.contains("dev may not promote rollouts to `prod`"),
        "{page}"
    );
    let refused = s.audit("rollout.refused").await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].actor, "user:dev");
    assert_eq!(refused[0].detail["request"], "promote");
    let (status, _) = s
        .post(
            &dev,
            "abort",
            &[("_csrf", dev.2.as_str()), ("stage", "deploy")],
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(s.audit("rollout.refused").await.len(), 2);

    // A release manager's session, but a form without its CSRF token (a cross-site
    // post): refused before anything is looked at, nothing requested, nothing audited.
    let rm = s.session("rm").await;
    for form in [
        vec![("stage", "deploy")],
        vec![("_csrf", "forged"), ("stage", "deploy")],
    ] {
        let (status, page) = s.post(&rm, "promote", &form).await;
        assert_eq!(status, 403, "{page}");
        assert!(page.contains("CSRF"), "{page}");
    }
    let (status, _) = s.post(&rm, "abort", &[("stage", "deploy")]).await;
    assert_eq!(status, 403);
    let now = s.now().await;
    assert_eq!((now.promote_request, now.abort_requested), (None, false));
    assert_eq!(s.audit("rollout.refused").await.len(), 2);
    assert!(s.audit("rollout.promote").await.is_empty());
    b.close().await;
}

async fn a_release_manager_promotes_by_keyboard_and_the_panel_follows_the_rollout_live(
    db: Dialect,
) {
    let s = Scene::start(db).await;
    let store = &s.ts.state.store;
    let b = Browser::start().await;
    b.sign_in(&s.base, "rm", PASSWORD).await;
    b.goto(&s.run_page()).await;
    let panel = s.panel();
    assert!(
        b.read(&format!("{panel} .rollout-actions"))
            .await
            .contains("Promote fully")
    );
    assert!(!b.has(&format!("{panel} .why")).await);
    b.screenshot("rollout-paused-desktop").await;

    // Tab to Promote (bounded), with a visible focus ring, and press Enter.
    let promote = s.button("promote");
    let mut reached = false;
    for _ in 0..40 {
        press(&b, Key::Tab).await;
        if js_str(&b, "return document.activeElement.id").await == promote {
            reached = true;
            break;
        }
    }
    assert!(reached, "Promote is not reachable with Tab");
    let ring = js_str(
        &b,
        "const e = document.activeElement; return e.matches(':focus-visible') + ' ' + getComputedStyle(e).outlineStyle",
    )
    .await;
    assert_eq!(ring, "true solid");
    b.screenshot("rollout-focus-desktop").await;
    press(&b, Key::Enter).await;
    let taken = eventually("the promote request", WAIT, || async {
        let r = s.now().await;
        r.promote_request.ok_or(format!("{:?}", r.promote_request))
    })
    .await;
    assert_eq!(taken, PromoteRequest::Step);
    let promoted = s.audit("rollout.promote").await;
    assert_eq!(promoted.len(), 1);
    assert_eq!(promoted[0].actor, "user:rm");
    b.wait_text(&panel, "promote requested", WAIT).await;
    b.js("window.__sameDocument = 'yes'; return null").await;

    // The controller takes the request and moves on: the page follows without a reload.
    let mut r = s.now().await;
    assert_eq!(
        store.take_promote_request(r.id, OWNER).await.unwrap(),
        Some(PromoteRequest::Step)
    );
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
    assert_eq!(
        b.js(&format!(
            "return document.querySelector('{panel} meter').value"
        ))
        .await,
        50
    );
    assert!(!b.read(&panel).await.contains("promote requested"));
    assert_eq!(
        b.js("return window.__sameDocument || 'reloaded'").await,
        "yes"
    );

    // Abort asks first: dismissed, nothing happens; accepted, the abort is requested.
    b.click(&format!("#{}", s.button("abort"))).await;
    let question = b.client.get_alert_text().await.unwrap();
    assert!(
        question.contains("Abort the rollout of deploy to prod"),
        "{question}"
    );
    b.client.dismiss_alert().await.unwrap();
    assert!(!s.now().await.abort_requested);
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
    assert!(
        !b.has(&format!("#{}", s.button("abort"))).await,
        "asked once is enough"
    );

    // The controller rolls back; the analysis had failed meanwhile, so it says why.
    b.js("window.__sameDocument = 'yes'; return null").await;
    let mut r = s.now().await;
    r.phase = RolloutPhase::RollingBack;
    r.message = Some("background analysis failed: 2 of 2 measurements failed".into());
    assert!(store.save_rollout(&r, OWNER, 2).await.unwrap());
    b.wait_text(
        &format!("{panel} .headline"),
        "Rolling back: background analysis failed",
        WAIT,
    )
    .await;
    r.phase = RolloutPhase::Failed;
    r.message = Some("rolled back: background analysis failed: 2 of 2 measurements failed".into());
    let reason = r.message.clone();
    assert!(
        store
            .finish_rollout(&r, OWNER, StageStatus::Failure, reason.as_deref())
            .await
            .unwrap()
    );
    let headline = b
        .wait_text(&format!("{panel} .headline"), "Failed: rolled back", WAIT)
        .await;
    assert!(
        headline.contains("2 of 2 measurements failed"),
        "{headline}"
    );
    b.wait_text("#run-status", "failure", WAIT).await;
    // The stage's one step (the controller's log) ends as the rollout did.
    let stage = s.ts.stage(r.run_id, "deploy").await;
    assert_eq!(stage.steps[0].status, server::store::StepStatus::Failure);
    assert_eq!(
        b.js("return window.__sameDocument || 'reloaded'").await,
        "yes"
    );
    assert_eq!(
        js_str(
            &b,
            &format!("return document.querySelector('{panel}').dataset.rolloutLive || 'final'")
        )
        .await,
        "final"
    );
    assert!(b.has(&format!("{panel} .rollout-steps li.st-failed")).await);
    b.screenshot("rollout-failed-desktop").await;
    b.resize(390, 844).await;
    b.screenshot("rollout-failed-phone").await;
    b.resize(1280, 900).await;

    // Retry: a promotion run of the same version to the same environment.
    b.click(&format!("#{}", s.button("retry"))).await;
    b.wait_text(".crumbs", "run #2", WAIT).await;
    let retried = s.audit("rollout.retry").await;
    assert_eq!(retried.len(), 1);
    assert_eq!(retried[0].detail["new_run"], 2);
    b.close().await;
}

both_databases!(
    a_developer_sees_the_rollout_but_may_not_move_it,
    a_release_manager_promotes_by_keyboard_and_the_panel_follows_the_rollout_live,
);
