//! The orphan sweep of Kubernetes stage pods, run by a server whose in-process
//! runner uses the Kubernetes backend.
//!
//! A runner removes or adopts its own pods when it restarts under the same name (a
//! server replica of deploy/'s StatefulSet keeps its host name, so its runner's), but
//! a server pod replaced under another host name (a Deployment's pods, a scaled-down
//! replica) or a `slipway runner` that never comes back leaves pods nobody would look
//! at again.
//! The server knows which stages still run: a stage pod whose stage is not
//! `running` under the attempt the pod was made for has lost its lease (the stage
//! finished, or was re-queued and runs elsewhere) and is deleted, with its Secret.
//! Pods without the `slipway.io/stage-id` label (not made by a runner agent) are
//! left alone.

use std::time::Duration;

use runner::KubernetesBackend;
use tokio::task::JoinHandle;

use crate::daemon::state::AppState;
use crate::store::StageStatus;

/// Deletes the orphaned stage pods once; returns their names.
pub async fn sweep_once(
    state: &AppState,
    backend: &KubernetesBackend,
) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    for (handle, labels) in backend.stage_pods().await? {
        let label =
            |k: &str| labels.get(&format!("{}{k}", runner::kubernetes::names::LABEL_PREFIX));
        let (Some(stage_id), Some(attempt)) = (
            label("stage-id").and_then(|v| v.parse::<i64>().ok()),
            label("attempt").and_then(|v| v.parse::<i64>().ok()),
        ) else {
            continue;
        };
        let live = match state.store.get_stage(stage_id).await {
            Ok(stage) => stage.status == StageStatus::Running && stage.attempt == attempt,
            Err(crate::store::Error::NotFound(_)) => false,
            Err(e) => return Err(e.into()),
        };
        if !live {
            tracing::warn!(pod = %handle.id, stage_id, attempt, "deleting a stage pod whose lease is gone");
            backend.remove(&handle).await?;
            removed.push(handle.id);
        }
    }
    // Builder pods of `kind: image` stages go with their stage pod.
    removed.extend(backend.sweep_orphan_builders().await?);
    Ok(removed)
}

/// Sweeps three times per lease length until the server stops: a pod whose
/// lease expired is gone soon after its stage is queued again.
pub fn spawn(state: AppState, backend: KubernetesBackend) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = (state.config.heartbeat_timeout / 3).max(Duration::from_secs(1));
        loop {
            if let Err(e) = sweep_once(&state, &backend).await {
                tracing::warn!(error = format!("{e:#}"), "kubernetes orphan sweep failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
    })
}
