//! The rollout panel's forms: promote (a step or fully), abort and retry. Each form
//! carries the session's CSRF token and names the stage; the action is the API's own
//! handler (`api::rollouts::{promote, abort, retry}`), so the release permission is
//! checked — and a refusal audited as `rollout.refused` — in exactly one place. Then
//! back to the page the form was on (the run page, or the environment page; a retry:
//! to the new run), or a page with the refusal.

use axum::Form;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::actions::{caller, csrf_refused};
use super::dashboard::find_visible;
use super::session::{self, SignedIn};
use super::{message_page_back, safe_next};
use crate::api::auth::Caller;
use crate::api::error::ApiResult;
use crate::api::extract::ApiPath;
use crate::api::rollouts::StagePath;
use crate::daemon::state::AppState;

#[derive(Debug, Deserialize)]
pub struct RolloutForm {
    #[serde(rename = "_csrf", default)]
    csrf: String,
    /// The stage's key.
    #[serde(default)]
    stage: String,
    /// `true`: promote fully (skip every remaining step).
    #[serde(default)]
    full: Option<String>,
    /// The page the form is on when it is not the run page (the environment page).
    #[serde(default)]
    back: String,
}

/// Checks the token and that the person can see the repository, then runs `act` (an
/// API handler, which checks the release permission) and answers with its redirect or
/// its refusal.
async fn rollout_action<F, Fut>(
    state: AppState,
    me: SignedIn,
    (owner, name, number): (String, String, i64),
    f: &RolloutForm,
    what: &str,
    act: F,
) -> Response
where
    F: FnOnce(Caller, AppState, StagePath, String) -> Fut,
    Fut: Future<Output = ApiResult<Response>>,
{
    if !session::csrf_matches(&f.csrf, me.csrf()) {
        return csrf_refused();
    }
    let repo = match find_visible(&state, &me, &owner, &name).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let (back, rollouts) = if f.back.is_empty() {
        let run_page = format!(
            "/repos/{}/runs/{number}",
            crate::admin::repos::url_path(&repo.name)
        );
        (run_page.clone(), format!("{run_page}#rollouts"))
    } else {
        (safe_next(&f.back), safe_next(&f.back))
    };
    if f.stage.is_empty() {
        return message_page_back(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Which stage?",
            "The form did not name the rollout's stage.".into(),
            &back,
        );
    }
    let path = StagePath {
        owner,
        name,
        number,
        stage: f.stage.clone(),
    };
    let by = me.name().to_string();
    match act(caller(&me), state, path, rollouts).await {
        Ok(r) => {
            tracing::info!(repo = %repo.name, run = number, stage = %f.stage, %by, "rollout {what} (web)");
            r
        }
        Err(e) => message_page_back(
            e.status,
            &format!("The rollout was not {what}"),
            e.message,
            &back,
        ),
    }
}

pub async fn promote(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, number)): Path<(String, String, i64)>,
    Form(f): Form<RolloutForm>,
) -> Response {
    let full = f.full.as_deref() == Some("true");
    let what = if full { "promoted fully" } else { "promoted" };
    rollout_action(
        state,
        me,
        (owner, name, number),
        &f,
        what,
        |caller, state, p, back| async move {
            let body = Bytes::from(serde_json::json!({ "full": full }).to_string());
            crate::api::rollouts::promote(caller, State(state), ApiPath(p), body).await?;
            Ok(Redirect::to(&back).into_response())
        },
    )
    .await
}

pub async fn abort(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, number)): Path<(String, String, i64)>,
    Form(f): Form<RolloutForm>,
) -> Response {
    rollout_action(
        state,
        me,
        (owner, name, number),
        &f,
        "aborted",
        |caller, state, p, back| async move {
            crate::api::rollouts::abort(caller, State(state), ApiPath(p)).await?;
            Ok(Redirect::to(&back).into_response())
        },
    )
    .await
}

pub async fn retry(
    State(state): State<AppState>,
    me: SignedIn,
    Path((owner, name, number)): Path<(String, String, i64)>,
    Form(f): Form<RolloutForm>,
) -> Response {
    rollout_action(
        state,
        me,
        (owner, name, number),
        &f,
        "retried",
        |caller, state, p, _| async move {
            let runs = format!(
                "/repos/{}/runs",
                crate::admin::repos::url_path(&format!("{}/{}", p.owner, p.name))
            );
            let (_, axum::Json(run)) =
                crate::api::rollouts::retry(caller, State(state), ApiPath(p)).await?;
            Ok(Redirect::to(&format!("{runs}/{}", run.number)).into_response())
        },
    )
    .await
}
