//! A held lease: the heartbeat that extends it, the read a held heartbeat repeats
//! while it waits for a cancel, the grace every lease gets after the server could
//! not write, and why a leased stage waits before its first step.

use std::time::Duration;

use sqlx::query;

use super::events::emit;
use super::row::RowExt;
use super::{Error, Heartbeat, Result, StageId, Store, duration_ms};

impl Store {
    /// Extends a lease. [`Heartbeat::Cancel`] asks the runner to stop the stage (and
    /// then report it `cancelled`); [`Heartbeat::Lost`] means the token is no longer
    /// valid.
    pub async fn heartbeat(
        &self,
        stage: StageId,
        token: &str,
        lease_for: Duration,
    ) -> Result<Heartbeat> {
        let row = query(
            "UPDATE stages SET lease_expires_at = $3 \
             WHERE id = $1 AND lease_token = $2 AND status = 'running' \
             RETURNING cancel_requested",
        )
        .bind(stage)
        .bind(token)
        .bind(self.now_ms().saturating_add(duration_ms(lease_for)))
        .fetch_optional(&self.write)
        .await?;
        Ok(match row {
            None => Heartbeat::Lost,
            Some(r) if r.flag("cancel_requested")? => Heartbeat::Cancel,
            Some(_) => Heartbeat::Ok,
        })
    }

    /// Extends every running lease to at least `until` (unix ms); the number extended.
    /// After an outage of the server's own storage, when no heartbeat could be
    /// recorded, so a runner that kept beating is not taken for dead.
    pub async fn extend_running_leases(&self, until: i64) -> Result<u64> {
        let done = query(
            "UPDATE stages SET lease_expires_at = $1 \
             WHERE status = 'running' AND lease_expires_at < $1 AND NOT rollout",
        )
        .bind(until)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    /// What a heartbeat would answer, without extending the lease: a read, for the
    /// held heartbeat to look again while it waits.
    pub async fn lease_state(&self, stage: StageId, token: &str) -> Result<Heartbeat> {
        let row = query(
            "SELECT cancel_requested FROM stages \
             WHERE id = $1 AND lease_token = $2 AND status = 'running'",
        )
        .bind(stage)
        .bind(token)
        .fetch_optional(&self.read)
        .await?;
        Ok(match row {
            None => Heartbeat::Lost,
            Some(r) if r.flag("cancel_requested")? => Heartbeat::Cancel,
            Some(_) => Heartbeat::Ok,
        })
    }

    /// Records why leased stage `stage` waits before its first step (`None`: it no
    /// longer does), and tells the run's followers (a `running` event for the stage).
    pub async fn set_stage_waiting(
        &self,
        stage: StageId,
        token: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        let row = query(
            "UPDATE stages SET waiting = $3 \
             WHERE id = $1 AND lease_token = $2 AND status = 'running' RETURNING run_id",
        )
        .bind(stage)
        .bind(token)
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(Error::LeaseLost);
        };
        emit(
            &mut tx,
            row.int("run_id")?,
            Some(stage),
            "running",
            self.now_ms(),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
