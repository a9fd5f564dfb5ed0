//! The dashboard: repositories with their latest run, runs across repositories with
//! filters, runners with their load.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::session::SignedIn;
use super::view::filters;
use super::view::{Badge, ago, badge, short};
use super::{Chrome, render, store_error};
use crate::api::auth::{Caller, visible_to};
use crate::daemon::state::AppState;
use crate::store::{Repo, Role, Run};

pub struct RepoRow {
    pub name: String,
    pub run_number: i64,
    pub badge: Badge,
    pub branch: String,
    pub when: String,
}

pub struct RunRow {
    pub repo: String,
    pub number: i64,
    pub badge: Badge,
    pub branch: String,
    pub event: String,
    pub sha: String,
    pub message: String,
    pub when: String,
}

pub struct RunnerRow {
    pub name: String,
    pub labels: String,
    /// The repositories whose stages it may run.
    pub repos: String,
    pub capacity: i64,
    pub running: i64,
    pub seen: String,
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct Dashboard {
    chrome: Chrome,
    repos: Vec<RepoRow>,
    runs: Vec<RunRow>,
    runners: Vec<RunnerRow>,
    status_options: Vec<(String, bool)>,
    event_options: Vec<(String, bool)>,
    branch: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    status: Option<String>,
    branch: Option<String>,
    event: Option<String>,
}

/// The status a run shows: `blocked` while a deploy stage waits at its gate.
pub fn shown_status(run: &Run) -> String {
    if run.blocked {
        "blocked".into()
    } else {
        run.status.to_string()
    }
}

pub fn run_row(repo: &str, run: &Run, now: i64) -> RunRow {
    let status = shown_status(run);
    RunRow {
        repo: repo.to_string(),
        number: run.number,
        badge: badge(&status),
        branch: run
            .branch
            .clone()
            .or_else(|| run.tag.clone())
            .unwrap_or_default(),
        event: run.event.as_str().to_string(),
        sha: short(&run.sha).to_string(),
        message: run
            .message
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(80)
            .collect(),
        when: ago(run.created_at, now),
    }
}

/// The repositories `me` may see.
pub async fn visible_repos(state: &AppState, me: &SignedIn) -> crate::store::Result<Vec<Repo>> {
    let caller = Caller::Session {
        user: me.session.user.clone(),
        csrf: me.session.csrf.clone(),
    };
    let repos = state.store.list_repos().await?;
    Ok(visible_to(state, &caller, Role::Viewer, repos, |r| r.id)
        .await
        .unwrap_or_default())
}

/// How many deployments wait for approvals in repositories `me` may see.
pub async fn inbox_count(state: &AppState, repos: &[Repo]) -> usize {
    state
        .store
        .pending_deployments()
        .await
        .map(|ds| {
            ds.iter()
                .filter(|d| repos.iter().any(|r| r.id == d.repo_id))
                .count()
        })
        .unwrap_or(0)
}

const STATUSES: [&str; 8] = [
    "any",
    "blocked",
    "running",
    "pending",
    "success",
    "failure",
    "error",
    "cancelled",
];
const EVENTS: [&str; 6] = ["any", "push", "pull_request", "tag", "cron", "manual"];

pub async fn page(
    State(state): State<AppState>,
    me: SignedIn,
    Query(f): Query<Filters>,
) -> Response {
    let now = state.store.now_ms();
    let repos = match visible_repos(&state, &me).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let want_status = f.status.filter(|s| !s.is_empty() && s != "any");
    let want_event = f.event.filter(|s| !s.is_empty() && s != "any");
    let want_branch = f.branch.unwrap_or_default();
    let mut rows = Vec::new();
    let mut runs: Vec<(String, Run)> = Vec::new();
    for repo in &repos {
        let recent = match state.store.list_runs(repo.id, 50, None).await {
            Ok(r) => r,
            Err(e) => return store_error(e),
        };
        rows.push(match recent.first() {
            Some(run) => RepoRow {
                name: repo.name.clone(),
                run_number: run.number,
                badge: badge(&shown_status(run)),
                branch: run.branch.clone().unwrap_or_default(),
                when: ago(run.created_at, now),
            },
            None => RepoRow {
                name: repo.name.clone(),
                run_number: 0,
                badge: badge("none"),
                branch: String::new(),
                when: String::new(),
            },
        });
        runs.extend(
            recent
                .into_iter()
                .filter(|r| want_status.as_ref().is_none_or(|s| *s == shown_status(r)))
                .filter(|r| want_event.as_ref().is_none_or(|e| e == r.event.as_str()))
                .filter(|r| want_branch.is_empty() || r.branch.as_deref() == Some(&want_branch))
                .map(|r| (repo.name.clone(), r)),
        );
    }
    runs.sort_by_key(|(_, r)| std::cmp::Reverse(r.created_at));
    runs.truncate(50);
    let running = state.store.running_per_runner().await.unwrap_or_default();
    let runners = state
        .store
        .list_runners()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| RunnerRow {
            running: running.get(&r.id).copied().unwrap_or(0),
            labels: r.labels.join(", "),
            repos: r.repos.to_string(),
            capacity: r.capacity,
            seen: ago(r.last_seen_at, now),
            name: r.name,
        })
        .collect();
    let mut chrome = Chrome::of(&me);
    chrome.inbox = inbox_count(&state, &repos).await;
    let options = |all: &[&str], chosen: &Option<String>| {
        all.iter()
            .map(|s| (s.to_string(), chosen.as_deref().unwrap_or("any") == *s))
            .collect()
    };
    render(&Dashboard {
        chrome,
        repos: rows,
        runs: runs.iter().map(|(name, r)| run_row(name, r, now)).collect(),
        runners,
        status_options: options(&STATUSES, &want_status),
        event_options: options(&EVENTS, &want_event),
        branch: want_branch,
    })
}

/// The repository in the path, if `me` may see it (else a 404 page: a repository you
/// cannot see does not exist for you).
pub async fn find_visible(
    state: &AppState,
    me: &SignedIn,
    owner: &str,
    name: &str,
) -> Result<Repo, Response> {
    let full = format!("{owner}/{name}");
    let repos = visible_repos(state, me).await.map_err(store_error)?;
    repos
        .into_iter()
        .find(|r| r.name == full)
        .ok_or_else(|| store_error(crate::store::Error::NotFound(format!("repository {full}"))))
}
