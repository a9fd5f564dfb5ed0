//! The runner protocol's source download: a tar of the run's commit, streamed from
//! the repository's mirror to the runner holding the stage's lease.

use std::io::Write;

use super::leased;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use utoipa_axum::routes;

use crate::api::error::{ApiError, ApiResult};
use crate::api::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::git::Mirror;
use crate::protocol::{LeaseToken, routes};
use crate::store::StageId;

pub(super) fn routes() -> RouteTable {
    RouteTable::new().add(Access::Runner, routes!(source))
}

/// Streams a tar of the run's commit, straight from the mirror: a blocking task writes
/// the archive into a small bounded channel that the response body drains, so memory
/// stays flat whatever the repository's size.
#[utoipa::path(
    get, path = routes::SOURCE, tag = "runner",
    summary = "The source of the stage's commit", description = "A tar, streamed from the mirror.",
    params(("id" = i64, Path, description = "The stage's id")),
    responses(
        (status = 200, description = "A tar of the run's commit, streamed", content_type = "application/x-tar", body = Vec<u8>),
        (status = 401), (status = 403), (status = 409, description = "`lease_lost`")
    )
)]
async fn source(
    State(state): State<AppState>,
    Path(id): Path<StageId>,
    Query(q): Query<LeaseToken>,
) -> ApiResult<Response> {
    let stage = leased(&state, id, &q.lease_token).await?;
    let run = state.store.get_run(stage.run_id).await?;
    let repo = state.store.get_repo(run.repo_id).await?;
    let dir = state.mirror_dir(repo.id);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sha = run.sha.clone();
    // The fallback below fetches: it must not overlap another fetch of this mirror
    // (planner, cron, manual triggers), which would race on git's lock files.
    let fetching = crate::git::lock_mirror(&dir).await;
    tokio::task::spawn_blocking(move || {
        let opened = match Mirror::open(&dir) {
            Ok(m) if m.has_commit(&sha).unwrap_or(false) => Ok(m),
            // Normally the planner fetched the commit; if the mirror lost it (or was
            // wiped), fetch it again rather than fail the stage.
            _ => Mirror::open_or_init(&dir, &repo.clone_url).and_then(|m| {
                m.ensure_commit(&sha, std::slice::from_ref(&run.git_ref))
                    .map(|()| m)
            }),
        };
        drop(fetching);
        let mirror = match opened {
            Ok(m) => {
                let _ = ready_tx.send(Ok(()));
                m
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let writer = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        if let Err(e) = mirror.archive(&sha, writer) {
            tracing::warn!(stage_id = id, error = %e, "streaming the source archive failed");
            let _ = tx.blocking_send(Err(std::io::Error::other("archive failed")));
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_retryable() => return Err(ApiError::unavailable(e)),
        Ok(Err(e)) => return Err(ApiError::internal(e)),
        Err(e) => return Err(ApiError::internal(e)),
    }
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-tar")],
        Body::from_stream(stream),
    )
        .into_response())
}

const CHUNK: usize = 64 * 1024;

/// A `Write` that sends 64 KiB chunks into a bounded channel (blocking when the
/// reader is slow), for use on a blocking thread.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = self.send();
    }
}
