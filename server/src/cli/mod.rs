//! The `slipway` command line: one sub-module per command. Output goes through
//! `stdio` (`outln!`, `errln!`), never `println!`: a closed pipe or a full disk is an
//! error to handle, not a panic.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod admin;
mod audit;
mod client;
mod credentials;
mod database;
mod diagnostics;
mod exec;
pub mod hook;
mod login;
mod logs;
mod output;
mod people;
mod pipeline_files;
mod release;
mod repo;
mod rollout;
mod runner;
mod runs;
mod secret;
pub mod stdio;
mod token;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use crate::cli::stdio::outln;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "slipway", version, about = "Slipway: self-hosted CI/CD", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pipeline files and print every problem with file:line:column.
    Validate {
        /// A repository directory or a single pipeline file.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// Run a repository's pipelines here (local backend unless `--backend` says another).
    Exec(Box<exec::ExecArgs>),
    /// Print the JSON Schema of the pipeline format, for editors.
    Schema,
    /// Run the CI server: webhooks, API, scheduler and an in-process runner.
    Server(Box<ServerArgs>),
    /// Apply database migrations and exit (works on the server's database directly:
    /// give its --data-dir or --database-url).
    Migrate(database::DbArgs),
    /// Post-receive hook for plain git servers: reads `old new ref` lines from stdin and
    /// asks the server for runs (token from SLIPWAY_TOKEN: a hook token made with
    /// `--repo` for this repository).
    Hook(hook::HookArgs),
    /// Check an API token against a server and store both for the other commands.
    Login(login::LoginArgs),
    /// Forget the server and token `slipway login` stored.
    Logout,
    /// Register, list, show, change and delete repositories (through the API; on the
    /// server's database with --data-dir).
    #[command(subcommand)]
    Repo(repo::RepoCommand),
    /// Manage a repository's secrets (through the API; on the server's database with
    /// --data-dir).
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Create, list and revoke API tokens (through the API; on the server's database
    /// with --data-dir, for the first admin's token).
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// List runs and show one with its stages, steps and failure.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Print a run's step logs, or follow them live (-f).
    Logs(logs::LogsArgs),
    /// Start a run of a branch head, with manual parameters.
    Trigger(runs::TriggerArgs),
    /// Cancel a run: waiting stages are cancelled, running ones stopped.
    Cancel(runs::RunRef),
    /// Run a finished run again from its stored plan (all of it, or --failed stages).
    Rerun(runs::RerunArgs),
    /// Manage users and their roles (works on the server's database directly: give its
    /// --data-dir; the first admin is made this way).
    #[command(subcommand)]
    User(people::UserCommand),
    /// Verify and read the audit log (works on the server's database directly: give
    /// its --data-dir).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// `slipway run trigger`: the same as `slipway trigger`.
    #[command(subcommand)]
    Run(RunCommand),
    /// Environments: what is live, their rules (through the server's API).
    #[command(subcommand)]
    Env(release::EnvCommand),
    /// Approve a deploy stage waiting at its environment's gate.
    Approve(release::VoteArgs),
    /// Reject a deploy stage waiting at its environment's gate: the stage fails.
    Reject(release::VoteArgs),
    /// Deployments waiting for approval, and whether you may approve each.
    Inbox(release::InboxArgs),
    /// Deploy a finished run's results to an environment, without rebuilding.
    Promote(release::PromoteArgs),
    /// Redeploy the version live before the current one, through the same gate.
    Rollback(release::RollbackArgs),
    /// Follow and steer a deploy stage's rollout: status, promote, abort, retry.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Run stages for a Slipway server on this host (token from SLIPWAY_RUNNER_TOKEN).
    Runner(runner::RunnerArgs),
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Start a run of a branch head (the same as `slipway trigger`).
    Trigger(runs::TriggerArgs),
}

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// A TOML configuration file (keys as the long flags, with `_` for `-`).
    #[arg(long, env = "SLIPWAY_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: crate::daemon::config::Settings,
}

impl ServerArgs {
    fn resolve(self) -> anyhow::Result<crate::daemon::config::Config> {
        Ok(crate::daemon::config::Config::resolve(
            self.settings,
            self.config.as_deref(),
        )?)
    }
}

/// The directory of a SQLite database file (`sqlite://dir/x.db?mode=rwc`), if any.
fn sqlite_dir(url: &str) -> Option<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    PathBuf::from(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
}

/// Structured logs to stderr; `RUST_LOG` filters (default: info).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs the parsed command line; the exit code is what the process should return.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { path } => validate::run(&path),
        Command::Exec(args) => exec::run(*args),
        Command::Schema => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&pipelines::json_schema())?
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Server(args) => {
            init_tracing();
            let config = (*args).resolve()?;
            tokio::runtime::Runtime::new()?.block_on(crate::daemon::serve::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Hook(args) => hook::run(args),
        Command::Migrate(args) => {
            init_tracing();
            let config = args.resolve_database()?;
            // SQLite makes the file, not its directory; nothing else is made here.
            if let Some(dir) = sqlite_dir(&config.database_url) {
                std::fs::create_dir_all(dir)?;
            }
            tokio::runtime::Runtime::new()?.block_on(async {
                let store = crate::store::Store::connect(&config.database_url).await?;
                store.migrate().await?;
                store.close().await;
                anyhow::Ok(())
            })?;
            outln!("migrations applied")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Login(args) => login::login(args),
        Command::Logout => login::logout(),
        Command::Repo(cmd) => repo::repo(cmd),
        Command::Secret(cmd) => secret::secret(cmd),
        Command::Token(cmd) => token::token(cmd),
        Command::Runs(cmd) => runs::runs(cmd),
        Command::Logs(args) => logs::logs(args),
        Command::Trigger(args) => runs::trigger(args),
        Command::Cancel(args) => runs::cancel(args),
        Command::Rerun(args) => runs::rerun(args),
        Command::User(cmd) => people::user(cmd),
        Command::Audit(cmd) => audit::audit(cmd),
        Command::Run(RunCommand::Trigger(args)) => runs::trigger(args),
        Command::Env(cmd) => release::env(cmd),
        Command::Approve(args) => release::vote(args, true),
        Command::Reject(args) => release::vote(args, false),
        Command::Inbox(args) => release::inbox(args),
        Command::Rollout(cmd) => rollout::rollout(cmd),
        Command::Promote(args) => release::promote(args),
        Command::Rollback(args) => release::rollback(args),
        Command::Runner(args) => runner::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::sqlite_dir;
    use std::path::PathBuf;

    #[test]
    fn the_directory_of_a_sqlite_database() {
        assert_eq!(
            sqlite_dir("sqlite:///srv/slipway/slipway.db?mode=rwc"),
            Some(PathBuf::from("/srv/slipway"))
        );
        assert_eq!(sqlite_dir("sqlite://d/x.db"), Some(PathBuf::from("d")));
        assert_eq!(sqlite_dir("sqlite:x.db"), None);
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_dir("postgres://u@h/db"), None);
    }
}
