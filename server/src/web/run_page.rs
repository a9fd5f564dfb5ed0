//! A run's page: its status, the failure up front when it failed, the gates waiting
//! for approval (with the vote form, or why the viewer may not vote), its rollouts
//! (`rollout_panel`), the stage graph, stages and steps with durations and links into
//! their logs, scan findings by severity (`findings`), artifacts. The part that changes is rendered on its own too
//! (`?partial=1`), which the page's script fetches again on every status event — and
//! every two seconds while a rollout on it has not ended, as its steps and
//! measurements change without a stage changing state.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::dashboard::{find_visible, inbox_count, shown_status};
use super::failure::{self, Failure};
use super::findings::{self, SeverityGroup};
use super::rollout_panel::{self, RolloutPanel};
use super::session::SignedIn;
use super::view::filters;
use super::view::{Badge, DagNode, ago, badge, dag_svg, duration, short};
use super::{Chrome, render, store_error};
use crate::daemon::state::AppState;
use crate::delivery::gate::{GateState, Voter};
use crate::store::{ArtifactKind, Decision, Repo, Role, Run, Stage, StageStatus};

pub struct StepView {
    pub name: String,
    pub badge: Badge,
    pub duration: String,
    pub exit: String,
    pub log: String,
}

pub struct StageView {
    pub id: i64,
    pub key: String,
    pub badge: Badge,
    pub duration: String,
    pub reason: String,
    pub steps: Vec<StepView>,
    pub outputs: String,
}

pub struct GateView {
    pub stage_id: i64,
    pub stage: String,
    pub environment: String,
    pub approvals: usize,
    pub required: u32,
    pub voters: String,
    pub expires: String,
    /// Why the viewer may not vote (empty: they may).
    pub reason: String,
}

pub struct Live {
    pub repo: String,
    pub number: i64,
    pub title: String,
    pub badge: Badge,
    pub sha: String,
    pub full_sha: String,
    pub branch: String,
    pub event: String,
    pub who: String,
    pub duration: String,
    pub note: String,
    pub can_cancel: bool,
    pub can_rerun: bool,
    pub has_failed: bool,
    pub csrf: String,
    pub failure: Option<Failure>,
    pub gates: Vec<GateView>,
    /// The run's rollouts (`rollout_panel`), in stage order.
    pub rollouts: Vec<RolloutPanel>,
    pub dag: String,
    pub stages: Vec<StageView>,
    /// (name, size, download URL — empty for an image).
    pub artifacts: Vec<(String, String, String)>,
    /// The scan stages' findings, worst severity first (`findings`).
    pub findings: Vec<SeverityGroup>,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    chrome: Chrome,
    repo: String,
    number: i64,
    live: Live,
}

#[derive(Template)]
#[template(path = "run_live.html")]
struct LivePart {
    live: Live,
}

#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    /// Present: only the page's live part.
    #[serde(default)]
    pub partial: Option<String>,
}

pub async fn page(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, number)): Path<(String, String, i64)>,
    Query(q): Query<PageQuery>,
) -> Response {
    let repo = match find_visible(&state, &me, &owner, &name).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let run = match state.store.get_run_by_number(repo.id, number).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let live = match live(&state, &me, &repo, &run).await {
        Ok(l) => l,
        Err(e) => return store_error(e),
    };
    if q.partial.is_some() {
        return render(&LivePart { live });
    }
    let mut chrome = Chrome::of(&me);
    chrome.inbox = inbox_count(&state, std::slice::from_ref(&repo)).await;
    render(&RunPage {
        chrome,
        repo: repo.name,
        number,
        live,
    })
}

fn failed(status: StageStatus) -> bool {
    matches!(
        status,
        StageStatus::Failure | StageStatus::Error | StageStatus::TimedOut
    )
}

async fn live(
    state: &AppState,
    me: &SignedIn,
    repo: &Repo,
    run: &Run,
) -> crate::store::Result<Live> {
    let now = state.store.now_ms();
    let role = state
        .store
        .effective_role(me.session.user.id, Some(repo.id))
        .await?;
    let developer = role >= Some(Role::Developer);
    let stages = state.store.list_stages(run.id).await?;
    let base = format!(
        "/repos/{}/runs/{}",
        crate::admin::repos::url_path(&repo.name),
        run.number
    );
    let log_url = |stage: i64, idx: i64| format!("{base}/logs/{stage}/{idx}");
    let failure = if run.status.is_final() && stages.iter().any(|s| failed(s.stage.status)) {
        failure::of(state, &stages, log_url).await
    } else {
        None
    };
    let dag_nodes: Vec<DagNode> = stages
        .iter()
        .map(|s| DagNode {
            key: &s.stage.key,
            status: s.stage.status.as_str(),
            needs: &s.stage.needs,
            anchor: format!("#stage-{}", s.stage.id),
        })
        .collect();
    let dag = dag_svg(&dag_nodes);
    let stage_views = stages
        .iter()
        .map(|s| StageView {
            id: s.stage.id,
            key: s.stage.key.clone(),
            // Leased, but its backend waits (for quota) before the first step: shown
            // as still queued, with why.
            badge: match waiting(&s.stage) {
                Some(_) => badge("queued"),
                None => badge(s.stage.status.as_str()),
            },
            duration: duration(s.stage.started_at, s.stage.finished_at, now),
            reason: waiting(&s.stage)
                .map(|w| format!("waiting: {w}"))
                .or_else(|| s.stage.reason.clone())
                .or_else(|| s.unroutable.clone())
                .unwrap_or_default(),
            steps: s
                .steps
                .iter()
                .map(|st| StepView {
                    name: st.name.clone(),
                    badge: badge(st.status.as_str()),
                    duration: duration(st.started_at, st.finished_at, now),
                    exit: st.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    log: log_url(s.stage.id, st.idx),
                })
                .collect(),
            outputs: s
                .outputs
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    let mut gates = Vec::new();
    let people = state.store.run_people(run).await?;
    for d in state.store.run_deployments(run.id).await? {
        if d.state != GateState::Pending || d.stage_status != StageStatus::Waiting {
            continue;
        }
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
        gates.push(GateView {
            stage_id: d.stage_id,
            stage: d.stage.clone(),
            environment: d.environment.clone(),
            approvals: approvals.len(),
            required: d.rules.required,
            voters: approvals.join(", "),
            expires: d
                .expires_at
                .map(|t| format!("in {}", duration(Some(now), Some(t), now)))
                .unwrap_or_default(),
            reason,
        });
    }
    let rollouts = rollout_panel::panels(state, me, repo, run, &stages).await?;
    let artifacts = state
        .store
        .list_run_artifacts(run.id)
        .await?
        .into_iter()
        .map(|a| match a.kind {
            ArtifactKind::File => (
                a.name,
                format!("{} bytes", a.size),
                format!("/api/artifacts/{}/download", a.id),
            ),
            ArtifactKind::Image => (
                a.name,
                format!("image sha256:{}", short(&a.sha256)),
                String::new(),
            ),
        })
        .collect();
    let findings = findings::grouped(state.store.list_findings(run.id).await?);
    let who = match (&run.pusher, run.triggered_by) {
        (Some(p), _) => format!("pushed by {p}"),
        (None, Some(_)) => format!("started {}", ago(run.created_at, now)),
        _ => ago(run.created_at, now),
    };
    let status = shown_status(run);
    Ok(Live {
        repo: repo.name.clone(),
        number: run.number,
        title: format!(
            "#{} {}",
            run.number,
            run.message.lines().next().unwrap_or_default()
        ),
        badge: badge(&status),
        sha: short(&run.sha).to_string(),
        full_sha: run.sha.clone(),
        branch: run
            .branch
            .clone()
            .or_else(|| run.tag.clone())
            .unwrap_or_else(|| run.git_ref.clone()),
        event: run.event.as_str().to_string(),
        who,
        duration: duration(run.started_at, run.finished_at, now),
        note: run.error.clone().unwrap_or_default(),
        can_cancel: developer && !run.status.is_final(),
        can_rerun: developer && run.status.is_final(),
        has_failed: stages.iter().any(|s| failed(s.stage.status)),
        csrf: me.csrf().to_string(),
        failure,
        gates,
        rollouts,
        dag,
        stages: stage_views,
        artifacts,
        findings,
    })
}

/// Why a running stage waits before its first step, while it does.
fn waiting(stage: &Stage) -> Option<&str> {
    match stage.status {
        StageStatus::Running => stage.waiting.as_deref(),
        _ => None,
    }
}
