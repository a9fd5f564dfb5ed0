//! Choosing the runner backend — `--backend local|docker` for `slipway exec` and
//! `slipway runner`, `runner_backend` for the server's in-process runner — and the
//! start-up sweep that goes with it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use runner::{Backend, DockerBackend, DockerOptions, LocalBackend};
use serde::Deserialize;

/// Which backend runs the stages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Steps are processes on this host, in a temp workspace.
    #[default]
    Local,
    /// Steps are containers on the Docker engine (`DOCKER_HOST` or the local socket).
    Docker,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Docker => "docker",
        }
    }
}

/// An opened backend, with what its start-up sweep needs.
#[derive(Clone)]
pub enum Opened {
    Local(LocalBackend),
    Docker(DockerBackend),
}

impl Opened {
    /// Opens `kind`. `runner_name` labels the Docker objects (keep it stable per
    /// runner: the sweep removes what carries it); `work_dir` holds local
    /// workspaces.
    pub async fn open(
        kind: BackendKind,
        runner_name: &str,
        work_dir: Option<PathBuf>,
    ) -> anyhow::Result<Opened> {
        Ok(match kind {
            BackendKind::Local => Opened::Local(LocalBackend::new(work_dir)),
            BackendKind::Docker => Opened::Docker(
                DockerBackend::connect(DockerOptions::new(runner_name))
                    .await
                    .context("opening the docker backend")?,
            ),
        })
    }

    pub fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Opened::Local(b) => Arc::new(b.clone()),
            Opened::Docker(b) => Arc::new(b.clone()),
        }
    }

    /// Removes what a crashed predecessor left behind (local: orphaned steps and
    /// stage directories; docker: containers, networks and volumes labelled with
    /// this runner's name). Call before leasing anything. A failed sweep is logged
    /// and the runner starts anyway.
    pub async fn sweep(&self) {
        match self {
            Opened::Local(b) => crate::runner_agent::sweep_local(b).await,
            Opened::Docker(b) => match b.sweep().await {
                Ok(report) => {
                    if !report.is_empty() {
                        tracing::warn!(
                            containers = ?report.containers,
                            networks = ?report.networks,
                            volumes = ?report.volumes,
                            "swept what a crashed runner left on the Docker engine"
                        );
                    }
                    for error in &report.errors {
                        tracing::warn!(error = %error, "docker sweep problem");
                    }
                }
                Err(e) => tracing::error!(error = %e, "sweeping the Docker engine failed"),
            },
        }
    }
}
