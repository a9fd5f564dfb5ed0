//! Admin commands: `slipway repo|secret|token …` work on the server's database directly
//! (same configuration as `slipway server`: `--config`, flags, `SLIPWAY_*`), so the
//! first repository and the first admin token can be made before any token exists.
//! `slipway run trigger` is an API client instead: it needs the running server.
//!
//! Secret values and forge tokens never come from argv (visible to every user in `ps`
//! and kept in shell history): they are read from stdin or from a named environment
//! variable.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use zeroize::Zeroizing;

use super::ServerArgs;
use crate::admin::repos::{self, Registration, RepoView};
use crate::cli::stdio::{errln, outln};
use crate::daemon::state::AppState;
use crate::store::{ForgeKind, TokenScope, audit};

fn parse_forge(s: &str) -> Result<ForgeKind, String> {
    s.parse::<ForgeKind>()
        .map_err(|_| "expected one of github, gitlab, gitea, forgejo, git".to_string())
}

fn parse_scope(s: &str) -> Result<TokenScope, String> {
    s.parse::<TokenScope>()
        .map_err(|_| "expected one of admin, runner, hook".to_string())
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Register a repository; prints its webhook URL and secret (shown only this once).
    Add {
        /// `owner/name`.
        name: String,
        /// github, gitlab, gitea, forgejo or git.
        #[arg(long, value_parser = parse_forge)]
        forge: ForgeKind,
        #[arg(long)]
        clone_url: String,
        #[arg(long, default_value = "main")]
        default_branch: String,
        /// Runs may see secrets and privileged settings (forks never do).
        #[arg(long)]
        trusted: bool,
        /// Name of an environment variable holding the forge API token (for commit statuses).
        #[arg(long, value_name = "VAR")]
        forge_token_env: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List the registered repositories.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret; the value is read from stdin (or `--value-env VAR`), never argv.
    /// Values under 4 bytes are refused: they cannot be masked in logs.
    Set {
        /// `owner/name` of the repository.
        repo: String,
        /// The secret's name (an environment variable name).
        name: String,
        /// Read the value from this environment variable instead of stdin.
        #[arg(long, value_name = "VAR")]
        value_env: Option<String>,
        /// Let pull requests from forks see it.
        #[arg(long)]
        allow_pull_requests: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List a repository's secrets (names only).
    List {
        repo: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Delete a secret.
    Rm {
        repo: String,
        name: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token, a machine token (`--scope`) or a user's personal token
    /// (`--user`); prints it once, alone on stdout.
    Create {
        /// What the token is for (`ci-runner-1`, `alice's laptop` …).
        name: String,
        /// A machine token of this scope: admin, runner or hook.
        #[arg(long, value_parser = parse_scope, required_unless_present = "user", conflicts_with = "user")]
        scope: Option<TokenScope>,
        /// A personal token acting as this user, with their roles.
        #[arg(long, value_name = "USER")]
        user: Option<String>,
        /// A runner token for the repositories of this owner only.
        #[arg(long, value_name = "OWNER", requires = "scope")]
        owner: Option<String>,
        /// Hook token: the one repository it may trigger (required). Runner token:
        /// only this repository (repeatable).
        #[arg(long = "repo", value_name = "OWNER/NAME", requires = "scope")]
        repos: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a branch head through the server's API.
    Trigger {
        /// `owner/name` of the repository.
        repo: String,
        /// Default: the repository's default branch.
        #[arg(long)]
        branch: Option<String>,
        /// Plan only this pipeline.
        #[arg(long)]
        pipeline: Option<String>,
        /// A manual parameter, `KEY=VALUE` (repeatable).
        #[arg(long = "param", value_name = "KEY=VALUE")]
        params: Vec<String>,
        /// The server's URL.
        #[arg(long, env = "SLIPWAY_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
        /// Name of the environment variable holding an admin API token.
        #[arg(long, value_name = "VAR", default_value = "SLIPWAY_TOKEN")]
        token_env: String,
    },
}

/// Opens the store the server uses (migrating it if needed), runs `f`, closes it.
pub(super) fn with_state<T>(
    server: ServerArgs,
    f: impl AsyncFnOnce(&AppState) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let config = server.resolve()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let state = crate::daemon::serve::build_state(config).await?;
        let out = f(&state).await;
        state.store.close().await;
        out
    })
}

fn env_value(var: &str) -> anyhow::Result<Zeroizing<String>> {
    let value =
        std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
    if value.is_empty() {
        bail!("environment variable {var} is empty");
    }
    Ok(Zeroizing::new(value))
}

pub fn repo(cmd: RepoCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RepoCommand::Add {
            name,
            forge,
            clone_url,
            default_branch,
            trusted,
            forge_token_env,
            server,
        } => {
            let forge_token = forge_token_env.as_deref().map(env_value).transpose()?;
            let registered = with_state(server, async |state| {
                Ok(repos::register(
                    state,
                    Registration {
                        name,
                        forge,
                        clone_url,
                        default_branch: Some(default_branch),
                        forge_token,
                        trusted,
                    },
                )
                .await?)
            })?;
            let r = &registered.repo;
            outln!("registered {} ({}, id {})", r.name, r.forge, r.id)?;
            outln!("webhook url:    {}", registered.webhook_url)?;
            outln!("webhook secret: {}", registered.webhook_secret.as_str())?;
            errln!("The webhook secret is shown only now: put it in the forge's webhook settings.");
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::List { server } => {
            let views = with_state(server, async |state| {
                let repos = state.store.list_repos().await?;
                Ok(repos
                    .iter()
                    .map(|r| RepoView::new(r, &state.config.public_url))
                    .collect::<Vec<_>>())
            })?;
            if views.is_empty() {
                errln!("no repositories");
            }
            for v in views {
                outln!(
                    "{}\t{}\t{}\t{}\t{}",
                    v.name,
                    v.forge,
                    v.default_branch,
                    if v.trusted { "trusted" } else { "untrusted" },
                    v.clone_url
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The secret value from `--value-env` or stdin (one trailing newline dropped, so
/// `echo value | slipway secret set …` stores `value`).
fn read_secret_value(value_env: Option<&str>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(var) = value_env {
        return env_value(var);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        errln!("Enter the secret value, then Ctrl-D:");
    }
    let mut value = Zeroizing::new(String::new());
    stdin
        .lock()
        .read_to_string(&mut value)
        .context("reading the secret value from stdin")?;
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        bail!("empty secret value (pipe it on stdin or use --value-env VAR)");
    }
    Ok(value)
}

pub fn secret(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Set {
            repo,
            name,
            value_env,
            allow_pull_requests,
            server,
        } => {
            repos::validate_secret_name(&name)?;
            let value = read_secret_value(value_env.as_deref())?;
            repos::validate_secret_value(value.as_bytes())?;
            let created = with_state(server, async |state| {
                let r = state.store.get_repo_by_name(&repo).await?;
                Ok(
                    repos::put_secret(state, &r, &name, value.as_bytes(), allow_pull_requests)
                        .await?,
                )
            })?;
            outln!(
                "{} secret {name} of {repo}",
                if created { "created" } else { "updated" }
            )?;
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::List { repo, server } => {
            let secrets = with_state(server, async |state| {
                let r = state.store.get_repo_by_name(&repo).await?;
                Ok(state.store.list_secrets(r.id).await?)
            })?;
            if secrets.is_empty() {
                errln!("no secrets");
            }
            for s in secrets {
                outln!(
                    "{}\t{}",
                    s.name,
                    if s.allow_pull_requests {
                        "pull requests allowed"
                    } else {
                        "no pull requests"
                    }
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Rm { repo, name, server } => {
            let deleted = with_state(server, async |state| {
                let r = state.store.get_repo_by_name(&repo).await?;
                Ok(state.store.delete_secret(r.id, &name).await?)
            })?;
            if !deleted {
                bail!("{repo} has no secret {name}");
            }
            outln!("deleted secret {name} of {repo}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            name,
            scope,
            user,
            owner,
            repos,
            server,
        } => {
            let token = match (scope, user) {
                (Some(scope), _) => {
                    // Checked before opening the database, so a missing --repo says so
                    // even where the server's data cannot be reached.
                    crate::admin::token_scope::for_new_token(scope, owner.as_deref(), &repos)?;
                    let (info, token) = with_state(server, async |state| {
                        crate::api::tokens::create_token_as(
                            &state.store,
                            audit::CLI,
                            &name,
                            scope,
                            owner.as_deref(),
                            &repos,
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!(e.message))
                    })?;
                    errln!(
                        "created {scope} token {:?} (id {}) for {}; it is shown only now:",
                        info.name,
                        info.id,
                        info.repos
                    );
                    token
                }
                (None, Some(user)) => {
                    let (info, token) = with_state(server, async |state| {
                        let user = state.store.get_user_by_name(&user).await?;
                        Ok(crate::admin::people::create_personal_token(
                            &state.store,
                            audit::CLI,
                            &user,
                            &name,
                        )
                        .await?)
                    })?;
                    errln!(
                        "created personal token {:?} of {user} (id {}); it is shown only now:",
                        info.name,
                        info.id
                    );
                    token
                }
                (None, None) => bail!("give --scope or --user"),
            };
            outln!("{}", token.as_str())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn run(cmd: RunCommand) -> anyhow::Result<ExitCode> {
    let RunCommand::Trigger {
        repo,
        branch,
        pipeline,
        params,
        server,
        token_env,
    } = cmd;
    repos::validate_name(&repo)?;
    let token = env_value(&token_env)?;
    let mut map = serde_json::Map::new();
    for p in &params {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--param {p:?}: expected KEY=VALUE");
        };
        map.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    let mut body = serde_json::json!({ "params": map });
    if let Some(b) = branch {
        body["branch"] = serde_json::Value::String(b);
    }
    if let Some(p) = pipeline {
        body["pipeline"] = serde_json::Value::String(p);
    }
    let base = server.trim_end_matches('/').to_string();
    let url = format!("{base}/api/repos/{repo}/trigger");
    let (status, answer) = tokio::runtime::Runtime::new()?.block_on(async {
        let response = reqwest::Client::new()
            .post(&url)
            .bearer_auth(token.as_str())
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        let status = response.status();
        let answer: serde_json::Value = response.json().await.unwrap_or_default();
        anyhow::Ok((status, answer))
    })?;
    if !status.is_success() {
        let message = answer["error"]["message"].as_str().unwrap_or("no details");
        bail!("the server answered {status}: {message}");
    }
    let number = answer["number"].as_i64().unwrap_or_default();
    let sha = answer["sha"].as_str().unwrap_or_default();
    outln!("run #{number} of {repo} at {sha} is pending")?;
    outln!("{base}/api/repos/{repo}/runs/{number}")?;
    Ok(ExitCode::SUCCESS)
}
