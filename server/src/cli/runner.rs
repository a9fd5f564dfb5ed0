//! `slipway runner`: run stages for a Slipway server from another host, over the same
//! runner protocol the server's in-process runner uses.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::agent::backends::{BackendKind, Opened};
use crate::agent::{Agent, hostname};

/// The environment variable holding the runner token. Tokens are never taken from the
/// command line, where `ps` and shell history would show them.
pub const TOKEN_ENV: &str = "SLIPWAY_RUNNER_TOKEN";

#[derive(Debug, Args)]
pub struct RunnerArgs {
    /// The server's base URL, e.g. `https://ci.example.com`.
    #[arg(long, env = "SLIPWAY_SERVER")]
    pub server: String,
    /// Read the runner token from this file (default: the `SLIPWAY_RUNNER_TOKEN`
    /// environment variable).
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
    /// This runner's name (default: the host name).
    #[arg(long, env = "SLIPWAY_RUNNER_NAME")]
    pub name: Option<String>,
    /// How many stages to run at once.
    #[arg(long, default_value_t = 1)]
    pub capacity: usize,
    /// Labels describing this runner (comma-separated or repeated). A stage runs here
    /// only if all its `runs_on` labels are among these; `backend:<name>` is added.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Where steps run: host processes, containers on the Docker engine
    /// (`DOCKER_HOST` or the local socket), or pods in a Kubernetes namespace
    /// (`SLIPWAY_KUBE_NAMESPACE`, `SLIPWAY_KUBE_HELPER_IMAGE`,
    /// `SLIPWAY_KUBE_IMAGE_PULL_SECRETS`; cluster access as kubectl finds it).
    #[arg(long, value_enum, env = "SLIPWAY_RUNNER_BACKEND", default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Where workspaces and downloaded sources go (default: the system temp dir).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// On SIGTERM or Ctrl-C, how long running stages may go on before they are
    /// cancelled and handed back to the server to run elsewhere.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Local backend: pass this host variable to steps (repeatable), besides
    /// RUSTUP_HOME and CARGO_HOME; SLIPWAY_LOCAL_PASS_ENV=A,B names more.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
}

pub fn run(args: RunnerArgs) -> anyhow::Result<ExitCode> {
    super::init_tracing();
    if args.capacity == 0 {
        bail!("--capacity must be at least 1");
    }
    for label in &args.labels {
        pipelines::check_label(label).map_err(|e| anyhow::anyhow!("--labels: {e}"))?;
        if label.starts_with(pipelines::BACKEND_LABEL_PREFIX) {
            bail!("--labels: `{label}`: the runner adds `backend:<name>` for its backend itself");
        }
    }
    let server = reqwest::Url::parse(&args.server)
        .with_context(|| format!("--server {:?} is not a URL", args.server))?;
    if !matches!(server.scheme(), "http" | "https") {
        bail!("--server must be an http:// or https:// URL");
    }
    let token = match &args.token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the runner token from {}", path.display()))?,
        None => std::env::var(TOKEN_ENV).map_err(|_| {
            anyhow::anyhow!("set {TOKEN_ENV} to a runner token (or pass --token-file)")
        })?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the runner token is empty");
    }
    if let Some(dir) = &args.work_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating work dir {}", dir.display()))?;
    }
    // The name also labels this runner's Docker objects: stable across restarts, so
    // the start-up sweep finds what a crashed predecessor left.
    let name = args.name.unwrap_or_else(hostname);
    let runtime = tokio::runtime::Runtime::new()?;
    let opened = runtime.block_on(Opened::open(
        args.backend,
        &name,
        args.work_dir.clone(),
        &crate::agent::backends::KubeSettings::from_env(|k| std::env::var(k).ok()),
        &args.pass_env,
    ))?;
    let mut agent = Agent::new(server, token, name, opened.backend())
        .with_capacity(args.capacity)
        .with_labels(args.labels)
        .with_shutdown_grace(Duration::from_secs(args.shutdown_grace));
    if let Some(dir) = args.work_dir {
        agent = agent.with_work_dir(dir);
    }
    runtime.block_on(async move {
        // Before leasing anything: kill the steps a crashed predecessor left running
        // (or, on Kubernetes, take its stages over).
        let agent = agent.with_adopted(opened.recover().await);
        let shutdown = CancellationToken::new();
        tokio::spawn(crate::daemon::serve::shutdown_on_signal(
            shutdown.clone(),
            "stopping: no new stages; running ones get the shutdown grace",
        ));
        agent.run(shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}
