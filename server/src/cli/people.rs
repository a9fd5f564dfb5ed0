//! `slipway user …`: people and their roles, on the server's database directly (same
//! configuration as `slipway server`), so the first admin can be made before any token
//! exists. Passwords are read from stdin, never argv. Every change is in the audit log,
//! with the actor `cli`.

use std::io::{BufRead, IsTerminal, Read};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use zeroize::Zeroizing;

use super::admin::with_state;
use super::database::DbArgs;
use crate::admin::people;
use crate::cli::stdio::{errln, outln};
use crate::store::{Role, audit};

fn parse_role(s: &str) -> Result<Role, String> {
    s.parse::<Role>().map_err(|e| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user with a role; the password is read from stdin (never argv).
    #[command(
        after_help = "Example: printf '%s' \"$PASSWORD\" | slipway user add alice --role developer"
    )]
    Add {
        /// The user's name: letters, digits, `.`, `_` and `-`.
        name: String,
        /// The user's first role: viewer, developer, release-manager or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Give the role on this repository (`owner/name`) only, instead of globally.
        #[arg(long, value_name = "OWNER/NAME")]
        repo: Option<String>,
        #[command(flatten)]
        server: DbArgs,
    },
    /// List users with their roles, linked identities and whether they are disabled.
    List {
        #[command(flatten)]
        server: DbArgs,
    },
    /// Disable a user: their tokens are refused until they are enabled again.
    Disable {
        /// The user's name.
        name: String,
        #[command(flatten)]
        server: DbArgs,
    },
    /// Enable a disabled user again.
    Enable {
        /// The user's name.
        name: String,
        #[command(flatten)]
        server: DbArgs,
    },
    /// Set a user's role, globally or on one repository (it replaces the role they had
    /// there).
    Role {
        /// The user's name.
        name: String,
        /// viewer, developer, release-manager or admin.
        #[arg(value_parser = parse_role)]
        role: Role,
        /// Set the role on this repository (`owner/name`) only, instead of globally.
        #[arg(long, value_name = "OWNER/NAME")]
        repo: Option<String>,
        #[command(flatten)]
        server: DbArgs,
    },
    /// Link a forge account to a user (`github:alice`, `gitlab:alice`, `gitea:alice`,
    /// `forgejo:alice`, `bitbucket:<account id>`, `bitbucket-dc:alice`, `gitee:alice`,
    /// `git:alice@example.com`): runs it pushes name it as their pusher.
    Link {
        /// The user's name.
        name: String,
        /// The account, `FORGE:LOGIN` (`git:EMAIL` for plain git).
        identity: String,
        #[command(flatten)]
        server: DbArgs,
    },
    /// Unlink a forge account from a user.
    Unlink {
        /// The user's name.
        name: String,
        /// The account, `FORGE:LOGIN` (`git:EMAIL` for plain git).
        identity: String,
        #[command(flatten)]
        server: DbArgs,
    },
}

/// The password from stdin: a line typed at a terminal (not echoed), or everything
/// piped in, one trailing newline dropped.
fn read_password(name: &str) -> anyhow::Result<Zeroizing<String>> {
    read_hidden(&format!("Password for {name}: "), "password")
}

/// A secret (`what`: password, token) from stdin: asked for with `prompt` and read
/// unechoed at a terminal, else everything piped in; one trailing newline dropped.
pub(super) fn read_hidden(prompt: &str, what: &str) -> anyhow::Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return read_stdin_value(what);
    }
    let mut value = Zeroizing::new(String::new());
    errln!("{prompt}");
    let echo_off = std::process::Command::new("stty")
        .arg("-echo")
        .stdin(std::process::Stdio::inherit())
        .status()
        .is_ok_and(|s| s.success());
    let read = stdin.lock().read_line(&mut value);
    if echo_off {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
    }
    errln!();
    read.with_context(|| format!("reading the {what}"))?;
    trim_newline(&mut value);
    if value.is_empty() {
        bail!("empty {what}");
    }
    Ok(value)
}

/// Everything on stdin, one trailing newline dropped; refused when empty.
pub(super) fn read_stdin_value(what: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut value = Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_to_string(&mut value)
        .with_context(|| format!("reading the {what} from stdin"))?;
    trim_newline(&mut value);
    if value.is_empty() {
        bail!("empty {what} (pipe it on stdin)");
    }
    Ok(value)
}

fn trim_newline(value: &mut String) {
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
}

pub fn user(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            name,
            role,
            repo,
            server,
        } => {
            people::validate_user_name(&name)?;
            let password = read_password(&name)?;
            people::check_password(&password)?;
            let user = with_state(server, async |state| {
                Ok(people::add_user(
                    &state.store,
                    audit::CLI,
                    &name,
                    password,
                    Some((role, repo.as_deref())),
                )
                .await?)
            })?;
            let place = repo.map_or("globally".to_string(), |r| format!("on {r}"));
            outln!(
                "created user {} (id {}), {role} {place}",
                user.name,
                user.id
            )?;
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { server } => {
            let users = with_state(server, async |state| {
                let mut out = Vec::new();
                for u in state.store.list_users().await? {
                    out.push(people::detail(&state.store, u).await?);
                }
                Ok(out)
            })?;
            if users.is_empty() {
                errln!("no users");
            }
            for u in users {
                let roles: Vec<String> = u
                    .roles
                    .iter()
                    .map(|b| match &b.repo {
                        Some(repo) => format!("{}@{repo}", b.role),
                        None => b.role.to_string(),
                    })
                    .collect();
                outln!(
                    "{}\t{}\t{}\t{}",
                    u.user.name,
                    if u.user.disabled {
                        "disabled"
                    } else {
                        "enabled"
                    },
                    if roles.is_empty() {
                        "-".to_string()
                    } else {
                        roles.join(",")
                    },
                    if u.identities.is_empty() {
                        "-".to_string()
                    } else {
                        u.identities.join(",")
                    },
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Disable { name, server } => set_disabled(name, true, server),
        UserCommand::Enable { name, server } => set_disabled(name, false, server),
        UserCommand::Role {
            name,
            role,
            repo,
            server,
        } => {
            let before = with_state(server, async |state| {
                let user = state.store.get_user_by_name(&name).await?;
                Ok(
                    people::set_role(&state.store, audit::CLI, &user, repo.as_deref(), Some(role))
                        .await?,
                )
            })?;
            let place = repo.map_or("globally".to_string(), |r| format!("on {r}"));
            match before {
                Some(b) => outln!("{name} is now {role} {place} (was {b})")?,
                None => outln!("{name} is now {role} {place}")?,
            }
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Link {
            name,
            identity,
            server,
        } => {
            let linked = with_state(server, async |state| {
                let user = state.store.get_user_by_name(&name).await?;
                Ok(people::link(&state.store, audit::CLI, &user, &identity).await?)
            })?;
            outln!("linked {linked} to {name}")?;
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Unlink {
            name,
            identity,
            server,
        } => {
            with_state(server, async |state| {
                let user = state.store.get_user_by_name(&name).await?;
                Ok(people::unlink(&state.store, audit::CLI, &user, &identity).await?)
            })?;
            outln!("unlinked {identity} from {name}")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn set_disabled(name: String, disabled: bool, server: DbArgs) -> anyhow::Result<ExitCode> {
    with_state(server, async |state| {
        let user = state.store.get_user_by_name(&name).await?;
        Ok(state
            .store
            .set_user_disabled(audit::CLI, user.id, disabled)
            .await?)
    })?;
    outln!(
        "{} user {name}",
        if disabled { "disabled" } else { "enabled" }
    )?;
    Ok(ExitCode::SUCCESS)
}
