//! What the pages' forms do: vote on a gate, cancel, rerun. Each form carries the
//! session's CSRF token (a form posted from another site has none, or the wrong one,
//! and is refused), and each action checks the role the API checks for it — cancel
//! and rerun go through the API's own handlers, so both paths stay one.

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::dashboard::find_visible;
use super::session::{self, SignedIn};
use super::{message_page, safe_next, store_error};
use crate::api::auth::Caller;
use crate::api::extract::ApiPath;
use crate::api::runs::RunPath;
use crate::daemon::state::AppState;
use crate::store::{Decision, NewVote, Role};

/// The answer to a form without the session's CSRF token.
pub fn csrf_refused() -> Response {
    message_page(
        StatusCode::FORBIDDEN,
        "Refused",
        "This form did not carry this session's token (CSRF): reload the page and try again."
            .into(),
    )
}

/// The signed-in person as the API's handlers know a caller.
pub fn caller(me: &SignedIn) -> Caller {
    Caller::Session {
        user: me.session.user.clone(),
        csrf: me.session.csrf.clone(),
    }
}

#[derive(Debug, Deserialize)]
pub struct VoteForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    stage: String,
    decision: String,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    sha: String,
    #[serde(default)]
    back: String,
}

pub async fn vote(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, number)): Path<(String, String, i64)>,
    Form(f): Form<VoteForm>,
) -> Response {
    if !session::csrf_matches(&f.csrf, me.csrf()) {
        return csrf_refused();
    }
    let repo = match find_visible(&state, &me, &owner, &name).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let run = match state.store.get_run_by_number(repo.id, number).await {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let decision = match f.decision.as_str() {
        "approve" => Decision::Approve,
        "reject" => Decision::Reject,
        other => {
            return message_page(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Unknown decision",
                format!("`{other}` is neither approve nor reject."),
            );
        }
    };
    let role = match state
        .store
        .effective_role(me.session.user.id, Some(repo.id))
        .await
    {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let voted = state
        .store
        .vote(
            run.id,
            &f.stage,
            NewVote {
                voter: &me.session.user,
                role,
                decision,
                comment: f.comment.trim(),
                sha: Some(f.sha.as_str()).filter(|s| !s.is_empty()),
            },
        )
        .await;
    match voted {
        Ok(d) => {
            tracing::info!(repo = %repo.name, run = number, stage = %f.stage, decision = decision.as_str(), state = d.state.as_str(), by = %me.name(), "vote (web)");
            state.wake.queue.notify_waiters();
            let back = if f.back.is_empty() {
                format!(
                    "/repos/{}/runs/{number}",
                    crate::admin::repos::url_path(&repo.name)
                )
            } else {
                safe_next(&f.back)
            };
            Redirect::to(&back).into_response()
        }
        Err(crate::store::Error::Refused(why)) => {
            message_page(StatusCode::FORBIDDEN, "Your vote was not counted", why)
        }
        Err(crate::store::Error::Conflict(why)) => {
            message_page(StatusCode::CONFLICT, "Nothing to vote on", why)
        }
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
pub struct RunForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    #[serde(default)]
    failed_only: Option<String>,
}

/// Checks the token and the developer role, then runs `act` (an API handler).
async fn developer_action<F, Fut>(
    state: AppState,
    me: SignedIn,
    owner: String,
    name: String,
    number: i64,
    csrf: &str,
    act: F,
) -> Response
where
    F: FnOnce(Caller, AppState, RunPath) -> Fut,
    Fut: Future<Output = crate::api::error::ApiResult<Response>>,
{
    if !session::csrf_matches(csrf, me.csrf()) {
        return csrf_refused();
    }
    let repo = match find_visible(&state, &me, &owner, &name).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let role = state
        .store
        .effective_role(me.session.user.id, Some(repo.id))
        .await
        .ok()
        .flatten();
    if role < Some(Role::Developer) {
        return message_page(
            StatusCode::FORBIDDEN,
            "Refused",
            format!("This needs the developer role on {}.", repo.name),
        );
    }
    let path = RunPath {
        owner,
        name,
        number,
    };
    match act(caller(&me), state, path).await {
        Ok(r) => r,
        Err(e) => message_page(e.status, "Refused", e.message),
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, number)): Path<(String, String, i64)>,
    Form(f): Form<RunForm>,
) -> Response {
    let back = format!(
        "/repos/{}/runs/{number}",
        crate::admin::repos::url_path(&format!("{owner}/{name}"))
    );
    developer_action(
        state,
        me,
        owner,
        name,
        number,
        &f.csrf,
        |caller, state, p| async move {
            let _cancelled = crate::api::runs::cancel(caller, State(state), ApiPath(p)).await?;
            Ok(Redirect::to(&back).into_response())
        },
    )
    .await
}

pub async fn rerun(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, number)): Path<(String, String, i64)>,
    Form(f): Form<RunForm>,
) -> Response {
    let failed_only = f.failed_only.as_deref() == Some("true");
    let repo_path = format!("/repos/{owner}/{name}/runs");
    developer_action(
        state,
        me,
        owner,
        name,
        number,
        &f.csrf,
        |caller, state, p| async move {
            let body = Bytes::from(serde_json::json!({ "failed_only": failed_only }).to_string());
            let (_, axum::Json(run)) =
                crate::api::runs::rerun(caller, State(state), ApiPath(p), body).await?;
            Ok(Redirect::to(&format!("{repo_path}/{}", run.number)).into_response())
        },
    )
    .await
}
