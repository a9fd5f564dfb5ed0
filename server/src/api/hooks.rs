//! Webhooks in: `POST /hooks/{forge}/{owner}/{name}` for GitHub, GitLab, Gitea,
//! Forgejo, Bitbucket Cloud (`bitbucket`), Bitbucket Data Center (`bitbucket-dc`) and
//! Gitee, and `POST /hooks/git/{owner}/{name}` for plain git servers (`slipway hook`).
//!
//! The handler's whole job is to decide, cheaply and safely, whether a delivery becomes
//! a `pending` run, and to say so within milliseconds; the planner worker does the git
//! and YAML work afterwards ([`crate::workers::planner`]). The order of the checks is the point:
//!
//! 1. **Repository and forge** from the path (unknown → 404, nothing read or stored).
//! 2. **Size and budget**: a `Content-Length` over `max_webhook_bytes` is refused at
//!    once (413); a body without one (chunked) is read chunk by chunk and refused as
//!    soon as it crosses the cap, so no more than the cap is ever buffered. All bodies
//!    not yet verified share one budget (`max_unverified_webhook_bytes`): beyond it a
//!    delivery waits briefly, then gets 503 with `Retry-After` ([`super::webhook_body`]).
//! 3. **Signature/token**, constant-time, on the bytes the forge signed
//!    ([`forge::open`]): the raw body — for a form-encoded delivery (`payload=<JSON>`)
//!    GitHub's raw form body, but Gitea/Forgejo's decoded `payload` field, which is
//!    what they sign. Before the JSON parser sees a byte: an unauthenticated caller
//!    never reaches it. 401, nothing stored; a verified GitHub form without a `payload`
//!    field is 400.
//! 4. **Delivery id** (missing → 400), then **parse** in two stages: first only what
//!    decides whether the event runs anything (an `action`, a push's ref) — an ignored
//!    action, a ping or an unknown event → 200 and the delivery is recorded, whatever
//!    else its payload lacks — then the fields the event needs (missing or malformed →
//!    400 naming the field, nothing stored).
//! 5. **Repository**: the payload must be about the registered repository (its path
//!    on the forge, case-insensitively, or its clone URL). An organisation-level hook
//!    sharing this repository's secret must not file other repositories' pushes under
//!    it: 403 "payload is for repository X, this hook is for Y", nothing stored.
//! 6. **Accept**: the delivery id and the run are written in one transaction under a
//!    unique index, so a repeated delivery is acknowledged (`{"duplicate": true}`) and
//!    creates no second run however many copies race. Then the planner is woken. A
//!    Bitbucket push that updates several refs makes one run per ref, each under the
//!    delivery id `<id>:<ref>` (`{"runs": [..]}`), like the plain-git hook.
//!
//! Plain git has no webhook signature: the post-receive hook authenticates with an API
//! token of scope `hook` bound to that repository (a push to another one is 403), or
//! `admin`, and each updated ref becomes a run whose delivery
//! id is `hook:<ref>:<new sha>`, so a re-sent hook is de-duplicated the same way.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::routes;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::route_table::{Access, RouteTable};
use super::webhook_body::{read_capped, read_unverified};
use crate::daemon::state::{self, AppState};
use crate::forge::{self, DeliveryError, ForgeEvent, ForgeKind, Parsed};
use crate::store::{self, Event, NewRun, Repo, RepoScope, TokenScope, Trigger};

pub fn routes() -> RouteTable {
    // The static `git` segment wins over `{forge}` (matchit prefers static routes).
    RouteTable::new()
        .add(Access::Hook, routes!(git_hook))
        // Public: forges send no token; the handler checks the delivery's signature (or
        // GitLab's token) against the repository's webhook secret before reading it.
        .add(Access::Public, routes!(forge_hook))
}

/// The repository named in the path, if it is registered with this forge kind. A forge
/// mismatch answers like an unknown repository: an unauthenticated caller learns
/// nothing about what is registered.
async fn find_repo(state: &AppState, kind: ForgeKind, name: &str) -> ApiResult<Repo> {
    let not_found = || ApiError::not_found(format!("no {kind} repository `{}`", printable(name)));
    let repo = match state.store.get_repo_by_name(name).await {
        Ok(r) => r,
        Err(store::Error::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    if repo.forge != kind {
        return Err(not_found());
    }
    Ok(repo)
}

/// Counts every delivery in `slipway_webhook_deliveries_total{forge, outcome}`. The forge
/// label is a known kind or `unknown`, never the raw path segment (bounded label values).
#[utoipa::path(
    post, path = "/hooks/{forge}/{*repo}", tag = "hooks",
    summary = "A forge's webhook delivery",
    description = "Verified against the repository's webhook secret on the bytes the forge \
        signs (GitHub, Gitea, Forgejo, Bitbucket Cloud and Bitbucket Data Center: HMAC-SHA256 \
        signature, Bitbucket's in `X-Hub-Signature: sha256=<hex>`; GitLab: the token header; \
        Gitee: `X-Gitee-Token`, the password or — with `X-Gitee-Timestamp` — the signature of \
        the timestamp, which must be within 10 minutes of the server's clock), then a `pending` \
        run is created for a push, tag or pull request of this repository. The body is JSON, or \
        (GitHub, Gitea, Forgejo) `application/x-www-form-urlencoded` with the JSON in its \
        `payload` field. A Bitbucket push updating several refs creates one run per ref \
        (`{\"runs\": [..]}`).",
    params(
        ("forge" = String, Path, description = "`github`, `gitlab`, `gitea`, `forgejo`, \
            `bitbucket` (Cloud), `bitbucket-dc` (Data Center) or `gitee`"),
        ("repo" = String, Path, description = "The repository's `owner/name`"),
    ),
    request_body(
        description = "The forge's event payload: JSON, or a form whose `payload` field is the JSON",
        content(
            (Object = "application/json"),
            (String = "application/x-www-form-urlencoded"),
        )
    ),
    responses(
        (status = 202, description = "Accepted: a run (or, for a multi-ref Bitbucket push, runs) was created"),
        (status = 200, description = "A ping, an ignored event or action, or a repeated delivery"),
        (status = 400, description = "No delivery id, a malformed payload or one missing a field \
            the event needs (named), or a GitHub form body without a `payload` field"),
        (status = 401, description = "Bad or missing signature (or a Gitea/Forgejo form body \
            without the `payload` field they sign); a Gitee signature with a stale timestamp"),
        (status = 403, description = "Correctly signed, but the payload is about another \
            repository than the one this hook is registered for (e.g. an organisation-level hook \
            reusing its secret); nothing is stored"),
        (status = 404, description = "Unknown forge or repository"),
        (status = 413, description = "Larger than `max_webhook_bytes`"),
        (status = 503, description = "The budget for unverified bodies is taken; see `Retry-After`"),
    )
)]
async fn forge_hook(
    State(state): State<AppState>,
    Path((forge_name, repo_name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let forge = forge_name
        .parse::<ForgeKind>()
        .map_or_else(|_| "unknown".to_string(), |k| k.to_string());
    let response = handle_forge_hook(state.clone(), forge_name, repo_name, headers, body)
        .await
        .into_response();
    state
        .metrics
        .webhook(forge, delivery_outcome(response.status()));
    response
}

/// The outcome label of a delivery, from the answer it got.
pub fn delivery_outcome(status: StatusCode) -> &'static str {
    match status {
        StatusCode::ACCEPTED => "accepted",
        // Pings, ignored events and duplicates.
        StatusCode::OK => "acknowledged",
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "unauthorized",
        StatusCode::NOT_FOUND => "unknown_repo",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        // Refused for the budget of unverified bodies (or the body's deadline).
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => "busy",
        // Nothing stored: the server's disk is full.
        StatusCode::INSUFFICIENT_STORAGE => "disk_full",
        s if s.is_client_error() => "malformed",
        _ => "error",
    }
}

async fn handle_forge_hook(
    state: AppState,
    forge_name: String,
    repo_name: String,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let kind: ForgeKind = forge_name
        .parse()
        .map_err(|e: forge::UnknownForge| ApiError::not_found(e.to_string()))?;
    let repo = find_repo(&state, kind, &repo_name).await?;
    let (body, held) = read_unverified(
        &headers,
        body,
        state.config.max_webhook_bytes,
        &state.webhook_budget,
    )
    .await?;

    let secret = state
        .secret_box
        .open(
            &repo.webhook_secret_enc,
            &state::webhook_secret_aad(&repo.name),
        )
        .map_err(|e| {
            ApiError::internal(format!("opening the webhook secret of {}: {e}", repo.name))
        })?;
    let payload = match forge::open(kind, &headers, &body, &secret) {
        Ok(payload) => payload,
        Err(DeliveryError::Unverified(e)) => {
            tracing::info!(repo = %repo.name, forge = %kind, reason = %e, "webhook refused");
            return Err(ApiError::unauthorized(e.to_string()));
        }
        Err(e @ DeliveryError::Form(_)) => {
            tracing::info!(repo = %repo.name, forge = %kind, reason = %e, "malformed webhook");
            return Err(ApiError::bad_request(e.to_string()));
        }
    };
    drop(secret);
    drop(body);
    // Verified: its bytes no longer count against the budget for unverified bodies.
    drop(held);

    let delivery = forge::delivery_id_with_body(kind, &headers, &payload)
        .ok_or_else(|| ApiError::bad_request("missing delivery id header"))?;
    let event_name = forge::event_name(kind, &headers)
        .ok_or_else(|| ApiError::bad_request("missing event header"))?;
    let parsed = forge::parse(kind, &event_name, &payload).map_err(|e| {
        tracing::info!(repo = %repo.name, forge = %kind, %delivery, reason = %e, "malformed webhook");
        ApiError::bad_request(e.to_string())
    })?;
    match parsed {
        Parsed::Ping => {
            let fresh = state.store.record_delivery(repo.id, &delivery).await?;
            Ok((
                StatusCode::OK,
                Json(json!({ "ping": true, "duplicate": !fresh })),
            )
                .into_response())
        }
        Parsed::Ignored { reason } => {
            let fresh = state.store.record_delivery(repo.id, &delivery).await?;
            tracing::debug!(repo = %repo.name, %delivery, %reason, "webhook ignored");
            Ok((
                StatusCode::OK,
                Json(json!({ "ignored": reason, "duplicate": !fresh })),
            )
                .into_response())
        }
        Parsed::Event(ev) => {
            check_repository(&repo, &ev)?;
            let new = new_run_from_event(&repo, ev);
            accept(&state, &repo, &delivery, new).await
        }
        Parsed::Events(events) => {
            for ev in &events {
                check_repository(&repo, ev)?;
            }
            accept_each(&state, &repo, &delivery, events).await
        }
    }
}

/// A verified event about another repository than the hook's is refused with 403, not
/// filed under the hook's repository.
///
/// The signature proves only who holds the secret. An organisation- or group-level hook
/// (or one copied between repositories) that reuses this repository's secret signs
/// every repository's events with it; without this check a push to any of them would
/// run this repository's pipeline on a commit fetched from here by id, and report its
/// status here. 403 rather than 422: the payload is well-formed, but the credential
/// that signed it does not authorise filing events for that repository. Pings and
/// ignored events are not checked: they create nothing (and an organisation hook's
/// ping names no repository).
fn check_repository(repo: &Repo, ev: &ForgeEvent) -> ApiResult<()> {
    if ev.is_for(&repo.name, &repo.clone_url) {
        return Ok(());
    }
    tracing::info!(repo = %repo.name, payload_repo = %printable(&ev.repository), "webhook for another repository refused");
    Err(ApiError::forbidden(format!(
        "payload is for repository {}, this hook is for {}",
        printable(&ev.repository),
        repo.name
    )))
}

/// One run per updated ref of a multi-ref push, each de-duplicated on its own
/// `<delivery>:<ref>` id: a re-sent delivery creates only what an interrupted first
/// attempt did not. 202 with the new runs' numbers when any was created.
async fn accept_each(
    state: &AppState,
    repo: &Repo,
    delivery: &str,
    events: Vec<ForgeEvent>,
) -> ApiResult<Response> {
    let mut created = Vec::new();
    for ev in events {
        let id = format!("{delivery}:{}", ev.git_ref);
        let new = new_run_from_event(repo, ev);
        if let Some(run) = state.store.accept_delivery(repo.id, &id, new).await? {
            tracing::info!(repo = %repo.name, run = run.number, event = %run.event, delivery = %id, "run accepted");
            created.push(run.number);
        }
    }
    if created.is_empty() {
        return Ok((StatusCode::OK, Json(json!({ "duplicate": true }))).into_response());
    }
    state.wake.planner.notify_waiters();
    Ok((StatusCode::ACCEPTED, Json(json!({ "runs": created }))).into_response())
}

/// What a verified forge event becomes: a `pending` run for the planner.
pub fn new_run_from_event(repo: &Repo, ev: ForgeEvent) -> NewRun {
    let mut new = NewRun::new(Trigger::Webhook, ev.kind, &ev.git_ref, &ev.after);
    new.branch = ev.branch;
    new.tag = ev.tag;
    new.before_sha = ev.before;
    if let Some(pr) = ev.pr {
        new.pr_number = i64::try_from(pr.number).ok();
        new.source_branch = Some(pr.source_branch);
        new.fork = pr.fork;
    }
    // Fork pull requests never get secrets, whatever the repository's setting.
    new.trusted = repo.trusted && !new.fork;
    new.message = ev.message;
    new.author = ev.author;
    // Who pushed is what the forge's signed payload names as the sender; the commit's
    // author is whatever the committer typed and proves nothing.
    new.pusher = ev.sender.map(|login| {
        format!(
            "{}:{}",
            repo.forge,
            crate::admin::people::normalise_login(&login)
        )
    });
    new
}

async fn accept(state: &AppState, repo: &Repo, delivery: &str, new: NewRun) -> ApiResult<Response> {
    match state.store.accept_delivery(repo.id, delivery, new).await? {
        Some(run) => {
            tracing::info!(repo = %repo.name, run = run.number, event = %run.event, %delivery, "run accepted");
            state.wake.planner.notify_waiters();
            Ok((StatusCode::ACCEPTED, Json(json!({ "run": run.number }))).into_response())
        }
        None => Ok((StatusCode::OK, Json(json!({ "duplicate": true }))).into_response()),
    }
}

// ------------------------------------------------------------------ plain git

/// The body `slipway hook` sends: the `old new ref` lines git gives a post-receive hook.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHookBody {
    pub updates: Vec<RefUpdate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefUpdate {
    pub old: String,
    pub new: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The new tip's commit message, when the hook could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Who wrote it (the hook's best knowledge: the commit author).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

/// One update's outcome, in request order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefResult {
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The run created, or the one a previous identical hook created (`duplicate`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run: Option<i64>,
    #[serde(default)]
    pub duplicate: bool,
    /// Why no run was created (a deletion, not a branch or tag).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ignored: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GitHookResponse {
    pub results: Vec<RefResult>,
}

/// A push rarely updates more than a handful of refs; a mirror push of a huge
/// repository may, but a thousand runs from one request is a mistake, not CI.
const MAX_HOOK_UPDATES: usize = 1000;
/// The hook body is small JSON; no reason to accept the webhook cap.
const MAX_HOOK_BYTES: usize = 1024 * 1024;

/// Counted like [`forge_hook`] with forge `git` (requests refused by the token check
/// before the handler runs are not counted).
#[utoipa::path(
    post, path = "/hooks/git/{*repo}", tag = "hooks",
    summary = "A plain git server's post-receive hook (`slipway hook`)",
    description = "Each updated branch or tag becomes a `pending` run; a repeated hook is \
        de-duplicated per ref and new commit.",
    params(("repo" = String, Path, description = "The repository's `owner/name`")),
    request_body(content = Object, description = "`{\"updates\": [{\"old\", \"new\", \"ref\"}]}`"),
    responses(
        (status = 202, description = "Runs created; `results` says per ref", body = Object),
        (status = 200, description = "Nothing new (deletions, repeated hooks)", body = Object),
        (status = 401), (status = 403), (status = 404),
    )
)]
async fn git_hook(
    State(state): State<AppState>,
    caller: Caller,
    Path(repo_name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let response = handle_git_hook(state.clone(), caller, repo_name, headers, body)
        .await
        .into_response();
    state
        .metrics
        .webhook(ForgeKind::Git, delivery_outcome(response.status()));
    response
}

/// A hook token is bound to one repository: a push to any other is refused (403). An
/// admin token may trigger any repository.
fn hook_token_allows(caller: &Caller, repo_name: &str) -> ApiResult<()> {
    let Caller::Machine(token) = caller else {
        return Ok(());
    };
    if token.scope != TokenScope::Hook {
        return Ok(());
    }
    match &token.repos {
        RepoScope::Repos(_) if token.repos.allows(repo_name) => Ok(()),
        RepoScope::Repos(bound) => Err(ApiError::forbidden(format!(
            "hook token `{}` may only trigger {}, not `{}`",
            token.name,
            bound.join(", "),
            printable(repo_name)
        ))),
        RepoScope::All | RepoScope::Owner(_) => Err(ApiError::forbidden(format!(
            "hook token `{}` is bound to no repository; create one for this repository: \
             slipway token create NAME --scope hook --repo owner/name",
            token.name
        ))),
    }
}

async fn handle_git_hook(
    state: AppState,
    caller: Caller,
    repo_name: String,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    // Before the repository is looked up: a token for another repository learns
    // nothing, not even whether this one exists.
    hook_token_allows(&caller, &repo_name)?;
    let repo = find_repo(&state, ForgeKind::Git, &repo_name).await?;
    let limit = MAX_HOOK_BYTES.min(state.config.max_webhook_bytes);
    let body = read_capped(&headers, body, limit).await?;
    let req: GitHookBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("malformed hook body: {e}")))?;
    if req.updates.len() > MAX_HOOK_UPDATES {
        return Err(ApiError::bad_request(format!(
            "{} ref updates in one request; at most {MAX_HOOK_UPDATES}",
            req.updates.len()
        )));
    }
    // Validate everything before writing anything: a bad line fails the whole request.
    let mut planned = Vec::with_capacity(req.updates.len());
    for u in &req.updates {
        planned.push(classify_update(&repo, u)?);
    }
    let mut results = Vec::with_capacity(planned.len());
    let mut created = 0;
    for (u, p) in req.updates.iter().zip(planned) {
        let result = match p {
            Err(reason) => RefResult {
                git_ref: u.git_ref.clone(),
                run: None,
                duplicate: false,
                ignored: Some(reason),
            },
            Ok(new) => {
                let delivery = format!("hook:{}:{}", u.git_ref, new.sha);
                match state.store.accept_delivery(repo.id, &delivery, new).await? {
                    Some(run) => {
                        created += 1;
                        tracing::info!(repo = %repo.name, run = run.number, r#ref = %u.git_ref, by = %caller, "run accepted from git hook");
                        RefResult {
                            git_ref: u.git_ref.clone(),
                            run: Some(run.number),
                            duplicate: false,
                            ignored: None,
                        }
                    }
                    None => RefResult {
                        git_ref: u.git_ref.clone(),
                        run: None,
                        duplicate: true,
                        ignored: None,
                    },
                }
            }
        };
        results.push(result);
    }
    if created > 0 {
        state.wake.planner.notify_waiters();
    }
    let status = if created > 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(GitHookResponse { results })).into_response())
}

/// `Ok(Ok(run))` to create, `Ok(Err(reason))` to acknowledge and skip, `Err` for a
/// malformed line (400 for the whole request).
fn classify_update(repo: &Repo, u: &RefUpdate) -> ApiResult<Result<NewRun, String>> {
    let bad = |what: &str| {
        ApiError::bad_request(format!("update of `{}`: {what}", printable(&u.git_ref)))
    };
    let sha_ok = |s: &str| matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !sha_ok(&u.old) {
        return Err(bad("`old` is not a full commit id"));
    }
    if !sha_ok(&u.new) {
        return Err(bad("`new` is not a full commit id"));
    }
    if !(u.git_ref.starts_with("refs/") && git2::Reference::is_valid_name(&u.git_ref)) {
        return Err(bad("not a valid full ref name"));
    }
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    if zero(&u.new) {
        return Ok(Err("deleted; deletions do not trigger runs".into()));
    }
    let event = if u.git_ref.starts_with("refs/heads/") {
        Event::Push
    } else if u.git_ref.starts_with("refs/tags/") {
        Event::Tag
    } else {
        return Ok(Err("neither a branch nor a tag".into()));
    };
    let mut new = NewRun::new(
        Trigger::Hook,
        event,
        &u.git_ref,
        &u.new.to_ascii_lowercase(),
    );
    new.before_sha = (!zero(&u.old)).then(|| u.old.to_ascii_lowercase());
    // A plain git server has no forks: everything pushed there was pushed by someone
    // allowed to push, so the repository's trust setting applies as is.
    new.trusted = repo.trusted;
    new.message = u.message.clone().unwrap_or_default();
    new.author = u.author.clone().unwrap_or_default();
    Ok(Ok(new))
}

/// Path segments end up in error messages: short and without control characters.
fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(200).collect()
}
