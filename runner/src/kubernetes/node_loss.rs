//! A stage pod whose node stops reporting (a crashed machine, a network partition).
//!
//! Nothing on such a node updates the pod any more: its containers look as they
//! did, running, and neither the step's exit nor the pod's deadline
//! (`activeDeadlineSeconds` is the kubelet's to enforce) ever shows. The control
//! plane notices the node itself: after `--node-monitor-grace-period` (40 s by
//! default) the node lifecycle controller marks the node `Ready=Unknown` and taints
//! it `node.kubernetes.io/unreachable:NoExecute` (`not-ready` when the kubelet
//! reports it unready), and the taint eviction controller deletes every pod that
//! does not tolerate the taint any longer, first adding the condition
//! `DisruptionTarget=True`, reason `DeletionByTaintManager`
//! (`pkg/controller/nodelifecycle/node_lifecycle_controller.go`,
//! `pkg/controller/tainteviction/taint_eviction.go`). Pods get 300 s of toleration
//! from the `DefaultTolerationSeconds` admission plugin unless they say otherwise;
//! stage pods say [`KubernetesOptions::node_lost_timeout`](super::KubernetesOptions::node_lost_timeout),
//! so a lost stage fails (retryably: the stage is run again elsewhere) that long
//! after the node was declared lost.
//!
//! The pod then stays `Terminating`: only its kubelet could confirm that the
//! containers stopped. Deleting it with `gracePeriodSeconds=0` removes it from the
//! API at once (what `kubectl delete --force --grace-period=0` does); the backend
//! does that for a pod disrupted like this, and for any pod still there a bounded
//! time after its graceful deletion
//! ([`KubernetesOptions::force_delete_after`](super::KubernetesOptions::force_delete_after)).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Toleration};

/// The taints a node gets when it stops reporting (unreachable) or reports itself
/// not ready.
pub const NODE_TAINTS: [&str; 2] = [
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/not-ready",
];

/// Tolerations for [`NODE_TAINTS`] with `tolerationSeconds` = `timeout`, for those
/// the stage's own tolerations do not already cover (a stage may ask for longer).
pub fn tolerations(own: &[Toleration], timeout: Duration) -> Vec<Toleration> {
    NODE_TAINTS
        .iter()
        .filter(|taint| !own.iter().any(|t| covers(t, taint)))
        .map(|taint| Toleration {
            key: Some((*taint).to_owned()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(timeout.as_secs().max(1) as i64),
            value: None,
        })
        .collect()
}

/// Whether toleration `t` matches a `NoExecute` taint with key `taint` (an empty
/// key with `Exists` matches every key; an empty effect every effect).
fn covers(t: &Toleration, taint: &str) -> bool {
    let key = match t.key.as_deref() {
        None | Some("") => t.operator.as_deref() == Some("Exists"),
        Some(k) => k == taint,
    };
    let effect = matches!(t.effect.as_deref(), None | Some("") | Some("NoExecute"));
    key && effect
}

/// Why the pod is being removed by the cluster rather than by its runner: the
/// `DisruptionTarget` condition (taint eviction, an eviction through the API,
/// preemption, the pod garbage collector), as `reason: message`.
pub fn disruption(pod: &Pod) -> Option<String> {
    let c = pod
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "DisruptionTarget" && c.status == "True")?;
    let reason = c
        .reason
        .clone()
        .unwrap_or_else(|| "DisruptionTarget".into());
    let mut why = match c.message.as_deref() {
        Some(m) if !m.is_empty() => format!("{reason}: {m}"),
        _ => reason.clone(),
    };
    if reason == "DeletionByTaintManager" {
        why.push_str(" (its node stopped reporting or is not ready)");
    }
    Some(why)
}

/// Whether only a forced deletion can remove the pod: the cluster is deleting it
/// because its node is gone or unreachable, so no kubelet will confirm the stop.
pub fn needs_force(pod: &Pod) -> bool {
    let lost_node = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| {
            c.type_ == "DisruptionTarget"
                && c.status == "True"
                && matches!(
                    c.reason.as_deref(),
                    Some("DeletionByTaintManager") | Some("DeletionByPodGC")
                )
        });
    lost_node && pod.metadata.deletion_timestamp.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stage_pods_tolerate_a_lost_node_for_the_timeout_unless_they_say_otherwise() {
        let t = tolerations(&[], Duration::from_secs(90));
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|t| t.toleration_seconds == Some(90)
            && t.effect.as_deref() == Some("NoExecute")
            && t.operator.as_deref() == Some("Exists")));
        let own = Toleration {
            key: Some("node.kubernetes.io/unreachable".into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: Some(3600),
            value: None,
        };
        let t = tolerations(std::slice::from_ref(&own), Duration::from_secs(90));
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].key.as_deref(), Some("node.kubernetes.io/not-ready"));
        // A toleration of everything covers both.
        let all = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerations(&[all], Duration::from_secs(90)).is_empty());
    }

    #[test]
    fn a_taint_eviction_is_read_from_the_disruption_condition() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"conditions": [{"type": "DisruptionTarget", "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint"}]}
        }))
        .unwrap();
        let why = disruption(&pod).unwrap();
        assert!(
            why.starts_with("DeletionByTaintManager: Taint manager"),
            "{why}"
        );
        assert!(needs_force(&pod));
        let healthy: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}))
        .unwrap();
        assert_eq!(disruption(&healthy), None);
        assert!(!needs_force(&healthy));
    }
}
