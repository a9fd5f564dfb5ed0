//! Web UI sessions: a signed-in browser. The cookie carries a random token; the row
//! keeps its SHA-256 (like API tokens), the user, the session's CSRF token and when it
//! expires. A disabled user's sessions stop working at once.

use sqlx::query;

use super::row::RowExt;
use super::{Result, Store, User, UserId};
use crate::crypto::{generate_token, hash_token};

/// The prefix of a session token (never shown; it names leaked cookies).
pub const SESSION_PREFIX: &str = "slps_";

/// A session as the request sees it.
#[derive(Debug, Clone)]
pub struct Session {
    pub user: User,
    /// What forms and state-changing API calls from the page must carry.
    pub csrf: String,
    pub expires_at: i64,
}

impl Store {
    /// Starts a session for `user` lasting `ttl_ms`; returns the cookie's token (shown
    /// only now) and the session.
    pub async fn create_session(&self, user: &User, ttl_ms: i64) -> Result<(String, Session)> {
        let token = generate_token(SESSION_PREFIX);
        let csrf = generate_token("");
        let now = self.now_ms();
        let mut tx = self.begin().await?;
        // Sessions past their time are gone for good; sweep them as new ones start.
        query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        query(
            "INSERT INTO sessions (token_hash, user_id, csrf, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash_token(&token))
        .bind(user.id)
        .bind(&csrf)
        .bind(now)
        .bind(now + ttl_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((
            token,
            Session {
                user: user.clone(),
                csrf,
                expires_at: now + ttl_ms,
            },
        ))
    }

    /// The live session behind a cookie token: `None` when unknown, expired, or its
    /// user is disabled.
    pub async fn find_session(&self, token: &str) -> Result<Option<Session>> {
        let row = query(
            "SELECT s.csrf, s.expires_at, u.id, u.name, u.disabled, u.created_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.token_hash = $1 AND s.expires_at > $2",
        )
        .bind(hash_token(token))
        .bind(self.now_ms())
        .fetch_optional(&self.read)
        .await?;
        let Some(r) = row else {
            return Ok(None);
        };
        let user = User {
            id: r.int("id")?,
            name: r.text("name")?,
            disabled: r.flag("disabled")?,
            created_at: r.int("created_at")?,
        };
        if user.disabled {
            return Ok(None);
        }
        Ok(Some(Session {
            user,
            csrf: r.text("csrf")?,
            expires_at: r.int("expires_at")?,
        }))
    }

    /// Ends the session behind a cookie token (signing out); nothing if unknown.
    pub async fn delete_session(&self, token: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        query("DELETE FROM sessions WHERE token_hash = $1")
            .bind(hash_token(token))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends every session of a user (disabled, or signed out everywhere).
    pub async fn delete_sessions_of(&self, user: UserId) -> Result<()> {
        let mut tx = self.begin().await?;
        query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
