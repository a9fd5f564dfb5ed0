//! The web UI in a real headless Chromium (WebDriver) against the real `slipway server`:
//! signing in, a run page that turns green without a reload, a log that streams, the
//! failure up front, approving a gate while the run's author sees why they may not, a
//! million-line log that opens and jumps to its end, and the attacks a web UI must hold
//! against (a cross-site form, the session cookie, an artifact full of HTML).
//! Screenshots of every page go to `<target>/screenshots/` (desktop and phone).
//!
//! Long on purpose: each case is one scenario written out end to end.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::browser::Browser;
use crate::support::git::GitRepo;
use crate::support::ui::{PASSWORD, Ui, cookie_pair};

const WAIT: Duration = Duration::from_secs(60);

const SLOW: &str = r#"stages:
  build:
    steps:
      - name: work
        run: |
          for i in $(seq 1 12); do echo "line $i"; sleep 0.4; done
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_turns_green_live_and_its_log_streams() {
    let ui = Ui::start(&[("alice", "developer")]).await;
    let b = Browser::start().await;
    // Signed out, a page sends the browser to sign in, and back afterwards.
    b.goto(&format!("{}/repos/team/app", ui.base())).await;
    assert!(b.has("input[name=password]").await);
    b.screenshot("login-desktop").await;
    b.sign_in(&ui.base(), "alice", PASSWORD).await;
    // The session cookie is HttpOnly: the page's script cannot read it.
    let cookies = b.js("return document.cookie").await;
    assert!(
        !cookies.to_string().contains("slipway_session"),
        "{cookies}"
    );

    ui.push(SLOW, "1").await;
    b.goto(&format!("{}/repos/team/app/runs/1", ui.base()))
        .await;
    b.js("window.__sameDocument = 'yes'; return null").await;
    b.screenshot("run-running-desktop").await;
    // The badge turns green without a reload.
    b.wait_text("#run-status", "success", WAIT).await;
    assert_eq!(
        b.js("return window.__sameDocument || 'reloaded'").await,
        "yes"
    );
    assert!(
        b.has(".dag svg .node.s-ok").await,
        "the graph shows the stage green"
    );
    b.screenshot("run-success-desktop").await;

    // A second run: its log page, opened while the step runs, gets lines live.
    ui.push(SLOW, "2").await;
    let d =
        ui.p.wait("run #2's step to start", WAIT, || async {
            let d = ui
                .api("GET", "/api/repos/team/app/runs/2", &ui.admin, None)
                .await;
            if d["stages"][0]["steps"][0]["status"] == "running" {
                Ok(d)
            } else {
                Err(d.to_string())
            }
        })
        .await;
    let stage = d["stages"][0]["id"].as_i64().unwrap();
    b.goto(&format!(
        "{}/repos/team/app/runs/2/logs/{stage}/0",
        ui.base()
    ))
    .await;
    b.js("window.__sameDocument = 'yes'; return null").await;
    let at_open: u64 = b
        .js("return Number(document.getElementById('log').dataset.total)")
        .await
        .as_u64()
        .unwrap();
    assert!(at_open < 12, "opened while running: {at_open} lines");
    b.wait_text("#log", "line 12", WAIT).await;
    assert_eq!(
        b.js("return window.__sameDocument || 'reloaded'").await,
        "yes"
    );
    b.screenshot("log-desktop").await;

    // The dashboard lists the repository and its runs.
    b.goto(&ui.base()).await;
    let runs = b.text("#runs").await;
    assert!(
        runs.contains("team/app #2") && runs.contains("team/app #1"),
        "{runs}"
    );
    b.screenshot("dashboard-desktop").await;
    b.resize(390, 844).await;
    b.screenshot("dashboard-phone").await;
    b.goto(&format!("{}/repos/team/app/runs/1", ui.base()))
        .await;
    b.screenshot("run-phone").await;
    b.goto(&format!(
        "{}/repos/team/app/runs/2/logs/{stage}/0",
        ui.base()
    ))
    .await;
    b.screenshot("log-phone").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_shows_the_failing_lines_first() {
    let ui = Ui::start(&[("alice", "developer")]).await;
    ui.push(
        r#"stages:
  test:
    steps:
      - name: unit tests
        run: |
          seq 1 3000 | sed 's/^/noise /'
          echo "error: the widget is broken"
          seq 1 50 | sed 's/^/teardown /'
          exit 3
"#,
        "1",
    )
    .await;
    ui.wait_status(1, "failure").await;
    let b = Browser::start().await;
    b.sign_in(&ui.base(), "alice", PASSWORD).await;
    b.goto(&format!("{}/repos/team/app/runs/1", ui.base()))
        .await;
    let failure = b.text("#failure").await;
    assert!(failure.contains("unit tests"), "{failure}");
    assert!(failure.contains("code 3"), "{failure}");
    assert!(failure.contains("error: the widget is broken"), "{failure}");
    assert!(failure.contains("teardown 50"), "{failure}");
    // The failing line links into the log at its number, and the log opens there.
    let href = b
        .js("return [...document.querySelectorAll('#failure a.no')].find(a => a.nextSibling && a.nextSibling.textContent.includes('widget')).getAttribute('href')")
        .await;
    let href = href.as_str().unwrap().to_string();
    assert!(href.ends_with("#L3001"), "{href}");
    b.screenshot("run-failed-desktop").await;
    b.goto(&format!("{}{href}", ui.base())).await;
    b.wait_text("#L3001", "error: the widget is broken", WAIT)
        .await;
    // A search over the whole log finds it too.
    let page = b.client.current_url().await.unwrap();
    let mut search = page.clone();
    search.set_fragment(None);
    search.set_query(Some("q=widget"));
    b.goto(search.as_str()).await;
    let found = b.text("#matches").await;
    assert!(
        found.contains("1 matches") && found.contains("3001"),
        "{found}"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_manager_approves_while_the_author_sees_why_not() {
    let ui = Ui::start(&[("alice", "release-manager"), ("rita", "release-manager")]).await;
    ui.api(
        "PUT",
        "/api/repos/team/app/environments/production",
        &ui.admin,
        Some(json!({ "protected": true, "required_approvals": 1 })),
    )
    .await;
    let yaml = r#"stages:
  build:
    steps: [echo built]
  production:
    needs: [build]
    kind: deploy
    environment: production
    steps: [echo deployed]
"#;
    // Alice triggers the run with her own token: she may not approve it.
    GitRepo::init(&ui.source).commit("refs/heads/main", &[], &[(".slipway.yml", yaml)], "x");
    let alice_token = ui.p.cli(&["token", "create", "laptop", "--user", "alice"]);
    ui.api(
        "POST",
        "/api/repos/team/app/trigger",
        &alice_token,
        Some(json!({ "branch": "main" })),
    )
    .await;
    ui.p.wait("run #1 to be blocked", WAIT, || async {
        let d = ui
            .api("GET", "/api/repos/team/app/runs/1", &ui.admin, None)
            .await;
        if d["run"]["blocked"] == true {
            Ok(())
        } else {
            Err(d.to_string())
        }
    })
    .await;

    let b = Browser::start().await;
    b.sign_in(&ui.base(), "alice", PASSWORD).await;
    b.goto(&format!("{}/repos/team/app/runs/1", ui.base()))
        .await;
    assert_eq!(
        b.js("return document.getElementById('run-status').dataset.status")
            .await,
        "blocked"
    );
    let why = b.text(".gate .why").await;
    assert!(why.contains("triggered this run"), "{why}");
    assert!(
        !b.has(".gate button[value=approve]").await,
        "no button for alice"
    );
    b.screenshot("gate-author-desktop").await;
    b.click("form.signout button").await;
    b.wait_text("h1", "Sign in", WAIT).await;

    b.sign_in(&ui.base(), "rita", PASSWORD).await;
    b.goto(&format!("{}/inbox", ui.base())).await;
    b.screenshot("inbox-desktop").await;
    b.fill(".gate input[name=comment]", "change reviewed").await;
    b.click(".gate button[value=approve]").await;
    ui.wait_status(1, "success").await;
    let d = ui
        .api(
            "GET",
            "/api/repos/team/app/runs/1/deployments",
            &ui.admin,
            None,
        )
        .await;
    assert_eq!(d[0]["votes"][0]["user"], "rita", "{d:#}");
    assert_eq!(d[0]["votes"][0]["comment"], "change reviewed", "{d:#}");
    b.goto(&format!("{}/inbox", ui.base())).await;
    assert!(b.text("main").await.contains("Nothing is waiting"));
    b.resize(390, 844).await;
    b.screenshot("inbox-phone").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_line_log_opens_and_jumps_to_its_end() {
    let ui = Ui::start(&[("alice", "developer")]).await;
    ui.push(
        "stages:\n  big:\n    steps:\n      - name: a million lines\n        run: seq 1 1000000\n",
        "1",
    )
    .await;
    ui.wait_status(1, "success").await;
    let d = ui
        .api("GET", "/api/repos/team/app/runs/1", &ui.admin, None)
        .await;
    let stage = d["stages"][0]["id"].as_i64().unwrap();
    let b = Browser::start().await;
    b.sign_in(&ui.base(), "alice", PASSWORD).await;
    let started = Instant::now();
    b.goto(&format!(
        "{}/repos/team/app/runs/1/logs/{stage}/0",
        ui.base()
    ))
    .await;
    b.wait_text("#L1", "1", WAIT).await;
    let opened = started.elapsed();
    b.click("#log-end").await;
    b.wait_text("#L1000000", "1000000", WAIT).await;
    let at_end = started.elapsed();
    // Scroll about: the page keeps only the lines in view.
    b.js("const l = document.getElementById('log'); l.scrollTop = l.scrollHeight / 2; return null")
        .await;
    b.wait_text("#log", "500", WAIT).await;
    let rows = b
        .js("return document.querySelectorAll('#log .ln').length")
        .await
        .as_u64()
        .unwrap();
    let heap = b
        .js("return performance.memory ? performance.memory.usedJSHeapSize : 0")
        .await
        .as_u64()
        .unwrap();
    println!(
        "1,000,000-line log: first lines after {opened:?}, its end after {at_end:?}; \
         {rows} rows in the page; JS heap {:.1} MiB",
        heap as f64 / 1048576.0
    );
    assert!(rows < 1000, "windowed: {rows} rows in the page");
    assert!(heap > 0 && heap < 64 * 1048576, "JS heap {heap} bytes");
    // The budget: open and at the end within 10 s on this two-core machine.
    assert!(at_end < Duration::from_secs(10), "{at_end:?}");
    b.screenshot("log-million-desktop").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_forms_cookies_and_html_artifacts_are_harmless() {
    let ui = Ui::start(&[("alice", "developer")]).await;
    ui.push(
        r#"stages:
  build:
    artifacts: [evil.html]
    steps:
      - run: echo '<html><script>alert(document.cookie)</script></html>' > evil.html
      - run: sleep 30
"#,
        "1",
    )
    .await;
    let set_cookie = ui.sign_in_http("alice").await;
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Lax"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let cookie = cookie_pair(&set_cookie);
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // A cross-site form: no CSRF token, so nothing happens.
    let r = client
        .post(ui.p.url("/repos/team/app/runs/1/cancel"))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("x", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_ne!(ui.run_status(1).await, "cancelled");
    // The API through the cookie: reading works, changing needs the token.
    let r = client
        .get(ui.p.url("/api/repos/team/app/runs/1"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = client
        .post(ui.p.url("/api/repos/team/app/runs/1/cancel"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert_ne!(ui.run_status(1).await, "cancelled");
    // A sign-in form posted from another site is refused.
    let r = client
        .post(ui.p.url("/login"))
        .header("origin", "https://evil.example")
        .form(&[("name", "alice"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A wrong password gets the same answer as an unknown name.
    for name in ["alice", "nobody"] {
        let r = client
            .post(ui.p.url("/login"))
            .form(&[("name", name), ("password", "wrong")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert!(r.text().await.unwrap().contains("Wrong name or password"));
    }

    // The HTML artifact is an attachment, never rendered as a page of this site.
    let artifacts =
        ui.p.wait("the artifact", WAIT, || async {
            let d = ui
                .api("GET", "/api/repos/team/app/runs/1", &ui.admin, None)
                .await;
            let id = d["run"]["id"].as_i64().unwrap();
            let a = ui
                .api("GET", &format!("/api/runs/{id}/artifacts"), &ui.admin, None)
                .await;
            if a.as_array().is_some_and(|a| !a.is_empty()) {
                Ok(a)
            } else {
                Err(a.to_string())
            }
        })
        .await;
    let id = artifacts[0]["id"].as_i64().unwrap();
    let r = client
        .get(ui.p.url(&format!("/api/artifacts/{id}/download")))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers();
    assert!(
        h["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );
    assert_eq!(h["content-type"], "application/octet-stream");
    assert_eq!(h["x-content-type-options"], "nosniff");
    // Pages carry the policy that forbids inline script.
    let r = client
        .get(ui.p.url("/"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );

    // Signing out ends the session for good.
    let page = r.text().await.unwrap();
    let csrf = page
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = client
        .post(ui.p.url("/logout"))
        .header("cookie", &cookie)
        .form(&[("_csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let r = client
        .get(ui.p.url("/api/repos/team/app/runs/1"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_environment_and_admin_pages() {
    let ui = Ui::start(&[("ada", "admin"), ("dev", "developer")]).await;
    ui.api(
        "PUT",
        "/api/repos/team/app/environments/staging",
        &ui.admin,
        Some(json!({})),
    )
    .await;
    let yaml = r#"on:
  push: {}
  manual:
    params:
      greeting: { description: "Who to greet", default: world }
  cron: { nightly: "0 3 * * *" }
stages:
  build:
    steps:
      - run: echo "hello ${{ params.greeting }}"
  staging:
    needs: [build]
    kind: deploy
    environment: staging
    steps: [echo deployed]
"#;
    ui.push(yaml, "1").await;
    ui.wait_status(1, "success").await;
    let b = Browser::start().await;
    b.sign_in(&ui.base(), "ada", PASSWORD).await;
    b.goto(&format!("{}/repos/team/app", ui.base())).await;
    assert!(b.text("#branches").await.contains("main"));
    assert!(b.text("#schedules").await.contains("0 3 * * *"));
    let envs = b.text("#environments").await;
    assert!(envs.contains("staging") && envs.contains("#1 "), "{envs}");

    // Secrets: added and deleted from the page; the value never comes back.
    b.fill("form input[name=name]", "DEPLOY_KEY").await;
    b.fill("form input[name=value]", "s3cr3t-value-123").await;
    b.click("#add-secret").await;
    let secrets = b.wait_text("#secrets", "DEPLOY_KEY", WAIT).await;
    assert!(secrets.contains("withheld"), "{secrets}");
    let html = b.client.source().await.unwrap();
    assert!(!html.contains("s3cr3t-value-123"));
    b.screenshot("repo-desktop").await;
    b.click("#secrets button.danger").await;
    b.wait_text("main", "Secrets", WAIT).await;
    assert!(!b.text("#secrets").await.contains("DEPLOY_KEY"));

    // A manual run with a parameter.
    b.fill("form.trigger textarea[name=params]", "greeting=web")
        .await;
    b.click("form.trigger button").await;
    b.wait_text("#run-status", "success", WAIT).await;
    let d = ui
        .api("GET", "/api/repos/team/app/runs/2", &ui.admin, None)
        .await;
    assert_eq!(d["run"]["params"]["greeting"], "web", "{d:#}");
    assert_eq!(d["run"]["trigger"], "manual");

    // The environment's history.
    b.goto(&format!(
        "{}/repos/team/app/environments/staging",
        ui.base()
    ))
    .await;
    assert!(b.text("#live").await.starts_with("#2 "));
    assert!(b.text("#previous").await.starts_with("#1 "));
    assert_eq!(
        b.js("return document.querySelectorAll('#deployments tbody tr').length")
            .await,
        2
    );
    b.screenshot("environment-desktop").await;

    // Admin pages.
    b.goto(&format!("{}/audit", ui.base())).await;
    assert!(b.text("#verified").await.contains("chain intact"));
    assert!(b.text("#audit").await.contains("environment.set"));
    b.screenshot("audit-desktop").await;
    b.goto(&format!("{}/people", ui.base())).await;
    let people = b.text("#people").await;
    assert!(
        people.contains("ada") && people.contains("developer"),
        "{people}"
    );
    b.screenshot("people-desktop").await;

    // A developer sees secret names but may not change them, and no admin pages.
    b.click("form.signout button").await;
    b.sign_in(&ui.base(), "dev", PASSWORD).await;
    b.goto(&format!("{}/repos/team/app", ui.base())).await;
    assert!(b.has("#secrets").await);
    assert!(!b.has("#secrets button.danger").await);
    b.goto(&format!("{}/audit", ui.base())).await;
    assert!(b.text("main").await.contains("Admins only"));
    b.close().await;
}
