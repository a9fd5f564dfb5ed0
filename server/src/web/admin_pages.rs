//! Admin pages: the audit log (newest first, filtered by action or actor, with the
//! chain's verification) and people (users with their roles, linked identities, the
//! forge accounts they sign in with and personal tokens by name; machine tokens by
//! name and scope), with the forms that change them (`people_actions`).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::session::SignedIn;
use super::view::ago;
use super::{Chrome, message_page, render, store_error};
use crate::daemon::state::AppState;
use crate::store::Role;
use crate::store::audit::AuditFilter;

/// The page for someone without the admin role, if `me` is.
pub(super) fn admin_only(me: &SignedIn) -> Option<Response> {
    (!me.is_admin()).then(|| {
        message_page(
            StatusCode::FORBIDDEN,
            "Admins only",
            "This page needs the admin role.".into(),
        )
    })
}

pub struct AuditRow {
    pub id: i64,
    pub when: String,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    chrome: Chrome,
    rows: Vec<AuditRow>,
    action: String,
    actor: String,
    verified: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
}

/// Entries the page shows.
const AUDIT_ROWS: i64 = 200;

pub async fn audit(
    State(state): State<AppState>,
    me: SignedIn,
    Query(q): Query<AuditQuery>,
) -> Response {
    if let Some(refused) = admin_only(&me) {
        return refused;
    }
    let now = state.store.now_ms();
    let filter = AuditFilter {
        action: Some(q.action.clone()).filter(|s| !s.is_empty()),
        actor: Some(q.actor.clone()).filter(|s| !s.is_empty()),
        repo_id: None,
        after: None,
        limit: Some(AUDIT_ROWS),
    };
    let rows = match state.store.list_audit_newest(&filter).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let verified = match state.store.verify_audit().await {
        Ok(Ok(report)) => format!("chain intact: {} entries", report.entries),
        Ok(Err(b)) => format!("chain BROKEN at entry {}: {}", b.id, b.reason),
        Err(e) => return store_error(e),
    };
    render(&AuditPage {
        chrome: Chrome::of(&me),
        rows: rows
            .into_iter()
            .map(|e| AuditRow {
                id: e.id,
                when: ago(e.at, now),
                actor: e.actor,
                action: e.action,
                subject: e.subject,
                detail: e.detail.to_string(),
            })
            .collect(),
        action: q.action,
        actor: q.actor,
        verified,
    })
}

pub struct PersonRow {
    pub name: String,
    pub disabled: bool,
    /// (role, `owner/name` or empty for the global role), for the forms.
    pub roles: Vec<(String, String)>,
    pub identities: String,
    /// The forge accounts they sign in with: `github (alice-gh)`, ….
    pub forge_sign_ins: String,
    pub tokens: Vec<PersonalTokenRow>,
    /// The signed-in admin themselves.
    pub me: bool,
}

pub struct PersonalTokenRow {
    pub id: i64,
    pub name: String,
    pub last_used: String,
}

pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub scope: String,
    /// The repositories it is for (`all repositories`, an owner's, named ones).
    pub repos: String,
    pub created: String,
    pub last_used: String,
}

fn last_used(at: Option<i64>, now: i64) -> String {
    at.map_or_else(
        || "never used".to_string(),
        |t| format!("used {}", ago(t, now)),
    )
}

#[derive(Template)]
#[template(path = "people.html")]
struct PeoplePage {
    chrome: Chrome,
    people: Vec<PersonRow>,
    tokens: Vec<TokenRow>,
    /// Every role's name, lowest first, for the forms' choices.
    roles: Vec<&'static str>,
}

pub async fn people(State(state): State<AppState>, me: SignedIn) -> Response {
    if let Some(refused) = admin_only(&me) {
        return refused;
    }
    let now = state.store.now_ms();
    let users = match state.store.list_users().await {
        Ok(u) => u,
        Err(e) => return store_error(e),
    };
    let mut people = Vec::new();
    for u in users {
        let (roles, ids, tokens, links) = match (
            state.store.roles_of(u.id).await,
            state.store.identities_of(u.id).await,
            state.store.list_user_tokens(u.id).await,
            state.store.oauth_links_of(u.id).await,
        ) {
            (Ok(r), Ok(i), Ok(t), Ok(l)) => (r, i, t, l),
            (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
                return store_error(e);
            }
        };
        people.push(PersonRow {
            roles: roles
                .iter()
                .map(|b| (b.role.to_string(), b.repo.clone().unwrap_or_default()))
                .collect(),
            identities: ids
                .iter()
                .map(|i| format!("{}:{}", i.forge, i.login))
                .collect::<Vec<_>>()
                .join(", "),
            forge_sign_ins: links
                .iter()
                .map(|l| format!("{} ({})", l.provider, l.login))
                .collect::<Vec<_>>()
                .join(", "),
            tokens: tokens
                .into_iter()
                .map(|t| PersonalTokenRow {
                    id: t.id,
                    name: t.name,
                    last_used: last_used(t.last_used_at, now),
                })
                .collect(),
            disabled: u.disabled,
            me: u.id == me.session.user.id,
            name: u.name,
        });
    }
    let tokens = match state.store.list_tokens().await {
        Ok(t) => t
            .into_iter()
            .map(|t| TokenRow {
                id: t.id,
                name: t.name,
                scope: t.scope.to_string(),
                repos: t.repos.to_string(),
                created: ago(t.created_at, now),
                last_used: last_used(t.last_used_at, now),
            })
            .collect(),
        Err(e) => return store_error(e),
    };
    render(&PeoplePage {
        chrome: Chrome::of(&me),
        people,
        tokens,
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
    })
}
