//! Deployments: one row per deploy stage that reached its environment. The row is the
//! stage's approval gate first (rules fixed when it opened, votes bound to the run's
//! commit and plan), then the record of what went out (the stage row says when it ran
//! and how it ended). This module has the types and the reads; `gates` opens and moves
//! gates inside the reconciling transaction, `votes` takes people's votes. The gate
//! rules themselves are [`crate::delivery::gate`].

use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::query;

use super::row::{RowExt, json_text, rows};
use super::{Error, Result, Run, RunId, StageStatus, Store};
use crate::delivery::gate::{GateRules, GateState, YamlApproval};

/// A deployment and its gate.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Deployment {
    pub id: i64,
    pub repo_id: i64,
    pub run_id: RunId,
    pub run_number: i64,
    pub stage_id: i64,
    pub stage: String,
    pub environment: String,
    /// The commit deployed, which every vote is bound to.
    pub sha: String,
    /// sha256 of the run's stored plan, which every vote is bound to.
    pub plan_hash: String,
    pub rules: GateRules,
    pub state: GateState,
    /// Why the gate is in its state (who rejected, what superseded it …).
    pub reason: Option<String>,
    pub opened_at: i64,
    /// When a pending request is rejected for want of approvals.
    pub expires_at: Option<i64>,
    pub decided_at: Option<i64>,
    /// The deploy stage: `waiting` at the gate, then as it ran.
    pub stage_status: StageStatus,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The user whose token started the run.
    pub triggered_by: Option<String>,
    pub votes: Vec<Vote>,
    /// Images the run built or carried (reference and digest), what went out.
    pub images: Vec<DeployedImage>,
}

/// One person's decision on a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Vote {
    pub user: String,
    pub decision: Decision,
    pub comment: String,
    pub sha: String,
    pub plan_hash: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeployedImage {
    pub reference: String,
    pub digest: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approve,
    Reject,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
        }
    }
}

impl std::str::FromStr for Decision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "approve" => Ok(Decision::Approve),
            "reject" => Ok(Decision::Reject),
            other => Err(format!("unknown decision `{other}`")),
        }
    }
}

/// What a deploy stage's planned spec says about its gate: the environment and the
/// YAML's `approval:` (a role name the reader already checked).
pub fn deploy_target(spec: &serde_json::Value) -> Option<(String, Option<YamlApproval>)> {
    let kind = spec.get("kind")?;
    if kind.get("type")?.as_str()? != "deploy" {
        return None;
    }
    let env = kind.get("environment")?.as_str()?.to_string();
    let approval = kind.get("approval").and_then(|a| {
        Some(YamlApproval {
            role: a.get("role")?.as_str()?.parse().ok()?,
            count: u32::try_from(a.get("count")?.as_u64()?).ok()?,
        })
    });
    Some((env, approval))
}

/// sha256 of a run's stored plan (what votes are bound to, with the commit).
pub fn plan_hash(run: &Run) -> String {
    let text = run.plan.as_ref().map(json_text).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

pub(super) const DEPLOY_COLS: &str = "d.id, d.repo_id, d.run_id, r.number AS run_number, d.stage_id, \
    s.stage_key, d.environment, d.sha, d.plan_hash, d.rules, d.state, d.reason, d.opened_at, \
    d.expires_at, d.decided_at, s.status AS stage_status, s.started_at, s.finished_at, \
    u.name AS triggered_by";
pub(super) const DEPLOY_FROM: &str = "FROM deployments d JOIN stages s ON s.id = d.stage_id \
    JOIN runs r ON r.id = d.run_id LEFT JOIN users u ON u.id = r.triggered_by";

pub(super) fn decode(r: &sqlx::any::AnyRow) -> Result<Deployment> {
    Ok(Deployment {
        id: r.int("id")?,
        repo_id: r.int("repo_id")?,
        run_id: r.int("run_id")?,
        run_number: r.int("run_number")?,
        stage_id: r.int("stage_id")?,
        stage: r.text("stage_key")?,
        environment: r.text("environment")?,
        sha: r.text("sha")?,
        plan_hash: r.text("plan_hash")?,
        rules: r.json("rules")?,
        state: r.parsed("state")?,
        reason: r.opt_text("reason")?,
        opened_at: r.int("opened_at")?,
        expires_at: r.opt_int("expires_at")?,
        decided_at: r.opt_int("decided_at")?,
        stage_status: r.parsed("stage_status")?,
        started_at: r.opt_int("started_at")?,
        finished_at: r.opt_int("finished_at")?,
        triggered_by: r.opt_text("triggered_by")?,
        votes: Vec::new(),
        images: Vec::new(),
    })
}

/// The audit subject naming a run's stage.
pub(super) fn stage_subject(run: &Run, stage: &str) -> String {
    format!("run:{}/{stage}", run.number)
}

impl Store {
    /// Runs with a deploy stage waiting at its gate: the gate worker reconciles them
    /// (timeouts, wait timers, a freed environment, superseded requests).
    pub async fn runs_at_gates(&self) -> Result<Vec<RunId>> {
        let rs = query(
            "SELECT DISTINCT d.run_id FROM deployments d JOIN stages s ON s.id = d.stage_id \
             WHERE s.status = 'waiting' ORDER BY d.run_id",
        )
        .fetch_all(&self.read)
        .await?;
        rows(&rs, |r| r.int("run_id"))
    }

    /// How many of the run's deploy stages wait at their gate.
    pub async fn waiting_at_gates(&self, run: RunId) -> Result<i64> {
        let r = query(
            "SELECT COUNT(*) AS n FROM deployments d JOIN stages s ON s.id = d.stage_id \
             WHERE d.run_id = $1 AND s.status = 'waiting'",
        )
        .bind(run)
        .fetch_one(&self.read)
        .await?;
        r.int("n")
    }

    /// One deployment with its votes and images.
    pub async fn get_deployment(&self, id: i64) -> Result<Deployment> {
        let sql = format!("SELECT {DEPLOY_COLS} {DEPLOY_FROM} WHERE d.id = $1");
        let row = query(&sql).bind(id).fetch_optional(&self.read).await?;
        let d = row
            .as_ref()
            .map(decode)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("deployment {id}")))?;
        Ok(self.with_details(vec![d]).await?.remove(0))
    }

    /// The deployments of a run (its deploy stages that reached their gate).
    pub async fn run_deployments(&self, run: RunId) -> Result<Vec<Deployment>> {
        let sql = format!("SELECT {DEPLOY_COLS} {DEPLOY_FROM} WHERE d.run_id = $1 ORDER BY d.id");
        let ds = rows(&query(&sql).bind(run).fetch_all(&self.read).await?, decode)?;
        self.with_details(ds).await
    }

    /// An environment's deployments, newest first (at most `limit`).
    pub async fn environment_deployments(
        &self,
        repo: i64,
        env: &str,
        limit: u32,
    ) -> Result<Vec<Deployment>> {
        let sql = format!(
            "SELECT {DEPLOY_COLS} {DEPLOY_FROM} WHERE d.repo_id = $1 AND d.environment = $2 \
             ORDER BY d.id DESC LIMIT $3"
        );
        let ds = rows(
            &query(&sql)
                .bind(repo)
                .bind(env)
                .bind(i64::from(limit))
                .fetch_all(&self.read)
                .await?,
            decode,
        )?;
        self.with_details(ds).await
    }

    /// Every environment a repository has deployed to (defined or not), by name.
    pub async fn deployed_environments(&self, repo: i64) -> Result<Vec<String>> {
        let rs = query(
            "SELECT DISTINCT environment FROM deployments WHERE repo_id = $1 ORDER BY environment",
        )
        .bind(repo)
        .fetch_all(&self.read)
        .await?;
        rows(&rs, |r| r.text("environment"))
    }

    /// Deployments waiting for approvals, across repositories (the inbox).
    pub async fn pending_deployments(&self) -> Result<Vec<Deployment>> {
        let sql = format!(
            "SELECT {DEPLOY_COLS} {DEPLOY_FROM} WHERE d.state = 'pending' AND s.status = 'waiting' \
             ORDER BY d.id"
        );
        let ds = rows(&query(&sql).fetch_all(&self.read).await?, decode)?;
        self.with_details(ds).await
    }

    async fn with_details(&self, mut ds: Vec<Deployment>) -> Result<Vec<Deployment>> {
        for d in &mut ds {
            d.votes = rows(
                &query(
                    "SELECT u.name, v.decision, v.comment, v.sha, v.plan_hash, v.at \
                     FROM deployment_votes v JOIN users u ON u.id = v.user_id \
                     WHERE v.deployment_id = $1 ORDER BY v.id",
                )
                .bind(d.id)
                .fetch_all(&self.read)
                .await?,
                |r| {
                    Ok(Vote {
                        user: r.text("name")?,
                        decision: r.parsed("decision")?,
                        comment: r.text("comment")?,
                        sha: r.text("sha")?,
                        plan_hash: r.text("plan_hash")?,
                        at: r.int("at")?,
                    })
                },
            )?;
            d.images = self
                .list_images(d.run_id)
                .await?
                .into_iter()
                .map(|i| DeployedImage {
                    reference: i.reference,
                    digest: i.digest,
                })
                .collect();
        }
        Ok(ds)
    }
}

impl Deployment {
    /// Why `voter` may not vote on this deployment now (`None`: they may) — they voted
    /// already, or the gate's rules refuse them ([`crate::delivery::gate::may_vote`]).
    /// What the inbox and the run page show instead of the vote button.
    pub fn why_not(
        &self,
        voter: crate::delivery::gate::Voter,
        people: &crate::delivery::gate::RunPeople,
    ) -> Option<String> {
        if self.votes.iter().any(|v| v.user == voter.name) {
            return Some("you have voted on this deployment".to_string());
        }
        crate::delivery::gate::may_vote(&self.rules, voter, people).err()
    }

    /// Whether the stage deployed and succeeded: the version went live.
    pub fn went_live(&self) -> bool {
        self.stage_status == StageStatus::Success && self.started_at.is_some()
    }
}
