//! ResourceQuota admission for pod creates, as the API server's `ResourceQuota`
//! plugin does it (`k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go`,
//! `CheckRequest`; the pod evaluator `pkg/quota/v1/evaluator/core/pods.go`):
//!
//! - A quota applies to a pod when one of its `hard` resources is one pods consume.
//! - If such a quota limits cpu or memory (`cpu`, `requests.*`, `limits.*`), every
//!   container and init container must state that resource (after defaulting: a
//!   limit alone is also the request), else 403 `failed quota: <name>: must specify
//!   <resource> for: <containers>; …`.
//! - What the pod would add (its effective requests and limits, see
//!   [`scheduling::pod_resources`], and `pods`/`count/pods` 1) on top of what the
//!   namespace's pods use may not exceed `hard`, else 403 `exceeded quota: <name>,
//!   requested: …, used: …, limited: …`, each the exceeded resources, sorted,
//!   `name=quantity` in canonical form.
//!
//! Usage is what the quota controller would count: every pod of the namespace that is
//! not Succeeded or Failed and not past its deletion grace (`QuotaV1Pod`). Unlike a
//! cluster, where the controller updates `status.used` a moment later, the double
//! computes it on every admission and every read, so there is no window in which a
//! new quota's status is unknown.

use k8s_openapi::api::core::v1::{Container, Pod, ResourceQuota};

use crate::kube_double::quantity::Amount;
use crate::kube_double::scheduling::{self, ResourceList, Side, add_into, resource_list};

/// Resources pods consume, by name (`podResources` upstream).
const POD_RESOURCES: &[&str] = &[
    "count/pods",
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
    "pods",
];

/// Quota'd resources a container must state (upstream's `validationSet`, kept for
/// backward compatibility).
const MUST_SPECIFY: &[&str] = &[
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
];

fn one() -> Amount {
    Amount::parse("1").expect("1 is a quantity")
}

/// An extended resource (`example.com/gpu`): quota'd only as `requests.<name>`.
fn is_extended(name: &str) -> bool {
    name.contains('/') && !name.starts_with("kubernetes.io/") && !name.starts_with("requests.")
}

/// `podComputeUsageHelper`: the quota resources charged for these requests and limits.
fn compute_usage(requests: &ResourceList, limits: &ResourceList) -> ResourceList {
    let mut usage = ResourceList::from([("pods".to_owned(), one())]);
    for r in ["cpu", "memory", "ephemeral-storage"] {
        if let Some(v) = requests.get(r) {
            usage.insert(r.to_owned(), *v);
            usage.insert(format!("requests.{r}"), *v);
        }
        if let Some(v) = limits.get(r) {
            usage.insert(format!("limits.{r}"), *v);
        }
    }
    for (r, v) in requests {
        if r.starts_with("hugepages-") {
            usage.insert(r.clone(), *v);
            usage.insert(format!("requests.{r}"), *v);
        }
        if is_extended(r) {
            usage.insert(format!("requests.{r}"), *v);
        }
    }
    usage
}

/// Whether a pod still counts against compute quota (`QuotaV1Pod`).
fn counts(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    match (
        &pod.metadata.deletion_timestamp,
        pod.metadata.deletion_grace_period_seconds,
    ) {
        (Some(at), Some(grace)) => {
            let until = at.0 + k8s_openapi::jiff::SignedDuration::from_secs(grace);
            k8s_openapi::jiff::Timestamp::now() <= until
        }
        _ => true,
    }
}

/// What `pod` is charged (`PodUsageFunc`).
pub fn pod_usage(pod: &Pod) -> ResourceList {
    let mut usage = ResourceList::from([("count/pods".to_owned(), one())]);
    if counts(pod) {
        let requests = scheduling::pod_resources(pod, Side::Requests);
        let limits = scheduling::pod_resources(pod, Side::Limits);
        add_into(&mut usage, &compute_usage(&requests, &limits));
    }
    usage
}

/// The quota's `hard`, parsed (validated at create, so nothing is dropped).
pub fn hard(quota: &ResourceQuota) -> ResourceList {
    quota
        .spec
        .as_ref()
        .and_then(|s| s.hard.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|(k, q)| Some((k.clone(), Amount::parse(&q.0)?)))
        .collect()
}

/// `status.used`: every hard resource, summed over `pods` (0 when none uses it).
pub fn used(hard: &ResourceList, pods: &[Pod]) -> ResourceList {
    let mut total = ResourceList::new();
    for p in pods {
        add_into(&mut total, &pod_usage(p));
    }
    hard.keys()
        .map(|k| (k.clone(), total.get(k).copied().unwrap_or(Amount::ZERO)))
        .collect()
}

/// `MatchingResources`: the hard resources a pod can consume.
fn matching(hard: &ResourceList) -> Vec<String> {
    hard.keys()
        .filter(|k| {
            POD_RESOURCES.contains(&k.as_str())
                || k.starts_with("hugepages-")
                || k.starts_with("requests.hugepages-")
                || k.strip_prefix("requests.").is_some_and(is_extended)
        })
        .cloned()
        .collect()
}

fn all_containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    spec.into_iter().flat_map(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    })
}

/// `Constraints`: "must specify …" when a container leaves out a quota'd cpu or memory.
fn constraints(required: &[String], pod: &Pod) -> Option<String> {
    let required: Vec<&String> = required
        .iter()
        .filter(|r| MUST_SPECIFY.contains(&r.as_str()))
        .collect();
    let mut missing: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for c in all_containers(pod) {
        let r = c.resources.as_ref();
        let usage = compute_usage(
            &resource_list(r, Side::Requests),
            &resource_list(r, Side::Limits),
        );
        for want in &required {
            if !usage.contains_key(want.as_str()) {
                missing.entry(want).or_default().insert(&c.name);
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .iter()
        .map(|(r, names)| {
            let names: Vec<&str> = names.iter().copied().collect();
            format!("{r} for: {}", names.join(","))
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// `prettyPrint`: `a=1,b=2Gi`, keys sorted.
fn pretty(list: &ResourceList, only: &[String]) -> String {
    only.iter()
        .filter_map(|k| Some(format!("{k}={}", list.get(k)?)))
        .collect::<Vec<_>>()
        .join(",")
}

/// Why creating `pod` breaks one of `quotas` (the text after "is forbidden: "), given
/// the pods already in its namespace.
pub fn refusal(quotas: &[ResourceQuota], pods: &[Pod], pod: &Pod) -> Option<String> {
    let mut applying = Vec::new();
    for q in quotas {
        let hard = hard(q);
        let restricted = matching(&hard);
        if restricted.is_empty() {
            continue;
        }
        let name = q.metadata.name.as_deref().unwrap_or_default();
        if let Some(why) = constraints(&restricted, pod) {
            return Some(format!("failed quota: {name}: {why}"));
        }
        applying.push((name, hard));
    }
    let mut requested = pod_usage(pod);
    requested.retain(|_, v| !v.is_zero());
    for (name, hard) in applying {
        let used = used(&hard, pods);
        let mut exceeded = Vec::new();
        for (k, want) in requested.iter().filter(|(k, _)| hard.contains_key(*k)) {
            let now = used.get(k).copied().unwrap_or(Amount::ZERO);
            if now.plus(*want) > hard[k] {
                exceeded.push(k.clone());
            }
        }
        if !exceeded.is_empty() {
            return Some(format!(
                "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                pretty(&requested, &exceeded),
                pretty(&used, &exceeded),
                pretty(&hard, &exceeded),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn quota(hard: serde_json::Value) -> ResourceQuota {
        serde_json::from_value(json!({"metadata": {"name": "compute"}, "spec": {"hard": hard}}))
            .unwrap()
    }

    fn pod(containers: serde_json::Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"containers": containers}}),
        )
        .unwrap()
    }

    fn with_cpu(cpu: &str) -> Pod {
        pod(json!([{"name": "c", "image": "i",
            "resources": {"requests": {"cpu": cpu, "memory": "1Gi"}, "limits": {"cpu": cpu, "memory": "1Gi"}}}]))
    }

    #[test]
    fn exceeding_names_the_quota_and_the_amounts_as_upstream() {
        let q = quota(json!({"requests.cpu": "2", "pods": "10"}));
        let running = [with_cpu("1500m")];
        assert_eq!(
            refusal(std::slice::from_ref(&q), &running, &with_cpu("500m")),
            None
        );
        assert_eq!(
            refusal(std::slice::from_ref(&q), &running, &with_cpu("1")).unwrap(),
            "exceeded quota: compute, requested: requests.cpu=1, used: requests.cpu=1500m, limited: requests.cpu=2"
        );
        // Finished pods no longer count.
        let mut done = with_cpu("1500m");
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        assert_eq!(refusal(&[q], &[done], &with_cpu("1")), None);
    }

    #[test]
    fn pod_counts_and_limits_are_quota_too() {
        let q = quota(json!({"pods": "1", "limits.memory": "1Gi"}));
        let msg = refusal(&[q], &[with_cpu("1")], &with_cpu("1")).unwrap();
        assert_eq!(
            msg,
            "exceeded quota: compute, requested: limits.memory=1Gi,pods=1, used: limits.memory=1Gi,pods=1, limited: limits.memory=1Gi,pods=1"
        );
    }

    #[test]
    fn containers_must_state_quotad_cpu_and_memory() {
        let q = quota(json!({"requests.memory": "4Gi", "limits.cpu": "4"}));
        let p = pod(json!([
            {"name": "b", "image": "i", "resources": {"requests": {"memory": "1Gi"}}},
            {"name": "a", "image": "i"},
        ]));
        assert_eq!(
            refusal(std::slice::from_ref(&q), &[], &p).unwrap(),
            "failed quota: compute: must specify limits.cpu for: a,b; requests.memory for: a"
        );
        // A limit alone is the request too (API defaulting happens before admission).
        let p = pod(json!([{"name": "a", "image": "i",
            "resources": {"limits": {"memory": "1Gi", "cpu": "1"}}}]));
        assert_eq!(refusal(&[q], &[], &p), None);
        // A quota on something pods do not use does not apply.
        assert_eq!(
            refusal(
                &[quota(json!({"secrets": "1"}))],
                &[],
                &pod(json!([{"name": "a", "image": "i"}]))
            ),
            None
        );
    }
}
