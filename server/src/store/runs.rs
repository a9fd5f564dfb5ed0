//! Deliveries and runs: creating, reading, planning and failing runs (what happens to a
//! run after that: `run_state`).

use std::collections::HashSet;

use serde_json::Value;
use sqlx::query;

use super::events::emit;
use super::row::{RUN_COLS, json_text, rows, run as run_row};
use super::{
    Error, NewRun, NewStage, RepoId, Result, Run, RunId, RunStatus, StageStatus, Store, Tx,
    affected,
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
        let now = self.now_ms();
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
        let fresh = insert_delivery(&mut tx, repo, delivery_id, self.now_ms()).await?;
        tx.commit().await?;
        Ok(fresh)
    }

    /// Creates a `pending` run without a delivery (cron, manual, rerun, `slipway hook`).
    pub async fn create_run(&self, repo: RepoId, new: NewRun) -> Result<Run> {
        let mut tx = self.begin().await?;
        let run = self.insert_run(&mut tx, repo, &new, self.now_ms()).await?;
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
            None => return Err(Error::NotFound(super::repos::GONE.into())),
        };
        let sql = format!(
            "INSERT INTO runs (repo_id, number, status, trigger_kind, event, git_ref, branch, tag, \
             sha, before_sha, pr_number, source_branch, fork, trusted, message, author, params, \
             rerun_of, triggered_by, pusher, created_at, promotion, promoted_from, \
             target_environment) VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, \
             $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23) \
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
            .bind(new.promotion.as_ref().map(|p| p.kind.as_str()))
            .bind(new.promotion.as_ref().map(|p| p.from))
            .bind(new.promotion.as_ref().map(|p| p.environment.as_str()))
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
            None => {
                let of = match self.get_repo(repo).await {
                    Ok(r) => r.name,
                    Err(_) => super::repos::GONE.to_string(),
                };
                Err(Error::NotFound(format!("run #{number} of {of}")))
            }
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

    /// [`Store::list_runs`] narrowed to runs in `status` and/or on `branch`.
    pub async fn list_runs_where(
        &self,
        repo: RepoId,
        limit: u32,
        before_number: Option<i64>,
        status: Option<RunStatus>,
        branch: Option<&str>,
    ) -> Result<Vec<Run>> {
        let mut sql = format!("SELECT {RUN_COLS} FROM runs WHERE repo_id = $1 AND number < $2");
        let mut next = 4;
        if status.is_some() {
            sql.push_str(&format!(" AND status = ${next}"));
            next += 1;
        }
        if branch.is_some() {
            sql.push_str(&format!(" AND branch = ${next}"));
        }
        sql.push_str(" ORDER BY number DESC LIMIT $3");
        let mut q = query(&sql)
            .bind(repo)
            .bind(before_number.unwrap_or(i64::MAX))
            .bind(i64::from(limit));
        if let Some(s) = status {
            q = q.bind(s.as_str());
        }
        if let Some(b) = branch {
            q = q.bind(b);
        }
        let rs = q.fetch_all(&self.read).await?;
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
        let run = self.insert_run(&mut tx, repo, &new, self.now_ms()).await?;
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
        let now = self.now_ms();
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
        self.create_run_planned_audited(repo, new, plan, yaml_sha256, stages, None)
            .await
    }

    /// [`Store::create_run_planned`] with an audit entry (a promotion, a rollback) in
    /// the same transaction; its detail gains the new run's number (`run`).
    pub async fn create_run_planned_audited(
        &self,
        repo: RepoId,
        new: NewRun,
        plan: &Value,
        yaml_sha256: &str,
        stages: Vec<NewStage>,
        audit: Option<&super::NewAudit>,
    ) -> Result<Run> {
        check_dag(&stages)?;
        let mut tx = self.begin().await?;
        let run = self.insert_run(&mut tx, repo, &new, self.now_ms()).await?;
        if let Some(entry) = audit {
            let mut entry = entry.clone();
            entry.detail["run"] = serde_json::json!(run.number);
            self.append_audit_tx(&mut tx, &entry).await?;
        }
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
        let now = self.now_ms();
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
                     spec, max_attempts, reason, queued_at, finished_at, created_at, labels, rollout) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
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
                .bind(s.is_rollout())
                .fetch_one(&mut **tx)
                .await?,
                "id",
            )?;
            if let (Some(_), Some(from)) = (&s.succeeded, s.carried_from) {
                // Carried from an earlier run (a promotion): its results come along —
                // outputs, and artifact and image records (rows only; the blobs and the
                // registry's images are shared, nothing is rebuilt).
                query(
                    "INSERT INTO stage_outputs (stage_id, name, value) \
                     SELECT $1, name, value FROM stage_outputs WHERE stage_id = $2",
                )
                .bind(id)
                .bind(from)
                .execute(&mut **tx)
                .await?;
                query(
                    "INSERT INTO artifacts (run_id, stage_id, name, kind, sha256, size, mode, \
                     created_at) SELECT $1, $2, name, kind, sha256, size, mode, $3 \
                     FROM artifacts WHERE stage_id = $4",
                )
                .bind(run_id)
                .bind(id)
                .bind(now)
                .bind(from)
                .execute(&mut **tx)
                .await?;
            } else if let (Some(_), Some(orig)) = (&s.succeeded, run.rerun_of) {
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
