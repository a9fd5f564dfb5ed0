//! The write probe: one row rewritten in a write transaction, so the server learns
//! whether its database takes writes before a request has to find out
//! (`daemon::disk`, `workers::disk_watch`, `/readyz`).

use sqlx::query;

use super::{Result, Store};

impl Store {
    /// Rewrites the probe row; an error says the database cannot take a write now
    /// ([`super::Error::is_disk_full`] when it is out of space).
    pub async fn probe_write(&self) -> Result<()> {
        let mut tx = self.begin().await?;
        query(
            "INSERT INTO write_probe (id, written_at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET written_at = excluded.written_at",
        )
        .bind(self.now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
