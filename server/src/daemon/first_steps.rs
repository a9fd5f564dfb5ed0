//! What the server says when it starts: where its data is, where people find it, and
//! — on a server nobody can sign in to yet — the command that makes the first admin.
//! A newcomer reads the start-up log first; it should answer "now what?".

use crate::daemon::config::{Config, redact_url};
use crate::store::Store;

/// The start-up lines, after the listener is bound.
pub async fn log(config: &Config, store: &Store) {
    let data_dir = std::path::absolute(&config.data_dir).unwrap_or(config.data_dir.clone());
    tracing::info!(
        data_dir = %data_dir.display(),
        database = %redact_url(&config.database_url),
        "data: logs, artifacts and mirrors under the data dir; runs and people in the database"
    );
    tracing::info!(url = %config.public_url, "web UI and API: {}", config.public_url);
    match store.list_users().await {
        Ok(users) if users.is_empty() => {
            tracing::info!(
                "no user yet: create the first admin with `{}` (it reads the password from stdin), then sign in at {}/login",
                first_admin_command(config, &data_dir),
                config.public_url
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot count users"),
    }
}

/// `slipway user add` aimed at this server's database, as the operator would type it.
fn first_admin_command(config: &Config, data_dir: &std::path::Path) -> String {
    let default_db = config.database_url.starts_with("sqlite:")
        && config
            .database_url
            .contains(&config.data_dir.join("slipway.db").display().to_string());
    let target = if default_db {
        format!("--data-dir {}", data_dir.display())
    } else {
        // Never the password: the operator has it where they started the server.
        format!("--database-url '{}'", redact_url(&config.database_url))
    };
    format!("slipway user add admin --role admin {target}")
}
