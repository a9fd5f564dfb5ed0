//! A run's life after it is created: reconciling its stages through the pure state
//! machine ([`crate::runs::reconcile`]) in the transaction that read them, cancelling
//! and superseding, and the event log every change appends to.

use sqlx::query;

use super::events::emit;
use super::row::{RUN_COLS, rows, run as run_row};
use super::{
    Error, RepoId, Result, Run, RunId, RunStatus, Stage, StageStatus, Store, Tx, affected,
};
use crate::runs::reconcile::{StageView, reconcile};

impl Store {
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
        let now = self.now_ms();
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

    /// Applies [`reconcile`] to the run's stages inside `tx` (the run is locked):
    /// promotions and skips, cancelling the unstarted stages of a finished run and
    /// flagging its running ones, and the final status of a run with nothing left
    /// unfinished. Idempotent.
    pub(crate) async fn reconcile_tx(&self, tx: &mut Tx, run: &Run) -> Result<Run> {
        // A pass whose guarded update missed (on PostgreSQL a concurrent lease took a
        // queued stage of a run that is finishing) derives again from the rows as they
        // are now. Leases only move queued stages on, so this ends within one pass per
        // stage.
        let mut passes = 0;
        loop {
            let stages = self.stages_tx(tx, run.id).await?;
            passes += 1;
            // Gates matter only while the run runs (a finished run cancels what waits).
            let gates = if run.status == RunStatus::Running {
                self.gates_tx(tx, run, &stages).await?
            } else {
                vec![None; stages.len()]
            };
            let views: Vec<StageView> = stages
                .iter()
                .zip(&gates)
                .map(|(s, gate)| StageView {
                    key: &s.key,
                    status: s.status,
                    needs: &s.needs,
                    gate: gate.as_ref(),
                })
                .collect();
            let changes = reconcile(run.status, &views);
            if !changes.open_gates.is_empty() && passes <= stages.len() + 1 {
                // Opening a gate may decide it at once (refused, nothing to approve):
                // derive again from the rows as they are now.
                let opening: Vec<&Stage> = changes.open_gates.iter().map(|&i| &stages[i]).collect();
                self.open_gates_tx(tx, run, &opening).await?;
                continue;
            }
            let now = self.now_ms();
            let mut missed = false;
            for c in &changes.stages {
                let s = &stages[c.stage];
                // `status = $5`: only if nobody changed the stage since we read it.
                let n = affected(
                    query(
                        "UPDATE stages SET status = $2, reason = COALESCE($3, reason), \
                         queued_at = CASE WHEN $2 = 'queued' THEN $4 ELSE queued_at END, \
                         finished_at = CASE WHEN $2 = 'queued' THEN finished_at ELSE $4 END \
                         WHERE id = $1 AND status = $5",
                    )
                    .bind(s.id)
                    .bind(c.status.as_str())
                    .bind(&c.reason)
                    .bind(now)
                    .bind(s.status.as_str())
                    .execute(&mut **tx)
                    .await?,
                );
                if n == 0 {
                    missed = true;
                    continue;
                }
                if c.status.is_final() {
                    close_steps(tx, s.id, c.status, now).await?;
                    // A finished run's own reason ("superseded by run #7") says more.
                    let why = run
                        .error
                        .as_deref()
                        .filter(|_| run.status.is_final())
                        .or(c.reason.as_deref())
                        .unwrap_or(c.status.as_str());
                    self.close_gate_tx(tx, s.id, why).await?;
                }
                emit(tx, run.id, Some(s.id), c.status.as_str(), now).await?;
            }
            for &i in &changes.stop {
                query(
                    "UPDATE stages SET cancel_requested = TRUE \
                     WHERE id = $1 AND status = 'running' AND cancel_requested = FALSE",
                )
                .bind(stages[i].id)
                .execute(&mut **tx)
                .await?;
            }
            if missed && passes <= stages.len() {
                continue;
            }
            let Some(final_status) = changes.run.filter(|_| !missed) else {
                return Ok(run.clone());
            };
            let sql = format!(
                "UPDATE runs SET status = $2, finished_at = $3 WHERE id = $1 \
                 AND status = 'running' RETURNING {RUN_COLS}"
            );
            let row = query(&sql)
                .bind(run.id)
                .bind(final_status.as_str())
                .bind(now)
                .fetch_one(&mut **tx)
                .await?;
            emit(tx, run.id, None, final_status.as_str(), now).await?;
            return run_row(&row);
        }
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

    /// Replaces an abbreviated commit id (Bitbucket Cloud pull requests carry 12
    /// digits) with the full id the planner resolved it to. Only a run still holding
    /// exactly `abbreviated` changes, so a second planner pass is a no-op.
    pub async fn resolve_run_sha(
        &self,
        run_id: RunId,
        abbreviated: &str,
        full: &str,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        query("UPDATE runs SET sha = $2 WHERE id = $1 AND sha = $3")
            .bind(run_id)
            .bind(full)
            .bind(abbreviated)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Runs that are `running` (the scheduler reconciles these after a restart).
    pub async fn active_runs(&self) -> Result<Vec<Run>> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE status = 'running' ORDER BY id");
        rows(&query(&sql).fetch_all(&self.read).await?, run_row)
    }
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
