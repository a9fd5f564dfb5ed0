//! The runner protocol's wire types: JSON over HTTP between the server
//! (`api::protocol`) and a runner (`agent`), whether the runner is the server's
//! own in-process one or `slipway runner` on another host. Every request carries a
//! runner-scoped bearer token; every request about a leased stage also carries the
//! stage's lease token, and a stale one is answered `409 {"error":{"code":"lease_lost"}}`.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `POST /api/runner/register` | [`RegisterRequest`] | [`RegisterResponse`] |
//! | `POST /api/runner/lease` | [`LeaseRequest`] | 200 [`LeaseResponse`] or 204 after a long poll |
//! | `GET /api/runner/stages/{id}/source?lease_token=` | | a tar of the commit's tree |
//! | `POST /api/runner/stages/{id}/heartbeat` | [`HeartbeatRequest`] | [`HeartbeatResponse`], held until a cancel or `wait_ms` |
//! | `POST /api/runner/stages/{id}/steps/{idx}/start` | [`LeaseToken`] | 204 |
//! | `POST /api/runner/stages/{id}/steps/{idx}/logs?first_line=` | [`LOG_FRAMES`] (or a JSON [`LogBatch`]) | [`LogAck`] |
//! | `POST /api/runner/stages/{id}/steps/{idx}/finish` | [`StepFinish`] | 204 |
//! | `PUT /api/runner/stages/{id}/artifacts?`[`ArtifactUpload`] | the file's bytes | [`ArtifactStored`] |
//! | `GET /api/runner/stages/{id}/artifacts/{artifact_id}?lease_token=` | | the bytes of an artifact of a needed stage |
//! | `GET /api/runner/stages/{id}/cache?`[`CacheLookup`] | | 200 the cache tar, or 404 `no_cache` |
//! | `PUT /api/runner/stages/{id}/cache?`[`CacheUpload`] | the tar's bytes | [`CacheStored`] |
//! | `POST /api/runner/stages/{id}/finish` | [`StageFinish`] | [`StageFinished`] |
//!
//! A stage's finish carries its results (outputs, findings); the server stores them with
//! the stage's end and hands the outputs to the stages that need it, as the environment
//! variables `SLIPWAY_STAGE_<STAGE>_<KEY>` (see [`pipelines::expr::Expr::env_var`]).
//!
//! Retries are safe: log batches are idempotent by line number, starting or finishing a
//! step twice is acknowledged, and uploading an artifact or a cache again stores nothing
//! new (blobs are content-addressed; an artifact of the same name is replaced).
//!
//! Artifacts are uploaded after the steps and before the stage's finish call, so a
//! stage is only `success` with its artifacts stored. Uploads stream: `size` and
//! `sha256` are announced in the query and checked against the body; over the server's
//! limits the answer is 413 before the body is read. Artifact names are relative
//! `/`-separated paths ([`runner::safe_path::check_name`]).

use std::collections::BTreeMap;
use std::fmt;

use pipelines::PlannedStage;
use serde::{Deserialize, Serialize};

use crate::logs::{Joined, Stream};

/// Route templates (axum syntax): the one source of the server's runner routes and of
/// the runner's request paths (`*_path` fill them in).
pub mod routes {
    macro_rules! stage_route {
        ($tail:literal) => {
            concat!("/api/runner/stages/{id}", $tail)
        };
    }
    pub(super) use stage_route;

    pub const REGISTER: &str = "/api/runner/register";
    pub const LEASE: &str = "/api/runner/lease";
    pub const RESUME: &str = "/api/runner/resume";
    pub const SOURCE: &str = stage_route!("/source");
    pub const HEARTBEAT: &str = stage_route!("/heartbeat");
    pub const STEP_START: &str = stage_route!("/steps/{idx}/start");
    pub const STEP_LOGS: &str = stage_route!("/steps/{idx}/logs");
    pub const STEP_FINISH: &str = stage_route!("/steps/{idx}/finish");
    pub const STAGE_FINISH: &str = stage_route!("/finish");
    pub const STAGE_WAITING: &str = stage_route!("/waiting");
    pub const ARTIFACTS: &str = stage_route!("/artifacts");
    pub const ARTIFACT: &str = stage_route!("/artifacts/{artifact_id}");
    pub const CACHE: &str = stage_route!("/cache");
}
pub use routes::{LEASE, REGISTER, RESUME};

fn stage_path(template: &str, stage: i64) -> String {
    template.replace("{id}", &stage.to_string())
}
pub fn source_path(stage: i64) -> String {
    stage_path(routes::SOURCE, stage)
}
pub fn heartbeat_path(stage: i64) -> String {
    stage_path(routes::HEARTBEAT, stage)
}
/// `what`: `start`, `logs` or `finish` ([`routes::STEP_START`] …).
pub fn step_path(stage: i64, idx: usize, what: &str) -> String {
    let step = stage_path(routes::stage_route!("/steps/{idx}"), stage);
    format!("{}/{what}", step.replace("{idx}", &idx.to_string()))
}
pub fn finish_path(stage: i64) -> String {
    stage_path(routes::STAGE_FINISH, stage)
}
pub fn waiting_path(stage: i64) -> String {
    stage_path(routes::STAGE_WAITING, stage)
}
pub fn artifacts_path(stage: i64) -> String {
    stage_path(routes::ARTIFACTS, stage)
}
pub fn artifact_path(stage: i64, artifact: i64) -> String {
    stage_path(routes::ARTIFACT, stage).replace("{artifact_id}", &artifact.to_string())
}
pub fn cache_path(stage: i64) -> String {
    stage_path(routes::CACHE, stage)
}

/// Header carrying a downloaded blob's sha256 (also sent as the `ETag`).
pub const SHA256_HEADER: &str = "x-slipway-sha256";

/// How long the server holds a lease request open when nothing is queued.
pub const LONG_POLL_SECS: u64 = 25;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub name: String,
    #[serde(default)]
    pub labels: Vec<String>,
    pub capacity: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub runner_id: i64,
    /// Send a heartbeat for each leased stage this often.
    pub heartbeat_secs: u64,
    /// A lease not renewed for this long is taken back.
    pub lease_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub runner_id: i64,
}

/// A stage handed to a runner.
#[derive(Clone, Serialize, Deserialize)]
pub struct LeaseResponse {
    pub stage_id: i64,
    pub run_id: i64,
    pub lease_token: String,
    /// 1 for the first attempt.
    pub attempt: i64,
    /// The stage's key within the run, e.g. `test (features=full)`.
    pub stage_key: String,
    /// What to run (values of secrets are not in it; see `secrets`).
    pub spec: PlannedStage,
    /// Step names, in order (the step indexes of the step routes).
    pub steps: Vec<String>,
    /// Per step, the lines already stored by earlier attempts: this attempt's line `n`
    /// is sent as line `log_offsets[step] + n`, so a retry's output follows the last
    /// attempt's instead of being dropped as a duplicate.
    pub log_offsets: Vec<u64>,
    /// Secret name → value, for the secrets this stage references and may see. A
    /// referenced secret missing here was withheld (a fork's pull request): leave its
    /// variable unset.
    pub secrets: BTreeMap<String, String>,
    pub repo: String,
    pub sha: String,
    pub git_ref: String,
    pub run_number: i64,
    /// Where people follow the run.
    pub run_url: String,
    /// Artifacts of the stages this one `needs`, to place in the workspace before the
    /// steps run (in plan order: a later stage's file of the same name wins).
    #[serde(default)]
    pub artifacts: Vec<LeaseArtifact>,
    /// Whether the runner may save caches for this stage (not for a fork's pull request).
    #[serde(default)]
    pub cache_writable: bool,
}

/// An artifact a leased stage gets in its workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseArtifact {
    pub id: i64,
    /// The stage that produced it.
    pub stage_key: String,
    /// Relative path in the workspace.
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Where to GET it (with `?lease_token=`).
    pub path: String,
}

/// Query of an artifact upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactUpload {
    pub lease_token: String,
    /// Relative `/`-separated path in the workspace.
    pub name: String,
    /// Of the body, lower-case hex.
    pub sha256: String,
    /// Of the body, in bytes.
    pub size: u64,
    /// Permission bits (default 0o644).
    #[serde(default)]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactStored {
    pub id: i64,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    /// `false` when identical content was already stored.
    pub new_blob: bool,
}

/// Query of a cache lookup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheLookup {
    pub lease_token: String,
    /// The cache key the runner computed ([`crate::agent::cache::cache_key`]).
    pub key: String,
}

/// Query of a cache upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheUpload {
    pub lease_token: String,
    pub key: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CacheStored {
    /// `false` when the key already had an entry (the first save wins).
    pub saved: bool,
}

/// Never prints secret values (tracing a lease must be safe).
impl fmt::Debug for LeaseResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseResponse")
            .field("stage_id", &self.stage_id)
            .field("run_id", &self.run_id)
            .field("attempt", &self.attempt)
            .field("stage_key", &self.stage_key)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("repo", &self.repo)
            .field("sha", &self.sha)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseToken {
    pub lease_token: String,
}

/// Why a leased stage has not started its first step yet: its backend waits for
/// something outside the stage (a Kubernetes ResourceQuota). `None`: no longer waits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageWaiting {
    pub lease_token: String,
    pub reason: Option<String>,
}

/// A heartbeat: extends the lease, and may wait for a cancel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub lease_token: String,
    /// Hold the answer up to this long (the server caps it at its heartbeat interval)
    /// unless the stage is cancelled meanwhile: a runner that heartbeats back to back
    /// hears a cancel at once instead of at its next beat. 0: answer at once.
    #[serde(default)]
    pub wait_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatAction {
    /// Keep going; the lease was extended.
    Continue,
    /// Stop the stage and report it `cancelled`.
    Cancel,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub action: HeartbeatAction,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireLine {
    pub time_ms: i64,
    pub stream: Stream,
    /// The line's bytes (without the newline; any bytes, hence base64), already masked.
    pub data_b64: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogBatch {
    pub lease_token: String,
    /// 1-based number of the first line of the batch; the rest follow without gaps.
    pub first_line: u64,
    pub lines: Vec<WireLine>,
}

/// `Content-Type` of a log batch in binary frames, what the runner sends: a step's
/// lines go to the server's log file nearly as they come, with no base64 or JSON to
/// undo per line. The lease token travels in [`LEASE_HEADER`], the number of the
/// batch's first line in the query (`first_line`, 1-based). The body is a run of
/// frames, one per line:
///
/// | bytes | field |
/// |---|---|
/// | 1 | stream: 0 stdout, 1 stderr |
/// | 8 | time, unix milliseconds, little-endian `i64` |
/// | 4 | length of the line, little-endian `u32` |
/// | length | the line's bytes, masked, without its newline (none may be inside) |
///
/// A JSON [`LogBatch`] (`Content-Type: application/json`) is still accepted.
pub const LOG_FRAMES: &str = "application/vnd.slipway.log-frames";
/// Header carrying the lease token where the body cannot ([`LOG_FRAMES`]).
pub const LEASE_HEADER: &str = "x-slipway-lease";
const FRAME_HEAD: usize = 1 + 8 + 4;

/// Appends one line's frame to a [`LOG_FRAMES`] body.
pub fn push_frame(body: &mut Vec<u8>, stream: Stream, time_ms: i64, bytes: &[u8]) {
    body.reserve(FRAME_HEAD + bytes.len());
    body.push(match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    });
    body.extend_from_slice(&time_ms.to_le_bytes());
    // A runner's line is at most 64 KiB; longer ones arrive split.
    body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    body.extend_from_slice(bytes);
}

/// Reads a [`LOG_FRAMES`] body into the form the log store appends. The error says
/// which frame is malformed and how.
pub fn read_frames(body: &[u8]) -> Result<Joined, String> {
    let mut joined = Joined::with_capacity(body.len());
    let mut rest = body;
    while !rest.is_empty() {
        let n = joined.len() + 1;
        let Some((head, tail)) = rest.split_first_chunk::<FRAME_HEAD>() else {
            return Err(format!("frame {n} is cut short in its header"));
        };
        let stream = match head[0] {
            0 => Stream::Stdout,
            1 => Stream::Stderr,
            other => return Err(format!("frame {n} has stream {other} (0 or 1)")),
        };
        let time_ms = i64::from_le_bytes(head[1..9].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(head[9..13].try_into().unwrap_or_default()) as usize;
        let Some((line, tail)) = tail.split_at_checked(len) else {
            return Err(format!(
                "frame {n} says {len} bytes but {} are left",
                tail.len()
            ));
        };
        joined
            .push(stream, time_ms, line)
            .map_err(|_| format!("frame {n}: a log line may not contain a newline"))?;
        rest = tail;
    }
    Ok(joined)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogAck {
    /// Lines stored for the step so far.
    pub lines: u64,
}

/// How a step or a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireStatus {
    Success,
    /// A step exited non-zero.
    Failure,
    TimedOut,
    Cancelled,
    /// An infrastructure failure (retryable).
    Error,
    /// Steps only: not run because an earlier step did not succeed.
    Skipped,
}

impl WireStatus {
    pub fn from_runner(status: &runner::Status) -> WireStatus {
        match status {
            runner::Status::Success => WireStatus::Success,
            runner::Status::Failure => WireStatus::Failure,
            runner::Status::TimedOut => WireStatus::TimedOut,
            runner::Status::Cancelled => WireStatus::Cancelled,
            runner::Status::Error(_) => WireStatus::Error,
            runner::Status::Skipped => WireStatus::Skipped,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepFinish {
    pub lease_token: String,
    pub status: WireStatus,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub oom_killed: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageFinish {
    pub lease_token: String,
    pub status: WireStatus,
    pub reason: Option<String>,
    /// Values later stages read as `${{ stages.<name>.outputs.<key> }}` (an image
    /// stage's `image` and `digest`).
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
    /// A scan stage's findings.
    #[serde(default)]
    pub findings: Vec<runner::Finding>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageFinished {
    /// `finished`, or `retrying` when the stage was queued for another attempt.
    pub settled: String,
    /// The stage's status now, by name (`queued` when retrying).
    pub status: String,
}

/// What a Kubernetes stage keeps in its Secret so that a restarted runner can resume it
/// ([`AdoptionRecord::resume`]): the lease without its token and without any secret
/// value. A pod's Secret is readable by whoever may read Secrets in the build
/// namespace; the token and the values come back from the server when the runner
/// resumes the stage (`POST /api/runner/resume`), to a runner of the same name only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdoptionRecord {
    pub stage_id: i64,
    pub run_id: i64,
    pub attempt: i64,
    pub stage_key: String,
    /// The plan as leased: it names secrets, never holds their values.
    pub spec: PlannedStage,
    pub steps: Vec<String>,
    /// As leased: lines the attempt already sent are not counted again on resume, so
    /// a re-read log lands on the same line numbers (and is de-duplicated).
    pub log_offsets: Vec<u64>,
    pub repo: String,
    pub sha: String,
    pub git_ref: String,
    pub run_number: i64,
    pub run_url: String,
    #[serde(default)]
    pub cache_writable: bool,
}

impl From<&LeaseResponse> for AdoptionRecord {
    fn from(l: &LeaseResponse) -> AdoptionRecord {
        AdoptionRecord {
            stage_id: l.stage_id,
            run_id: l.run_id,
            attempt: l.attempt,
            stage_key: l.stage_key.clone(),
            spec: l.spec.clone(),
            steps: l.steps.clone(),
            log_offsets: l.log_offsets.clone(),
            repo: l.repo.clone(),
            sha: l.sha.clone(),
            git_ref: l.git_ref.clone(),
            run_number: l.run_number,
            run_url: l.run_url.clone(),
            cache_writable: l.cache_writable,
        }
    }
}

impl AdoptionRecord {
    /// The lease to go on with: this record and what the server answered to resume.
    /// No artifacts: they are in the stage's workspace already.
    pub fn resume(self, resumed: ResumeResponse) -> LeaseResponse {
        LeaseResponse {
            stage_id: self.stage_id,
            run_id: self.run_id,
            lease_token: resumed.lease_token,
            attempt: self.attempt,
            stage_key: self.stage_key,
            spec: self.spec,
            steps: self.steps,
            log_offsets: self.log_offsets,
            secrets: resumed.secrets,
            repo: self.repo,
            sha: self.sha,
            git_ref: self.git_ref,
            run_number: self.run_number,
            run_url: self.run_url,
            artifacts: Vec::new(),
            cache_writable: self.cache_writable,
        }
    }
}

/// A restarted runner takes back a stage it left running: the stage and the attempt
/// from its [`AdoptionRecord`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeRequest {
    pub runner_id: i64,
    pub stage_id: i64,
    pub attempt: i64,
}

/// A new lease token for the resumed stage (the old one no longer works) and the
/// secret values it may see, which the runner masks in the logs it reads back.
#[derive(Clone, Serialize, Deserialize)]
pub struct ResumeResponse {
    pub lease_token: String,
    pub secrets: BTreeMap<String, String>,
}

// Hand-written so neither the token nor a secret value can reach a log through `{:?}`.
impl std::fmt::Debug for ResumeResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeResponse")
            .field("lease_token", &"[redacted]")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}
