//! Losing the node ([`super::KubeDouble::lose_node`]): its kubelet stops reporting —
//! a crashed machine, a network partition — and the control plane reacts as
//! upstream's does.
//!
//! - The kubelet is gone: pod status is no longer written (containers keep their
//!   last reported state, running; the engine's containers are left as they are,
//!   as a partitioned node's would be), graceful deletions never complete (the pod
//!   stays Terminating: only the kubelet confirms a stop), and the API server cannot
//!   reach it for logs or exec (500, the dial error it would proxy). Open log
//!   streams break.
//! - After [`super::KubeDoubleOptions::node_monitor_grace`] (the controller
//!   manager's `--node-monitor-grace-period`, 40 s by default) the node lifecycle
//!   controller declares the node lost (`Ready=Unknown`, taint
//!   `node.kubernetes.io/unreachable:NoExecute`) and marks its pods not ready: the
//!   `Ready` condition of a pod that has one becomes False (`MarkPodsNotReady` in
//!   `pkg/controller/util/node/controller_utils.go`; reason and message kept).
//! - The taint eviction controller (`pkg/controller/tainteviction/taint_eviction.go`)
//!   then deletes each pod once its toleration of the taint runs out: at once
//!   without one (the double does not run the `DefaultTolerationSeconds` admission
//!   plugin, which would have added 300 s: such pods get 300 s here too), after
//!   `tolerationSeconds`, never for a toleration without seconds. Before the
//!   deletion it adds `DisruptionTarget=True`, reason `DeletionByTaintManager`,
//!   message "Taint manager: deleting due to NoExecute taint". The deletion is
//!   graceful, so the pod stays Terminating.
//! - A deletion with `gracePeriodSeconds=0` removes a pod from the API at once,
//!   lost node or not (the registry's immediate deletion, what `kubectl delete
//!   --force --grace-period=0` sends); the double then also removes its containers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, Toleration};
use tokio::time::Instant;

use super::NODE_NAME;
use super::logs::LogCut;
use super::pod_runtime::Ctx;
use super::routes::{DeleteOpts, begin_pod_deletion};

/// The taint a node gets when it stops reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// What pods without a toleration of [`UNREACHABLE`] get from `DefaultTolerationSeconds`.
const DEFAULT_TOLERATION: Duration = Duration::from_secs(300);

/// Whether the one node's kubelet still reports.
#[derive(Debug, Default)]
pub struct NodeHealth {
    lost: AtomicBool,
}

impl NodeHealth {
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

/// The node stops reporting now; the control plane notices as upstream's does.
pub fn lose(ctx: &Arc<Ctx>) {
    if ctx.node_health.lost.swap(true, Ordering::SeqCst) {
        return;
    }
    // The connections to the kubelet break.
    ctx.log_cut.send_replace(LogCut::Reset);
    tokio::spawn(lifecycle(ctx.clone()));
}

async fn lifecycle(ctx: Arc<Ctx>) {
    let shutdown = ctx.shutdown.clone();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = evict(&ctx) => {}
    }
}

/// On the one node, scheduled.
fn on_node(p: &Pod) -> bool {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(NODE_NAME)
}

async fn evict(ctx: &Arc<Ctx>) {
    tokio::time::sleep(ctx.options.node_monitor_grace).await;
    let tainted_at = Instant::now();
    let (pods, _) = ctx.store.list::<Pod>(None);
    for p in pods.iter().filter(|p| on_node(p)) {
        let (ns, name) = names(p);
        ctx.store.update::<Pod>(&ns, &name, mark_not_ready);
    }
    // The taint eviction controller, once a pod's toleration has run out. Pods
    // created later do not land here (the scheduler avoids the tainted node) —
    // the double still binds them: see the module doc's limits.
    loop {
        let (pods, _) = ctx.store.list::<Pod>(None);
        for p in pods.iter().filter(|p| on_node(p)) {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(after) = toleration(p) else { continue };
            if tainted_at.elapsed() < after {
                continue;
            }
            let (ns, name) = names(p);
            ctx.store.update::<Pod>(&ns, &name, |p| {
                set_condition(
                    p,
                    PodCondition {
                        type_: "DisruptionTarget".into(),
                        status: "True".into(),
                        reason: Some("DeletionByTaintManager".into()),
                        message: Some("Taint manager: deleting due to NoExecute taint".into()),
                        last_transition_time: Some(super::store::now()),
                        ..Default::default()
                    },
                )
            });
            let _ = begin_pod_deletion(ctx, &ns, &name, &DeleteOpts::default());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn names(p: &Pod) -> (String, String) {
    (
        p.metadata.namespace.clone().unwrap_or_default(),
        p.metadata.name.clone().unwrap_or_default(),
    )
}

/// `MarkPodsNotReady`: an existing Ready condition becomes False.
fn mark_not_ready(p: &mut Pod) {
    let Some(status) = p.status.as_mut() else {
        return;
    };
    for c in status.conditions.iter_mut().flatten() {
        if c.type_ == "Ready" && c.status != "False" {
            c.status = "False".into();
            c.last_transition_time = Some(super::store::now());
        }
    }
}

fn set_condition(p: &mut Pod, condition: PodCondition) {
    let status = p.status.get_or_insert_with(Default::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != condition.type_);
    conditions.push(condition);
}

/// How long the pod tolerates the unreachable taint (`None`: for ever), as the
/// taint eviction controller computes it: the shortest matching toleration.
fn toleration(p: &Pod) -> Option<Duration> {
    let tolerations: Vec<&Toleration> = p
        .spec
        .iter()
        .flat_map(|s| s.tolerations.iter().flatten())
        .filter(|t| matches_unreachable(t))
        .collect();
    if tolerations.is_empty() {
        return Some(DEFAULT_TOLERATION);
    }
    // `getMinTolerationTime`: the shortest `tolerationSeconds`; for ever only when
    // no matching toleration has any.
    tolerations
        .iter()
        .filter_map(|t| t.toleration_seconds)
        .min()
        .map(|s| Duration::from_secs(s.max(0) as u64))
}

fn matches_unreachable(t: &Toleration) -> bool {
    let key = match t.key.as_deref() {
        None | Some("") => t.operator.as_deref() == Some("Exists"),
        Some(k) => k == UNREACHABLE,
    };
    let effect = matches!(t.effect.as_deref(), None | Some("") | Some("NoExecute"));
    key && effect
}
