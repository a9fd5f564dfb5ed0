//! `slipway token create|list|revoke`: personal tokens (yours by default, or a user's
//! with `--user`) and machine tokens (`--scope` to create, `--machine` to list or
//! revoke), through the API (or on the database directly with the server's
//! `--data-dir`, see `admin`: how the first admin gets the token to log in with).

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};

use super::admin::{Target, Via, text, with_state};
use super::client::{Api, segment};
use crate::cli::stdio::{errln, outln};
use crate::store::{TokenScope, audit};

fn parse_scope(s: &str) -> Result<TokenScope, String> {
    s.parse::<TokenScope>()
        .map_err(|_| "expected one of admin, runner, hook".to_string())
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it once, alone on stdout: a personal token (yours, or
    /// `--user`'s) or a machine token (`--scope`).
    Create {
        /// What the token is for (`ci-runner-1`, `alice's laptop` …).
        name: String,
        /// A machine token of this scope: admin, runner or hook.
        #[arg(long, value_parser = parse_scope, conflicts_with = "user")]
        scope: Option<TokenScope>,
        /// A personal token of this user (default: yours), acting with their roles.
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
        target: Target,
    },
    /// List tokens (never the tokens themselves): yours, `--user`'s, or the machine
    /// tokens.
    List {
        /// A user's personal tokens instead of yours.
        #[arg(long, value_name = "USER", conflicts_with = "machine")]
        user: Option<String>,
        /// The machine tokens (admin, runner, hook) instead.
        #[arg(long)]
        machine: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a token by its id (from `token list`): it is refused at once.
    Revoke {
        /// The token's id.
        id: i64,
        /// A personal token of this user instead of yours.
        #[arg(long, value_name = "USER", conflicts_with = "machine")]
        user: Option<String>,
        /// A machine token instead.
        #[arg(long)]
        machine: bool,
        #[command(flatten)]
        target: Target,
    },
}

/// Whose tokens a command is about.
enum Owner {
    Machine,
    User(String),
}

/// `--machine`, `--user`, or else whoever the API token is (a machine token's own kind).
fn owner_through(api: &Api, user: Option<String>, machine: bool) -> anyhow::Result<Owner> {
    if machine {
        return Ok(Owner::Machine);
    }
    if let Some(u) = user {
        return Ok(Owner::User(u));
    }
    let me = api.get("/api/me")?;
    Ok(match text(&me, "kind") {
        "user" => Owner::User(text(&me, "name").to_string()),
        _ => Owner::Machine,
    })
}

/// On the database there is no "you": the owner must be named.
fn owner_in_db(user: Option<String>, machine: bool) -> anyhow::Result<Owner> {
    match (user, machine) {
        (Some(u), _) => Ok(Owner::User(u)),
        (None, true) => Ok(Owner::Machine),
        (None, false) => bail!("on the database directly, give --user USER or --machine"),
    }
}

fn user_tokens_path(user: &str) -> String {
    format!("/api/users/{}/tokens", segment(user))
}

pub fn token(cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TokenCommand::Create {
            name,
            scope,
            user,
            owner,
            repos,
            target,
        } => create(name, scope, user, Reach { owner, repos }, target),
        TokenCommand::List {
            user,
            machine,
            target,
        } => {
            let (owner, tokens) = match target.via()? {
                Via::Api(api) => {
                    let owner = owner_through(&api, user, machine)?;
                    let tokens = match &owner {
                        Owner::Machine => api.get("/api/tokens")?,
                        Owner::User(u) => api.get(&user_tokens_path(u))?,
                    };
                    (owner, tokens)
                }
                Via::Db(db) => {
                    let owner = owner_in_db(user, machine)?;
                    let tokens = with_state(db, async |state| {
                        Ok(match &owner {
                            Owner::Machine => {
                                serde_json::to_value(state.store.list_tokens().await?)?
                            }
                            Owner::User(u) => {
                                let user = state.store.get_user_by_name(u).await?;
                                serde_json::to_value(state.store.list_user_tokens(user.id).await?)?
                            }
                        })
                    })?;
                    (owner, tokens)
                }
            };
            print_tokens(&owner, &tokens)
        }
        TokenCommand::Revoke {
            id,
            user,
            machine,
            target,
        } => {
            let owner = match target.via()? {
                Via::Api(api) => {
                    let owner = owner_through(&api, user, machine)?;
                    match &owner {
                        Owner::Machine => api.delete(&format!("/api/tokens/{id}"))?,
                        Owner::User(u) => api.delete(&format!("{}/{id}", user_tokens_path(u)))?,
                    };
                    owner
                }
                Via::Db(db) => {
                    let owner = owner_in_db(user, machine)?;
                    let found = with_state(db, async |state| {
                        Ok(match &owner {
                            Owner::Machine => state.store.delete_token_by(audit::CLI, id).await?,
                            Owner::User(u) => {
                                let user = state.store.get_user_by_name(u).await?;
                                state.store.delete_user_token(audit::CLI, &user, id).await?
                            }
                        })
                    })?;
                    if !found {
                        bail!("no such token: {id}");
                    }
                    owner
                }
            };
            match owner {
                Owner::Machine => outln!("revoked machine token {id}")?,
                Owner::User(u) => outln!("revoked token {id} of {u}")?,
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Which repositories a machine token may act on (`--owner`, `--repo`).
struct Reach {
    owner: Option<String>,
    repos: Vec<String>,
}

fn create(
    name: String,
    scope: Option<TokenScope>,
    user: Option<String>,
    reach: Reach,
    target: Target,
) -> anyhow::Result<ExitCode> {
    if let Some(scope) = scope {
        // Checked before reaching the server or its database, so a missing --repo
        // says so wherever the command runs.
        crate::admin::token_scope::for_new_token(scope, reach.owner.as_deref(), &reach.repos)?;
    }
    let (info, token) = match target.via()? {
        Via::Api(api) => {
            let answer = match (scope, user) {
                (Some(scope), _) => api.post(
                    "/api/tokens",
                    &json!({"name": name, "scope": scope, "owner": reach.owner, "repos": reach.repos}),
                )?,
                (None, user) => {
                    let owner = match user {
                        Some(u) => u,
                        None => match owner_through(&api, None, false)? {
                            Owner::User(u) => u,
                            Owner::Machine => bail!(
                                "you are logged in with a machine token: give --scope or --user"
                            ),
                        },
                    };
                    api.post(&user_tokens_path(&owner), &json!({"name": name}))?
                }
            };
            let token = zeroize::Zeroizing::new(text(&answer, "token").to_string());
            (answer, token)
        }
        Via::Db(db) => match (scope, user) {
            (Some(scope), _) => {
                let (info, token) = with_state(db, async |state| {
                    crate::api::tokens::create_token_as(
                        &state.store,
                        audit::CLI,
                        &name,
                        scope,
                        reach.owner.as_deref(),
                        &reach.repos,
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!(e.message))
                })?;
                (serde_json::to_value(info)?, token)
            }
            (None, Some(user)) => {
                let (info, token) = with_state(db, async |state| {
                    let user = state.store.get_user_by_name(&user).await?;
                    Ok(crate::admin::people::create_personal_token(
                        &state.store,
                        audit::CLI,
                        &user,
                        &name,
                    )
                    .await?)
                })?;
                (serde_json::to_value(info)?, token)
            }
            (None, None) => bail!("on the database directly, give --scope or --user"),
        },
    };
    let reach = serde_json::from_value::<crate::store::RepoScope>(info["repos"].clone()).ok();
    let what = match (info.get("scope").and_then(Value::as_str), reach) {
        (Some(scope), Some(reach)) => format!("{scope} token for {reach}"),
        (Some(scope), None) => format!("{scope} token"),
        (None, _) => "personal token".to_string(),
    };
    errln!(
        "created {what} {:?} (id {}); it is shown only now:",
        text(&info, "name"),
        info["id"]
    );
    outln!("{}", token.as_str())?;
    Ok(ExitCode::SUCCESS)
}

fn print_tokens(owner: &Owner, tokens: &Value) -> anyhow::Result<ExitCode> {
    let tokens = tokens.as_array().cloned().unwrap_or_default();
    if tokens.is_empty() {
        match owner {
            Owner::Machine => errln!("no machine tokens"),
            Owner::User(u) => errln!("{u} has no tokens"),
        }
    }
    for t in tokens {
        let used = t["last_used_at"]
            .as_i64()
            .map_or("never used".to_string(), |ms| {
                format!("last used {}", super::runs::when(ms))
            });
        outln!(
            "{}\t{}\t{}\t{used}",
            t["id"],
            text(&t, "name"),
            t.get("scope").and_then(Value::as_str).unwrap_or("personal"),
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
