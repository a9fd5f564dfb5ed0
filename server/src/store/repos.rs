//! Repositories.

use sqlx::query;

use super::row::{REPO_COLS, repo, rows};
use super::{Error, NewRepo, Repo, RepoId, Result, Store, affected};

/// What a lookup by id says of a repository that does not exist (anymore): messages
/// name repositories by `owner/name`, never by their internal id.
pub(crate) const GONE: &str = "the repository (it was deleted)";

impl Store {
    /// Registers a repository; `Conflict` if the name is taken.
    pub async fn create_repo(&self, new: NewRepo) -> Result<Repo> {
        let sql = format!(
            "INSERT INTO repos (name, forge, clone_url, default_branch, webhook_secret_enc, \
             forge_token_enc, trusted, api_url, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             RETURNING {REPO_COLS}"
        );
        let row = query(&sql)
            .bind(&new.name)
            .bind(new.forge.as_str())
            .bind(&new.clone_url)
            .bind(&new.default_branch)
            .bind(new.webhook_secret_enc)
            .bind(new.forge_token_enc)
            .bind(new.trusted)
            .bind(&new.api_url)
            .bind(self.now_ms())
            .fetch_one(&self.write)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Conflict(_) => {
                    Error::Conflict(format!("a repository named {:?} exists", new.name))
                }
                e => e,
            })?;
        repo(&row)
    }

    pub async fn get_repo(&self, id: RepoId) -> Result<Repo> {
        let sql = format!("SELECT {REPO_COLS} FROM repos WHERE id = $1");
        match query(&sql).bind(id).fetch_optional(&self.read).await? {
            Some(row) => repo(&row),
            // Internal ids never reach a message: the repository is gone, so has its name.
            None => Err(Error::NotFound(GONE.into())),
        }
    }

    /// Looks a repository up by its name, e.g. `team/app`.
    pub async fn get_repo_by_name(&self, name: &str) -> Result<Repo> {
        let sql = format!("SELECT {REPO_COLS} FROM repos WHERE name = $1");
        match query(&sql).bind(name).fetch_optional(&self.read).await? {
            Some(row) => repo(&row),
            None => Err(Error::NotFound(format!("repository {name:?}"))),
        }
    }

    /// All repositories, by name.
    pub async fn list_repos(&self) -> Result<Vec<Repo>> {
        let sql = format!("SELECT {REPO_COLS} FROM repos ORDER BY name");
        rows(&query(&sql).fetch_all(&self.read).await?, repo)
    }

    /// Writes the editable fields of `repo` (everything but id, run counter and
    /// creation time, the API URL included) and returns the stored row.
    pub async fn update_repo(&self, r: &Repo) -> Result<Repo> {
        let sql = format!(
            "UPDATE repos SET name = $2, forge = $3, clone_url = $4, default_branch = $5, \
             webhook_secret_enc = $6, forge_token_enc = $7, trusted = $8, api_url = $9 \
             WHERE id = $1 \
             RETURNING {REPO_COLS}"
        );
        let row = query(&sql)
            .bind(r.id)
            .bind(&r.name)
            .bind(r.forge.as_str())
            .bind(&r.clone_url)
            .bind(&r.default_branch)
            .bind(&r.webhook_secret_enc)
            .bind(&r.forge_token_enc)
            .bind(r.trusted)
            .bind(&r.api_url)
            .fetch_optional(&self.write)
            .await?;
        match row {
            Some(row) => repo(&row),
            None => Err(Error::NotFound(format!("repository {:?}", r.name))),
        }
    }

    /// Sets (or clears) the forge API base URL used for commit statuses.
    pub async fn set_repo_api_url(&self, id: RepoId, api_url: Option<&str>) -> Result<Repo> {
        let sql = format!("UPDATE repos SET api_url = $2 WHERE id = $1 RETURNING {REPO_COLS}");
        match query(&sql)
            .bind(id)
            .bind(api_url)
            .fetch_optional(&self.write)
            .await?
        {
            Some(row) => repo(&row),
            None => Err(Error::NotFound(GONE.into())),
        }
    }

    /// Deletes a repository and everything stored for it (runs, stages, secrets …).
    pub async fn delete_repo(&self, id: RepoId) -> Result<bool> {
        let r = query("DELETE FROM repos WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(affected(r) > 0)
    }
}
