//! Stages and steps: the durable queue runners lease from.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rand::Rng;
use sqlx::query;

use super::events::emit;
use super::row::{
    RUNNER_COLS, RowExt, STAGE_COLS, STEP_COLS, json_text, rows, runner as runner_row,
    stage as stage_row, step as step_row,
};
use super::run_state::close_steps;
use super::{
    Dialect, Error, FinishReport, Lease, Limits, QueuedLabels, Result, Run, RunId, RunStatus,
    RunnerId, Settled, Stage, StageId, StageOutcome, StageResults, StageStatus, StageWithSteps,
    Step, StepId, StepStatus, Store, Tx, affected, duration_ms,
};

/// Key of the PostgreSQL advisory lock that makes "count running stages, then lease
/// one" atomic across replicas (see the module comment of `store`).
const LEASE_LOCK_KEY: i64 = 0x534c_4950_4c45_4153; // "SLIPLEAS"

/// The reason recorded when a runner stops renewing its lease.
pub const RUNNER_LOST: &str = "runner lost (lease expired)";

fn cap(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl Store {
    pub async fn get_stage(&self, id: StageId) -> Result<Stage> {
        let sql = format!("SELECT {STAGE_COLS} FROM stages WHERE id = $1");
        match query(&sql).bind(id).fetch_optional(&self.read).await? {
            Some(row) => stage_row(&row),
            None => Err(Error::NotFound(format!("stage {id}"))),
        }
    }

    /// A run's stages in plan order, each with its steps.
    pub async fn list_stages(&self, run: RunId) -> Result<Vec<StageWithSteps>> {
        let sql = format!("SELECT {STAGE_COLS} FROM stages WHERE run_id = $1 ORDER BY id");
        let stages = rows(
            &query(&sql).bind(run).fetch_all(&self.read).await?,
            stage_row,
        )?;
        let sql = format!(
            "SELECT {STEP_COLS} FROM steps WHERE stage_id IN \
             (SELECT id FROM stages WHERE run_id = $1) ORDER BY stage_id, idx"
        );
        let mut steps = rows(
            &query(&sql).bind(run).fetch_all(&self.read).await?,
            step_row,
        )?;
        let mut outputs: HashMap<StageId, BTreeMap<String, String>> = HashMap::new();
        for o in self.run_outputs(run).await? {
            outputs
                .entry(o.stage_id)
                .or_default()
                .insert(o.name, o.value);
        }
        Ok(stages
            .into_iter()
            .map(|stage| {
                let mine = steps.iter().take_while(|s| s.stage_id == stage.id).count();
                let steps = steps.drain(..mine).collect();
                let outputs = outputs.remove(&stage.id).unwrap_or_default();
                StageWithSteps {
                    stage,
                    steps,
                    outputs,
                    unroutable: None,
                }
            })
            .collect())
    }

    pub async fn list_steps(&self, stage: StageId) -> Result<Vec<Step>> {
        let sql = format!("SELECT {STEP_COLS} FROM steps WHERE stage_id = $1 ORDER BY idx");
        rows(
            &query(&sql).bind(stage).fetch_all(&self.read).await?,
            step_row,
        )
    }

    /// How many stages are `queued` and how many `running`, across all runs: cheap (an
    /// index on `status`), for the queue-depth gauges of `/metrics`.
    pub async fn stage_counts(&self) -> Result<(i64, i64)> {
        let rs = query(
            "SELECT status, COUNT(*) AS n FROM stages WHERE status IN ('queued', 'running') \
             GROUP BY status",
        )
        .fetch_all(&self.read)
        .await?;
        let (mut queued, mut running) = (0, 0);
        for r in &rs {
            match r.text("status")?.as_str() {
                "queued" => queued = r.int("n")?,
                _ => running = r.int("n")?,
            }
        }
        Ok((queued, running))
    }

    pub(crate) async fn stages_tx(&self, tx: &mut Tx, run: RunId) -> Result<Vec<Stage>> {
        let sql = format!("SELECT {STAGE_COLS} FROM stages WHERE run_id = $1 ORDER BY id");
        rows(
            &query(&sql).bind(run).fetch_all(&mut **tx).await?,
            stage_row,
        )
    }

    /// Leases to `runner` the oldest `queued` stage of a running run whose labels are
    /// all among the runner's and whose repository is in the runner's scope, if the limits allow another running stage in total, in
    /// its repository and on this runner (its registered capacity). The stage becomes
    /// `running` with a fresh random token valid for `lease_for`. No two callers —
    /// tasks or server replicas — ever get the same stage. `NotFound` if the runner is
    /// not registered.
    pub async fn lease_stage(
        &self,
        runner: RunnerId,
        lease_for: Duration,
        limits: &Limits,
    ) -> Result<Option<Lease>> {
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(LEASE_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
        }
        let sql = format!("SELECT {RUNNER_COLS} FROM runners WHERE id = $1");
        let me = match query(&sql).bind(runner).fetch_optional(&mut *tx).await? {
            Some(row) => runner_row(&row)?,
            None => return Err(Error::NotFound(format!("runner {runner}"))),
        };
        let running =
            query("SELECT COUNT(*) AS n FROM stages WHERE status = 'running' AND NOT rollout")
                .fetch_one(&mut *tx)
                .await?
                .int("n")?;
        if running >= cap(limits.global) {
            return Ok(None);
        }
        // Counted under the same lock as the lease below, so a runner never holds more
        // stages than it said it can run, however many lease requests it has open.
        let mine =
            query("SELECT COUNT(*) AS n FROM stages WHERE status = 'running' AND runner_id = $1")
                .bind(runner)
                .fetch_one(&mut *tx)
                .await?
                .int("n")?;
        if mine >= me.capacity {
            return Ok(None);
        }
        let sql = format!(
            "SELECT s.id FROM stages s JOIN runs r ON r.id = s.run_id \
             WHERE s.status = 'queued' AND r.status = 'running' AND NOT s.rollout \
             AND (SELECT COUNT(*) FROM stages c WHERE c.status = 'running' \
                  AND NOT c.rollout AND c.repo_id = s.repo_id) < $1 \
             AND {} AND {} \
             ORDER BY s.queued_at, s.id LIMIT 1{}",
            self.labels_subset("s.labels", "$2"),
            self.in_repo_scope("s.repo_id", "$3", "$4"),
            match self.dialect {
                Dialect::Postgres => " FOR UPDATE OF s SKIP LOCKED",
                Dialect::Sqlite => "",
            }
        );
        let Some(row) = query(&sql)
            .bind(cap(limits.per_repo))
            .bind(json_text(&me.labels))
            .bind(me.repos.owner_column())
            .bind(me.repos.repos_column())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(None);
        };
        let id = row.int("id")?;
        let token = format!("{:032x}", rand::thread_rng().r#gen::<u128>());
        let now = self.now_ms();
        let expires_at = now.saturating_add(duration_ms(lease_for));
        let sql = format!(
            "UPDATE stages SET status = 'running', runner_id = $2, lease_token = $3, \
             lease_expires_at = $4, started_at = $5, finished_at = NULL, waiting = NULL \
             WHERE id = $1 RETURNING {STAGE_COLS}"
        );
        let stage = stage_row(
            &query(&sql)
                .bind(id)
                .bind(runner)
                .bind(&token)
                .bind(expires_at)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?,
        )?;
        emit(&mut tx, stage.run_id, Some(id), "running", now).await?;
        let sql = format!("SELECT {STEP_COLS} FROM steps WHERE stage_id = $1 ORDER BY idx");
        let steps = rows(&query(&sql).bind(id).fetch_all(&mut *tx).await?, step_row)?;
        let sql = format!("SELECT {} FROM runs WHERE id = $1", super::row::RUN_COLS);
        let run = super::row::run(&query(&sql).bind(stage.run_id).fetch_one(&mut *tx).await?)?;
        tx.commit().await?;
        Ok(Some(Lease {
            token,
            expires_at,
            stage,
            steps,
            run,
        }))
    }

    /// Takes back a running stage for a restarted runner: the same stage and attempt,
    /// held by a runner of the same name (the one that left it running: Kubernetes
    /// pods are found again by the runner's name), in the caller's repository scope.
    /// The lease gets a new token — the old one, which was never stored anywhere but
    /// the dead runner, stops working — and a fresh expiry. `LeaseLost` when the stage
    /// has moved on (finished, re-queued after the lease expired, another attempt) or
    /// is another runner's.
    pub async fn resume_stage(
        &self,
        runner: RunnerId,
        stage: StageId,
        attempt: i64,
        lease_for: Duration,
    ) -> Result<Lease> {
        let mut tx = self.begin().await?;
        let sql = format!("SELECT {RUNNER_COLS} FROM runners WHERE id = $1");
        let me = match query(&sql).bind(runner).fetch_optional(&mut *tx).await? {
            Some(row) => runner_row(&row)?,
            None => return Err(Error::NotFound(format!("runner {runner}"))),
        };
        let sql = format!(
            "SELECT {STAGE_COLS} FROM stages WHERE id = $1 AND attempt = $2 \
             AND status = 'running' AND NOT rollout{}",
            self.for_update()
        );
        let Some(row) = query(&sql)
            .bind(stage)
            .bind(attempt)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(Error::LeaseLost);
        };
        let found = stage_row(&row)?;
        let holder = match found.runner_id {
            Some(id) => query("SELECT name FROM runners WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.text("name"))
                .transpose()?,
            None => None,
        };
        let sql = format!(
            "SELECT CASE WHEN {} THEN 1 ELSE 0 END AS ok",
            self.in_repo_scope("$1", "$2", "$3")
        );
        let in_scope = query(&sql)
            .bind(found.repo_id)
            .bind(me.repos.owner_column())
            .bind(me.repos.repos_column())
            .fetch_one(&mut *tx)
            .await?
            .int("ok")?
            == 1;
        if holder.as_deref() != Some(me.name.as_str()) || !in_scope {
            return Err(Error::LeaseLost);
        }
        let token = format!("{:032x}", rand::thread_rng().r#gen::<u128>());
        let expires_at = self.now_ms().saturating_add(duration_ms(lease_for));
        let sql = format!(
            "UPDATE stages SET runner_id = $2, lease_token = $3, lease_expires_at = $4 \
             WHERE id = $1 RETURNING {STAGE_COLS}"
        );
        let stage = stage_row(
            &query(&sql)
                .bind(stage)
                .bind(runner)
                .bind(&token)
                .bind(expires_at)
                .fetch_one(&mut *tx)
                .await?,
        )?;
        let sql = format!("SELECT {STEP_COLS} FROM steps WHERE stage_id = $1 ORDER BY idx");
        let steps = rows(
            &query(&sql).bind(stage.id).fetch_all(&mut *tx).await?,
            step_row,
        )?;
        let sql = format!("SELECT {} FROM runs WHERE id = $1", super::row::RUN_COLS);
        let run = super::row::run(&query(&sql).bind(stage.run_id).fetch_one(&mut *tx).await?)?;
        tx.commit().await?;
        Ok(Lease {
            token,
            expires_at,
            stage,
            steps,
            run,
        })
    }

    /// SQL that is true when every label in the JSON array `stage` (a column) is in the
    /// JSON array `runner` (a parameter): an empty array is in anything.
    fn labels_subset(&self, stage: &str, runner: &str) -> String {
        match self.dialect {
            Dialect::Postgres => format!("({stage})::jsonb <@ ({runner})::jsonb"),
            Dialect::Sqlite => format!(
                "NOT EXISTS (SELECT 1 FROM json_each({stage}) l \
                 WHERE l.value NOT IN (SELECT value FROM json_each({runner})))"
            ),
        }
    }

    /// SQL that is true when the repository `repo_id` (a column) is in the runner's
    /// scope: the parameters `owner` (NULL or an owner) and `repos` (NULL or a JSON
    /// array of `owner/name`), as stored by [`super::RepoScope`].
    fn in_repo_scope(&self, repo_id: &str, owner: &str, repos: &str) -> String {
        let names = match self.dialect {
            Dialect::Postgres => format!("SELECT jsonb_array_elements_text(({repos})::jsonb)"),
            Dialect::Sqlite => format!("SELECT value FROM json_each({repos})"),
        };
        format!(
            "EXISTS (SELECT 1 FROM repos rp WHERE rp.id = {repo_id} \
             AND ({owner} IS NULL OR substr(rp.name, 1, length({owner}) + 1) = {owner} || '/') \
             AND ({repos} IS NULL OR rp.name IN ({names})))"
        )
    }

    /// The labels of queued stages (the oldest `limit`), to find the ones no registered
    /// runner can take.
    pub async fn queued_stage_labels(&self, limit: usize) -> Result<Vec<QueuedLabels>> {
        let rs = query(
            "SELECT s.id, s.run_id, s.stage_key, s.labels, rp.name AS repo FROM stages s \
             JOIN repos rp ON rp.id = s.repo_id WHERE s.status = 'queued' \
             AND NOT s.rollout ORDER BY s.queued_at, s.id LIMIT $1",
        )
        .bind(cap(limit))
        .fetch_all(&self.read)
        .await?;
        rows(&rs, |r| {
            Ok(QueuedLabels {
                stage_id: r.int("id")?,
                run_id: r.int("run_id")?,
                key: r.text("stage_key")?,
                labels: r.json("labels")?,
                repo: r.text("repo")?,
            })
        })
    }

    /// Records how a leased stage ended, if `token` still holds the lease
    /// (`LeaseLost` otherwise). A failure (`failure`, `timed_out`, `error`) with
    /// attempts left is queued again instead; an infrastructure `error` gets one attempt
    /// beyond `max_attempts`. In the same transaction the run moves on: waiting stages
    /// are promoted or skipped and a run with nothing left gets its final status.
    pub async fn finish_stage(
        &self,
        stage: StageId,
        token: &str,
        outcome: StageOutcome,
    ) -> Result<Settled> {
        Ok(self
            .finish_stage_report(stage, token, outcome)
            .await?
            .settled)
    }

    /// [`Store::finish_stage`], also saying whether this call ended the run (and how):
    /// exactly one call ends a run, so callers can count finished runs without races.
    pub async fn finish_stage_report(
        &self,
        stage: StageId,
        token: &str,
        outcome: StageOutcome,
    ) -> Result<FinishReport> {
        self.finish_stage_with(stage, token, outcome, &StageResults::default())
            .await
    }

    /// [`Store::finish_stage_report`] that also stores what the stage produced
    /// (outputs, findings, the pushed image), replacing what an earlier attempt of the
    /// stage stored, in the same transaction: a stage is never finished without its
    /// results, nor results kept for a finish that did not happen. `Invalid` (nothing
    /// written) for results [`StageResults::sanitized`] would refuse.
    pub async fn finish_stage_with(
        &self,
        stage: StageId,
        token: &str,
        outcome: StageOutcome,
        results: &StageResults,
    ) -> Result<FinishReport> {
        if !outcome.status.is_final() || outcome.status == StageStatus::Skipped {
            return Err(Error::Invalid(format!(
                "a stage cannot finish as {}",
                outcome.status
            )));
        }
        let mut tx = self.begin().await?;
        let run_id = query("SELECT run_id FROM stages WHERE id = $1")
            .bind(stage)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::NotFound(format!("stage {stage}")))?
            .int("run_id")?;
        let run = self.lock_run(&mut tx, run_id).await?;
        let sql = format!(
            "SELECT {STAGE_COLS} FROM stages WHERE id = $1 AND lease_token = $2 \
             AND status = 'running'{}",
            self.for_update()
        );
        let Some(row) = query(&sql)
            .bind(stage)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(Error::LeaseLost);
        };
        let stage = stage_row(&row)?;
        self.write_results_tx(&mut tx, run.id, stage.id, results)
            .await?;
        let (settled, after) = self
            .settle(
                &mut tx,
                &run,
                &stage,
                outcome.status,
                outcome.reason.as_deref(),
            )
            .await?;
        tx.commit().await?;
        // The run row was locked since before the change: a final status now that was
        // not final then was set by this call and no other.
        let run_finished = after
            .filter(|r| r.status.is_final() && !run.status.is_final())
            .map(|r| r.status);
        Ok(FinishReport {
            settled,
            run_finished,
        })
    }

    /// Ends or re-queues a running stage (the run is locked by the caller).
    pub(super) async fn settle(
        &self,
        tx: &mut Tx,
        run: &Run,
        stage: &Stage,
        status: StageStatus,
        reason: Option<&str>,
    ) -> Result<(Settled, Option<Run>)> {
        let now = self.now_ms();
        let retryable = matches!(
            status,
            StageStatus::Failure | StageStatus::TimedOut | StageStatus::Error
        ) && !stage.cancel_requested
            && run.status == RunStatus::Running;
        let retry = if !retryable {
            None
        } else if stage.attempt < stage.max_attempts {
            Some(stage.infra_retry_used)
        } else if status == StageStatus::Error && !stage.infra_retry_used {
            // The one automatic retry of an infrastructure error.
            Some(true)
        } else {
            None
        };
        if let Some(infra_retry_used) = retry {
            let attempt = stage.attempt + 1;
            let why = format!(
                "attempt {} ended {status}{}{}; retrying",
                stage.attempt,
                if reason.is_some() { ": " } else { "" },
                reason.unwrap_or_default()
            );
            query(
                "UPDATE stages SET status = 'queued', attempt = $2, infra_retry_used = $3, \
                 reason = $4, queued_at = $5, runner_id = NULL, lease_token = NULL, \
                 lease_expires_at = NULL, started_at = NULL, finished_at = NULL WHERE id = $1",
            )
            .bind(stage.id)
            .bind(attempt)
            .bind(infra_retry_used)
            .bind(why)
            .bind(now)
            .execute(&mut **tx)
            .await?;
            // Step rows describe the latest attempt.
            query(
                "UPDATE steps SET status = 'pending', exit_code = NULL, oom_killed = FALSE, \
                 started_at = NULL, finished_at = NULL, log_lines = 0, log_bytes = 0 \
                 WHERE stage_id = $1",
            )
            .bind(stage.id)
            .execute(&mut **tx)
            .await?;
            emit(tx, run.id, Some(stage.id), "queued", now).await?;
            return Ok((Settled::Retrying { attempt }, None));
        }
        query(
            "UPDATE stages SET status = $2, reason = $3, finished_at = $4, lease_token = NULL, \
             lease_expires_at = NULL WHERE id = $1",
        )
        .bind(stage.id)
        .bind(status.as_str())
        .bind(reason)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        close_steps(tx, stage.id, status, now).await?;
        emit(tx, run.id, Some(stage.id), status.as_str(), now).await?;
        let after = self.reconcile_tx(tx, run).await?;
        Ok((Settled::Finished(status), Some(after)))
    }

    /// Takes back stages whose lease expired before `now` (unix ms): each is queued
    /// again if it has an attempt left (counted like an infrastructure error), else it
    /// ends `error` with reason "runner lost (lease expired)" (`cancelled` if its run
    /// was cancelled). Returns the stages taken back.
    pub async fn expire_leases(&self, now: i64) -> Result<Vec<StageId>> {
        let candidates = query(
            "SELECT id, run_id FROM stages WHERE status = 'running' AND lease_expires_at < $1 \
             AND NOT rollout ORDER BY id",
        )
        .bind(now)
        .fetch_all(&self.read)
        .await?;
        let mut expired = Vec::new();
        for c in candidates {
            let (id, run_id) = (c.int("id")?, c.int("run_id")?);
            let mut tx = self.begin().await?;
            let run = self.lock_run(&mut tx, run_id).await?;
            let sql = format!(
                "SELECT {STAGE_COLS} FROM stages WHERE id = $1 AND status = 'running' \
                 AND lease_expires_at < $2{}",
                self.for_update()
            );
            let Some(row) = query(&sql)
                .bind(id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?
            else {
                continue; // heartbeat or finish won the race
            };
            let stage = stage_row(&row)?;
            let status = if stage.cancel_requested || run.status.is_final() {
                StageStatus::Cancelled
            } else {
                StageStatus::Error
            };
            self.settle(&mut tx, &run, &stage, status, Some(RUNNER_LOST))
                .await?;
            tx.commit().await?;
            expired.push(id);
        }
        Ok(expired)
    }

    /// Marks step `idx` of a leased stage `running`. `LeaseLost` if the token is stale,
    /// `Conflict` if the step is not pending (a step never starts twice in an attempt).
    pub async fn start_step(&self, stage: StageId, token: &str, idx: i64) -> Result<Step> {
        let sql = format!(
            "UPDATE steps SET status = 'running', started_at = $4 \
             WHERE stage_id = $1 AND idx = $3 AND status = 'pending' AND EXISTS \
             (SELECT 1 FROM stages WHERE id = $1 AND lease_token = $2 AND status = 'running') \
             RETURNING {STEP_COLS}"
        );
        let row = query(&sql)
            .bind(stage)
            .bind(token)
            .bind(idx)
            .bind(self.now_ms())
            .fetch_optional(&self.write)
            .await?;
        match row {
            Some(row) => step_row(&row),
            None => Err(self.step_refusal(stage, token, idx, "not pending").await),
        }
    }

    /// Records how step `idx` of a leased stage ended (a step never started may be
    /// finished directly, e.g. as `skipped`).
    pub async fn finish_step(
        &self,
        stage: StageId,
        token: &str,
        idx: i64,
        status: StepStatus,
        exit_code: Option<i32>,
        oom_killed: bool,
    ) -> Result<Step> {
        if !status.is_final() {
            return Err(Error::Invalid(format!("a step cannot finish as {status}")));
        }
        let sql = format!(
            "UPDATE steps SET status = $4, exit_code = $5, oom_killed = $6, finished_at = $7 \
             WHERE stage_id = $1 AND idx = $3 AND status IN ('pending', 'running') AND EXISTS \
             (SELECT 1 FROM stages WHERE id = $1 AND lease_token = $2 AND status = 'running') \
             RETURNING {STEP_COLS}"
        );
        let row = query(&sql)
            .bind(stage)
            .bind(token)
            .bind(idx)
            .bind(status.as_str())
            .bind(exit_code.map(i64::from))
            .bind(oom_killed)
            .bind(self.now_ms())
            .fetch_optional(&self.write)
            .await?;
        match row {
            Some(row) => step_row(&row),
            None => Err(self
                .step_refusal(stage, token, idx, "already finished")
                .await),
        }
    }

    /// Why a step update matched no row.
    async fn step_refusal(&self, stage: StageId, token: &str, idx: i64, what: &str) -> Error {
        let leased = query(
            "SELECT COUNT(*) AS n FROM stages WHERE id = $1 AND lease_token = $2 \
             AND status = 'running'",
        )
        .bind(stage)
        .bind(token)
        .fetch_one(&self.read)
        .await;
        match leased.map(|r| r.int("n")) {
            Err(e) => e.into(),
            Ok(Err(e)) => e,
            Ok(Ok(0)) => Error::LeaseLost,
            Ok(Ok(_)) => {
                let exists =
                    query("SELECT COUNT(*) AS n FROM steps WHERE stage_id = $1 AND idx = $2")
                        .bind(stage)
                        .bind(idx)
                        .fetch_one(&self.read)
                        .await
                        .map_err(Error::from)
                        .and_then(|r| r.int("n"));
                match exists {
                    Err(e) => e,
                    Ok(0) => Error::NotFound(format!("step {idx} of stage {stage}")),
                    Ok(_) => Error::Conflict(format!("step {idx} of stage {stage} is {what}")),
                }
            }
        }
    }

    /// Adds to a step's log counters (the log itself lives on disk).
    pub async fn add_step_log_stats(&self, step: StepId, lines: i64, bytes: i64) -> Result<()> {
        let r = query(
            "UPDATE steps SET log_lines = log_lines + $2, log_bytes = log_bytes + $3 \
             WHERE id = $1",
        )
        .bind(step)
        .bind(lines)
        .bind(bytes)
        .execute(&self.write)
        .await?;
        match affected(r) {
            0 => Err(Error::NotFound(format!("step {step}"))),
            _ => Ok(()),
        }
    }
}
