//! Users, their roles, personal tokens and linked forge identities.

use sqlx::query;

use super::row::{RowExt, rows};
use super::{
    Error, ForgeKind, Identity, RepoId, Result, Role, RoleBinding, Store, User, UserId, UserToken,
    affected, now_ms,
};

const USER_COLS: &str = "id, name, disabled, created_at";
const USER_TOKEN_COLS: &str = "id, user_id, name, created_at, last_used_at";
const IDENTITY_COLS: &str = "id, user_id, forge, login, created_at";

fn user(r: &sqlx::any::AnyRow) -> Result<User> {
    Ok(User {
        id: r.int("id")?,
        name: r.text("name")?,
        disabled: r.flag("disabled")?,
        created_at: r.int("created_at")?,
    })
}

fn user_token(r: &sqlx::any::AnyRow) -> Result<UserToken> {
    Ok(UserToken {
        id: r.int("id")?,
        user_id: r.int("user_id")?,
        name: r.text("name")?,
        created_at: r.int("created_at")?,
        last_used_at: r.opt_int("last_used_at")?,
    })
}

fn identity(r: &sqlx::any::AnyRow) -> Result<Identity> {
    Ok(Identity {
        id: r.int("id")?,
        user_id: r.int("user_id")?,
        forge: r.parsed("forge")?,
        login: r.text("login")?,
        created_at: r.int("created_at")?,
    })
}

impl Store {
    /// Creates a user; `Conflict` if the name is taken. The caller hashes the password.
    pub async fn create_user(&self, name: &str, password_hash: &str) -> Result<User> {
        let sql = format!(
            "INSERT INTO users (name, password_hash, created_at) VALUES ($1, $2, $3) \
             RETURNING {USER_COLS}"
        );
        let row = query(&sql)
            .bind(name)
            .bind(password_hash)
            .bind(now_ms())
            .fetch_one(&self.write)
            .await?;
        user(&row)
    }

    pub async fn get_user(&self, id: UserId) -> Result<User> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE id = $1");
        let row = query(&sql).bind(id).fetch_optional(&self.read).await?;
        row.as_ref()
            .map(user)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("user {id}")))
    }

    pub async fn get_user_by_name(&self, name: &str) -> Result<User> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE name = $1");
        let row = query(&sql).bind(name).fetch_optional(&self.read).await?;
        row.as_ref()
            .map(user)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("user `{name}`")))
    }

    /// The user and their password hash, for signing in.
    pub async fn user_password_hash(&self, name: &str) -> Result<Option<(User, String)>> {
        let sql = format!("SELECT {USER_COLS}, password_hash FROM users WHERE name = $1");
        let row = query(&sql).bind(name).fetch_optional(&self.read).await?;
        row.map(|r| Ok((user(&r)?, r.text("password_hash")?)))
            .transpose()
    }

    /// All users, by name.
    pub async fn list_users(&self) -> Result<Vec<User>> {
        let sql = format!("SELECT {USER_COLS} FROM users ORDER BY name");
        rows(&query(&sql).fetch_all(&self.read).await?, user)
    }

    /// Disables (or enables again) a user: a disabled user's tokens stop working.
    pub async fn set_user_disabled(&self, id: UserId, disabled: bool) -> Result<User> {
        let sql = format!("UPDATE users SET disabled = $2 WHERE id = $1 RETURNING {USER_COLS}");
        let row = query(&sql)
            .bind(id)
            .bind(disabled)
            .fetch_optional(&self.write)
            .await?;
        row.as_ref()
            .map(user)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("user {id}")))
    }

    /// Gives `user` the role `role` globally (`repo` None) or on one repository,
    /// replacing the role they had there; `None` removes it. Returns the previous role.
    pub async fn set_role(
        &self,
        user: UserId,
        repo: Option<RepoId>,
        role: Option<Role>,
    ) -> Result<Option<Role>> {
        let mut tx = self.begin().await?;
        let before = query(
            "SELECT role FROM role_bindings WHERE user_id = $1 AND COALESCE(repo_id, 0) = $2",
        )
        .bind(user)
        .bind(repo.unwrap_or(0))
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.parsed::<Role>("role"))
        .transpose()?;
        query("DELETE FROM role_bindings WHERE user_id = $1 AND COALESCE(repo_id, 0) = $2")
            .bind(user)
            .bind(repo.unwrap_or(0))
            .execute(&mut *tx)
            .await?;
        if let Some(role) = role {
            query(
                "INSERT INTO role_bindings (user_id, repo_id, role, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(user)
            .bind(repo)
            .bind(role.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(before)
    }

    /// Every role binding of a user (global first).
    pub async fn roles_of(&self, user: UserId) -> Result<Vec<RoleBinding>> {
        let rs = query(
            "SELECT user_id, repo_id, role FROM role_bindings WHERE user_id = $1 \
             ORDER BY COALESCE(repo_id, 0)",
        )
        .bind(user)
        .fetch_all(&self.read)
        .await?;
        rows(&rs, |r| {
            Ok(RoleBinding {
                user_id: r.int("user_id")?,
                repo_id: r.opt_int("repo_id")?,
                role: r.parsed("role")?,
            })
        })
    }

    /// Stores a personal token by its hash; it acts as `user`.
    pub async fn create_user_token(
        &self,
        user: UserId,
        name: &str,
        token_hash: &str,
    ) -> Result<UserToken> {
        let sql = format!(
            "INSERT INTO user_tokens (user_id, name, token_hash, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING {USER_TOKEN_COLS}"
        );
        let row = query(&sql)
            .bind(user)
            .bind(name)
            .bind(token_hash)
            .bind(now_ms())
            .fetch_one(&self.write)
            .await?;
        user_token(&row)
    }

    /// The personal token with this hash and its user, recording the use. A disabled
    /// user's token is found too: the caller refuses it with a reason.
    pub async fn find_user_token_by_hash(
        &self,
        token_hash: &str,
    ) -> Result<Option<(UserToken, User)>> {
        let sql = format!(
            "UPDATE user_tokens SET last_used_at = $2 WHERE token_hash = $1 \
             RETURNING {USER_TOKEN_COLS}"
        );
        let Some(row) = query(&sql)
            .bind(token_hash)
            .bind(now_ms())
            .fetch_optional(&self.write)
            .await?
        else {
            return Ok(None);
        };
        let token = user_token(&row)?;
        let owner = self.get_user(token.user_id).await?;
        Ok(Some((token, owner)))
    }

    pub async fn list_user_tokens(&self, user: UserId) -> Result<Vec<UserToken>> {
        let sql = format!("SELECT {USER_TOKEN_COLS} FROM user_tokens WHERE user_id = $1 ORDER BY id");
        rows(&query(&sql).bind(user).fetch_all(&self.read).await?, user_token)
    }

    /// Revokes a personal token of `user`; false if there was none with that id.
    pub async fn delete_user_token(&self, user: UserId, id: i64) -> Result<bool> {
        let r = query("DELETE FROM user_tokens WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user)
            .execute(&self.write)
            .await?;
        Ok(affected(r) > 0)
    }

    /// Links a forge account to a user; `Conflict` if it is linked to someone already.
    pub async fn link_identity(
        &self,
        user: UserId,
        forge: ForgeKind,
        login: &str,
    ) -> Result<Identity> {
        let sql = format!(
            "INSERT INTO identities (user_id, forge, login, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {IDENTITY_COLS}"
        );
        let row = query(&sql)
            .bind(user)
            .bind(forge.as_str())
            .bind(login)
            .bind(now_ms())
            .fetch_one(&self.write)
            .await?;
        identity(&row)
    }

    /// The user a forge account is linked to.
    pub async fn find_identity(&self, forge: ForgeKind, login: &str) -> Result<Option<Identity>> {
        let sql = format!("SELECT {IDENTITY_COLS} FROM identities WHERE forge = $1 AND login = $2");
        let row = query(&sql)
            .bind(forge.as_str())
            .bind(login)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(identity).transpose()
    }

    pub async fn identities_of(&self, user: UserId) -> Result<Vec<Identity>> {
        let sql = format!("SELECT {IDENTITY_COLS} FROM identities WHERE user_id = $1 ORDER BY id");
        rows(&query(&sql).bind(user).fetch_all(&self.read).await?, identity)
    }

    pub async fn unlink_identity(&self, user: UserId, forge: ForgeKind, login: &str) -> Result<bool> {
        let r = query("DELETE FROM identities WHERE user_id = $1 AND forge = $2 AND login = $3")
            .bind(user)
            .bind(forge.as_str())
            .bind(login)
            .execute(&self.write)
            .await?;
        Ok(affected(r) > 0)
    }
}
