//! The approvals inbox of the signed-in person: every deployment waiting for
//! approvals in the repositories they can see, with the vote form — or, when they may
//! not vote, the reason instead of the button.

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::dashboard::visible_repos;
use super::session::SignedIn;
use super::view::filters;
use super::view::short;
use super::{Chrome, render, store_error};
use crate::daemon::state::AppState;
use crate::delivery::gate::Voter;
use crate::store::Decision;

pub struct Item {
    pub id: i64,
    pub repo: String,
    pub number: i64,
    pub stage: String,
    pub environment: String,
    pub sha: String,
    pub full_sha: String,
    pub approvals: usize,
    pub required: u32,
    pub voters: String,
    pub reason: String,
}

#[derive(Template)]
#[template(path = "inbox.html")]
struct InboxPage {
    chrome: Chrome,
    items: Vec<Item>,
}

pub async fn page(State(state): State<AppState>, me: SignedIn) -> Response {
    let repos = match visible_repos(&state, &me).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let pending = match state.store.pending_deployments().await {
        Ok(p) => p,
        Err(e) => return store_error(e),
    };
    let mut items = Vec::new();
    for d in pending {
        let Some(repo) = repos.iter().find(|r| r.id == d.repo_id) else {
            continue;
        };
        let (run, role) = match (
            state.store.get_run(d.run_id).await,
            state
                .store
                .effective_role(me.session.user.id, Some(repo.id))
                .await,
        ) {
            (Ok(run), Ok(role)) => (run, role),
            (Err(e), _) | (_, Err(e)) => return store_error(e),
        };
        let people = match state.store.run_people(&run).await {
            Ok(p) => p,
            Err(e) => return store_error(e),
        };
        let approvals: Vec<&str> = d
            .votes
            .iter()
            .filter(|v| v.decision == Decision::Approve)
            .map(|v| v.user.as_str())
            .collect();
        let voter = Voter {
            id: me.session.user.id,
            name: me.name(),
            role,
        };
        let reason = d.why_not(voter, &people).unwrap_or_default();
        items.push(Item {
            id: d.id,
            repo: repo.name.clone(),
            number: d.run_number,
            stage: d.stage.clone(),
            environment: d.environment.clone(),
            sha: short(&d.sha).to_string(),
            full_sha: d.sha.clone(),
            approvals: approvals.len(),
            required: d.rules.required,
            voters: approvals.join(", "),
            reason,
        });
    }
    let mut chrome = Chrome::of(&me);
    chrome.inbox = items.iter().filter(|i| i.reason.is_empty()).count();
    render(&InboxPage { chrome, items })
}
