//! The rollout controller's persisted state: one row per rollout stage (strategy,
//! current step, per-step memory, requests from people), a lease so that one replica at
//! a time drives it, and every analysis measurement.
//!
//! Every write from the controller is conditional on its lease (`lease_owner`), and a
//! step advance on the step it read: a replica that lost its lease, or a tick re-run
//! after a crash, changes nothing.

use pipelines::Rollout as PlannedRollout;
use serde::Serialize;
use serde_json::Value;
use sqlx::query;

use super::events::emit;
use super::row::{RowExt, json_text, rows};
use super::{Error, Result, RunId, Stage, StageId, StageStatus, Store};

/// Where a rollout is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RolloutPhase {
    Progressing,
    /// Waiting for a person (`pause: {}`, inconclusive analysis).
    Paused,
    /// Traffic is going back to stable; the new version is being removed.
    RollingBack,
    Succeeded,
    /// Rolled back after a failed analysis or a cluster error.
    Failed,
    /// Rolled back because a person aborted it or the run was cancelled.
    Aborted,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "progressing",
            RolloutPhase::Paused => "paused",
            RolloutPhase::RollingBack => "rolling_back",
            RolloutPhase::Succeeded => "succeeded",
            RolloutPhase::Failed => "failed",
            RolloutPhase::Aborted => "aborted",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "progressing" => RolloutPhase::Progressing,
            "paused" => RolloutPhase::Paused,
            "rolling_back" => RolloutPhase::RollingBack,
            "succeeded" => RolloutPhase::Succeeded,
            "failed" => RolloutPhase::Failed,
            "aborted" => RolloutPhase::Aborted,
            other => return Err(Error::Corrupt(format!("rollout phase {other:?}"))),
        })
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutPhase::Succeeded | RolloutPhase::Failed | RolloutPhase::Aborted
        )
    }
}

/// A person's request to move a paused (or any) rollout on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromoteRequest {
    /// Past the current pause or inconclusive analysis.
    Step,
    /// Skip every remaining step: straight to the new version everywhere.
    Full,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RolloutRecord {
    pub id: i64,
    pub stage_id: StageId,
    pub run_id: RunId,
    pub repo_id: i64,
    pub environment: String,
    pub namespace: String,
    pub deployment: String,
    #[schema(value_type = Object)]
    pub spec: PlannedRollout<String>,
    /// The new version, by digest.
    pub image: String,
    /// What the Deployment ran when the rollout began.
    pub stable_image: Option<String>,
    pub phase: RolloutPhase,
    pub step: i64,
    pub step_started_at: i64,
    #[schema(value_type = Object)]
    pub memo: Value,
    pub message: Option<String>,
    pub promote_request: Option<PromoteRequest>,
    pub abort_requested: bool,
    /// Who asked for the abort (`user:<name>`, `token:<name>`).
    pub aborted_by: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub finished_at: Option<i64>,
}

/// One analysis measurement of one check.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Measurement {
    pub step: i64,
    /// `step`, `background`, `pre_promotion` or `post_promotion`.
    pub analysis: String,
    pub seq: i64,
    pub check: String,
    /// `pass`, `fail`, `inconclusive` or `error`.
    pub outcome: String,
    pub value: Option<String>,
    pub detail: String,
    pub at: i64,
}

/// What the controller starts a rollout with.
pub struct NewRollout {
    pub environment: String,
    pub namespace: String,
    pub spec: PlannedRollout<String>,
    pub image: String,
}

const COLS: &str = "id, stage_id, run_id, repo_id, environment, namespace, deployment, spec, \
    image, stable_image, phase, step, step_started_at, memo, message, promote_request, \
    abort_requested, aborted_by, created_at, updated_at, finished_at";

fn decode(r: &sqlx::any::AnyRow) -> Result<RolloutRecord> {
    Ok(RolloutRecord {
        id: r.int("id")?,
        stage_id: r.int("stage_id")?,
        run_id: r.int("run_id")?,
        repo_id: r.int("repo_id")?,
        environment: r.text("environment")?,
        namespace: r.text("namespace")?,
        deployment: r.text("deployment")?,
        spec: r.json("spec")?,
        image: r.text("image")?,
        stable_image: r.opt_text("stable_image")?,
        phase: RolloutPhase::parse(&r.text("phase")?)?,
        step: r.int("step")?,
        step_started_at: r.int("step_started_at")?,
        memo: r.json("memo")?,
        message: r.opt_text("message")?,
        promote_request: match r.opt_text("promote_request")?.as_deref() {
            None => None,
            Some("step") => Some(PromoteRequest::Step),
            Some("full") => Some(PromoteRequest::Full),
            Some(o) => return Err(Error::Corrupt(format!("promote_request {o:?}"))),
        },
        abort_requested: r.flag("abort_requested")?,
        aborted_by: r.opt_text("aborted_by")?,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
        finished_at: r.opt_int("finished_at")?,
    })
}

fn decode_measurement(r: &sqlx::any::AnyRow) -> Result<Measurement> {
    Ok(Measurement {
        step: r.int("step")?,
        analysis: r.text("analysis")?,
        seq: r.int("seq")?,
        check: r.text("check_name")?,
        outcome: r.text("outcome")?,
        value: r.opt_text("value")?,
        detail: r.text("detail")?,
        at: r.int("at")?,
    })
}

impl Store {
    /// Rollout stages that are queued in running runs (their gates passed): the
    /// controller starts each with [`Store::start_rollout`].
    pub async fn queued_rollout_stages(&self, limit: i64) -> Result<Vec<Stage>> {
        let sql = format!(
            "SELECT {} FROM stages s WHERE s.status = 'queued' AND s.rollout \
             AND EXISTS (SELECT 1 FROM runs r WHERE r.id = s.run_id AND r.status = 'running') \
             ORDER BY s.queued_at, s.id LIMIT $1",
            super::row::STAGE_COLS
                .split(", ")
                .map(|c| format!("s.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        rows(
            &query(&sql).bind(limit).fetch_all(&self.read).await?,
            super::row::stage,
        )
    }

    /// Takes a queued rollout stage: it becomes `running` (no runner, no runner lease)
    /// and its rollout row is created, leased to `owner`. `None` if the stage is no
    /// longer queued (another replica took it, or the run ended).
    pub async fn start_rollout(
        &self,
        stage: StageId,
        owner: &str,
        lease_ms: i64,
        new: &NewRollout,
    ) -> Result<Option<RolloutRecord>> {
        let mut tx = self.begin().await?;
        let run_id = match query("SELECT run_id FROM stages WHERE id = $1")
            .bind(stage)
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(r) => r.int("run_id")?,
            None => return Err(Error::NotFound(format!("stage {stage}"))),
        };
        let run = self.lock_run(&mut tx, run_id).await?;
        let now = self.now_ms();
        let taken = query(
            "UPDATE stages SET status = 'running', started_at = $2, finished_at = NULL \
             WHERE id = $1 AND status = 'queued' AND rollout",
        )
        .bind(stage)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if taken == 0 || run.status.is_final() {
            return Ok(None);
        }
        emit(&mut tx, run.id, Some(stage), "running", now).await?;
        query("UPDATE steps SET status = 'running', started_at = $2 WHERE stage_id = $1")
            .bind(stage)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let sql = format!(
            "INSERT INTO rollouts (stage_id, run_id, repo_id, environment, namespace, \
             deployment, spec, image, phase, step, step_started_at, memo, lease_owner, \
             lease_until, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
             'progressing', 0, $9, '{{}}', $10, $11, $9, $9) RETURNING {COLS}"
        );
        let row = query(&sql)
            .bind(stage)
            .bind(run.id)
            .bind(run.repo_id)
            .bind(&new.environment)
            .bind(&new.namespace)
            .bind(&new.spec.target.deployment)
            .bind(json_text(&new.spec))
            .bind(&new.image)
            .bind(now)
            .bind(owner)
            .bind(now + lease_ms)
            .fetch_one(&mut *tx)
            .await?;
        let rollout = decode(&row)?;
        tx.commit().await?;
        Ok(Some(rollout))
    }

    /// Leases to `owner` every unfinished rollout that is free (never leased, its lease
    /// expired) or already its own, until `now + lease_ms`.
    pub async fn lease_rollouts(&self, owner: &str, lease_ms: i64) -> Result<Vec<RolloutRecord>> {
        let now = self.now_ms();
        let sql = format!(
            "UPDATE rollouts SET lease_owner = $1, lease_until = $2 \
             WHERE finished_at IS NULL AND (lease_owner = $1 OR lease_owner IS NULL \
             OR lease_until < $3) RETURNING {COLS}"
        );
        let mut out = rows(
            &query(&sql)
                .bind(owner)
                .bind(now + lease_ms)
                .bind(now)
                .fetch_all(&self.write)
                .await?,
            decode,
        )?;
        out.sort_by_key(|r| r.id);
        Ok(out)
    }

    /// Writes the rollout's step, memory, phase and message, if `owner` still holds it
    /// and it is still at `at_step` (`false` otherwise: nothing written). A new step
    /// starts its clock now.
    pub async fn save_rollout(&self, r: &RolloutRecord, owner: &str, at_step: i64) -> Result<bool> {
        let now = self.now_ms();
        let started = if r.step != at_step {
            now
        } else {
            r.step_started_at
        };
        let n = query(
            "UPDATE rollouts SET step = $3, step_started_at = $4, memo = $5, phase = $6, \
             message = $7, stable_image = $8, updated_at = $9 \
             WHERE id = $1 AND lease_owner = $2 AND step = $10 AND finished_at IS NULL",
        )
        .bind(r.id)
        .bind(owner)
        .bind(r.step)
        .bind(started)
        .bind(json_text(&r.memo))
        .bind(r.phase.as_str())
        .bind(r.message.as_deref())
        .bind(r.stable_image.as_deref())
        .bind(now)
        .bind(at_step)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Takes the pending promote request (it is acted on once).
    pub async fn take_promote_request(
        &self,
        id: i64,
        owner: &str,
    ) -> Result<Option<PromoteRequest>> {
        let Some(was) = query(
            "SELECT promote_request FROM rollouts WHERE id = $1 AND promote_request IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&self.write)
        .await?
        else {
            return Ok(None);
        };
        let was = was.text("promote_request")?;
        let n = query(
            "UPDATE rollouts SET promote_request = NULL WHERE id = $1 AND lease_owner = $2 \
             AND promote_request = $3",
        )
        .bind(id)
        .bind(owner)
        .bind(&was)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(match (n, was.as_str()) {
            (1, "full") => Some(PromoteRequest::Full),
            (1, _) => Some(PromoteRequest::Step),
            _ => None,
        })
    }

    /// Records a person's promote request; `false` if the rollout has finished.
    pub async fn request_promote(&self, stage: StageId, req: PromoteRequest) -> Result<bool> {
        let v = match req {
            PromoteRequest::Step => "step",
            PromoteRequest::Full => "full",
        };
        let n = query(
            "UPDATE rollouts SET promote_request = $2 WHERE stage_id = $1 AND finished_at IS NULL",
        )
        .bind(stage)
        .bind(v)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Records a person's abort; `false` if the rollout has finished.
    pub async fn request_abort(&self, stage: StageId, by: &str) -> Result<bool> {
        let n = query(
            "UPDATE rollouts SET abort_requested = TRUE, aborted_by = $2 WHERE stage_id = $1 \
             AND finished_at IS NULL",
        )
        .bind(stage)
        .bind(by)
        .execute(&self.write)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    pub async fn rollout_of_stage(&self, stage: StageId) -> Result<Option<RolloutRecord>> {
        let sql = format!("SELECT {COLS} FROM rollouts WHERE stage_id = $1");
        query(&sql)
            .bind(stage)
            .fetch_optional(&self.read)
            .await?
            .map(|r| decode(&r))
            .transpose()
    }

    /// A run's rollouts, by stage (for the run page: one query, not one per stage).
    pub async fn rollouts_of_run(&self, run: RunId) -> Result<Vec<RolloutRecord>> {
        let sql = format!("SELECT {COLS} FROM rollouts WHERE run_id = $1 ORDER BY stage_id");
        rows(&query(&sql).bind(run).fetch_all(&self.read).await?, decode)
    }

    /// The newest `limit` rollouts to an environment of a repository, newest first
    /// (for the environment page: the ones still going, or the last one).
    pub async fn rollouts_of_environment(
        &self,
        repo: i64,
        environment: &str,
        limit: i64,
    ) -> Result<Vec<RolloutRecord>> {
        let sql = format!(
            "SELECT {COLS} FROM rollouts WHERE repo_id = $1 AND environment = $2 \
             ORDER BY id DESC LIMIT $3"
        );
        let rs = query(&sql)
            .bind(repo)
            .bind(environment)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows(&rs, decode)
    }

    /// Stores a measurement once: a tick re-run after a crash with the same
    /// (step, analysis, seq, check) keeps the first.
    pub async fn record_measurement(&self, rollout: i64, m: &Measurement) -> Result<()> {
        let conflict = " ON CONFLICT (rollout_id, step, analysis, seq, check_name) DO NOTHING";
        let sql = format!(
            "INSERT INTO rollout_measurements (rollout_id, step, analysis, seq, check_name, \
             outcome, value, detail, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9){conflict}"
        );
        query(&sql)
            .bind(rollout)
            .bind(m.step)
            .bind(&m.analysis)
            .bind(m.seq)
            .bind(&m.check)
            .bind(&m.outcome)
            .bind(m.value.as_deref())
            .bind(&m.detail)
            .bind(m.at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// A rollout's measurements, oldest first.
    pub async fn measurements(&self, rollout: i64) -> Result<Vec<Measurement>> {
        rows(
            &query(
                "SELECT step, analysis, seq, check_name, outcome, value, detail, at \
                 FROM rollout_measurements WHERE rollout_id = $1 ORDER BY at, id",
            )
            .bind(rollout)
            .fetch_all(&self.read)
            .await?,
            decode_measurement,
        )
    }

    /// Ends a rollout and its stage in one transaction, if `owner` still holds it: the
    /// stage finishes as `status` (no retry: a rollout rolled back on purpose) and the
    /// run moves on. `false` if the lease was lost or it had already ended.
    pub async fn finish_rollout(
        &self,
        r: &RolloutRecord,
        owner: &str,
        status: StageStatus,
        reason: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let run = self.lock_run(&mut tx, r.run_id).await?;
        let now = self.now_ms();
        let n = query(
            "UPDATE rollouts SET phase = $3, message = $4, memo = $5, finished_at = $6, \
             updated_at = $6, lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2 AND finished_at IS NULL",
        )
        .bind(r.id)
        .bind(owner)
        .bind(r.phase.as_str())
        .bind(r.message.as_deref())
        .bind(json_text(&r.memo))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        // The stage's one step (`rollout`, the controller's log) ends as the stage does:
        // left running, `settle` would close it as a step whose runner never reported
        // (`error`), and a rollout that succeeded would show a failed step.
        let step = match status {
            StageStatus::Success => "success",
            StageStatus::Cancelled => "cancelled",
            StageStatus::TimedOut => "timed_out",
            StageStatus::Error => "error",
            _ => "failure",
        };
        query(
            "UPDATE steps SET status = $2, finished_at = $3 WHERE stage_id = $1 \
             AND status = 'running'",
        )
        .bind(r.stage_id)
        .bind(step)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let sql = format!(
            "SELECT {} FROM stages WHERE id = $1 AND status = 'running'{}",
            super::row::STAGE_COLS,
            self.for_update()
        );
        if let Some(row) = query(&sql)
            .bind(r.stage_id)
            .fetch_optional(&mut *tx)
            .await?
        {
            let mut stage = super::row::stage(&row)?;
            // Never retried: see `runs::from_plan`.
            stage.max_attempts = stage.attempt;
            stage.infra_retry_used = true;
            self.settle(&mut tx, &run, &stage, status, reason).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Ends a queued rollout stage that cannot start (no image by digest, a broken
    /// stored spec) as `error` with `why`; the run moves on.
    pub async fn refuse_rollout(&self, stage: StageId, why: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let Some(row) = query("SELECT run_id FROM stages WHERE id = $1")
            .bind(stage)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(());
        };
        let run = self.lock_run(&mut tx, row.int("run_id")?).await?;
        let now = self.now_ms();
        let sql = format!(
            "UPDATE stages SET status = 'running', started_at = $2 WHERE id = $1 \
             AND status = 'queued' AND rollout RETURNING {}",
            super::row::STAGE_COLS
        );
        if let Some(row) = query(&sql)
            .bind(stage)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?
        {
            let mut stage = super::row::stage(&row)?;
            stage.max_attempts = stage.attempt;
            stage.infra_retry_used = true;
            self.settle(&mut tx, &run, &stage, StageStatus::Error, Some(why))
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
