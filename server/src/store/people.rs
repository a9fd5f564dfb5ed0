//! Users, their roles, personal tokens and linked forge identities.
//!
//! Every change writes its audit entry in the same transaction
//! ([`Store::append_audit_tx`]): a change is never kept without its record. The caller
//! says who acts (`actor`, see [`NewAudit::actor`]); the store says what was done.

use serde_json::json;
use sqlx::query;

use super::audit::action;
use super::row::{RowExt, rows};
use serde::{Deserialize, Serialize};

use super::{Error, ForgeKind, NewAudit, Repo, RepoId, Result, Store, Tx, UserId, affected};

/// A person who signs in (local user, argon2id password).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: UserId,
    pub name: String,
    /// A disabled user can neither sign in nor use a token.
    pub disabled: bool,
    pub created_at: i64,
}

/// What a user may do. Ordered: each role may do everything the ones before it may.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Read runs, logs, artifacts, environments.
    Viewer,
    /// Trigger, cancel and rerun runs; see secret names.
    Developer,
    /// Approve deployments, promote, roll back.
    ReleaseManager,
    /// Everything: users, roles, repositories, settings.
    Admin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Viewer,
        Role::Developer,
        Role::ReleaseManager,
        Role::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::ReleaseManager => "release-manager",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = super::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                super::Error::Invalid(format!(
                    "unknown role {s:?} (one of: viewer, developer, release-manager, admin)"
                ))
            })
    }
}

/// A user's role, globally (`repo_id` None) or on one repository.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RoleBinding {
    pub user_id: UserId,
    pub repo_id: Option<RepoId>,
    /// The repository's `owner/name`; None for the global role.
    pub repo: Option<String>,
    pub role: Role,
}

/// A personal API token (its value is shown once, at creation).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UserToken {
    pub id: i64,
    pub user_id: UserId,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A forge account linked to a user (`github:alice`; `git:<email>` for plain git).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Identity {
    pub id: i64,
    pub user_id: UserId,
    pub forge: ForgeKind,
    pub login: String,
    pub created_at: i64,
}

const USER_COLS: &str = "id, name, disabled, created_at";
const USER_TOKEN_COLS: &str = "id, user_id, name, created_at, last_used_at";
const IDENTITY_COLS: &str = "id, user_id, forge, login, created_at";

pub(super) fn user(r: &sqlx::any::AnyRow) -> Result<User> {
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

/// The audit subject naming a user.
pub(super) fn subject(user: &str) -> String {
    format!("user:{user}")
}

impl Store {
    /// Creates a user, with a first role (on `repo`, or globally) if given; `Conflict` if
    /// the name is taken. The caller hashes the password.
    pub async fn create_user(
        &self,
        actor: &str,
        name: &str,
        password_hash: &str,
        role: Option<(Role, Option<&Repo>)>,
    ) -> Result<User> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO users (name, password_hash, created_at) VALUES ($1, $2, $3) \
             RETURNING {USER_COLS}"
        );
        let created = query(&sql)
            .bind(name)
            .bind(password_hash)
            .bind(self.now_ms())
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Conflict(_) => Error::Conflict(format!("a user named `{name}` exists")),
                e => e,
            })?;
        let created = user(&created)?;
        self.append_audit_tx(
            &mut tx,
            &NewAudit::new(actor, action::USER_CREATE, subject(name)),
        )
        .await?;
        if let Some((role, repo)) = role {
            self.set_role_tx(&mut tx, actor, &created, repo, Some(role))
                .await?;
        }
        tx.commit().await?;
        Ok(created)
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
    /// Refused (`Conflict`) when it would disable the last enabled admin.
    pub async fn set_user_disabled(&self, actor: &str, id: UserId, disabled: bool) -> Result<User> {
        let mut tx = self.begin().await?;
        let admins_before = self.admins_locked(&mut tx).await?;
        let sql = format!("UPDATE users SET disabled = $2 WHERE id = $1 RETURNING {USER_COLS}");
        let changed = query(&sql)
            .bind(id)
            .bind(disabled)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(user)
            .transpose()?
            .ok_or_else(|| Error::NotFound(format!("user {id}")))?;
        keeps_an_admin(&mut tx, admins_before, &changed.name).await?;
        let what = if disabled {
            action::USER_DISABLE
        } else {
            action::USER_ENABLE
        };
        self.append_audit_tx(&mut tx, &NewAudit::new(actor, what, subject(&changed.name)))
            .await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Gives `user` the role `role` globally (`repo` None) or on one repository,
    /// replacing the role they had there; `None` removes it (`NotFound` if there was
    /// none). Returns the previous role. Refused (`Conflict`) when it would take the
    /// admin role from the last enabled admin.
    pub async fn set_role(
        &self,
        actor: &str,
        user: &User,
        repo: Option<&Repo>,
        role: Option<Role>,
    ) -> Result<Option<Role>> {
        let mut tx = self.begin().await?;
        let before = self.set_role_tx(&mut tx, actor, user, repo, role).await?;
        tx.commit().await?;
        Ok(before)
    }

    async fn set_role_tx(
        &self,
        tx: &mut Tx,
        actor: &str,
        user: &User,
        repo: Option<&Repo>,
        role: Option<Role>,
    ) -> Result<Option<Role>> {
        let repo_key = repo.map_or(0, |r| r.id);
        let admins_before = self.admins_locked(tx).await?;
        let before = query(
            "SELECT role FROM role_bindings WHERE user_id = $1 AND COALESCE(repo_id, 0) = $2",
        )
        .bind(user.id)
        .bind(repo_key)
        .fetch_optional(&mut **tx)
        .await?
        .map(|r| r.parsed::<Role>("role"))
        .transpose()?;
        let place = repo.map_or("globally".to_string(), |r| format!("on {}", r.name));
        if role.is_none() && before.is_none() {
            return Err(Error::NotFound(format!(
                "`{}` has no role {place}",
                user.name
            )));
        }
        query("DELETE FROM role_bindings WHERE user_id = $1 AND COALESCE(repo_id, 0) = $2")
            .bind(user.id)
            .bind(repo_key)
            .execute(&mut **tx)
            .await?;
        if let Some(role) = role {
            query(
                "INSERT INTO role_bindings (user_id, repo_id, role, created_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(user.id)
            .bind(repo.map(|r| r.id))
            .bind(role.as_str())
            .bind(self.now_ms())
            .execute(&mut **tx)
            .await?;
        }
        keeps_an_admin(tx, admins_before, &user.name).await?;
        let what = if role.is_some() {
            action::ROLE_SET
        } else {
            action::ROLE_REMOVE
        };
        let entry = NewAudit::new(actor, what, subject(&user.name))
            .repo(repo.map(|r| r.id))
            .detail(json!({
                "role": role,
                "previous": before,
                "repo": repo.map(|r| &r.name),
            }));
        self.append_audit_tx(tx, &entry).await?;
        Ok(before)
    }

    /// The role `user` has on `repo` (the higher of their global role and their role
    /// there), or globally when `repo` is None.
    pub async fn effective_role(&self, user: UserId, repo: Option<RepoId>) -> Result<Option<Role>> {
        let rs = query(
            "SELECT role FROM role_bindings \
             WHERE user_id = $1 AND (repo_id IS NULL OR repo_id = $2)",
        )
        .bind(user)
        .bind(repo.unwrap_or(0))
        .fetch_all(&self.read)
        .await?;
        let roles = rows(&rs, |r| r.parsed::<Role>("role"))?;
        Ok(roles.into_iter().max())
    }

    /// Every role binding of a user (global first, then by repository name).
    pub async fn roles_of(&self, user: UserId) -> Result<Vec<RoleBinding>> {
        let rs = query(
            "SELECT b.user_id, b.repo_id, b.role, r.name AS repo_name FROM role_bindings b \
             LEFT JOIN repos r ON r.id = b.repo_id WHERE b.user_id = $1 \
             ORDER BY b.repo_id IS NOT NULL, r.name",
        )
        .bind(user)
        .fetch_all(&self.read)
        .await?;
        rows(&rs, |r| {
            Ok(RoleBinding {
                user_id: r.int("user_id")?,
                repo_id: r.opt_int("repo_id")?,
                repo: r.opt_text("repo_name")?,
                role: r.parsed("role")?,
            })
        })
    }

    /// Stores a personal token by its hash; it acts as `user`.
    pub async fn create_user_token(
        &self,
        actor: &str,
        user: &User,
        name: &str,
        token_hash: &str,
    ) -> Result<UserToken> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "INSERT INTO user_tokens (user_id, name, token_hash, created_at) \
             VALUES ($1, $2, $3, $4) RETURNING {USER_TOKEN_COLS}"
        );
        let row = query(&sql)
            .bind(user.id)
            .bind(name)
            .bind(token_hash)
            .bind(self.now_ms())
            .fetch_one(&mut *tx)
            .await?;
        let created = user_token(&row)?;
        let entry = NewAudit::new(actor, action::TOKEN_CREATE, subject(&user.name))
            .detail(json!({ "token_id": created.id, "name": created.name }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(created)
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
            .bind(self.now_ms())
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
        let sql =
            format!("SELECT {USER_TOKEN_COLS} FROM user_tokens WHERE user_id = $1 ORDER BY id");
        rows(
            &query(&sql).bind(user).fetch_all(&self.read).await?,
            user_token,
        )
    }

    /// Revokes a personal token of `user`; false if they have none with that id.
    pub async fn delete_user_token(&self, actor: &str, user: &User, id: i64) -> Result<bool> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "DELETE FROM user_tokens WHERE id = $1 AND user_id = $2 RETURNING {USER_TOKEN_COLS}"
        );
        let Some(row) = query(&sql)
            .bind(id)
            .bind(user.id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let gone = user_token(&row)?;
        let entry = NewAudit::new(actor, action::TOKEN_REVOKE, subject(&user.name))
            .detail(json!({ "token_id": gone.id, "name": gone.name }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Links a forge account to a user; `Conflict` naming the holder if it is linked
    /// already. `login` is stored as given: the caller normalises it.
    pub async fn link_identity(
        &self,
        actor: &str,
        user: &User,
        forge: ForgeKind,
        login: &str,
    ) -> Result<Identity> {
        let mut tx = self.begin().await?;
        if let Some(holder) = identity_holder(&mut tx, forge, login).await? {
            return Err(Error::Conflict(format!(
                "{forge}:{login} is already linked to user `{holder}`"
            )));
        }
        let sql = format!(
            "INSERT INTO identities (user_id, forge, login, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {IDENTITY_COLS}"
        );
        let row = query(&sql)
            .bind(user.id)
            .bind(forge.as_str())
            .bind(login)
            .bind(self.now_ms())
            .fetch_one(&mut *tx)
            .await?;
        let linked = identity(&row)?;
        let entry = NewAudit::new(actor, action::IDENTITY_LINK, subject(&user.name))
            .detail(json!({ "identity": format!("{forge}:{login}") }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(linked)
    }

    /// The identity a forge account is linked as, if any.
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
        rows(
            &query(&sql).bind(user).fetch_all(&self.read).await?,
            identity,
        )
    }

    /// Unlinks a forge account from `user`; false if it was not linked to them.
    pub async fn unlink_identity(
        &self,
        actor: &str,
        user: &User,
        forge: ForgeKind,
        login: &str,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let r = query("DELETE FROM identities WHERE user_id = $1 AND forge = $2 AND login = $3")
            .bind(user.id)
            .bind(forge.as_str())
            .bind(login)
            .execute(&mut *tx)
            .await?;
        if affected(r) == 0 {
            return Ok(false);
        }
        let entry = NewAudit::new(actor, action::IDENTITY_UNLINK, subject(&user.name))
            .detail(json!({ "identity": format!("{forge}:{login}") }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The name of the user a forge account is linked to.
async fn identity_holder(tx: &mut Tx, forge: ForgeKind, login: &str) -> Result<Option<String>> {
    query(
        "SELECT u.name FROM identities i JOIN users u ON u.id = i.user_id \
         WHERE i.forge = $1 AND i.login = $2",
    )
    .bind(forge.as_str())
    .bind(login)
    .fetch_optional(&mut **tx)
    .await?
    .map(|r| r.text("name"))
    .transpose()
}

/// Serialises changes that could take away the last admin on PostgreSQL, where two
/// transactions demoting the last two admins at once would each still see the other
/// (SQLite's write transactions are serial already).
const ADMINS_LOCK_KEY: i64 = 0x534c_4950_4144_4d4e; // "SLIPADMN"

impl Store {
    /// [`enabled_admins_tx`] after taking the admins' lock, held until `tx` ends: the
    /// count a change is judged against cannot move under it.
    async fn admins_locked(&self, tx: &mut Tx) -> Result<usize> {
        if self.dialect == super::Dialect::Postgres {
            query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(ADMINS_LOCK_KEY)
                .execute(&mut **tx)
                .await?;
        }
        enabled_admins_tx(tx).await
    }
}

/// How many enabled users hold the global admin role, as `tx` sees it.
async fn enabled_admins_tx(tx: &mut Tx) -> Result<usize> {
    let rs = query(
        "SELECT u.disabled FROM role_bindings b JOIN users u ON u.id = b.user_id \
         WHERE b.repo_id IS NULL AND b.role = 'admin'",
    )
    .fetch_all(&mut **tx)
    .await?;
    let disabled = rows(&rs, |r| r.flag("disabled"))?;
    Ok(disabled.into_iter().filter(|d| !d).count())
}

/// Refuses a change (made in `tx`, not yet committed) that left no enabled admin where
/// there was one: nobody could then manage people from the API or the web UI. A server
/// that never had an admin user (machine tokens only) is not held to it.
async fn keeps_an_admin(tx: &mut Tx, admins_before: usize, user: &str) -> Result<()> {
    if admins_before > 0 && enabled_admins_tx(tx).await? == 0 {
        return Err(Error::Conflict(format!(
            "`{user}` is the last enabled admin: make another user admin first"
        )));
    }
    Ok(())
}
