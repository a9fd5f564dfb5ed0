//! The schema migrations, embedded in the binary.
//!
//! Listed here with `include_str!` rather than embedded by `sqlx::migrate!`: sqlx's
//! macros compile its whole database layer a second time, for the compiler, which
//! costs a fresh build more than everything else in this crate. Each migration is
//! made the way sqlx's own directory source makes it (version and description from
//! the file name, checksum of the text), so a database migrated by either agrees; a
//! test checks that this list matches the directories file for file.

use std::borrow::Cow;

use futures::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};

/// `(file name, text)` of every migration of a dialect, in order.
type Files = &'static [(&'static str, &'static str)];

macro_rules! files {
    ($dir:literal: $($file:literal),+ $(,)?) => {
        &[$(($file, include_str!(concat!("../../../migrations/", $dir, "/", $file)))),+]
    };
}

pub(super) const SQLITE: Files = files!("sqlite":
    "0001_init.sql",
    "0002_artifacts_scans_runners.sql",
    "0003_people_audit.sql",
    "0004_environments.sql",
    "0005_sessions.sql",
    "0006_rollouts.sql",
    "0007_write_probe.sql",
    "0008_repo_scopes.sql",
    "0010_oauth.sql",
    "0011_more_forges.sql",
    "0012_stage_waiting.sql",
);

pub(super) const POSTGRES: Files = files!("postgres":
    "0001_init.sql",
    "0002_artifacts_scans_runners.sql",
    "0003_people_audit.sql",
    "0004_environments.sql",
    "0005_sessions.sql",
    "0006_rollouts.sql",
    "0007_write_probe.sql",
    "0008_repo_scopes.sql",
    "0010_oauth.sql",
    "0011_more_forges.sql",
    "0012_stage_waiting.sql",
);

/// The migrator for one dialect's files.
pub(super) async fn migrator(files: Files) -> Result<Migrator, sqlx::migrate::MigrateError> {
    Migrator::new(Embedded(files)).await
}

#[derive(Debug)]
struct Embedded(Files);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            self.0
                .iter()
                .map(|(file, sql)| migration(file, sql))
                .collect()
        })
    }
}

/// `0002_artifacts_scans_runners.sql` → version 2, description `artifacts scans
/// runners`, as sqlx names them.
fn migration(file: &str, sql: &'static str) -> Result<Migration, BoxDynError> {
    let (version, rest) = file
        .split_once('_')
        .filter(|(_, rest)| rest.ends_with(".sql"))
        .ok_or_else(|| format!("migration file {file:?} is not named <version>_<name>.sql"))?;
    let version: i64 = version
        .parse()
        .map_err(|_| format!("migration file {file:?} has no integer version"))?;
    let kind = MigrationType::from_filename(rest);
    let description = rest.trim_end_matches(kind.suffix()).replace('_', " ");
    Ok(Migration::new(
        version,
        Cow::Owned(description),
        kind,
        Cow::Borrowed(sql),
        sql.starts_with("-- no-transaction"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Every file in the directory is listed, and each migration is exactly what
    /// sqlx's directory source (the one `sqlx::migrate!` uses) makes of it.
    #[tokio::test]
    async fn the_lists_match_the_migration_directories() {
        for (dir, files) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../migrations")
                .join(dir);
            let from_dir = Migrator::new(path.as_path()).await.unwrap();
            let embedded = migrator(files).await.unwrap();
            let summary = |m: &Migrator| -> Vec<_> {
                m.iter()
                    .map(|m| {
                        (
                            m.version,
                            m.description.to_string(),
                            m.migration_type,
                            m.checksum.to_vec(),
                            m.no_tx,
                        )
                    })
                    .collect()
            };
            assert!(!summary(&from_dir).is_empty(), "{dir}: no migrations found");
            assert_eq!(summary(&embedded), summary(&from_dir), "{dir}");
        }
    }

    #[test]
    fn a_badly_named_file_is_a_clear_error() {
        let err = migration("init.sql", "").unwrap_err().to_string();
        assert!(err.contains("\"init.sql\""), "{err}");
        let err = migration("one_init.sql", "").unwrap_err().to_string();
        assert!(err.contains("integer version"), "{err}");
    }
}
