//! What runs beside a leased stage's steps: the heartbeat that keeps its lease (and
//! hears the server's cancel the moment it is made: the server holds each beat open),
//! and the forwarder that posts why a set-up waits, step starts, log batches and step
//! results in order.
//! A batch goes out as soon as no further line is waiting, so a quiet step's line
//! reaches the server (and its followers) at once; while a post is in flight the lines
//! printed meanwhile gather into the next batch (at most 8,192 lines or 1 MiB, in
//! binary frames: [`protocol::LOG_FRAMES`]), so a chatty step is batched by its own
//! speed — no timer either way. Posts retry with backoff; log batches are idempotent
//! by line number, so a resend is harmless.
//!
//! A server that answers 507 (its disk is full) could not store what the stage said:
//! the stage stops there and ends as an `error` that says so ([`StageCtx::full`]),
//! rather than go on with a log that has a hole in it. Its end is then posted until
//! the server can store it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use runner::{EventReceiver, LogStreamKind, StageEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::client::{CallError, Client, OnFull, REQUEST_TIMEOUT};
use crate::logs::Stream;
use crate::protocol::{
    self, HeartbeatAction, HeartbeatRequest, HeartbeatResponse, LeaseToken, LogAck, StageWaiting,
    StepFinish, WireStatus,
};

/// A log batch is posted when no line is waiting, or at this many lines…
const BATCH_LINES: usize = 8192;
/// …or this many bytes of frames (with a last line of up to 64 KiB and 13 bytes of
/// frame per line, well under the server's 2 MB body limit).
const BATCH_BYTES: usize = 1024 * 1024;

/// What the tasks working on one leased stage share.
pub(super) struct StageCtx {
    pub(super) client: Arc<Client>,
    pub(super) stage_id: i64,
    pub(super) token: String,
    pub(super) offsets: Vec<u64>,
    /// Set once the lease is gone (or the server stayed unreachable past it): post
    /// nothing more.
    pub(super) lost: AtomicBool,
    /// Why the stage stopped when the server could not store its progress (a 507):
    /// the first such refusal, which the stage's end reports.
    pub(super) full: Mutex<Option<String>>,
    pub(super) give_up: Duration,
    pub(super) shutdown: CancellationToken,
}

impl StageCtx {
    pub(super) fn new(
        client: Arc<Client>,
        stage_id: i64,
        token: String,
        offsets: Vec<u64>,
        give_up: Duration,
        shutdown: CancellationToken,
    ) -> StageCtx {
        StageCtx {
            client,
            stage_id,
            token,
            offsets,
            lost: AtomicBool::new(false),
            full: Mutex::new(None),
            give_up,
            shutdown,
        }
    }

    pub(super) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Why the server could not store this stage's progress, if it could not.
    pub(super) fn full(&self) -> Option<String> {
        self.full.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Posts with retries; on `lease_lost` (or when the server stays unreachable past
    /// the lease) marks the stage lost and cancels it. On a full disk (507) it stops the
    /// stage: `what` the server could not store goes into the stage's reason.
    pub(super) async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        body: &B,
        cancel: &CancellationToken,
    ) -> Option<R> {
        self.post_with(what, path, cancel, |r| r.json(body)).await
    }

    /// [`StageCtx::post`] of a body that `with` sets.
    pub(super) async fn post_with<R: DeserializeOwned>(
        &self,
        what: &str,
        path: &str,
        cancel: &CancellationToken,
        with: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Option<R> {
        if self.is_lost() {
            return None;
        }
        match self
            .client
            .retrying_with(path, self.give_up, OnFull::Fail, &self.shutdown, with)
            .await
        {
            Ok(r) => r,
            Err(CallError::Full(message)) => {
                let mut full = self.full.lock().unwrap_or_else(|e| e.into_inner());
                if full.is_none() {
                    tracing::warn!(stage_id = self.stage_id, what, %message, "the server could not store the stage's progress; stopping the stage");
                    *full = Some(format!("the server could not store {what}: {message}"));
                }
                cancel.cancel();
                None
            }
            Err(CallError::Refused { status, message }) => {
                // A bug on one side; dropping this one update beats killing the stage.
                tracing::warn!(stage_id = self.stage_id, path, %status, message, "request refused");
                None
            }
            Err(e) => {
                tracing::warn!(stage_id = self.stage_id, path, error = %e, "giving up on the stage");
                self.lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                None
            }
        }
    }
}

/// Heartbeats the lease back to back, each held by the server for up to `every` unless
/// the stage is cancelled meanwhile: the lease is renewed about every `every`, and a
/// cancel is heard at once rather than at the next beat. A server that answers at once
/// (an error, or one that does not hold) is asked again only after `every`.
pub(super) async fn heartbeat_loop(
    ctx: Arc<StageCtx>,
    every: Duration,
    cancel: CancellationToken,
    done: CancellationToken,
) {
    let body = HeartbeatRequest {
        lease_token: ctx.token.clone(),
        wait_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
    };
    let path = protocol::heartbeat_path(ctx.stage_id);
    // The answer may be held for `every`; then the request's own time limit.
    let timeout = every + every.min(REQUEST_TIMEOUT);
    loop {
        let started = tokio::time::Instant::now();
        let answer = tokio::select! {
            _ = done.cancelled() => return,
            r = ctx.client.call::<_, HeartbeatResponse>(reqwest::Method::POST, &path, &body, timeout) => r,
        };
        match answer {
            Ok(Some(HeartbeatResponse {
                action: HeartbeatAction::Cancel,
            })) => {
                if !cancel.is_cancelled() {
                    tracing::info!(stage_id = ctx.stage_id, "cancel requested by the server");
                    cancel.cancel();
                }
            }
            Ok(_) => {}
            Err(CallError::LeaseLost) => {
                ctx.lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            // The next beat tries again; the lease outlives two missed beats.
            Err(e) => tracing::warn!(stage_id = ctx.stage_id, error = %e, "heartbeat failed"),
        }
        tokio::select! {
            _ = done.cancelled() => return,
            _ = tokio::time::sleep_until(started + every) => {}
        }
    }
}

/// Lines of one step waiting to be posted, as the body of the post
/// ([`protocol::LOG_FRAMES`]).
#[derive(Default)]
struct Batch {
    step: usize,
    /// The name of the step that started last (lines come from the running step).
    name: String,
    first: u64,
    frames: Vec<u8>,
    lines: usize,
}

/// Posts the stage's events in order: step starts, log batches, step results.
pub(super) async fn forward(
    ctx: Arc<StageCtx>,
    mut events: EventReceiver,
    cancel: CancellationToken,
) {
    let mut batch = Batch::default();
    let mut posting: Posting = None;
    let token = || LeaseToken {
        lease_token: ctx.token.clone(),
    };
    loop {
        // Nothing waiting: what was gathered goes out now rather than after a timer.
        if events.is_empty() && posting.is_none() {
            flush(&ctx, &mut batch, &mut posting, &cancel).await;
        }
        // While a batch is being posted the step's next lines are taken meanwhile, so
        // its output keeps flowing instead of waiting for the server's answer.
        let next = match posting.as_mut() {
            Some(post) => tokio::select! {
                biased;
                _ = post => None,
                event = events.recv() => Some(event),
            },
            None => Some(events.recv().await),
        };
        let Some(event) = next else {
            posting = None;
            continue;
        };
        if !matches!(event, Some(StageEvent::Line(_))) {
            // Everything else is posted in order after the lines before it.
            flush(&ctx, &mut batch, &mut posting, &cancel).await;
            settle(&mut posting).await;
        }
        match event {
            None => return,
            Some(StageEvent::StepStarted { index, name, .. }) => {
                batch.name = name.clone();
                ctx.post::<_, serde_json::Value>(
                    &format!("the start of step `{name}`"),
                    &protocol::step_path(ctx.stage_id, index, "start"),
                    &token(),
                    &cancel,
                )
                .await;
            }
            Some(StageEvent::Waiting { reason, .. }) => {
                ctx.post::<_, serde_json::Value>(
                    "why the stage waits",
                    &protocol::waiting_path(ctx.stage_id),
                    &StageWaiting {
                        lease_token: ctx.token.clone(),
                        reason,
                    },
                    &cancel,
                )
                .await;
            }
            Some(StageEvent::Line(line)) => {
                if batch.lines > 0 && batch.step != line.step {
                    flush(&ctx, &mut batch, &mut posting, &cancel).await;
                }
                if batch.lines == 0 {
                    batch.step = line.step;
                    batch.first =
                        ctx.offsets.get(line.step).copied().unwrap_or(0) + line.number.max(1);
                }
                let time_ms = line
                    .time
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let stream = match line.stream {
                    LogStreamKind::Stdout => Stream::Stdout,
                    LogStreamKind::Stderr => Stream::Stderr,
                };
                protocol::push_frame(&mut batch.frames, stream, time_ms, &line.bytes);
                batch.lines += 1;
                if batch.lines >= BATCH_LINES || batch.frames.len() >= BATCH_BYTES {
                    flush(&ctx, &mut batch, &mut posting, &cancel).await;
                }
            }
            Some(StageEvent::StepFinished {
                index,
                name,
                outcome,
                ..
            }) => {
                let status = match WireStatus::from_runner(&outcome.status) {
                    // Stopped because the server could not store its log: not the
                    // step's doing, nor anyone's cancel.
                    WireStatus::Cancelled if ctx.full().is_some() => WireStatus::Error,
                    other => other,
                };
                let body = StepFinish {
                    lease_token: ctx.token.clone(),
                    status,
                    exit_code: outcome.exit_code,
                    oom_killed: outcome.oom_killed,
                };
                ctx.post::<_, serde_json::Value>(
                    &format!("the end of step `{name}`"),
                    &protocol::step_path(ctx.stage_id, index, "finish"),
                    &body,
                    &cancel,
                )
                .await;
            }
        }
    }
}

/// The log batch being posted, if any: at most one at a time, while the next gathers.
type Posting = Option<tokio::task::JoinHandle<()>>;

/// Waits until the batch being posted, if any, is stored (or given up on).
async fn settle(posting: &mut Posting) {
    if let Some(post) = posting.take() {
        let _ = post.await;
    }
}

/// Starts posting the gathered lines, once the batch before them is done.
async fn flush(
    ctx: &Arc<StageCtx>,
    batch: &mut Batch,
    posting: &mut Posting,
    cancel: &CancellationToken,
) {
    if batch.lines == 0 {
        return;
    }
    settle(posting).await;
    // The next batch is likely as large as this one.
    let capacity = batch.frames.len();
    let frames = bytes::Bytes::from(std::mem::replace(
        &mut batch.frames,
        Vec::with_capacity(capacity),
    ));
    batch.lines = 0;
    if ctx.full().is_some() {
        // A batch was not stored: later lines would leave a hole in the log.
        return;
    }
    let path = format!(
        "{}?first_line={}",
        protocol::step_path(ctx.stage_id, batch.step, "logs"),
        batch.first
    );
    let what = format!("the log of step `{}`", batch.name);
    let (ctx, cancel) = (ctx.clone(), cancel.clone());
    *posting = Some(tokio::spawn(async move {
        ctx.post_with::<LogAck>(&what, &path, &cancel, |r| {
            r.header(reqwest::header::CONTENT_TYPE, protocol::LOG_FRAMES)
                .header(protocol::LEASE_HEADER, &ctx.token)
                .body(frames.clone())
        })
        .await;
    }));
}
