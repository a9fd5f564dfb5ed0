//! `slipway repo add|list|show|edit|rm`: repositories, through the API (or on the
//! database directly with the server's `--data-dir`, see `admin`).

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use super::admin::{Target, Via, env_value, text, with_state};
use super::client::{Api, repo_path};
use crate::admin::repos::{self, Registration, RepoView};
use crate::cli::stdio::{errln, outln};
use crate::store::ForgeKind;

fn parse_forge(s: &str) -> Result<ForgeKind, String> {
    s.parse::<ForgeKind>().map_err(|_| {
        "expected one of github, gitlab, gitea, forgejo, bitbucket, bitbucket-dc, gitee, git"
            .to_string()
    })
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Register a repository; prints the server's webhook URL for it and its secret
    /// (shown only this once).
    Add {
        /// The repository's path on its forge: `owner/name`, or a GitLab project's full
        /// path with its subgroups (`group/subgroup/project`).
        name: String,
        /// Its forge: github, gitlab, gitea, forgejo, bitbucket (Cloud), bitbucket-dc (Data
        /// Center), gitee or git (a plain git server).
        #[arg(long, value_parser = parse_forge)]
        forge: ForgeKind,
        /// Where the server fetches it from (https://…, ssh://… or a path).
        #[arg(long)]
        clone_url: String,
        /// The branch manual runs and cron schedules use.
        #[arg(long, default_value = "main")]
        default_branch: String,
        /// Runs may see secrets and privileged settings (forks never do).
        #[arg(long)]
        trusted: bool,
        /// Name of an environment variable holding the forge API token (for commit statuses).
        #[arg(long, value_name = "VAR")]
        forge_token_env: Option<String>,
        /// The forge's API base URL for commit statuses, where the clone URL does not
        /// tell it (e.g. GitLab under a relative URL root:
        /// `https://example.com/gitlab/api/v4`).
        #[arg(long, value_name = "URL")]
        api_url: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// List the repositories you can see.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Show one repository's settings and its webhook URL.
    Show {
        /// The repository, `owner/name`.
        name: String,
        #[command(flatten)]
        target: Target,
    },
    /// Change a repository's settings; what is not given stays as it is.
    Edit {
        /// The repository, `owner/name`.
        name: String,
        /// A new default branch.
        #[arg(long)]
        default_branch: Option<String>,
        /// Whether runs may see secrets and privileged settings (`true` or `false`).
        #[arg(long, value_name = "BOOL")]
        trusted: Option<bool>,
        /// A new clone URL.
        #[arg(long)]
        clone_url: Option<String>,
        /// Name of an environment variable holding a new forge API token.
        #[arg(long, value_name = "VAR", conflicts_with = "no_forge_token")]
        forge_token_env: Option<String>,
        /// Remove the stored forge API token.
        #[arg(long)]
        no_forge_token: bool,
        /// A new forge API base URL for commit statuses.
        #[arg(long, value_name = "URL", conflicts_with = "no_api_url")]
        api_url: Option<String>,
        /// Forget the API base URL set with --api-url: derive it from the clone URL again.
        #[arg(long)]
        no_api_url: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a repository with its runs, logs, secrets and git mirror.
    Rm {
        /// The repository, `owner/name`.
        name: String,
        #[command(flatten)]
        target: Target,
    },
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
            api_url,
            target,
        } => {
            let forge_token = forge_token_env.as_deref().map(env_value).transpose()?;
            if let Some(url) = &api_url {
                repos::validate_api_url(url)?;
            }
            let (id, webhook_url, secret) = match target.via()? {
                Via::Api(api) => {
                    let mut body = json!({
                        "name": name, "forge": forge, "clone_url": clone_url,
                        "default_branch": default_branch, "trusted": trusted,
                    });
                    if let Some(t) = &forge_token {
                        body["forge_token"] = json!(t.as_str());
                    }
                    if let Some(u) = &api_url {
                        body["api_url"] = json!(u);
                    }
                    let a = api.post("/api/repos", &body)?;
                    (
                        a["repo"]["id"].as_i64().unwrap_or_default(),
                        text(&a, "webhook_url").to_string(),
                        text(&a, "webhook_secret").to_string(),
                    )
                }
                Via::Db(db) => with_state(db, async |state| {
                    let r = repos::register(
                        state,
                        Registration {
                            name: name.clone(),
                            forge,
                            clone_url,
                            default_branch: Some(default_branch),
                            forge_token,
                            trusted,
                            api_url,
                        },
                    )
                    .await?;
                    Ok((
                        r.repo.id,
                        r.webhook_url,
                        r.webhook_secret.as_str().to_string(),
                    ))
                })?,
            };
            outln!("registered {name} ({forge}, id {id})")?;
            outln!("webhook url:    {webhook_url}")?;
            outln!("webhook secret: {secret}")?;
            errln!("The webhook secret is shown only now: put it in the forge's webhook settings.");
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::List { target } => {
            let views = match target.via()? {
                Via::Api(api) => api.get("/api/repos")?,
                Via::Db(db) => with_state(db, async |state| {
                    let repos = state.store.list_repos().await?;
                    let views: Vec<RepoView> = repos
                        .iter()
                        .map(|r| RepoView::new(r, &state.config.public_url))
                        .collect();
                    Ok(serde_json::to_value(views)?)
                })?,
            };
            let views = views.as_array().cloned().unwrap_or_default();
            if views.is_empty() {
                errln!("no repositories");
            }
            for v in views {
                outln!(
                    "{}\t{}\t{}\t{}\t{}",
                    text(&v, "name"),
                    text(&v, "forge"),
                    text(&v, "default_branch"),
                    if v["trusted"] == true {
                        "trusted"
                    } else {
                        "untrusted"
                    },
                    text(&v, "clone_url")
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        RepoCommand::Show { name, target } => {
            let v = match target.via()? {
                Via::Api(api) => api.get(&repo_path(&name)?)?,
                Via::Db(db) => with_state(db, async |state| {
                    let r = state.store.get_repo_by_name(&name).await?;
                    Ok(serde_json::to_value(RepoView::new(
                        &r,
                        &state.config.public_url,
                    ))?)
                })?,
            };
            print_repo(&v)
        }
        RepoCommand::Edit {
            name,
            default_branch,
            trusted,
            clone_url,
            forge_token_env,
            no_forge_token,
            api_url,
            no_api_url,
            target,
        } => {
            let forge_token = match (forge_token_env, no_forge_token) {
                (Some(var), _) => Some(Some(env_value(&var)?)),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let api_url = match (api_url, no_api_url) {
                (Some(url), _) => {
                    repos::validate_api_url(&url)?;
                    Some(Some(url))
                }
                (None, true) => Some(None),
                (None, false) => None,
            };
            let update = repos::Update {
                default_branch,
                trusted,
                forge_token,
                clone_url,
                api_url,
            };
            if update.default_branch.is_none()
                && update.trusted.is_none()
                && update.clone_url.is_none()
                && update.forge_token.is_none()
                && update.api_url.is_none()
            {
                anyhow::bail!("nothing to change: give at least one setting (see --help)");
            }
            let v = match target.via()? {
                Via::Api(api) => edit_through(&api, &name, update)?,
                Via::Db(db) => with_state(db, async |state| {
                    let r = repos::update(state, &name, update).await?;
                    Ok(serde_json::to_value(RepoView::new(
                        &r,
                        &state.config.public_url,
                    ))?)
                })?,
            };
            print_repo(&v)
        }
        RepoCommand::Rm { name, target } => {
            match target.via()? {
                Via::Api(api) => {
                    api.delete(&repo_path(&name)?)?;
                }
                Via::Db(db) => {
                    with_state(db, async |state| Ok(repos::delete(state, &name).await?))?
                }
            }
            outln!("deleted {name}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The API's `PATCH` body for `update`: only the fields it changes, `null` to remove.
fn edit_through(api: &Api, name: &str, update: repos::Update) -> anyhow::Result<Value> {
    let mut body = serde_json::Map::new();
    if let Some(b) = update.default_branch {
        body.insert("default_branch".into(), json!(b));
    }
    if let Some(t) = update.trusted {
        body.insert("trusted".into(), json!(t));
    }
    if let Some(u) = update.clone_url {
        body.insert("clone_url".into(), json!(u));
    }
    if let Some(t) = update.forge_token {
        body.insert("forge_token".into(), json!(t.as_ref().map(|t| t.as_str())));
    }
    if let Some(u) = update.api_url {
        body.insert("api_url".into(), json!(u));
    }
    api.patch(&repo_path(name)?, &Value::Object(body))
}

fn print_repo(v: &Value) -> anyhow::Result<ExitCode> {
    outln!("name:           {}", text(v, "name"))?;
    outln!("forge:          {}", text(v, "forge"))?;
    outln!("clone url:      {}", text(v, "clone_url"))?;
    outln!("default branch: {}", text(v, "default_branch"))?;
    outln!("trusted:        {}", v["trusted"] == true)?;
    outln!(
        "forge token:    {}",
        if v["has_forge_token"] == true {
            "stored"
        } else {
            "none"
        }
    )?;
    outln!(
        "api url:        {}",
        v["api_url"]
            .as_str()
            .unwrap_or("(derived from the clone URL or the server's forge_api_urls)")
    )?;
    outln!("webhook url:    {}", text(v, "webhook_url"))?;
    Ok(ExitCode::SUCCESS)
}
