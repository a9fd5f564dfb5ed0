//! A repository's environments and the rules that protect them. Defined on the server
//! only (a pipeline's YAML can raise a deploy stage's bar, never lower these); every
//! change is in the audit log with what it was before.

use serde::Serialize;
use serde_json::json;
use sqlx::query;

use super::audit::action;
use super::row::{RowExt, json_text, rows};
use super::{Error, NewAudit, Repo, RepoId, Result, Role, Store};
use crate::delivery::gate::{Concurrency, EnvironmentRules};

/// An environment as stored (the kubeconfig sealed; callers open it).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Environment {
    pub id: i64,
    pub repo_id: RepoId,
    pub name: String,
    #[serde(flatten)]
    pub rules: EnvironmentRules,
    /// The namespace deploy stages deploy to.
    pub namespace: Option<String>,
    /// Whether a kubeconfig is stored (never its content); without one, deploy stages
    /// use the runner's own in-cluster credentials.
    pub has_kubeconfig: bool,
    #[serde(skip)]
    pub kubeconfig_enc: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What an admin sets on an environment; the cluster connection is replaced only when
/// `kubeconfig` is `Some` (`Some(None)` removes it).
#[derive(Debug, Clone)]
pub struct EnvironmentUpdate {
    pub rules: EnvironmentRules,
    pub namespace: Option<String>,
    pub kubeconfig_enc: Option<Option<Vec<u8>>>,
}

pub(super) const ENV_COLS: &str = "id, repo_id, name, protected, required_approvals, approver_roles, \
    approver_users, allow_self_approval, refs, wait_timer_ms, approval_timeout_ms, \
    concurrency, supersede_on_push, kubeconfig_enc, namespace, created_at, updated_at";

pub(super) fn decode(r: &sqlx::any::AnyRow) -> Result<Environment> {
    let kubeconfig_enc = r.opt_bytes("kubeconfig_enc")?;
    let roles: Vec<String> = r.json("approver_roles")?;
    Ok(Environment {
        id: r.int("id")?,
        repo_id: r.int("repo_id")?,
        name: r.text("name")?,
        rules: EnvironmentRules {
            protected: r.flag("protected")?,
            required_approvals: u32::try_from(r.int("required_approvals")?).unwrap_or(1),
            approver_roles: roles
                .iter()
                .map(|s| super::parse_enum::<Role>(s))
                .collect::<Result<_>>()?,
            approver_users: r.json("approver_users")?,
            allow_self_approval: r.flag("allow_self_approval")?,
            refs: r.json("refs")?,
            wait_timer_ms: r.int("wait_timer_ms")?,
            approval_timeout_ms: r.opt_int("approval_timeout_ms")?,
            concurrency: r.parsed::<Concurrency>("concurrency")?,
            supersede_on_push: r.flag("supersede_on_push")?,
        },
        namespace: r.opt_text("namespace")?,
        has_kubeconfig: kubeconfig_enc.is_some(),
        kubeconfig_enc,
        created_at: r.int("created_at")?,
        updated_at: r.int("updated_at")?,
    })
}

/// The audit subject naming an environment.
pub(crate) fn env_subject(name: &str) -> String {
    format!("environment:{name}")
}

impl Store {
    /// Creates or replaces an environment's rules; returns it and whether it is new.
    /// The audit entry holds the rules before and after (never the kubeconfig).
    pub async fn put_environment(
        &self,
        actor: &str,
        repo: &Repo,
        name: &str,
        update: EnvironmentUpdate,
    ) -> Result<(Environment, bool)> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT {ENV_COLS} FROM environments WHERE repo_id = $1 AND name = $2{}",
            self.for_update()
        );
        let before = query(&sql)
            .bind(repo.id)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .as_ref()
            .map(decode)
            .transpose()?;
        let now = self.now_ms();
        let r = &update.rules;
        let roles: Vec<&str> = r.approver_roles.iter().map(|r| r.as_str()).collect();
        let kubeconfig = match (&update.kubeconfig_enc, &before) {
            (Some(new), _) => new.clone(),
            (None, Some(b)) => b.kubeconfig_enc.clone(),
            (None, None) => None,
        };
        let sql = format!(
            "INSERT INTO environments (repo_id, name, protected, required_approvals, \
             approver_roles, approver_users, allow_self_approval, refs, wait_timer_ms, \
             approval_timeout_ms, concurrency, supersede_on_push, kubeconfig_enc, namespace, \
             created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15) \
             ON CONFLICT (repo_id, name) DO UPDATE SET protected = $3, required_approvals = $4, \
             approver_roles = $5, approver_users = $6, allow_self_approval = $7, refs = $8, \
             wait_timer_ms = $9, approval_timeout_ms = $10, concurrency = $11, \
             supersede_on_push = $12, kubeconfig_enc = $13, namespace = $14, updated_at = $15 \
             RETURNING {ENV_COLS}"
        );
        let row = query(&sql)
            .bind(repo.id)
            .bind(name)
            .bind(r.protected)
            .bind(i64::from(r.required_approvals))
            .bind(json_text(&roles))
            .bind(json_text(&r.approver_users))
            .bind(r.allow_self_approval)
            .bind(json_text(&r.refs))
            .bind(r.wait_timer_ms)
            .bind(r.approval_timeout_ms)
            .bind(r.concurrency.as_str())
            .bind(r.supersede_on_push)
            .bind(kubeconfig)
            .bind(&update.namespace)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        let after = decode(&row)?;
        let shown = |e: &Environment| json!({ "rules": e.rules, "namespace": e.namespace, "kubeconfig": e.has_kubeconfig });
        let entry = NewAudit::new(actor, action::ENVIRONMENT_SET, env_subject(name))
            .repo(Some(repo.id))
            .detail(json!({
                "repo": repo.name,
                "before": before.as_ref().map(shown),
                "after": shown(&after),
            }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok((after, before.is_none()))
    }

    /// The environment `name` of `repo`, if one is defined.
    pub async fn find_environment(&self, repo: RepoId, name: &str) -> Result<Option<Environment>> {
        let sql = format!("SELECT {ENV_COLS} FROM environments WHERE repo_id = $1 AND name = $2");
        query(&sql)
            .bind(repo)
            .bind(name)
            .fetch_optional(&self.read)
            .await?
            .as_ref()
            .map(decode)
            .transpose()
    }

    /// A repository's defined environments, by name.
    pub async fn list_environments(&self, repo: RepoId) -> Result<Vec<Environment>> {
        let sql = format!("SELECT {ENV_COLS} FROM environments WHERE repo_id = $1 ORDER BY name");
        rows(&query(&sql).bind(repo).fetch_all(&self.read).await?, decode)
    }

    /// Removes an environment's rules (its deployment history stays); `NotFound` if
    /// there is none.
    pub async fn delete_environment(&self, actor: &str, repo: &Repo, name: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        let n = super::affected(
            query("DELETE FROM environments WHERE repo_id = $1 AND name = $2")
                .bind(repo.id)
                .bind(name)
                .execute(&mut *tx)
                .await?,
        );
        if n == 0 {
            return Err(Error::NotFound(format!(
                "environment `{name}` of {}",
                repo.name
            )));
        }
        let entry = NewAudit::new(actor, action::ENVIRONMENT_DELETE, env_subject(name))
            .repo(Some(repo.id))
            .detail(json!({ "repo": repo.name }));
        self.append_audit_tx(&mut tx, &entry).await?;
        tx.commit().await?;
        Ok(())
    }
}
