//! `slipway rollout`: follow and steer a deploy stage's rollout through a running
//! server's API — `status`, `promote` (past a pause, or `--full`), `abort` (roll back
//! now) and `retry` (roll the same digest out again, through the gate). The server
//! checks the environment's release permission and audits every request.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde_json::{Value, json};

use super::client::{Api, ApiArgs, repo_path, segment};
use crate::cli::stdio::{StdoutError, outln};

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Where the rollout is: phase, step, message, the last measurements.
    Status {
        #[command(flatten)]
        at: StageArgs,
        /// Print the server's JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Move the rollout past its current pause or inconclusive analysis.
    Promote {
        #[command(flatten)]
        at: StageArgs,
        /// Skip every remaining step: the new version everywhere now.
        #[arg(long)]
        full: bool,
    },
    /// Roll back now: traffic to the stable version, the new one removed.
    Abort {
        #[command(flatten)]
        at: StageArgs,
    },
    /// Roll the same version out again after a rollback (a new run, through the gate).
    Retry {
        #[command(flatten)]
        at: StageArgs,
    },
}

#[derive(Debug, Args)]
pub struct StageArgs {
    /// `owner/name` of the repository.
    repo: String,
    /// The run's number.
    run: i64,
    /// The deploy stage (its key, as the run lists it).
    stage: String,
    #[command(flatten)]
    api: ApiArgs,
}

impl StageArgs {
    fn path(&self, tail: &str) -> anyhow::Result<String> {
        Ok(format!(
            "{}/runs/{}/stages/{}/rollout{tail}",
            repo_path(&self.repo)?,
            self.run,
            segment(&self.stage)
        ))
    }
}

pub fn rollout(cmd: RolloutCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RolloutCommand::Status { at, json } => {
            let v = Api::new(&at.api)?.get(&at.path("")?)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                print_status(&v)?;
            }
        }
        RolloutCommand::Promote { at, full } => {
            Api::new(&at.api)?.post(&at.path("/promote")?, &json!({ "full": full }))?;
            let what = if full { "fully promoted" } else { "promoted" };
            outln!("the rollout of `{}` in run #{} is {what}", at.stage, at.run)?;
        }
        RolloutCommand::Abort { at } => {
            Api::new(&at.api)?.post(&at.path("/abort")?, &json!({}))?;
            outln!(
                "the rollout of `{}` in run #{} is rolling back",
                at.stage,
                at.run
            )?;
        }
        RolloutCommand::Retry { at } => {
            let run = Api::new(&at.api)?.post(&at.path("/retry")?, &json!({}))?;
            outln!(
                "run #{} rolls run #{}'s version out again (nothing rebuilt)",
                run["number"],
                at.run
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(v: &Value) -> Result<(), StdoutError> {
    let r = &v["rollout"];
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    let step = r["step"].as_u64().unwrap_or(0) as usize;
    outln!(
        "{} in {}: {} → {}",
        r["deployment"].as_str().unwrap_or("?"),
        r["namespace"].as_str().unwrap_or("?"),
        r["stable_image"].as_str().unwrap_or("?"),
        r["image"].as_str().unwrap_or("?")
    )?;
    outln!("phase: {}", r["phase"].as_str().unwrap_or("?"))?;
    if let Some(m) = r["message"].as_str() {
        outln!("       {m}")?;
    }
    for (i, s) in steps.iter().enumerate() {
        let mark = if i < step {
            "done"
        } else if i == step {
            "now "
        } else {
            "    "
        };
        outln!("  {mark} {}. {}", i + 1, s.as_str().unwrap_or("?"))?;
    }
    let ms = v["measurements"].as_array().cloned().unwrap_or_default();
    for m in ms.iter().rev().take(5).rev() {
        outln!(
            "  measured {} #{} {}: {} {}",
            m["analysis"].as_str().unwrap_or("?"),
            m["seq"],
            m["check"].as_str().unwrap_or("?"),
            m["outcome"].as_str().unwrap_or("?"),
            m["detail"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}
