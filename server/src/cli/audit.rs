//! `slipway audit …`: the audit log, read from the server's database directly (same
//! configuration as `slipway server`).

use std::process::ExitCode;

use clap::Subcommand;

use super::admin::with_state;
use super::database::DbArgs;
use crate::cli::stdio::outln;
use crate::store::audit::AuditFilter;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the hash chain: exit 0 and print the number of entries and the head hash,
    /// or exit 1 and name the first entry that breaks it and why.
    Verify {
        #[command(flatten)]
        server: DbArgs,
    },
    /// Print entries, oldest first, one per line: id, time, actor, action, subject,
    /// detail.
    List {
        /// Only this action (`user.create`, `role.set`, `token.create` …).
        #[arg(long)]
        action: Option<String>,
        /// Only this actor (`user:alice`, `token:root`, `cli`, `system`).
        #[arg(long)]
        actor: Option<String>,
        /// Only entries about this repository (`owner/name`).
        #[arg(long, value_name = "OWNER/NAME")]
        repo: Option<String>,
        /// Only entries with a larger id.
        #[arg(long, value_name = "ID")]
        after: Option<i64>,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
        #[command(flatten)]
        server: DbArgs,
    },
}

pub fn audit(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::Verify { server } => {
            let outcome = with_state(server, async |state| Ok(state.store.verify_audit().await?))?;
            match outcome {
                Ok(report) => {
                    outln!("audit log intact: {} entries", report.entries)?;
                    outln!("head {}", report.head)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(broken) => {
                    outln!(
                        "audit log broken at entry {}: {} ({} entries before it check out)",
                        broken.id,
                        broken.reason,
                        broken.checked
                    )?;
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::List {
            action,
            actor,
            repo,
            after,
            limit,
            server,
        } => {
            let entries = with_state(server, async |state| {
                let repo_id = match &repo {
                    Some(name) => Some(state.store.get_repo_by_name(name).await?.id),
                    None => None,
                };
                let filter = AuditFilter {
                    action,
                    actor,
                    repo_id,
                    after,
                    limit: Some(limit),
                };
                Ok(state.store.list_audit(&filter).await?)
            })?;
            for e in entries {
                let at = chrono::DateTime::from_timestamp_millis(e.at)
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    .unwrap_or_else(|| e.at.to_string());
                outln!(
                    "{}\t{at}\t{}\t{}\t{}\t{}",
                    e.id,
                    e.actor,
                    e.action,
                    e.subject,
                    e.detail
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
