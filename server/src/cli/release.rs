//! Releasing from the terminal, through a running server's API with your personal
//! token: environments and their rules (`slipway env`), votes on deploy stages waiting
//! at a gate (`approve`, `reject`, `inbox`), `promote` and `rollback`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use super::client::{Api, ApiArgs, repo_path, segment};
use crate::cli::stdio::{StdoutError, outln};

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// What is live in each environment, what was before, and what waits at the gate.
    List {
        /// `owner/name` of the repository.
        repo: String,
        /// Print the server's JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// One environment: its rules and its deployment history.
    Show {
        /// `owner/name` of the repository.
        repo: String,
        /// The environment's name.
        env: String,
        /// Print the server's JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Create an environment or replace its rules (admin). Rules left out take their
    /// defaults; the stored kubeconfig is kept unless --kubeconfig or --in-cluster.
    #[command(
        after_help = "Example: slipway env set acme/shop production --protected --approvals 2 --ref main --ref 'tag:v*' --approval-timeout 24h"
    )]
    Set(Box<EnvSet>),
    /// Remove an environment's rules (admin); its deployment history stays.
    Rm {
        /// `owner/name` of the repository.
        repo: String,
        /// The environment's name.
        env: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ConcurrencyArg {
    /// A newer deployment waits until the running one has finished.
    Queue,
    /// A newer deployment replaces those still waiting at the gate.
    Supersede,
}

#[derive(Debug, Args)]
pub struct EnvSet {
    /// `owner/name` of the repository.
    repo: String,
    /// The environment's name (what deploy stages say in `environment:`).
    env: String,
    /// Deployments need approvals.
    #[arg(long)]
    protected: bool,
    /// Distinct eligible approvals a protected environment needs (1–100).
    #[arg(long, value_name = "N", default_value_t = 1)]
    approvals: u32,
    /// A role (at least) whose members may approve (repeatable; default
    /// release-manager).
    #[arg(long = "approver-role", value_name = "ROLE")]
    approver_roles: Vec<String>,
    /// A user who may approve whatever their role (repeatable).
    #[arg(long = "approver-user", value_name = "NAME")]
    approver_users: Vec<String>,
    /// Let the run's triggerer, pusher or commit author approve it.
    #[arg(long)]
    allow_self_approval: bool,
    /// A branch (`main`, `release/*`) or tag (`tag:v*`) pattern that may deploy here
    /// (repeatable; none: any).
    #[arg(long = "ref", value_name = "PATTERN")]
    refs: Vec<String>,
    /// How long a deployment waits at the gate before it may start (`10m`).
    #[arg(long, value_name = "DURATION")]
    wait_timer: Option<String>,
    /// Reject a request still missing approvals after this long (`24h`).
    #[arg(long, value_name = "DURATION")]
    approval_timeout: Option<String>,
    /// What a newer deployment does while another waits or runs.
    #[arg(long, value_enum, default_value = "queue")]
    concurrency: ConcurrencyArg,
    /// Keep pending approval requests when a newer push to the branch arrives.
    #[arg(long)]
    no_supersede_on_push: bool,
    /// The Kubernetes namespace deploy stages deploy to (SLIPWAY_NAMESPACE).
    #[arg(long)]
    namespace: Option<String>,
    /// A kubeconfig file for the environment's cluster: stored sealed, given to deploy
    /// stages as the secret SLIPWAY_KUBECONFIG.
    #[arg(long, value_name = "FILE", conflicts_with = "in_cluster")]
    kubeconfig: Option<PathBuf>,
    /// Remove the stored kubeconfig: deploy stages use the runner's own credentials.
    #[arg(long)]
    in_cluster: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// `slipway approve` and `slipway reject`.
#[derive(Debug, Args)]
pub struct VoteArgs {
    /// `owner/name` of the repository.
    repo: String,
    /// The run's number.
    run: i64,
    /// The deploy stage waiting at its gate (as `slipway env show` or the run lists it).
    stage: String,
    /// Why (kept in the record and the audit log).
    #[arg(long, short = 'm', default_value = "")]
    comment: String,
    /// The commit you reviewed: refused if the deployment is of another.
    #[arg(long)]
    sha: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
}

/// `slipway inbox`.
#[derive(Debug, Args)]
pub struct InboxArgs {
    /// Print the server's JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// `slipway promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// `owner/name` of the repository.
    repo: String,
    /// The finished run whose results to deploy.
    run: i64,
    /// The environment to deploy them to.
    #[arg(long = "to", value_name = "ENV")]
    to: String,
    #[command(flatten)]
    api: ApiArgs,
}

/// `slipway rollback`.
#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// `owner/name` of the repository.
    repo: String,
    /// The environment to roll back.
    env: String,
    #[command(flatten)]
    api: ApiArgs,
}

pub fn env(cmd: EnvCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EnvCommand::List { repo, json, api } => {
            let answer = Api::new(&api)?.get(&format!("{}/environments", repo_path(&repo)?))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&answer)?)?;
            } else {
                print_env_table(&answer)?;
            }
        }
        EnvCommand::Show {
            repo,
            env,
            json,
            api,
        } => {
            let path = format!("{}/environments/{}", repo_path(&repo)?, segment(&env));
            let answer = Api::new(&api)?.get(&path)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&answer)?)?;
            } else {
                print_env_detail(&answer)?;
            }
        }
        EnvCommand::Set(set) => {
            let path = format!(
                "{}/environments/{}",
                repo_path(&set.repo)?,
                segment(&set.env)
            );
            let body = env_body(&set)?;
            let answer = Api::new(&set.api)?.put(&path, &body)?;
            outln!(
                "environment `{}` of {}: {}",
                set.env,
                set.repo,
                rules_line(&answer)
            )?;
        }
        EnvCommand::Rm { repo, env, api } => {
            let path = format!("{}/environments/{}", repo_path(&repo)?, segment(&env));
            Api::new(&api)?.delete(&path)?;
            outln!("environment `{env}` of {repo} removed (its deployment history stays)")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn seconds(flag: &str, value: &Option<String>) -> anyhow::Result<Option<u64>> {
    value
        .as_deref()
        .map(|v| pipelines::parse_duration(v).map_err(|e| anyhow::anyhow!("--{flag} {v:?}: {e}")))
        .transpose()
}

fn env_body(set: &EnvSet) -> anyhow::Result<Value> {
    let mut body = json!({
        "protected": set.protected,
        "required_approvals": set.approvals,
        "approver_roles": set.approver_roles,
        "approver_users": set.approver_users,
        "allow_self_approval": set.allow_self_approval,
        "refs": set.refs,
        "wait_timer_secs": seconds("wait-timer", &set.wait_timer)?.unwrap_or(0),
        "approval_timeout_secs": seconds("approval-timeout", &set.approval_timeout)?,
        "concurrency": match set.concurrency {
            ConcurrencyArg::Queue => "queue",
            ConcurrencyArg::Supersede => "supersede",
        },
        "supersede_on_push": !set.no_supersede_on_push,
        "namespace": set.namespace,
    });
    if let Some(file) = &set.kubeconfig {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading --kubeconfig {}", file.display()))?,
        );
        if text.trim().is_empty() {
            bail!("--kubeconfig {} is empty", file.display());
        }
        body["kubeconfig"] = Value::String(text.to_string());
    } else if set.in_cluster {
        body["kubeconfig"] = Value::String(String::new());
    }
    Ok(body)
}

/// One line of an environment's rules.
fn rules_line(env: &Value) -> String {
    if !env["protected"].as_bool().unwrap_or(false) {
        let refs = list(&env["refs"]);
        return if refs.is_empty() {
            "unprotected".into()
        } else {
            format!("unprotected, refs {refs}")
        };
    }
    let mut parts = vec![format!(
        "protected, {} approval(s)",
        env["required_approvals"]
    )];
    let who: Vec<String> = [list(&env["approver_roles"]), list(&env["approver_users"])]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    parts.push(format!(
        "by {}",
        if who.is_empty() {
            "release-manager".into()
        } else {
            who.join(", ")
        }
    ));
    if !env["allow_self_approval"].as_bool().unwrap_or(false) {
        parts.push("no self-approval".into());
    }
    let refs = list(&env["refs"]);
    if !refs.is_empty() {
        parts.push(format!("refs {refs}"));
    }
    if let Some(ms) = env["approval_timeout_ms"].as_i64() {
        parts.push(format!("timeout {}s", ms / 1000));
    }
    if let Some(ms) = env["wait_timer_ms"].as_i64().filter(|&m| m > 0) {
        parts.push(format!("wait {}s", ms / 1000));
    }
    parts.push(env["concurrency"].as_str().unwrap_or("queue").to_string());
    parts.join(", ")
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// `#12 abc1234 (registry/app@sha256:…)` for a deployment, `-` for none.
fn version(d: &Value) -> String {
    if d.is_null() {
        return "-".into();
    }
    let sha = d["sha"].as_str().unwrap_or("");
    let mut out = format!("#{} {}", d["run_number"], &sha[..sha.len().min(7)]);
    if let Some(img) = d["images"].as_array().and_then(|a| a.first()) {
        let digest = img["digest"].as_str().unwrap_or("");
        out.push_str(&format!(" {}", &digest[..digest.len().min(19)]));
    }
    out
}

fn print_env_table(envs: &Value) -> Result<(), StdoutError> {
    let rows: Vec<[String; 5]> = envs
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let rules = if e["environment"].is_null() {
                "not defined (unprotected)".to_string()
            } else {
                rules_line(&e["environment"])
            };
            let waiting = e["waiting"].as_array().map_or(0, Vec::len);
            [
                e["name"].as_str().unwrap_or("").to_string(),
                version(&e["live"]),
                version(&e["previous"]),
                waiting.to_string(),
                rules,
            ]
        })
        .collect();
    if rows.is_empty() {
        return outln!("no environments: define one with `slipway env set`, or deploy to one");
    }
    table(
        &["ENVIRONMENT", "LIVE", "PREVIOUS", "WAITING", "RULES"],
        &rows,
    )
}

fn print_env_detail(d: &Value) -> Result<(), StdoutError> {
    outln!("environment: {}", d["name"].as_str().unwrap_or(""))?;
    if d["environment"].is_null() {
        outln!("rules:       not defined (unprotected)")?;
    } else {
        outln!("rules:       {}", rules_line(&d["environment"]))?;
        if let Some(ns) = d["environment"]["namespace"].as_str() {
            outln!("namespace:   {ns}")?;
        }
        let conn = if d["environment"]["has_kubeconfig"].as_bool() == Some(true) {
            "kubeconfig (sealed)"
        } else {
            "in-cluster"
        };
        outln!("cluster:     {conn}")?;
    }
    outln!("live:        {}", version(&d["live"]))?;
    outln!("previous:    {}", version(&d["previous"]))?;
    let rows: Vec<[String; 5]> = d["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            let approvers: Vec<&str> = x["votes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["decision"] == "approve")
                .filter_map(|v| v["user"].as_str())
                .collect();
            [
                version(x),
                x["stage"].as_str().unwrap_or("").to_string(),
                x["state"].as_str().unwrap_or("").to_string(),
                x["stage_status"].as_str().unwrap_or("").to_string(),
                approvers.join(", "),
            ]
        })
        .collect();
    if !rows.is_empty() {
        outln!()?;
        table(
            &["VERSION", "STAGE", "GATE", "DEPLOY", "APPROVED BY"],
            &rows,
        )?;
    }
    Ok(())
}

fn table<const N: usize>(head: &[&str; N], rows: &[[String; N]]) -> Result<(), StdoutError> {
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        outln!("{}", out.trim_end())
    };
    line(head.to_vec())?;
    for r in rows {
        line(r.iter().map(String::as_str).collect())?;
    }
    Ok(())
}

pub fn vote(args: VoteArgs, approve: bool) -> anyhow::Result<ExitCode> {
    let verb = if approve { "approve" } else { "reject" };
    let path = format!("{}/runs/{}/{verb}", repo_path(&args.repo)?, args.run);
    let mut body = json!({ "stage": args.stage, "comment": args.comment });
    if let Some(sha) = &args.sha {
        body["sha"] = Value::String(sha.clone());
    }
    let d = Api::new(&args.api)?.post(&path, &body)?;
    let approvals = d["votes"].as_array().map_or(0, |v| {
        v.iter().filter(|v| v["decision"] == "approve").count()
    });
    let state = d["state"].as_str().unwrap_or("");
    let what = match state {
        "pending" => format!(
            "{approvals} of {} approvals; still waiting",
            d["rules"]["required"]
        ),
        "approved" => "approved: the stage starts when the environment is free".into(),
        _ => format!("{state}: {}", d["reason"].as_str().unwrap_or("")),
    };
    outln!(
        "{verb}d {} run #{} stage `{}` ({}): {what}",
        args.repo,
        args.run,
        args.stage,
        d["environment"].as_str().unwrap_or("")
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn inbox(args: InboxArgs) -> anyhow::Result<ExitCode> {
    let items = Api::new(&args.api)?.get("/api/inbox")?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&items)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = items
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let d = &i["deployment"];
            let sha = d["sha"].as_str().unwrap_or("");
            [
                i["repo"].as_str().unwrap_or("").to_string(),
                format!("#{}", d["run_number"]),
                d["stage"].as_str().unwrap_or("").to_string(),
                format!(
                    "{} {}",
                    d["environment"].as_str().unwrap_or(""),
                    &sha[..sha.len().min(7)]
                ),
                format!("{}/{}", i["approvals"], d["rules"]["required"]),
                match i["reason"].as_str() {
                    None => "you may approve".to_string(),
                    Some(why) => format!("not you: {why}"),
                },
            ]
        })
        .collect();
    if rows.is_empty() {
        outln!("nothing is waiting for approval")?;
    } else {
        table(
            &[
                "REPOSITORY",
                "RUN",
                "STAGE",
                "ENVIRONMENT",
                "APPROVALS",
                "YOU",
            ],
            &rows,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn promote(args: PromoteArgs) -> anyhow::Result<ExitCode> {
    let path = format!("{}/runs/{}/promote", repo_path(&args.repo)?, args.run);
    let run = Api::new(&args.api)?.post(&path, &json!({ "environment": args.to }))?;
    outln!(
        "run #{} promotes run #{} of {} to `{}` (nothing rebuilt); it waits at the gate if `{}` is protected",
        run["number"],
        args.run,
        args.repo,
        args.to,
        args.to
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let path = format!(
        "{}/environments/{}/rollback",
        repo_path(&args.repo)?,
        segment(&args.env)
    );
    let run = Api::new(&args.api)?.post(&path, &json!({}))?;
    outln!(
        "run #{} rolls `{}` of {} back to run #{} (nothing rebuilt); it passes the environment's gate like any deployment",
        run["number"],
        args.env,
        args.repo,
        run["promotion"]["from_number"]
    )?;
    Ok(ExitCode::SUCCESS)
}
