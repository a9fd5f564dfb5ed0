//! Reading rows by hand: the Any driver's derive-free path, one place for the quirks.

use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::types::*;
use super::{Error, Result, parse_enum};

pub(crate) trait RowExt {
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>>;
    /// A BOOLEAN (PostgreSQL) or INTEGER 0/1 (SQLite) column.
    fn flag(&self, col: &str) -> Result<bool>;
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T>;
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>>;
    fn parsed<T: std::str::FromStr>(&self, col: &str) -> Result<T>;
}

impl RowExt for AnyRow {
    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn bytes(&self, col: &str) -> Result<Vec<u8>> {
        Ok(self.try_get(col)?)
    }
    fn opt_bytes(&self, col: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.try_get(col)?)
    }
    fn flag(&self, col: &str) -> Result<bool> {
        match self.try_get::<bool, _>(col) {
            Ok(b) => Ok(b),
            Err(_) => Ok(self.try_get::<i64, _>(col)? != 0),
        }
    }
    fn json<T: DeserializeOwned>(&self, col: &str) -> Result<T> {
        let text = self.text(col)?;
        serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("{col}: {e}")))
    }
    fn opt_json<T: DeserializeOwned>(&self, col: &str) -> Result<Option<T>> {
        match self.opt_text(col)? {
            None => Ok(None),
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| Error::Corrupt(format!("{col}: {e}"))),
        }
    }
    fn parsed<T: std::str::FromStr>(&self, col: &str) -> Result<T> {
        parse_enum(&self.text(col)?)
    }
}

pub(crate) fn json_text(v: &impl serde::Serialize) -> String {
    // Serialising a `Value`, `Vec<String>` … cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

pub(crate) const REPO_COLS: &str = "id, name, forge, clone_url, default_branch, \
    webhook_secret_enc, forge_token_enc, api_url, trusted, next_run_number, created_at";

pub(crate) fn repo(r: &AnyRow) -> Result<Repo> {
    Ok(Repo {
        id: r.int("id")?,
        name: r.text("name")?,
        forge: r.parsed("forge")?,
        clone_url: r.text("clone_url")?,
        default_branch: r.text("default_branch")?,
        webhook_secret_enc: r.bytes("webhook_secret_enc")?,
        forge_token_enc: r.opt_bytes("forge_token_enc")?,
        api_url: r.opt_text("api_url")?,
        trusted: r.flag("trusted")?,
        next_run_number: r.int("next_run_number")?,
        created_at: r.int("created_at")?,
    })
}

pub(crate) const RUN_COLS: &str = "id, repo_id, number, status, trigger_kind, event, git_ref, \
    branch, tag, sha, before_sha, pr_number, source_branch, fork, trusted, message, author, \
    params, plan, yaml_sha256, diagnostics, error, rerun_of, triggered_by, pusher, created_at, \
    started_at, finished_at, promoted_from, promotion, target_environment, \
    (SELECT p.number FROM runs p WHERE p.id = runs.promoted_from) AS promoted_from_number, \
    (CASE WHEN runs.status = 'running' AND EXISTS (SELECT 1 FROM deployments d \
    JOIN stages s ON s.id = d.stage_id WHERE d.run_id = runs.id AND s.status = 'waiting' \
    AND d.state IN ('pending', 'approved')) THEN 1 ELSE 0 END) AS blocked";

pub(crate) fn run(r: &AnyRow) -> Result<Run> {
    Ok(Run {
        id: r.int("id")?,
        repo_id: r.int("repo_id")?,
        number: r.int("number")?,
        status: r.parsed("status")?,
        trigger: r.parsed("trigger_kind")?,
        event: r.parsed("event")?,
        git_ref: r.text("git_ref")?,
        branch: r.opt_text("branch")?,
        tag: r.opt_text("tag")?,
        sha: r.text("sha")?,
        before_sha: r.opt_text("before_sha")?,
        pr_number: r.opt_int("pr_number")?,
        source_branch: r.opt_text("source_branch")?,
        fork: r.flag("fork")?,
        trusted: r.flag("trusted")?,
        message: r.text("message")?,
        author: r.text("author")?,
        params: r.json("params")?,
        plan: r.opt_json("plan")?,
        yaml_sha256: r.opt_text("yaml_sha256")?,
        diagnostics: r.opt_json("diagnostics")?,
        error: r.opt_text("error")?,
        rerun_of: r.opt_int("rerun_of")?,
        triggered_by: r.opt_int("triggered_by")?,
        pusher: r.opt_text("pusher")?,
        promotion: match (
            r.opt_text("promotion")?,
            r.opt_int("promoted_from")?,
            r.opt_text("target_environment")?,
        ) {
            (Some(kind), Some(from), Some(environment)) => Some(Promotion {
                kind: parse_enum(&kind)?,
                from,
                from_number: r.opt_int("promoted_from_number")?.unwrap_or(0),
                environment,
            }),
            _ => None,
        },
        blocked: r.int("blocked")? != 0,
        created_at: r.int("created_at")?,
        started_at: r.opt_int("started_at")?,
        finished_at: r.opt_int("finished_at")?,
    })
}

pub(crate) const STAGE_COLS: &str = "id, run_id, repo_id, stage_key, pipeline, status, needs, \
    spec, attempt, max_attempts, infra_retry_used, runner_id, lease_token, lease_expires_at, \
    cancel_requested, reason, queued_at, started_at, finished_at, created_at, labels, waiting";

pub(crate) fn stage(r: &AnyRow) -> Result<Stage> {
    Ok(Stage {
        id: r.int("id")?,
        run_id: r.int("run_id")?,
        repo_id: r.int("repo_id")?,
        key: r.text("stage_key")?,
        pipeline: r.text("pipeline")?,
        status: r.parsed("status")?,
        needs: r.json("needs")?,
        spec: r.json("spec")?,
        attempt: r.int("attempt")?,
        max_attempts: r.int("max_attempts")?,
        infra_retry_used: r.flag("infra_retry_used")?,
        runner_id: r.opt_int("runner_id")?,
        lease_token: r.opt_text("lease_token")?,
        lease_expires_at: r.opt_int("lease_expires_at")?,
        cancel_requested: r.flag("cancel_requested")?,
        reason: r.opt_text("reason")?,
        queued_at: r.opt_int("queued_at")?,
        started_at: r.opt_int("started_at")?,
        finished_at: r.opt_int("finished_at")?,
        created_at: r.int("created_at")?,
        labels: r.json("labels")?,
        waiting: r.opt_text("waiting")?,
    })
}

pub(crate) const STEP_COLS: &str = "id, stage_id, idx, name, status, exit_code, oom_killed, \
    started_at, finished_at, log_lines, log_bytes";

pub(crate) fn step(r: &AnyRow) -> Result<Step> {
    Ok(Step {
        id: r.int("id")?,
        stage_id: r.int("stage_id")?,
        idx: r.int("idx")?,
        name: r.text("name")?,
        status: r.parsed("status")?,
        exit_code: r.opt_int("exit_code")?,
        oom_killed: r.flag("oom_killed")?,
        started_at: r.opt_int("started_at")?,
        finished_at: r.opt_int("finished_at")?,
        log_lines: r.int("log_lines")?,
        log_bytes: r.int("log_bytes")?,
    })
}

pub(crate) const TOKEN_COLS: &str =
    "id, name, scope, scope_owner, scope_repos, created_at, last_used_at";

pub(crate) fn token(r: &AnyRow) -> Result<ApiToken> {
    Ok(ApiToken {
        id: r.int("id")?,
        name: r.text("name")?,
        scope: r.parsed("scope")?,
        repos: repo_scope(r)?,
        created_at: r.int("created_at")?,
        last_used_at: r.opt_int("last_used_at")?,
    })
}

pub(crate) const RUNNER_COLS: &str =
    "id, name, labels, capacity, scope_owner, scope_repos, created_at, last_seen_at";

pub(crate) fn runner(r: &AnyRow) -> Result<Runner> {
    Ok(Runner {
        id: r.int("id")?,
        name: r.text("name")?,
        labels: r.json("labels")?,
        capacity: r.int("capacity")?,
        repos: repo_scope(r)?,
        created_at: r.int("created_at")?,
        last_seen_at: r.int("last_seen_at")?,
    })
}

/// The `scope_owner` and `scope_repos` columns of a token or runner.
fn repo_scope(r: &AnyRow) -> Result<super::RepoScope> {
    Ok(super::RepoScope::from_columns(
        r.opt_text("scope_owner")?,
        r.opt_json("scope_repos")?,
    ))
}

pub(crate) fn rows<T>(rows: &[AnyRow], f: fn(&AnyRow) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}
