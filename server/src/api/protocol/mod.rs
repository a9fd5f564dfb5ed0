//! The runner protocol, server side (wire types and the route table:
//! [`crate::protocol`]): `lease` (register, lease, source, heartbeat, logs, results)
//! and `files` (artifacts and caches). Both check a stage's lease with [`leased`].

pub mod files;
pub mod lease;

use subtle::ConstantTimeEq;

use crate::api::error::ApiResult;
use crate::api::route_table::RouteTable;
use crate::daemon::state::AppState;
use crate::store::{Stage, StageId, StageStatus};

pub fn routes() -> RouteTable {
    lease::routes().merge(files::routes())
}

/// The stage, if `token` is its current lease (else `409 lease_lost`).
pub(crate) async fn leased(state: &AppState, id: StageId, token: &str) -> ApiResult<Stage> {
    let stage = state.store.get_stage(id).await?;
    let holds = stage.status == StageStatus::Running
        && stage
            .lease_token
            .as_deref()
            .is_some_and(|t| bool::from(t.as_bytes().ct_eq(token.as_bytes())));
    if holds {
        Ok(stage)
    } else {
        Err(crate::store::Error::LeaseLost.into())
    }
}
