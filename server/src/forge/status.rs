//! Commit-status reporting through each forge's documented status API.
//!
//! * GitHub: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, JSON
//!   `{state, target_url, description, context}`, `Authorization: Bearer`.
//! * GitLab: `POST {api}/projects/{url-encoded path}/statuses/{sha}`, JSON
//!   `{state, name, target_url, description, ref}`, `PRIVATE-TOKEN`.
//! * Gitea/Forgejo: `POST {api}/repos/{owner}/{repo}/statuses/{sha}`, JSON
//!   `{state, target_url, description, context}`, `Authorization: token`.
//! * Bitbucket Cloud and Data Center: see [`super::status_bitbucket`] and
//!   [`super::status_bitbucket_dc`].
//! * Gitee: its API v5 has no commit-status endpoint; [`StatusError::Unsupported`].

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ForgeKind, status_bitbucket, status_bitbucket_dc};

/// Slipway's view of a run's state, mapped per forge by [`StatusReporter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Success,
    Failure,
    /// The run could not complete for infrastructure or configuration reasons.
    Error,
    Cancelled,
}

impl State {
    /// Whether the state is one a run ends in.
    pub fn is_final(self) -> bool {
        !matches!(self, State::Pending | State::Running)
    }
}

/// Where to report: the repository on its forge, and the credentials to do it with.
#[derive(Clone)]
pub struct StatusTarget {
    pub kind: ForgeKind,
    /// API root, e.g. `https://api.github.com`, `https://gitlab.example.com/api/v4`
    /// (see [`api_base_for`]).
    pub api_base: String,
    /// `owner/name` (GitHub, Gitea, Forgejo) or the GitLab project path with its groups
    /// (`group/subgroup/project`) or numeric project id.
    pub repo_path: String,
    pub token: String,
}

// Hand-written so the token can never reach a log line through `{:?}`.
impl std::fmt::Debug for StatusTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusTarget")
            .field("kind", &self.kind)
            .field("api_base", &self.api_base)
            .field("repo_path", &self.repo_path)
            .field("token", &"[redacted]")
            .finish()
    }
}

/// One status to set on one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStatus {
    pub sha: String,
    pub state: State,
    /// Distinguishes Slipway's statuses from other systems', e.g. `slipway/ci` or
    /// `slipway/ci/test`. Sent as GitHub/Gitea `context`, GitLab `name`.
    pub context: String,
    /// Truncated to [`description_limit`] before sending.
    pub description: String,
    pub target_url: Option<String>,
    /// Branch or tag name the run was for. GitLab only: without `ref` GitLab attaches
    /// the status to the first branch containing the commit, which may be the wrong
    /// pipeline. Ignored by the other forges.
    #[serde(default)]
    pub git_ref: Option<String>,
}

/// Why a status could not be reported. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusError {
    /// The forge answered with a non-2xx status.
    #[error("{forge} status API answered {status}: {body}")]
    Http {
        forge: ForgeKind,
        status: u16,
        /// Truncated and with the token removed.
        body: String,
    },
    /// Connection, TLS, timeout or other transport failure.
    #[error("{forge} status API unreachable: {message}")]
    Network { forge: ForgeKind, message: String },
    /// The target or status cannot be turned into a request (bad repo path, bad sha,
    /// unparseable API base).
    #[error("invalid status request for {forge}: {reason}")]
    Invalid { forge: ForgeKind, reason: String },
    /// Plain git servers and Gitee have no status API.
    #[error("`{0}` has no commit status API")]
    Unsupported(ForgeKind),
}

impl StatusError {
    /// Worth retrying later: server errors, rate limiting and transport failures.
    /// Client errors (bad token, unknown repo, validation) will fail the same way again.
    pub fn is_retryable(&self) -> bool {
        match self {
            StatusError::Http { status, .. } => *status >= 500 || *status == 429,
            StatusError::Network { .. } => true,
            StatusError::Invalid { .. } | StatusError::Unsupported(_) => false,
        }
    }
}

/// Longest description each forge accepts, in characters. GitHub rejects longer ones
/// with 422 ("description is too long (maximum is 140 characters)"); GitLab and Gitea
/// do not document a limit, 255 keeps us inside their database columns.
pub fn description_limit(kind: ForgeKind) -> usize {
    match kind {
        ForgeKind::Github => 140,
        ForgeKind::Gitlab | ForgeKind::Gitea | ForgeKind::Forgejo | ForgeKind::Git => 255,
        ForgeKind::Bitbucket | ForgeKind::BitbucketDc | ForgeKind::Gitee => 255,
    }
}

/// Error bodies are kept for diagnosis but bounded: a forge's HTML error page must not
/// end up whole in a log line or database row.
const MAX_ERROR_BODY: usize = 512;

/// Reports commit statuses. Cheap to clone (the reqwest client is reference-counted);
/// create one per server and share it.
#[derive(Clone)]
pub struct StatusReporter {
    client: reqwest::Client,
}

impl Default for StatusReporter {
    fn default() -> Self {
        Self::new()
    }
}

impl StatusReporter {
    /// A reporter with bounded timeouts: a slow forge must delay its own status
    /// updates, not pile up tasks forever.
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            // Statuses are POSTs with credentials; a redirect elsewhere is a
            // misconfiguration, not something to follow with the token attached.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self { client }
    }

    /// Use a caller-built client (proxy, custom CA, tests). It should set a
    /// `User-Agent`: GitHub rejects requests without one.
    pub fn with_client(client: reqwest::Client) -> Self {
        Self { client }
    }

    pub async fn report(
        &self,
        target: &StatusTarget,
        status: &CommitStatus,
    ) -> Result<(), StatusError> {
        let forge = target.kind;
        let request = build_request(target, status)?;
        let mut builder = self.client.post(request.url).json(&request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send().await.map_err(|e| StatusError::Network {
            forge,
            // `without_url`: an API base configured with userinfo would put a credential
            // in the message.
            message: e.without_url().to_string(),
        })?;
        let code = response.status();
        if code.is_success() {
            tracing::debug!(forge = %forge, repo = %target.repo_path, sha = %status.sha, state = ?status.state, "commit status reported");
            return Ok(());
        }
        let body = response.text().await.unwrap_or_default();
        Err(StatusError::Http {
            forge,
            status: code.as_u16(),
            body: sanitize_body(&body, &target.token),
        })
    }
}

struct Request {
    url: Url,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Value,
}

fn build_request(target: &StatusTarget, status: &CommitStatus) -> Result<Request, StatusError> {
    let forge = target.kind;
    let invalid = |reason: String| StatusError::Invalid { forge, reason };
    if !forge.has_status_api() {
        return Err(StatusError::Unsupported(forge));
    }
    // The sha goes into the URL path: accept only a full hex commit id.
    let sha = &status.sha;
    if !(matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())) {
        return Err(invalid("sha is not a 40 or 64 digit hex commit id".into()));
    }
    let base = target.api_base.trim_end_matches('/');
    let path = match forge {
        ForgeKind::Gitlab => {
            if target.repo_path.trim_matches('/').is_empty() {
                return Err(invalid("empty GitLab project path".into()));
            }
            // The whole `group/sub/project` path is one URL segment, `/` as `%2F`.
            format!(
                "/projects/{}/statuses/{sha}",
                encode_segment(target.repo_path.trim_matches('/'))
            )
        }
        ForgeKind::Bitbucket => {
            let (workspace, slug) = owner_and_name(&target.repo_path)
                .ok_or_else(|| invalid("repo_path must be `workspace/repo_slug`".into()))?;
            status_bitbucket::path(&encode_segment(workspace), &encode_segment(slug), sha)
        }
        ForgeKind::BitbucketDc => {
            let (project, slug) = owner_and_name(&target.repo_path)
                .ok_or_else(|| invalid("repo_path must be `PROJECT/repo_slug`".into()))?;
            status_bitbucket_dc::path(&encode_segment(project), &encode_segment(slug), sha)
        }
        _ => {
            let (owner, name) = owner_and_name(&target.repo_path)
                .ok_or_else(|| invalid("repo_path must be `owner/name`".into()))?;
            format!(
                "/repos/{}/{}/statuses/{sha}",
                encode_segment(owner),
                encode_segment(name)
            )
        }
    };
    let url = Url::parse(&format!("{base}{path}"))
        .map_err(|e| invalid(format!("API base `{}`: {e}", strip_userinfo(base))))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("API base must be http or https".into()));
    }

    let description = truncate(&status.description, description_limit(forge));
    let mut body = Map::new();
    let state = state_for(forge, status.state);
    body.insert("state".into(), state.into());
    body.insert("description".into(), description.into());
    if let Some(url) = &status.target_url {
        body.insert("target_url".into(), url.clone().into());
    }
    let mut headers = Vec::new();
    let secret_header = |value: String| {
        HeaderValue::from_str(&value)
            .map(|mut v| {
                // Marks the value sensitive so http/reqwest never print it.
                v.set_sensitive(true);
                v
            })
            .map_err(|_| invalid("token contains characters not allowed in a header".into()))
    };
    match forge {
        ForgeKind::Github => {
            body.insert("context".into(), status.context.clone().into());
            headers.push((
                HeaderName::from_static("authorization"),
                secret_header(format!("Bearer {}", target.token))?,
            ));
            headers.push((
                HeaderName::from_static("accept"),
                HeaderValue::from_static("application/vnd.github+json"),
            ));
            headers.push((
                HeaderName::from_static("x-github-api-version"),
                HeaderValue::from_static("2022-11-28"),
            ));
        }
        ForgeKind::Gitlab => {
            body.insert("name".into(), status.context.clone().into());
            if let Some(r) = status.git_ref.as_deref().filter(|r| !r.is_empty()) {
                body.insert("ref".into(), r.into());
            }
            headers.push((
                HeaderName::from_static("private-token"),
                secret_header(target.token.clone())?,
            ));
        }
        ForgeKind::Gitea | ForgeKind::Forgejo => {
            body.insert("context".into(), status.context.clone().into());
            headers.push((
                HeaderName::from_static("authorization"),
                secret_header(format!("token {}", target.token))?,
            ));
        }
        ForgeKind::Bitbucket => {
            status_bitbucket::body(&mut body, &status.context);
            headers.extend(status_bitbucket::headers(secret_header(format!(
                "Bearer {}",
                target.token
            ))?));
        }
        ForgeKind::BitbucketDc => {
            status_bitbucket_dc::body(&mut body, &status.context, status.git_ref.as_deref());
            headers.extend(status_bitbucket_dc::headers(secret_header(format!(
                "Bearer {}",
                target.token
            ))?));
        }
        ForgeKind::Gitee | ForgeKind::Git => return Err(StatusError::Unsupported(forge)),
    }
    Ok(Request {
        url,
        headers,
        body: Value::Object(body),
    })
}

/// Per-forge state names.
///
/// * GitHub has `pending|success|failure|error`: running is still pending, and a
///   cancelled run is `error` (it neither passed nor failed on its merits).
/// * GitLab has all of them natively (`failed`, `canceled`); an infrastructure error
///   is `failed`, its only non-success terminal state besides `canceled`.
/// * Gitea/Forgejo have `pending|success|error|failure|warning`, mapped as GitHub.
fn state_for(forge: ForgeKind, state: State) -> &'static str {
    match forge {
        ForgeKind::Gitlab => match state {
            State::Pending => "pending",
            State::Running => "running",
            State::Success => "success",
            State::Failure | State::Error => "failed",
            State::Cancelled => "canceled",
        },
        // Bitbucket: `INPROGRESS|SUCCESSFUL|FAILED`, and for a cancelled run Cloud's
        // `STOPPED` or Data Center's `CANCELLED`; an infrastructure error is `FAILED`.
        ForgeKind::Bitbucket | ForgeKind::BitbucketDc => match state {
            State::Pending | State::Running => "INPROGRESS",
            State::Success => "SUCCESSFUL",
            State::Failure | State::Error => "FAILED",
            State::Cancelled if forge == ForgeKind::Bitbucket => "STOPPED",
            State::Cancelled => "CANCELLED",
        },
        _ => match state {
            State::Pending | State::Running => "pending",
            State::Success => "success",
            State::Failure => "failure",
            State::Error | State::Cancelled => "error",
        },
    }
}

fn owner_and_name(path: &str) -> Option<(&str, &str)> {
    let (owner, name) = path.trim_matches('/').split_once('/')?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    let ok = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    (ok(owner) && ok(name)).then_some((owner, name))
}

/// Percent-encode everything but RFC 3986 unreserved characters, so a path segment
/// (including GitLab's `group/project`) can never change the URL's structure.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Truncate to `max` characters (not bytes: the forges count characters, and slicing
/// bytes could split a UTF-8 sequence), marking the cut with an ellipsis.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn sanitize_body(body: &str, token: &str) -> String {
    // A forge has no reason to echo the token, but a proxy's error page might; the
    // error ends up in logs and the database, so remove it defensively.
    let cleaned = if token.is_empty() {
        body.to_owned()
    } else {
        body.replace(token, "[redacted]")
    };
    let cleaned: String = cleaned
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(cleaned.trim(), MAX_ERROR_BODY)
}

fn strip_userinfo(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "<unparseable>".into(),
    }
}

/// The API base URL for a repository, derived from its clone URL and its path on the
/// forge (`repo_path`, e.g. `owner/name` or GitLab's `group/subgroup/project`).
///
/// * `github.com` → `https://api.github.com`; any other GitHub host (Enterprise
///   Server) → `https://host/api/v3`. GitHub Enterprise Cloud with data residency
///   (`api.<sub>.ghe.com`) needs the repository's `api_url` or the server's
///   `forge_api_urls`.
/// * GitLab → `https://host[/prefix]/api/v4`, Gitea/Forgejo →
///   `https://host[/prefix]/api/v1`: whatever precedes the repository's path in the
///   clone URL is the instance's sub-path (GitLab's relative URL root).
///
/// * Bitbucket Cloud: `bitbucket.org` → `https://api.bitbucket.org`; any other host
///   (a proxy or stand-in serving the same API) → its origin.
/// * Bitbucket Data Center → the instance's base URL, `https://host[/context]`: HTTP
///   clone URLs are `…/context/scm/PROJECT/slug.git`, so everything before `scm`.
/// * Gitee → `https://host/api/v5` (used for nothing yet: it has no status API).
///
/// HTTP(S) clone URLs keep their scheme and port. SSH clone URLs
/// (`git@host:owner/repo.git`, `ssh://git@host:2222/owner/repo.git`) map to
/// `https://host` — the SSH port says nothing about the web port, and where the web
/// host differs, configuration says so. Credentials in the clone URL are never carried
/// over. `None` for `Git` or an unparseable URL.
pub fn api_base_for(kind: ForgeKind, clone_url: &str, repo_path: &str) -> Option<String> {
    if kind == ForgeKind::Git {
        return None;
    }
    let (origin, host, path) = split_clone_url(clone_url)?;
    if kind == ForgeKind::Github && host.eq_ignore_ascii_case("github.com") {
        return Some("https://api.github.com".into());
    }
    if kind == ForgeKind::Bitbucket && host.eq_ignore_ascii_case("bitbucket.org") {
        return Some("https://api.bitbucket.org".into());
    }
    let segments: Vec<&str> = {
        let path = path.trim_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        path.split('/').filter(|s| !s.is_empty()).collect()
    };
    // Whatever precedes the repository's path in the clone URL is the instance's
    // sub-path (GitLab's relative URL root, a Gitea served under a prefix).
    let prefix = {
        let depth = repo_path
            .split('/')
            .filter(|s| !s.is_empty())
            .count()
            .max(2);
        segments
            .len()
            .checked_sub(depth)
            .map(|n| segments[..n].join("/"))
            .unwrap_or_default()
    };
    let root = if prefix.is_empty() {
        origin.clone()
    } else {
        format!("{origin}/{prefix}")
    };
    Some(match kind {
        ForgeKind::Github => format!("{root}/api/v3"),
        ForgeKind::Gitlab => format!("{root}/api/v4"),
        ForgeKind::Gitee => format!("{root}/api/v5"),
        ForgeKind::Bitbucket => origin,
        ForgeKind::BitbucketDc => {
            // HTTP clone URLs are `…/context/scm/PROJECT/slug.git`.
            let context = match segments.iter().rposition(|s| *s == "scm") {
                Some(i) => segments[..i].join("/"),
                None => segments[..segments.len().saturating_sub(2)].join("/"),
            };
            if context.is_empty() {
                origin
            } else {
                format!("{origin}/{context}")
            }
        }
        _ => format!("{root}/api/v1"),
    })
}

/// An absolute `http(s)` URL without credentials, query or fragment: a forge API root
/// that status paths are appended to (the token travels in a header, never in the URL,
/// and the URL is shown by `repo show`). The error names the URL with any credentials
/// removed.
pub fn check_api_base(url: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "api_url `{}` {why}; expected e.g. `https://gitlab.example.com/gitlab/api/v4`",
            strip_userinfo(url)
        ))
    };
    if url.len() > 2048 {
        return bad("is too long");
    }
    let Ok(parsed) = Url::parse(url) else {
        return bad("is not an absolute URL");
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return bad("is not http or https");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad("holds credentials (the forge token is set apart, as forge_token)");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return bad("has a query or fragment");
    }
    Ok(())
}

/// The host (with its port, for HTTP(S) URLs that name one) of a clone URL: the key of
/// the server's `forge_api_urls`.
pub fn clone_host(clone_url: &str) -> Option<String> {
    let (origin, host, _) = split_clone_url(clone_url)?;
    Some(
        origin
            .split_once("://")
            .map_or(host, |(_, authority)| authority.to_owned()),
    )
}

/// `(origin, host, path)` of a clone URL; origin is `scheme://host[:port]` for HTTP(S)
/// URLs and `https://host` for SSH ones.
fn split_clone_url(clone_url: &str) -> Option<(String, String, String)> {
    let clone_url = clone_url.trim();
    if let Ok(url) = Url::parse(clone_url) {
        let host = url.host_str()?.to_owned();
        return match url.scheme() {
            "http" | "https" => {
                let origin = match url.port() {
                    Some(p) => format!("{}://{host}:{p}", url.scheme()),
                    None => format!("{}://{host}", url.scheme()),
                };
                Some((origin, host, url.path().to_owned()))
            }
            "ssh" | "git" | "git+ssh" | "ssh+git" => {
                Some((format!("https://{host}"), host, url.path().to_owned()))
            }
            _ => None,
        };
    }
    // scp-like syntax: `[user@]host:path`.
    let (userhost, path) = clone_url.split_once(':')?;
    let host = userhost.rsplit_once('@').map_or(userhost, |(_, h)| h);
    if host.is_empty() || host.contains('/') || path.starts_with("//") {
        return None;
    }
    Some((
        format!("https://{host}"),
        host.to_owned(),
        format!("/{path}"),
    ))
}
