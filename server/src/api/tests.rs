//! The route table against the real application: every route that is not public
//! answers only to the token it declares, and the served OpenAPI document lists
//! exactly the table's routes.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::route_table::{Access, Route};
use super::{app, routes};
use crate::daemon::config::{Config, Settings};
use crate::daemon::state::AppState;
use crate::store::TokenScope;

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

    async fn token(&self, scope: TokenScope) -> String {
        let (_, t) = super::tokens::create_token(&self.state.store, scope.as_str(), scope)
            .await
            .unwrap();
        t.to_string()
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
fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let close = open + rest[open..].find('}').unwrap();
        out.push_str(&rest[..open]);
        out.push_str("9999");
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
        ("PUT", "/api/repos/{owner}/{name}/secrets/{secret}") => Some(json!({"value": "v"})),
        ("POST", "/api/tokens") => Some(json!({"name": "t", "scope": "admin"})),
        ("POST", p) if p.ends_with("/rerun") || p.ends_with("/trigger") => Some(json!({})),
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
        let uri = concrete(&route.path);
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
