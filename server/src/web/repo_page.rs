//! A repository's page: its runs, branches (with their latest run), cron schedules
//! (from the pipeline files at the default branch's head, with when each last fired),
//! secrets (names only; admins add and delete them), environments with what is live
//! and what was before (each with its history page), and a manual trigger with
//! parameters (developers).

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;

use super::dashboard::{RunRow, find_visible, inbox_count, run_row, shown_status};
use super::session::SignedIn;
use super::view::filters;
use super::view::{Badge, ago, badge, short};
use super::{Chrome, render, store_error};
use crate::daemon::state::AppState;
use crate::store::{Deployment, Repo, Role};

pub struct EnvRow {
    pub name: String,
    pub live: String,
    pub previous: String,
    pub rules: String,
}

pub struct BranchRow {
    pub name: String,
    pub number: i64,
    pub badge: Badge,
    pub when: String,
}

pub struct CronRow {
    pub pipeline: String,
    pub name: String,
    pub expr: String,
    pub last: String,
}

pub struct SecretRow {
    pub name: String,
    pub forks: bool,
    pub updated: String,
}

#[derive(Template)]
#[template(path = "repo.html")]
struct RepoPage {
    chrome: Chrome,
    repo: String,
    default_branch: String,
    environments: Vec<EnvRow>,
    runs: Vec<RunRow>,
    branches: Vec<BranchRow>,
    crons: Vec<CronRow>,
    secrets: Vec<SecretRow>,
    can_trigger: bool,
    can_see_secrets: bool,
    admin: bool,
}

/// `#12 abc1234` for a deployment, `—` for none.
pub fn version(d: Option<&Deployment>) -> String {
    d.map_or("—".to_string(), |d| {
        format!("#{} {}", d.run_number, short(&d.sha))
    })
}

/// Every environment of a repository (defined or deployed to) with its live and
/// previous version and a line of its rules.
pub async fn environments(state: &AppState, repo: &Repo) -> crate::store::Result<Vec<EnvRow>> {
    let mut names: Vec<String> = state
        .store
        .list_environments(repo.id)
        .await?
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.extend(state.store.deployed_environments(repo.id).await?);
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for env in names {
        let defined = state.store.find_environment(repo.id, &env).await?;
        let history = state
            .store
            .environment_deployments(repo.id, &env, 50)
            .await?;
        let mut live = history.iter().filter(|d| d.went_live());
        out.push(EnvRow {
            live: version(live.next()),
            previous: version(live.next()),
            rules: match defined {
                Some(e) if e.rules.protected => format!(
                    "protected: {} approval(s){}",
                    e.rules.required_approvals,
                    if e.rules.refs.is_empty() {
                        String::new()
                    } else {
                        format!(", refs {}", e.rules.refs.join(", "))
                    }
                ),
                Some(_) => "unprotected".into(),
                None => "not defined (unprotected)".into(),
            },
            name: env,
        });
    }
    Ok(out)
}

pub async fn page(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name)): Path<(String, String)>,
) -> Response {
    let repo = match find_visible(&state, &me, &owner, &name).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    match build(&state, &me, &repo).await {
        Ok(page) => render(&page),
        Err(e) => store_error(e),
    }
}

async fn build(state: &AppState, me: &SignedIn, repo: &Repo) -> crate::store::Result<RepoPage> {
    let now = state.store.now_ms();
    let role = state
        .store
        .effective_role(me.session.user.id, Some(repo.id))
        .await?;
    let runs = state.store.list_runs(repo.id, 100, None).await?;
    let mut branches: Vec<BranchRow> = Vec::new();
    for r in &runs {
        let Some(b) = &r.branch else { continue };
        if branches.iter().any(|x| &x.name == b) {
            continue;
        }
        branches.push(BranchRow {
            name: b.clone(),
            number: r.number,
            badge: badge(&shown_status(r)),
            when: ago(r.created_at, now),
        });
    }
    let mut crons = Vec::new();
    if let Ok((Some(sha), Some(files))) = crate::workers::cron::read_head(state, repo, false).await
    {
        for e in crate::workers::cron::entries_of(&repo.name, &sha, &files) {
            let last = state
                .store
                .cron_last_fired(repo.id, &e.pipeline, &e.name)
                .await?;
            crons.push(CronRow {
                last: last.map_or("never".to_string(), |t| ago(t, now)),
                pipeline: e.pipeline,
                name: e.name,
                expr: e.expr,
            });
        }
    }
    let can_see_secrets = role >= Some(Role::Developer);
    let secrets = if can_see_secrets {
        state
            .store
            .list_secrets(repo.id)
            .await?
            .into_iter()
            .map(|s| SecretRow {
                name: s.name,
                forks: s.allow_pull_requests,
                updated: ago(s.updated_at, now),
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut chrome = Chrome::of(me);
    chrome.inbox = inbox_count(state, std::slice::from_ref(repo)).await;
    Ok(RepoPage {
        chrome,
        default_branch: repo.default_branch.clone(),
        environments: environments(state, repo).await?,
        runs: runs
            .iter()
            .take(50)
            .map(|r| run_row(&repo.name, r, now))
            .collect(),
        branches,
        crons,
        secrets,
        can_trigger: role >= Some(Role::Developer),
        can_see_secrets,
        admin: role >= Some(Role::Admin),
        repo: repo.name.clone(),
    })
}
