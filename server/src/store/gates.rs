//! Environment gates inside the reconciling transaction: opening a deploy stage's gate
//! (refused, passed or pending, by [`crate::delivery::gate`]'s rules), its timeout, one
//! deployment at a time per environment, and superseding requests that a newer run or
//! push replaced. Every decision is audited in the transaction that makes it.

use std::collections::HashMap;

use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::query;

use super::audit::action;
use super::deployments::{
    DEPLOY_COLS, DEPLOY_FROM, Deployment, decode, deploy_target, plan_hash, stage_subject,
};
use super::row::{RowExt, json_text, rows};
use super::{NewAudit, Result, Run, Stage, StageStatus, Store, Tx};
use crate::delivery::gate::{
    Concurrency, EnvironmentRules, Gate, GateRules, GateState, YamlApproval, gate_rules,
    ref_allowed, stage_gate,
};

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
            decode,
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

    pub(super) async fn time_out_tx(
        &self,
        tx: &mut Tx,
        run: &Run,
        d: &mut Deployment,
        now: i64,
    ) -> Result<()> {
        let approvals = self.approvals_tx(tx, d).await?;
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
    pub(super) async fn decide_tx(
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

    /// Approvals recorded so far on a deployment.
    async fn approvals_tx(&self, tx: &mut Tx, d: &Deployment) -> Result<i64> {
        let r = query(
            "SELECT COUNT(*) AS n FROM deployment_votes WHERE deployment_id = $1 AND decision = 'approve'",
        )
        .bind(d.id)
        .fetch_one(&mut **tx)
        .await?;
        r.int("n")
    }
}
