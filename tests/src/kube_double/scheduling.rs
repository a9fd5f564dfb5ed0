//! The one node: the Docker engine, with labels and allocatable CPU and memory. A
//! pod that does not fit it (nodeSelector, requests) is never bound: it stays
//! Pending with `PodScheduled=False`, reason `Unschedulable`, as the scheduler
//! leaves it, so a backend can report scheduling failures without waiting for its
//! deadline. Only the pod itself is weighed against the node, not the pods
//! already running; taints, affinity and topology are not modelled. What a pod
//! requests is computed as upstream does it ([`pod_resources`], also what quota
//! admission charges).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements};

use super::quantity::Amount;

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

/// Amounts by resource name (`cpu`, `memory`, `ephemeral-storage`, …), as upstream's
/// `v1.ResourceList`: a resource nobody named is absent, not zero.
pub type ResourceList = BTreeMap<String, Amount>;

/// Requests or limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Requests,
    Limits,
}

/// A `resources` block's requests or limits. Requests as API defaulting leaves them
/// (`SetDefaults_ResourceRequirements`, before any admission or scheduling): a
/// resource with only a limit requests its limit. Unparseable values (422 at
/// validation) count as absent.
pub fn resource_list(r: Option<&ResourceRequirements>, side: Side) -> ResourceList {
    let parse =
        |m: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
            m.into_iter()
                .flatten()
                .filter_map(|(k, q)| Some((k.clone(), Amount::parse(&q.0)?)))
                .collect::<ResourceList>()
        };
    let limits = parse(r.and_then(|r| r.limits.as_ref()));
    match side {
        Side::Limits => limits,
        Side::Requests => {
            let mut requests = parse(r.and_then(|r| r.requests.as_ref()));
            for (k, v) in limits {
                requests.entry(k).or_insert(v);
            }
            requests
        }
    }
}

fn container_list(c: &Container, side: Side) -> ResourceList {
    resource_list(c.resources.as_ref(), side)
}

/// `addResourceList`: sums, in the notation of what was there first.
pub fn add_into(total: &mut ResourceList, more: &ResourceList) {
    for (k, v) in more {
        total
            .entry(k.clone())
            .and_modify(|t| *t = t.plus(*v))
            .or_insert(*v);
    }
}

/// `maxResourceList`: the larger per resource.
fn max_into(total: &mut ResourceList, other: &ResourceList) {
    for (k, v) in other {
        match total.get(k) {
            Some(t) if *t >= *v => {}
            _ => {
                total.insert(k.clone(), *v);
            }
        }
    }
}

/// A pod's effective requests or limits, as upstream computes them for the scheduler
/// and for quota (`k8s.io/component-helpers/resource/helpers.go`, `PodRequests` /
/// `PodLimits` and `aggregateContainerResourcesByFn`, the sidecar KEP-753 formula):
/// the regular containers and the native sidecars (init containers with
/// `restartPolicy: Always`) together; but at least, for each regular init
/// container, its own amount plus the sidecars started before it (and, for each
/// sidecar, itself plus those before it). Pod-level `spec.resources` replace the
/// containers' cpu and memory (and hugepages) when set; `spec.overhead` is added to
/// requests, and to limits that are set and non-zero.
pub fn pod_resources(pod: &Pod, side: Side) -> ResourceList {
    let Some(spec) = pod.spec.as_ref() else {
        return ResourceList::new();
    };
    let mut total = ResourceList::new();
    for c in &spec.containers {
        add_into(&mut total, &container_list(c, side));
    }
    let mut sidecars = ResourceList::new();
    let mut init_peak = ResourceList::new();
    for c in spec.init_containers.iter().flatten() {
        let own = container_list(c, side);
        let in_use = if c.restart_policy.as_deref() == Some("Always") {
            add_into(&mut total, &own);
            add_into(&mut sidecars, &own);
            sidecars.clone()
        } else {
            let mut combined = own;
            add_into(&mut combined, &sidecars);
            combined
        };
        max_into(&mut init_peak, &in_use);
    }
    max_into(&mut total, &init_peak);

    let pod_level = resource_list(spec.resources.as_ref(), side);
    for (k, v) in pod_level {
        if k == "cpu" || k == "memory" || k.starts_with("hugepages-") {
            total.insert(k, v);
        }
    }
    for (k, v) in spec.overhead.iter().flatten() {
        let Some(v) = Amount::parse(&v.0) else {
            continue;
        };
        match side {
            Side::Requests => add_into(&mut total, &ResourceList::from([(k.clone(), v)])),
            Side::Limits => {
                if let Some(t) = total.get_mut(k).filter(|t| !t.is_zero()) {
                    *t = t.plus(v);
                }
            }
        }
    }
    total
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
    let requests = pod_resources(pod, Side::Requests);
    let wanted = |r: &str, units: fn(Amount) -> i128| requests.get(r).map_or(0, |a| units(*a));
    let mut short = Vec::new();
    if wanted("cpu", Amount::ceil_millis) > i128::from(node.cpu_millis) {
        short.push("1 Insufficient cpu");
    }
    if wanted("memory", Amount::ceil_units) > i128::from(node.memory_bytes) {
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
        // Regular init containers run alone: the largest counts, not the sum.
        assert_eq!(
            unschedulable(
                &node,
                &pod(json!({"initContainers": [c("2"), c("2")], "containers": [c("1")]}))
            ),
            None
        );
    }

    fn pod_of(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn cpu(name: &str, cpu: &str) -> serde_json::Value {
        json!({"name": name, "image": "i", "resources": {"requests": {"cpu": cpu}}})
    }

    fn sidecar(name: &str, cpu: &str) -> serde_json::Value {
        let mut c = self::cpu(name, cpu);
        c["restartPolicy"] = json!("Always");
        c
    }

    fn requested_cpu(pod: &Pod) -> String {
        pod_resources(pod, Side::Requests)["cpu"].to_string()
    }

    #[test]
    fn an_init_container_runs_beside_the_sidecars_started_before_it() {
        // KEP-753: init `setup` runs while `proxy` (a sidecar before it) runs, so the
        // pod needs 1 + 1.5 at that moment, more than proxy + main (1.5).
        let before = pod_of(json!({
            "initContainers": [sidecar("proxy", "1"), cpu("setup", "1500m")],
            "containers": [cpu("main", "500m")],
        }));
        assert_eq!(requested_cpu(&before), "2500m");
        // A sidecar started after the init container does not run beside it.
        let after = pod_of(json!({
            "initContainers": [cpu("setup", "1500m"), sidecar("proxy", "1")],
            "containers": [cpu("main", "500m")],
        }));
        assert_eq!(requested_cpu(&after), "1500m");
        let node = Node {
            name: "n".into(),
            labels: BTreeMap::new(),
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
        };
        assert!(
            unschedulable(&node, &before)
                .unwrap()
                .contains("Insufficient cpu")
        );
        assert_eq!(unschedulable(&node, &after), None);
    }

    #[test]
    fn overhead_and_pod_level_resources_count_as_upstream() {
        let mut pod = pod_of(json!({
            "containers": [
                {"name": "a", "image": "i", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                {"name": "b", "image": "i", "resources": {"requests": {"cpu": "250m"}}},
            ],
            "overhead": {"cpu": "100m", "memory": "64Mi"},
        }));
        let requests = pod_resources(&pod, Side::Requests);
        assert_eq!(requests["cpu"].to_string(), "1350m");
        assert_eq!(requests["memory"].to_string(), "1088Mi");
        let limits = pod_resources(&pod, Side::Limits);
        assert_eq!(limits["cpu"].to_string(), "1100m");
        pod.spec.as_mut().unwrap().resources =
            Some(serde_json::from_value(json!({"requests": {"cpu": "3"}})).unwrap());
        assert_eq!(
            pod_resources(&pod, Side::Requests)["cpu"].to_string(),
            "3100m"
        );
    }
}
