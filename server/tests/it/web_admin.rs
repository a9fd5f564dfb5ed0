//! The people page's forms in a real headless Chromium against the real `slipway
//! server`: an admin adds a user who then signs in, changes their role, creates a
//! personal token (shown once) that the API then takes and, revoked from the page,
//! refuses; the same for a machine token; disables a user, who can no longer sign in;
//! and cannot take the admin role from, or disable, the last enabled admin. Every
//! change is in the audit log under the admin's name, as the API writes it. A form
//! without the CSRF token, and one from a signed-in non-admin, change nothing.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::Value;

use crate::support::browser::Browser;
use crate::support::poll::poll_until;
use crate::support::ui::{PASSWORD, Ui};

const WAIT: Duration = Duration::from_secs(30);
const NEW_PASSWORD: &str = "a long enough new password";

/// The status of `GET path` with `token`.
async fn status(ui: &Ui, path: &str, token: &str) -> u16 {
    ui.http
        .get(ui.p.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Waits (bounded) until `css` no longer shows `needle` (the page after a form has
/// replaced the one before it).
async fn wait_gone(b: &Browser, css: &str, needle: &str) {
    poll_until(WAIT, || async {
        let t = b.read(css).await;
        if t.contains(needle) { Err(t) } else { Ok(()) }
    })
    .await
    .unwrap_or_else(|t| panic!("`{css}` kept showing {needle:?}: {}", t.state));
}

/// Submits the form around `css` (a button) and accepts its confirmation dialog.
async fn click_and_confirm(b: &Browser, css: &str) {
    b.click(css).await;
    b.client.accept_alert().await.unwrap();
}

/// The user's roles as the API has them: `role@repo` (`role` when global).
async fn roles(ui: &Ui, user: &str) -> Vec<String> {
    let d = ui
        .api("GET", &format!("/api/users/{user}"), &ui.admin, None)
        .await;
    d["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r["repo"].as_str() {
            Some(repo) => format!("{}@{repo}", r["role"].as_str().unwrap()),
            None => r["role"].as_str().unwrap().to_string(),
        })
        .collect()
}

/// Audit entries of `action` by `user:ada`, as the API lists them.
async fn audited(ui: &Ui, action: &str) -> Vec<Value> {
    let d = ui
        .api(
            "GET",
            &format!("/api/audit?action={action}&actor=user:ada"),
            &ui.admin,
            None,
        )
        .await;
    d.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_manages_people_and_tokens_from_the_page() {
    let ui = Ui::start(&[("ada", "admin"), ("dev", "developer")]).await;
    let b = Browser::start().await;
    b.sign_in(&ui.base(), "ada", PASSWORD).await;
    b.goto(&format!("{}/people", ui.base())).await;

    // Add a user with a role on one repository.
    b.fill("#new-user-name", "newbie").await;
    b.fill("#new-user-password", NEW_PASSWORD).await;
    b.client
        .find(Locator::Css("#new-user-role option[value=developer]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.fill("#add-user input[name=repo]", "team/app").await;
    b.click("#add-user button").await;
    let row = b.wait_text("#user-newbie", "developer", WAIT).await;
    assert!(row.contains("on team/app"), "{row}");
    assert_eq!(roles(&ui, "newbie").await, ["developer@team/app"]);
    assert_eq!(audited(&ui, "user.create").await.len(), 1);
    b.screenshot("people-admin-desktop").await;

    // Give them a global role from their row.
    b.client
        .find(Locator::Css(
            "#user-newbie .role-form option[value=release-manager]",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.click("#user-newbie .role-form button").await;
    b.wait_text("#user-newbie .roles", "everywhere", WAIT).await;
    let mut r = roles(&ui, "newbie").await;
    r.sort();
    assert_eq!(r, ["developer@team/app", "release-manager"]);
    // Take the repository role away ("no role" there).
    b.fill("#user-newbie .role-form input[name=repo]", "team/app")
        .await;
    b.click("#user-newbie .role-form button").await;
    wait_gone(&b, "#user-newbie .roles", "team/app").await;
    assert_eq!(roles(&ui, "newbie").await, ["release-manager"]);
    let set = audited(&ui, "role.set").await;
    assert!(
        set.iter().any(|e| e["subject"] == "user:newbie"
            && e["detail"]["role"] == "release-manager"
            && e["detail"]["previous"].is_null()),
        "{set:#?}"
    );
    let removed = audited(&ui, "role.remove").await;
    assert_eq!(removed.len(), 1, "{removed:#?}");
    assert_eq!(removed[0]["detail"]["repo"], "team/app");

    // A personal token, shown once, works; revoked from the page, the API refuses it.
    b.fill("#user-newbie .token-form input[name=name]", "laptop")
        .await;
    b.click("#user-newbie .token-form button").await;
    let token = b.wait_text("#new-token", "slpu_", WAIT).await;
    assert!(b.text("#token-created").await.contains("only this once"));
    assert_eq!(status(&ui, "/api/users/newbie", &token).await, 200);
    b.screenshot("token-created-desktop").await;
    b.goto(&format!("{}/people", ui.base())).await;
    assert!(b.text("#user-newbie .tokens").await.contains("laptop"));
    assert!(
        !b.client.source().await.unwrap().contains(&token),
        "the token is never shown again"
    );
    click_and_confirm(&b, "#user-newbie .tokens button.revoke").await;
    wait_gone(&b, "#user-newbie .tokens", "laptop").await;
    assert_eq!(status(&ui, "/api/users/newbie", &token).await, 401);

    // A machine token: made with a scope, used, revoked.
    b.fill("#new-machine-token input[name=name]", "deploy-bot")
        .await;
    b.client
        .find(Locator::Css("#new-machine-token option[value=admin]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.click("#new-machine-token button").await;
    let machine = b.wait_text("#new-token", "slp_", WAIT).await;
    assert_eq!(status(&ui, "/api/users", &machine).await, 200);
    b.goto(&format!("{}/people", ui.base())).await;
    let tokens = b.text("#tokens").await;
    assert!(
        tokens.contains("deploy-bot") && tokens.contains("admin"),
        "{tokens}"
    );
    let id = b
        .js("return [...document.querySelectorAll('#tokens tr')].find(r => r.innerText.includes('deploy-bot')).id")
        .await;
    click_and_confirm(&b, &format!("#{} button.revoke", id.as_str().unwrap())).await;
    wait_gone(&b, "#tokens", "deploy-bot").await;
    assert_eq!(status(&ui, "/api/users", &machine).await, 401);
    assert_eq!(audited(&ui, "token.create").await.len(), 2);
    assert_eq!(audited(&ui, "token.revoke").await.len(), 2);

    // The new user signs in with the password the admin gave.
    let other = Browser::start().await;
    other.sign_in(&ui.base(), "newbie", NEW_PASSWORD).await;
    other.close().await;

    // Disabled from the page: they cannot sign in any more; enabled again, they can.
    click_and_confirm(&b, "#user-newbie button.disable").await;
    b.wait_text("#user-newbie", "disabled", WAIT).await;
    let other = Browser::start().await;
    other.goto(&format!("{}/login", ui.base())).await;
    other.fill("input[name=name]", "newbie").await;
    other.fill("input[name=password]", NEW_PASSWORD).await;
    other.click("form button[type=submit]").await;
    other
        .wait_text("main", "Wrong name or password", WAIT)
        .await;
    b.click("#user-newbie button.enable").await;
    b.wait_text("#user-newbie button", "Disable", WAIT).await;
    other.sign_in(&ui.base(), "newbie", NEW_PASSWORD).await;
    other.close().await;
    assert_eq!(audited(&ui, "user.disable").await.len(), 1);
    assert_eq!(audited(&ui, "user.enable").await.len(), 1);

    // The last enabled admin can neither lose the role nor be disabled.
    b.goto(&format!("{}/people", ui.base())).await;
    b.client
        .find(Locator::Css("#user-ada .role-form option[value=developer]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.click("#user-ada .role-form button").await;
    let refused = b.wait_text("main", "last enabled admin", WAIT).await;
    assert!(
        refused.contains("make another user admin first"),
        "{refused}"
    );
    assert_eq!(roles(&ui, "ada").await, ["admin"]);
    b.screenshot("people-last-admin-desktop").await;
    b.goto(&format!("{}/people", ui.base())).await;
    click_and_confirm(&b, "#user-ada button.disable").await;
    b.wait_text("main", "last enabled admin", WAIT).await;
    b.goto(&format!("{}/people", ui.base())).await;
    assert!(!b.text("#user-ada").await.contains("disabled"));
    // With a second admin, the first may step down.
    b.client
        .find(Locator::Css("#user-newbie .role-form option[value=admin]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.click("#user-newbie .role-form button").await;
    b.wait_text("#user-newbie .roles", "admin", WAIT).await;
    b.client
        .find(Locator::Css("#user-ada .role-form option[value=developer]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.click("#user-ada .role-form button").await;
    // No longer an admin: the people page is closed to her now.
    b.wait_text("main", "Admins only", WAIT).await;
    assert_eq!(roles(&ui, "ada").await, ["developer"]);
    b.resize(390, 844).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_forms_need_the_csrf_token_and_an_admin() {
    let ui = Ui::start(&[("ada", "admin"), ("dev", "developer")]).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = |name: &'static str, csrf: String| {
        vec![
            ("_csrf", csrf),
            ("name", name.to_string()),
            ("password", NEW_PASSWORD.to_string()),
            ("role", "admin".to_string()),
        ]
    };
    // The admin's session, without the token (a cross-site form): nothing happens.
    let ada = crate::support::ui::cookie_pair(&ui.sign_in_http("ada").await);
    let r = client
        .post(ui.p.url("/people/users"))
        .header("cookie", &ada)
        .header("origin", "https://evil.example")
        .form(&form("mallory", String::new()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A developer with their own valid token: not an admin, so nothing happens.
    let dev = crate::support::ui::cookie_pair(&ui.sign_in_http("dev").await);
    let page = client
        .get(ui.p.url("/"))
        .header("cookie", &dev)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("name=\"_csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    let r = client
        .post(ui.p.url("/people/users"))
        .header("cookie", &dev)
        .form(&form("mallory", csrf.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.text().await.unwrap().contains("Admins only"));
    let r = client
        .post(ui.p.url("/people/users/dev/role"))
        .header("cookie", &dev)
        .form(&[("_csrf", csrf.as_str()), ("role", "admin")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let users = ui.api("GET", "/api/users", &ui.admin, None).await;
    let names: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ada", "dev"]);
    let d = ui.api("GET", "/api/users/dev", &ui.admin, None).await;
    assert_eq!(d["roles"][0]["role"], "developer", "{d:#}");

    // The API holds the same rule as the page: the last enabled admin stays one.
    for (method, path, body) in [
        (
            "PUT",
            "/api/users/ada/roles",
            Some(serde_json::json!({ "role": "developer" })),
        ),
        ("DELETE", "/api/users/ada/roles", None),
        (
            "PATCH",
            "/api/users/ada",
            Some(serde_json::json!({ "disabled": true })),
        ),
    ] {
        let mut req = ui
            .http
            .request(method.parse().unwrap(), ui.p.url(path))
            .bearer_auth(&ui.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 409, "{method} {path}");
        let body = r.text().await.unwrap();
        assert!(body.contains("last enabled admin"), "{body}");
    }
    let d = ui.api("GET", "/api/users/ada", &ui.admin, None).await;
    assert_eq!(d["roles"][0]["role"], "admin", "{d:#}");
    assert_eq!(d["disabled"], false, "{d:#}");
}
