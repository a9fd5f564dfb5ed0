//! Where the server's database is, for the commands that work on it directly (the
//! bootstrap before any token exists, `migrate`, `audit`): the server's own
//! `--data-dir`, `--database-url` or `--config`, and only those in `--help`. One of them
//! must be given: such a command never makes a new database in the current directory.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, FromArgMatches};

use crate::daemon::config::{Config, Settings};

#[derive(Debug, Clone, Default, Args)]
pub struct DbArgs {
    /// The server's data directory: the command works on its database directly.
    #[arg(long, env = "SLIPWAY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The server's database URL (`postgres://…`), with the server's --data-dir.
    #[arg(long, env = "SLIPWAY_DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// The server's TOML configuration file, for its data_dir and database_url.
    #[arg(long, env = "SLIPWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl DbArgs {
    /// Whether any of them was given (flag or environment).
    pub fn given(&self) -> bool {
        self.data_dir.is_some() || self.database_url.is_some() || self.config.is_some()
    }

    /// The server's configuration: these flags, then every other setting from the
    /// server's `SLIPWAY_*` variables and the file, as `slipway server` reads them.
    pub fn resolve(&self) -> anyhow::Result<Config> {
        self.resolve_needing(true)
    }

    /// [`DbArgs::resolve`] for a command that only needs the database (`migrate`): a
    /// `--database-url` alone is enough.
    pub fn resolve_database(&self) -> anyhow::Result<Config> {
        self.resolve_needing(false)
    }

    fn resolve_needing(&self, data_dir: bool) -> anyhow::Result<Config> {
        let mut settings = settings_from_env()?;
        if let Some(d) = &self.data_dir {
            settings.data_dir = Some(d.clone());
        }
        if let Some(u) = &self.database_url {
            settings.database_url = Some(u.clone());
        }
        let file = match &self.config {
            Some(path) => crate::daemon::config::read_file(path)?,
            None => Settings::default(),
        };
        // The data dir holds the key that seals secrets and the logs: a command that
        // guessed it would make a second, empty one.
        let located = settings.data_dir.is_some()
            || file.data_dir.is_some()
            || (!data_dir && (settings.database_url.is_some() || file.database_url.is_some()));
        if !located {
            bail!(
                "this command works on the server's database directly: give the server's \
                 --data-dir (with --database-url if it uses PostgreSQL) or --config"
            );
        }
        Ok(Config::resolve(settings, self.config.as_deref())?)
    }
}

/// The server's settings from its `SLIPWAY_*` environment variables alone.
fn settings_from_env() -> anyhow::Result<Settings> {
    let cmd = Settings::augment_args(clap::Command::new("slipway").no_binary_name(true));
    let matches = cmd.try_get_matches_from(std::iter::empty::<String>())?;
    Ok(Settings::from_arg_matches(&matches)?)
}
