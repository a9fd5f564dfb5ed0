//! Shared by the webhook, planner and cron tests: a server state on a temp data dir, a
//! real bare "forge" repository built with git2, registered repositories, and signed
//! deliveries made from the forge fixtures (re-pointed at real commits).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode, Uri};
use git2::{Oid, Repository, Signature, Time};
use hmac::{Hmac, Mac};
use serde_json::Value;
use server::config::{Config, Settings};
use server::forge::{self, ForgeEvent, ForgeKind, Parsed};
use server::state::{self, AppState};
use server::store::{self, NewRepo, Repo, Run};
use sha2::Sha256;
use tower::ServiceExt;

pub const SECRET: &str = "It's a Secret to Everybody";

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub state: AppState,
}

pub async fn env() -> Env {
    env_with(Settings::default()).await
}

pub async fn env_with(mut settings: Settings) -> Env {
    let tmp = tempfile::tempdir().unwrap();
    settings.data_dir = Some(tmp.path().join("data"));
    let config = Config::resolve(settings, None).unwrap();
    let state = server::serve::build_state(config).await.unwrap();
    Env { tmp, state }
}

/// A throw-away PostgreSQL database (on `SLIPWAY_TEST_POSTGRES_URL`, default the local
/// `slipway` role, see `.ci/postgres.sh`); drop it with [`drop_pg`].
pub struct PgDb {
    pub server: String,
    pub name: String,
    pub url: String,
}

pub async fn pg_database() -> PgDb {
    use sqlx::{Connection, Executor};
    let server = std::env::var("SLIPWAY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://slipway:slipway@127.0.0.1:5432/postgres".into());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {server} ({e}); start it with `bash .ci/postgres.sh`"
            )
        });
    let name = format!("slipway_test_{:016x}", rand::random::<u64>());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    let url = format!("{base}/{name}");
    PgDb { server, name, url }
}

pub async fn drop_pg(db: PgDb) {
    use sqlx::{Connection, Executor};
    let mut admin = sqlx::PgConnection::connect(&db.server).await.unwrap();
    admin
        .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name).as_str())
        .await
        .unwrap();
}

/// A bare repository standing in for the forge's copy.
pub struct GitForge {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub repo: Repository,
    clock: i64,
}

impl Default for GitForge {
    fn default() -> Self {
        Self::new()
    }
}

impl GitForge {
    pub fn new() -> GitForge {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("forge.git");
        let repo = Repository::init_bare(&path).unwrap();
        GitForge {
            _dir: dir,
            path,
            repo,
            clock: 1_700_000_000,
        }
    }

    pub fn url(&self) -> String {
        self.path.to_str().unwrap().to_owned()
    }

    /// Commits exactly `files` (path → text) with `parents` and points `refname` at it.
    pub fn commit(
        &mut self,
        refname: &str,
        parents: &[Oid],
        files: &[(&str, &str)],
        message: &str,
    ) -> Oid {
        let map: BTreeMap<String, String> = files
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect();
        let tree = self.tree(&map, "");
        let tree = self.repo.find_tree(tree).unwrap();
        self.clock += 60;
        let sig = Signature::new("Dev", "dev@example.com", &Time::new(self.clock, 0)).unwrap();
        let parents: Vec<_> = parents
            .iter()
            .map(|p| self.repo.find_commit(*p).unwrap())
            .collect();
        let parents: Vec<_> = parents.iter().collect();
        let oid = self
            .repo
            .commit(None, &sig, &sig, message, &tree, &parents)
            .unwrap();
        self.repo.reference(refname, oid, true, message).unwrap();
        oid
    }

    fn tree(&self, files: &BTreeMap<String, String>, prefix: &str) -> Oid {
        let mut builder = self.repo.treebuilder(None).unwrap();
        let mut subdirs = std::collections::BTreeSet::new();
        for (path, contents) in files {
            let Some(rest) = path.strip_prefix(prefix) else {
                continue;
            };
            match rest.split_once('/') {
                None => {
                    let blob = self.repo.blob(contents.as_bytes()).unwrap();
                    builder.insert(rest, blob, 0o100644).unwrap();
                }
                Some((dir, _)) => {
                    subdirs.insert(dir.to_string());
                }
            }
        }
        for dir in subdirs {
            let sub = self.tree(files, &format!("{prefix}{dir}/"));
            builder.insert(&dir, sub, 0o040000).unwrap();
        }
        builder.write().unwrap()
    }
}

pub async fn register(
    state: &AppState,
    name: &str,
    forge: store::Forge,
    clone_url: &str,
    default_branch: &str,
    trusted: bool,
) -> Repo {
    state
        .store
        .create_repo(NewRepo {
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

pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/forge/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("reading {full}: {e}"))
}

pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

pub fn store_forge(kind: ForgeKind) -> store::Forge {
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
        ForgeKind::Git => {}
    }
    h
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

/// Sends a request through the app (no socket) and returns the status and JSON body.
pub async fn send(state: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = server::api::app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
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

pub async fn runs(state: &AppState, repo: &Repo) -> Vec<Run> {
    state.store.list_runs(repo.id, 10_000, None).await.unwrap()
}

pub fn parse_event(kind: ForgeKind, event: &str, body: &[u8]) -> ForgeEvent {
    match forge::parse(kind, event, body) {
        Ok(Parsed::Event(e)) => e,
        other => panic!("{kind} {event}: expected an event, got {other:?}"),
    }
}

/// A fixture re-pointed at real commits of `git`: the commits the payload names are
/// created (with `files` at the new tip, `base_files` at the old one/the PR base) and
/// every full commit id of the original payload is replaced by the real one.
pub struct Delivery {
    pub body: Vec<u8>,
    pub event: ForgeEvent,
    pub head: Oid,
    pub base: Oid,
}

pub fn adapt_fixture(
    git: &mut GitForge,
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
    let body = text.into_bytes();
    let event = parse_event(kind, event_name, &body);
    assert_eq!(event.after, head.to_string(), "{fixture_path} re-pointed");
    Delivery {
        body,
        event,
        head,
        base,
    }
}

/// Waits (bounded) until `f` holds, polling.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Serves the app (no background workers) on 127.0.0.1:0; returns the address.
pub async fn serve_app(state: &AppState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server::api::app(state.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

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

/// One request a stand-in forge received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: serde_json::Value,
}

/// A stand-in forge API on 127.0.0.1 that records status requests and answers 201.
pub async fn fake_forge() -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(Seen {
                    method,
                    path: uri.path().to_string(),
                    headers,
                    body: serde_json::from_slice(&body).unwrap_or_default(),
                });
                (StatusCode::CREATED, "{}")
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}
