//! The CLI's side of the HTTP API: the server's URL and a token from the environment,
//! JSON in and out, and the server's error message (not a stack of context) when it
//! refuses.

use anyhow::{Context, bail};
use serde_json::Value;
use zeroize::Zeroizing;

/// Where the server is and who is asking; flattened into every command that talks to
/// a running server.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The server's URL.
    #[arg(long, env = "SLIPWAY_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// Name of the environment variable holding your personal API token.
    #[arg(long, value_name = "VAR", default_value = "SLIPWAY_TOKEN")]
    pub token_env: String,
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
        let token = std::env::var(&args.token_env)
            .with_context(|| format!("environment variable {} is not set", args.token_env))?;
        if token.is_empty() {
            bail!("environment variable {} is empty", args.token_env);
        }
        reqwest::Url::parse(&args.server)
            .with_context(|| format!("--server `{}` is not a URL", args.server))?;
        Ok(Api {
            base: args.server.trim_end_matches('/').to_string(),
            token: Zeroizing::new(token),
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

/// `owner/name` as two path segments.
pub fn repo_path(repo: &str) -> anyhow::Result<String> {
    crate::admin::repos::validate_name(repo)?;
    let (owner, name) = repo.split_once('/').unwrap_or((repo, ""));
    Ok(format!("/api/repos/{}/{}", segment(owner), segment(name)))
}
