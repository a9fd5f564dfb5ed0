//! A run's artifacts: list them, download one. The viewer role on the run's repository.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult};
use super::extract::ApiPath;
use super::protocol::files::blob_response;
use super::route_table::{Access, RouteTable};
use crate::daemon::state::AppState;
use crate::store::{ArtifactKind, ArtifactRecord, Role, RunId};

pub fn routes() -> RouteTable {
    RouteTable::new()
        .add(Access::Role(Role::Viewer), routes!(list))
        .add(Access::Role(Role::Viewer), routes!(download))
}

/// The files a run's stages stored, with their sha256.
#[utoipa::path(
    get, path = "/api/runs/{id}/artifacts", tag = "artifacts",
    params(("id" = i64, Path, description = "The run's id (`run.id`, not its number)")),
    responses(
        (status = 200, description = "The run's artifacts by stage, then name; files download at `/api/artifacts/{id}/download`, `image` entries name a pushed image (sha256 = its manifest digest)", body = Vec<ArtifactRecord>),
        (status = 401), (status = 403), (status = 404)
    )
)]
pub async fn list(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<RunId>,
) -> ApiResult<Json<Vec<ArtifactRecord>>> {
    // 404 for a run that does not exist, rather than an empty list.
    state.store.get_run(id).await?;
    Ok(Json(state.store.list_run_artifacts(id).await?))
}

/// Download one stored file.
#[utoipa::path(
    get, path = "/api/artifacts/{id}/download", tag = "artifacts",
    params(("id" = i64, Path, description = "The artifact's id")),
    responses(
        (status = 200, description = "The file, streamed; `ETag` is its sha256, `Content-Disposition` names it", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 401), (status = 403), (status = 404),
        (status = 409, description = "An `image` artifact has no file: pull the image by digest"),
    )
)]
pub async fn download(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Response> {
    let record = state.store.get_artifact(id).await?;
    if record.kind != ArtifactKind::File {
        return Err(ApiError::conflict(format!(
            "artifact {id} is an image ({}); pull it by digest",
            record.name
        )));
    }
    blob_response(&state, &record.sha256, Some(&record.name)).await
}
