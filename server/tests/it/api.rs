//! The JSON API through `api::app()` with tower `oneshot`: auth, validation, every
//! route, secrets that never come back, reruns, logs and their streams, manual
//! triggers against a real git repository, metrics and the OpenAPI document.
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `support/`.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt;
use serde_json::{Value, json};
use server::daemon::config::Settings;
use server::logs::{NewLine, StepKey, Stream};
use server::store::*;
use tower::ServiceExt;

use crate::support::both_databases;
use crate::support::git::GitRepo;
use crate::support::http::{self, Resp};
use crate::support::test_server::TestServer;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

/// The server's state with an admin token; every response body it sees is kept, to
/// check that no secret ever comes back.
struct Ctx {
    server: TestServer,
    admin: String,
    seen: Mutex<Vec<String>>,
}

impl std::ops::Deref for Ctx {
    type Target = TestServer;

    fn deref(&self) -> &TestServer {
        &self.server
    }
}

impl Ctx {
    async fn new() -> Ctx {
        Ctx::on(Dialect::Sqlite).await
    }

    async fn on(db: Dialect) -> Ctx {
        let server = TestServer::builder()
            .on(db)
            .settings(Settings {
                public_url: Some("http://ci.example/".into()),
                ..Settings::default()
            })
            .build()
            .await;
        let (_, admin) =
            server::api::tokens::create_token(&server.state.store, "root", TokenScope::Admin)
                .await
                .unwrap();
        Ctx {
            server,
            admin: admin.to_string(),
            seen: Mutex::new(Vec::new()),
        }
    }

    async fn send(&self, req: Request<Body>) -> Resp {
        let r = http::send(&self.state, req).await;
        self.seen.lock().unwrap().push(r.text.clone());
        r
    }

    fn request(
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Request<Body> {
        http::request(method, uri, token, body)
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> Resp {
        self.send(Self::request(method, uri, Some(&self.admin), body.as_ref()))
            .await
    }

    async fn add_repo(&self, name: &str, clone_url: &str) -> Value {
        let r = self
            .call(
                "POST",
                "/api/repos",
                Some(json!({"name": name, "forge": "github", "clone_url": clone_url})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json()
    }

    fn everything_seen(&self) -> String {
        self.seen.lock().unwrap().join("\n")
    }
}

both_databases!(
    runs_are_listed_and_shown,
    cancel_stops_a_run_once,
    rerun_failed_only_carries_over_succeeded_stages,
    run_events_stream_until_the_run_is_final,
    secret_values_never_come_back,
);

// ---------------------------------------------------------------- auth

/// The JSON API's routes (the auth test walks the route table: `server::api::tests`).
fn all_routes() -> Vec<(&'static str, String, Option<Value>)> {
    let step = "/api/repos/team/app/runs/1/stages/1/steps/0";
    vec![
        (
            "POST",
            "/api/repos".to_string(),
            Some(json!({"name": "a/b", "forge": "github", "clone_url": "/x"})),
        ),
        ("GET", "/api/repos".to_string(), None),
        ("GET", "/api/runners".to_string(), None),
        ("GET", "/api/repos/team/app".to_string(), None),
        (
            "PATCH",
            "/api/repos/team/app".to_string(),
            Some(json!({"trusted": true})),
        ),
        ("DELETE", "/api/repos/team/app".to_string(), None),
        ("GET", "/api/repos/team/app/runs".to_string(), None),
        ("GET", "/api/repos/team/app/runs/1".to_string(), None),
        (
            "GET",
            "/api/repos/team/app/runs/1/findings".to_string(),
            None,
        ),
        (
            "POST",
            "/api/repos/team/app/runs/1/cancel".to_string(),
            None,
        ),
        (
            "POST",
            "/api/repos/team/app/runs/1/rerun".to_string(),
            Some(json!({})),
        ),
        (
            "POST",
            "/api/repos/team/app/trigger".to_string(),
            Some(json!({})),
        ),
        ("GET", "/api/repos/team/app/runs/1/events".to_string(), None),
        ("GET", format!("{step}/logs"), None),
        ("GET", format!("{step}/logs.txt"), None),
        ("GET", format!("{step}/logs/follow"), None),
        ("GET", "/api/runs/1/artifacts".to_string(), None),
        ("GET", "/api/artifacts/1/download".to_string(), None),
        (
            "PUT",
            "/api/repos/team/app/secrets/X".to_string(),
            Some(json!({"value": "value-1"})),
        ),
        ("GET", "/api/repos/team/app/secrets".to_string(), None),
        ("DELETE", "/api/repos/team/app/secrets/X".to_string(), None),
        (
            "POST",
            "/api/tokens".to_string(),
            Some(json!({"name": "t", "scope": "admin"})),
        ),
        ("GET", "/api/tokens".to_string(), None),
        ("DELETE", "/api/tokens/1".to_string(), None),
    ]
}

// ---------------------------------------------------------------- repositories

#[tokio::test]
async fn registration_shows_the_webhook_secret_once() {
    let ctx = Ctx::new().await;
    let created = ctx
        .call(
            "POST",
            "/api/repos",
            Some(json!({
                "name": "team/app", "forge": "gitlab",
                "clone_url": "https://user:pw@git.example/team/app.git",
                "forge_token": "glpat-forge-token-value", "trusted": true
            })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text);
    let body = created.json();
    let secret = body["webhook_secret"].as_str().unwrap().to_string();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        body["webhook_url"],
        "http://ci.example/hooks/gitlab/team/app"
    );
    let repo = &body["repo"];
    assert_eq!(repo["name"], "team/app");
    assert_eq!(repo["default_branch"], "main");
    assert_eq!(repo["trusted"], true);
    assert_eq!(repo["has_forge_token"], true);
    assert_eq!(repo["clone_url"], "https://***@git.example/team/app.git");
    assert!(repo.get("webhook_secret_enc").is_none());

    // Stored sealed, bound to the repository's name.
    let stored = ctx.state.store.get_repo_by_name("team/app").await.unwrap();
    let opened = ctx
        .state
        .secret_box
        .open(
            &stored.webhook_secret_enc,
            &server::daemon::state::webhook_secret_aad("team/app"),
        )
        .unwrap();
    assert_eq!(&opened[..], secret.as_bytes());
    let token = ctx
        .state
        .secret_box
        .open(
            stored.forge_token_enc.as_ref().unwrap(),
            &server::daemon::state::forge_token_aad("team/app"),
        )
        .unwrap();
    assert_eq!(&token[..], b"glpat-forge-token-value");

    // Never again.
    let before = ctx.seen.lock().unwrap().len();
    let list = ctx.call("GET", "/api/repos", None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json().as_array().unwrap().len(), 1);
    let one = ctx.call("GET", "/api/repos/team/app", None).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(
        one.json()["webhook_url"],
        "http://ci.example/hooks/gitlab/team/app"
    );
    let patched = ctx
        .call(
            "PATCH",
            "/api/repos/team/app",
            Some(json!({"default_branch": "trunk"})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK);
    let later = ctx.seen.lock().unwrap()[before..].join("\n");
    assert!(!later.contains(&secret));
    assert!(!ctx.everything_seen().contains("glpat-forge-token-value"));
    assert!(!ctx.everything_seen().contains(":pw@"));
}

#[tokio::test]
async fn registration_is_validated() {
    let ctx = Ctx::new().await;
    let cases = [
        (
            json!({"name": "noslash", "forge": "github", "clone_url": "/x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"name": "a/b/c", "forge": "github", "clone_url": "/x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"name": "a/b c", "forge": "github", "clone_url": "/x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"name": "a/b", "forge": "svn", "clone_url": "/x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"name": "a/b", "forge": "github", "clone_url": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"name": "a/b", "forge": "github", "clone_url": "/x", "default_branch": "a..b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"name": "a/b", "forge": "github"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
        (
            json!({"name": "a/b", "forge": "github", "clone_url": "/x", "colour": "red"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
        ),
    ];
    for (body, status, code) in cases {
        let r = ctx.call("POST", "/api/repos", Some(body.clone())).await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{body}: {}",
            r.text
        );
    }
    // Not JSON, and JSON without its content type.
    let mut req = Ctx::request("POST", "/api/repos", Some(&ctx.admin), None);
    *req.body_mut() = Body::from("{not json");
    req.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    let r = ctx.send(req).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    let mut req = Ctx::request("POST", "/api/repos", Some(&ctx.admin), None);
    *req.body_mut() = Body::from(r#"{"name":"a/b","forge":"github","clone_url":"/x"}"#);
    let r = ctx.send(req).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.code(), "unsupported_media_type");
    assert!(ctx.state.store.list_repos().await.unwrap().is_empty());

    ctx.add_repo("a/b", "/x").await;
    let dup = ctx
        .call(
            "POST",
            "/api/repos",
            Some(json!({"name": "a/b", "forge": "gitea", "clone_url": "/y"})),
        )
        .await;
    assert_eq!(
        (dup.status, dup.code().as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
}

#[tokio::test]
async fn repos_are_edited_and_deleted() {
    let ctx = Ctx::new().await;
    ctx.add_repo("team/app", "/srv/app.git").await;
    let r = ctx
        .call(
            "PATCH",
            "/api/repos/team/app",
            Some(json!({"default_branch": "trunk", "trusted": true, "clone_url": "/srv/new.git", "forge_token": "tok"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (
            &v["default_branch"],
            &v["trusted"],
            &v["clone_url"],
            &v["has_forge_token"]
        ),
        (
            &json!("trunk"),
            &json!(true),
            &json!("/srv/new.git"),
            &json!(true)
        )
    );
    // Absent fields stay; null removes the token.
    let r = ctx
        .call(
            "PATCH",
            "/api/repos/team/app",
            Some(json!({"forge_token": null})),
        )
        .await;
    let v = r.json();
    assert_eq!(
        (&v["has_forge_token"], &v["default_branch"]),
        (&json!(false), &json!("trunk"))
    );
    assert!(
        ctx.state
            .store
            .get_repo_by_name("team/app")
            .await
            .unwrap()
            .forge_token_enc
            .is_none()
    );
    let bad = ctx
        .call(
            "PATCH",
            "/api/repos/team/app",
            Some(json!({"default_branch": "no spaces"})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    let missing = ctx.call("GET", "/api/repos/team/nope", None).await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // The mirror goes with the repository.
    let id = ctx
        .state
        .store
        .get_repo_by_name("team/app")
        .await
        .unwrap()
        .id;
    let mirror = ctx.state.mirror_dir(id);
    std::fs::create_dir_all(&mirror).unwrap();
    let r = ctx.call("DELETE", "/api/repos/team/app", None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(!mirror.exists());
    let r = ctx.call("DELETE", "/api/repos/team/app", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------- secrets and tokens

async fn secret_values_never_come_back(db: Dialect) {
    let ctx = Ctx::on(db).await;
    ctx.add_repo("team/app", "/x").await;
    let value = "s3cr3t-VALUE-that-must-not-leak";
    let r = ctx
        .call(
            "PUT",
            "/api/repos/team/app/secrets/DEPLOY_KEY",
            Some(json!({"value": value})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["name"], "DEPLOY_KEY");
    assert_eq!(r.json()["allow_pull_requests"], false);
    let r = ctx
        .call(
            "PUT",
            "/api/repos/team/app/secrets/DEPLOY_KEY",
            Some(json!({"value": value, "allow_pull_requests": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["allow_pull_requests"], true);
    ctx.call(
        "PUT",
        "/api/repos/team/app/secrets/OTHER",
        Some(json!({"value": "other-value"})),
    )
    .await;

    let list = ctx.call("GET", "/api/repos/team/app/secrets", None).await;
    let names: Vec<String> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["DEPLOY_KEY", "OTHER"]);

    // Sealed with the repository id and the name.
    let repo = ctx.state.store.get_repo_by_name("team/app").await.unwrap();
    let stored = ctx
        .state
        .store
        .get_secret_values_enc(repo.id)
        .await
        .unwrap();
    let opened = ctx
        .state
        .secret_box
        .open(
            &stored[0].value_enc,
            &server::crypto::secret_aad(repo.id, "DEPLOY_KEY"),
        )
        .unwrap();
    assert_eq!(&opened[..], value.as_bytes());

    for (name, body) in [
        ("1BAD", json!({"value": "long-enough"})),
        ("A-B", json!({"value": "long-enough"})),
        ("EMPTY", json!({"value": ""})),
        ("SHORT", json!({"value": "abc"})),
        ("BLANK", json!({"value": "    \n"})),
        ("BIG", json!({"value": "x".repeat(64 * 1024 + 1)})),
    ] {
        let r = ctx
            .call(
                "PUT",
                &format!("/api/repos/team/app/secrets/{name}"),
                Some(body),
            )
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid"),
            "{name}"
        );
    }
    let r = ctx
        .call(
            "PUT",
            "/api/repos/team/nope/secrets/X",
            Some(json!({"value": "x"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // Every other route answers too; none carries the value.
    for (method, uri, body) in all_routes() {
        if method != "DELETE" {
            ctx.call(method, &uri, body).await;
        }
    }
    let r = ctx
        .call("DELETE", "/api/repos/team/app/secrets/OTHER", None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = ctx
        .call("DELETE", "/api/repos/team/app/secrets/OTHER", None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!ctx.everything_seen().contains(value));
}

#[tokio::test]
async fn tokens_are_shown_once_and_revocable() {
    let ctx = Ctx::new().await;
    let r = ctx
        .call(
            "POST",
            "/api/tokens",
            Some(json!({"name": "ci runner", "scope": "runner"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let v = r.json();
    let token = v["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("slp_") && token.len() > 40);
    assert_eq!(
        (&v["name"], &v["scope"]),
        (&json!("ci runner"), &json!("runner"))
    );
    let id = v["id"].as_i64().unwrap();

    // It authenticates, with its scope.
    let r = ctx
        .send(Ctx::request("GET", "/api/tokens", Some(&token), None))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let list = ctx.call("GET", "/api/tokens", None).await;
    assert_eq!(list.json().as_array().unwrap().len(), 2);
    assert!(!list.text.contains(&token));
    assert!(!list.text.contains(&server::crypto::hash_token(&token)));

    for bad in [
        json!({"name": "", "scope": "admin"}),
        json!({"name": "x", "scope": "root"}),
    ] {
        let r = ctx.call("POST", "/api/tokens", Some(bad.clone())).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }

    let r = ctx.call("DELETE", &format!("/api/tokens/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = ctx
        .send(Ctx::request("GET", "/api/tokens", Some(&token), None))
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = ctx.call("DELETE", &format!("/api/tokens/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = ctx.call("DELETE", "/api/tokens/abc", None).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
}

// ---------------------------------------------------------------- runs

const YAML: &str = "\
on:
  push: {}
stages:
  build:
    steps:
      - name: compile
        run: make
      - name: pack
        run: tar c .
  test:
    needs: [build]
    matrix: { os: [linux, mac] }
    steps:
      - run: make test
  docs:
    when: { branch: release }
    steps:
      - run: make docs
";

fn plans() -> Vec<pipelines::Plan> {
    let p = pipelines::parse(".slipway.yml", YAML).unwrap();
    let ev = pipelines::EventContext {
        event: pipelines::Event::Push,
        branch: Some("main".into()),
        sha: SHA.into(),
        ..Default::default()
    };
    vec![pipelines::plan(&p, &ev).unwrap()]
}

/// A run of `repo` planned from [`YAML`] the way the planner does it.
async fn planned_run(ctx: &Ctx, repo: &str) -> Run {
    let repo = ctx.state.store.get_repo_by_name(repo).await.unwrap();
    let store = &ctx.state.store;
    let mut new = NewRun::new(Trigger::Webhook, Event::Push, "refs/heads/main", SHA);
    new.message = "fix the build".into();
    new.params = json!({"k": "v"});
    let run = store.create_run(repo.id, new).await.unwrap();
    let plans = plans();
    store
        .set_run_planned(
            run.id,
            &serde_json::to_value(&plans).unwrap(),
            &plans[0].yaml_sha256,
            server::runs::from_plan::stages_from_plans(&plans),
        )
        .await
        .unwrap()
}

async fn lease_and_finish(ctx: &Ctx, key: &str, status: StageStatus) {
    let store = &ctx.state.store;
    let runner = store
        .register_runner("r1", &[], 4, &server::store::RepoScope::All)
        .await
        .unwrap();
    let lease = store
        .lease_stage(runner.id, Duration::from_secs(60), &Limits::UNLIMITED)
        .await
        .unwrap()
        .expect("a queued stage");
    assert_eq!(lease.stage.key, key);
    store
        .finish_stage(lease.stage.id, &lease.token, StageOutcome::new(status))
        .await
        .unwrap();
}

async fn runs_are_listed_and_shown(db: Dialect) {
    let ctx = Ctx::on(db).await;
    ctx.add_repo("team/app", "/x").await;
    for _ in 0..3 {
        planned_run(&ctx, "team/app").await;
    }
    let r = ctx.call("GET", "/api/repos/team/app/runs", None).await;
    let numbers: Vec<i64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2, 1]);
    assert!(r.json()[0]["plan"].is_null(), "lists leave plans out");
    let r = ctx
        .call("GET", "/api/repos/team/app/runs?limit=1&before=3", None)
        .await;
    let numbers: Vec<i64> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [2]);
    let r = ctx
        .call("GET", "/api/repos/team/app/runs?limit=x", None)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    let r = ctx.call("GET", "/api/repos/team/app/runs/1", None).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["run"]["status"], "running");
    assert!(v["run"]["plan"].is_array());
    let stages = v["stages"].as_array().unwrap();
    let keys: Vec<&str> = stages.iter().map(|s| s["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["build", "test (os=linux)", "test (os=mac)", "docs"]);
    assert_eq!(stages[0]["status"], "queued");
    assert_eq!(stages[0]["steps"][1]["name"], "pack");
    assert_eq!(stages[3]["status"], "skipped");
    assert!(stages[0].get("lease_token").is_none());
    let r = ctx.call("GET", "/api/repos/team/app/runs/9", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A pipeline that failed to load: its diagnostics are visible.
    let repo = ctx.state.store.get_repo_by_name("team/app").await.unwrap();
    let run = ctx
        .state
        .store
        .create_run(
            repo.id,
            NewRun::new(Trigger::Webhook, Event::Push, "refs/heads/main", SHA),
        )
        .await
        .unwrap();
    let diags = json!([{"file": ".slipway.yml", "line": 3, "column": 5, "message": "unknown key"}]);
    ctx.state
        .store
        .set_run_error(run.id, "the pipeline is invalid", Some(diags.clone()))
        .await
        .unwrap();
    let v = ctx
        .call(
            "GET",
            &format!("/api/repos/team/app/runs/{}", run.number),
            None,
        )
        .await
        .json();
    assert_eq!(v["run"]["status"], "error");
    assert_eq!(v["run"]["diagnostics"], diags);
    assert_eq!(v["run"]["error"], "the pipeline is invalid");
}

async fn cancel_stops_a_run_once(db: Dialect) {
    let ctx = Ctx::on(db).await;
    ctx.add_repo("team/app", "/x").await;
    planned_run(&ctx, "team/app").await;
    let r = ctx
        .call("POST", "/api/repos/team/app/runs/1/cancel", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json()["status"], "cancelled");
    assert_eq!(r.json()["error"], "cancelled by root");
    let stages = ctx
        .call("GET", "/api/repos/team/app/runs/1", None)
        .await
        .json()["stages"]
        .clone();
    assert!(
        stages
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "cancelled" || s["status"] == "skipped")
    );
    let r = ctx
        .call("POST", "/api/repos/team/app/runs/1/cancel", None)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::CONFLICT, "conflict")
    );
    let metrics = ctx.state.metrics.encode();
    assert!(
        metrics.contains("slipway_runs_finished_total{status=\"cancelled\"} 1"),
        "{metrics}"
    );
}

async fn rerun_failed_only_carries_over_succeeded_stages(db: Dialect) {
    let ctx = Ctx::on(db).await;
    ctx.add_repo("team/app", "/x").await;
    let first = planned_run(&ctx, "team/app").await;
    // Not finished yet: no rerun.
    let r = ctx
        .call(
            "POST",
            "/api/repos/team/app/runs/1/rerun",
            Some(json!({"failed_only": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    lease_and_finish(&ctx, "build", StageStatus::Success).await;
    lease_and_finish(&ctx, "test (os=linux)", StageStatus::Success).await;
    lease_and_finish(&ctx, "test (os=mac)", StageStatus::Failure).await;
    assert_eq!(
        ctx.state.store.get_run(first.id).await.unwrap().status,
        RunStatus::Failure
    );

    let r = ctx
        .call(
            "POST",
            "/api/repos/team/app/runs/1/rerun",
            Some(json!({"failed_only": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (&v["number"], &v["trigger"], &v["rerun_of"]),
        (&json!(2), &json!("rerun"), &json!(first.id))
    );
    assert_eq!(
        (&v["sha"], &v["git_ref"], &v["event"]),
        (&json!(SHA), &json!("refs/heads/main"), &json!("push"))
    );
    assert_eq!(
        (&v["params"], &v["message"]),
        (&json!({"k": "v"}), &json!("fix the build"))
    );
    assert_eq!(v["status"], "running");
    assert_eq!(v["plan"], first.plan.clone().unwrap());
    assert_eq!(v["yaml_sha256"], json!(first.yaml_sha256));
    let rerun = ctx
        .state
        .store
        .get_run(v["id"].as_i64().unwrap())
        .await
        .unwrap();
    let stages = ctx.state.store.list_stages(rerun.id).await.unwrap();
    let by_key = |k: &str| {
        stages
            .iter()
            .find(|s| s.stage.key == k)
            .unwrap()
            .stage
            .clone()
    };
    assert_eq!(by_key("build").status, StageStatus::Success);
    assert_eq!(
        by_key("build").reason.as_deref(),
        Some("succeeded in run #1")
    );
    assert_eq!(by_key("test (os=linux)").status, StageStatus::Success);
    assert_eq!(by_key("test (os=mac)").status, StageStatus::Queued);
    assert_eq!(by_key("docs").status, StageStatus::Skipped);
    // The same spec as the original, so it runs exactly the same thing.
    let old = ctx.state.store.list_stages(first.id).await.unwrap();
    let old_mac = old.iter().find(|s| s.stage.key == "test (os=mac)").unwrap();
    assert_eq!(by_key("test (os=mac)").spec, old_mac.stage.spec);
    lease_and_finish(&ctx, "test (os=mac)", StageStatus::Success).await;
    assert_eq!(
        ctx.state.store.get_run(rerun.id).await.unwrap().status,
        RunStatus::Success
    );

    // Nothing failed in run #2: failed-only makes no sense, a whole rerun does.
    let r = ctx
        .call(
            "POST",
            "/api/repos/team/app/runs/2/rerun",
            Some(json!({"failed_only": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = ctx
        .send(Ctx::request(
            "POST",
            "/api/repos/team/app/runs/2/rerun",
            Some(&ctx.admin),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let whole = r.json()["id"].as_i64().unwrap();
    let stages = ctx.state.store.list_stages(whole).await.unwrap();
    let statuses: Vec<(String, StageStatus)> = stages
        .iter()
        .map(|s| (s.stage.key.clone(), s.stage.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("build".to_string(), StageStatus::Queued),
            ("test (os=linux)".to_string(), StageStatus::Waiting),
            ("test (os=mac)".to_string(), StageStatus::Waiting),
            ("docs".to_string(), StageStatus::Skipped),
        ]
    );
    // Planned at once: the planner never sees reruns.
    assert!(ctx.state.store.pending_runs(10).await.unwrap().is_empty());
    let r = ctx
        .call(
            "POST",
            "/api/repos/team/app/runs/3/rerun",
            Some(json!({"failed_only": "yes"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn rerun_of_a_run_that_never_planned_goes_back_to_the_planner() {
    let ctx = Ctx::new().await;
    ctx.add_repo("team/app", "/x").await;
    let repo = ctx.state.store.get_repo_by_name("team/app").await.unwrap();
    let run = ctx
        .state
        .store
        .create_run(
            repo.id,
            NewRun::new(Trigger::Webhook, Event::Push, "refs/heads/main", SHA),
        )
        .await
        .unwrap();
    ctx.state
        .store
        .set_run_error(run.id, "fetch failed", None)
        .await
        .unwrap();
    let r = ctx
        .call(
            "POST",
            "/api/repos/team/app/runs/1/rerun",
            Some(json!({"failed_only": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = ctx
        .call("POST", "/api/repos/team/app/runs/1/rerun", None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["status"], "pending");
    let pending = ctx.state.store.pending_runs(10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].rerun_of, Some(run.id));
}

// ---------------------------------------------------------------- manual triggers

/// A real repository with a commit on `main`, and a second one on `feature`.
fn git_repo(dir: &std::path::Path) -> (String, String) {
    let mut git = GitRepo::init(dir).with_author("Ada Lovelace", "ada@example.com");
    let x = (".slipway.yml", "x");
    let main = git.commit("refs/heads/main", &[], &[x], "first commit\n\nbody");
    let feature = git.commit(
        "refs/heads/feature",
        &[main],
        &[x, ("b", "x")],
        "feature work",
    );
    (main.to_string(), feature.to_string())
}

#[tokio::test]
async fn manual_trigger_makes_a_pending_run_of_the_branch_head() {
    let ctx = Ctx::new().await;
    let src = tempfile::tempdir().unwrap();
    let (main, feature) = git_repo(src.path());
    ctx.add_repo("team/app", src.path().to_str().unwrap()).await;

    let r = ctx
        .call(
            "POST",
            "/api/repos/team/app/trigger",
            Some(json!({"params": {"env": "prod", "n": 3}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let v = r.json();
    assert_eq!(
        (&v["status"], &v["trigger"], &v["event"]),
        (&json!("pending"), &json!("manual"), &json!("manual"))
    );
    assert_eq!(
        (&v["sha"], &v["git_ref"], &v["branch"]),
        (&json!(main), &json!("refs/heads/main"), &json!("main"))
    );
    assert_eq!(v["params"], json!({"env": "prod", "n": "3"}));
    assert_eq!(
        (&v["message"], &v["author"]),
        (&json!("first commit"), &json!("Ada Lovelace"))
    );
    assert_eq!(v["trusted"], false);

    // No body at all: the default branch.
    let r = ctx
        .send(Ctx::request(
            "POST",
            "/api/repos/team/app/trigger",
            Some(&ctx.admin),
            None,
        ))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["sha"], json!(main));
    let r = ctx
        .call(
            "POST",
            "/api/repos/team/app/trigger",
            Some(json!({"branch": "feature", "pipeline": "deploy"})),
        )
        .await;
    assert_eq!(r.json()["params"], json!({"__pipeline": "deploy"}));
    assert_eq!(r.json()["sha"], json!(feature));
    assert_eq!(r.json()["number"], 3);

    for (body, status) in [
        (json!({"branch": "nope"}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"branch": "bad..name"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"branch": "x:y"}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"params": {"a": [1]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"params": {"a b": "1"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({"colour": "red"}), StatusCode::UNPROCESSABLE_ENTITY),
        (
            json!({"params": {"__cron": "nightly"}}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ] {
        let r = ctx
            .call("POST", "/api/repos/team/app/trigger", Some(body.clone()))
            .await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
    }
    let pending = ctx.state.store.pending_runs(10).await.unwrap();
    assert_eq!(pending.len(), 3);

    // An unreachable clone URL is a gateway error, not a 500.
    ctx.add_repo("team/gone", src.path().join("missing").to_str().unwrap())
        .await;
    let r = ctx.call("POST", "/api/repos/team/gone/trigger", None).await;
    assert!(
        matches!(
            r.status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
        ),
        "{}",
        r.text
    );
    assert_eq!(r.code(), "fetch_failed");
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("refs/heads/main")
    );
}

// ---------------------------------------------------------------- logs

/// A planned run whose first step (`build`/`compile`) has `n` log lines.
async fn run_with_log(ctx: &Ctx, n: usize) -> (String, StepKey) {
    ctx.add_repo("team/app", "/x").await;
    let run = planned_run(ctx, "team/app").await;
    let stages = ctx.state.store.list_stages(run.id).await.unwrap();
    let build = &stages[0].stage;
    let key = StepKey {
        run: run.id,
        stage: build.id,
        step: 0,
    };
    let lines: Vec<NewLine> = (1..=n)
        .map(|i| NewLine {
            time_ms: 1000 + i as i64,
            stream: if i % 2 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            },
            bytes: format!("line {i}").into_bytes(),
        })
        .collect();
    if n > 0 {
        ctx.state.logs.append(key, 1, &lines).unwrap();
    }
    (
        format!("/api/repos/team/app/runs/1/stages/{}/steps/0", build.id),
        key,
    )
}

fn texts(v: &Value) -> Vec<String> {
    v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn log_ranges_and_tails() {
    let ctx = Ctx::new().await;
    let (step, key) = run_with_log(&ctx, 12_000).await;
    let v = ctx
        .call("GET", &format!("{step}/logs?from=5&limit=3"), None)
        .await
        .json();
    assert_eq!(texts(&v), ["line 5", "line 6", "line 7"]);
    assert_eq!(
        (&v["total"], &v["next"], &v["finished"]),
        (&json!(12_000), &json!(8), &json!(false))
    );
    let first = &v["lines"][0];
    assert_eq!(
        (&first["number"], &first["time_ms"], &first["stream"]),
        (&json!(5), &json!(1005), &json!("stdout"))
    );
    assert_eq!(v["lines"][1]["stream"], "stderr");
    // The default page, and the cap.
    let v = ctx.call("GET", &format!("{step}/logs"), None).await.json();
    assert_eq!(v["lines"].as_array().unwrap().len(), 1000);
    let v = ctx
        .call("GET", &format!("{step}/logs?limit=50000"), None)
        .await
        .json();
    assert_eq!(v["lines"].as_array().unwrap().len(), 10_000);
    let v = ctx
        .call("GET", &format!("{step}/logs?tail=2"), None)
        .await
        .json();
    assert_eq!(texts(&v), ["line 11999", "line 12000"]);
    assert_eq!(v["next"], 12_001);
    let v = ctx
        .call("GET", &format!("{step}/logs?tail=20000"), None)
        .await
        .json();
    assert_eq!(v["lines"].as_array().unwrap().len(), 10_000);
    let v = ctx
        .call("GET", &format!("{step}/logs?from=12001"), None)
        .await
        .json();
    assert_eq!((texts(&v).len(), &v["next"]), (0, &json!(12_001)));
    let r = ctx
        .call("GET", &format!("{step}/logs?tail=2&from=1"), None)
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );
    // Not UTF-8: replaced in JSON.
    ctx.state
        .logs
        .append(
            key,
            12_001,
            &[NewLine {
                time_ms: 1,
                stream: Stream::Stdout,
                bytes: vec![b'a', 0xff, b'b'],
            }],
        )
        .unwrap();
    let v = ctx
        .call("GET", &format!("{step}/logs?tail=1"), None)
        .await
        .json();
    assert_eq!(texts(&v), ["a\u{fffd}b"]);
    // Steps and stages of other runs are not reachable through this run.
    let r = ctx
        .call(
            "GET",
            &format!("{}/logs", step.replace("/steps/0", "/steps/7")),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = ctx
        .call(
            "GET",
            "/api/repos/team/app/runs/1/stages/999/steps/0/logs",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let other = planned_run(&ctx, "team/app").await;
    let other_stage = ctx.state.store.list_stages(other.id).await.unwrap()[0]
        .stage
        .id;
    let r = ctx
        .call(
            "GET",
            &format!("/api/repos/team/app/runs/1/stages/{other_stage}/steps/0/logs"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn log_download_streams_the_committed_bytes() {
    let ctx = Ctx::new().await;
    let (step, key) = run_with_log(&ctx, 3).await;
    // A batch caught half-written: bytes in the .log that no index record covers yet.
    let path = ctx.state.logs.text_path(key).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, b"half a li").unwrap();
    let r = ctx.call("GET", &format!("{step}/logs.txt"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, "line 1\nline 2\nline 3\n");
    assert_eq!(r.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(r.headers[header::CONTENT_LENGTH], "21");
    assert_eq!(ctx.state.logs.text_len(key).unwrap(), 21);

    // A step that logged nothing: an empty file.
    let empty = step.replace("/steps/0", "/steps/1");
    let r = ctx.call("GET", &format!("{empty}/logs.txt"), None).await;
    assert_eq!((r.status, r.text.as_str()), (StatusCode::OK, ""));
}

#[tokio::test]
async fn a_large_log_downloads_in_pieces() {
    let ctx = Ctx::new().await;
    let (step, key) = run_with_log(&ctx, 0).await;
    let line = vec![b'x'; 1023];
    let batch: Vec<NewLine> = (0..1024)
        .map(|_| NewLine {
            time_ms: 0,
            stream: Stream::Stdout,
            bytes: line.clone(),
        })
        .collect();
    for i in 0..8u64 {
        ctx.state.logs.append(key, 1 + i * 1024, &batch).unwrap();
    }
    let res = server::api::app(ctx.state.clone())
        .oneshot(Ctx::request(
            "GET",
            &format!("{step}/logs.txt"),
            Some(&ctx.admin),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(
        res.headers()[header::CONTENT_LENGTH],
        (8u64 << 20).to_string().as_str()
    );
    let mut stream = res.into_body().into_data_stream();
    let (mut chunks, mut total, mut biggest) = (0, 0, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        total += chunk.len();
        biggest = biggest.max(chunk.len());
    }
    assert_eq!(total, 8 << 20);
    // Streamed, not read whole: many pieces, none bigger than the reader's buffer.
    assert!(
        chunks >= 100 && biggest <= 64 * 1024,
        "{chunks} chunks, biggest {biggest}"
    );
}

/// Reads server-sent events until one named `until` (or the stream ends), bounded.
async fn read_events(
    stream: &mut (impl futures::Stream<Item = Result<axum::body::Bytes, axum::Error>> + Unpin),
    buf: &mut String,
    until: &str,
) -> Vec<(String, String)> {
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = "message".to_string();
            let mut data = String::new();
            for l in block.lines() {
                if let Some(n) = l.strip_prefix("event: ") {
                    name = n.to_string();
                } else if let Some(d) = l.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if block.lines().all(|l| l.starts_with(':')) {
                continue; // keep-alive comment
            }
            let done = name == until;
            events.push((name, data));
            if done {
                return events;
            }
        }
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
            Ok(None) => return events,
            Err(_) => panic!("no `{until}` event within 20 s; got {events:?}"),
        }
    }
}

#[tokio::test]
async fn follow_sends_history_then_live_lines_then_end() {
    let ctx = Ctx::new().await;
    let (step, key) = run_with_log(&ctx, 3).await;
    let res = server::api::app(ctx.state.clone())
        .oneshot(Ctx::request(
            "GET",
            &format!("{step}/logs/follow?from=2"),
            Some(&ctx.admin),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut stream = res.into_body().into_data_stream();
    let mut buf = String::new();
    let mut got = Vec::new();
    while got.len() < 2 {
        got.extend(read_events(&mut stream, &mut buf, "line").await);
    }
    let texts: Vec<String> = got
        .iter()
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(texts, ["line 2", "line 3"]);

    // Live: appended after the client connected.
    let more: Vec<NewLine> = (4..=5)
        .map(|i| NewLine {
            time_ms: 0,
            stream: Stream::Stdout,
            bytes: format!("line {i}").into_bytes(),
        })
        .collect();
    ctx.state.logs.append(key, 4, &more).unwrap();
    ctx.state.logs.finish(key).unwrap();
    let rest = read_events(&mut stream, &mut buf, "end").await;
    let names: Vec<&str> = rest.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["line", "line", "end"]);
    assert_eq!(
        serde_json::from_str::<Value>(&rest[1].1).unwrap()["number"],
        5
    );
    assert_eq!(
        serde_json::from_str::<Value>(&rest[2].1).unwrap()["lines"],
        5
    );
    // And the stream closes.
    assert!(
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .is_none()
    );

    // Following a finished log replays it and ends at once; Last-Event-ID resumes.
    let mut req = Ctx::request(
        "GET",
        &format!("{step}/logs/follow"),
        Some(&ctx.admin),
        None,
    );
    req.headers_mut()
        .insert("last-event-id", "4".parse().unwrap());
    let res = server::api::app(ctx.state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let mut stream = res.into_body().into_data_stream();
    let all = read_events(&mut stream, &mut String::new(), "end").await;
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["line", "end"]);
}

#[tokio::test]
async fn follow_ends_when_the_database_says_the_step_finished() {
    // After a restart nothing marks the in-memory log done; the step row does.
    let ctx = Ctx::new().await;
    let (step, _key) = run_with_log(&ctx, 1).await;
    let store = &ctx.state.store;
    let runner = store
        .register_runner("r1", &[], 1, &server::store::RepoScope::All)
        .await
        .unwrap();
    let lease = store
        .lease_stage(runner.id, Duration::from_secs(60), &Limits::UNLIMITED)
        .await
        .unwrap()
        .unwrap();
    store
        .start_step(lease.stage.id, &lease.token, 0)
        .await
        .unwrap();
    let res = server::api::app(ctx.state.clone())
        .oneshot(Ctx::request(
            "GET",
            &format!("{step}/logs/follow"),
            Some(&ctx.admin),
            None,
        ))
        .await
        .unwrap();
    let mut stream = res.into_body().into_data_stream();
    let mut buf = String::new();
    let first = read_events(&mut stream, &mut buf, "line").await;
    assert_eq!(first.len(), 1);
    store
        .finish_step(
            lease.stage.id,
            &lease.token,
            0,
            StepStatus::Success,
            Some(0),
            false,
        )
        .await
        .unwrap();
    let rest = read_events(&mut stream, &mut buf, "end").await;
    assert_eq!(rest.last().unwrap().0, "end");
}

async fn run_events_stream_until_the_run_is_final(db: Dialect) {
    let ctx = Ctx::on(db).await;
    ctx.add_repo("team/app", "/x").await;
    planned_run(&ctx, "team/app").await;
    let res = server::api::app(ctx.state.clone())
        .oneshot(Ctx::request(
            "GET",
            "/api/repos/team/app/runs/1/events",
            Some(&ctx.admin),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.into_body().into_data_stream();
    let mut buf = String::new();
    // History first: pending, running, and the stages' first states.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(n, d): &(String, String)| n == "stage" && d.contains("\"docs\""))
    {
        seen.extend(read_events(&mut stream, &mut buf, "stage").await);
    }
    assert_eq!(seen[0].0, "run");
    assert_eq!(
        serde_json::from_str::<Value>(&seen[0].1).unwrap()["status"],
        "pending"
    );
    lease_and_finish(&ctx, "build", StageStatus::Failure).await;
    let rest = read_events(&mut stream, &mut buf, "end").await;
    let changes: Vec<(String, String)> = rest
        .iter()
        .filter(|(n, _)| n != "end")
        .map(|(_, d)| {
            let v: Value = serde_json::from_str(d).unwrap();
            (
                v["stage_key"].as_str().unwrap_or("<run>").to_string(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        changes.contains(&("build".into(), "running".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("build".into(), "failure".into())),
        "{changes:?}"
    );
    assert!(
        changes.contains(&("test (os=mac)".into(), "skipped".into())),
        "{changes:?}"
    );
    assert_eq!(
        changes.last().unwrap(),
        &("<run>".to_string(), "failure".to_string())
    );
    let end: Value = serde_json::from_str(&rest.last().unwrap().1).unwrap();
    assert_eq!(end["status"], "failure");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap()
            .is_none()
    );

    // Resuming after the last id seen: nothing is sent twice, the stream just ends.
    let res = server::api::app(ctx.state.clone())
        .oneshot(Ctx::request(
            "GET",
            "/api/repos/team/app/runs/1/events?after=1000000",
            Some(&ctx.admin),
            None,
        ))
        .await
        .unwrap();
    let mut stream = res.into_body().into_data_stream();
    let tail = read_events(&mut stream, &mut String::new(), "end").await;
    assert_eq!(tail.len(), 1, "{tail:?}");
}

// ---------------------------------------------------------------- metrics and OpenAPI

#[tokio::test]
async fn metrics_expose_the_families() {
    let ctx = Ctx::new().await;
    ctx.add_repo("team/app", "/x").await;
    planned_run(&ctx, "team/app").await;
    ctx.call("GET", "/api/repos/team/app", None).await;
    ctx.call("GET", "/api/repos/team/nope", None).await;
    ctx.state.metrics.webhook("github", "accepted");
    // Real deliveries through the webhook handler: an unsigned one and an unknown forge.
    let mut unsigned = Ctx::request("POST", "/hooks/github/team/app", None, Some(&json!({})));
    unsigned
        .headers_mut()
        .insert("x-github-event", "push".parse().unwrap());
    assert_eq!(ctx.send(unsigned).await.status, StatusCode::UNAUTHORIZED);
    let odd = Ctx::request("POST", "/hooks/svn/team/app", None, Some(&json!({})));
    assert_eq!(ctx.send(odd).await.status, StatusCode::NOT_FOUND);
    ctx.state.metrics.stage_leased();
    let r = ctx.send(Ctx::request("GET", "/metrics", None, None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let t = &r.text;
    for expected in [
        r#"slipway_http_requests_total{method="POST",route="/api/repos",status="201"} 1"#,
        r#"slipway_http_requests_total{method="GET",route="/api/repos/{owner}/{name}",status="200"} 1"#,
        r#"slipway_http_requests_total{method="GET",route="/api/repos/{owner}/{name}",status="404"} 1"#,
        r#"slipway_webhook_deliveries_total{forge="github",outcome="accepted"} 1"#,
        r#"slipway_webhook_deliveries_total{forge="github",outcome="unauthorized"} 1"#,
        r#"slipway_webhook_deliveries_total{forge="unknown",outcome="unknown_repo"} 1"#,
        r#"slipway_http_requests_total{method="POST",route="/hooks/{forge}/{*repo}",status="401"} 1"#,
        "slipway_stages_leased_total 1",
        // `build` and `test`'s expansions wait on it; `build` is queued.
        "slipway_stages_queued 1",
        "slipway_stages_running 0",
        r#"slipway_runs_finished_total{status="success"} 0"#,
        r#"slipway_runs_finished_total{status="failure"} 0"#,
        "# TYPE slipway_http_request_duration_seconds histogram",
        "# EOF",
    ] {
        assert!(t.contains(expected), "missing {expected:?} in\n{t}");
    }
    // No repository names in label values.
    assert!(
        !t.contains("team/app") && !t.contains("team/nope") && !t.contains("svn"),
        "{t}"
    );
}

#[tokio::test]
async fn openapi_lists_the_routes() {
    let ctx = Ctx::new().await;
    let r = ctx
        .send(Ctx::request("GET", "/api/openapi.json", None, None))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (method, uri, _) in all_routes() {
        // The concrete URI back to its template.
        let template = uri
            .replace("/team/app", "/{owner}/{name}")
            .replace("/runs/1", "/runs/{number}")
            .replace("/stages/1", "/stages/{stage_id}")
            .replace("/steps/0", "/steps/{idx}")
            .replace("/secrets/X", "/secrets/{secret}")
            .replace("/tokens/1", "/tokens/{id}")
            .replace("/api/runs/{number}", "/api/runs/{id}")
            .replace("/artifacts/1/", "/artifacts/{id}/");
        let op = &paths
            .get(&template)
            .unwrap_or_else(|| panic!("{template} not documented"))[method.to_lowercase()];
        assert!(op.is_object(), "{method} {template} not documented");
        assert_eq!(
            op["security"][0]["bearer"],
            json!([]),
            "{method} {template}"
        );
    }
    assert!(paths.contains_key("/metrics"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for schema in [
        "RepoView",
        "RepoCreated",
        "Run",
        "RunDetail",
        "StageWithSteps",
        "StoredFinding",
        "LogPage",
        "SecretMeta",
        "TokenCreated",
        "ForgeKind",
        "RunStatus",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
    // The Repo schema never mentions sealed fields.
    assert!(!r.text.contains("webhook_secret_enc") && !r.text.contains("lease_token"));
}
