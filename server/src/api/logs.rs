//! Step logs (line ranges, tail, plain-text download, live follow) and the live event
//! stream of a run, both over server-sent events.
//!
//! Every route needs the viewer role on the repository. Log I/O is blocking
//! std::fs and runs in `spawn_blocking`; the download streams the file, so a 1 GB log
//! never sits in memory. Streams end when their subject is finished, when the client
//! goes away, or when the server shuts down (so they never hold up a graceful drain).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult};
use super::extract::{ApiPath, ApiQuery};
use super::route_table::{Access, RouteTable};
use super::runs::{RunPath, find_run};
use crate::daemon::state::AppState;
use crate::logs::{Line, StepKey, Stream as LogStream};
use crate::store::{Role, Run, RunId, Stage, StageId, Step, StoredEvent};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Viewer), routes!(lines))
        .add(Access::Role(Role::Viewer), routes!(download))
        .add(Access::Role(Role::Viewer), routes!(follow))
        .add(Access::Role(Role::Viewer), routes!(events))
}

/// Most lines one request returns.
pub const MAX_LINES: usize = 10_000;
const DEFAULT_LINES: usize = 1_000;
/// Lines read from disk per batch while following.
const FOLLOW_BATCH: usize = 1_000;
/// How often a follower re-checks the database (a step that finished while this
/// server was down never gets its log marked done in memory).
const FOLLOW_RECHECK: Duration = Duration::from_secs(2);
/// How often the run event stream polls the event log.
const EVENTS_POLL: Duration = Duration::from_millis(250);
/// How far behind the last event id seen the run event stream re-reads, for events
/// committed out of id order on PostgreSQL (see `Store::events_after`).
const EVENTS_WINDOW: i64 = 1_000;
const EVENTS_PAGE: u32 = 500;

/// A step in the URL. `stage_id` is the stage's numeric id (stage keys hold spaces and
/// slashes); `idx` the step's 0-based position in the stage.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct StepPath {
    pub owner: String,
    pub name: String,
    pub number: i64,
    pub stage_id: i64,
    pub idx: i64,
}

struct Found {
    run: Run,
    stage: Stage,
    step: Step,
    key: StepKey,
}

async fn find_step(state: &AppState, p: StepPath) -> ApiResult<Found> {
    let (_, run) = find_run(
        state,
        &RunPath {
            owner: p.owner,
            name: p.name,
            number: p.number,
        },
    )
    .await?;
    let not_found = || ApiError::not_found(format!("run #{} has no such step", run.number));
    let stage = match state.store.get_stage(p.stage_id).await {
        Ok(s) if s.run_id == run.id => s,
        Ok(_) | Err(crate::store::Error::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let step = state
        .store
        .list_steps(stage.id)
        .await?
        .into_iter()
        .find(|s| s.idx == p.idx)
        .ok_or_else(not_found)?;
    let key = StepKey {
        run: run.id,
        stage: stage.id,
        step: u32::try_from(step.idx).map_err(|_| not_found())?,
    };
    Ok(Found {
        run,
        stage,
        step,
        key,
    })
}

/// Runs blocking log I/O off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::logs::Result<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// One log line. Bytes that are not UTF-8 are replaced (U+FFFD); the `.txt` download
/// has the exact bytes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LogLine {
    /// 1-based within the step.
    pub number: u64,
    pub time_ms: i64,
    #[schema(value_type = String, example = "stdout")]
    pub stream: LogStream,
    pub text: String,
}

impl From<Line> for LogLine {
    fn from(l: Line) -> Self {
        LogLine {
            number: l.number,
            time_ms: l.time_ms,
            stream: l.stream,
            text: String::from_utf8_lossy(&l.bytes).into_owned(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// Lines the step has logged so far.
    pub total: u64,
    /// The `from` of the next page.
    pub next: u64,
    /// The step has finished: no more lines will come.
    pub finished: bool,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinesQuery {
    /// First line (1-based; default 1).
    pub from: Option<u64>,
    /// Most lines to return (default 1,000; capped at 10,000).
    pub limit: Option<usize>,
    /// The last N lines instead of a range (capped at 10,000).
    pub tail: Option<usize>,
}

/// A page of a step's log lines (JSON).
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs/{number}/stages/{stage_id}/steps/{idx}/logs",
    tag = "logs", params(StepPath, LinesQuery),
    responses(
        (status = 200, body = LogPage),
        (status = 400, description = "`tail` together with `from`"),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn lines(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<StepPath>,
    ApiQuery(q): ApiQuery<LinesQuery>,
) -> ApiResult<Json<LogPage>> {
    let found = find_step(&state, p).await?;
    if q.tail.is_some() && (q.from.is_some() || q.limit.is_some()) {
        return Err(ApiError::bad_request(
            "use either `tail` or `from`/`limit`, not both",
        ));
    }
    let st = state.clone();
    let key = found.key;
    let (lines, total) = blocking(move || {
        let lines = match q.tail {
            Some(n) => st.logs.tail(key, n.min(MAX_LINES))?,
            None => st.logs.read(
                key,
                q.from.unwrap_or(1).max(1),
                q.limit.unwrap_or(DEFAULT_LINES).min(MAX_LINES),
            )?,
        };
        Ok((lines, st.logs.count(key)?))
    })
    .await?;
    let next = lines.last().map_or_else(
        || q.from.unwrap_or(1).max(1).min(total + 1),
        |l| l.number + 1,
    );
    Ok(Json(LogPage {
        lines: lines.into_iter().map(LogLine::from).collect(),
        total,
        next,
        finished: found.step.status.is_final(),
    }))
}

/// A step's whole log as plain text.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs/{number}/stages/{stage_id}/steps/{idx}/logs.txt",
    tag = "logs", params(StepPath),
    responses(
        (status = 200, description = "The raw log, streamed", content_type = "text/plain", body = String),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn download(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<StepPath>,
) -> ApiResult<Response> {
    let found = find_step(&state, p).await?;
    let st = state.clone();
    let key = found.key;
    let (path, len) =
        blocking(move || Ok((st.logs.text_path(key), st.logs.text_len(key)?))).await?;
    let headers = [
        (
            header::CONTENT_TYPE,
            "text/plain; charset=utf-8".to_string(),
        ),
        (header::CONTENT_LENGTH, len.to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!(
                "attachment; filename=\"run-{}-stage-{}-step-{}.log\"",
                found.run.number, found.stage.id, found.step.idx
            ),
        ),
    ];
    let Some(path) = path.filter(|_| len > 0) else {
        return Ok((headers, Body::empty()).into_response());
    };
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    // Only the committed bytes: a batch being appended right now is not part of the log yet.
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 64 * 1024);
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// `Last-Event-ID` sent by a reconnecting `EventSource`.
fn last_event_id(headers: &HeaderMap) -> Option<i64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Server-sent events fed by a task through a small channel: the task notices a client
/// that went away (`closed()`) and stops.
fn sse_from_channel(rx: mpsc::Receiver<SseEvent>) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn json_event(name: &str, id: Option<String>, data: &impl Serialize) -> SseEvent {
    let event = SseEvent::default().event(name);
    let event = match id {
        Some(id) => event.id(id),
        None => event,
    };
    event
        .json_data(data)
        .unwrap_or_else(|_| SseEvent::default().event(name))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FollowQuery {
    /// First line to send (default 1, or after `Last-Event-ID`).
    pub from: Option<u64>,
}

/// Follow a step's log as server-sent events until the step ends.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs/{number}/stages/{stage_id}/steps/{idx}/logs/follow",
    tag = "logs", params(StepPath, FollowQuery),
    responses(
        (status = 200, content_type = "text/event-stream", description = "`event: line` (data: a LogLine, id: its number) for every line from `from` on, live; then `event: end` (data: {\"lines\": N}) when the step has finished"),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn follow(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<StepPath>,
    ApiQuery(q): ApiQuery<FollowQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let found = find_step(&state, p).await?;
    let from = q
        .from
        .or_else(|| last_event_id(&headers).map(|id| id.max(0) as u64 + 1))
        .unwrap_or(1)
        .max(1);
    let st = state.clone();
    let key = found.key;
    // Subscribe before reading, so no line appended in between goes unnoticed.
    let progress = blocking(move || st.logs.subscribe(key)).await?;
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(follow_task(
        state,
        found.key,
        found.stage.id,
        found.step.idx,
        from,
        progress,
        tx,
    ));
    Ok(sse_from_channel(rx))
}

/// Why a stream stopped early: the client left or the server is shutting down.
struct Stop;

/// Sends lines `next..` as far as the log goes now; returns the next line number.
async fn send_available(
    state: &AppState,
    key: StepKey,
    mut next: u64,
    tx: &mpsc::Sender<SseEvent>,
) -> Result<u64, Stop> {
    loop {
        let st = state.clone();
        let from = next;
        let batch = match blocking(move || st.logs.read(key, from, FOLLOW_BATCH)).await {
            Ok(b) => b,
            Err(_) => return Err(Stop),
        };
        if batch.is_empty() {
            return Ok(next);
        }
        for line in batch {
            next = line.number + 1;
            let id = line.number.to_string();
            let event = json_event("line", Some(id), &LogLine::from(line));
            tx.send(event).await.map_err(|_| Stop)?;
        }
    }
}

async fn step_finished(state: &AppState, stage: StageId, idx: i64) -> bool {
    match state.store.list_steps(stage).await {
        Ok(steps) => steps
            .iter()
            .find(|s| s.idx == idx)
            .is_none_or(|s| s.status.is_final()),
        // A vanished stage (repository deleted) is finished too.
        Err(crate::store::Error::NotFound(_)) => true,
        Err(_) => false,
    }
}

async fn follow_task(
    state: AppState,
    key: StepKey,
    stage: StageId,
    idx: i64,
    from: u64,
    mut progress: tokio::sync::watch::Receiver<crate::logs::Progress>,
    tx: mpsc::Sender<SseEvent>,
) {
    let mut next = from;
    let ended = async {
        loop {
            // Mark the current state seen *before* reading, so an append after the
            // read wakes the wait below.
            let done = progress.borrow_and_update().done;
            next = send_available(&state, key, next, &tx).await?;
            if done {
                return Ok(());
            }
            tokio::select! {
                changed = progress.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
                () = tokio::time::sleep(FOLLOW_RECHECK) => {
                    if step_finished(&state, stage, idx).await {
                        next = send_available(&state, key, next, &tx).await?;
                        return Ok(());
                    }
                }
                () = tx.closed() => return Err(Stop),
                () = state.shutdown.cancelled() => return Err(Stop),
            }
        }
    }
    .await;
    if ended.is_ok() {
        let lines = next.saturating_sub(1);
        let _ = tx
            .send(json_event(
                "end",
                None,
                &serde_json::json!({ "lines": lines }),
            ))
            .await;
    }
}

/// A status change of the run or of one of its stages, as the event stream sends it.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunEvent {
    pub id: i64,
    pub run_id: i64,
    /// `None` for a change of the run itself.
    pub stage_id: Option<i64>,
    pub stage_key: Option<String>,
    pub status: String,
    pub created_at: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only events with a larger id (default 0: the run's whole history; a
    /// reconnecting `EventSource` sends `Last-Event-ID` instead).
    pub after: Option<i64>,
}

/// Follow a run's state changes as server-sent events.
#[utoipa::path(
    get, path = "/api/repos/{owner}/{name}/runs/{number}/events",
    tag = "runs", params(RunPath, EventsQuery),
    responses(
        (status = 200, content_type = "text/event-stream", description = "`event: run` or `event: stage` (data: a RunEvent, id: its id) for every status change, oldest first; `event: end` (data: the final run) once the run and all its stages have finished"),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn events(
    State(state): State<AppState>,
    ApiPath(p): ApiPath<RunPath>,
    ApiQuery(q): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, run) = find_run(&state, &p).await?;
    let after = q.after.or_else(|| last_event_id(&headers)).unwrap_or(0);
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(events_task(state, run.id, after.max(0), tx));
    Ok(sse_from_channel(rx))
}

/// Sends the run's events not sent yet. Re-reads a window behind the highest id seen
/// and skips ids already sent, so a PostgreSQL transaction that committed late is not
/// missed.
async fn send_new_events(
    state: &AppState,
    run: RunId,
    after: i64,
    high: &mut i64,
    sent: &mut HashSet<i64>,
    keys: &mut HashMap<StageId, String>,
    tx: &mpsc::Sender<SseEvent>,
) -> Result<(), Stop> {
    let mut cursor = after.max(*high - EVENTS_WINDOW);
    loop {
        let page: Vec<StoredEvent> = match state
            .store
            .events_after(cursor, Some(run), EVENTS_PAGE)
            .await
        {
            Ok(p) => p,
            // A transient database error: try again at the next poll.
            Err(_) => return Ok(()),
        };
        let full = page.len() == EVENTS_PAGE as usize;
        for e in page {
            cursor = e.id;
            if !sent.insert(e.id) {
                continue;
            }
            *high = (*high).max(e.id);
            let stage_key = match e.stage_id {
                Some(id) => {
                    if !keys.contains_key(&id)
                        && let Ok(stages) = state.store.list_stages(run).await
                    {
                        keys.extend(stages.into_iter().map(|s| (s.stage.id, s.stage.key)));
                    }
                    keys.get(&id).cloned()
                }
                None => None,
            };
            let name = if e.stage_id.is_some() { "stage" } else { "run" };
            let data = RunEvent {
                id: e.id,
                run_id: e.run_id,
                stage_id: e.stage_id,
                stage_key,
                status: e.status,
                created_at: e.created_at,
            };
            tx.send(json_event(name, Some(e.id.to_string()), &data))
                .await
                .map_err(|_| Stop)?;
        }
        if !full {
            return Ok(());
        }
    }
}

async fn events_task(state: AppState, run_id: RunId, after: i64, tx: mpsc::Sender<SseEvent>) {
    let mut high = after;
    let mut sent = HashSet::new();
    let mut keys = HashMap::new();
    let outcome: Result<Run, Stop> = async {
        loop {
            // Read the state first: when it says "finished", every event up to it is
            // committed, and the read below sends them all.
            let run = match state.store.get_run(run_id).await {
                Ok(run) => Some(run),
                // Deleted with its repository: nothing more will happen.
                Err(crate::store::Error::NotFound(_)) => return Err(Stop),
                Err(_) => None,
            };
            let finished = match &run {
                Some(r) if r.status.is_final() => state
                    .store
                    .list_stages(run_id)
                    .await
                    .is_ok_and(|s| s.iter().all(|s| s.stage.status.is_final())),
                _ => false,
            };
            send_new_events(&state, run_id, after, &mut high, &mut sent, &mut keys, &tx).await?;
            if finished && let Some(run) = run {
                return Ok(run);
            }
            tokio::select! {
                () = tokio::time::sleep(EVENTS_POLL) => {}
                () = tx.closed() => return Err(Stop),
                () = state.shutdown.cancelled() => return Err(Stop),
            }
        }
    }
    .await;
    if let Ok(mut run) = outcome {
        run.plan = None;
        let _ = tx.send(json_event("end", None, &run)).await;
    }
}
