//! The Kubernetes backend: each stage is one ephemeral pod in a configurable
//! namespace; its steps are ordered init containers sharing an emptyDir workspace
//! (the layout and why: [`pod`]).
//!
//! The runner follows each pod through one watch ([`watch`]) and reads everything
//! from the pod's status ([`status`]): a step's start and exit code, an OOM kill,
//! an image that cannot be pulled, a pod no node can take. Step output comes from
//! the pod log API, one container per step, followed while it runs; the API
//! merges a container's stdout and stderr, so every line is reported as stdout
//! ([`Backend::separates_streams`](crate::Backend::separates_streams)). Files move
//! through `exec` + `tar` ([`copy`]).
//!
//! Everything a stage creates carries the runner's label ([`names`]): `sweep`
//! removes a crashed runner's pods, and `adoptable` lists the ones a restarted
//! runner can take over (`adopt`, then `RunOptions::adopt`): pods and their logs
//! outlive the runner, so a finished step reports again from its container status
//! and log, and a running one is simply followed on.
//!
//! Needs Kubernetes 1.30 or later (native sidecars for services, the builder pod's
//! `appArmorProfile`): `connect` reads `/version` and refuses older clusters, and
//! every object is created with strict field validation ([`strict`]). The runner's
//! Role needs, in the build namespace only: pods
//! create/get/list/watch/delete, pods/log get, pods/exec create and get, secrets
//! create/get/list/delete (`deploy/kubernetes/base/rbac.yaml`); the same again in the
//! builder namespace when `kind: image` stages build in builder pods ([`builder`]).
//!
//! Here: the backend and its per-stage state. `backend_impl` is the
//! [`Backend`](crate::Backend) impl, `admission` creates the stage pod (waiting out
//! a used-up ResourceQuota, failing on any other refusal), `setup` fills it, `wait` waits on a
//! pod through its watch, `adoption` is what outlives a runner (sweep, adoptable,
//! adopt), `options` the settings.

mod admission;
mod adoption;
mod artifacts;
mod backend_impl;
pub mod builder;
mod copy;
mod image;
mod listing;
mod log_follow;
pub mod names;
mod node_loss;
mod options;
pub mod pod;
mod setup;
mod status;
pub mod strict;
mod transient;
mod wait;
mod watch;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, PropagationPolicy};
use tokio::task::AbortHandle;

use crate::backend::StageHandle;
use crate::error::{Error, Result};
use crate::registry::Registry;

pub use adoption::Adoptable;
pub use options::{BuilderOptions, KubernetesOptions};
pub use pod::RunAs;
use watch::PodView;

/// Runs stages as pods. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct KubernetesBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    options: KubernetesOptions,
    stages: Registry<KubeStage>,
    /// Set-ups in progress ([`admission`]: waiting for quota, abandoned).
    setups: admission::Setups,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("options", &self.inner.options)
            .field("stages", &self.inner.stages)
            .finish_non_exhaustive()
    }
}

/// A stage's pod as this runner follows it.
struct KubeStage {
    pod: String,
    view: tokio::sync::watch::Receiver<PodView>,
    watcher: AbortHandle,
    /// Steps whose exit this runner has seen (their destroy is a no-op).
    finished: Mutex<HashSet<usize>>,
    /// Steps whose log is being read (tailed at most once).
    tailed: Mutex<HashSet<usize>>,
}

impl Drop for KubeStage {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn api_err(op: &'static str) -> impl Fn(kube::Error) -> Error {
    move |e| Error::Backend {
        op,
        message: e.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl KubernetesBackend {
    /// A backend using `client` (e.g. `kube::Client::try_default()`: in-cluster
    /// service account or kubeconfig).
    pub fn new(client: kube::Client, options: KubernetesOptions) -> Result<KubernetesBackend> {
        if options.runner_name.is_empty() || options.namespace.is_empty() {
            return Err(Error::InvalidSpec(
                "kubernetes backend: the runner name and the namespace must not be empty".into(),
            ));
        }
        Ok(KubernetesBackend {
            inner: Arc::new(Inner {
                pods: Api::namespaced(client.clone(), &options.namespace),
                secrets: Api::namespaced(client.clone(), &options.namespace),
                client,
                options,
                stages: Registry::new("stage"),
                setups: admission::Setups::default(),
            }),
        })
    }

    /// Connects with the default configuration: in-cluster when running in a pod,
    /// else `KUBECONFIG` / `~/.kube/config`.
    pub async fn connect(options: KubernetesOptions) -> Result<KubernetesBackend> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| Error::Backend {
                op: "connect",
                message: format!("cannot configure a Kubernetes client: {e}"),
            })?;
        let backend = KubernetesBackend::new(client, options)?;
        backend.check_cluster().await?;
        Ok(backend)
    }

    /// Reads the cluster's `/version` and refuses one older than
    /// [`strict::MIN_VERSION`]; returns its `gitVersion`.
    pub async fn check_cluster(&self) -> Result<String> {
        let info = self
            .inner
            .client
            .apiserver_version()
            .await
            .map_err(api_err("read the cluster's /version"))?;
        match strict::refuse_version(&info) {
            Some(why) => Err(Error::Backend {
                op: "connect",
                message: why,
            }),
            None => Ok(info.git_version),
        }
    }

    pub fn options(&self) -> &KubernetesOptions {
        &self.inner.options
    }

    fn runner_selector(&self) -> String {
        format!(
            "{}={}",
            names::RUNNER_LABEL,
            names::label_value(&self.inner.options.runner_name)
        )
    }

    fn stage(&self, handle: &StageHandle) -> Result<Arc<KubeStage>> {
        self.inner.stages.get(&handle.id)
    }

    /// Deletes the pod (graceful, `kill_grace`) and its Secret; absent is fine.
    async fn delete_objects(&self, pod: &str) -> Result<()> {
        let dp = DeleteParams {
            grace_period_seconds: Some(self.inner.options.kill_grace.as_secs().max(1) as u32),
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        ignore_not_found(self.inner.pods.delete(pod, &dp).await.map(|_| ()))
            .map_err(api_err("delete pod"))?;
        ignore_not_found(
            self.inner
                .secrets
                .delete(pod, &DeleteParams::default())
                .await
                .map(|_| ()),
        )
        .map_err(api_err("delete secret"))
    }

    /// Deletes the pod at once (`gracePeriodSeconds=0`): removed from the API even
    /// when no kubelet confirms its containers stopped (see [`node_loss`]).
    async fn force_delete(&self, pod: &str) -> Result<()> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        tracing::warn!(%pod, "force-deleting a pod its node does not stop");
        ignore_not_found(self.inner.pods.delete(pod, &dp).await.map(|_| ()))
            .map_err(api_err("force-delete pod"))
    }

    /// [`Self::delete_objects`], then waits (bounded) until the pod is gone: one the
    /// cluster is removing from a lost node is force-deleted at once, any other
    /// still there `kill_grace` + `force_delete_after` later too (see [`node_loss`]).
    /// `view`, when the pod is followed, saves the polling.
    async fn delete_until_gone(
        &self,
        pod: &str,
        view: Option<tokio::sync::watch::Receiver<PodView>>,
    ) -> Result<()> {
        self.delete_objects(pod).await?;
        let options = &self.inner.options;
        let force_at = Instant::now() + options.kill_grace + options.force_delete_after;
        if self.wait_gone(pod, view, force_at).await? {
            return Ok(());
        }
        self.force_delete(pod).await?;
        if self
            .wait_gone(pod, None, Instant::now() + FORCED_GONE_WAIT)
            .await?
        {
            return Ok(());
        }
        Err(Error::Backend {
            op: "delete pod",
            message: format!("pod {pod} still exists after its forced deletion"),
        })
    }

    /// Waits until the pod is gone (true), until `until`, or until only a forced
    /// deletion can remove it (false).
    async fn wait_gone(
        &self,
        pod: &str,
        view: Option<tokio::sync::watch::Receiver<PodView>>,
        until: Instant,
    ) -> Result<bool> {
        if let Some(mut view) = view {
            let seen = tokio::time::timeout_at(until.into(), async {
                loop {
                    match &*view.borrow_and_update() {
                        PodView::Gone => return Some(true),
                        PodView::Present(p) if node_loss::needs_force(p) => return Some(false),
                        PodView::Present(_) => {}
                    }
                    if view.changed().await.is_err() {
                        // The watcher stopped: read the API below.
                        return None;
                    }
                }
            })
            .await;
            if let Ok(Some(gone)) = seen {
                return Ok(gone);
            }
        }
        loop {
            match self
                .inner
                .pods
                .get_opt(pod)
                .await
                .map_err(api_err("get pod"))?
            {
                None => return Ok(true),
                Some(p) if node_loss::needs_force(&p) => return Ok(false),
                Some(_) if Instant::now() >= until => return Ok(false),
                Some(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// How long a force-deleted pod may take to leave the API.
const FORCED_GONE_WAIT: Duration = Duration::from_secs(10);

fn ignore_not_found(
    r: std::result::Result<(), kube::Error>,
) -> std::result::Result<(), kube::Error> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}
