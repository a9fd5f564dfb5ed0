//! An environment's page: its rules, what is live and what was before, the rollouts
//! still going to it (else the last one) as the run page's panels (`rollout_panel`:
//! step, weight, measurements and their chart, promote / abort for those who may),
//! and its deployment history — who triggered, who approved, the gate's decision,
//! when it ran and how it ended, the image digests that went out. The rollouts' part
//! is rendered on its own too (`?partial=1`), which the page's script fetches every
//! two seconds while a rollout on it has not ended.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;

use super::dashboard::{find_visible, inbox_count};
use super::repo_page::version;
use super::rollout_panel::{self, RolloutPanel};
use super::run_page::PageQuery;
use super::session::SignedIn;
use super::view::filters;
use super::view::{Badge, ago, badge, duration, short};
use super::{Chrome, render, store_error};
use crate::daemon::state::AppState;
use crate::store::{Decision, Repo};

pub struct DeployRow {
    pub run: i64,
    pub version: String,
    pub stage: String,
    pub gate: String,
    pub badge: Badge,
    pub approvers: String,
    pub by: String,
    pub when: String,
    pub took: String,
    pub images: String,
}

#[derive(Template)]
#[template(path = "environment.html")]
struct EnvPage {
    chrome: Chrome,
    repo: String,
    name: String,
    rules: String,
    live: String,
    previous: String,
    /// The same as [`LivePart`]'s, for the include.
    rollouts: Vec<RolloutPanel>,
    last_only: bool,
    deployments: Vec<DeployRow>,
}

/// The part of the page the script refreshes: the rollouts.
#[derive(Template)]
#[template(path = "environment_live.html")]
struct LivePart {
    rollouts: Vec<RolloutPanel>,
    /// None of them is going: the panel shows the last one.
    last_only: bool,
}

/// Rollouts looked at for the page: enough for every one still going.
const ROLLOUTS_LOOKED_AT: i64 = 20;

/// The rollouts to the environment still going, newest first; else the last one.
async fn rollouts(
    state: &AppState,
    me: &SignedIn,
    repo: &Repo,
    env: &str,
) -> crate::store::Result<LivePart> {
    let recent = state
        .store
        .rollouts_of_environment(repo.id, env, ROLLOUTS_LOOKED_AT)
        .await?;
    let going: Vec<_> = recent.iter().filter(|r| !r.phase.is_final()).collect();
    let last_only = going.is_empty();
    let shown = if last_only {
        recent.iter().take(1).collect()
    } else {
        going
    };
    let back = format!(
        "/repos/{}/environments/{env}",
        crate::admin::repos::url_path(&repo.name)
    );
    let mut panels = Vec::new();
    for r in shown {
        let stage = state.store.get_stage(r.stage_id).await?;
        let run = state.store.get_run(r.run_id).await?;
        let mut p = rollout_panel::panel_of(state, me, repo, run.number, &stage.key, r).await?;
        p.back = back.clone();
        panels.push(p);
    }
    Ok(LivePart {
        rollouts: panels,
        last_only,
    })
}

pub async fn page(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, env)): Path<(String, String, String)>,
    Query(q): Query<PageQuery>,
) -> Response {
    let repo = match find_visible(&state, &me, &owner, &name).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let live_part = match rollouts(&state, &me, &repo, &env).await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    if q.partial.is_some() {
        return render(&live_part);
    }
    let now = state.store.now_ms();
    let (defined, history) = match (
        state.store.find_environment(repo.id, &env).await,
        state
            .store
            .environment_deployments(repo.id, &env, 100)
            .await,
    ) {
        (Ok(d), Ok(h)) => (d, h),
        (Err(e), _) | (_, Err(e)) => return store_error(e),
    };
    if defined.is_none() && history.is_empty() {
        return store_error(crate::store::Error::NotFound(format!(
            "environment `{env}` of {}",
            repo.name
        )));
    }
    let mut live = history.iter().filter(|d| d.went_live());
    let (live, previous) = (version(live.next()), version(live.next()));
    let rules = match &defined {
        Some(e) if e.rules.protected => format!(
            "protected: {} approval(s) by {}; {}; refs {}",
            e.rules.required_approvals,
            if e.rules.approver_roles.is_empty() && e.rules.approver_users.is_empty() {
                "release managers".to_string()
            } else {
                e.rules
                    .approver_roles
                    .iter()
                    .map(|r| r.to_string())
                    .chain(e.rules.approver_users.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
            if e.rules.allow_self_approval {
                "self-approval allowed"
            } else {
                "no self-approval"
            },
            if e.rules.refs.is_empty() {
                "any".to_string()
            } else {
                e.rules.refs.join(", ")
            },
        ),
        Some(_) => "unprotected".into(),
        None => "not defined on the server (unprotected)".into(),
    };
    let deployments = history
        .iter()
        .map(|d| DeployRow {
            run: d.run_number,
            version: format!("#{} {}", d.run_number, short(&d.sha)),
            stage: d.stage.clone(),
            gate: match &d.reason {
                Some(r) => format!("{}: {r}", d.state.as_str()),
                None => d.state.as_str().to_string(),
            },
            badge: badge(d.stage_status.as_str()),
            approvers: d
                .votes
                .iter()
                .filter(|v| v.decision == Decision::Approve)
                .map(|v| v.user.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            by: d.triggered_by.clone().unwrap_or_else(|| "push".into()),
            when: ago(d.opened_at, now),
            took: duration(d.started_at, d.finished_at, now),
            images: d
                .images
                .iter()
                .map(|i| {
                    format!(
                        "{}@{}",
                        i.reference,
                        short(i.digest.trim_start_matches("sha256:"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    let mut chrome = Chrome::of(&me);
    chrome.inbox = inbox_count(&state, std::slice::from_ref(&repo)).await;
    render(&EnvPage {
        chrome,
        repo: repo.name,
        name: env,
        rules,
        live,
        previous,
        rollouts: live_part.rollouts,
        last_only: live_part.last_only,
        deployments,
    })
}
