//! Lease expiry: the worker that makes sure no stage stays `running` after its runner
//! (or the server hosting it) died.
//!
//! Every `heartbeat_timeout / 3` on the store's clock it takes back the stages whose
//! lease was not renewed in time ([`Store::expire_leases`](crate::store::Store::expire_leases)): each is
//! queued again while it has attempts left, else it ends `error` with "runner lost".
//! So a lost stage is re-dispatched or failed within about 1⅓ heartbeat timeouts.
//! On start-up it first reconciles every active run, which settles what a crash left
//! half-done (promotions, skips, final statuses) — idempotent, so several replicas
//! doing it at once is harmless.
//!
//! While the database cannot be written (`daemon::disk`) no round runs — no heartbeat
//! could be recorded either — and after each of its recoveries every running lease
//! first gets one more heartbeat timeout, so runners that kept beating through the
//! outage keep their stages.
//!
//! The same round warns (once per stage) about queued stages that no registered runner
//! can take because none has all their labels, so such a stage is not left waiting in
//! silence; the run's API shows the reason too (`unroutable`).

use std::collections::HashSet;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::clock::Ticker;
use crate::daemon::disk::Part;
use crate::daemon::state::AppState;
use crate::store::StageId;

/// How many queued stages (oldest first) each round checks for a matching runner.
const UNROUTABLE_SCAN: usize = 1000;

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        recover(&state).await;
        let period = (state.config.heartbeat_timeout / 3).max(Duration::from_millis(200));
        let mut rounds = Ticker::new(state.store.clock(), period);
        let mut warned = HashSet::new();
        let mut recoveries = state.disk.database_recoveries();
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = rounds.tick() => {}
            }
            if state.disk.is_faulted(Part::Database) {
                continue;
            }
            let now = state.disk.database_recoveries();
            if now != recoveries {
                match grace_after_outage(&state).await {
                    Ok(()) => recoveries = now,
                    Err(e) => {
                        tracing::warn!(error = %e, "extending leases after a storage outage failed; retrying next round");
                        continue;
                    }
                }
            }
            if let Err(e) = expire_once(&state).await {
                tracing::warn!(error = %e, "expiring leases failed; retrying next round");
            }
            if let Err(e) = warn_unroutable(&state, &mut warned).await {
                tracing::warn!(error = %e, "checking queued stages against runners failed");
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

/// Gives every running lease one more heartbeat timeout from now.
async fn grace_after_outage(state: &AppState) -> crate::store::Result<()> {
    let until = state
        .store
        .now_ms()
        .saturating_add(crate::store::duration_ms(state.config.heartbeat_timeout));
    let extended = state.store.extend_running_leases(until).await?;
    if extended > 0 {
        tracing::info!(
            leases = extended,
            "storage writable again: running leases extended by one heartbeat timeout"
        );
    }
    Ok(())
}

/// Takes back the stages whose lease has expired; returns them.
pub async fn expire_once(state: &AppState) -> crate::store::Result<Vec<StageId>> {
    let expired = state.store.expire_leases(state.store.now_ms()).await?;
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

/// Warns about each queued stage that no registered runner can take, once per stage
/// (`warned` remembers which; a stage leaves it when it becomes routable or leaves the
/// queue). Returns the stages that are unroutable now.
pub async fn warn_unroutable(
    state: &AppState,
    warned: &mut HashSet<StageId>,
) -> crate::store::Result<Vec<StageId>> {
    let queued = state.store.queued_stage_labels(UNROUTABLE_SCAN).await?;
    if queued.is_empty() {
        warned.clear();
        return Ok(Vec::new());
    }
    let runners = state.store.list_runners().await?;
    let mut now = Vec::new();
    for q in queued {
        let Some(reason) = crate::runs::routing::unroutable_reason(&q.labels, &q.repo, &runners)
        else {
            continue;
        };
        if warned.insert(q.stage_id) {
            tracing::warn!(
                stage_id = q.stage_id,
                run_id = q.run_id,
                stage = %q.key,
                labels = %q.labels.join(","),
                "queued stage cannot start: {reason}"
            );
        }
        now.push(q.stage_id);
    }
    let current: HashSet<StageId> = now.iter().copied().collect();
    warned.retain(|id| current.contains(id));
    Ok(now)
}
