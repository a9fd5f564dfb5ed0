//! Choosing the runner backend — `--backend local|docker|kubernetes` for `slipway
//! exec` and `slipway runner`, `runner_backend` for the server's in-process runner —
//! and the start-up sweep that goes with it.
//!
//! The Kubernetes backend connects like kubectl (in-cluster service account, else
//! `KUBECONFIG` / `~/.kube/config`); its settings ([`KubeSettings`]) are the
//! server's `kube_*` settings, and `SLIPWAY_KUBE_NAMESPACE` (where stage pods go;
//! default `slipway-builds`, as in `deploy/`), `SLIPWAY_KUBE_HELPER_IMAGE` (the
//! image with `sh` and `tar` that moves files in and out of pods) and
//! `SLIPWAY_KUBE_IMAGE_PULL_SECRETS` (comma-separated Secret names) for `slipway
//! runner` and `slipway exec`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use runner::{
    Backend, DockerBackend, DockerOptions, KubernetesBackend, KubernetesOptions, LocalBackend,
};
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
    /// Each stage is a pod in a Kubernetes namespace (see the module docs).
    Kubernetes,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Docker => "docker",
            BackendKind::Kubernetes => "kubernetes",
        }
    }
}

/// Names more host variables for local steps, comma-separated (`NVM_DIR,JAVA_HOME`);
/// read by `slipway exec`, `slipway runner` and the server's in-process runner, on top
/// of their `--pass-env` flags.
pub const PASS_ENV_VAR: &str = "SLIPWAY_LOCAL_PASS_ENV";

/// The host variables local steps get: the toolchain ones ([`runner::TOOLCHAIN_VARS`])
/// and those named by `pass_env` or by [`PASS_ENV_VAR`], from `lookup`.
pub fn local_host_env(
    pass_env: &[String],
    lookup: impl Fn(&str) -> Option<String>,
) -> std::collections::BTreeMap<String, String> {
    let mut names: Vec<String> = pass_env.to_vec();
    if let Some(list) = lookup(PASS_ENV_VAR) {
        names.extend(
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string),
        );
    }
    runner::host_env(&names, lookup)
}

/// An opened backend, with what its start-up sweep needs.
#[derive(Clone)]
pub enum Opened {
    Local(LocalBackend),
    Docker(DockerBackend),
    Kubernetes(KubernetesBackend),
}

impl Opened {
    /// Opens `kind`. `runner_name` labels the Docker objects (keep it stable per
    /// runner: the sweep removes what carries it); `work_dir` holds local
    /// workspaces; `pass_env` names host variables local steps get (see
    /// [`local_host_env`]).
    pub async fn open(
        kind: BackendKind,
        runner_name: &str,
        work_dir: Option<PathBuf>,
        kube: &KubeSettings,
        pass_env: &[String],
    ) -> anyhow::Result<Opened> {
        Ok(match kind {
            BackendKind::Local => Opened::Local(
                LocalBackend::new(work_dir)
                    .with_host_env(local_host_env(pass_env, |k| std::env::var(k).ok())),
            ),
            BackendKind::Docker => Opened::Docker(
                DockerBackend::connect(DockerOptions::new(runner_name))
                    .await
                    .context("opening the docker backend")?,
            ),
            BackendKind::Kubernetes => Opened::Kubernetes(
                KubernetesBackend::connect(kube.options(runner_name))
                    .await
                    .context("opening the kubernetes backend")?,
            ),
        })
    }

    pub fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Opened::Local(b) => Arc::new(b.clone()),
            Opened::Docker(b) => Arc::new(b.clone()),
            Opened::Kubernetes(b) => Arc::new(b.clone()),
        }
    }

    /// What a crashed predecessor left: stages this backend can take over (the
    /// Kubernetes pods that kept the agent's lease, as `(handle, lease)`), after
    /// removing everything else ([`Opened::sweep`]). Call before leasing anything.
    pub async fn recover(&self) -> Vec<(runner::StageHandle, String)> {
        let Opened::Kubernetes(b) = self else {
            self.sweep().await;
            return Vec::new();
        };
        // A build cut short is not adopted (its stage builds again): its builder pod goes.
        if let Err(e) = b.sweep_builders().await {
            tracing::error!(error = %e, "removing the builder pods a crashed runner left failed");
        }
        let found = match b.adoptable().await {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "listing the pods a crashed runner left failed");
                return Vec::new();
            }
        };
        let mut adopted = Vec::new();
        for a in found {
            let taken = match &a.data {
                Some(data) => b.adopt(&a.handle).await.map(|()| data.clone()),
                None => Err(runner::Error::InvalidState("it kept no lease".into())),
            };
            match taken {
                Ok(data) => adopted.push((a.handle, data)),
                Err(e) => {
                    tracing::warn!(pod = %a.handle.id, reason = %e, "removing a pod a crashed runner left");
                    if let Err(e) = b.remove(&a.handle).await {
                        tracing::error!(pod = %a.handle.id, error = %e, "cannot remove it");
                    }
                }
            }
        }
        adopted
    }

    /// Removes what a crashed predecessor left behind (local: orphaned steps and
    /// stage directories; docker: containers, networks and volumes labelled with
    /// this runner's name). Call before leasing anything. A failed sweep is logged
    /// and the runner starts anyway.
    pub async fn sweep(&self) {
        match self {
            Opened::Local(b) => sweep_local(b).await,
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
            Opened::Kubernetes(b) => match b.sweep().await {
                Ok(pods) if !pods.is_empty() => {
                    tracing::warn!(?pods, "deleted the pods a crashed runner left")
                }
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "sweeping the build namespace failed"),
            },
        }
    }
}

/// The Kubernetes backend's settings, as configured (`None`: the default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeSettings {
    pub namespace: Option<String>,
    pub helper_image: Option<String>,
    /// Comma-separated Secret names.
    pub image_pull_secrets: Option<String>,
    /// Builder pods for `kind: image` ([`runner::kubernetes::BuilderOptions`]): on
    /// when an image is set.
    pub builder_image: Option<String>,
    pub builder_namespace: Option<String>,
    /// Comma-separated `host[:port]`s.
    pub insecure_registries: Option<String>,
}

impl KubeSettings {
    /// From `SLIPWAY_KUBE_*` (read through `env`), for `slipway runner` and `exec`.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> KubeSettings {
        KubeSettings {
            namespace: env("SLIPWAY_KUBE_NAMESPACE"),
            helper_image: env("SLIPWAY_KUBE_HELPER_IMAGE"),
            image_pull_secrets: env("SLIPWAY_KUBE_IMAGE_PULL_SECRETS"),
            builder_image: env("SLIPWAY_KUBE_BUILDER_IMAGE"),
            builder_namespace: env("SLIPWAY_KUBE_BUILDER_NAMESPACE"),
            insecure_registries: env("SLIPWAY_KUBE_INSECURE_REGISTRIES"),
        }
    }

    pub fn options(&self, runner_name: &str) -> KubernetesOptions {
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| "slipway-builds".into());
        let mut options = KubernetesOptions::new(runner_name, namespace);
        if let Some(image) = &self.helper_image {
            options.helper_image = image.clone();
        }
        if let Some(secrets) = &self.image_pull_secrets {
            options.image_pull_secrets = list(secrets);
        }
        if let Some(image) = &self.builder_image {
            let namespace = self
                .builder_namespace
                .clone()
                .unwrap_or_else(|| "slipway-builders".into());
            let mut builder = runner::kubernetes::BuilderOptions::new(image.clone(), namespace);
            builder.insecure_registries = self
                .insecure_registries
                .as_deref()
                .map(list)
                .unwrap_or_default();
            options.builder = Some(builder);
        }
        options
    }
}

/// `a, b,` → `["a", "b"]`.
fn list(comma_separated: &str) -> Vec<String> {
    comma_separated
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The start-up sweep of a local backend (see [`runner::LocalBackend::sweep`]),
/// logged. A failed sweep is logged and the runner starts anyway.
async fn sweep_local(backend: &runner::LocalBackend) {
    match backend.sweep().await {
        Ok(report) => {
            if !report.is_empty() {
                tracing::warn!(
                    killed = ?report.killed,
                    removed_stages = report.removed_stages.len(),
                    spared = ?report.spared,
                    in_use = report.in_use,
                    "swept what a crashed runner left behind"
                );
            }
            for error in &report.errors {
                tracing::warn!(error = %error, "sweep problem");
            }
        }
        Err(e) => tracing::error!(error = %e, "sweeping the local backend's work dir failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_options_come_from_the_settings_or_the_environment() {
        let env = |k: &str| match k {
            "SLIPWAY_KUBE_NAMESPACE" => Some("ci".to_owned()),
            "SLIPWAY_KUBE_IMAGE_PULL_SECRETS" => Some("reg-a, reg-b,".to_owned()),
            _ => None,
        };
        let o = KubeSettings::from_env(env).options("r1");
        assert_eq!((o.namespace.as_str(), o.runner_name.as_str()), ("ci", "r1"));
        assert_eq!(o.image_pull_secrets, vec!["reg-a", "reg-b"]);
        let o = KubeSettings::default().options("r1");
        assert_eq!(o.namespace, "slipway-builds");
        assert!(o.builder.is_none(), "no builder unless an image is set");

        let env = |k: &str| match k {
            "SLIPWAY_KUBE_BUILDER_IMAGE" => Some("quay.io/buildah/stable:v1.38".to_owned()),
            "SLIPWAY_KUBE_INSECURE_REGISTRIES" => Some("registry.lan:5000".to_owned()),
            _ => None,
        };
        let b = KubeSettings::from_env(env).options("r1").builder.unwrap();
        assert_eq!(b.image, "quay.io/buildah/stable:v1.38");
        assert_eq!(b.namespace, "slipway-builders");
        assert_eq!(b.insecure_registries, vec!["registry.lan:5000"]);
    }
}
