//! `slipway login SERVER` and `slipway logout`: a personal API token checked against
//! the server (`GET /api/me`) and stored with the server's URL (see `credentials`), so
//! every other command reaches the server without flags.

use std::process::ExitCode;

use anyhow::bail;
use zeroize::Zeroizing;

use super::admin::text;
use super::client::Api;
use super::credentials::{self, Credentials};
use crate::cli::stdio::{errln, outln};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  slipway login https://ci.example.com          \
                        (asks for the token)\n  \
                        printf '%s' \"$TOKEN\" | slipway login https://ci.example.com --token-stdin"
)]
pub struct LoginArgs {
    /// The server's URL, as people reach it (its public URL).
    pub server: String,
    /// Read the token from stdin without asking (for scripts); without it the token is
    /// asked for at a terminal, unechoed, or read from stdin when that is a pipe.
    #[arg(long)]
    pub token_stdin: bool,
}

pub fn login(args: LoginArgs) -> anyhow::Result<ExitCode> {
    let server = args.server.trim_end_matches('/').to_string();
    let url = reqwest::Url::parse(&server).map_err(|e| {
        anyhow::anyhow!("`{server}` is not a URL ({e}); e.g. https://ci.example.com")
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("`{server}` is not an http:// or https:// URL");
    }
    let prompt = "API token (a personal token: `slipway token create NAME` or the web UI's \
                  account page): ";
    let token = if args.token_stdin {
        super::people::read_stdin_value("token")?
    } else {
        super::people::read_hidden(prompt, "token")?
    };
    let token = Zeroizing::new(token.trim().to_string());
    if token.is_empty() {
        bail!("empty token");
    }
    // Checked before it is stored: a typo is found now, not at the next command.
    let api = Api::with(server.clone(), token.clone())?;
    let me = api.get("/api/me")?;
    let path = credentials::store(&Credentials {
        server: server.clone(),
        token: token.to_string(),
    })?;
    let who = match text(&me, "kind") {
        "user" => format!("user {}", text(&me, "name")),
        _ => format!("{} token {}", text(&me, "scope"), text(&me, "name")),
    };
    outln!("logged in to {server} as {who}")?;
    errln!("saved in {} (only you can read it)", path.display());
    Ok(ExitCode::SUCCESS)
}

pub fn logout() -> anyhow::Result<ExitCode> {
    match credentials::remove()? {
        Some(path) => outln!("logged out: removed {}", path.display())?,
        None => outln!("not logged in")?,
    }
    Ok(ExitCode::SUCCESS)
}
