//! The CLI's side of the HTTP API: the server's URL and a token (from `--server`,
//! `SLIPWAY_SERVER` and `SLIPWAY_TOKEN`, else from what `slipway login` stored), JSON in
//! and out, and the server's error message (not a stack of context) when it refuses.

use anyhow::{Context, bail};
use serde_json::Value;
use zeroize::Zeroizing;

/// Where the server is and who is asking; flattened into every command that talks to
/// a running server.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The server's URL (default: the one `slipway login` stored).
    #[arg(long, env = "SLIPWAY_SERVER")]
    pub server: Option<String>,
    /// Name of the environment variable holding your API token (default: the token
    /// `slipway login` stored, when it is for this server).
    #[arg(long, value_name = "VAR", default_value = "SLIPWAY_TOKEN")]
    pub token_env: String,
}

impl ApiArgs {
    /// Whether a server was named here (flag or `SLIPWAY_SERVER`), not only stored.
    pub fn named(&self) -> bool {
        self.server.is_some()
    }
}

/// The server and token to use: the environment over the stored login. The stored
/// token goes only to the server it was stored for.
pub fn resolve(args: &ApiArgs) -> anyhow::Result<(String, Zeroizing<String>)> {
    let stored = super::credentials::load()?;
    let server = match (&args.server, &stored) {
        (Some(s), _) => s.trim_end_matches('/').to_string(),
        (None, Some(c)) => c.server.clone(),
        (None, None) => bail!(
            "not logged in: run `slipway login SERVER` first (or set SLIPWAY_SERVER and {})",
            args.token_env
        ),
    };
    reqwest::Url::parse(&server).with_context(|| format!("--server `{server}` is not a URL"))?;
    if let Ok(token) = std::env::var(&args.token_env)
        && !token.is_empty()
    {
        return Ok((server, Zeroizing::new(token)));
    }
    match stored {
        Some(c) if c.server == server => Ok((server, Zeroizing::new(c.token.clone()))),
        _ => bail!(
            "no token for {server}: run `slipway login {server}` (or set {})",
            args.token_env
        ),
    }
}

/// A client of one server, with one token.
pub struct Api {
    base: String,
    token: Zeroizing<String>,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Api {
    pub fn new(args: &ApiArgs) -> anyhow::Result<Api> {
        let (server, token) = resolve(args)?;
        Api::with(server, token)
    }

    /// A client of `server` with `token`.
    pub fn with(server: String, token: Zeroizing<String>) -> anyhow::Result<Api> {
        Ok(Api {
            base: server,
            token,
            http: reqwest::Client::builder().tcp_nodelay(true).build()?,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
        })
    }

    pub fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, Some(body))
    }

    pub fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PUT, path, Some(body))
    }

    pub fn patch(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::PATCH, path, Some(body))
    }

    /// The server's URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Runs `f` on this client's runtime with its HTTP client, the base URL and the
    /// token: for streams (server-sent events) that [`Api::get`] cannot read.
    pub fn block_on<T>(
        &self,
        f: impl AsyncFnOnce(&reqwest::Client, &str, &str) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.rt
            .block_on(f(&self.http, &self.base, self.token.as_str()))
    }

    pub fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::DELETE, path, None)
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.rt.block_on(async {
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.token.as_str());
            if let Some(b) = body {
                req = req.json(b);
            }
            let response = req
                .send()
                .await
                .with_context(|| format!("{method} {url}"))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            if !status.is_success() {
                let message = answer["error"]["message"].as_str().unwrap_or("no details");
                bail!("the server answered {status}: {message}");
            }
            Ok(answer)
        })
    }
}

/// A path segment, percent-encoded (an environment or repository part).
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `owner/name` as two path segments (a GitLab project in subgroups: the groups are
/// the first segment, their `/` encoded).
pub fn repo_path(repo: &str) -> anyhow::Result<String> {
    crate::admin::repos::validate_reference(repo)?;
    let (owner, name) = repo.rsplit_once('/').unwrap_or((repo, ""));
    Ok(format!("/api/repos/{}/{}", segment(owner), segment(name)))
}
