//! People, roles, personal tokens, identities and the audit log, through the real
//! `slipway` binary (on the server's database) and the HTTP API (`api::app`), on SQLite
//! and PostgreSQL: a user made with the CLI acts through the API with exactly their
//! role, a disabled or revoked one is refused, every change is in the hash-chained
//! audit log, which `slipway audit verify` checks, and a run is attributed to people
//! only from tokens and verified payloads, never from a commit's author.
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `support/`.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use server::daemon::config::Settings;
use server::daemon::state::AppState;
use server::store::Dialect;

use crate::support::both_databases;
use crate::support::git::GitRepo;
use crate::support::http;
use crate::support::process;
use crate::support::test_server::TestServer;

// ---------------------------------------------------------------- harness

/// The server's state in this process (`TestServer`, SQLite or a throw-away PostgreSQL
/// database) and the `slipway` CLI on the same data dir and database, as `slipway user …`
/// and `slipway server` share them.
struct Env {
    server: TestServer,
    /// Forge repositories the cases register (kept for the env's life).
    repos: std::sync::Mutex<Vec<GitRepo>>,
}

impl Env {
    async fn open(db: Dialect) -> Env {
        let server = TestServer::builder()
            .on(db)
            .settings(Settings {
                public_url: Some("https://ci.example".into()),
                ..Settings::default()
            })
            .build()
            .await;
        Env {
            server,
            repos: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn state(&self) -> &AppState {
        &self.server.state
    }

    /// `slipway ARGS` on this env's data dir and database.
    fn slipway(&self, args: &[&str]) -> Command {
        let config = &self.server.state.config;
        let mut c = process::slipway();
        c.args(args)
            .arg("--data-dir")
            .arg(&config.data_dir)
            .arg("--database-url")
            .arg(&config.database_url)
            .env("SLIPWAY_PUBLIC_URL", "https://ci.example");
        c
    }

    /// `slipway ARGS` with `stdin` piped in.
    fn cli(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .slipway(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Creates a user through the CLI (password on stdin) and a personal token for
    /// them; returns the token.
    fn add_user(&self, name: &str, role: &str, repo: Option<&str>) -> String {
        let mut args = vec!["user", "add", name, "--role", role];
        if let Some(r) = repo {
            args.extend(["--repo", r]);
        }
        let out = self.cli(&args, &format!("{PASSWORD}\n"));
        let stdout = ok(&out);
        assert!(!all_output(&out).contains(PASSWORD), "{stdout}");
        self.token_for(name)
    }

    fn token_for(&self, user: &str) -> String {
        let out = self.cli(&["token", "create", "laptop", "--user", user], "");
        let stdout = ok(&out);
        // Printed once, alone on stdout.
        let token = stdout.trim_end_matches('\n');
        assert!(
            token.starts_with("slpu_") && !token.contains('\n'),
            "{stdout:?}"
        );
        token.to_string()
    }

    async fn call(&self, method: &str, uri: &str, token: &str, body: Option<Value>) -> Resp {
        let mut req = http::request(method, uri, Some(token), body.as_ref());
        if body.is_none() {
            req.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from_static("0"),
            );
        }
        self.send(req).await
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let r = http::send(self.state(), req).await;
        Resp {
            status: r.status,
            json: r.json_or_null(),
            text: r.text,
        }
    }

    /// Runs one SQL statement on the database behind the server's back.
    async fn sql(&self, statement: &str) {
        use sqlx::{Connection, Executor};
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&self.state().config.database_url)
            .await
            .unwrap();
        conn.execute(statement).await.unwrap();
        conn.close().await.unwrap();
    }

    /// A git repository with one commit on `main` whose author claims to be Alice.
    fn git_repo(&self, _name: &str) -> String {
        let mut git = GitRepo::new().with_author("alice", "alice@example.com");
        git.commit("refs/heads/main", &[], &[("README", "hello")], "work");
        let url = git.url();
        self.repos.lock().unwrap().push(git);
        url
    }
}

const PASSWORD: &str = "a long enough password";

struct Resp {
    status: StatusCode,
    json: Value,
    text: String,
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn all_output(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

both_databases!(
    cli_users_act_through_the_api_with_exactly_their_role,
    disabled_users_and_revoked_tokens_are_refused,
    every_change_is_audited_and_tampering_is_detected,
    an_identity_links_to_one_user,
    a_spoofed_commit_author_never_attributes_a_run,
    concurrent_changes_keep_one_chain,
);

// ---------------------------------------------------------------- cases

async fn cli_users_act_through_the_api_with_exactly_their_role(db: Dialect) {
    let env = &Env::open(db).await;
    let root = env.add_user("root", "admin", None);
    let url = env.git_repo("forge");
    for name in ["team/app", "team/other"] {
        let r = env
            .call(
                "POST",
                "/api/repos",
                &root,
                Some(json!({"name": name, "forge": "github", "clone_url": url})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let viewer = env.add_user("vera", "viewer", None);
    let dev = env.add_user("dev", "developer", None);
    let app_dev = env.add_user("appdev", "developer", Some("team/app"));

    // A viewer reads but cannot trigger, nor read people.
    let r = env
        .call("GET", "/api/repos/team/app/runs", &viewer, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = env
        .call(
            "POST",
            "/api/repos/team/app/trigger",
            &viewer,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(r.text.contains("needs developer"), "{}", r.text);
    assert_eq!(
        env.call("GET", "/api/users", &viewer, None).await.status,
        StatusCode::FORBIDDEN
    );

    // A developer triggers, and the run names them.
    let r = env
        .call("POST", "/api/repos/team/app/trigger", &dev, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let dev_id = env.state().store.get_user_by_name("dev").await.unwrap().id;
    assert_eq!(r.json["triggered_by"], json!(dev_id));
    let cancel = format!("/api/repos/team/app/runs/{}/cancel", r.json["number"]);
    let r = env.call("POST", &cancel, &viewer, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = env.call("POST", &cancel, &dev, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["error"], "cancelled by dev");
    // … but administers nothing.
    let r = env
        .call(
            "POST",
            "/api/users",
            &dev,
            Some(json!({"name": "eve", "password": PASSWORD, "role": "admin"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = env
        .call(
            "PUT",
            "/api/repos/team/app/secrets/KEY",
            &dev,
            Some(json!({"value": "value-1"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    let r = env
        .call("GET", "/api/repos/team/app/secrets", &dev, None)
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "secret names are for developers: {}",
        r.text
    );

    // A role on one repository counts there only.
    let r = env
        .call(
            "POST",
            "/api/repos/team/app/trigger",
            &app_dev,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    for (method, uri) in [
        ("POST", "/api/repos/team/other/trigger"),
        ("GET", "/api/repos/team/other/runs"),
    ] {
        let body = (method == "POST").then(|| json!({}));
        let r = env.call(method, uri, &app_dev, body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.text
        );
    }
    // The repository list shows only the repository the role is on.
    let r = env.call("GET", "/api/repos", &app_dev, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let names: Vec<&str> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["team/app"], "{}", r.text);
    // The CLI changes a role; the next request sees it.
    let out = env.cli(
        &["user", "role", "vera", "developer", "--repo", "team/other"],
        "",
    );
    assert!(
        ok(&out).contains("vera is now developer on team/other"),
        "{}",
        all_output(&out)
    );
    let r = env
        .call(
            "POST",
            "/api/repos/team/other/trigger",
            &viewer,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = env
        .call(
            "POST",
            "/api/repos/team/app/trigger",
            &viewer,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);

    // An admin user administers, through the API too.
    let r = env
        .call(
            "POST",
            "/api/users",
            &root,
            Some(
                json!({"name": "eve", "password": PASSWORD, "role": "viewer", "repo": "team/app"}),
            ),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["roles"][0]["repo"], "team/app");
    assert!(
        !r.text.contains(PASSWORD) && !r.text.contains("argon2"),
        "{}",
        r.text
    );
    let r = env
        .call(
            "POST",
            "/api/users",
            &root,
            Some(json!({"name": "eve2", "password": "short"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let out = env.cli(&["user", "add", "shorty", "--role", "viewer"], "short\n");
    assert!(!out.status.success());
    assert!(
        all_output(&out).contains("too short"),
        "{}",
        all_output(&out)
    );

    // Role changes on a repository are found by it in the audit log.
    let r = env
        .call("GET", "/api/audit?repo=team/other", &root, None)
        .await;
    let entries = r.json.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", r.text);
    assert_eq!(entries[0]["action"], "role.set");
    assert_eq!(entries[0]["subject"], "user:vera");
    assert_eq!(entries[0]["detail"]["repo"], "team/other");

    let out = env.cli(&["user", "list"], "");
    let list = ok(&out);
    assert!(
        list.contains("vera\tenabled\tviewer,developer@team/other"),
        "{list}"
    );
    assert!(
        list.contains("appdev\tenabled\tdeveloper@team/app"),
        "{list}"
    );
}

async fn disabled_users_and_revoked_tokens_are_refused(db: Dialect) {
    let env = &Env::open(db).await;
    let root = env.add_user("root", "admin", None);
    let dev = env.add_user("dev", "developer", None);
    let vera = env.add_user("vera", "viewer", None);
    assert_eq!(
        env.call("GET", "/api/runners", &dev, None).await.status,
        StatusCode::OK
    );

    // Disabled through the CLI: refused with the reason, every token of theirs.
    ok(&env.cli(&["user", "disable", "dev"], ""));
    let r = env.call("GET", "/api/runners", &dev, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(r.text.contains("`dev` is disabled"), "{}", r.text);
    // Enabled again through the API.
    let r = env
        .call(
            "PATCH",
            "/api/users/dev",
            &root,
            Some(json!({"disabled": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        env.call("GET", "/api/runners", &dev, None).await.status,
        StatusCode::OK
    );

    // A user makes a token of their own, and revokes it.
    let r = env
        .call(
            "POST",
            "/api/users/dev/tokens",
            &dev,
            Some(json!({"name": "script"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let script = r.json["token"].as_str().unwrap().to_string();
    let id = r.json["id"].as_i64().unwrap();
    assert_eq!(
        env.call("GET", "/api/runners", &script, None).await.status,
        StatusCode::OK
    );
    // Nobody else's tokens are theirs to see or revoke; an admin's they are.
    let uri = format!("/api/users/dev/tokens/{id}");
    assert_eq!(
        env.call("DELETE", &uri, &vera, None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        env.call("GET", "/api/users/dev/tokens", &vera, None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let r = env.call("GET", "/api/users/dev/tokens", &root, None).await;
    assert_eq!(r.json.as_array().unwrap().len(), 2, "{}", r.text);
    assert!(!r.text.contains(&script), "{}", r.text);
    assert_eq!(
        env.call("DELETE", &uri, &dev, None).await.status,
        StatusCode::NO_CONTENT
    );
    let r = env.call("GET", "/api/runners", &script, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    assert_eq!(
        env.call("DELETE", &uri, &dev, None).await.status,
        StatusCode::NOT_FOUND
    );
    // The other token still works.
    assert_eq!(
        env.call("GET", "/api/runners", &dev, None).await.status,
        StatusCode::OK
    );

    // A personal token is not a runner's.
    let r = env
        .call("POST", "/api/runner/register", &root, Some(json!({})))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}

async fn every_change_is_audited_and_tampering_is_detected(db: Dialect) {
    let env = &Env::open(db).await;
    let root = env.add_user("root", "admin", None);
    let dev = env.add_user("dev", "developer", None);
    ok(&env.cli(&["user", "role", "dev", "release-manager"], ""));
    ok(&env.cli(&["user", "link", "dev", "github:dev"], ""));
    ok(&env.cli(&["user", "disable", "dev"], ""));
    ok(&env.cli(&["user", "enable", "dev"], ""));
    let r = env
        .call(
            "POST",
            "/api/users/dev/tokens",
            &dev,
            Some(json!({"name": "ci"})),
        )
        .await;
    let made = r.json["token"].as_str().unwrap().to_string();
    let uri = format!("/api/users/dev/tokens/{}", r.json["id"]);
    assert_eq!(
        env.call("DELETE", &uri, &root, None).await.status,
        StatusCode::NO_CONTENT
    );
    let r = env
        .call(
            "POST",
            "/api/tokens",
            &root,
            Some(json!({"name": "r1", "scope": "runner"})),
        )
        .await;
    let machine = r.json["token"].as_str().unwrap().to_string();
    let r = env
        .call("DELETE", "/api/users/dev/roles", &root, None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = env
        .call(
            "DELETE",
            "/api/users/dev/identities/github:dev",
            &root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    let r = env.call("GET", "/api/audit?limit=1000", &root, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let seen: Vec<(String, String, String)> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
                e["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("cli", "user.create", "user:root"),
        ("cli", "role.set", "user:root"),
        ("cli", "token.create", "user:root"),
        ("cli", "user.create", "user:dev"),
        ("cli", "role.set", "user:dev"),
        ("cli", "token.create", "user:dev"),
        ("cli", "role.set", "user:dev"),
        ("cli", "identity.link", "user:dev"),
        ("cli", "user.disable", "user:dev"),
        ("cli", "user.enable", "user:dev"),
        ("user:dev", "token.create", "user:dev"),
        ("user:root", "token.revoke", "user:dev"),
        ("user:root", "token.create", "token:r1"),
        ("user:root", "role.remove", "user:dev"),
        ("user:root", "identity.unlink", "user:dev"),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(seen, expected);
    // Never a secret: no password, no token, no hash of either.
    for secret in [PASSWORD, &root, &dev, &made, &machine, "argon2"] {
        assert!(!r.text.contains(secret), "{secret} in {}", r.text);
    }
    let role_set = &r.json[6]["detail"];
    assert_eq!(role_set["role"], "release-manager");
    assert_eq!(role_set["previous"], "developer");
    // Filters.
    let r = env
        .call("GET", "/api/audit?action=role.set", &root, None)
        .await;
    assert_eq!(r.json.as_array().unwrap().len(), 3, "{}", r.text);
    let r = env
        .call("GET", "/api/audit?actor=user:root&limit=2", &root, None)
        .await;
    let page: Vec<i64> = r
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(page.len(), 2, "{}", r.text);
    let r = env
        .call(
            "GET",
            &format!("/api/audit?actor=user:root&after={}", page[1]),
            &root,
            None,
        )
        .await;
    assert_eq!(r.json.as_array().unwrap().len(), 2, "{}", r.text);
    assert!(r.json[0]["id"].as_i64().unwrap() > page[1]);
    // Only admins read it.
    assert_eq!(
        env.call("GET", "/api/audit", &dev, None).await.status,
        StatusCode::FORBIDDEN
    );

    // Intact: the CLI says so with the head hash, so does the API.
    let out = env.cli(&["audit", "verify"], "");
    let text = ok(&out);
    assert!(text.contains("audit log intact: 15 entries"), "{text}");
    let head = text
        .lines()
        .find_map(|l| l.strip_prefix("head "))
        .unwrap()
        .to_string();
    assert_eq!(head.len(), 64, "{text}");
    let r = env.call("GET", "/api/audit/verify", &root, None).await;
    assert_eq!(r.json["ok"], true, "{}", r.text);
    assert_eq!(r.json["head"], head.as_str());

    let ids: Vec<i64> = env
        .state()
        .store
        .list_audit(&Default::default())
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    // An edited row is named.
    let edited = ids[7];
    env.sql(&format!(
        "UPDATE audit_log SET subject = 'user:someone' WHERE id = {edited}"
    ))
    .await;
    let out = env.cli(&["audit", "verify"], "");
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "broken at entry {edited}: entry {edited} was edited"
        )),
        "{text}"
    );
    let r = env.call("GET", "/api/audit/verify", &root, None).await;
    assert_eq!(r.json["ok"], false, "{}", r.text);
    assert_eq!(r.json["broken"]["id"], edited);
    // Put back as it was, the chain holds again.
    env.sql(&format!(
        "UPDATE audit_log SET subject = 'user:dev' WHERE id = {edited}"
    ))
    .await;
    assert!(ok(&env.cli(&["audit", "verify"], "")).contains("intact: 15 entries"));
    // A deleted middle row: the entry after it no longer follows the one before it.
    env.sql(&format!("DELETE FROM audit_log WHERE id = {}", ids[4]))
        .await;
    let out = env.cli(&["audit", "verify"], "");
    assert_eq!(out.status.code(), Some(1), "{}", all_output(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "broken at entry {}: entry {} does not follow entry {}",
            ids[5], ids[5], ids[3]
        )),
        "{text}"
    );
    assert!(text.contains("deleted"), "{text}");
}

async fn an_identity_links_to_one_user(db: Dialect) {
    let env = &Env::open(db).await;
    let root = env.add_user("root", "admin", None);
    env.add_user("alice", "developer", None);
    env.add_user("mallory", "developer", None);
    let out = env.cli(&["user", "link", "alice", "github:Alice"], "");
    assert!(ok(&out).contains("linked github:alice to alice"));
    // The same account (logins compare without case) cannot be linked twice.
    let out = env.cli(&["user", "link", "mallory", "github:alice"], "");
    assert!(!out.status.success());
    assert!(
        all_output(&out).contains("github:alice is already linked to user `alice`"),
        "{}",
        all_output(&out)
    );
    let r = env
        .call(
            "POST",
            "/api/users/mallory/identities",
            &root,
            Some(json!({"identity": "GitHub:ALICE"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
    let r = env
        .call(
            "POST",
            "/api/users/mallory/identities",
            &root,
            Some(json!({"identity": "git:alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    // Once unlinked, it may go to someone else.
    let r = env
        .call(
            "DELETE",
            "/api/users/alice/identities/github:alice",
            &root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let r = env
        .call(
            "POST",
            "/api/users/mallory/identities",
            &root,
            Some(json!({"identity": "github:alice"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["identities"], json!(["github:alice"]));
    // Only admins link.
    let mallory = env.token_for("mallory");
    let r = env
        .call(
            "POST",
            "/api/users/mallory/identities",
            &mallory,
            Some(json!({"identity": "gitlab:mallory"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
}

async fn a_spoofed_commit_author_never_attributes_a_run(db: Dialect) {
    let env = &Env::open(db).await;
    let root = env.add_user("root", "admin", None);
    let mallory = env.add_user("mallory", "developer", None);
    env.add_user("alice", "release-manager", None);
    ok(&env.cli(&["user", "link", "alice", "github:alice"], ""));
    ok(&env.cli(&["user", "link", "alice", "git:alice@example.com"], ""));
    let url = env.git_repo("forge");
    let r = env
        .call(
            "POST",
            "/api/repos",
            &root,
            Some(json!({"name": "team/app", "forge": "github", "clone_url": url})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.json["webhook_secret"].as_str().unwrap().to_string();

    // Mallory triggers a commit whose author claims to be Alice: the run is Mallory's.
    let r = env
        .call(
            "POST",
            "/api/repos/team/app/trigger",
            &mallory,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let mallory_id = env
        .state()
        .store
        .get_user_by_name("mallory")
        .await
        .unwrap()
        .id;
    assert_eq!(r.json["author"], "alice");
    assert_eq!(r.json["triggered_by"], json!(mallory_id));
    assert_eq!(r.json["pusher"], Value::Null);
    // With a machine token, nobody triggered it as a person.
    let r = env
        .call(
            "POST",
            "/api/repos/team/app/trigger",
            &admin_token(env).await,
            Some(json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["triggered_by"], Value::Null);

    // A signed push: the pusher is the payload's sender, not the commit's author.
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let push = |sender: Option<&str>| {
        let mut p = json!({
            "ref": "refs/heads/main",
            "before": "0000000000000000000000000000000000000000",
            "after": sha,
            "deleted": false,
            "head_commit": {
                "id": sha, "message": "work",
                "author": {"name": "alice", "email": "alice@example.com", "username": "alice"},
            },
            "repository": {"id": 1, "clone_url": url, "full_name": "team/app"},
            "pusher": {"name": "alice", "email": "alice@example.com"},
        });
        if let Some(s) = sender {
            p["sender"] = json!({"login": s});
        }
        p.to_string()
    };
    for (delivery, sender, pusher) in [
        ("d1", Some("Mallory"), json!("github:mallory")),
        ("d2", None, Value::Null),
    ] {
        let body = push(sender);
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let req = Request::builder()
            .method("POST")
            .uri("/hooks/github/team/app")
            .header("x-github-event", "push")
            .header("x-github-delivery", delivery)
            .header("x-hub-signature-256", signature)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap();
        let r = env.send(req).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
        let number = r.json["run"].as_i64().unwrap();
        let r = env
            .call(
                "GET",
                &format!("/api/repos/team/app/runs/{number}"),
                &root,
                None,
            )
            .await;
        assert_eq!(r.json["run"]["pusher"], pusher, "{}", r.text);
        assert_eq!(r.json["run"]["triggered_by"], Value::Null, "{}", r.text);
    }
}

async fn concurrent_changes_keep_one_chain(db: Dialect) {
    let env = &Env::open(db).await;
    env.add_user("dev", "developer", None);
    let before = env
        .state()
        .store
        .verify_audit()
        .await
        .unwrap()
        .unwrap()
        .entries;
    let user = env.state().store.get_user_by_name("dev").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let store = env.state().store.clone();
        let user = user.clone();
        tasks.push(tokio::spawn(async move {
            server::admin::people::create_personal_token(&store, "system", &user, &format!("t{i}"))
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = env.state().store.verify_audit().await.unwrap().unwrap();
    assert_eq!(report.entries, before + 24);
}

/// An admin machine token (they keep full access).
async fn admin_token(env: &Env) -> String {
    let (_, token) = server::api::tokens::create_token(
        &env.state().store,
        "machine",
        server::store::TokenScope::Admin,
    )
    .await
    .unwrap();
    token.to_string()
}

// ---------------------------------------------------------------- README

/// The README's "People and roles" commands, run as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_people_commands_work_as_written() {
    let env = Env::open(Dialect::Sqlite).await;
    let dir = env.server.dir.path();
    let data = &env.state().config.data_dir;
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let section = readme
        .split("## People and roles")
        .nth(1)
        .expect("a People and roles section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    ok(&env.cli(
        &[
            "repo",
            "add",
            "team/app",
            "--forge",
            "github",
            "--clone-url",
            "/srv/app.git",
        ],
        "",
    ));
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(process::slipway_bin(), bin.join("slipway")).unwrap();
    let mut sh = Command::new("bash");
    sh.arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(block)
        .current_dir(dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("ADA_PASSWORD", PASSWORD)
        .env("BOB_PASSWORD", "another long password")
        .env("SLIPWAY_DATA_DIR", data);
    for (k, _) in std::env::vars() {
        if k.starts_with("SLIPWAY_") && k != "SLIPWAY_DATA_DIR" {
            sh.env_remove(k);
        }
    }
    let out = sh.output().unwrap();
    let text = ok(&out);
    assert!(text.contains("audit log intact"), "{text}");
    let token = std::fs::read_to_string(dir.join("ada.token")).unwrap();
    let r = env.call("GET", "/api/users/bob", token.trim(), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["identities"], json!(["github:bob"]));
    let roles: Vec<(Value, Value)> = r.json["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["role"].clone(), b["repo"].clone()))
        .collect();
    assert_eq!(
        roles,
        [
            (json!("viewer"), Value::Null),
            (json!("developer"), json!("team/app"))
        ]
    );
}
