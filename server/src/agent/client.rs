//! The agent's HTTP client for the runner protocol ([`crate::protocol`]): JSON calls
//! carrying the runner token, error answers sorted into lease lost / refused /
//! transient / the server's disk is full, and retries with exponential backoff so a
//! dead server is never hammered.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

/// Time limit for one ordinary protocol request.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A source download may be slow, but not silent for longer than this.
pub(super) const DOWNLOAD_IDLE: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Once shutting down, how long to keep retrying a report before leaving the stage to
/// lease expiry.
const SHUTDOWN_GIVE_UP: Duration = Duration::from_secs(5);

/// A runner's connection to one server.
pub(super) struct Client {
    http: reqwest::Client,
    /// Base URL, always ending in `/`.
    server: Url,
    token: String,
}

impl Client {
    pub(super) fn new(server: Url, token: String) -> Client {
        let mut server = server;
        if !server.path().ends_with('/') {
            let path = format!("{}/", server.path());
            server.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Drop pooled connections well before the server's idle timeout (60 s by
            // default) closes them, so a request rarely meets a connection closing.
            .pool_idle_timeout(Duration::from_secs(20))
            .user_agent(concat!("slipway-runner/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Client {
            http,
            server,
            token,
        }
    }

    pub(super) fn server(&self) -> &Url {
        &self.server
    }

    /// A request to `url` carrying the runner token.
    pub(super) fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    pub(super) fn url(&self, path: &str) -> Result<Url, CallError> {
        self.server
            .join(path.trim_start_matches('/'))
            .map_err(|e| CallError::Refused {
                status: StatusCode::BAD_REQUEST,
                message: format!("bad URL: {e}"),
            })
    }

    /// One JSON request; `Ok(None)` for an empty (204) answer.
    pub(super) async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<R>, CallError> {
        self.call_with(method, path, timeout, |r| r.json(body))
            .await
    }

    /// One request whose body `with` sets; a JSON answer, `Ok(None)` for an empty one.
    pub(super) async fn call_with<R: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        timeout: Duration,
        with: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Option<R>, CallError> {
        let resp = with(self.request(method, self.url(path)?).timeout(timeout))
            .send()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let resp = check(resp).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CallError::Transient(format!("unreadable answer: {e}")))
    }

    /// [`Client::call`], retrying transient failures with backoff for up to `give_up` —
    /// or for [`SHUTDOWN_GIVE_UP`] once `shutdown` is cancelled, so a runner whose
    /// server is gone does not hold up its own shutdown. A server out of disk space
    /// (507) is alive and keeps the lease for its outage (`workers::lease_expiry`):
    /// [`OnFull::Wait`] retries it past `give_up`, until it can store the request
    /// (or shutdown); [`OnFull::Fail`] returns [`CallError::Full`] at once.
    pub(super) async fn call_retrying<B: Serialize, R: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        give_up: Duration,
        on_full: OnFull,
        shutdown: &CancellationToken,
    ) -> Result<Option<R>, CallError> {
        self.retrying_with(path, give_up, on_full, shutdown, |r| r.json(body))
            .await
    }

    /// [`Client::call_retrying`] of a POST whose body `with` sets (on every try).
    pub(super) async fn retrying_with<R: DeserializeOwned>(
        &self,
        path: &str,
        give_up: Duration,
        on_full: OnFull,
        shutdown: &CancellationToken,
        with: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Option<R>, CallError> {
        let start = tokio::time::Instant::now();
        let mut deadline = start + give_up;
        let mut backoff = Backoff::new();
        let mut told = false;
        loop {
            match self
                .call_with(reqwest::Method::POST, path, REQUEST_TIMEOUT, &with)
                .await
            {
                Err(CallError::Full(e)) if on_full == OnFull::Wait => {
                    let now = tokio::time::Instant::now();
                    if shutdown.is_cancelled() {
                        deadline = deadline.min(now + SHUTDOWN_GIVE_UP);
                        if now >= deadline {
                            return Err(CallError::Full(e));
                        }
                    } else {
                        // Its outage does not count against the give-up time.
                        deadline = deadline.max(now + give_up);
                    }
                    if !told {
                        tracing::warn!(path, error = %e, "the server cannot store this now; retrying until it can");
                        told = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next()) => {}
                        _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
                    }
                }
                Err(CallError::Transient(e)) => {
                    let now = tokio::time::Instant::now();
                    if shutdown.is_cancelled() {
                        deadline = deadline.min(now + SHUTDOWN_GIVE_UP);
                    }
                    let wait = backoff.next();
                    if now + wait > deadline {
                        return Err(CallError::Transient(e));
                    }
                    tracing::debug!(path, error = %e, "request failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        // Re-evaluate the deadline at once.
                        _ = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
                    }
                }
                other => return other,
            }
        }
    }
}

/// Why a protocol request did not succeed.
#[derive(Debug)]
pub(super) enum CallError {
    /// The stage's lease is gone: stop working on it.
    LeaseLost,
    /// A permanent refusal (a 4xx other than `lease_lost`).
    Refused { status: StatusCode, message: String },
    /// Worth retrying: network trouble, 5xx, 429.
    Transient(String),
    /// 507 Insufficient Storage: the server is up but its disk is full, so it stored
    /// nothing of the request; the same request works once it has space again.
    Full(String),
}

/// What [`Client::call_retrying`] does with a server whose disk is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnFull {
    /// Keep retrying until it can store the request.
    Wait,
    /// Give up at once with [`CallError::Full`].
    Fail,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::LeaseLost => f.write_str("lease lost"),
            CallError::Refused { status, message } => write!(f, "{status}: {message}"),
            CallError::Transient(m) | CallError::Full(m) => f.write_str(m),
        }
    }
}

/// Exponential backoff between retries, so a dead server is never hammered.
pub(super) struct Backoff(Duration);

impl Backoff {
    pub(super) fn new() -> Self {
        Backoff(BACKOFF_MIN)
    }
    pub(super) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
    pub(super) fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }
}

/// Turns an error answer into a [`CallError`].
pub(super) async fn check(resp: reqwest::Response) -> Result<reqwest::Response, CallError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let message = body["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.to_string());
    if status == StatusCode::CONFLICT && code == "lease_lost" {
        return Err(CallError::LeaseLost);
    }
    if status == StatusCode::INSUFFICIENT_STORAGE {
        return Err(CallError::Full(format!("{status}: {message}")));
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return Err(CallError::Transient(format!("{status}: {message}")));
    }
    Err(CallError::Refused { status, message })
}

/// A reqwest error with its causes (reqwest's own message is often just "error sending
/// request").
pub(super) fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol;

    #[test]
    fn urls_keep_a_path_prefix() {
        let client = Client::new(
            Url::parse("https://ci.example.com/slipway").unwrap(),
            "t".into(),
        );
        assert_eq!(
            client.url(protocol::LEASE).unwrap().as_str(),
            "https://ci.example.com/slipway/api/runner/lease"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert_eq!(waits[0], BACKOFF_MIN);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
    }
}
