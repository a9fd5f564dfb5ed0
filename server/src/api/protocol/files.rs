//! The runner protocol's file routes (table in [`crate::protocol`]): artifact uploads
//! and downloads, cache lookups and saves. Bodies stream straight into and out of the
//! blob store ([`crate::store::blobs`]); nothing is held in memory whole.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::routes;

use super::leased;
use crate::api::error::{ApiError, ApiResult};
use crate::api::extract::{ApiPath, ApiQuery};
use crate::api::route_table::{Access, RouteTable};
use crate::daemon::disk::Part;
use crate::daemon::state::AppState;
use crate::protocol::{
    ArtifactStored, ArtifactUpload, CacheLookup, CacheStored, CacheUpload, LeaseToken,
    SHA256_HEADER, routes,
};
use crate::store::blobs::{BlobError, is_sha256};
use crate::store::{ArtifactKind, ArtifactRecord, NewArtifact, Run, Stage, StageId};

pub(super) fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Runner, routes!(upload_artifact))
        .add(Access::Runner, routes!(download_artifact))
        .add(Access::Runner, routes!(get_cache))
        .add(Access::Runner, routes!(put_cache))
}

/// How far back a chain of reruns is followed for a carried-over stage's artifacts.
const MAX_RERUN_HOPS: usize = 20;

/// The file artifacts of the stages `stage` needs, by stage then name.
///
/// A rerun of failed stages only carries the stages that succeeded over without running
/// them again, so their artifacts live in the run that did run them: those records are
/// copied onto the carried-over stage of this run (rows only; the blobs are shared), so
/// this run lists them and its runners may download them.
pub(crate) async fn needed_artifacts(
    state: &AppState,
    run: &Run,
    stage: &Stage,
) -> ApiResult<Vec<ArtifactRecord>> {
    let needed =
        |r: &ArtifactRecord| r.kind == ArtifactKind::File && stage.needs.contains(&r.stage_key);
    let mut records: Vec<ArtifactRecord> = state
        .store
        .list_run_artifacts(run.id)
        .await?
        .into_iter()
        .filter(needed)
        .collect();
    if run.rerun_of.is_none() || stage.needs.is_empty() {
        return Ok(records);
    }
    let carried: Vec<Stage> = state
        .store
        .list_stages(run.id)
        .await?
        .into_iter()
        .map(|s| s.stage)
        .filter(|s| {
            stage.needs.contains(&s.key)
                && s.status == crate::store::StageStatus::Success
                && s.started_at.is_none()
                && !records.iter().any(|r| r.stage_key == s.key)
        })
        .collect();
    let mut missing: Vec<&Stage> = carried.iter().collect();
    let mut origin = run.rerun_of;
    for _ in 0..MAX_RERUN_HOPS {
        let Some(prev) = origin.filter(|_| !missing.is_empty()) else {
            break;
        };
        let prev_run = match state.store.get_run(prev).await {
            Ok(r) => r,
            Err(crate::store::Error::NotFound(_)) => break,
            Err(e) => return Err(e.into()),
        };
        let found: Vec<ArtifactRecord> = state
            .store
            .list_run_artifacts(prev)
            .await?
            .into_iter()
            .filter(needed)
            .collect();
        for here in &missing {
            for rec in found.iter().filter(|r| r.stage_key == here.key) {
                let copied = state
                    .store
                    .put_artifact(
                        here.id,
                        &NewArtifact {
                            name: rec.name.clone(),
                            kind: ArtifactKind::File,
                            sha256: rec.sha256.clone(),
                            size: rec.size,
                            mode: rec.mode,
                        },
                    )
                    .await?;
                records.push(copied);
            }
        }
        missing.retain(|s| !records.iter().any(|r| r.stage_key == s.key));
        origin = prev_run.rerun_of;
    }
    records.sort_by(|a, b| (a.stage_id, &a.name).cmp(&(b.stage_id, &b.name)));
    Ok(records)
}

/// Maps a refused or failed blob write onto the API's errors.
fn blob_error(what: &str, e: BlobError) -> ApiError {
    match e {
        BlobError::TooLarge { .. } => ApiError::too_large(format!("{what}: {e}")),
        BlobError::BadDigest(_)
        | BlobError::SizeMismatch { .. }
        | BlobError::HashMismatch { .. } => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_upload",
            format!("{what}: {e}"),
        ),
        // The client went away or sent a broken body; it may try again.
        BlobError::Body(_) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_upload",
            format!("{what}: {e}"),
        ),
        BlobError::Io(e) if crate::disk_space::is_disk_full(&e) => {
            ApiError::disk_full(Part::DataDir, what, e)
        }
        BlobError::Io(e) => ApiError::internal(format!("{what}: {e}")),
    }
}

/// Most bytes of a refused upload read (and dropped) so that the client gets the 507:
/// a server that answers without reading the body closes the connection with data
/// unread, which resets it, and the client may see the reset instead of the answer.
const DRAIN_MAX: u64 = 64 * 1024 * 1024;

/// Streams `body` into the blob store — unless the data disk has no room for it — and
/// on a full disk reads the rest of the body before answering 507.
async fn store_upload(
    state: &AppState,
    what: &str,
    sha256: &str,
    size: u64,
    limit: u64,
    body: Body,
) -> ApiResult<crate::store::blobs::Stored> {
    let mut stream = body.into_data_stream();
    let stored = match check_room(state, what, size).await {
        Ok(()) => state
            .blobs
            .put(sha256, size, limit, &mut stream)
            .await
            .map_err(|e| blob_error(what, e)),
        Err(e) => Err(e),
    };
    if let Err(e) = &stored
        && e.status == StatusCode::INSUFFICIENT_STORAGE
        && size <= DRAIN_MAX
    {
        use futures::StreamExt;
        let drain = async { while let Some(Ok(_)) = stream.next().await {} };
        // Bounded: the listener's body timeout cuts a client that stalls.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(60), drain).await;
    }
    stored
}

/// Refuses an upload of `size` bytes that would leave the data disk under its
/// reserve (`min_free_disk_bytes`), before a byte of it is read.
async fn check_room(state: &AppState, what: &str, size: u64) -> ApiResult<()> {
    let dir = state.config.data_dir.clone();
    let free = tokio::task::spawn_blocking(move || crate::disk_space::free_bytes(&dir))
        .await
        .map_err(ApiError::internal)?;
    // Not knowing is no reason to refuse: the write itself will tell.
    let Ok(free) = free else { return Ok(()) };
    let reserve = state.disk.min_free;
    if free >= size.saturating_add(reserve) {
        return Ok(());
    }
    state.disk.count_refusal(Part::DataDir);
    tracing::warn!(
        size,
        free,
        reserve,
        "{what} refused: the data disk is too full"
    );
    Err(ApiError::over_reserve(format!(
        "{what} ({size} bytes) was not stored: the server's data disk has {free} bytes \
         free and keeps {reserve} (min_free_disk_bytes); retry later"
    )))
}

fn check_digest(sha256: &str) -> ApiResult<()> {
    if is_sha256(sha256) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "sha256 must be 64 lower-case hex digits, not {sha256:?}"
        )))
    }
}

/// Runner: upload one artifact of the leased stage (streamed, checked against its sha256).
#[utoipa::path(
    put, path = routes::ARTIFACTS, tag = "runner",
    params(
        ("id" = i64, Path, description = "The stage's id"),
        ("name" = String, Query, description = "Relative `/`-separated path in the workspace"),
        ("sha256" = String, Query, description = "Of the body, lower-case hex"),
        ("size" = u64, Query, description = "Of the body, in bytes"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file, streamed"),
    responses(
        (status = 200, description = "`ArtifactStored`", body = Object),
        (status = 400, description = "A refused name, or a size or digest mismatch"),
        (status = 401), (status = 403), (status = 409, description = "`lease_lost`"), (status = 413)
    )
)]
async fn upload_artifact(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<StageId>,
    ApiQuery(q): ApiQuery<ArtifactUpload>,
    body: Body,
) -> ApiResult<Json<ArtifactStored>> {
    let stage = leased(&state, id, &q.lease_token).await?;
    if let Err(why) = runner::safe_path::check_name(&q.name) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_artifact_name",
            format!("artifact name {:?} is refused: {why}", q.name),
        ));
    }
    check_digest(&q.sha256)?;
    let what = format!("artifact `{}`", q.name);
    let limit = state.config.max_artifact_bytes;
    if q.size > limit {
        return Err(ApiError::too_large(format!(
            "{what} is {} bytes; the limit is {limit} bytes (max_artifact_bytes)",
            q.size
        )));
    }
    let stored = state.store.stage_artifact_bytes(id, &q.name).await?;
    let stage_limit = state.config.max_stage_artifact_bytes;
    let total = u64::try_from(stored).unwrap_or(0).saturating_add(q.size);
    if total > stage_limit {
        return Err(ApiError::too_large(format!(
            "{what} would bring the stage's artifacts to {total} bytes; the limit is \
             {stage_limit} bytes (max_stage_artifact_bytes)"
        )));
    }
    let blob = store_upload(&state, &what, &q.sha256, q.size, limit, body).await?;
    // The upload may have outlived the lease.
    leased(&state, id, &q.lease_token).await?;
    let record = state
        .store
        .put_artifact(
            stage.id,
            &NewArtifact {
                name: q.name.clone(),
                kind: ArtifactKind::File,
                sha256: blob.sha256.clone(),
                size: i64::try_from(blob.size).unwrap_or(i64::MAX),
                mode: i64::from(q.mode.unwrap_or(0o644) & 0o777),
            },
        )
        .await?;
    tracing::info!(stage_id = id, artifact = %record.name, size = blob.size, new_blob = blob.new, "artifact stored");
    Ok(Json(ArtifactStored {
        id: record.id,
        name: record.name,
        sha256: blob.sha256,
        size: blob.size,
        new_blob: blob.new,
    }))
}

/// Runner: download an artifact of a stage the leased stage needs.
#[utoipa::path(
    get, path = routes::ARTIFACT, tag = "runner",
    params(
        ("id" = i64, Path, description = "The stage's id"),
        ("artifact_id" = i64, Path, description = "An artifact of the same run"),
    ),
    responses(
        (status = 200, description = "The file, streamed", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401), (status = 403), (status = 404), (status = 409, description = "`lease_lost`")
    )
)]
async fn download_artifact(
    State(state): State<AppState>,
    ApiPath((id, artifact_id)): ApiPath<(StageId, i64)>,
    ApiQuery(q): ApiQuery<LeaseToken>,
) -> ApiResult<Response> {
    let stage = leased(&state, id, &q.lease_token).await?;
    let record = state.store.get_artifact(artifact_id).await?;
    // A runner sees the artifacts of its own run only.
    if record.run_id != stage.run_id || record.kind != ArtifactKind::File {
        return Err(ApiError::not_found(format!(
            "artifact {artifact_id} of this run"
        )));
    }
    blob_response(&state, &record.sha256, None).await
}

/// Runner: the cache tar stored under a key, if any.
#[utoipa::path(
    get, path = routes::CACHE, tag = "runner",
    params(
        ("id" = i64, Path, description = "The stage's id"),
        ("key" = String, Query, description = "The cache key (a sha256)"),
    ),
    responses(
        (status = 200, description = "The cache tar, streamed", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400), (status = 401), (status = 403), (status = 404, description = "`no_cache`"), (status = 409, description = "`lease_lost`")
    )
)]
async fn get_cache(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<StageId>,
    ApiQuery(q): ApiQuery<CacheLookup>,
) -> ApiResult<Response> {
    let stage = leased(&state, id, &q.lease_token).await?;
    check_key(&q.key)?;
    match state.store.use_cache(stage.repo_id, &q.key).await? {
        Some(entry) => blob_response(&state, &entry.sha256, None).await,
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_cache",
            "no cache is saved under this key",
        )),
    }
}

fn check_key(key: &str) -> ApiResult<()> {
    if is_sha256(key) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "a cache key is 64 lower-case hex digits (a sha256)",
        ))
    }
}

/// Runner: store a cache tar under a key (the first save wins).
#[utoipa::path(
    put, path = routes::CACHE, tag = "runner",
    params(
        ("id" = i64, Path, description = "The stage's id"),
        ("key" = String, Query, description = "The cache key (a sha256)"),
        ("sha256" = String, Query, description = "Of the body, lower-case hex"),
        ("size" = u64, Query, description = "Of the body, in bytes"),
    ),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The cache tar, streamed"),
    responses(
        (status = 200, description = "`CacheStored`", body = Object),
        (status = 400, description = "A bad key, or a size or digest mismatch"), (status = 401),
        (status = 403, description = "A fork's pull request never saves a cache"),
        (status = 409, description = "`lease_lost`"), (status = 413)
    )
)]
async fn put_cache(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<StageId>,
    ApiQuery(q): ApiQuery<CacheUpload>,
    body: Body,
) -> ApiResult<Json<CacheStored>> {
    let stage = leased(&state, id, &q.lease_token).await?;
    check_key(&q.key)?;
    check_digest(&q.sha256)?;
    let run = state.store.get_run(stage.run_id).await?;
    if run.fork {
        return Err(ApiError::forbidden(
            "a pull request from a fork may not save caches",
        ));
    }
    let what = "the cache archive";
    let limit = state.config.max_cache_bytes;
    let blob = store_upload(&state, what, &q.sha256, q.size, limit, body).await?;
    let saved = state
        .store
        .put_cache(
            stage.repo_id,
            &q.key,
            &blob.sha256,
            i64::try_from(blob.size).unwrap_or(i64::MAX),
        )
        .await?;
    tracing::info!(stage_id = id, key = %q.key, size = blob.size, saved, "cache stored");
    Ok(Json(CacheStored { saved }))
}

/// Streams the blob `sha256`: `Content-Length`, `ETag` (the sha256, quoted) and
/// [`SHA256_HEADER`]; with `filename`, a `Content-Disposition: attachment`.
pub(crate) async fn blob_response(
    state: &AppState,
    sha256: &str,
    filename: Option<&str>,
) -> ApiResult<Response> {
    let (file, len) = state
        .blobs
        .open(sha256)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::internal(format!(
                "blob {sha256} is recorded but missing from the store"
            ))
        })?;
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (header::ETAG, format!("\"{sha256}\"")),
            (
                header::HeaderName::from_static(SHA256_HEADER),
                sha256.to_string(),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 * 1024)),
    )
        .into_response();
    if let Some(name) = filename {
        // Only the last component, and nothing that could break out of the quotes.
        let base = name.rsplit('/').next().unwrap_or(name);
        let safe: String = base
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{safe}\"")) {
            response
                .headers_mut()
                .insert(header::CONTENT_DISPOSITION, v);
        }
    }
    Ok(response)
}
