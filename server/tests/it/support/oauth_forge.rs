//! A stand-in OAuth2 authorization server for one forge kind, on 127.0.0.1, speaking
//! the protocol as that forge does (the paths, client authentication and user shapes of
//! `server::web::oauth::provider`): the authorize endpoint signs in whoever the test
//! says ([`OAuthForge::sign_in_as`]) and redirects back with a fresh `code` and the
//! `state` it was given; the token endpoint checks the client id and secret (form body,
//! or HTTP Basic for Bitbucket), the grant type, that the code is known and unused, the
//! `redirect_uri` and the PKCE verifier against the challenge; the user endpoint checks
//! the bearer token. Every refusal is counted, so a test can tell the server never got
//! as far as asking.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A forge account the stand-in can sign in as.
#[derive(Debug, Clone)]
pub struct Account {
    /// The stable id (a number, or Bitbucket's `{uuid}`).
    pub id: String,
    pub login: String,
}

#[derive(Debug, Clone)]
struct Grant {
    account: Account,
    redirect_uri: String,
    challenge: Option<String>,
}

#[derive(Default)]
struct Inner {
    signed_in: Option<Account>,
    /// The person at the forge says no: back with `error=access_denied`.
    deny: bool,
    codes: HashMap<String, Grant>,
    tokens: HashMap<String, Account>,
    /// Every code and token handed out (a test checks none reached a log).
    issued: Vec<String>,
    /// Query strings the authorize endpoint got.
    authorize_queries: Vec<HashMap<String, String>>,
    token_requests: usize,
    refusals: Vec<String>,
}

/// One stand-in forge.
#[derive(Clone)]
pub struct OAuthForge {
    pub kind: &'static str,
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    inner: Arc<Mutex<Inner>>,
}

impl OAuthForge {
    /// Starts one speaking as `kind` (github, gitlab, gitea, forgejo, bitbucket).
    pub async fn start(kind: &'static str) -> OAuthForge {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let forge = OAuthForge {
            kind,
            url: format!("http://{}", listener.local_addr().unwrap()),
            client_id: format!("{kind}-client-id"),
            client_secret: format!("{kind}-secret-{}", random()),
            inner: Arc::default(),
        };
        let (authorize, token, user) = paths(kind);
        let app = axum::Router::new()
            .route(authorize, get(authorize_endpoint))
            .route(token, post(token_endpoint))
            .route(user, get(user_endpoint))
            .with_state(forge.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        forge
    }

    /// Who the authorize endpoint signs in from now on.
    pub fn sign_in_as(&self, id: &str, login: &str) {
        self.inner.lock().unwrap().signed_in = Some(Account {
            id: id.into(),
            login: login.into(),
        });
    }

    /// Whether the person at the forge refuses to authorize the application.
    pub fn deny(&self, deny: bool) {
        self.inner.lock().unwrap().deny = deny;
    }

    pub fn token_requests(&self) -> usize {
        self.inner.lock().unwrap().token_requests
    }

    pub fn refusals(&self) -> Vec<String> {
        self.inner.lock().unwrap().refusals.clone()
    }

    pub fn issued(&self) -> Vec<String> {
        self.inner.lock().unwrap().issued.clone()
    }

    /// The last authorize request's query.
    pub fn last_authorize(&self) -> HashMap<String, String> {
        self.inner
            .lock()
            .unwrap()
            .authorize_queries
            .last()
            .cloned()
            .expect("an authorize request")
    }

    fn refuse(&self, why: &str) {
        self.inner.lock().unwrap().refusals.push(why.to_string());
    }
}

/// (authorize, token, user) paths of a forge kind, as each documents them.
fn paths(kind: &str) -> (&'static str, &'static str, &'static str) {
    match kind {
        "github" => (
            "/login/oauth/authorize",
            "/login/oauth/access_token",
            "/user",
        ),
        "gitlab" => ("/oauth/authorize", "/oauth/token", "/api/v4/user"),
        "gitea" | "forgejo" => (
            "/login/oauth/authorize",
            "/login/oauth/access_token",
            "/api/v1/user",
        ),
        "bitbucket" => (
            "/site/oauth2/authorize",
            "/site/oauth2/access_token",
            "/2.0/user",
        ),
        other => panic!("no forge kind {other}"),
    }
}

fn pkce(kind: &str) -> bool {
    kind != "bitbucket"
}

fn random() -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

async fn authorize_endpoint(
    State(f): State<OAuthForge>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    f.inner.lock().unwrap().authorize_queries.push(q.clone());
    let bad = |why: &str| {
        f.refuse(why);
        (StatusCode::BAD_REQUEST, why.to_string()).into_response()
    };
    if q.get("client_id") != Some(&f.client_id) {
        return bad("authorize: unknown client_id");
    }
    if q.get("response_type").map(String::as_str) != Some("code") {
        return bad("authorize: response_type is not code");
    }
    let Some(redirect_uri) = q.get("redirect_uri").cloned() else {
        return bad("authorize: no redirect_uri");
    };
    let Some(state) = q.get("state").cloned() else {
        return bad("authorize: no state");
    };
    let challenge = if pkce(f.kind) {
        if q.get("code_challenge_method").map(String::as_str) != Some("S256") {
            return bad("authorize: no S256 code_challenge_method");
        }
        match q.get("code_challenge") {
            Some(c) if c.len() == 43 => Some(c.clone()),
            _ => return bad("authorize: no code_challenge"),
        }
    } else {
        None
    };
    if f.inner.lock().unwrap().deny {
        let mut back = reqwest::Url::parse(&redirect_uri).unwrap();
        back.query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", &state);
        return Redirect::to(back.as_str()).into_response();
    }
    let Some(account) = f.inner.lock().unwrap().signed_in.clone() else {
        return bad("authorize: nobody signed in at the forge");
    };
    let code = format!("code-{}", random());
    {
        let mut inner = f.inner.lock().unwrap();
        inner.issued.push(code.clone());
        inner.codes.insert(
            code.clone(),
            Grant {
                account,
                redirect_uri: redirect_uri.clone(),
                challenge,
            },
        );
    }
    let mut back = reqwest::Url::parse(&redirect_uri).unwrap();
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &state);
    Redirect::to(back.as_str()).into_response()
}

async fn token_endpoint(
    State(f): State<OAuthForge>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    f.inner.lock().unwrap().token_requests += 1;
    // GitHub answers a bad exchange 200 with an `error` field; the others 400 (RFC 6749).
    let error = |why: &str, code: &str| {
        f.refuse(why);
        let status = if f.kind == "github" {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        (status, axum::Json(json!({ "error": code }))).into_response()
    };
    let (id, secret) = if f.kind == "bitbucket" {
        let basic = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|b| STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                s.split_once(':')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            });
        match basic {
            Some(pair) => pair,
            None => return error("token: no Basic client credentials", "invalid_client"),
        }
    } else {
        (
            form.get("client_id").cloned().unwrap_or_default(),
            form.get("client_secret").cloned().unwrap_or_default(),
        )
    };
    if id != f.client_id || secret != f.client_secret {
        return error("token: wrong client credentials", "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("authorization_code") {
        return error("token: grant_type", "unsupported_grant_type");
    }
    let code = form.get("code").cloned().unwrap_or_default();
    // A code is good once.
    let Some(grant) = f.inner.lock().unwrap().codes.remove(&code) else {
        return error("token: unknown or used code", "bad_verification_code");
    };
    if form.get("redirect_uri") != Some(&grant.redirect_uri) {
        return error("token: redirect_uri differs", "redirect_uri_mismatch");
    }
    if let Some(challenge) = &grant.challenge {
        let verifier = form.get("code_verifier").cloned().unwrap_or_default();
        let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        if &computed != challenge {
            return error("token: PKCE verifier does not match", "invalid_grant");
        }
    }
    let token = format!("tok-{}", random());
    {
        let mut inner = f.inner.lock().unwrap();
        inner.issued.push(token.clone());
        inner.tokens.insert(token.clone(), grant.account);
    }
    axum::Json(json!({ "access_token": token, "token_type": "bearer", "scope": "" }))
        .into_response()
}

async fn user_endpoint(State(f): State<OAuthForge>, headers: HeaderMap) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let Some(a) = f.inner.lock().unwrap().tokens.get(&token).cloned() else {
        f.refuse("user: unknown bearer token");
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "message": "Bad credentials" })),
        )
            .into_response();
    };
    let numeric = || Value::from(a.id.parse::<u64>().expect("a numeric id"));
    let body = match f.kind {
        "github" => json!({ "id": numeric(), "login": a.login, "type": "User" }),
        "gitlab" => json!({ "id": numeric(), "username": a.login, "state": "active" }),
        "gitea" | "forgejo" => json!({ "id": numeric(), "login": a.login, "username": a.login }),
        _ => {
            json!({ "uuid": a.id, "nickname": a.login, "account_id": "5d5355e8c6b9320d9ea5b28d", "type": "user" })
        }
    };
    axum::Json(body).into_response()
}
