//! `slipway runs list|show`, `trigger`, `cancel`, `rerun`: runs through the server's
//! API, repositories named `owner/name`.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use serde_json::{Value, json};

use super::admin::text;
use super::client::{Api, ApiArgs, repo_path, segment};
use crate::cli::stdio::outln;

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// List runs, newest first: of one repository or of every one you can see.
    List {
        /// Only this repository (`owner/name`).
        #[arg(long)]
        repo: Option<String>,
        /// Only runs in this state: pending, running, success, failure, error, cancelled.
        #[arg(long)]
        status: Option<String>,
        /// Only runs of this branch.
        #[arg(long)]
        branch: Option<String>,
        /// At most this many runs.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show a run: its stages and steps with their states and durations, and for a
    /// failed run the failing step's last log lines.
    Show {
        /// The repository, `owner/name`.
        repo: String,
        /// The run's number.
        number: i64,
        #[command(flatten)]
        api: ApiArgs,
    },
}

/// Arguments of `slipway trigger` (and `slipway run trigger`).
#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// The repository, `owner/name`.
    pub repo: String,
    /// The branch whose head to run (default: the repository's default branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Plan only this pipeline.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// A manual parameter, `KEY=VALUE` (repeatable).
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    #[command(flatten)]
    pub api: ApiArgs,
}

/// A run named on the command line.
#[derive(Debug, clap::Args)]
pub struct RunRef {
    /// The repository, `owner/name`.
    pub repo: String,
    /// The run's number.
    pub number: i64,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, clap::Args)]
pub struct RerunArgs {
    #[command(flatten)]
    pub run: RunRef,
    /// Re-run only the stages that did not succeed (the others keep their results).
    #[arg(long)]
    pub failed: bool,
}

pub fn run_path(repo: &str, number: i64) -> anyhow::Result<String> {
    Ok(format!("{}/runs/{number}", repo_path(repo)?))
}

pub fn runs(cmd: RunsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RunsCommand::List {
            repo,
            status,
            branch,
            limit,
            api,
        } => list(repo, status, branch, limit, &Api::new(&api)?),
        RunsCommand::Show { repo, number, api } => show(&Api::new(&api)?, &repo, number),
    }
}

fn list(
    repo: Option<String>,
    status: Option<String>,
    branch: Option<String>,
    limit: u32,
    api: &Api,
) -> anyhow::Result<ExitCode> {
    let names: Vec<String> = match repo {
        Some(r) => vec![r],
        None => api
            .get("/api/repos")?
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| text(r, "name").to_string())
            .collect(),
    };
    let mut query = format!("?limit={}", limit.clamp(1, 100));
    if let Some(s) = &status {
        query.push_str(&format!("&status={}", segment(s)));
    }
    if let Some(b) = &branch {
        query.push_str(&format!("&branch={}", segment(b)));
    }
    let mut runs: Vec<(String, Value)> = Vec::new();
    for name in names {
        let page = api.get(&format!("{}/runs{query}", repo_path(&name)?))?;
        for run in page.as_array().into_iter().flatten() {
            runs.push((name.clone(), run.clone()));
        }
    }
    runs.sort_by_key(|(_, r)| std::cmp::Reverse(r["created_at"].as_i64().unwrap_or(0)));
    runs.truncate(limit as usize);
    if runs.is_empty() {
        crate::cli::stdio::errln!("no runs");
    }
    for (repo, r) in runs {
        let branch = r["branch"]
            .as_str()
            .or(r["tag"].as_str())
            .unwrap_or(text(&r, "git_ref"));
        let message = text(&r, "message").lines().next().unwrap_or_default();
        outln!(
            "{repo}\t#{}\t{}\t{branch}\t{}\t{}\t{}",
            r["number"],
            status_of(&r),
            short_sha(text(&r, "sha")),
            duration_of(&r),
            message
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn short_sha(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

/// A run's state, `blocked` while a deploy waits at its gate.
fn status_of(run: &Value) -> String {
    if run["blocked"] == true {
        "blocked".into()
    } else {
        text(run, "status").to_string()
    }
}

/// How long something took (or has been running), from its `started_at`/`finished_at`.
fn duration_of(v: &Value) -> String {
    let Some(start) = v["started_at"].as_i64() else {
        return "-".into();
    };
    let end = v["finished_at"]
        .as_i64()
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    human_duration(end.saturating_sub(start))
}

fn human_duration(ms: i64) -> String {
    let s = ms / 1000;
    match s {
        _ if ms < 1000 => format!("{ms}ms"),
        0..60 => format!("{:.1}s", ms as f64 / 1000.0),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A time in milliseconds since the epoch, as UTC.
pub fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn show(api: &Api, repo: &str, number: i64) -> anyhow::Result<ExitCode> {
    let d = api.get(&run_path(repo, number)?)?;
    let run = &d["run"];
    let branch = run["branch"]
        .as_str()
        .or(run["tag"].as_str())
        .unwrap_or(text(run, "git_ref"));
    outln!("{repo} #{number}: {}", status_of(run))?;
    outln!(
        "{} {} at {} by {}, {} ({})",
        text(run, "trigger"),
        text(run, "event"),
        short_sha(text(run, "sha")),
        text(run, "author"),
        branch,
        duration_of(run)
    )?;
    if let Some(m) = text(run, "message").lines().next() {
        outln!("  {m}")?;
    }
    if let Some(e) = run["error"].as_str() {
        outln!("error: {e}")?;
    }
    for s in d["stages"].as_array().into_iter().flatten() {
        let reason = s["reason"]
            .as_str()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default();
        outln!(
            "stage {}  {}  {}{reason}",
            text(s, "key"),
            text(s, "status"),
            duration_of(s)
        )?;
        if let Some(u) = s["unroutable"].as_str() {
            outln!("  waiting: {u}")?;
        }
        if let Some(w) = s["waiting"].as_str().filter(|_| s["status"] == "running") {
            outln!("  waiting: {w}")?;
        }
        for st in s["steps"].as_array().into_iter().flatten() {
            let exit = st["exit_code"]
                .as_i64()
                .map(|c| format!("  exit {c}"))
                .unwrap_or_default();
            outln!(
                "  step {}  {}  {}{exit}",
                text(st, "name"),
                text(st, "status"),
                duration_of(st)
            )?;
        }
    }
    let f = &d["failure"];
    if f.is_object() {
        outln!()?;
        outln!(
            "failed: stage {}, step {}: {}",
            text(f, "stage"),
            text(f, "step"),
            text(f, "reason")
        )?;
        let last = f["last"].as_array().cloned().unwrap_or_default();
        if !last.is_empty() {
            outln!("last lines of its log:")?;
        }
        for l in last {
            outln!("  {:>5} | {}", l["number"], text(&l, "text"))?;
        }
        outln!(
            "whole log: slipway logs {repo} {number} {} {}",
            shell_word(text(f, "stage")),
            shell_word(text(f, "step"))
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `s` quoted for a shell when it needs it (stage keys hold spaces).
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

pub fn trigger(args: TriggerArgs) -> anyhow::Result<ExitCode> {
    crate::admin::repos::validate_reference(&args.repo)?;
    let mut map = serde_json::Map::new();
    for p in &args.params {
        let Some((k, v)) = p.split_once('=') else {
            bail!("--param {p:?}: expected KEY=VALUE");
        };
        map.insert(k.to_string(), Value::String(v.to_string()));
    }
    let mut body = json!({ "params": map });
    if let Some(b) = args.branch {
        body["branch"] = Value::String(b);
    }
    if let Some(p) = args.pipeline {
        body["pipeline"] = Value::String(p);
    }
    let api = Api::new(&args.api)?;
    let answer = api.post(&format!("{}/trigger", repo_path(&args.repo)?), &body)?;
    let number = answer["number"].as_i64().unwrap_or_default();
    let sha = text(&answer, "sha");
    outln!("run #{number} of {} at {sha} is pending", args.repo)?;
    outln!("{}{}", api.base(), run_path(&args.repo, number)?)?;
    Ok(ExitCode::SUCCESS)
}

pub fn cancel(args: RunRef) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.api)?;
    let run = api.post(
        &format!("{}/cancel", run_path(&args.repo, args.number)?),
        &json!({}),
    )?;
    outln!(
        "run #{} of {} is {}",
        args.number,
        args.repo,
        text(&run, "status")
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn rerun(args: RerunArgs) -> anyhow::Result<ExitCode> {
    let api = Api::new(&args.run.api)?;
    let run = api.post(
        &format!("{}/rerun", run_path(&args.run.repo, args.run.number)?),
        &json!({ "failed_only": args.failed }),
    )?;
    outln!(
        "run #{} of {} re-runs #{}{}",
        run["number"],
        args.run.repo,
        args.run.number,
        if args.failed { " (failed stages)" } else { "" }
    )?;
    Ok(ExitCode::SUCCESS)
}
