//! The audit log: append-only and hash-chained.
//!
//! Each entry's hash is sha256 over a canonical encoding of its fields and the previous
//! entry's hash, so editing a row changes its hash (and breaks the next entry's link),
//! and deleting one leaves a link pointing at nothing. Appends are serialised (SQLite's
//! one writer; on PostgreSQL a transaction-scoped advisory lock), and `prev_hash` is
//! unique, so the chain never forks. What the chain alone cannot show is the loss of
//! the newest entries: [`AuditReport::head`] is the hash to keep elsewhere.

use sha2::{Digest, Sha256};
use sqlx::query;

use super::row::{RowExt, json_text, rows};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Dialect, RepoId, Result, Store, Tx};

/// An audit entry to append ([`Store::append_audit`](super::Store::append_audit)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewAudit {
    /// Who: `user:<name>` (a personal token), `token:<name>` (a machine token), `cli`
    /// (a `slipway` command on the database) or `system` (the server itself).
    pub actor: String,
    /// What, as a dotted name ([`audit::action`](super::audit::action)).
    pub action: String,
    pub repo_id: Option<RepoId>,
    /// What it was done to: `user:alice`, `run:12`, `environment:production` …
    pub subject: String,
    /// Anything else worth keeping (never a secret).
    pub detail: Value,
}

impl NewAudit {
    /// An entry about no repository and with an empty detail.
    pub fn new(actor: &str, action: &str, subject: impl Into<String>) -> NewAudit {
        NewAudit {
            actor: actor.to_string(),
            action: action.to_string(),
            repo_id: None,
            subject: subject.into(),
            detail: Value::Object(Default::default()),
        }
    }

    pub fn repo(mut self, repo_id: Option<RepoId>) -> NewAudit {
        self.repo_id = repo_id;
        self
    }

    pub fn detail(mut self, detail: Value) -> NewAudit {
        self.detail = detail;
        self
    }
}

/// One entry of the hash-chained audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub repo_id: Option<RepoId>,
    pub subject: String,
    pub detail: Value,
    /// The previous entry's hash (64 zeros for the first).
    pub prev_hash: String,
    /// sha256 over this entry's fields and `prev_hash`.
    pub hash: String,
}

/// The actor of what the server does by itself (its in-process runner's token …).
pub const SYSTEM: &str = "system";
/// The actor of a `slipway` command working on the database: whoever can run it can
/// read the server's configuration, so it is the operator.
pub const CLI: &str = "cli";

/// The actions recorded (`NewAudit::action`).
pub mod action {
    pub const USER_CREATE: &str = "user.create";
    pub const USER_DISABLE: &str = "user.disable";
    pub const USER_ENABLE: &str = "user.enable";
    pub const ROLE_SET: &str = "role.set";
    pub const ROLE_REMOVE: &str = "role.remove";
    /// A personal token (subject `user:<name>`) or a machine token (`token:<name>`).
    pub const TOKEN_CREATE: &str = "token.create";
    pub const TOKEN_REVOKE: &str = "token.revoke";
    pub const IDENTITY_LINK: &str = "identity.link";
    pub const IDENTITY_UNLINK: &str = "identity.unlink";
    /// A forge account linked to (or unlinked from) a user for signing in with it.
    pub const OAUTH_LINK: &str = "oauth.link";
    pub const OAUTH_UNLINK: &str = "oauth.unlink";
    /// A sign-in with a forge account (a new user made by it is `user.create` too).
    pub const OAUTH_SIGN_IN: &str = "oauth.sign_in";
    /// An environment's rules set (created or changed) or removed.
    pub const ENVIRONMENT_SET: &str = "environment.set";
    pub const ENVIRONMENT_DELETE: &str = "environment.delete";
    /// A deploy stage reached a gate that needs approvals.
    pub const APPROVAL_REQUEST: &str = "approval.request";
    /// The YAML's `approval:` asked for fewer approvals than the environment requires.
    pub const APPROVAL_LOWERING_REFUSED: &str = "approval.lowering_refused";
    pub const APPROVAL_TIMEOUT: &str = "approval.timeout";
    pub const APPROVAL_SUPERSEDED: &str = "approval.superseded";
    pub const VOTE_APPROVE: &str = "vote.approve";
    pub const VOTE_REJECT: &str = "vote.reject";
    /// A vote that was not counted, with the reason.
    pub const VOTE_REFUSED: &str = "vote.refused";
    /// A gate's decision: enough approvals, or a rejection.
    pub const DEPLOY_APPROVED: &str = "deploy.approved";
    pub const DEPLOY_REJECTED: &str = "deploy.rejected";
    /// The run's ref may not deploy to the environment.
    pub const DEPLOY_REFUSED: &str = "deploy.refused";
    pub const PROMOTE: &str = "run.promote";
    pub const ROLLBACK: &str = "run.rollback";
    pub const ROLLOUT_PROMOTE: &str = "rollout.promote";
    pub const ROLLOUT_ABORT: &str = "rollout.abort";
    pub const ROLLOUT_RETRY: &str = "rollout.retry";
    /// A promote, abort or retry without the environment's release permission.
    pub const ROLLOUT_REFUSED: &str = "rollout.refused";
}

/// Key of the PostgreSQL advisory lock that serialises appends.
const AUDIT_LOCK_KEY: i64 = 0x534c_4950_4155_4454; // "SLIPAUDT"
/// The predecessor of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const AUDIT_COLS: &str = "id, at, actor, action, repo_id, subject, detail, prev_hash, hash";

fn entry(r: &sqlx::any::AnyRow) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.int("id")?,
        at: r.int("at")?,
        actor: r.text("actor")?,
        action: r.text("action")?,
        repo_id: r.opt_int("repo_id")?,
        subject: r.text("subject")?,
        detail: r.json("detail")?,
        prev_hash: r.text("prev_hash")?,
        hash: r.text("hash")?,
    })
}

/// The hash of an entry: sha256 over its fields, each length-prefixed so no two
/// different entries encode alike, then the previous hash.
pub fn entry_hash(
    at: i64,
    actor: &str,
    action: &str,
    repo_id: Option<RepoId>,
    subject: &str,
    detail: &str,
    prev_hash: &str,
) -> String {
    let mut h = Sha256::new();
    let repo = repo_id.map(|r| r.to_string()).unwrap_or_default();
    for field in [
        at.to_string().as_str(),
        actor,
        action,
        repo.as_str(),
        subject,
        detail,
        prev_hash,
    ] {
        h.update((field.len() as u64).to_be_bytes());
        h.update(field.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Which entries to list.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub actor: Option<String>,
    pub repo_id: Option<RepoId>,
    /// Only entries with a larger id (paging).
    pub after: Option<i64>,
    pub limit: Option<i64>,
}

/// A verified chain.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditReport {
    pub entries: u64,
    /// The newest entry's hash (the genesis hash for an empty log).
    pub head: String,
}

/// Where and why a chain does not verify.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct AuditBreak {
    /// The entry that does not check out.
    pub id: i64,
    pub reason: String,
    /// Entries before it that did.
    pub checked: u64,
}

impl Store {
    /// Appends an entry in its own transaction.
    pub async fn append_audit(&self, new: &NewAudit) -> Result<AuditEntry> {
        let mut tx = self.begin().await?;
        let e = self.append_audit_tx(&mut tx, new).await?;
        tx.commit().await?;
        Ok(e)
    }

    /// Appends an entry inside the caller's transaction, so a decision and its record
    /// commit together or not at all.
    pub(crate) async fn append_audit_tx(&self, tx: &mut Tx, new: &NewAudit) -> Result<AuditEntry> {
        if self.dialect == Dialect::Postgres {
            query("SELECT 1 FROM pg_advisory_xact_lock($1)")
                .bind(AUDIT_LOCK_KEY)
                .execute(&mut **tx)
                .await?;
        }
        let prev = query("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?
            .map(|r| r.text("hash"))
            .transpose()?
            .unwrap_or_else(|| GENESIS.to_string());
        let at = self.now_ms();
        let detail = json_text(&new.detail);
        let hash = entry_hash(
            at,
            &new.actor,
            &new.action,
            new.repo_id,
            &new.subject,
            &detail,
            &prev,
        );
        let sql = format!(
            "INSERT INTO audit_log (at, actor, action, repo_id, subject, detail, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {AUDIT_COLS}"
        );
        let row = query(&sql)
            .bind(at)
            .bind(&new.actor)
            .bind(&new.action)
            .bind(new.repo_id)
            .bind(&new.subject)
            .bind(&detail)
            .bind(&prev)
            .bind(&hash)
            .fetch_one(&mut **tx)
            .await?;
        entry(&row)
    }

    /// Entries matching `filter`, oldest first.
    /// The newest entries matching `filter` (its `after` is ignored), newest first.
    pub async fn list_audit_newest(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT {AUDIT_COLS} FROM audit_log \
             WHERE ($1 IS NULL OR action = $1) AND ($2 IS NULL OR actor = $2) \
               AND ($3 IS NULL OR repo_id = $3) \
             ORDER BY id DESC LIMIT $4"
        );
        let rs = query(&sql)
            .bind(filter.action.as_deref())
            .bind(filter.actor.as_deref())
            .bind(filter.repo_id)
            .bind(filter.limit.unwrap_or(100))
            .fetch_all(&self.read)
            .await?;
        rows(&rs, entry)
    }

    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT {AUDIT_COLS} FROM audit_log \
             WHERE ($1 IS NULL OR action = $1) AND ($2 IS NULL OR actor = $2) \
               AND ($3 IS NULL OR repo_id = $3) AND id > $4 \
             ORDER BY id LIMIT $5"
        );
        let rs = query(&sql)
            .bind(filter.action.as_deref())
            .bind(filter.actor.as_deref())
            .bind(filter.repo_id)
            .bind(filter.after.unwrap_or(0))
            .bind(filter.limit.unwrap_or(1000).clamp(1, 10_000))
            .fetch_all(&self.read)
            .await?;
        rows(&rs, entry)
    }

    /// Walks the whole chain: every entry's hash recomputed from its stored fields,
    /// every link to its predecessor checked.
    pub async fn verify_audit(&self) -> Result<Result<AuditReport, AuditBreak>> {
        let mut prev = GENESIS.to_string();
        let mut prev_id: Option<i64> = None;
        let mut after = 0i64;
        let mut count = 0u64;
        loop {
            let sql =
                format!("SELECT {AUDIT_COLS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT 1000");
            let rs = query(&sql).bind(after).fetch_all(&self.read).await?;
            if rs.is_empty() {
                break;
            }
            for r in &rs {
                let id = r.int("id")?;
                let stored_prev = r.text("prev_hash")?;
                if stored_prev != prev {
                    let reason = match prev_id {
                        Some(p) => format!(
                            "entry {id} does not follow entry {p}: its prev_hash is not that \
                             entry's hash (an entry between them was deleted, or one was \
                             rewritten)"
                        ),
                        None => format!(
                            "entry {id} is the oldest left but does not start the chain (an \
                             older entry was deleted)"
                        ),
                    };
                    return Ok(Err(AuditBreak {
                        id,
                        reason,
                        checked: count,
                    }));
                }
                let detail = r.text("detail")?;
                let computed = entry_hash(
                    r.int("at")?,
                    &r.text("actor")?,
                    &r.text("action")?,
                    r.opt_int("repo_id")?,
                    &r.text("subject")?,
                    &detail,
                    &stored_prev,
                );
                let stored = r.text("hash")?;
                if computed != stored {
                    return Ok(Err(AuditBreak {
                        id,
                        reason: format!(
                            "entry {id} was edited: its content does not match its hash"
                        ),
                        checked: count,
                    }));
                }
                prev = stored;
                prev_id = Some(id);
                after = id;
                count += 1;
            }
        }
        Ok(Ok(AuditReport {
            entries: count,
            head: prev,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_cannot_shift_into_each_other() {
        let h = |actor, action| entry_hash(1, actor, action, None, "s", "{}", GENESIS);
        assert_ne!(h("ab", "c"), h("a", "bc"));
        assert_eq!(h("ab", "c"), h("ab", "c"));
        assert_ne!(
            entry_hash(1, "a", "b", Some(1), "s", "{}", GENESIS),
            entry_hash(1, "a", "b", None, "s", "{}", GENESIS)
        );
    }
}
