//! Deliveries and runs: creating, planning, failing and cancelling runs.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::query;

use super::row::{RUN_COLS, json_text, rows, run as run_row};
use super::{
    Error, NewRun, NewStage, RepoId, Result, Run, RunId, RunStatus, Stage, StageStatus, Store, Tx,
    affected, now_ms,
};

impl Store {
    /// Records webhook delivery `delivery_id` and creates its `pending` run, in one
    /// transaction. A delivery seen before returns `Ok(None)` and changes nothing,
    /// however many copies arrive at once.
    pub async fn accept_delivery(
        &self,
        repo: RepoId,
        delivery_id: &str,
        new: NewRun,
    ) -> Result<Option<Run>> {
        let mut tx = self.begin().await?;
        let now = now_ms();
        if !insert_delivery(&mut tx, repo, delivery_id, now).await? {
            return Ok(None);
        }
        let run = self.insert_run(&mut tx, repo, &new, now).await?;
        query("UPDATE deliveries SET run_id = $3 WHERE repo_id = $1 AND delivery_id = $2")
            .bind(repo)
            .bind(delivery_id)
            .bind(run.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(run))
    }

    /// Records a delivery that creates no run (a ping, an ignored event); `false` if it
    /// was seen before.
    pub async fn record_delivery(&self, repo: RepoId, delivery_id: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let fresh = insert_delivery(&mut tx, repo, delivery_id, now_ms()).await?;
        tx.commit().await?;
        Ok(fresh)
    }

    /// Creates a `pending` run without a delivery (cron, manual, rerun, `slipway hook`).
    pub async fn create_run(&self, repo: RepoId, new: NewRun) -> Result<Run> {
        let mut tx = self.begin().await?;
        let run = self.insert_run(&mut tx, repo, &new, now_ms()).await?;
        tx.commit().await?;
        Ok(run)
    }

    async fn insert_run(&self, tx: &mut Tx, repo: RepoId, new: &NewRun, now: i64) -> Result<Run> {
        // The row lock taken by this UPDATE serialises numbering per repository.
        let number: i64 = match query(
            "UPDATE repos SET next_run_number = next_run_number + 1 WHERE id = $1 \
             RETURNING next_run_number - 1 AS number",
        )
        .bind(repo)
        .fetch_optional(&mut **tx)
        .await?
        {
            Some(row) => sqlx::Row::try_get(&row, "number")?,
            None => return Err(Error::NotFound(format!("repository {repo}"))),
        };
        let sql = format!(
            "INSERT INTO runs (repo_id, number, status, trigger_kind, event, git_ref, branch, tag, \
             sha, before_sha, pr_number, source_branch, fork, trusted, message, author, params, \
             rerun_of, triggered_by, pusher, created_at) VALUES ($1, $2, 'pending', $3, $4, $5, \
             $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) \
             RETURNING {RUN_COLS}"
        );
        let row = query(&sql)
            .bind(repo)
            .bind(number)
            .bind(new.trigger.as_str())
            .bind(new.event.as_str())
            .bind(&new.git_ref)
            .bind(&new.branch)
            .bind(&new.tag)
            .bind(&new.sha)
            .bind(&new.before_sha)
            .bind(new.pr_number)
            .bind(&new.source_branch)
            .bind(new.fork)
            .bind(new.trusted)
            .bind(&new.message)
            .bind(&new.author)
            .bind(json_text(&new.params))
            .bind(new.rerun_of)
            .bind(new.triggered_by)
            .bind(&new.pusher)
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
        let run = run_row(&row)?;
        emit(tx, run.id, None, RunStatus::Pending.as_str(), now).await?;
        Ok(run)
    }

    pub async fn get_run(&self, id: RunId) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE id = $1");
        match query(&sql).bind(id).fetch_optional(&self.read).await? {
            Some(row) => run_row(&row),
            None => Err(Error::NotFound(format!("run {id}"))),
        }
    }

    pub async fn get_run_by_number(&self, repo: RepoId, number: i64) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE repo_id = $1 AND number = $2");
        match query(&sql)
            .bind(repo)
            .bind(number)
            .fetch_optional(&self.read)
            .await?
        {
            Some(row) => run_row(&row),
            None => Err(Error::NotFound(format!(
                "run #{number} of repository {repo}"
            ))),
        }
    }

    /// A page of a repository's runs, newest first; pass the last number seen as
    /// `before_number` for the next page.
    pub async fn list_runs(
        &self,
        repo: RepoId,
        limit: u32,
        before_number: Option<i64>,
    ) -> Result<Vec<Run>> {
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE repo_id = $1 AND number < $2 \
             ORDER BY number DESC LIMIT $3"
        );
        let rs = query(&sql)
            .bind(repo)
            .bind(before_number.unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows(&rs, run_row)
    }

    /// Runs waiting to be planned (`pending`), oldest first: the planner's work list,
    /// also after a crash.
    pub async fn pending_runs(&self, limit: u32) -> Result<Vec<Run>> {
        let sql =
            format!("SELECT {RUN_COLS} FROM runs WHERE status = 'pending' ORDER BY id LIMIT $1");
        let rs = query(&sql)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows(&rs, run_row)
    }

    /// Ends a run in state `error` with a message and, for a pipeline that failed
    /// validation, its diagnostics. Stages not started yet are cancelled, running ones
    /// are asked to stop. `Conflict` if the run has already finished.
    pub async fn set_run_error(
        &self,
        run_id: RunId,
        error: &str,
        diagnostics: Option<Value>,
    ) -> Result<Run> {
        let mut tx = self.begin().await?;
        let run = self.error_tx(&mut tx, run_id, error, diagnostics).await?;
        tx.commit().await?;
        Ok(run)
    }

    /// Creates a run that is an error from the start (a rerun whose stored plan the run
    /// may not use), in one transaction, so that no planner ever sees it `pending`.
    pub async fn create_run_error(
        &self,
        repo: RepoId,
        new: NewRun,
        error: &str,
        diagnostics: Option<Value>,
    ) -> Result<Run> {
        let mut tx = self.begin().await?;
        let run = self.insert_run(&mut tx, repo, &new, now_ms()).await?;
        let run = self.error_tx(&mut tx, run.id, error, diagnostics).await?;
        tx.commit().await?;
        Ok(run)
    }

    /// The body of [`Store::set_run_error`] inside `tx`.
    async fn error_tx(
        &self,
        tx: &mut Tx,
        run_id: RunId,
        error: &str,
        diagnostics: Option<Value>,
    ) -> Result<Run> {
        let run = self.lock_run(tx, run_id).await?;
        if run.status.is_final() {
            return Err(Error::Conflict(format!(
                "run {run_id} already finished ({})",
                run.status
            )));
        }
        let now = now_ms();
        let sql = format!(
            "UPDATE runs SET status = 'error', error = $2, diagnostics = $3, finished_at = $4 \
             WHERE id = $1 RETURNING {RUN_COLS}"
        );
        let row = query(&sql)
            .bind(run_id)
            .bind(error)
            .bind(diagnostics.map(|d| json_text(&d)))
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
        let run = run_row(&row)?;
        emit(tx, run_id, None, RunStatus::Error.as_str(), now).await?;
        self.reconcile_tx(tx, &run).await?;
        Ok(run)
    }

    /// Stores the plan of a `pending` run and inserts all its stages and steps in one
    /// transaction; the run becomes `running`. Stages without `needs` start `queued`,
    /// the others `waiting`, [`NewStage::skip`] ones `skipped`, [`NewStage::succeeded`]
    /// ones `success`; a run with nothing to do finishes `success` at once. `Invalid` for duplicate keys, unknown needs or a cycle;
    /// `Conflict` if the run is not pending.
    pub async fn set_run_planned(
        &self,
        run_id: RunId,
        plan: &Value,
        yaml_sha256: &str,
        stages: Vec<NewStage>,
    ) -> Result<Run> {
        check_dag(&stages)?;
        let mut tx = self.begin().await?;
        let run = self
            .plan_tx(&mut tx, run_id, plan, yaml_sha256, stages)
            .await?;
        tx.commit().await?;
        Ok(run)
    }

    /// Creates a run and plans it in one transaction, so that no planner ever sees it
    /// `pending`: reruns carry the stored plan of the run they repeat (and, for "failed
    /// stages only", stages marked [`NewStage::succeeded`]), which a planner working from
    /// the commit would not reproduce. Same checks as [`Store::set_run_planned`].
    pub async fn create_run_planned(
        &self,
        repo: RepoId,
        new: NewRun,
        plan: &Value,
        yaml_sha256: &str,
        stages: Vec<NewStage>,
    ) -> Result<Run> {
        check_dag(&stages)?;
        let mut tx = self.begin().await?;
        let run = self.insert_run(&mut tx, repo, &new, now_ms()).await?;
        let run = self
            .plan_tx(&mut tx, run.id, plan, yaml_sha256, stages)
            .await?;
        tx.commit().await?;
        Ok(run)
    }

    /// The body of [`Store::set_run_planned`] inside `tx` (stages already checked).
    async fn plan_tx(
        &self,
        tx: &mut Tx,
        run_id: RunId,
        plan: &Value,
        yaml_sha256: &str,
        stages: Vec<NewStage>,
    ) -> Result<Run> {
        let run = self.lock_run(tx, run_id).await?;
        if run.status != RunStatus::Pending {
            return Err(Error::Conflict(format!(
                "run {run_id} is {}, not pending",
                run.status
            )));
        }
        let now = now_ms();
        let sql = format!(
            "UPDATE runs SET status = 'running', plan = $2, yaml_sha256 = $3, started_at = $4 \
             WHERE id = $1 RETURNING {RUN_COLS}"
        );
        let row = query(&sql)
            .bind(run_id)
            .bind(json_text(plan))
            .bind(yaml_sha256)
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
        let run = run_row(&row)?;
        emit(tx, run_id, None, RunStatus::Running.as_str(), now).await?;
        for s in &stages {
            let (status, queued_at, finished_at) = if s.succeeded.is_some() {
                (StageStatus::Success, None, Some(now))
            } else if s.skip.is_some() {
                (StageStatus::Skipped, None, Some(now))
            } else if s.needs.is_empty() {
                (StageStatus::Queued, Some(now), None)
            } else {
                (StageStatus::Waiting, None, None)
            };
            let id: i64 = sqlx::Row::try_get(
                &query(
                    "INSERT INTO stages (run_id, repo_id, stage_key, pipeline, status, needs, \
                     spec, max_attempts, reason, queued_at, finished_at, created_at, labels) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     RETURNING id",
                )
                .bind(run_id)
                .bind(run.repo_id)
                .bind(&s.key)
                .bind(&s.pipeline)
                .bind(status.as_str())
                .bind(json_text(&s.needs))
                .bind(json_text(&s.spec))
                .bind(i64::from(s.max_attempts.max(1)))
                .bind(s.succeeded.as_ref().or(s.skip.as_ref()))
                .bind(queued_at)
                .bind(finished_at)
                .bind(now)
                .bind(json_text(&s.labels))
                .fetch_one(&mut **tx)
                .await?,
                "id",
            )?;
            if let (Some(_), Some(orig)) = (&s.succeeded, run.rerun_of) {
                // Succeeded in the run being re-run: its outputs still hold (an image
                // stage's digest), and the stages that need it read them.
                query(
                    "INSERT INTO stage_outputs (stage_id, name, value) SELECT $1, o.name, \
                     o.value FROM stage_outputs o JOIN stages p ON p.id = o.stage_id \
                     WHERE p.run_id = $2 AND p.stage_key = $3",
                )
                .bind(id)
                .bind(orig)
                .bind(&s.key)
                .execute(&mut **tx)
                .await?;
            }
            let step_status = if s.skip.is_some() || s.succeeded.is_some() {
                "skipped"
            } else {
                "pending"
            };
            for (idx, name) in s.steps.iter().enumerate() {
                query("INSERT INTO steps (stage_id, idx, name, status) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(idx as i64)
                    .bind(name)
                    .bind(step_status)
                    .execute(&mut **tx)
                    .await?;
            }
            emit(tx, run_id, Some(id), status.as_str(), now).await?;
        }
        self.reconcile_tx(tx, &run).await
    }

    /// Cancels a run that has not finished: the run becomes `cancelled`, its waiting and
    /// queued stages `cancelled`, and running stages are flagged so that their runner's
    /// next heartbeat answers [`Heartbeat::Cancel`](super::Heartbeat::Cancel). `false` if
    /// the run had already finished.
    pub async fn cancel_run(&self, run_id: RunId, reason: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let run = self.lock_run(&mut tx, run_id).await?;
        let done = self.cancel_locked(&mut tx, run, reason).await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn cancel_locked(&self, tx: &mut Tx, run: Run, reason: &str) -> Result<bool> {
        if run.status.is_final() {
            return Ok(false);
        }
        let now = now_ms();
        let sql = format!(
            "UPDATE runs SET status = 'cancelled', error = $2, finished_at = $3 WHERE id = $1 \
             RETURNING {RUN_COLS}"
        );
        let row = query(&sql)
            .bind(run.id)
            .bind(reason)
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
        let run = run_row(&row)?;
        emit(tx, run.id, None, RunStatus::Cancelled.as_str(), now).await?;
        self.reconcile_tx(tx, &run).await?;
        Ok(true)
    }

    /// Auto-cancel: cancels the unfinished runs of `repo` for the same branch and event
    /// that are older than `newer` and returns their ids.
    pub async fn supersede(
        &self,
        repo: RepoId,
        branch: &str,
        event: super::Event,
        newer: RunId,
    ) -> Result<Vec<RunId>> {
        let mut tx = self.begin().await?;
        let newer_run = self.get_run_tx(&mut tx, newer).await?;
        let ids: Vec<i64> = query(
            "SELECT id FROM runs WHERE repo_id = $1 AND branch = $2 AND event = $3 \
             AND status IN ('pending', 'running') AND number < $4 ORDER BY id",
        )
        .bind(repo)
        .bind(branch)
        .bind(event.as_str())
        .bind(newer_run.number)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| sqlx::Row::try_get(r, "id"))
        .collect::<Result<_, _>>()?;
        let reason = format!("superseded by run #{}", newer_run.number);
        let mut cancelled = Vec::new();
        // Ascending id order: the same lock order as every other multi-run transaction.
        for id in ids {
            let run = self.lock_run(&mut tx, id).await?;
            if self.cancel_locked(&mut tx, run, &reason).await? {
                cancelled.push(id);
            }
        }
        tx.commit().await?;
        Ok(cancelled)
    }

    /// Reads a run inside `tx`, locking its row on PostgreSQL. Every transaction that
    /// changes a run's stages calls this first (one lock order: run, then stages).
    pub(crate) async fn lock_run(&self, tx: &mut Tx, id: RunId) -> Result<Run> {
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE id = $1{}",
            self.for_update()
        );
        match query(&sql).bind(id).fetch_optional(&mut **tx).await? {
            Some(row) => run_row(&row),
            None => Err(Error::NotFound(format!("run {id}"))),
        }
    }

    async fn get_run_tx(&self, tx: &mut Tx, id: RunId) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE id = $1");
        match query(&sql).bind(id).fetch_optional(&mut **tx).await? {
            Some(row) => run_row(&row),
            None => Err(Error::NotFound(format!("run {id}"))),
        }
    }

    /// Re-derives what follows from the stages' states inside `tx` (the run is locked):
    /// promotes `waiting` stages whose needs all succeeded, skips those whose needs
    /// ended otherwise, closes unstarted stages of a finished run, and gives a `running`
    /// run its final status once no stage is left unfinished. Idempotent.
    pub(crate) async fn reconcile_tx(&self, tx: &mut Tx, run: &Run) -> Result<Run> {
        let stages = self.stages_tx(tx, run.id).await?;
        let now = now_ms();
        let mut status: HashMap<&str, StageStatus> =
            stages.iter().map(|s| (s.key.as_str(), s.status)).collect();
        let mut changes: Vec<(&Stage, StageStatus, Option<String>)> = Vec::new();
        if run.status == RunStatus::Running {
            // Skips cascade (a skipped stage skips what needs it): repeat to a fixpoint.
            loop {
                let mut changed = false;
                for s in &stages {
                    if status[s.key.as_str()] != StageStatus::Waiting {
                        continue;
                    }
                    let needs: Vec<(&str, Option<StageStatus>)> = s
                        .needs
                        .iter()
                        .map(|n| (n.as_str(), status.get(n.as_str()).copied()))
                        .collect();
                    let failed = needs.iter().find(|(_, st)| {
                        st.is_none_or(|st| st.is_final() && st != StageStatus::Success)
                    });
                    let next = if let Some((n, st)) = failed {
                        let ended = st.map_or("missing".to_string(), |st| st.to_string());
                        Some((
                            StageStatus::Skipped,
                            Some(format!("needs `{n}`, which is {ended}")),
                        ))
                    } else if needs
                        .iter()
                        .all(|(_, st)| *st == Some(StageStatus::Success))
                    {
                        Some((StageStatus::Queued, None))
                    } else {
                        None
                    };
                    if let Some((st, reason)) = next {
                        status.insert(s.key.as_str(), st);
                        changes.push((s, st, reason));
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
        } else if run.status.is_final() {
            let reason = format!("run {}", run.status);
            for s in &stages {
                if matches!(s.status, StageStatus::Waiting | StageStatus::Queued) {
                    status.insert(s.key.as_str(), StageStatus::Cancelled);
                    changes.push((s, StageStatus::Cancelled, Some(reason.clone())));
                }
            }
        }
        for (s, st, reason) in &changes {
            // `status = $5`: only if nobody changed the stage since we read it (on
            // PostgreSQL a concurrent lease may have taken a queued stage meanwhile).
            let n = affected(
                query(
                    "UPDATE stages SET status = $2, reason = COALESCE($3, reason), \
                     queued_at = CASE WHEN $2 = 'queued' THEN $4 ELSE queued_at END, \
                     finished_at = CASE WHEN $2 = 'queued' THEN finished_at ELSE $4 END \
                     WHERE id = $1 AND status = $5",
                )
                .bind(s.id)
                .bind(st.as_str())
                .bind(reason)
                .bind(now)
                .bind(s.status.as_str())
                .execute(&mut **tx)
                .await?,
            );
            if n == 0 {
                continue;
            }
            if st.is_final() {
                close_steps(tx, s.id, *st, now).await?;
            }
            emit(tx, run.id, Some(s.id), st.as_str(), now).await?;
        }
        if run.status.is_final() {
            // Running stages of a finished run: ask their runners to stop. This comes
            // after the updates above so that it also catches a stage leased meanwhile.
            query(
                "UPDATE stages SET cancel_requested = TRUE \
                 WHERE run_id = $1 AND status = 'running' AND cancel_requested = FALSE",
            )
            .bind(run.id)
            .execute(&mut **tx)
            .await?;
            return Ok(run.clone());
        }
        if run.status != RunStatus::Running {
            return Ok(run.clone());
        }
        let stages = self.stages_tx(tx, run.id).await?;
        if stages.iter().any(|s| !s.status.is_final()) {
            return Ok(run.clone());
        }
        let has = |st: StageStatus| stages.iter().any(|s| s.status == st);
        let final_status = if has(StageStatus::Failure) || has(StageStatus::TimedOut) {
            RunStatus::Failure
        } else if has(StageStatus::Error) {
            RunStatus::Error
        } else if has(StageStatus::Cancelled) {
            RunStatus::Cancelled
        } else {
            RunStatus::Success
        };
        let sql = format!(
            "UPDATE runs SET status = $2, finished_at = $3 WHERE id = $1 AND status = 'running' \
             RETURNING {RUN_COLS}"
        );
        let row = query(&sql)
            .bind(run.id)
            .bind(final_status.as_str())
            .bind(now)
            .fetch_one(&mut **tx)
            .await?;
        emit(tx, run.id, None, final_status.as_str(), now).await?;
        run_row(&row)
    }

    /// Re-derives promotions, skips and the final status of a run (after a crash, or
    /// from the scheduler's reconcile loop). Idempotent.
    pub async fn reconcile_run(&self, run_id: RunId) -> Result<Run> {
        let mut tx = self.begin().await?;
        let run = self.lock_run(&mut tx, run_id).await?;
        let run = self.reconcile_tx(&mut tx, &run).await?;
        tx.commit().await?;
        Ok(run)
    }

    /// Records why a run ended as it did without changing its status, e.g. "no pipeline
    /// triggered: …" on a run that finished `success` with nothing to do (the planner's
    /// answer to "why didn't my pipeline run?"). `NotFound` for an unknown run.
    pub async fn set_run_note(&self, run_id: RunId, note: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let r = query("UPDATE runs SET error = $2 WHERE id = $1")
            .bind(run_id)
            .bind(note)
            .execute(&mut *tx)
            .await?;
        if affected(r) == 0 {
            return Err(Error::NotFound(format!("run {run_id}")));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Runs that are `running` (the scheduler reconciles these after a restart).
    pub async fn active_runs(&self) -> Result<Vec<Run>> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE status = 'running' ORDER BY id");
        rows(&query(&sql).fetch_all(&self.read).await?, run_row)
    }
}

async fn insert_delivery(tx: &mut Tx, repo: RepoId, delivery_id: &str, now: i64) -> Result<bool> {
    // On PostgreSQL a concurrent copy waits here for the first to commit, then
    // inserts nothing.
    let r = query(
        "INSERT INTO deliveries (repo_id, delivery_id, received_at) VALUES ($1, $2, $3) \
         ON CONFLICT (repo_id, delivery_id) DO NOTHING",
    )
    .bind(repo)
    .bind(delivery_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(affected(r) == 1)
}

/// Appends to the event log inside the transaction that made the change.
pub(crate) async fn emit(
    tx: &mut Tx,
    run: RunId,
    stage: Option<i64>,
    status: &str,
    now: i64,
) -> Result<()> {
    query("INSERT INTO events (run_id, stage_id, status, created_at) VALUES ($1, $2, $3, $4)")
        .bind(run)
        .bind(stage)
        .bind(status)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Gives the unfinished steps of a stage that just ended a final state: steps never
/// started are `skipped`, a step still running ends like its stage.
pub(crate) async fn close_steps(
    tx: &mut Tx,
    stage: i64,
    stage_status: StageStatus,
    now: i64,
) -> Result<()> {
    let running = match stage_status {
        StageStatus::Cancelled => "cancelled",
        StageStatus::TimedOut => "timed_out",
        StageStatus::Skipped => "skipped",
        _ => "error",
    };
    query(
        "UPDATE steps SET status = CASE WHEN status = 'running' THEN $2 ELSE 'skipped' END, \
         finished_at = CASE WHEN status = 'running' THEN $3 ELSE finished_at END \
         WHERE stage_id = $1 AND status IN ('pending', 'running')",
    )
    .bind(stage)
    .bind(running)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Rejects duplicate keys, needs that name no stage of the plan, and cycles.
fn check_dag(stages: &[NewStage]) -> Result<()> {
    let mut keys = HashSet::new();
    for s in stages {
        if !keys.insert(s.key.as_str()) {
            return Err(Error::Invalid(format!("duplicate stage key {:?}", s.key)));
        }
    }
    for s in stages {
        if let Some(n) = s.needs.iter().find(|n| !keys.contains(n.as_str())) {
            return Err(Error::Invalid(format!(
                "stage {:?} needs unknown stage {n:?}",
                s.key
            )));
        }
    }
    // Kahn: repeatedly remove stages whose needs are all removed.
    let mut done: HashSet<&str> = HashSet::new();
    loop {
        let ready: Vec<&str> = stages
            .iter()
            .filter(|s| !done.contains(s.key.as_str()))
            .filter(|s| s.needs.iter().all(|n| done.contains(n.as_str())))
            .map(|s| s.key.as_str())
            .collect();
        if ready.is_empty() {
            break;
        }
        done.extend(ready);
    }
    match stages.iter().find(|s| !done.contains(s.key.as_str())) {
        Some(s) => Err(Error::Invalid(format!(
            "stage {:?} is part of a dependency cycle",
            s.key
        ))),
        None => Ok(()),
    }
}
