//! The event log's write side: every state change appends its row in the transaction
//! that made it (read by the SSE streams and the commit-status follower).

use sqlx::query;

use super::{Result, RunId, Tx};

/// Appends to the event log inside the transaction that made the change.
pub(crate) async fn emit(
    tx: &mut Tx,
    run: RunId,
    stage: Option<i64>,
    status: &str,
    now: i64,
) -> Result<()> {
    query("INSERT INTO events (run_id, stage_id, status, created_at) VALUES ($1, $2, $3, $4)")
        .bind(run)
        .bind(stage)
        .bind(status)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
