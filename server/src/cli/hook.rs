//! `slipway hook`: a post-receive hook for plain git servers.
//!
//! Install it as `hooks/post-receive` of a bare repository:
//! ```sh
//! #!/bin/sh
//! SLIPWAY_TOKEN=… exec slipway hook --server https://ci.example.com --repo team/app
//! ```
//! git feeds it one `old new ref` line per updated ref; it posts them to
//! `POST /hooks/git/{repo}` and prints the runs created. The token comes from the
//! environment only (`SLIPWAY_TOKEN`), never from the command line, where any local
//! user could read it in the process list. It is a hook token bound to this repository
//! (`slipway token create NAME --scope hook --repo team/app`): the server refuses it
//! for any other.
//!
//! The push has already happened when the hook runs, so a lost notification is a push
//! that never gets built: a server that is briefly unable to take it (unreachable,
//! draining or restarting: 502/503/504; its disk full: 507; 429) is asked again, up
//! to five times over about 15 s, each retry said on stderr (the pusher's terminal).
//! The server de-duplicates, so a retry of a notification it did take is harmless.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::api::hooks::{GitHookBody, GitHookResponse, RefUpdate};
use crate::cli::stdio::errln;

#[derive(Debug, clap::Args)]
pub struct HookArgs {
    /// The Slipway server's base URL.
    #[arg(long, env = "SLIPWAY_SERVER")]
    pub server: String,
    /// The repository as registered in Slipway (`owner/name`).
    #[arg(long, env = "SLIPWAY_REPO")]
    pub repo: String,
}

/// Longest commit message sent along (the server stores it with the run).
const MAX_MESSAGE: usize = 4096;

/// Waits before the 2nd, 3rd, … attempt.
const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// Answers that may well be different a moment later.
fn retryable(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 502 | 503 | 504 | 507)
}

pub fn run(args: HookArgs) -> anyhow::Result<ExitCode> {
    let token = match std::env::var("SLIPWAY_TOKEN") {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            errln!("slipway hook: set SLIPWAY_TOKEN to an API token with the `hook` scope");
            return Ok(ExitCode::from(2));
        }
    };
    let mut updates = Vec::new();
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading the ref updates from stdin")?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [old, new, git_ref] = fields[..] else {
            bail!(
                "line {}: expected `<old sha> <new sha> <ref>` (what git gives a post-receive hook)",
                i + 1
            );
        };
        let (message, author) = describe_commit(new);
        updates.push(RefUpdate {
            old: old.to_string(),
            new: new.to_string(),
            git_ref: git_ref.to_string(),
            message,
            author,
        });
    }
    if updates.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let url = hook_url(&args.server, &args.repo)?;
    let body = GitHookBody { updates };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let mut delays = RETRY_DELAYS.iter();
        loop {
            let sent = async {
                let resp = client
                    .post(url.clone())
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                let status = resp.status();
                let text = resp.text().await?;
                Ok::<_, reqwest::Error>((status, text))
            }
            .await;
            let why = match &sent {
                Ok((status, _)) if retryable(*status) => format!("HTTP {}", status.as_u16()),
                Ok(_) => return sent,
                Err(e) if e.is_connect() || e.is_timeout() => e.to_string(),
                Err(_) => return sent,
            };
            let Some(delay) = delays.next() else {
                return sent;
            };
            errln!(
                "slipway hook: the server could not take the push notification ({why}); \
                 trying again in {}s",
                delay.as_secs()
            );
            tokio::time::sleep(*delay).await;
        }
    });
    let (status, text) = match response {
        Ok(r) => r,
        Err(e) => {
            errln!(
                "slipway hook: cannot reach the Slipway server at {}: {e}",
                redact(&url)
            );
            return Ok(ExitCode::from(1));
        }
    };
    if !status.is_success() {
        let reason = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(200).collect());
        errln!(
            "slipway hook: the server refused the push notification for `{}`: HTTP {}: {reason}",
            args.repo,
            status.as_u16()
        );
        return Ok(ExitCode::from(1));
    }
    let parsed: GitHookResponse =
        serde_json::from_str(&text).context("reading the server's answer")?;
    let mut out = std::io::stdout().lock();
    for r in parsed.results {
        match (r.run, r.duplicate, r.ignored) {
            (Some(n), _, _) => writeln!(out, "slipway: {} → run #{n}", r.git_ref)?,
            (None, true, _) => writeln!(out, "slipway: {} → already triggered", r.git_ref)?,
            (None, false, Some(why)) => writeln!(out, "slipway: {} → ignored ({why})", r.git_ref)?,
            (None, false, None) => writeln!(out, "slipway: {} → no run", r.git_ref)?,
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `{server}/hooks/git/{owner}/{name}`, each segment percent-encoded, keeping any base
/// path the server is mounted under.
pub fn hook_url(server: &str, repo: &str) -> anyhow::Result<reqwest::Url> {
    let mut url =
        reqwest::Url::parse(server).with_context(|| format!("--server `{server}` is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("--server must be an http:// or https:// URL");
    }
    if repo.is_empty() || repo.split('/').any(str::is_empty) {
        bail!("--repo `{repo}` is not a repository name such as `team/app`");
    }
    {
        let mut segments = url
            .path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--server `{server}` cannot have a path"))?;
        segments.pop_if_empty().extend(["hooks", "git"]);
        segments.extend(repo.split('/'));
    }
    Ok(url)
}

fn redact(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// The new tip's author and message, read with `git show` from the repository the hook
/// runs in (git sets `GIT_DIR`). Best effort: none when git or the commit is missing.
fn describe_commit(sha: &str) -> (Option<String>, Option<String>) {
    if !(sha.len() >= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
        || sha.bytes().all(|b| b == b'0')
    {
        return (None, None);
    }
    let out = std::process::Command::new("git")
        .args(["show", "-s", "--format=%an%x00%B", sha])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return (None, None) };
    if !out.status.success() {
        return (None, None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let Some((author, message)) = text.split_once('\0') else {
        return (None, None);
    };
    let message: String = message.trim().chars().take(MAX_MESSAGE).collect();
    (Some(message), Some(author.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_the_base_path_and_encode_segments() {
        assert_eq!(
            hook_url("http://127.0.0.1:8080", "team/app")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8080/hooks/git/team/app"
        );
        assert_eq!(
            hook_url("https://ci.example.com/slipway/", "a b/c")
                .unwrap()
                .as_str(),
            "https://ci.example.com/slipway/hooks/git/a%20b/c"
        );
        assert!(hook_url("ftp://x", "a/b").is_err());
        assert!(hook_url("http://x", "a//b").is_err());
    }
}
