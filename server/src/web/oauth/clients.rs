//! The configured OAuth clients with their secrets, read once when the server starts
//! (from the environment variable or file the configuration names), and the HTTP
//! client that talks to the forges. A secret is held zeroized and never logged.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use super::settings::{OAuthProvider, SecretRef};

/// One provider and its client secret.
pub struct Client {
    pub provider: OAuthProvider,
    pub secret: Zeroizing<String>,
}

/// Every configured provider (cheap to clone).
#[derive(Clone, Default)]
pub struct OAuthClients {
    clients: Arc<Vec<Client>>,
    http: reqwest::Client,
}

impl OAuthClients {
    /// Reads each provider's client secret; an unset variable or unreadable file is an
    /// error naming the provider and where the secret was looked for.
    pub fn load(providers: &[OAuthProvider]) -> anyhow::Result<OAuthClients> {
        let mut clients = Vec::with_capacity(providers.len());
        for p in providers {
            let secret = match &p.client_secret {
                SecretRef::Env(var) => match std::env::var(var) {
                    Ok(v) => Zeroizing::new(v),
                    Err(_) => bail!(
                        "oauth.{}: client_secret_env names {var}, which is not set (or not \
                         UTF-8)",
                        p.name
                    ),
                },
                SecretRef::File(path) => {
                    Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
                        format!(
                            "oauth.{}: reading client_secret_file {}",
                            p.name,
                            path.display()
                        )
                    })?)
                }
            };
            let secret = Zeroizing::new(secret.trim().to_string());
            if secret.is_empty() {
                bail!("oauth.{}: the client secret is empty", p.name);
            }
            clients.push(Client {
                provider: p.clone(),
                secret,
            });
        }
        let http = reqwest::Client::builder()
            // GitHub's API refuses requests without a User-Agent.
            .user_agent(concat!("slipway/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(20))
            // The token and user requests carry credentials: never follow them elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the OAuth HTTP client")?;
        Ok(OAuthClients {
            clients: Arc::new(clients),
            http,
        })
    }

    /// The provider named `name`.
    pub fn get(&self, name: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.provider.name == name)
    }

    /// Every provider, in name order.
    pub fn all(&self) -> impl Iterator<Item = &OAuthProvider> {
        self.clients.iter().map(|c| &c.provider)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
