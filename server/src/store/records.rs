//! Secrets, API tokens, runners, cron state and the event log.

use serde_json::json;
use sqlx::query;

use super::audit::{SYSTEM, action};
use super::row::{RUNNER_COLS, RowExt, TOKEN_COLS, json_text, rows, runner, token};
use super::{
    ApiToken, Error, NewAudit, RepoId, RepoScope, Result, Runner, RunnerId, SecretMeta,
    SecretValue, Store, StoredEvent, TokenId, TokenScope, affected,
};

impl Store {
    /// Creates or replaces a secret. The value arrives encrypted by the caller.
    pub async fn put_secret(
        &self,
        repo: RepoId,
        name: &str,
        value_enc: &[u8],
        allow_pull_requests: bool,
    ) -> Result<()> {
        let now = self.now_ms();
        query(
            "INSERT INTO secrets (repo_id, name, value_enc, allow_pull_requests, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (repo_id, name) DO UPDATE SET value_enc = excluded.value_enc, \
             allow_pull_requests = excluded.allow_pull_requests, updated_at = excluded.updated_at",
        )
        .bind(repo)
        .bind(name)
        .bind(value_enc)
        .bind(allow_pull_requests)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// `false` if there was no such secret.
    pub async fn delete_secret(&self, repo: RepoId, name: &str) -> Result<bool> {
        let r = query("DELETE FROM secrets WHERE repo_id = $1 AND name = $2")
            .bind(repo)
            .bind(name)
            .execute(&self.write)
            .await?;
        Ok(affected(r) > 0)
    }

    /// Names and settings of a repository's secrets, by name — never values.
    pub async fn list_secrets(&self, repo: RepoId) -> Result<Vec<SecretMeta>> {
        let rs = query(
            "SELECT name, allow_pull_requests, created_at, updated_at FROM secrets \
             WHERE repo_id = $1 ORDER BY name",
        )
        .bind(repo)
        .fetch_all(&self.read)
        .await?;
        rs.iter()
            .map(|r| {
                Ok(SecretMeta {
                    name: r.text("name")?,
                    allow_pull_requests: r.flag("allow_pull_requests")?,
                    created_at: r.int("created_at")?,
                    updated_at: r.int("updated_at")?,
                })
            })
            .collect()
    }

    /// The encrypted values of a repository's secrets, for injection into a stage.
    pub async fn get_secret_values_enc(&self, repo: RepoId) -> Result<Vec<SecretValue>> {
        let rs = query(
            "SELECT name, value_enc, allow_pull_requests FROM secrets WHERE repo_id = $1 \
             ORDER BY name",
        )
        .bind(repo)
        .fetch_all(&self.read)
        .await?;
        rs.iter()
            .map(|r| {
                Ok(SecretValue {
                    name: r.text("name")?,
                    value_enc: r.bytes("value_enc")?,
                    allow_pull_requests: r.flag("allow_pull_requests")?,
                })
            })
            .collect()
    }

    /// Stores a token by its hash (the caller hashes; the plain token is never stored),
    /// recorded in the audit log as made by the server itself. `Conflict` if the hash
    /// exists.
    pub async fn create_token(
        &self,
        name: &str,
        token_hash: &str,
        scope: TokenScope,
    ) -> Result<ApiToken> {
        self.create_token_by(SYSTEM, name, token_hash, scope).await
    }

    /// [`Store::create_token`] on behalf of `actor`, for every repository.
    pub async fn create_token_by(
        &self,
        actor: &str,
        name: &str,
        token_hash: &str,
        scope: TokenScope,
    ) -> Result<ApiToken> {
        self.create_scoped_token_by(actor, name, token_hash, scope, &RepoScope::All)
            .await
    }

    /// [`Store::create_token_by`] for the repositories `repos` (the caller has checked
    /// that the combination makes sense: `admin::token_scope`).
    pub async fn create_scoped_token_by(
        &self,
        actor: &str,
        name: &str,
        token_hash: &str,
        scope: TokenScope,
        repos: &RepoScope,
    ) -> Result<ApiToken> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO api_tokens (name, token_hash, scope, scope_owner, scope_repos, \
             created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TOKEN_COLS}"
        );
        let row = query(&sql)
            .bind(name)
            .bind(token_hash)
            .bind(scope.as_str())
            .bind(repos.owner_column())
            .bind(repos.repos_column())
            .bind(self.now_ms())
            .fetch_one(&mut *tx)
            .await?;
        let created = token(&row)?;
        let entry = NewAudit::new(actor, action::TOKEN_CREATE, format!("token:{name}"))
            .detail(json!({ "token_id": created.id, "scope": scope.as_str(), "repos": repos }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Finds the token with this hash and records that it was used.
    pub async fn find_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let sql = format!(
            "UPDATE api_tokens SET last_used_at = $2 WHERE token_hash = $1 RETURNING {TOKEN_COLS}"
        );
        let row = query(&sql)
            .bind(token_hash)
            .bind(self.now_ms())
            .fetch_optional(&self.write)
            .await?;
        row.as_ref().map(token).transpose()
    }

    /// All tokens, oldest first (without hashes).
    pub async fn list_tokens(&self) -> Result<Vec<ApiToken>> {
        let sql = format!("SELECT {TOKEN_COLS} FROM api_tokens ORDER BY id");
        rows(&query(&sql).fetch_all(&self.read).await?, token)
    }

    pub async fn delete_token(&self, id: TokenId) -> Result<bool> {
        self.delete_token_by(SYSTEM, id).await
    }

    /// Deletes a machine token on behalf of `actor`; false if there was none.
    pub async fn delete_token_by(&self, actor: &str, id: TokenId) -> Result<bool> {
        let mut tx = self.begin().await?;
        let sql = format!("DELETE FROM api_tokens WHERE id = $1 RETURNING {TOKEN_COLS}");
        let Some(row) = query(&sql).bind(id).fetch_optional(&mut *tx).await? else {
            return Ok(false);
        };
        let gone = token(&row)?;
        let entry = NewAudit::new(actor, action::TOKEN_REVOKE, format!("token:{}", gone.name))
            .detail(json!({ "token_id": gone.id, "scope": gone.scope.as_str() }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Registers a runner by name, or updates the labels, capacity and repository scope
    /// of the runner with that name; either way it was seen now.
    pub async fn register_runner(
        &self,
        name: &str,
        labels: &[String],
        capacity: u32,
        repos: &RepoScope,
    ) -> Result<Runner> {
        let sql = format!(
            "INSERT INTO runners (name, labels, capacity, scope_owner, scope_repos, \
             created_at, last_seen_at) VALUES ($1, $2, $3, $5, $6, $4, $4) \
             ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, \
             capacity = excluded.capacity, scope_owner = excluded.scope_owner, \
             scope_repos = excluded.scope_repos, last_seen_at = excluded.last_seen_at \
             RETURNING {RUNNER_COLS}"
        );
        let row = query(&sql)
            .bind(name)
            .bind(json_text(&labels))
            .bind(i64::from(capacity))
            .bind(self.now_ms())
            .bind(repos.owner_column())
            .bind(repos.repos_column())
            .fetch_one(&self.write)
            .await?;
        runner(&row)
    }

    /// Records that a runner was seen now; the runner as registered.
    pub async fn touch_runner(&self, id: RunnerId) -> Result<Runner> {
        let sql =
            format!("UPDATE runners SET last_seen_at = $2 WHERE id = $1 RETURNING {RUNNER_COLS}");
        match query(&sql)
            .bind(id)
            .bind(self.now_ms())
            .fetch_optional(&self.write)
            .await?
        {
            Some(row) => runner(&row),
            None => Err(Error::NotFound(format!("runner {id}"))),
        }
    }

    /// How many stages each runner is running now (runners running none are absent).
    pub async fn running_per_runner(&self) -> Result<std::collections::HashMap<RunnerId, i64>> {
        let rs = query(
            "SELECT runner_id, COUNT(*) AS n FROM stages \
             WHERE status = 'running' AND runner_id IS NOT NULL GROUP BY runner_id",
        )
        .fetch_all(&self.read)
        .await?;
        rs.iter()
            .map(|r| Ok((r.int("runner_id")?, r.int("n")?)))
            .collect()
    }

    pub async fn list_runners(&self) -> Result<Vec<Runner>> {
        let sql = format!("SELECT {RUNNER_COLS} FROM runners ORDER BY name");
        rows(&query(&sql).fetch_all(&self.read).await?, runner)
    }

    /// Claims the cron instant `scheduled_at` (unix ms) of a schedule: `true` for exactly
    /// one caller per instant, however many replicas ask; `false` for an instant at or
    /// before the last one fired.
    pub async fn claim_cron(
        &self,
        repo: RepoId,
        pipeline: &str,
        name: &str,
        scheduled_at: i64,
    ) -> Result<bool> {
        let r = query(
            "INSERT INTO cron_state (repo_id, pipeline, name, last_fired_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (repo_id, pipeline, name) \
             DO UPDATE SET last_fired_at = excluded.last_fired_at \
             WHERE cron_state.last_fired_at < excluded.last_fired_at",
        )
        .bind(repo)
        .bind(pipeline)
        .bind(name)
        .bind(scheduled_at)
        .execute(&self.write)
        .await?;
        Ok(affected(r) == 1)
    }

    /// The last instant a schedule fired, if ever.
    pub async fn cron_last_fired(
        &self,
        repo: RepoId,
        pipeline: &str,
        name: &str,
    ) -> Result<Option<i64>> {
        let row = query(
            "SELECT last_fired_at FROM cron_state WHERE repo_id = $1 AND pipeline = $2 \
             AND name = $3",
        )
        .bind(repo)
        .bind(pipeline)
        .bind(name)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| r.int("last_fired_at")).transpose()
    }

    /// The id of the newest event (0 when there is none): where a new follower starts.
    pub async fn latest_event_id(&self) -> Result<i64> {
        let row = query("SELECT COALESCE(MAX(id), 0) AS last FROM events")
            .fetch_one(&self.read)
            .await?;
        row.int("last")
    }

    /// Status changes with an id above `after`, oldest first. Ids increase with every
    /// event. On PostgreSQL ids are taken at insert and transactions may commit out of
    /// order, so a reader polling with the last id seen can miss an event committed late;
    /// readers that must see every event should re-read a short window behind `after`.
    pub async fn events_after(
        &self,
        after: i64,
        run: Option<super::RunId>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let rs = query(
            "SELECT id, run_id, stage_id, status, created_at FROM events \
             WHERE id > $1 AND ($2 = 0 OR run_id = $2) ORDER BY id LIMIT $3",
        )
        .bind(after)
        .bind(run.unwrap_or(0))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rs.iter()
            .map(|r| {
                Ok(StoredEvent {
                    id: r.int("id")?,
                    run_id: r.int("run_id")?,
                    stage_id: r.opt_int("stage_id")?,
                    status: r.text("status")?,
                    created_at: r.int("created_at")?,
                })
            })
            .collect()
    }
}
