//! Deployments: one row per deploy stage that reached its environment. The row is the
//! stage's approval gate first (rules fixed when it opened, votes bound to the run's
//! commit and plan), then the record of what went out (the stage row says when it ran
//! and how it ended). Every request, vote, refusal and decision is in the audit log, in
//! the transaction that made it. The gate rules themselves are [`crate::runs::gate`].

use std::collections::HashMap;

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::query;

use super::audit::action;
use super::row::{RowExt, json_text, rows};
use super::{
    Error, ForgeKind, NewAudit, Result, Role, Run, RunId, Stage, StageStatus, Store, Tx, User,
    UserId,
};
use crate::runs::gate::{
    Concurrency, EnvironmentRules, Gate, GateRules, GateState, RunPeople, Voter, YamlApproval,
    gate_rules, may_vote, ref_allowed, stage_gate,
};

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

/// A vote as asked for.
#[derive(Debug, Clone)]
pub struct NewVote<'a> {
    pub voter: &'a User,
    /// The voter's role on the repository.
    pub role: Option<Role>,
    pub decision: Decision,
    pub comment: &'a str,
    /// The commit the voter saw; refused if the deployment is of another.
    pub sha: Option<&'a str>,
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

const DEPLOY_COLS: &str = "d.id, d.repo_id, d.run_id, r.number AS run_number, d.stage_id, \
    s.stage_key, d.environment, d.sha, d.plan_hash, d.rules, d.state, d.reason, d.opened_at, \
    d.expires_at, d.decided_at, s.status AS stage_status, s.started_at, s.finished_at, \
    u.name AS triggered_by";
const DEPLOY_FROM: &str = "FROM deployments d JOIN stages s ON s.id = d.stage_id \
    JOIN runs r ON r.id = d.run_id LEFT JOIN users u ON u.id = r.triggered_by";

fn deployment(r: &sqlx::any::AnyRow) -> Result<Deployment> {
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
fn stage_subject(run: &Run, stage: &str) -> String {
    format!("run:{}/{stage}", run.number)
}

impl Store {
    /// The gate of each of `stages` (same order; `None` for a stage without one), read
    /// inside the reconciling transaction. A pending request past its timeout is
    /// decided here, so a gate's timeout holds whoever looks first (the gate worker or
    /// a vote) and across restarts.
    pub(crate) async fn gates_tx(
        &self,
        tx: &mut Tx,
        run: &Run,
        stages: &[Stage],
    ) -> Result<Vec<Option<Gate>>> {
        let targets: Vec<Option<(String, Option<YamlApproval>)>> =
            stages.iter().map(|s| deploy_target(&s.spec)).collect();
        if targets.iter().all(Option::is_none) {
            return Ok(vec![None; stages.len()]);
        }
        let sql = format!("SELECT {DEPLOY_COLS} {DEPLOY_FROM} WHERE d.run_id = $1");
        let mut by_stage: HashMap<i64, Deployment> = rows(
            &query(&sql).bind(run.id).fetch_all(&mut **tx).await?,
            deployment,
        )?
        .into_iter()
        .map(|d| (d.stage_id, d))
        .collect();
        let now = self.now_ms();
        let mut out = Vec::with_capacity(stages.len());
        for (stage, target) in stages.iter().zip(&targets) {
            let Some((env, _)) = target else {
                out.push(None);
                continue;
            };
            let Some(d) = by_stage.get_mut(&stage.id) else {
                out.push(Some(Gate::Closed));
                continue;
            };
            if d.state == GateState::Pending && d.expires_at.is_some_and(|at| at <= now) {
                self.time_out_tx(tx, run, d, now).await?;
            }
            let held = d.state == GateState::Approved
                && stage.status == StageStatus::Waiting
                && (now < d.opened_at + d.rules.wait_timer_ms
                    || self.environment_busy(tx, d, env).await?);
            out.push(Some(stage_gate(d.state, d.reason.as_deref(), held)));
        }
        Ok(out)
    }

    /// Whether another deployment to the environment has passed its gate and not
    /// finished (one deployment at a time).
    async fn environment_busy(&self, tx: &mut Tx, d: &Deployment, env: &str) -> Result<bool> {
        if self.dialect == super::Dialect::Postgres {
            // Two runs passing their gates at once must not both see a free environment.
            let key = i64::from_be_bytes(
                Sha256::digest(format!("env:{}:{env}", d.repo_id).as_bytes())[..8]
                    .try_into()
                    .unwrap_or([0; 8]),
            );
            query("SELECT pg_advisory_xact_lock($1)")
                .bind(key)
                .execute(&mut **tx)
                .await?;
        }
        let busy = query(
            "SELECT 1 FROM deployments d JOIN stages s ON s.id = d.stage_id \
             WHERE d.repo_id = $1 AND d.environment = $2 AND d.id <> $3 \
             AND s.status IN ('queued', 'running') LIMIT 1",
        )
        .bind(d.repo_id)
        .bind(env)
        .bind(d.id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some();
        Ok(busy)
    }

    async fn time_out_tx(
        &self,
        tx: &mut Tx,
        run: &Run,
        d: &mut Deployment,
        now: i64,
    ) -> Result<()> {
        let approvals = d
            .votes_count(tx)
            .await
            .map_err(|e| Error::Corrupt(e.to_string()))?;
        let reason = format!(
            "no decision within the approval timeout ({approvals} of {} approvals)",
            d.rules.required
        );
        self.decide_tx(tx, d, GateState::TimedOut, &reason, now)
            .await?;
        let entry = NewAudit::new(
            "system",
            action::APPROVAL_TIMEOUT,
            stage_subject(run, &d.stage),
        )
        .repo(Some(run.repo_id))
        .detail(json!({ "environment": d.environment, "reason": reason }));
        self.append_audit_tx(tx, &entry).await?;
        Ok(())
    }

    /// Sets a deployment's state (from pending or approved).
    async fn decide_tx(
        &self,
        tx: &mut Tx,
        d: &mut Deployment,
        state: GateState,
        reason: &str,
        now: i64,
    ) -> Result<()> {
        query(
            "UPDATE deployments SET state = $2, reason = $3, decided_at = $4 \
             WHERE id = $1 AND state IN ('pending', 'approved')",
        )
        .bind(d.id)
        .bind(state.as_str())
        .bind(reason)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        d.state = state;
        d.reason = Some(reason.to_string());
        d.decided_at = Some(now);
        Ok(())
    }

    /// Opens the gates of `stages` (their needs have succeeded): the environment's
    /// rules raised by the YAML's, fixed in the row; refused at once when the run's ref
    /// may not deploy there; approved at once when nobody needs to approve. In
    /// `supersede` environments the deployments still waiting at the gate give way.
    pub(crate) async fn open_gates_tx(
        &self,
        tx: &mut Tx,
        run: &Run,
        stages: &[&Stage],
    ) -> Result<()> {
        let now = self.now_ms();
        let hash = plan_hash(run);
        for stage in stages {
            let Some((env, yaml)) = deploy_target(&stage.spec) else {
                continue;
            };
            let rules = self.environment_rules_tx(tx, run.repo_id, &env).await?;
            let (gate, lowered) = gate_rules(&rules, yaml.as_ref(), &env);
            let subject = stage_subject(run, &stage.key);
            let audit = |what: &str, detail: serde_json::Value| {
                NewAudit::new("system", what, subject.clone())
                    .repo(Some(run.repo_id))
                    .detail(detail)
            };
            let (state, reason, expires_at) = match ref_allowed(&rules.refs, run, &env) {
                Err(why) => (GateState::Refused, Some(why), None),
                Ok(()) if gate.required == 0 => (GateState::Approved, None, None),
                Ok(()) => (
                    GateState::Pending,
                    None,
                    gate.approval_timeout_ms.map(|t| now + t),
                ),
            };
            query(
                "INSERT INTO deployments (repo_id, run_id, stage_id, environment, sha, plan_hash, \
                 rules, state, reason, opened_at, expires_at, decided_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (stage_id) DO NOTHING",
            )
            .bind(run.repo_id)
            .bind(run.id)
            .bind(stage.id)
            .bind(&env)
            .bind(&run.sha)
            .bind(&hash)
            .bind(json_text(&gate))
            .bind(state.as_str())
            .bind(&reason)
            .bind(now)
            .bind(expires_at)
            .bind((state != GateState::Pending).then_some(now))
            .execute(&mut **tx)
            .await?;
            if let Some(note) = &lowered {
                let e = audit(
                    action::APPROVAL_LOWERING_REFUSED,
                    json!({ "environment": env, "reason": note }),
                );
                self.append_audit_tx(tx, &e).await?;
            }
            match state {
                GateState::Refused => {
                    let e = audit(
                        action::DEPLOY_REFUSED,
                        json!({ "environment": env, "reason": reason }),
                    );
                    self.append_audit_tx(tx, &e).await?;
                }
                GateState::Pending => {
                    let e = audit(
                        action::APPROVAL_REQUEST,
                        json!({
                            "environment": env, "sha": run.sha, "plan_hash": hash,
                            "required": gate.required, "expires_at": expires_at,
                            "note": lowered,
                        }),
                    );
                    self.append_audit_tx(tx, &e).await?;
                }
                _ => {}
            }
            if state != GateState::Refused && gate.concurrency == Concurrency::Supersede {
                self.supersede_waiting_tx(
                    tx,
                    run,
                    &env,
                    &format!("superseded by run #{}", run.number),
                )
                .await?;
            }
        }
        Ok(())
    }

    /// The rules of `env` (an undefined environment has the defaults: unprotected).
    async fn environment_rules_tx(
        &self,
        tx: &mut Tx,
        repo: i64,
        env: &str,
    ) -> Result<EnvironmentRules> {
        let sql = format!(
            "SELECT {} FROM environments WHERE repo_id = $1 AND name = $2",
            super::environments::ENV_COLS
        );
        let row = query(&sql)
            .bind(repo)
            .bind(env)
            .fetch_optional(&mut **tx)
            .await?;
        Ok(match row {
            Some(row) => super::environments::decode(&row)?.rules,
            None => EnvironmentRules::default(),
        })
    }

    /// Supersedes the deployments to `env` of the run's repository that are still at
    /// their gate (pending, or approved and waiting), except the run's own. Their runs
    /// are reconciled by the gate worker.
    async fn supersede_waiting_tx(
        &self,
        tx: &mut Tx,
        run: &Run,
        env: &str,
        reason: &str,
    ) -> Result<u64> {
        let ids: Vec<(i64, i64, String)> = rows(
            &query(
                "SELECT d.id, r.number, s.stage_key FROM deployments d \
                 JOIN stages s ON s.id = d.stage_id JOIN runs r ON r.id = d.run_id \
                 WHERE d.repo_id = $1 AND d.environment = $2 AND d.run_id <> $3 \
                 AND d.state IN ('pending', 'approved') AND s.status = 'waiting' \
                 AND r.number < $4",
            )
            .bind(run.repo_id)
            .bind(env)
            .bind(run.id)
            .bind(run.number)
            .fetch_all(&mut **tx)
            .await?,
            |r| Ok((r.int("id")?, r.int("number")?, r.text("stage_key")?)),
        )?;
        let now = self.now_ms();
        for (id, number, stage) in &ids {
            query(
                "UPDATE deployments SET state = 'superseded', reason = $2, decided_at = $3 \
                 WHERE id = $1 AND state IN ('pending', 'approved')",
            )
            .bind(id)
            .bind(reason)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            let e = NewAudit::new(
                "system",
                action::APPROVAL_SUPERSEDED,
                format!("run:{number}/{stage}"),
            )
            .repo(Some(run.repo_id))
            .detail(json!({ "environment": env, "reason": reason }));
            self.append_audit_tx(tx, &e).await?;
        }
        Ok(ids.len() as u64)
    }

    /// A newer push to `branch`: pending approval requests of older runs of the branch
    /// are superseded where the environment says so (the default). Returns how many.
    pub async fn supersede_gates_on_push(&self, newer: &Run) -> Result<u64> {
        let Some(branch) = newer.branch.as_deref() else {
            return Ok(0);
        };
        let mut tx = self.begin().await?;
        let found = rows(
            &query(
                "SELECT d.id, d.rules, d.environment, r.number, s.stage_key FROM deployments d \
                 JOIN runs r ON r.id = d.run_id JOIN stages s ON s.id = d.stage_id \
                 WHERE d.repo_id = $1 AND r.branch = $2 AND r.event = $3 AND r.number < $4 \
                 AND d.state = 'pending' AND s.status = 'waiting'",
            )
            .bind(newer.repo_id)
            .bind(branch)
            .bind(newer.event.as_str())
            .bind(newer.number)
            .fetch_all(&mut *tx)
            .await?,
            |r| {
                Ok((
                    r.int("id")?,
                    r.json::<GateRules>("rules")?,
                    r.text("environment")?,
                    r.int("number")?,
                    r.text("stage_key")?,
                ))
            },
        )?;
        let reason = format!(
            "superseded by run #{} (a newer push to {branch}, {})",
            newer.number,
            &newer.sha[..newer.sha.len().min(12)]
        );
        let now = self.now_ms();
        let mut n = 0;
        for (id, rules, env, number, stage) in found {
            if !rules.supersede_on_push {
                continue;
            }
            query(
                "UPDATE deployments SET state = 'superseded', reason = $2, decided_at = $3 \
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(&reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let e = NewAudit::new(
                "system",
                action::APPROVAL_SUPERSEDED,
                format!("run:{number}/{stage}"),
            )
            .repo(Some(newer.repo_id))
            .detail(json!({ "environment": env, "reason": reason }));
            self.append_audit_tx(&mut tx, &e).await?;
            n += 1;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Marks the gates of stages that ended without passing them (the run was
    /// cancelled or failed elsewhere) as cancelled.
    pub(crate) async fn close_gate_tx(&self, tx: &mut Tx, stage: i64, reason: &str) -> Result<()> {
        query(
            "UPDATE deployments SET state = 'cancelled', reason = COALESCE(reason, $2), \
             decided_at = $3 WHERE stage_id = $1 AND state IN ('pending', 'approved') \
             AND NOT EXISTS (SELECT 1 FROM stages s WHERE s.id = $1 AND s.started_at IS NOT NULL)",
        )
        .bind(stage)
        .bind(reason)
        .bind(self.now_ms())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

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

    /// Records a vote on the gate of `stage` of `run` and applies it: one rejection
    /// rejects, `required` distinct approvals approve; the run is reconciled in the
    /// same transaction. Refused (`Error::Refused`, with an audit entry that is kept)
    /// when the voter is not eligible, voted already, or the request is no longer open.
    pub async fn vote(&self, run: RunId, stage: &str, v: NewVote<'_>) -> Result<Deployment> {
        let mut tx = self.begin().await?;
        let run = self.lock_run(&mut tx, run).await?;
        let actor = format!("user:{}", v.voter.name);
        let sql =
            format!("SELECT {DEPLOY_COLS} {DEPLOY_FROM} WHERE d.run_id = $1 AND s.stage_key = $2");
        let found = query(&sql)
            .bind(run.id)
            .bind(stage)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(deployment)
            .transpose()?;
        let Some(mut d) = found else {
            let exists = query("SELECT status FROM stages WHERE run_id = $1 AND stage_key = $2")
                .bind(run.id)
                .bind(stage)
                .fetch_optional(&mut *tx)
                .await?;
            return Err(match exists {
                None => Error::NotFound(format!("stage `{stage}` in run #{}", run.number)),
                Some(_) => Error::Conflict(format!(
                    "stage `{stage}` of run #{} is not waiting for approval",
                    run.number
                )),
            });
        };
        let subject = stage_subject(&run, stage);
        let now = self.now_ms();
        if d.state == GateState::Pending && d.expires_at.is_some_and(|at| at <= now) {
            self.time_out_tx(&mut tx, &run, &mut d, now).await?;
            self.reconcile_tx(&mut tx, &run).await?;
        }
        let refusal = if !d.state.open() {
            let why = d.reason.clone().unwrap_or_default();
            Some(match d.state {
                GateState::Approved => "the deployment is already approved".to_string(),
                GateState::TimedOut => format!("the approval request timed out: {why}"),
                GateState::Superseded => format!("the approval request was {why}"),
                GateState::Rejected => format!("the deployment was already {why}"),
                GateState::Cancelled => format!("the deployment was cancelled: {why}"),
                _ => format!("the deployment is {}: {why}", d.state.as_str()),
            })
        } else if run.status.is_final() {
            Some(format!("run #{} is {}", run.number, run.status))
        } else if let Some(sha) = v.sha.filter(|s| !d.sha.starts_with(*s) || s.is_empty()) {
            Some(format!(
                "the deployment is of commit {}, not {sha}: approvals are bound to the commit",
                d.sha
            ))
        } else {
            let people = self.run_people_tx(&mut tx, &run).await?;
            let voter = Voter {
                id: v.voter.id,
                name: &v.voter.name,
                role: v.role,
            };
            match may_vote(&d.rules, voter, &people) {
                Err(why) => Some(why),
                Ok(()) => {
                    let again = query(
                        "SELECT decision FROM deployment_votes WHERE deployment_id = $1 AND user_id = $2",
                    )
                    .bind(d.id)
                    .bind(v.voter.id)
                    .fetch_optional(&mut *tx)
                    .await?;
                    again.map(|_| {
                        format!(
                            "`{}` has already voted on this deployment; each person counts once",
                            v.voter.name
                        )
                    })
                }
            }
        };
        if let Some(why) = refusal {
            let e = NewAudit::new(&actor, action::VOTE_REFUSED, subject)
                .repo(Some(run.repo_id))
                .detail(json!({
                    "environment": d.environment, "decision": v.decision.as_str(),
                    "reason": why,
                }));
            self.append_audit_tx(&mut tx, &e).await?;
            tx.commit().await?;
            return Err(Error::Refused(why));
        }
        query(
            "INSERT INTO deployment_votes (deployment_id, user_id, decision, comment, sha, \
             plan_hash, at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(d.id)
        .bind(v.voter.id)
        .bind(v.decision.as_str())
        .bind(v.comment)
        .bind(&d.sha)
        .bind(&d.plan_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let what = match v.decision {
            Decision::Approve => action::VOTE_APPROVE,
            Decision::Reject => action::VOTE_REJECT,
        };
        let e = NewAudit::new(&actor, what, subject.clone())
            .repo(Some(run.repo_id))
            .detail(json!({
                "environment": d.environment, "comment": v.comment, "sha": d.sha,
                "plan_hash": d.plan_hash,
            }));
        self.append_audit_tx(&mut tx, &e).await?;
        let approvers: Vec<String> = rows(
            &query(
                "SELECT u.name FROM deployment_votes v JOIN users u ON u.id = v.user_id \
                 WHERE v.deployment_id = $1 AND v.decision = 'approve' ORDER BY v.id",
            )
            .bind(d.id)
            .fetch_all(&mut *tx)
            .await?,
            |r| r.text("name"),
        )?;
        let decided = match v.decision {
            Decision::Reject => Some((
                GateState::Rejected,
                action::DEPLOY_REJECTED,
                if v.comment.is_empty() {
                    format!("rejected by {}", v.voter.name)
                } else {
                    format!("rejected by {}: {}", v.voter.name, v.comment)
                },
            )),
            Decision::Approve if approvers.len() as u32 >= d.rules.required => Some((
                GateState::Approved,
                action::DEPLOY_APPROVED,
                format!("approved by {}", approvers.join(", ")),
            )),
            Decision::Approve => None,
        };
        if let Some((state, what, reason)) = decided {
            self.decide_tx(&mut tx, &mut d, state, &reason, now).await?;
            let e = NewAudit::new(&actor, what, subject)
                .repo(Some(run.repo_id))
                .detail(json!({
                    "environment": d.environment, "sha": d.sha, "approvers": approvers,
                    "reason": reason,
                }));
            self.append_audit_tx(&mut tx, &e).await?;
        }
        self.reconcile_tx(&mut tx, &run).await?;
        tx.commit().await?;
        self.get_deployment(d.id).await
    }

    /// Who a run is attributed to, as linked identities say: the user whose token
    /// triggered it, the pusher's account, and the commit author's account or email.
    async fn run_people_tx(&self, tx: &mut Tx, run: &Run) -> Result<RunPeople> {
        let forge = query("SELECT forge FROM repos WHERE id = $1")
            .bind(run.repo_id)
            .fetch_one(&mut **tx)
            .await?
            .parsed::<ForgeKind>("forge")?;
        let mut lookup = async |forge: &str, login: &str| -> Result<Option<UserId>> {
            query("SELECT user_id FROM identities WHERE forge = $1 AND login = $2")
                .bind(forge)
                .bind(login)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.int("user_id"))
                .transpose()
        };
        let pusher = match run.pusher.as_deref().and_then(|p| p.split_once(':')) {
            Some((f, login)) => lookup(f, login).await?,
            None => None,
        };
        // The author string is never proof of anything: it is only used to refuse.
        let author = match run.author.rsplit_once('<') {
            Some((_, email)) => lookup("git", email.trim_end_matches('>').trim()).await?,
            None if !run.author.is_empty() => lookup(forge.as_str(), run.author.trim()).await?,
            None => None,
        };
        Ok(RunPeople {
            triggered_by: run.triggered_by,
            pusher,
            author,
        })
    }

    /// One deployment with its votes and images.
    pub async fn get_deployment(&self, id: i64) -> Result<Deployment> {
        let sql = format!("SELECT {DEPLOY_COLS} {DEPLOY_FROM} WHERE d.id = $1");
        let row = query(&sql).bind(id).fetch_optional(&self.read).await?;
        let d = row
            .as_ref()
            .map(deployment)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("deployment {id}")))?;
        Ok(self.with_details(vec![d]).await?.remove(0))
    }

    /// The deployments of a run (its deploy stages that reached their gate).
    pub async fn run_deployments(&self, run: RunId) -> Result<Vec<Deployment>> {
        let sql = format!("SELECT {DEPLOY_COLS} {DEPLOY_FROM} WHERE d.run_id = $1 ORDER BY d.id");
        let ds = rows(
            &query(&sql).bind(run).fetch_all(&self.read).await?,
            deployment,
        )?;
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
            deployment,
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
        let ds = rows(&query(&sql).fetch_all(&self.read).await?, deployment)?;
        self.with_details(ds).await
    }

    /// Who a run is attributed to (for the inbox's "may I approve?").
    pub async fn run_people(&self, run: &Run) -> Result<RunPeople> {
        let mut tx = self.read.begin().await?;
        let people = self.run_people_tx(&mut tx, run).await;
        tx.rollback().await?;
        people
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
    /// Approvals recorded so far.
    async fn votes_count(&self, tx: &mut Tx) -> Result<i64, sqlx::Error> {
        let r = query(
            "SELECT COUNT(*) AS n FROM deployment_votes WHERE deployment_id = $1 AND decision = 'approve'",
        )
        .bind(self.id)
        .fetch_one(&mut **tx)
        .await?;
        sqlx::Row::try_get(&r, "n")
    }

    /// Whether the stage deployed and succeeded: the version went live.
    pub fn went_live(&self) -> bool {
        self.stage_status == StageStatus::Success && self.started_at.is_some()
    }
}
