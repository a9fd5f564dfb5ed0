//! What the HTTP handlers and the pod runners share, and what happens to a pod after
//! the API deleted it (containers stopped, Docker objects removed, secrets collected).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use k8s_openapi::api::core::v1::{Pod, Secret};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::kube_double::KubeDoubleOptions;
use crate::kube_double::docker;
use crate::kube_double::store::Store;

/// Shared by the HTTP handlers and the pod runners.
pub struct Ctx {
    pub store: Store,
    pub docker: Docker,
    pub instance: String,
    pub options: KubeDoubleOptions,
    pub node: crate::kube_double::scheduling::Node,
    pub runtimes: Mutex<HashMap<String, Runtime>>,
    /// Ends watches and log streams at shutdown.
    pub shutdown: CancellationToken,
    /// Containers' output, as the pod log API serves it.
    pub captures: crate::kube_double::capture::Captures,
    /// Services' listeners and the gateway (see `net`).
    pub net: crate::kube_double::net::Network,
    /// Bytes through `pods/exec` (see `exec`).
    pub exec_traffic: crate::kube_double::exec::Traffic,
    /// Held from a pod create's admission until the pod is stored (see `admission`).
    pub admission_lock: Mutex<()>,
    /// Sent by [`crate::kube_double::KubeDouble::cut_log_streams`]: every open log
    /// stream ends there, as when an API server or kubelet restarts or a load
    /// balancer drops an idle connection.
    pub log_cut: tokio::sync::watch::Sender<crate::kube_double::logs::LogCut>,
    /// Whether the node's kubelet still reports (see `node_loss`).
    pub node_health: crate::kube_double::node_loss::NodeHealth,
}

/// A running pod's controls, by pod uid.
pub struct Runtime {
    pub(super) stop: CancellationToken,
    pub(super) grace: Arc<AtomicI64>,
    pub(super) task: Option<JoinHandle<()>>,
    /// The pod's engine calls that create things. They run as their own tasks, so
    /// stopping the runner never abandons a create half-way (the engine would
    /// finish it after the cleanup); cleanup waits for them instead.
    pub(super) engine_calls: TaskTracker,
}

/// How long cleanup waits for engine calls in flight.
const ENGINE_CALLS_WAIT: Duration = Duration::from_secs(60);

impl Ctx {
    pub(super) fn runtimes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Runtime>> {
        self.runtimes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletion after the API set `deletionTimestamp`: stops the containers
    /// (SIGTERM, SIGKILL after `grace` seconds), removes the pod's Docker objects,
    /// then the pod (DELETED), then collects the secrets it owned (or orphans them).
    pub async fn finalize_pod(
        self: Arc<Self>,
        ns: String,
        name: String,
        uid: String,
        grace: i64,
        orphan: bool,
    ) {
        let (task, engine_calls) = match self.runtimes().get_mut(&uid) {
            Some(r) => {
                r.grace.store(grace, Ordering::SeqCst);
                r.stop.cancel();
                (r.task.take(), Some(r.engine_calls.clone()))
            }
            None => (None, None),
        };
        if let Some(task) = task {
            let _ = task.await;
        }
        if let Some(calls) = engine_calls {
            calls.close();
            let _ = tokio::time::timeout(ENGINE_CALLS_WAIT, calls.wait()).await;
        }
        let removed = docker::remove_labelled(&self.docker, docker::POD_UID_LABEL, &uid).await;
        if !removed.errors.is_empty() {
            tracing::warn!(pod = %name, errors = ?removed.errors, "kube double: pod cleanup");
        }
        self.runtimes().remove(&uid);
        if self
            .store
            .get::<Pod>(&ns, &name)
            .is_some_and(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
        {
            self.store.remove::<Pod>(&ns, &name);
        }
        self.collect_secrets(&ns, &uid, orphan);
    }

    /// Garbage collection of secrets owned by a pod that is gone: deleted, or with
    /// the owner reference removed for `propagationPolicy: Orphan`.
    pub fn collect_secrets(&self, ns: &str, owner_uid: &str, orphan: bool) {
        let (secrets, _) = self.store.list::<Secret>(Some(ns));
        for s in secrets {
            let owned = s
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == owner_uid);
            if !owned {
                continue;
            }
            let name = s.metadata.name.clone().unwrap_or_default();
            if orphan {
                self.store.update::<Secret>(ns, &name, |s| {
                    if let Some(refs) = &mut s.metadata.owner_references {
                        refs.retain(|o| o.uid != owner_uid);
                    }
                });
            } else {
                self.store.remove::<Secret>(ns, &name);
            }
        }
    }

    /// Stops every pod runner (shutdown); returns their engine calls in flight,
    /// to wait for before removing what they create.
    pub fn stop_all(&self) -> Vec<TaskTracker> {
        self.runtimes()
            .values_mut()
            .map(|r| {
                r.stop.cancel();
                if let Some(t) = r.task.take() {
                    t.abort();
                }
                r.engine_calls.close();
                r.engine_calls.clone()
            })
            .collect()
    }

    /// Waits (bounded) for the engine calls returned by [`Ctx::stop_all`].
    pub async fn wait_engine_calls(calls: Vec<TaskTracker>) {
        let all = futures::future::join_all(calls.iter().map(|c| c.wait()));
        let _ = tokio::time::timeout(ENGINE_CALLS_WAIT, all).await;
    }
}
