//! A step's log: windowed over the server's line index by the page's script (so a log
//! of a million lines opens at once), live while the step runs, with line anchors
//! (`#L123`), a server-side search over the whole log, and the raw download.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;

use super::dashboard::{find_visible, inbox_count};
use super::failure::plain;
use super::session::SignedIn;
use super::view::filters;
use super::{Chrome, render, store_error};
use crate::daemon::state::AppState;
use crate::logs::StepKey;

#[derive(Template)]
#[template(path = "log.html")]
struct LogPage {
    chrome: Chrome,
    repo: String,
    number: i64,
    stage: String,
    step: String,
    total: u64,
    finished: bool,
    lines: String,
    follow: String,
    raw: String,
    query: String,
    matches: Vec<(u64, String)>,
    truncated: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// Most matches a search shows.
const MAX_MATCHES: usize = 200;
/// Lines read per batch while searching.
const BATCH: usize = 10_000;

pub async fn page(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, number, stage_id, idx)): Path<(String, String, i64, i64, i64)>,
    Query(q): Query<SearchQuery>,
) -> Response {
    let repo = match find_visible(&state, &me, &owner, &name).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let run = match state.store.get_run_by_number(repo.id, number).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let stages = match state.store.list_stages(run.id).await {
        Ok(s) => s,
        Err(e) => return store_error(e),
    };
    let not_found = || {
        store_error(crate::store::Error::NotFound(format!(
            "step {idx} of stage {stage_id} in run #{number}"
        )))
    };
    let Some(stage) = stages.iter().find(|s| s.stage.id == stage_id) else {
        return not_found();
    };
    let Some(step) = stage.steps.iter().find(|s| s.idx == idx) else {
        return not_found();
    };
    let Ok(step_no) = u32::try_from(idx) else {
        return not_found();
    };
    let key = StepKey {
        run: run.id,
        stage: stage_id,
        step: step_no,
    };
    let query = q.q.trim().to_string();
    let logs = state.clone();
    let needle = query.to_lowercase();
    let searched = tokio::task::spawn_blocking(move || {
        let total = logs.logs.count(key).unwrap_or(0);
        let mut matches = Vec::new();
        let mut truncated = false;
        if !needle.is_empty() {
            let mut from = 1;
            while from <= total {
                let lines = logs.logs.read(key, from, BATCH).unwrap_or_default();
                let Some(end) = lines.last().map(|l| l.number) else {
                    break;
                };
                for l in lines {
                    let text = plain(&l.bytes);
                    if text.to_lowercase().contains(&needle) {
                        if matches.len() == MAX_MATCHES {
                            truncated = true;
                            break;
                        }
                        matches.push((l.number, text));
                    }
                }
                if truncated {
                    break;
                }
                from = end + 1;
            }
        }
        (total, matches, truncated)
    })
    .await;
    let Ok((total, matches, truncated)) = searched else {
        return super::error_page("searching the log failed".into());
    };
    let api = format!(
        "/api/repos/{}/runs/{}/stages/{}/steps/{}",
        crate::admin::repos::url_path(&repo.name),
        run.number,
        stage_id,
        idx
    );
    let mut chrome = Chrome::of(&me);
    chrome.inbox = inbox_count(&state, std::slice::from_ref(&repo)).await;
    render(&LogPage {
        chrome,
        repo: repo.name.clone(),
        number,
        stage: stage.stage.key.clone(),
        step: step.name.clone(),
        total,
        finished: step.status.is_final(),
        lines: format!("{api}/logs"),
        follow: format!("{api}/logs/follow"),
        raw: format!("{api}/logs.txt"),
        query,
        matches,
        truncated,
    })
}
