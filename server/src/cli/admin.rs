//! What the administration commands (`slipway repo|secret|token …`) share: where they
//! act. Through the server's HTTP API by default (the stored `slipway login`, or
//! `--server`/`SLIPWAY_SERVER` with `SLIPWAY_TOKEN`); on the server's database directly
//! when given the server's `--data-dir`/`--database-url`/`--config` — for the
//! bootstrap on the server's host, before any token exists.
//!
//! Secret values and forge tokens never come from argv (visible to every user in `ps`
//! and kept in shell history): they are read from stdin or from a named environment
//! variable.

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use super::client::{Api, ApiArgs};
use super::database::DbArgs;
use crate::daemon::state::AppState;

/// Where an administration command acts: the API, or the database directly.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    #[command(flatten)]
    pub api: ApiArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

pub enum Via {
    Api(Api),
    Db(DbArgs),
}

impl Target {
    /// The database when its location was given (flag or `SLIPWAY_DATA_DIR` …), else
    /// the API.
    pub fn via(self) -> anyhow::Result<Via> {
        if self.db.given() {
            return Ok(Via::Db(self.db));
        }
        let api = Api::new(&self.api).map_err(|e| {
            anyhow::anyhow!(
                "{e}; on the server's host, --data-dir DIR works on its database directly"
            )
        })?;
        Ok(Via::Api(api))
    }
}

/// Opens the store the server uses (migrating it if needed), runs `f`, closes it.
pub(super) fn with_state<T>(
    db: DbArgs,
    f: impl AsyncFnOnce(&AppState) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let config = db.resolve()?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let state = crate::daemon::serve::build_state(config).await?;
        let out = f(&state).await;
        state.store.close().await;
        out
    })
}

/// A value from the environment variable `var`, which must be set and not empty.
pub(super) fn env_value(var: &str) -> anyhow::Result<Zeroizing<String>> {
    let value =
        std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
    if value.is_empty() {
        bail!("environment variable {var} is empty");
    }
    Ok(Zeroizing::new(value))
}

/// A JSON string field, or "" (for printing answers).
pub(super) fn text<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_default()
}
