//! Manual runs: `POST /api/repos/{owner}/{name}/trigger` (developer role).
//!
//! The branch head is fetched and its pipeline files are checked before any run is
//! made ([`crate::runs::manual`]): a parameter no pipeline declares, or a commit whose
//! pipelines take no manual runs, is answered 422 with the reason — never a run that
//! succeeds having done nothing. Files that do not load are left to the planner, which
//! makes an error run holding their diagnostics.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::extract::ApiPath;
use super::repos::{RepoPath, find_repo};
use super::route_table::{Access, RouteTable};
use super::runs::optional_json;
use crate::daemon::state::AppState;
use crate::git::Mirror;
use crate::store::{Event, NewRun, Repo, Role, Run, Trigger};

pub fn routes() -> RouteTable {
    RouteTable::new().add(Access::Role(Role::Developer), routes!(trigger))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerRequest {
    /// Default: the repository's default branch.
    pub branch: Option<String>,
    /// Plan only this pipeline (default: every pipeline that takes manual triggers).
    pub pipeline: Option<String>,
    /// Manual parameters (`on.manual.params`); strings, numbers or booleans.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, Value>,
}

const MAX_PARAMS: usize = 100;
const MAX_PARAM_VALUE: usize = 4096;

/// Parameters as the run stores them: an object of strings.
fn params_object(params: BTreeMap<String, Value>) -> ApiResult<Value> {
    if params.len() > MAX_PARAMS {
        return Err(ApiError::unprocessable(format!(
            "at most {MAX_PARAMS} parameters"
        )));
    }
    let mut out = serde_json::Map::new();
    for (k, v) in params {
        let valid_key = !k.is_empty()
            && k.len() <= 128
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if k.starts_with("__") {
            return Err(ApiError::unprocessable(format!(
                "parameter name {k:?}: names starting with `__` are reserved"
            )));
        }
        if !valid_key {
            return Err(ApiError::unprocessable(format!(
                "parameter name {k:?} must be made of letters, digits, `_`, `-` and `.`"
            )));
        }
        let text = match v {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(ApiError::unprocessable(format!(
                    "parameter {k:?} must be a string, number or boolean"
                )));
            }
        };
        if text.len() > MAX_PARAM_VALUE {
            return Err(ApiError::unprocessable(format!(
                "parameter {k:?} is longer than {MAX_PARAM_VALUE} bytes"
            )));
        }
        out.insert(k, Value::String(text));
    }
    Ok(Value::Object(out))
}

/// The head of a branch after fetching it, and its pipeline files.
struct Head {
    sha: String,
    /// The commit's summary line.
    message: String,
    author: String,
    /// `Err`: why they cannot be read (left for the planner to report).
    files: Result<Vec<(String, String)>, String>,
}

async fn fetch_branch_head(state: &AppState, repo: &Repo, git_ref: &str) -> ApiResult<Head> {
    let dir = state.mirror_dir(repo.id);
    let url = repo.clone_url.clone();
    let credentials = crate::admin::repos::mirror_credentials(state, repo)?;
    let git_ref = git_ref.to_string();
    let _guard = crate::git::lock_mirror(&dir).await;
    let head = tokio::task::spawn_blocking(move || -> crate::git::Result<Option<Head>> {
        let mut mirror = Mirror::open_or_init(&dir, &url)?;
        if let Some(c) = credentials {
            mirror = mirror.with_credentials(c);
        }
        mirror.fetch(std::slice::from_ref(&git_ref))?;
        let Some(sha) = mirror.resolve_ref(&git_ref)? else {
            return Ok(None);
        };
        let commit = mirror
            .repository()
            .find_commit(git2::Oid::from_str(&sha)?)?;
        let files = mirror.pipeline_files(&sha).map_err(|e| e.to_string());
        Ok(Some(Head {
            files,
            message: String::from_utf8_lossy(commit.message_bytes())
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
            author: String::from_utf8_lossy(commit.author().name_bytes()).into_owned(),
            sha,
        }))
    })
    .await
    .map_err(ApiError::internal)??;
    head.ok_or_else(|| ApiError::unprocessable("the branch does not exist in the repository"))
}

/// Refuses a manual run that would plan nothing or whose parameters a pipeline refuses
/// (see the module comment); pipeline files that cannot be read or do not load pass,
/// for the planner to turn into an error run with the diagnostics.
fn check_manual(repo: &Repo, branch: &str, head: &Head, params: &Value) -> ApiResult<()> {
    let Ok(files) = &head.files else {
        return Ok(());
    };
    if files.is_empty() {
        return Ok(());
    }
    let Ok(loaded) = pipelines::load(files) else {
        return Ok(());
    };
    let mut only = None;
    let mut plain = BTreeMap::new();
    if let Value::Object(map) = params {
        for (k, v) in map {
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            if k == crate::workers::planner::PARAM_PIPELINE {
                only = Some(text);
            } else {
                plain.insert(k.clone(), text);
            }
        }
    }
    let ctx = pipelines::EventContext {
        event: Event::Manual,
        branch: Some(branch.to_string()),
        sha: head.sha.clone(),
        params: plain,
        repo: Some(repo.name.clone()),
        ..Default::default()
    };
    crate::runs::manual::check(&loaded, only.as_deref(), &ctx).map_err(ApiError::unprocessable)
}

/// Start a manual run of a branch head, with parameters.
#[utoipa::path(
    post, path = "/api/repos/{owner}/{name}/trigger", tag = "runs", params(RepoPath),
    request_body(content = Option<TriggerRequest>, description = "Optional; default: the default branch, no parameters"),
    responses(
        (status = 201, description = "A pending run of the branch head (event and trigger `manual`)", body = Run),
        (status = 401), (status = 403), (status = 404),
        (status = 422, description = "Invalid branch or parameters, the branch does not exist, a parameter no pipeline declares (named in the message), or no pipeline at the branch head takes manual runs (`on.manual`)"),
        (status = 502, description = "The repository could not be fetched"),
    )
)]
pub async fn trigger(
    caller: Caller,
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RepoPath>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let req: TriggerRequest = optional_json(&body)?;
    let repo = find_repo(&state, &p.owner, &p.name).await?;
    let branch = req.branch.unwrap_or_else(|| repo.default_branch.clone());
    crate::admin::repos::validate_branch(&branch)?;
    let mut params = params_object(req.params)?;
    if let Some(pipeline) = req.pipeline {
        if pipeline.is_empty() || pipeline.len() > 128 || pipeline.chars().any(char::is_control) {
            return Err(ApiError::unprocessable("invalid pipeline name"));
        }
        // The planner plans only the pipeline named here (see `planner::PARAM_PIPELINE`).
        params[crate::workers::planner::PARAM_PIPELINE] = Value::String(pipeline);
    }
    let git_ref = format!("refs/heads/{branch}");
    let head = fetch_branch_head(&state, &repo, &git_ref).await?;
    check_manual(&repo, &branch, &head, &params)?;
    let mut new = NewRun::new(Trigger::Manual, Event::Manual, &git_ref, &head.sha);
    new.params = params;
    new.trusted = repo.trusted;
    new.message = head.message;
    new.author = head.author;
    new.triggered_by = caller.user().map(|u| u.id);
    let run = state.store.create_run(repo.id, new).await?;
    state.wake.planner.notify_one();
    tracing::info!(repo = %repo.name, run = run.number, %branch, sha = %run.sha, by = %caller, "manual trigger");
    Ok((StatusCode::CREATED, Json(run)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_become_strings() {
        let mut p = BTreeMap::new();
        p.insert("n".to_string(), serde_json::json!(3));
        p.insert("flag".to_string(), serde_json::json!(true));
        p.insert("env".to_string(), serde_json::json!("prod"));
        assert_eq!(
            params_object(p).unwrap(),
            serde_json::json!({"n": "3", "flag": "true", "env": "prod"})
        );
        let mut bad = BTreeMap::new();
        bad.insert("x".to_string(), serde_json::json!({"a": 1}));
        assert!(params_object(bad).is_err());
        let mut bad = BTreeMap::new();
        bad.insert("a b".to_string(), serde_json::json!("x"));
        assert!(params_object(bad).is_err());
        let mut reserved = BTreeMap::new();
        reserved.insert("__cron".to_string(), serde_json::json!("nightly"));
        assert!(params_object(reserved).is_err());
    }
}
