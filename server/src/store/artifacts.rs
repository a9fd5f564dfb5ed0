//! Artifact records (what a stage produced; content in the blob store) and
//! per-repository cache entries.

use sqlx::any::AnyRow;
use sqlx::query;

use super::row::{RowExt, rows};
use super::{
    ArtifactRecord, CacheEntry, Error, NewArtifact, RepoId, Result, RunId, StageId, Store,
};

const ARTIFACT_COLS: &str = "a.id, a.run_id, a.stage_id, s.stage_key, a.name, a.kind, a.sha256, \
    a.size, a.mode, a.created_at";

fn artifact(r: &AnyRow) -> Result<ArtifactRecord> {
    Ok(ArtifactRecord {
        id: r.int("id")?,
        run_id: r.int("run_id")?,
        stage_id: r.int("stage_id")?,
        stage_key: r.text("stage_key")?,
        name: r.text("name")?,
        kind: r.parsed("kind")?,
        sha256: r.text("sha256")?,
        size: r.int("size")?,
        mode: r.int("mode")?,
        created_at: r.int("created_at")?,
    })
}

fn cache(r: &AnyRow) -> Result<CacheEntry> {
    Ok(CacheEntry {
        repo_id: r.int("repo_id")?,
        key: r.text("cache_key")?,
        sha256: r.text("sha256")?,
        size: r.int("size")?,
        created_at: r.int("created_at")?,
        last_used_at: r.int("last_used_at")?,
    })
}

impl Store {
    /// Records an artifact of `stage`; one of the same name from an earlier attempt of
    /// the stage is replaced (a retried upload is acknowledged, not duplicated).
    pub async fn put_artifact(&self, stage: StageId, new: &NewArtifact) -> Result<ArtifactRecord> {
        let mut tx = self.begin().await?;
        let run: i64 = match query("SELECT run_id FROM stages WHERE id = $1")
            .bind(stage)
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(row) => row.int("run_id")?,
            None => return Err(Error::NotFound(format!("stage {stage}"))),
        };
        let row = query(
            "INSERT INTO artifacts (run_id, stage_id, name, kind, sha256, size, mode, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (stage_id, name) DO UPDATE SET kind = excluded.kind, \
             sha256 = excluded.sha256, size = excluded.size, mode = excluded.mode, \
             created_at = excluded.created_at RETURNING id",
        )
        .bind(run)
        .bind(stage)
        .bind(&new.name)
        .bind(new.kind.as_str())
        .bind(&new.sha256)
        .bind(new.size)
        .bind(new.mode)
        .bind(self.now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let id = row.int("id")?;
        let sql = format!(
            "SELECT {ARTIFACT_COLS} FROM artifacts a JOIN stages s ON s.id = a.stage_id \
             WHERE a.id = $1"
        );
        let row = query(&sql).bind(id).fetch_one(&mut *tx).await?;
        let record = artifact(&row)?;
        tx.commit().await?;
        Ok(record)
    }

    /// Forgets what earlier attempts of `stage` recorded (a new attempt starts clean;
    /// the blobs stay, other records may share them). Returns how many were removed.
    pub async fn clear_stage_artifacts(&self, stage: StageId) -> Result<u64> {
        let r = query("DELETE FROM artifacts WHERE stage_id = $1")
            .bind(stage)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected())
    }

    /// A run's artifacts, by stage then name.
    pub async fn list_run_artifacts(&self, run: RunId) -> Result<Vec<ArtifactRecord>> {
        let sql = format!(
            "SELECT {ARTIFACT_COLS} FROM artifacts a JOIN stages s ON s.id = a.stage_id \
             WHERE a.run_id = $1 ORDER BY a.stage_id, a.name"
        );
        let rs = query(&sql).bind(run).fetch_all(&self.read).await?;
        rows(&rs, artifact)
    }

    pub async fn get_artifact(&self, id: i64) -> Result<ArtifactRecord> {
        let sql = format!(
            "SELECT {ARTIFACT_COLS} FROM artifacts a JOIN stages s ON s.id = a.stage_id \
             WHERE a.id = $1"
        );
        match query(&sql).bind(id).fetch_optional(&self.read).await? {
            Some(row) => artifact(&row),
            None => Err(Error::NotFound(format!("artifact {id}"))),
        }
    }

    /// Bytes of file artifacts `stage` has stored, not counting one named `except`
    /// (which an upload of that name would replace).
    pub async fn stage_artifact_bytes(&self, stage: StageId, except: &str) -> Result<i64> {
        let row = query(
            // SUM is NUMERIC on PostgreSQL, which the Any driver cannot read: cast.
            "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS total FROM artifacts \
             WHERE stage_id = $1 AND name <> $2 AND kind = 'file'",
        )
        .bind(stage)
        .bind(except)
        .fetch_one(&self.read)
        .await?;
        row.int("total")
    }

    /// The cache entry `key` of `repo`, marked as used now; `None` if there is none.
    pub async fn use_cache(&self, repo: RepoId, key: &str) -> Result<Option<CacheEntry>> {
        let row = query(
            "UPDATE caches SET last_used_at = $3 WHERE repo_id = $1 AND cache_key = $2 \
             RETURNING repo_id, cache_key, sha256, size, created_at, last_used_at",
        )
        .bind(repo)
        .bind(key)
        .bind(self.now_ms())
        .fetch_optional(&self.write)
        .await?;
        row.as_ref().map(cache).transpose()
    }

    /// Records a cache entry unless `key` already has one (the first save wins: a key
    /// names content, so a second save could only differ by build noise). `true` if
    /// this call recorded it.
    pub async fn put_cache(
        &self,
        repo: RepoId,
        key: &str,
        sha256: &str,
        size: i64,
    ) -> Result<bool> {
        let now = self.now_ms();
        let r = query(
            "INSERT INTO caches (repo_id, cache_key, sha256, size, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (repo_id, cache_key) DO NOTHING",
        )
        .bind(repo)
        .bind(key)
        .bind(sha256)
        .bind(size)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// A repository's cache entries, most recently used first.
    pub async fn list_caches(&self, repo: RepoId) -> Result<Vec<CacheEntry>> {
        let rs = query(
            "SELECT repo_id, cache_key, sha256, size, created_at, last_used_at FROM caches \
             WHERE repo_id = $1 ORDER BY last_used_at DESC, cache_key",
        )
        .bind(repo)
        .fetch_all(&self.read)
        .await?;
        rows(&rs, cache)
    }
}
