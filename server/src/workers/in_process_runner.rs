//! The server's in-process runner: an [`Agent`] on the configured backend
//! (`runner_backend`, local by default), workspaces under `<data dir>/work`, speaking
//! the runner protocol to this server's own listener — one path to test, and the quick
//! start exercises what production uses. With the Kubernetes backend it also starts the
//! orphan sweep ([`super::kube_orphans`]) over the backend it opened.

use std::net::SocketAddr;

use reqwest::Url;
use tokio::task::JoinHandle;

use crate::agent::Agent;
use crate::agent::backends::Opened;
use crate::daemon::state::AppState;

/// The name of the in-process runner (and of its token) on this host and port; one per
/// server process, so replicas sharing a database keep their own.
pub fn in_process_name(addr: SocketAddr) -> String {
    format!(
        "in-process runner {}:{}",
        crate::agent::hostname(),
        addr.port()
    )
}

/// URL a server process uses to reach its own listener at `addr`.
pub fn local_url(addr: SocketAddr) -> Url {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    Url::parse(&format!("http://{}/", SocketAddr::new(ip, addr.port())))
        .unwrap_or_else(|_| Url::parse("http://127.0.0.1/").expect("static URL"))
}

/// Mints a runner token for the in-process runner, replacing the one a previous start
/// of this server left behind.
async fn mint_token(state: &AppState, name: &str) -> crate::store::Result<String> {
    for stale in state.store.list_tokens().await? {
        if stale.name == name {
            state.store.delete_token(stale.id).await?;
        }
    }
    let token = crate::crypto::generate_token("slp_");
    state
        .store
        .create_token(
            name,
            &crate::crypto::hash_token(&token),
            crate::store::TokenScope::Runner,
        )
        .await?;
    Ok(token)
}

/// The server's in-process runner: the configured backend (`runner_backend`,
/// local by default), workspaces under
/// `<data dir>/work`, speaking the runner protocol to this server's own listener.
/// Stops with the server; stages it was running are left to lease expiry.
pub fn spawn(state: AppState, addr: SocketAddr) -> JoinHandle<()> {
    tokio::spawn(async move {
        let name = in_process_name(addr);
        let token = match mint_token(&state, &name).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "cannot create the in-process runner's token; it will not run");
                return;
            }
        };
        let work = state.config.data_dir.join("work");
        if let Err(e) = std::fs::create_dir_all(&work) {
            tracing::error!(error = %e, dir = %work.display(), "cannot create the runner's work dir");
            return;
        }
        let kind = state.config.runner_backend;
        let opened =
            match Opened::open(kind, &name, Some(work.clone()), &state.config.kube, &[]).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "cannot open the in-process runner's backend; it will not run"
                    );
                    return;
                }
            };
        // Before leasing anything: a previous server process killed mid-stage left
        // its steps running; they must be dead before their stage runs again —
        // unless the backend can hand them over (Kubernetes), then they go on.
        let adopted = opened.recover().await;
        // The orphan sweep needs the backend this runner opened; its handle is kept
        // here and awaited at shutdown, like every other worker's.
        let orphans = match &opened {
            Opened::Kubernetes(k) => Some(super::kube_orphans::spawn(state.clone(), k.clone())),
            _ => None,
        };
        let agent = Agent::new(local_url(addr), token, name, opened.backend())
            .with_capacity(state.config.runner_capacity)
            .with_labels(vec![kind.as_str().into()])
            .with_work_dir(work)
            .with_adopted(adopted);
        if let Err(e) = agent.run(state.shutdown.clone()).await {
            tracing::error!(error = %e, "in-process runner stopped");
        }
        if let Some(orphans) = orphans {
            let _ = orphans.await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_url_reaches_the_listener() {
        let url = local_url("0.0.0.0:8080".parse().unwrap());
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/");
        let url = local_url("[::]:9000".parse().unwrap());
        assert_eq!(url.as_str(), "http://[::1]:9000/");
        let url = local_url("10.1.2.3:80".parse().unwrap());
        assert_eq!(url.as_str(), "http://10.1.2.3/");
    }
}
