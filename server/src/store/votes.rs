//! People's votes on deployments waiting at their gate: who may vote (the gate's rules,
//! [`crate::delivery::gate::may_vote`]), what a vote decides, and the refusals, which are
//! kept on the audit record even though the vote is not.

use serde_json::json;
use sqlx::query;

use super::audit::action;
use super::deployments::{DEPLOY_COLS, DEPLOY_FROM, Decision, Deployment, decode, stage_subject};
use super::row::{RowExt, rows};
use super::{Error, ForgeKind, NewAudit, Result, Role, Run, RunId, Store, Tx, User, UserId};
use crate::delivery::gate::{GateState, RunPeople, Voter, may_vote};

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

impl Store {
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
            .map(decode)
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

    /// Who a run is attributed to (for the inbox's "may I approve?").
    pub async fn run_people(&self, run: &Run) -> Result<RunPeople> {
        let mut tx = self.read.begin().await?;
        let people = self.run_people_tx(&mut tx, run).await;
        tx.rollback().await?;
        people
    }
}
