//! The one node: the Docker engine, with labels and allocatable CPU and memory. A
//! pod that does not fit it (nodeSelector, requests) is never bound: it stays
//! Pending with `PodScheduled=False`, reason `Unschedulable`, as the scheduler
//! leaves it, so a backend can report scheduling failures without waiting for its
//! deadline. Only the pod itself is weighed against the node, not the pods
//! already running; taints, affinity and topology are not modelled.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::quantity;

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

/// A container's request for `resource`; as API defaulting does, the limit when
/// only a limit is given.
fn request(c: &Container, resource: &str, parse: fn(&str) -> Option<i64>) -> i64 {
    let r = c.resources.as_ref();
    r.and_then(|r| r.requests.as_ref()?.get(resource))
        .or_else(|| r.and_then(|r| r.limits.as_ref()?.get(resource)))
        .and_then(|q| parse(&q.0))
        .unwrap_or(0)
}

/// The pod's effective request: the larger of what the regular containers and
/// sidecars need together and what the largest init container needs alone.
fn pod_request(pod: &Pod, resource: &str, parse: fn(&str) -> Option<i64>) -> i64 {
    let spec = pod.spec.as_ref().expect("validated pods have a spec");
    let inits = spec.init_containers.iter().flatten();
    let sidecars: i64 = inits
        .clone()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| request(c, resource, parse))
        .sum();
    let max_init = inits
        .filter(|c| c.restart_policy.as_deref() != Some("Always"))
        .map(|c| request(c, resource, parse))
        .max()
        .unwrap_or(0);
    let mains: i64 = spec
        .containers
        .iter()
        .map(|c| request(c, resource, parse))
        .sum();
    (mains + sidecars).max(max_init)
}

/// Why the pod cannot be scheduled on `node`, in the scheduler's words.
pub fn unschedulable(node: &Node, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref().expect("validated pods have a spec");
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels.get(k) == Some(v));
    if !selector_ok {
        return Some(
            "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.".into(),
        );
    }
    let millis = |q: &str| quantity::parse(q).map(|v| (v * 1000.0).ceil() as i64);
    let mut short = Vec::new();
    if pod_request(pod, "cpu", millis) > node.cpu_millis {
        short.push("1 Insufficient cpu");
    }
    if pod_request(pod, "memory", quantity::memory_bytes) > node.memory_bytes {
        short.push("1 Insufficient memory");
    }
    (!short.is_empty()).then(|| format!("0/1 nodes are available: {}.", short.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selector_and_requests_decide() {
        let node = Node {
            name: "n".into(),
            labels: [("disk".to_owned(), "ssd".to_owned())].into(),
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
        };
        let pod = |spec: serde_json::Value| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
        };
        let c =
            |cpu: &str| json!({"name": "c", "image": "i", "resources": {"requests": {"cpu": cpu}}});
        assert_eq!(
            unschedulable(
                &node,
                &pod(json!({"containers": [c("1")], "nodeSelector": {"disk": "ssd"}}))
            ),
            None
        );
        assert!(
            unschedulable(
                &node,
                &pod(json!({"containers": [c("1")], "nodeSelector": {"disk": "hdd"}}))
            )
            .unwrap()
            .contains("didn't match")
        );
        assert!(
            unschedulable(&node, &pod(json!({"containers": [c("1500m"), c("1")]})))
                .unwrap()
                .contains("Insufficient cpu")
        );
        let limits_only =
            json!({"name": "c", "image": "i", "resources": {"limits": {"memory": "2Gi"}}});
        assert!(
            unschedulable(&node, &pod(json!({"containers": [limits_only]})))
                .unwrap()
                .contains("Insufficient memory")
        );
        // Init containers run alone: the largest counts, not the sum.
        assert_eq!(
            unschedulable(
                &node,
                &pod(json!({"initContainers": [c("2"), c("2")], "containers": [c("1")]}))
            ),
            None
        );
    }
}
