//! Signing in with a forge against the real `slipway server` and stand-in authorization
//! servers (`support::oauth_forge`) for every forge kind, walked hop by hop by an HTTP
//! client that keeps cookies (`support::web_client`): a signed-in user links their forge
//! account from their account page, then signs in with it; a forged, missing or replayed
//! `state` is refused with no session; an unlinked account is refused unless the
//! provider lets it sign up; a disabled user is refused. The code, the access token and
//! the client secret never reach the server's log.
//!
//! Long on purpose: one test per refusal the flow must make, each walked end to end; the
//! stand-in forge and the cookie-keeping client are in `support/`.

use serde_json::Value;

use crate::support::oauth_forge::OAuthForge;
use crate::support::process::Processes;
use crate::support::web_client::{Hop, WebClient};

const PASSWORD: &str = "correct horse battery staple";

/// A server with one provider per `(name, kind, extra TOML)` and users (name, role).
struct Scene {
    p: Processes,
    forges: Vec<(String, OAuthForge)>,
    admin: String,
}

impl Scene {
    async fn start(providers: &[(&str, &'static str, &str)], people: &[(&str, &str)]) -> Scene {
        let mut p = Processes::new();
        let mut toml = String::new();
        let mut forges = Vec::new();
        for (i, (name, kind, extra)) in providers.iter().enumerate() {
            let forge = OAuthForge::start(kind).await;
            // One secret from a file, the others from the environment.
            let secret = if i == 1 {
                let path = p.dir.path().join(format!("{name}.secret"));
                std::fs::write(&path, format!("{}\n", forge.client_secret)).unwrap();
                format!("client_secret_file = {:?}", path.to_str().unwrap())
            } else {
                let var = format!(
                    "OAUTH_TEST_SECRET_{}",
                    name.to_uppercase().replace('-', "_")
                );
                p = p.env(&var, &forge.client_secret);
                format!("client_secret_env = \"{var}\"")
            };
            toml.push_str(&format!(
                "[oauth.{name}]\nkind = \"{kind}\"\nurl = \"{url}\"\napi_url = \"{url}\"\n\
                 client_id = \"{id}\"\n{secret}\n{extra}\n\n",
                url = forge.url,
                id = forge.client_id,
            ));
            forges.push((name.to_string(), forge));
        }
        let config = p.dir.path().join("slipway.toml");
        std::fs::write(&config, &toml).unwrap();
        let mut p = p.env("SLIPWAY_CONFIG", config.to_str().unwrap());
        p.start_server("server");
        for (name, role) in people {
            p.cli_with_input(&["user", "add", name, "--role", role], PASSWORD);
        }
        let admin = p.cli(&["token", "create", "admin", "--scope", "admin"]);
        Scene { p, forges, admin }
    }

    fn forge(&self, name: &str) -> &OAuthForge {
        &self.forges.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn url(&self, path: &str) -> String {
        self.p.url(path)
    }

    /// A client signed in with `name`'s password.
    async fn password_client(&self, name: &str) -> WebClient {
        let mut c = WebClient::new();
        let hop = c
            .post_form(
                &self.url("/login"),
                &[("name", name), ("password", PASSWORD), ("next", "/")],
            )
            .await;
        assert_eq!(hop.status, 303, "{hop:?}");
        c
    }

    /// Links the forge account `(id, login)` of `provider` to the user signed in on `c`,
    /// through the account page's form; the account page it ends on.
    async fn link(&self, c: &mut WebClient, provider: &str, id: &str, login: &str) -> Hop {
        self.forge(provider).sign_in_as(id, login);
        let page = c.get(&self.url("/account")).await;
        assert_eq!(page.status, 200, "{page:?}");
        let csrf = csrf_of(&page.body);
        let start = c
            .post_form(
                &self.url(&format!("/account/oauth/{provider}/link")),
                &[("_csrf", &csrf)],
            )
            .await;
        assert_eq!(start.status, 303, "{start:?}");
        let hops = c.follow(start.location.as_deref().unwrap()).await;
        hops.last().unwrap().clone()
    }

    /// Who `c` is signed in as (`GET /api/me` with its session), or the status.
    async fn whoami(&self, c: &mut WebClient) -> Result<String, u16> {
        let hop = c.get(&self.url("/api/me")).await;
        if hop.status != 200 {
            return Err(hop.status);
        }
        let me: Value = serde_json::from_str(&hop.body).unwrap();
        Ok(me["name"].as_str().unwrap().to_string())
    }

    async fn audit_actions(&self) -> Vec<(String, String, Value)> {
        let r = reqwest::Client::new()
            .get(self.url("/api/audit?limit=500"))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        let v: Value = r.json().await.unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["action"].as_str().unwrap().to_string(),
                    e["subject"].as_str().unwrap().to_string(),
                    e["detail"].clone(),
                )
            })
            .collect()
    }
}

fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"_csrf\" value=\"").expect("a CSRF field") + 20;
    html[at..].split('"').next().unwrap().to_string()
}

/// Signs in with `provider` from the start URL; every hop.
async fn sign_in_with(s: &Scene, c: &mut WebClient, provider: &str, next: &str) -> Vec<Hop> {
    c.follow(&s.url(&format!("/login/oauth/{provider}?next={next}")))
        .await
}

/// The hop that came back from the forge to the callback.
fn callback(hops: &[Hop]) -> &Hop {
    hops.iter()
        .find(|h| h.url.contains("/callback?"))
        .unwrap_or_else(|| panic!("no callback in {hops:#?}"))
}

fn sets_session(hop: &Hop) -> bool {
    hop.set_cookies
        .iter()
        .any(|c| c.starts_with("slipway_session=slps_"))
}

const ALL_KINDS: [(&str, &str, &str); 5] = [
    ("github", "github", ""),
    ("gitlab", "gitlab", ""),
    ("gitea", "gitea", ""),
    ("codeberg", "forgejo", "display_name = \"Codeberg\""),
    ("bitbucket", "bitbucket", ""),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_linked_forge_account_signs_in_on_every_forge_kind() {
    let s = Scene::start(&ALL_KINDS, &[("alice", "developer"), ("bob", "viewer")]).await;
    // The sign-in page offers each configured forge.
    let login = WebClient::new().get(&s.url("/login?next=/inbox")).await;
    for label in ["GitHub", "GitLab", "Gitea", "Codeberg", "Bitbucket"] {
        assert!(
            login.body.contains(&format!("Sign in with {label}")),
            "{}",
            login.body
        );
    }
    assert!(
        login
            .body
            .contains("href=\"/login/oauth/github?next=/inbox\""),
        "{}",
        login.body
    );

    let mut alice = s.password_client("alice").await;
    for (i, (name, kind, _)) in ALL_KINDS.iter().enumerate() {
        let id = if *kind == "bitbucket" {
            "{8e1f0c1a-aaaa-bbbb-cccc-0123456789ab}".to_string()
        } else {
            format!("{}", 1000 + i)
        };
        let page = s
            .link(&mut alice, name, &id, &format!("alice-on-{name}"))
            .await;
        assert_eq!(page.status, 200, "{page:?}");
        assert!(
            page.url.ends_with(&format!("/account?linked={name}")),
            "{}",
            page.url
        );
        assert!(
            page.body.contains(&format!("alice-on-{name}")),
            "{}",
            page.body
        );

        // A fresh browser signs in with that forge account, and lands where it meant to.
        let mut fresh = WebClient::new();
        let hops = sign_in_with(&s, &mut fresh, name, "/inbox").await;
        let start = &hops[0];
        assert_eq!(start.status, 303, "{start:?}");
        let oauth_cookie = start
            .set_cookies
            .iter()
            .find(|c| c.starts_with("slipway_oauth="))
            .unwrap_or_else(|| panic!("no state cookie: {start:?}"));
        for attr in [
            "HttpOnly",
            "SameSite=Lax",
            "Path=/login/oauth",
            "Max-Age=600",
        ] {
            assert!(oauth_cookie.contains(attr), "{oauth_cookie}");
        }
        let asked = s.forge(name).last_authorize();
        assert_eq!(
            asked["redirect_uri"],
            s.url(&format!("/login/oauth/{name}/callback"))
        );
        assert_eq!(
            asked.contains_key("code_challenge"),
            *kind != "bitbucket",
            "{asked:?}"
        );
        let scope = asked.get("scope").map(String::as_str);
        let want = match *kind {
            "gitlab" => Some("read_user"),
            "gitea" | "forgejo" => Some("read:user"),
            _ => None,
        };
        assert_eq!(scope, want, "{kind}");
        let back = callback(&hops);
        assert_eq!(back.status, 303, "{back:?}");
        assert!(sets_session(back), "{back:?}");
        assert!(
            back.location.as_deref().unwrap().ends_with("/inbox"),
            "{back:?}"
        );
        assert_eq!(
            s.whoami(&mut fresh).await,
            Ok("alice".to_string()),
            "{name}"
        );
        assert!(
            s.forge(name).refusals().is_empty(),
            "{:?}",
            s.forge(name).refusals()
        );
    }

    // One account per provider: bob cannot take alice's GitHub account.
    let mut bob = s.password_client("bob").await;
    let taken = s.link(&mut bob, "github", "1000", "alice-on-github").await;
    assert_eq!(taken.status, 409, "{taken:?}");
    assert!(
        taken.body.contains("linked to another user"),
        "{}",
        taken.body
    );
    // Renaming the account at the forge changes nothing: the id is what counts.
    s.forge("github").sign_in_as("1000", "alice-renamed");
    let mut again = WebClient::new();
    sign_in_with(&s, &mut again, "github", "/").await;
    assert_eq!(s.whoami(&mut again).await, Ok("alice".to_string()));

    // Unlinking: her GitHub account no longer signs in.
    let page = alice.get(&s.url("/account")).await;
    let csrf = csrf_of(&page.body);
    let gone = alice
        .post_form(&s.url("/account/oauth/github/unlink"), &[("_csrf", &csrf)])
        .await;
    assert_eq!(gone.status, 303, "{gone:?}");
    let mut after = WebClient::new();
    let hops = sign_in_with(&s, &mut after, "github", "/").await;
    assert_eq!(callback(&hops).status, 403);

    // The audit log has the links, the sign-ins and the unlink.
    let audit = s.audit_actions().await;
    let count = |action: &str| audit.iter().filter(|(a, _, _)| a == action).count();
    assert_eq!(count("oauth.link"), 5, "{audit:?}");
    assert_eq!(count("oauth.sign_in"), 6, "{audit:?}");
    assert_eq!(count("oauth.unlink"), 1, "{audit:?}");
    let signed = audit.iter().find(|(a, _, _)| a == "oauth.sign_in").unwrap();
    assert_eq!(signed.1, "user:alice");

    // The log names each provider's callback URL, and nothing secret: no code, no
    // token, no client secret.
    let log = s.p.logs();
    assert!(
        log.contains(&format!(
            "callback={}",
            s.url("/login/oauth/bitbucket/callback")
        )),
        "{log}"
    );
    for (_, forge) in &s.forges {
        assert!(
            !log.contains(&forge.client_secret),
            "the client secret is in the log"
        );
        for issued in forge.issued() {
            assert!(!log.contains(&issued), "{issued} is in the log");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_missing_or_replayed_state_is_refused() {
    let s = Scene::start(&[("github", "github", "")], &[("alice", "developer")]).await;
    let mut alice = s.password_client("alice").await;
    s.link(&mut alice, "github", "42", "alice").await;
    let tokens_before = s.forge("github").token_requests();

    // A forged state: the browser's cookie holds the real one.
    let mut c = WebClient::new();
    let start = c.get(&s.url("/login/oauth/github?next=/")).await;
    let at_forge = c.get(start.location.as_deref().unwrap()).await;
    let back = at_forge.location.clone().unwrap();
    let mut forged = reqwest::Url::parse(&back).unwrap();
    let code = forged
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    forged
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code)
        .append_pair("state", "forged-state-0123456789012345678901234567");
    let refused = c.get(forged.as_str()).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(
        refused.body.contains("did not start in this browser"),
        "{}",
        refused.body
    );
    assert!(!sets_session(&refused), "{refused:?}");
    assert_eq!(s.whoami(&mut c).await, Err(401));

    // The real callback in another browser (no state cookie: login CSRF) is refused too.
    let mut other = WebClient::new();
    let hop = other.get(&back).await;
    assert_eq!(hop.status, 403, "{hop:?}");
    assert!(!sets_session(&hop));
    // Neither got as far as the token endpoint.
    assert_eq!(s.forge("github").token_requests(), tokens_before);

    // A sign-in that worked, replayed with its cookie and URL: refused, no new session.
    let mut c = WebClient::new();
    let hops = sign_in_with(&s, &mut c, "github", "/").await;
    let done = callback(&hops);
    assert!(sets_session(done));
    let state = reqwest::Url::parse(&done.url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    let mut replay = WebClient::new();
    replay.set_cookie(&done.url, "slipway_oauth", &state, "/login/oauth");
    let hop = replay.get(&done.url).await;
    assert_eq!(hop.status, 400, "{hop:?}");
    assert!(
        hop.body.contains("used already or has expired"),
        "{}",
        hop.body
    );
    assert!(!sets_session(&hop));
    assert_eq!(s.whoami(&mut replay).await, Err(401));
    // The state cookie is cleared by every callback.
    assert!(
        hop.set_cookies
            .iter()
            .any(|c| c.starts_with("slipway_oauth=;") && c.contains("Max-Age=0")),
        "{hop:?}"
    );

    // The person says no at the forge: refused with the forge's reason, no exchange.
    s.forge("github").deny(true);
    let before = s.forge("github").token_requests();
    let mut c = WebClient::new();
    let hops = sign_in_with(&s, &mut c, "github", "/").await;
    let hop = callback(&hops);
    assert_eq!(hop.status, 403, "{hop:?}");
    assert!(
        hop.body.contains("did not sign you in: access_denied"),
        "{}",
        hop.body
    );
    assert!(!sets_session(hop));
    assert_eq!(s.forge("github").token_requests(), before);
    s.forge("github").deny(false);

    // A code used once is refused by the forge, and the server says so.
    let mut c = WebClient::new();
    let start = c.get(&s.url("/login/oauth/github")).await;
    let at_forge = c.get(start.location.as_deref().unwrap()).await;
    let mut reused = reqwest::Url::parse(at_forge.location.as_deref().unwrap()).unwrap();
    let fresh_state = reused
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .to_string();
    reused
        .query_pairs_mut()
        .clear()
        .append_pair("code", &code_of(&done.url))
        .append_pair("state", &fresh_state);
    let hop = c.get(reused.as_str()).await;
    assert_eq!(hop.status, 403, "{hop:?}");
    assert!(hop.body.contains("refused the sign-in"), "{}", hop.body);
    assert!(!sets_session(&hop));
}

fn code_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlinked_account_is_refused_unless_the_provider_lets_it_sign_up() {
    let s = Scene::start(
        &[
            ("github", "github", ""),
            (
                "gitea",
                "gitea",
                "allow_signup = true\nsignup_logins = [\"Newbie\"]",
            ),
        ],
        &[("alice", "admin")],
    )
    .await;
    // Not linked, no sign-up: refused with the way out.
    s.forge("github").sign_in_as("7", "stranger");
    let mut c = WebClient::new();
    let hops = sign_in_with(&s, &mut c, "github", "/").await;
    let hop = callback(&hops);
    assert_eq!(hop.status, 403, "{hop:?}");
    assert!(
        hop.body.contains("is not linked to a Slipway user"),
        "{}",
        hop.body
    );
    assert!(!sets_session(hop));

    // Sign-up allowed for one login: it makes a user with no role, linked.
    s.forge("gitea").sign_in_as("8", "Newbie");
    let mut c = WebClient::new();
    let hops = sign_in_with(&s, &mut c, "gitea", "/").await;
    assert!(sets_session(callback(&hops)), "{hops:#?}");
    assert_eq!(s.whoami(&mut c).await, Ok("newbie".to_string()));
    let me: Value = serde_json::from_str(&c.get(&s.url("/api/me")).await.body).unwrap();
    assert_eq!(me["roles"], serde_json::json!([]));
    // It has no password: nobody signs in as it with one.
    let hop = WebClient::new()
        .post_form(
            &s.url("/login"),
            &[("name", "newbie"), ("password", "!oauth")],
        )
        .await;
    assert_eq!(hop.status, 401);
    // Its only way in cannot be unlinked.
    let csrf = csrf_of(&c.get(&s.url("/account")).await.body);
    let hop = c
        .post_form(&s.url("/account/oauth/gitea/unlink"), &[("_csrf", &csrf)])
        .await;
    assert_eq!(hop.status, 409, "{hop:?}");
    // Signing in again finds the same user.
    let mut again = WebClient::new();
    sign_in_with(&s, &mut again, "gitea", "/").await;
    assert_eq!(s.whoami(&mut again).await, Ok("newbie".to_string()));

    // The admin's People page shows who signs in with which forge account.
    let mut admin = s.password_client("alice").await;
    let people = admin.get(&s.url("/people")).await;
    assert!(
        people.body.contains("signs in with gitea (Newbie)"),
        "{}",
        people.body
    );

    // Another login on the same forge is not on the list.
    s.forge("gitea").sign_in_as("9", "someone-else");
    let mut c = WebClient::new();
    let hops = sign_in_with(&s, &mut c, "gitea", "/").await;
    assert_eq!(callback(&hops).status, 403);
    let audit = s.audit_actions().await;
    assert!(
        audit.iter().any(|(a, subject, d)| a == "user.create"
            && subject == "user:newbie"
            && d["by"] == "oauth"),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_cannot_sign_in_with_a_forge() {
    let s = Scene::start(&[("github", "github", "")], &[("alice", "developer")]).await;
    let mut alice = s.password_client("alice").await;
    s.link(&mut alice, "github", "42", "alice").await;
    s.p.cli(&["user", "disable", "alice"]);
    let mut c = WebClient::new();
    let hops = sign_in_with(&s, &mut c, "github", "/").await;
    let hop = callback(&hops);
    assert_eq!(hop.status, 403, "{hop:?}");
    assert!(hop.body.contains("is disabled"), "{}", hop.body);
    assert!(!sets_session(hop));
    s.p.cli(&["user", "enable", "alice"]);
    let mut c = WebClient::new();
    sign_in_with(&s, &mut c, "github", "/").await;
    assert_eq!(s.whoami(&mut c).await, Ok("alice".to_string()));
}

#[test]
fn a_missing_client_secret_stops_the_server_naming_it() {
    let p = Processes::new();
    let config = p.dir.path().join("slipway.toml");
    std::fs::write(
        &config,
        "[oauth.github]\nclient_id = \"x\"\nclient_secret_env = \"OAUTH_TEST_UNSET_SECRET\"\n",
    )
    .unwrap();
    let out = p
        .command()
        .env("SLIPWAY_CONFIG", &config)
        .env_remove("OAUTH_TEST_UNSET_SECRET")
        .arg("server")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("oauth.github: client_secret_env names OAUTH_TEST_UNSET_SECRET"),
        "{err}"
    );
}

/// The buttons in a real headless Chromium: link GitHub from the account page, sign out,
/// and sign in again with **Sign in with GitHub**, landing where the sign-in began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_button_works_in_a_real_browser() {
    use crate::support::browser::Browser;
    use std::time::Duration;
    let s = Scene::start(&[("github", "github", "")], &[("alice", "developer")]).await;
    s.forge("github").sign_in_as("583231", "alice-gh");
    let base = s.url("");
    let b = Browser::start().await;
    b.sign_in(&base, "alice", PASSWORD).await;
    b.goto(&s.url("/account")).await;
    b.click("#forge-github button.link").await;
    b.wait_text("#forge-github", "alice-gh", Duration::from_secs(20))
        .await;
    assert!(b.text("p.flash").await.contains("GitHub account is linked"));
    b.screenshot("account-forge-linked").await;
    b.click("form.signout button[type=submit]").await;
    b.wait_text("h1", "Sign in", Duration::from_secs(10)).await;

    b.goto(&s.url("/login?next=/inbox")).await;
    assert_eq!(b.text("#forges a.forge").await, "Sign in with GitHub");
    b.screenshot("login-with-forges").await;
    b.click("#forges a.forge").await;
    b.wait_text("header.top .who", "alice", Duration::from_secs(20))
        .await;
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/inbox");
    // The state cookie is HttpOnly, and gone once used.
    let cookies = b.js("return document.cookie").await;
    assert!(!cookies.to_string().contains("slipway_oauth"), "{cookies}");
    b.close().await;
}

/// The store's half, on both databases: a state is taken once and not after it
/// expires; an account links to one user, a user to one account per provider; a
/// sign-up that cannot link leaves no user behind.
async fn the_store_takes_a_state_once_and_links_an_account_once(db: server::store::Dialect) {
    use server::store::Error;
    use server::store::oauth::NewOAuthState;
    let clock = std::sync::Arc::new(server::clock::ManualClock::new());
    let ts = crate::support::test_server::TestServer::builder()
        .on(db)
        .clock(clock.clone())
        .build()
        .await;
    let store = &ts.state.store;
    let alice = store.create_user("cli", "alice", "x", None).await.unwrap();
    let bob = store.create_user("cli", "bob", "x", None).await.unwrap();
    let state = |hash: &'static str, ttl_ms| NewOAuthState {
        state_hash: hash,
        provider: "github",
        code_verifier: "verifier",
        next: "/inbox",
        link_user: Some(alice.id),
        ttl_ms,
    };
    store
        .create_oauth_state(&state("h1", 600_000))
        .await
        .unwrap();
    let taken = store.take_oauth_state("h1").await.unwrap().unwrap();
    assert_eq!(
        (
            taken.provider.as_str(),
            taken.code_verifier.as_str(),
            taken.next.as_str()
        ),
        ("github", "verifier", "/inbox")
    );
    assert_eq!(taken.link_user, Some(alice.id));
    assert!(
        store.take_oauth_state("h1").await.unwrap().is_none(),
        "taken once"
    );
    store.create_oauth_state(&state("h2", 1_000)).await.unwrap();
    clock.advance(std::time::Duration::from_secs(2));
    assert!(
        store.take_oauth_state("h2").await.unwrap().is_none(),
        "expired"
    );

    store
        .link_oauth("user:alice", &alice, "github", "42", "alice")
        .await
        .unwrap();
    let taken_by_other = store
        .link_oauth("user:bob", &bob, "github", "42", "alice")
        .await;
    assert!(
        matches!(taken_by_other, Err(Error::Conflict(_))),
        "{taken_by_other:?}"
    );
    let second = store
        .link_oauth("user:alice", &alice, "github", "43", "alt")
        .await;
    assert!(matches!(second, Err(Error::Conflict(_))), "{second:?}");
    let (link, user) = store
        .find_oauth_user("github", "42")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (user.name.as_str(), link.login.as_str()),
        ("alice", "alice")
    );
    assert!(
        store
            .find_oauth_user("gitlab", "42")
            .await
            .unwrap()
            .is_none()
    );

    // A sign-up whose name is taken, or whose account is linked already, writes nothing.
    let name_taken = store.sign_up_oauth("alice", "gitea", "9", "alice").await;
    assert!(
        matches!(name_taken, Err(Error::Conflict(_))),
        "{name_taken:?}"
    );
    assert!(store.find_oauth_user("gitea", "9").await.unwrap().is_none());
    let linked = store.sign_up_oauth("carol", "github", "42", "carol").await;
    assert!(matches!(linked, Err(Error::Conflict(_))), "{linked:?}");
    assert!(
        store.get_user_by_name("carol").await.is_err(),
        "no half-made user"
    );
    let carol = store
        .sign_up_oauth("carol", "gitea", "9", "Carol")
        .await
        .unwrap();
    assert_eq!(store.oauth_links_of(carol.id).await.unwrap().len(), 1);

    assert!(
        store
            .unlink_oauth("user:alice", &alice, "github")
            .await
            .unwrap()
    );
    assert!(
        !store
            .unlink_oauth("user:alice", &alice, "github")
            .await
            .unwrap()
    );
    assert!(
        store
            .find_oauth_user("github", "42")
            .await
            .unwrap()
            .is_none()
    );
}

crate::support::both_databases!(the_store_takes_a_state_once_and_links_an_account_once);
