//! The route table against the real application: every route that is not public
//! answers only to the token it declares — machine tokens by scope, personal tokens by
//! their user's role (globally, or on the repository the path names) — and the served
//! OpenAPI document lists exactly the table's routes.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::route_table::{Access, Route};
use super::{app, routes};
use crate::daemon::config::{Config, Settings};
use crate::daemon::state::AppState;
use crate::store::{NewRepo, Repo, Role, TokenScope, audit};

struct Ctx {
    _dir: tempfile::TempDir,
    state: AppState,
}

struct Answer {
    status: StatusCode,
    text: String,
}

impl Answer {
    fn code(&self) -> String {
        let v: Value = serde_json::from_str(&self.text).unwrap_or_default();
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

impl Ctx {
    async fn new() -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::resolve(
            Settings {
                data_dir: Some(dir.path().join("data")),
                public_url: Some("http://ci.example/".into()),
                ..Settings::default()
            },
            None,
        )
        .unwrap();
        let state = crate::daemon::serve::build_state(config).await.unwrap();
        Ctx { _dir: dir, state }
    }

    /// A machine token of `scope`; a hook token is bound to `team/app`.
    async fn token(&self, scope: TokenScope) -> String {
        let repos: &[String] = match scope {
            TokenScope::Hook => &[HOOK_REPO.to_string()],
            _ => &[],
        };
        let (_, t) = super::tokens::create_token_as(
            &self.state.store,
            audit::SYSTEM,
            scope.as_str(),
            scope,
            None,
            repos,
        )
        .await
        .unwrap();
        t.to_string()
    }

    /// A user with these roles (global, and on repositories) and a personal token.
    async fn user(&self, name: &str, global: Option<Role>, on: &[(&Repo, Role)]) -> String {
        let store = &self.state.store;
        let role = global.map(|r| (r, None));
        let password = zeroize::Zeroizing::new("correct horse battery".to_string());
        let user = crate::admin::people::add_user(store, audit::SYSTEM, name, password, role)
            .await
            .unwrap();
        for (repo, role) in on {
            store
                .set_role(audit::SYSTEM, &user, Some(repo), Some(*role))
                .await
                .unwrap();
        }
        let (_, token) =
            crate::admin::people::create_personal_token(store, audit::SYSTEM, &user, "t")
                .await
                .unwrap();
        token.to_string()
    }

    async fn repo(&self, name: &str) -> Repo {
        self.state
            .store
            .create_repo(NewRepo {
                api_url: None,
                name: name.into(),
                forge: crate::store::ForgeKind::Github,
                clone_url: "/nonexistent".into(),
                default_branch: "main".into(),
                webhook_secret_enc: Vec::new(),
                forge_token_enc: None,
                trusted: false,
            })
            .await
            .unwrap()
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(v) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            None => req.body(Body::empty()),
        };
        let res = app(self.state.clone()).oneshot(req.unwrap()).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        Answer {
            status,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }
}

/// The route's path with every parameter filled in: a number, as some parameters are
/// ids, that names nothing stored.
/// The repository the tests' hook token is bound to.
const HOOK_REPO: &str = "team/app";

fn concrete(path: &str) -> String {
    concrete_with(path, &[])
}

/// [`concrete`], but the parameters named in `given` get the value given.
fn concrete_with(path: &str, given: &[(&str, &str)]) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').unwrap();
        out.push_str(&rest[..open]);
        let name = rest[open + 1..close].trim_start_matches('*');
        let value = given
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("9999", |g| g.1);
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A valid body for the routes that create or change something, so a refused request
/// shows it was refused before anything was done.
fn body_for(route: &Route) -> Option<Value> {
    match (route.method.as_str(), route.path.as_str()) {
        ("POST", "/api/repos") => {
            Some(json!({"name": "a/b", "forge": "github", "clone_url": "/x"}))
        }
        ("PATCH", "/api/repos/{owner}/{name}") => Some(json!({"trusted": true})),
        ("PUT", "/api/repos/{owner}/{name}/secrets/{secret}") => Some(json!({"value": "value-1"})),
        ("POST", "/api/tokens") => Some(json!({"name": "t", "scope": "admin"})),
        ("POST", "/api/users") => Some(json!({
            "name": "zed", "password": "long enough password", "role": "admin"
        })),
        ("PATCH", "/api/users/{user}") => Some(json!({"disabled": true})),
        ("PUT", "/api/users/{user}/roles") => Some(json!({"role": "admin"})),
        ("POST", "/api/users/{user}/identities") => Some(json!({"identity": "github:zed"})),
        ("POST", "/api/users/{user}/tokens") => Some(json!({"name": "t"})),
        ("POST", p) if p.ends_with("/rerun") || p.ends_with("/trigger") => Some(json!({})),
        ("PUT", "/api/repos/{owner}/{name}/environments/{env}") => {
            Some(json!({"protected": true, "required_approvals": 2}))
        }
        ("POST", p) if p.ends_with("/approve") || p.ends_with("/reject") => {
            Some(json!({"stage": "production", "comment": "ok"}))
        }
        ("POST", p) if p.ends_with("/promote") => Some(json!({"environment": "production"})),
        _ => None,
    }
}

#[test]
fn concrete_fills_every_parameter() {
    assert_eq!(
        concrete("/api/repos/{owner}/{name}/runs/{number}"),
        "/api/repos/9999/9999/runs/9999"
    );
    assert_eq!(concrete("/hooks/git/{*repo}"), "/hooks/git/9999");
    assert_eq!(concrete("/api/repos"), "/api/repos");
    assert_eq!(
        concrete_with("/api/users/{user}/tokens/{id}", &[("user", "ada")]),
        "/api/users/ada/tokens/9999"
    );
    assert_eq!(
        concrete_with("/hooks/git/{*repo}", &[("repo", "a/b")]),
        "/hooks/git/a/b"
    );
}

/// Whether a user with `role` globally may use a route (`SelfOrAdmin` routes are tried
/// on another user's path).
fn allowed(access: Access, role: Option<Role>) -> bool {
    match access {
        Access::Public | Access::Signed => true,
        Access::Role(needed) | Access::AnyRole(needed) => role >= Some(needed),
        Access::SelfOrAdmin => role == Some(Role::Admin),
        Access::Runner | Access::Hook => false,
    }
}

/// What the user walk checks: nothing a refused request could have changed.
async fn people_snapshot(ctx: &Ctx) -> String {
    let store = &ctx.state.store;
    let mut out = Vec::new();
    for user in store.list_users().await.unwrap() {
        let tokens = store.list_user_tokens(user.id).await.unwrap().len();
        let detail = crate::admin::people::detail(store, user).await.unwrap();
        out.push(format!(
            "{} {tokens}",
            serde_json::to_string(&detail).unwrap()
        ));
    }
    out.push(format!(
        "machine tokens {}",
        store.list_tokens().await.unwrap().len()
    ));
    out.push(format!("repos {}", store.list_repos().await.unwrap().len()));
    out.join("\n")
}

#[tokio::test]
async fn every_route_refuses_a_user_without_its_permission() {
    let ctx = Ctx::new().await;
    let mut users = Vec::new();
    for role in [
        None,
        Some(Role::Viewer),
        Some(Role::Developer),
        Some(Role::ReleaseManager),
        Some(Role::Admin),
    ] {
        let name = role.map_or("nobody".to_string(), |r| r.to_string());
        users.push((name.clone(), role, ctx.user(&name, role, &[]).await));
    }
    let disabled = ctx.user("disabled-admin", Some(Role::Admin), &[]).await;
    let id = ctx
        .state
        .store
        .get_user_by_name("disabled-admin")
        .await
        .unwrap()
        .id;
    ctx.state
        .store
        .set_user_disabled(audit::SYSTEM, id, true)
        .await
        .unwrap();
    let before = people_snapshot(&ctx).await;
    let table = routes();
    let guarded: Vec<&Route> = table
        .routes()
        .iter()
        .filter(|r| r.access != Access::Public)
        .collect();
    // The path's user, for routes about one: someone other than the caller.
    let other = [("user", "release-manager")];
    let mut refused = 0;
    for route in &guarded {
        let method = route.method.as_str();
        let uri = concrete_with(&route.path, &other);
        let body = body_for(route);
        let r = ctx.send(method, &uri, Some(&disabled), body.as_ref()).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri} by a disabled admin: {}",
            r.text
        );
        assert!(r.text.contains("disabled"), "{}", r.text);
        for (name, role, token) in &users {
            if name == "release-manager" && route.access == Access::SelfOrAdmin {
                continue;
            }
            if allowed(route.access, *role) {
                continue;
            }
            let r = ctx.send(method, &uri, Some(token), body.as_ref()).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{method} {uri} by {name}: {}",
                r.text
            );
            assert_eq!(r.code(), "forbidden");
            refused += 1;
        }
    }
    assert!(refused > 100, "{refused}");
    assert_eq!(
        people_snapshot(&ctx).await,
        before,
        "a refused request changed something"
    );
    // Those with the permission get past the check (no body: nothing is done; the
    // path names nothing stored, except that a user may reach their own things).
    for route in &guarded {
        let method = route.method.as_str();
        for (name, role, token) in &users {
            let own = route.access == Access::SelfOrAdmin;
            if !allowed(route.access, *role) && !own {
                continue;
            }
            if own && *role == Some(Role::Admin) {
                continue;
            }
            let user = if own { name.as_str() } else { "9999" };
            let uri = concrete_with(&route.path, &[("user", user)]);
            let r = ctx.send(method, &uri, Some(token), None).await;
            assert!(
                ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&r.status),
                "{method} {uri} by {name}: {} {}",
                r.status,
                r.text
            );
        }
    }
}

/// A role on a repository counts on that repository only; with a global role the higher
/// of the two counts.
#[tokio::test]
async fn a_repository_role_counts_on_that_repository_only() {
    let ctx = Ctx::new().await;
    let app = ctx.repo("team/app").await;
    let other = ctx.repo("team/other").await;
    let token = ctx
        .user("dev", Some(Role::Viewer), &[(&app, Role::Developer)])
        .await;
    let only_there = ctx.user("dev2", None, &[(&other, Role::Developer)]).await;
    let table = routes();
    let on_repo: Vec<&Route> = table
        .routes()
        .iter()
        .filter(|r| r.repo_in == super::route_table::RepoIn::Path)
        .collect();
    assert!(on_repo.len() > 10, "{on_repo:?}");
    for route in &on_repo {
        let Access::Role(needed) = route.access else {
            panic!("{route:?} names a repository but needs no role");
        };
        let method = route.method.as_str();
        for (repo, has, token) in [
            ("team/app", Some(Role::Developer), &token),
            ("team/other", Some(Role::Viewer), &token),
            ("team/app", None, &only_there),
        ] {
            let (owner, name) = repo.split_once('/').unwrap();
            let uri = concrete_with(&route.path, &[("owner", owner), ("name", name)]);
            if has >= Some(needed) {
                let r = ctx.send(method, &uri, Some(token), None).await;
                assert!(
                    ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&r.status),
                    "{method} {uri} as {has:?}: {} {}",
                    r.status,
                    r.text
                );
            } else {
                let body = body_for(route);
                let r = ctx.send(method, &uri, Some(token), body.as_ref()).await;
                assert_eq!(
                    r.status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri}: {}",
                    r.text
                );
            }
        }
    }
    // `dev2` has no global role: a repository it has no role on is closed to it.
    let r = ctx
        .send("GET", "/api/repos/team/app/runs", Some(&only_there), None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = ctx
        .send("GET", "/api/repos/team/other/runs", Some(&only_there), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The repository list shows `dev2` only the repository it has a role on, and
    // `dev` (a global viewer) every one.
    let names = |r: &Answer| -> Vec<String> {
        serde_json::from_str::<Value>(&r.text)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    };
    let r = ctx.send("GET", "/api/repos", Some(&only_there), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(names(&r), ["team/other"]);
    let r = ctx.send("GET", "/api/repos", Some(&token), None).await;
    assert_eq!(names(&r), ["team/app", "team/other"]);
    // Without a role anywhere, the list is refused.
    let nobody = ctx.user("nobody-at-all", None, &[]).await;
    let r = ctx.send("GET", "/api/repos", Some(&nobody), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(ctx.state.store.list_repos().await.unwrap().len(), 2);
}

#[tokio::test]
async fn every_route_needs_the_token_it_declares() {
    let ctx = Ctx::new().await;
    let mut tokens = Vec::new();
    for &scope in TokenScope::ALL {
        tokens.push((scope, ctx.token(scope).await));
    }
    let table = routes();
    let guarded: Vec<&Route> = table
        .routes()
        .iter()
        .filter(|r| r.access != Access::Public)
        .collect();
    assert!(guarded.len() > 30, "{guarded:?}");
    for route in &guarded {
        let method = route.method.as_str();
        let uri = concrete(&route.path);
        let body = body_for(route);
        let r = ctx.send(method, &uri, None, body.as_ref()).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri}: {}",
            r.text
        );
        assert_eq!(r.code(), "unauthorized", "{method} {uri}");
        let r = ctx
            .send(method, &uri, Some("slp_wrong"), body.as_ref())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
        let needed = route.access.scope().unwrap();
        for (scope, token) in &tokens {
            if *scope == needed || *scope == TokenScope::Admin {
                continue;
            }
            let r = ctx.send(method, &uri, Some(token), body.as_ref()).await;
            if route.access == Access::Signed {
                // "Who am I" answers every valid token.
                assert_eq!(r.status, StatusCode::OK, "{method} {uri}: {}", r.text);
                continue;
            }
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{method} {uri} with a {scope} token: {}",
                r.text
            );
            assert_eq!(r.code(), "forbidden");
        }
    }
    // Nothing was created by the refused requests.
    assert!(ctx.state.store.list_repos().await.unwrap().is_empty());
    assert_eq!(
        ctx.state.store.list_tokens().await.unwrap().len(),
        TokenScope::ALL.len()
    );
    // And the token a route declares gets past its check (no body: nothing is done), so
    // the declaration is not stricter than the handler either.
    for route in &guarded {
        let method = route.method.as_str();
        // A hook token only passes for its own repository.
        let uri = concrete_with(&route.path, &[("repo", HOOK_REPO)]);
        let needed = route.access.scope().unwrap();
        let token = &tokens.iter().find(|(s, _)| *s == needed).unwrap().1;
        let r = ctx.send(method, &uri, Some(token), None).await;
        assert!(
            ![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&r.status),
            "{method} {uri} with a {needed} token: {} {}",
            r.status,
            r.text
        );
    }
}

/// Public routes are few and each is public on purpose: adding one means adding it here.
#[test]
fn the_public_routes_are_the_known_ones() {
    let public: BTreeSet<String> = routes()
        .routes()
        .iter()
        .filter(|r| r.access == Access::Public)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let known: BTreeSet<String> = [
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
        "GET /api/openapi.json",
        "POST /hooks/{forge}/{*repo}",
    ]
    .map(String::from)
    .into();
    assert_eq!(public, known);
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routes() {
    let ctx = Ctx::new().await;
    let r = ctx.send("GET", "/api/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc: Value = serde_json::from_str(&r.text).unwrap();
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                documented.insert((
                    method.to_uppercase(),
                    path.clone(),
                    op["security"].to_string(),
                ));
            }
        }
    }
    let table = routes();
    let served: BTreeSet<_> = table
        .routes()
        .iter()
        .map(|r| {
            let security = match r.access {
                Access::Public => Value::Null,
                _ => json!([{"bearer": []}]),
            }
            .to_string();
            (r.method.to_string(), r.openapi_path(), security)
        })
        .collect();
    assert_eq!(
        served.len(),
        table.routes().len(),
        "a route is registered twice"
    );
    assert_eq!(documented, served);
}
