//! Signing in with a forge: the accounts linked to users for it (`oauth_links`, one per
//! user and configured provider, found by the forge's stable user id) and the sign-ins
//! under way (`oauth_states`, each taken once by its callback). Links, unlinks, sign-ins
//! and sign-ups write their audit entries in their transactions. No forge token is
//! stored here: a sign-in only needs to know who the forge says the person is.

use serde::Serialize;
use serde_json::json;
use sqlx::query;

use super::audit::action;
use super::people::{subject, user};
use super::row::{RowExt, rows};
use super::{Error, NewAudit, Result, Store, Tx, User, UserId};

/// A forge account a user signs in with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OAuthLink {
    pub user_id: UserId,
    /// The configured provider's name (`[oauth.<name>]`).
    pub provider: String,
    /// The forge's stable id of the account (never the login, which can change).
    pub forge_user_id: String,
    /// The account's login when it was linked (for people to read).
    pub login: String,
    pub created_at: i64,
}

/// A sign-in under way, as its callback takes it.
#[derive(Debug, Clone)]
pub struct OAuthState {
    pub provider: String,
    /// The PKCE verifier whose challenge went to the forge.
    pub code_verifier: String,
    /// Where the browser goes once signed in (a local path).
    pub next: String,
    /// Set when a signed-in user links an account rather than signs in.
    pub link_user: Option<UserId>,
    pub expires_at: i64,
}

/// What a new sign-in under way stores.
pub struct NewOAuthState<'a> {
    /// SHA-256 of the `state` sent to the forge.
    pub state_hash: &'a str,
    pub provider: &'a str,
    pub code_verifier: &'a str,
    pub next: &'a str,
    pub link_user: Option<UserId>,
    pub ttl_ms: i64,
}

/// Stored where a password hash would be for a user made by signing in with a forge:
/// not a PHC string, so no password ever matches it.
pub const NO_PASSWORD: &str = "!oauth";

const LINK_COLS: &str = "user_id, provider, forge_user_id, login, created_at";

fn link(r: &sqlx::any::AnyRow) -> Result<OAuthLink> {
    Ok(OAuthLink {
        user_id: r.int("user_id")?,
        provider: r.text("provider")?,
        forge_user_id: r.text("forge_user_id")?,
        login: r.text("login")?,
        created_at: r.int("created_at")?,
    })
}

impl Store {
    /// Records a sign-in under way (sweeping the expired ones).
    pub async fn create_oauth_state(&self, new: &NewOAuthState<'_>) -> Result<()> {
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        query("DELETE FROM oauth_states WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        query(
            "INSERT INTO oauth_states (state_hash, provider, code_verifier, next_path, \
             link_user_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new.state_hash)
        .bind(new.provider)
        .bind(new.code_verifier)
        .bind(new.next)
        .bind(new.link_user)
        .bind(now)
        .bind(now + new.ttl_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes the sign-in under way with this state hash: it is deleted, so a second
    /// callback with the same state finds nothing. `None` when unknown, used or expired.
    pub async fn take_oauth_state(&self, state_hash: &str) -> Result<Option<OAuthState>> {
        let mut tx = self.begin().await?;
        let row = query(
            "DELETE FROM oauth_states WHERE state_hash = $1 RETURNING provider, code_verifier, \
             next_path, link_user_id, expires_at",
        )
        .bind(state_hash)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let state = OAuthState {
            provider: r.text("provider")?,
            code_verifier: r.text("code_verifier")?,
            next: r.text("next_path")?,
            link_user: r.opt_int("link_user_id")?,
            expires_at: r.int("expires_at")?,
        };
        Ok((state.expires_at > self.now_ms()).then_some(state))
    }

    /// The user a forge account is linked to, with the link.
    pub async fn find_oauth_user(
        &self,
        provider: &str,
        forge_user_id: &str,
    ) -> Result<Option<(OAuthLink, User)>> {
        let row = query(
            "SELECT l.user_id, l.provider, l.forge_user_id, l.login, l.created_at AS linked_at, \
             u.id, u.name, u.disabled, u.created_at \
             FROM oauth_links l JOIN users u ON u.id = l.user_id \
             WHERE l.provider = $1 AND l.forge_user_id = $2",
        )
        .bind(provider)
        .bind(forge_user_id)
        .fetch_optional(&self.read)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let found = OAuthLink {
            user_id: r.int("user_id")?,
            provider: r.text("provider")?,
            forge_user_id: r.text("forge_user_id")?,
            login: r.text("login")?,
            created_at: r.int("linked_at")?,
        };
        Ok(Some((found, user(&r)?)))
    }

    /// The forge accounts a user signs in with, by provider name.
    pub async fn oauth_links_of(&self, user: UserId) -> Result<Vec<OAuthLink>> {
        let sql =
            format!("SELECT {LINK_COLS} FROM oauth_links WHERE user_id = $1 ORDER BY provider");
        rows(&query(&sql).bind(user).fetch_all(&self.read).await?, link)
    }

    /// Links a forge account to `user` for signing in. `Conflict` when the account is
    /// linked to a user already, or `user` has an account of this provider linked.
    pub async fn link_oauth(
        &self,
        actor: &str,
        user: &User,
        provider: &str,
        forge_user_id: &str,
        login: &str,
    ) -> Result<OAuthLink> {
        let mut tx = self.begin().await?;
        let linked = self
            .link_oauth_tx(&mut tx, actor, user, provider, forge_user_id, login)
            .await?;
        tx.commit().await?;
        Ok(linked)
    }

    async fn link_oauth_tx(
        &self,
        tx: &mut Tx,
        actor: &str,
        user: &User,
        provider: &str,
        forge_user_id: &str,
        login: &str,
    ) -> Result<OAuthLink> {
        let holder =
            query("SELECT user_id FROM oauth_links WHERE provider = $1 AND forge_user_id = $2")
                .bind(provider)
                .bind(forge_user_id)
                .fetch_optional(&mut **tx)
                .await?
                .map(|r| r.int("user_id"))
                .transpose()?;
        match holder {
            Some(id) if id == user.id => {
                return Err(Error::Conflict(format!(
                    "this {provider} account is linked to you already"
                )));
            }
            Some(_) => {
                return Err(Error::Conflict(format!(
                    "this {provider} account ({login}) is linked to another user"
                )));
            }
            None => {}
        }
        let sql = format!(
            "INSERT INTO oauth_links (user_id, provider, forge_user_id, login, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING {LINK_COLS}"
        );
        let row = query(&sql)
            .bind(user.id)
            .bind(provider)
            .bind(forge_user_id)
            .bind(login)
            .bind(self.now_ms())
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| match Error::from(e) {
                Error::Conflict(_) => Error::Conflict(format!(
                    "`{}` has a {provider} account linked already: unlink it first",
                    user.name
                )),
                e => e,
            })?;
        let linked = link(&row)?;
        let entry = NewAudit::new(actor, action::OAUTH_LINK, subject(&user.name)).detail(json!({
            "provider": provider, "forge_user_id": forge_user_id, "login": login,
        }));
        self.append_audit_tx(tx, &entry).await?;
        Ok(linked)
    }

    /// Unlinks `user`'s account of `provider`; false if they had none.
    pub async fn unlink_oauth(&self, actor: &str, user: &User, provider: &str) -> Result<bool> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "DELETE FROM oauth_links WHERE user_id = $1 AND provider = $2 RETURNING {LINK_COLS}"
        );
        let Some(row) = query(&sql)
            .bind(user.id)
            .bind(provider)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let gone = link(&row)?;
        let entry = NewAudit::new(actor, action::OAUTH_UNLINK, subject(&user.name)).detail(json!({
            "provider": provider, "forge_user_id": gone.forge_user_id, "login": gone.login,
        }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Makes a user named `name` (no role, no password) linked to a forge account, for
    /// a sign-in the provider's settings let sign up. `Conflict` if the name is taken.
    pub async fn sign_up_oauth(
        &self,
        name: &str,
        provider: &str,
        forge_user_id: &str,
        login: &str,
    ) -> Result<User> {
        let actor = subject(name);
        let mut tx = self.begin().await?;
        let row = query(
            "INSERT INTO users (name, password_hash, created_at) VALUES ($1, $2, $3) \
             RETURNING id, name, disabled, created_at",
        )
        .bind(name)
        .bind(NO_PASSWORD)
        .bind(self.now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| match Error::from(e) {
            Error::Conflict(_) => Error::Conflict(format!("a user named `{name}` exists")),
            e => e,
        })?;
        let created = user(&row)?;
        let entry = NewAudit::new(&actor, action::USER_CREATE, subject(name))
            .detail(json!({ "by": "oauth", "provider": provider }));
        self.append_audit_tx(&mut tx, &entry).await?;
        self.link_oauth_tx(&mut tx, &actor, &created, provider, forge_user_id, login)
            .await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Records a sign-in with a forge account in the audit log.
    pub async fn audit_oauth_sign_in(
        &self,
        user: &User,
        provider: &str,
        forge_user_id: &str,
        login: &str,
    ) -> Result<()> {
        let entry = NewAudit::new(
            &subject(&user.name),
            action::OAUTH_SIGN_IN,
            subject(&user.name),
        )
        .detail(json!({
            "provider": provider, "forge_user_id": forge_user_id, "login": login,
        }));
        self.append_audit(&entry).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn no_password_matches_a_forge_made_user() {
        for guess in ["", "!oauth", "oauth", "password"] {
            assert!(!crate::crypto::verify_password(guess, super::NO_PASSWORD));
        }
    }
}
