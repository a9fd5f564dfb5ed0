//! `slipway server`: open the store, start the background workers and serve HTTP until
//! SIGTERM or Ctrl-C, then drain.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::crypto::{SecretBox, SecretKey};
use crate::daemon::config::{Config, redact_url};
use crate::daemon::state::{AppState, Inner, Wake};
use crate::forge::StatusReporter;
use crate::logs::LogStore;
use crate::store::Store;

/// Opens (and migrates) the database and assembles the shared state.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    build_state_with_clock(config, Arc::new(SystemClock)).await
}

/// [`build_state`] on another clock than the system's (tests step a manual one).
pub async fn build_state_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    // The data dir holds logs, mirrors and the database: private to the server's user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&config.data_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("securing data dir {}", config.data_dir.display()))?;
    }
    let store = Store::connect(&config.database_url)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&config.database_url)))?
        .with_clock(clock);
    store.migrate().await.context("applying migrations")?;
    let key = SecretKey::from_env_or_file(&config.secret_key_file)?;
    tracing::info!(key = %key.fingerprint(), "secret key loaded");
    let blobs = crate::store::blobs::BlobStore::new(&config.data_dir);
    let swept = blobs.sweep_abandoned_uploads();
    if swept > 0 {
        tracing::info!(
            files = swept,
            "removed uploads a stopped server left half-written"
        );
    }
    let oauth = crate::web::oauth::clients::OAuthClients::load(&config.oauth)?;
    for p in &config.oauth {
        // What the forge's OAuth application must be registered with.
        tracing::info!(
            provider = %p.name,
            kind = %p.kind,
            callback = %format!("{}/login/oauth/{}/callback", config.public_url, p.name),
            "sign-in with a forge configured"
        );
    }
    let metrics = crate::daemon::metrics::Metrics::new();
    let disk = crate::daemon::disk::DiskHealth::new(config.min_free_disk_bytes, metrics.storage());
    Ok(AppState::new(Inner {
        store,
        secret_box: SecretBox::new(&key),
        logs: LogStore::new(config.data_dir.join("logs")),
        blobs,
        status: StatusReporter::new(),
        wake: Wake::default(),
        webhook_budget: crate::api::webhook_body::BodyBudget::new(
            config.max_unverified_webhook_bytes,
        ),
        metrics,
        disk,
        failures: crate::logs::failure_cache::FailureCache::default(),
        oauth,
        shutdown: CancellationToken::new(),
        config,
    }))
}

/// Serves until a shutdown signal, then stops accepting, lets in-flight requests and
/// workers finish (bounded), and closes the database.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let state = build_state(config).await?;
    run(listener, state).await
}

/// [`serve`] on an already-bound listener (tests bind port 0 and read the address).
pub async fn run(listener: TcpListener, state: AppState) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "slipway listening");
    crate::daemon::first_steps::log(&state.config, &state.store).await;
    let workers = crate::workers::spawn_all(&state, addr);
    let shutdown = state.shutdown.clone();
    tokio::spawn(shutdown_on_signal(shutdown.clone(), "shutdown requested"));
    crate::daemon::listener::serve(listener, state.clone(), shutdown.clone()).await;
    shutdown.cancel();
    // Workers stop at their next await point; don't hang forever on a stuck one.
    let drain = futures::future::join_all(workers);
    if tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .is_err()
    {
        tracing::warn!("workers did not stop within 20s");
    }
    state.store.close().await;
    Ok(())
}

/// Cancels `shutdown` on SIGINT or SIGTERM (or returns when it is cancelled otherwise),
/// logging `what` happens next: the server's and `slipway runner`'s one signal handler.
pub(crate) async fn shutdown_on_signal(shutdown: CancellationToken, what: &'static str) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
        _ = shutdown.cancelled() => return,
    }
    tracing::info!("{what}");
    shutdown.cancel();
}
