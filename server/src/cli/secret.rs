//! `slipway secret set|list|rm`: a repository's secrets, through the API (or on the
//! database directly with the server's `--data-dir`, see `admin`). Values come from
//! stdin or a named environment variable, never argv.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;
use zeroize::Zeroizing;

use super::admin::{Target, Via, env_value, text, with_state};
use super::client::{repo_path, segment};
use crate::admin::repos;
use crate::cli::stdio::{errln, outln};

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret; the value is read from stdin (or `--value-env VAR`), never argv.
    /// Values under 4 bytes are refused: they cannot be masked in logs.
    Set {
        /// The repository, `owner/name`.
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
        target: Target,
    },
    /// List a repository's secrets (names only, never values).
    List {
        /// The repository, `owner/name`.
        repo: String,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a secret.
    Rm {
        /// The repository, `owner/name`.
        repo: String,
        /// The secret's name.
        name: String,
        #[command(flatten)]
        target: Target,
    },
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

fn secret_path(repo: &str, name: &str) -> anyhow::Result<String> {
    Ok(format!("{}/secrets/{}", repo_path(repo)?, segment(name)))
}

pub fn secret(cmd: SecretCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SecretCommand::Set {
            repo,
            name,
            value_env,
            allow_pull_requests,
            target,
        } => {
            repos::validate_reference(&repo)?;
            repos::validate_secret_name(&name)?;
            let value = read_secret_value(value_env.as_deref())?;
            repos::validate_secret_value(value.as_bytes())?;
            match target.via()? {
                Via::Api(api) => {
                    let body = json!({
                        "value": value.as_str(),
                        "allow_pull_requests": allow_pull_requests,
                    });
                    api.put(&secret_path(&repo, &name)?, &body)?;
                    outln!("set secret {name} of {repo}")?;
                }
                Via::Db(db) => {
                    let created = with_state(db, async |state| {
                        let r = state.store.get_repo_by_name(&repo).await?;
                        Ok(repos::put_secret(
                            state,
                            &r,
                            &name,
                            value.as_bytes(),
                            allow_pull_requests,
                        )
                        .await?)
                    })?;
                    outln!(
                        "{} secret {name} of {repo}",
                        if created { "created" } else { "updated" }
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::List { repo, target } => {
            let secrets = match target.via()? {
                Via::Api(api) => api.get(&format!("{}/secrets", repo_path(&repo)?))?,
                Via::Db(db) => with_state(db, async |state| {
                    let r = state.store.get_repo_by_name(&repo).await?;
                    Ok(serde_json::to_value(state.store.list_secrets(r.id).await?)?)
                })?,
            };
            let secrets = secrets.as_array().cloned().unwrap_or_default();
            if secrets.is_empty() {
                errln!("no secrets");
            }
            for s in secrets {
                outln!(
                    "{}\t{}",
                    text(&s, "name"),
                    if s["allow_pull_requests"] == true {
                        "pull requests allowed"
                    } else {
                        "no pull requests"
                    }
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SecretCommand::Rm { repo, name, target } => {
            match target.via()? {
                Via::Api(api) => {
                    api.delete(&secret_path(&repo, &name)?)?;
                }
                Via::Db(db) => {
                    let deleted = with_state(db, async |state| {
                        let r = state.store.get_repo_by_name(&repo).await?;
                        Ok(state.store.delete_secret(r.id, &name).await?)
                    })?;
                    if !deleted {
                        bail!("{repo} has no secret {name}");
                    }
                }
            }
            outln!("deleted secret {name} of {repo}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
