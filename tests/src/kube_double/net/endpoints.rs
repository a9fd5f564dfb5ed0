//! Which pods serve a Service port, as the EndpointSlice controller decides and
//! kube-proxy uses it (kubernetes pkg/controller/endpointslice and
//! pkg/proxy: an endpoint is a pod matched by the Service's selector, not
//! terminating, with an IP and its Ready condition True; a named `targetPort` is
//! looked up per pod among its containers' ports). A Service without a selector
//! (or with an empty one) has no endpoints here: the double has no Endpoints or
//! EndpointSlice objects for a controller to fill.
//!
//! `RoundRobin` spreads picks over the endpoints (IPVS's `rr` scheduler; iptables
//! mode picks at random — the same share per pod, without the noise).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::kube_double::PodNetwork;
use crate::kube_double::pod_runtime::Ctx;

/// One ready pod behind a Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: String,
    pub addr: SocketAddr,
}

/// The Service port with this number.
pub fn port(svc: &Service, number: i32) -> Option<&ServicePort> {
    svc.spec
        .as_ref()?
        .ports
        .iter()
        .flatten()
        .find(|p| p.port == number)
}

/// Whether a pod is an endpoint: Ready, not terminating, with an address.
pub fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    pod.metadata.deletion_timestamp.is_none()
        && status.is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

fn pod_ip(ctx: &Ctx, pod: &Pod) -> Option<IpAddr> {
    match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
        Some(ip) => ip.parse().ok(),
        // Pods on the host's network have the host's address.
        None if ctx.options.pod_network == PodNetwork::Host => Some(Ipv4Addr::LOCALHOST.into()),
        None => None,
    }
}

/// The container port a `targetPort` names on this pod.
fn target_port(pod: &Pod, target: &IntOrString, protocol: &str) -> Option<u16> {
    match target {
        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|n| *n > 0),
        IntOrString::String(name) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// The ready endpoints of a Service port, ordered by pod name.
pub fn ready(ctx: &Ctx, ns: &str, svc: &Service, sp: &ServicePort) -> Vec<Endpoint> {
    let Some(selector) = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    else {
        return Vec::new();
    };
    let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
    let protocol = sp.protocol.as_deref().unwrap_or("TCP");
    let (pods, _) = ctx.store.list::<Pod>(Some(ns));
    pods.iter()
        .filter(|p| {
            let labels = p.metadata.labels.as_ref();
            selector
                .iter()
                .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        })
        .filter(|p| is_ready(p))
        .filter_map(|p| {
            let ip = pod_ip(ctx, p)?;
            let port = target_port(p, &target, protocol)?;
            Some(Endpoint {
                pod: p.metadata.name.clone().unwrap_or_default(),
                addr: SocketAddr::new(ip, port),
            })
        })
        .collect()
}

/// Round robin per key (a Service port, a mirror backend).
#[derive(Default)]
pub struct RoundRobin(Mutex<HashMap<String, usize>>);

impl RoundRobin {
    /// The next index in `0..n` for `key` (`n` > 0).
    pub fn pick(&self, key: &str, n: usize) -> usize {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let next = m.entry(key.to_owned()).or_default();
        let i = *next % n;
        *next = next.wrapping_add(1);
        i
    }

    /// Forgets the keys starting with `prefix` (a deleted Service's).
    pub fn forget(&self, prefix: &str) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|k, _| !k.starts_with(prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_cycles_per_key() {
        let rr = RoundRobin::default();
        let picks: Vec<usize> = (0..5).map(|_| rr.pick("a", 2)).collect();
        assert_eq!(picks, vec![0, 1, 0, 1, 0]);
        assert_eq!(rr.pick("b", 3), 0);
        rr.forget("a");
        assert_eq!(rr.pick("a", 2), 0);
    }

    #[test]
    fn named_target_ports_resolve_per_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8080},
                {"name": "dns", "containerPort": 53, "protocol": "UDP"}
            ]}]}
        }))
        .unwrap();
        let name = |n: &str| IntOrString::String(n.into());
        assert_eq!(target_port(&pod, &name("http"), "TCP"), Some(8080));
        assert_eq!(target_port(&pod, &name("dns"), "TCP"), None);
        assert_eq!(target_port(&pod, &name("nope"), "TCP"), None);
        assert_eq!(target_port(&pod, &IntOrString::Int(81), "TCP"), Some(81));
    }
}
