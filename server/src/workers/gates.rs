//! Environment gates: the worker that moves deploy stages waiting at their gate on
//! when time or another run changes their answer — an approval timeout that ran out,
//! a wait timer that ended, an environment that another deployment freed, a request a
//! newer run superseded. Votes move their own run at once (in the vote's transaction);
//! this round catches the rest, on the store's clock, about once a second. The state
//! is all in the database, so a restarted server picks up where it stopped.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::clock::Ticker;
use crate::daemon::state::AppState;

/// How often waiting gates are looked at.
const ROUND: Duration = Duration::from_secs(1);

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut rounds = Ticker::new(state.store.clock(), ROUND);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = rounds.tick() => {}
            }
            if let Err(e) = round(&state).await {
                tracing::warn!(error = %e, "checking environment gates failed; retrying next round");
            }
        }
    })
}

/// Reconciles every run with a deploy stage at its gate; wakes the queue when one
/// passed.
pub async fn round(state: &AppState) -> crate::store::Result<()> {
    let mut queued = false;
    for run in state.store.runs_at_gates().await? {
        let before = state.store.waiting_at_gates(run).await?;
        state.store.reconcile_run(run).await?;
        queued |= state.store.waiting_at_gates(run).await? < before;
    }
    if queued {
        state.wake.queue.notify_waiters();
    }
    Ok(())
}
