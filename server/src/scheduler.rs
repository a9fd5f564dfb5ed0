//! Lease expiry: the worker that makes sure no stage stays `running` after its runner
//! (or the server hosting it) died.
//!
//! Every `heartbeat_timeout / 3` it takes back the stages whose lease was not renewed
//! in time ([`Store::expire_leases`](crate::store::Store::expire_leases)): each is
//! queued again while it has attempts left, else it ends `error` with "runner lost".
//! So a lost stage is re-dispatched or failed within about 1⅓ heartbeat timeouts.
//! On start-up it first reconciles every active run, which settles what a crash left
//! half-done (promotions, skips, final statuses) — idempotent, so several replicas
//! doing it at once is harmless.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::state::AppState;
use crate::store::{StageId, now_ms};

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        recover(&state).await;
        let period = (state.config.heartbeat_timeout / 3).max(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
            }
            if let Err(e) = expire_once(&state).await {
                tracing::warn!(error = %e, "expiring leases failed; retrying next round");
            }
        }
    })
}

/// Reconciles every `running` run (crash recovery).
pub async fn recover(state: &AppState) {
    let runs = match state.store.active_runs().await {
        Ok(runs) => runs,
        Err(e) => {
            tracing::warn!(error = %e, "listing active runs for recovery failed");
            return;
        }
    };
    for run in &runs {
        if let Err(e) = state.store.reconcile_run(run.id).await {
            tracing::warn!(run_id = run.id, error = %e, "reconciling run failed");
        }
    }
    if !runs.is_empty() {
        tracing::info!(runs = runs.len(), "reconciled active runs");
        state.wake.queue.notify_waiters();
    }
}

/// Takes back the stages whose lease has expired; returns them.
pub async fn expire_once(state: &AppState) -> crate::store::Result<Vec<StageId>> {
    let expired = state.store.expire_leases(now_ms()).await?;
    for &id in &expired {
        match state.store.get_stage(id).await {
            Ok(stage) => tracing::warn!(
                stage_id = id,
                run_id = stage.run_id,
                status = %stage.status,
                attempt = stage.attempt,
                "runner lost: lease expired"
            ),
            Err(_) => tracing::warn!(stage_id = id, "runner lost: lease expired"),
        }
    }
    if !expired.is_empty() {
        state.wake.queue.notify_waiters();
    }
    Ok(expired)
}
