//! Forges from the outside: registered repositories, signed webhook deliveries made from
//! the fixtures in `tests/fixtures/forge/` (re-pointed at real commits), and a stand-in
//! forge API that records what the server sends it.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request as AxRequest, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::IntoResponse;
use git2::Oid;
use hmac::{Hmac, Mac};
use serde_json::Value;
use server::daemon::state::{self, AppState};
use server::forge::{self, ForgeEvent, ForgeKind, Parsed};
use server::store::{self, NewRepo, Repo, Run};
use sha2::Sha256;

use super::git::GitRepo;
use super::http;

/// The webhook secret of repositories made with [`register`].
pub const SECRET: &str = "It's a Secret to Everybody";

pub const PIPELINE: &str = "stages:
  build:
    steps:
      - name: compile
        run: echo build
  test:
    needs: [build]
    steps:
      - name: unit
        run: echo test
";

pub async fn register(
    state: &AppState,
    name: &str,
    forge: store::ForgeKind,
    clone_url: &str,
    default_branch: &str,
    trusted: bool,
) -> Repo {
    state
        .store
        .create_repo(NewRepo {
            api_url: None,
            name: name.to_string(),
            forge,
            clone_url: clone_url.to_string(),
            default_branch: default_branch.to_string(),
            webhook_secret_enc: state
                .secret_box
                .seal(SECRET.as_bytes(), &state::webhook_secret_aad(name)),
            forge_token_enc: None,
            trusted,
        })
        .await
        .unwrap()
}

pub async fn runs(state: &AppState, repo: &Repo) -> Vec<Run> {
    state.store.list_runs(repo.id, 10_000, None).await.unwrap()
}

pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/forge/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

pub fn store_forge(kind: ForgeKind) -> store::ForgeKind {
    kind.as_str().parse().unwrap()
}

/// The headers a forge sends with a delivery, signed with `secret` (`None`: unsigned).
pub fn forge_headers(
    kind: ForgeKind,
    event: &str,
    delivery: &str,
    body: &[u8],
    secret: Option<&str>,
) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| h.push((k.to_string(), v));
    add("content-type", "application/json".into());
    match kind {
        ForgeKind::Github => {
            add("x-github-event", event.into());
            add("x-github-delivery", delivery.into());
            if let Some(s) = secret {
                add(
                    "x-hub-signature-256",
                    format!("sha256={}", hmac_hex(s.as_bytes(), body)),
                );
            }
        }
        ForgeKind::Gitlab => {
            add("x-gitlab-event", event.into());
            add("x-gitlab-event-uuid", delivery.into());
            if let Some(s) = secret {
                add("x-gitlab-token", s.into());
            }
        }
        ForgeKind::Gitea => {
            add("x-gitea-event", event.into());
            add("x-gitea-delivery", delivery.into());
            if let Some(s) = secret {
                add("x-gitea-signature", hmac_hex(s.as_bytes(), body));
            }
        }
        ForgeKind::Forgejo => {
            add("x-forgejo-event", event.into());
            add("x-forgejo-delivery", delivery.into());
            if let Some(s) = secret {
                add("x-forgejo-signature", hmac_hex(s.as_bytes(), body));
            }
        }
        ForgeKind::Bitbucket | ForgeKind::BitbucketDc => {
            add("x-event-key", event.into());
            let id_header = if kind == ForgeKind::Bitbucket {
                "x-request-uuid"
            } else {
                "x-request-id"
            };
            add(id_header, delivery.into());
            if let Some(s) = secret {
                add(
                    "x-hub-signature",
                    format!("sha256={}", hmac_hex(s.as_bytes(), body)),
                );
            }
        }
        ForgeKind::Gitee => {
            // Gitee sends no delivery id; the server derives one from the timestamp and
            // the body, so `delivery` goes nowhere.
            let _ = delivery;
            add("x-gitee-event", event.into());
            if let Some(s) = secret {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis();
                add("x-gitee-timestamp", now_ms.to_string());
                add(
                    "x-gitee-token",
                    gitee_sign(s.as_bytes(), &now_ms.to_string()),
                );
            }
        }
        ForgeKind::Git => {}
    }
    h
}

/// A form-encoded delivery of the JSON `payload`, as a forge in form mode sends it: the
/// body `payload=<urlencoded JSON>` (encoded like Go's `url.Values.Encode`, `+` for a
/// space), signed as each forge signs it — GitHub the form body as sent, Gitea and
/// Forgejo the JSON before it was encoded (`services/webhook/deliver.go`).
pub fn form_delivery(
    kind: ForgeKind,
    event: &str,
    delivery: &str,
    payload: &[u8],
    secret: Option<&str>,
) -> (Vec<(String, String)>, Vec<u8>) {
    let body = form_body(payload);
    let signed: &[u8] = match kind {
        ForgeKind::Github => &body,
        _ => payload,
    };
    let headers = forge_headers(kind, event, delivery, signed, secret)
        .into_iter()
        .map(|(k, v)| {
            if k == "content-type" {
                (k, "application/x-www-form-urlencoded".to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    (headers, body)
}

/// `payload=<urlencoded payload>`.
pub fn form_body(payload: &[u8]) -> Vec<u8> {
    let encoded: String = form_urlencoded::byte_serialize(payload).collect();
    format!("payload={encoded}").into_bytes()
}

/// Gitee's signature (help "WebHook 密钥验证和验证算法"): base64 of HMAC-SHA256 keyed
/// with the secret over `timestamp + "\n" + secret`.
pub fn gitee_sign(secret: &[u8], timestamp: &str) -> String {
    use base64::Engine as _;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(secret);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub fn hook_request(
    kind: ForgeKind,
    repo: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Request<Body> {
    let mut b = Request::post(format!("/hooks/{kind}/{repo}"));
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b.body(Body::from(body)).unwrap()
}

/// Sends a request through the routes (no socket): the status and the JSON body (or null).
pub async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let r = http::send(state, req).await;
    (r.status, r.json_or_null())
}

/// A signed delivery of `body` to `repo`.
pub async fn deliver(
    state: &AppState,
    kind: ForgeKind,
    repo: &str,
    event: &str,
    delivery: &str,
    body: &[u8],
) -> (StatusCode, Value) {
    let headers = forge_headers(kind, event, delivery, body, Some(SECRET));
    send(state, hook_request(kind, repo, &headers, body.to_vec())).await
}

pub fn parse_event(kind: ForgeKind, event: &str, body: &[u8]) -> ForgeEvent {
    match forge::parse(kind, event, body) {
        Ok(Parsed::Event(e)) => e,
        other => panic!("{kind} {event}: expected an event, got {other:?}"),
    }
}

/// A fixture re-pointed at real commits of `git`: the commits the payload names are
/// created (with `files` at the new tip, `base_files` at the old one/the PR base),
/// every full commit id of the original payload is replaced by the real one, and the
/// repository's clone URL by `git`'s — the URL repositories in the tests are
/// registered with, which is how the server knows the payload is about them whatever
/// name they are registered under.
pub struct Delivery {
    pub body: Vec<u8>,
    pub event: ForgeEvent,
    pub head: Oid,
    pub base: Oid,
}

pub fn adapt_fixture(
    git: &mut GitRepo,
    kind: ForgeKind,
    event_name: &str,
    fixture_path: &str,
    base_files: &[(&str, &str)],
    files: &[(&str, &str)],
) -> Delivery {
    let original = fixture(fixture_path);
    let ev = parse_event(kind, event_name, &original);
    let mut text = String::from_utf8(original).unwrap();
    let (head, base);
    if let Some(pr) = &ev.pr {
        base = git.commit(
            &format!("refs/heads/{}", pr.target_branch),
            &[],
            base_files,
            "base",
        );
        head = git.commit(&ev.git_ref, &[base], files, &ev.message);
        text = text.replace(&pr.head_sha, &head.to_string());
        if let Some(b) = &pr.base_sha {
            text = text.replace(b, &base.to_string());
        }
    } else {
        base = git.commit("refs/heads/slipway-test-base", &[], base_files, "before");
        head = git.commit(&ev.git_ref, &[base], files, &ev.message);
        text = text.replace(&ev.after, &head.to_string());
    }
    if let Some(before) = &ev.before {
        text = text.replace(before, &base.to_string());
    }
    // Where the payload carries the clone URL as such (Bitbucket derives it from the
    // web link), it points at the test repository.
    let json_str = |s: &str| serde_json::to_string(s).unwrap();
    let literal_clone_url = text.contains(&json_str(&ev.clone_url));
    text = text.replace(&json_str(&ev.clone_url), &json_str(&git.url()));
    let body = text.into_bytes();
    let event = parse_event(kind, event_name, &body);
    assert_eq!(event.after, head.to_string(), "{fixture_path} re-pointed");
    if literal_clone_url {
        assert_eq!(event.clone_url, git.url(), "{fixture_path} re-pointed");
    }
    Delivery {
        body,
        event,
        head,
        base,
    }
}

/// One request the stand-in forge received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The raw path, percent-encoding preserved.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("missing header {name}"))
            .to_str()
            .unwrap()
    }
}

/// A stand-in forge API on 127.0.0.1 that records every request and answers with
/// [`FakeForge::reply`] (201 `{}` unless changed).
#[derive(Clone)]
pub struct FakeForge {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    reply: Arc<Mutex<(StatusCode, String)>>,
}

impl FakeForge {
    pub async fn start() -> FakeForge {
        let requests = Arc::default();
        let reply = Arc::new(Mutex::new((StatusCode::CREATED, "{}".to_string())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let forge = FakeForge {
            url: format!("http://{}", listener.local_addr().unwrap()),
            requests,
            reply,
        };
        let app = axum::Router::new()
            .fallback(record)
            .with_state(forge.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        forge
    }

    /// What the following requests are answered with.
    pub fn reply(&self, status: StatusCode, body: &str) {
        *self.reply.lock().unwrap() = (status, body.to_string());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().last().cloned().expect("a request")
    }
}

async fn record(State(forge): State<FakeForge>, req: AxRequest) -> impl IntoResponse {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    forge.requests.lock().unwrap().push(Recorded {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    });
    forge.reply.lock().unwrap().clone()
}
