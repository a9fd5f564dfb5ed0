//! Which connections a set of NetworkPolicies allows, as the API documents the
//! semantics every enforcing CNI implements (k8s.io/api networking/v1 `types.go`, and
//! "Network Policies" in the Kubernetes docs): no cluster runs here, so the deploy
//! tests ask this model instead of a CNI.
//!
//! - A pod is isolated for a direction when some policy in its namespace selects it
//!   (`podSelector`) with that direction in `policyTypes`; an isolated pod accepts
//!   (or opens) only what at least one such policy's rules allow. Policies add up.
//! - A connection needs both: the source's egress and the destination's ingress.
//! - A rule without `from`/`to` matches every peer, without `ports` every port. A peer
//!   is an `ipBlock` (`cidr` minus `except`), a `namespaceSelector` (pods of the
//!   matching namespaces; `kubernetes.io/metadata.name` is every namespace's label), a
//!   `podSelector` (pods of the policy's namespace), or both selectors (both match).
//! - Ports: `protocol` defaults to TCP; `port` with optional `endPort`.
//!
//! Only what the shipped manifests use is modelled: `matchLabels` selectors and numeric
//! ports. Anything else panics rather than guess.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::Value;

/// One end of a connection: a pod (namespace, labels, IP) or an address outside.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Pod {
        namespace: String,
        labels: BTreeMap<String, String>,
        ip: IpAddr,
    },
    Outside(IpAddr),
}

impl Endpoint {
    pub fn pod(namespace: &str, labels: &[(&str, &str)], ip: &str) -> Endpoint {
        Endpoint::Pod {
            namespace: namespace.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: ip.parse().expect("an IP address"),
        }
    }

    pub fn outside(ip: &str) -> Endpoint {
        Endpoint::Outside(ip.parse().expect("an IP address"))
    }

    fn ip(&self) -> IpAddr {
        match self {
            Endpoint::Pod { ip, .. } | Endpoint::Outside(ip) => *ip,
        }
    }
}

/// Whether `from` may open a connection to `to` on `port`/`protocol` under `policies`
/// (NetworkPolicy objects as JSON; other objects are ignored).
pub fn allows(
    policies: &[Value],
    from: &Endpoint,
    to: &Endpoint,
    port: u16,
    protocol: &str,
) -> bool {
    let policies: Vec<&Value> = policies
        .iter()
        .filter(|o| o["kind"] == "NetworkPolicy")
        .collect();
    let egress_ok = match from {
        Endpoint::Outside(_) => true,
        Endpoint::Pod { .. } => direction_allows(
            &policies, from, "Egress", "egress", "to", to, port, protocol,
        ),
    };
    let ingress_ok = match to {
        Endpoint::Outside(_) => true,
        Endpoint::Pod { .. } => direction_allows(
            &policies, to, "Ingress", "ingress", "from", from, port, protocol,
        ),
    };
    egress_ok && ingress_ok
}

/// For the pod `subject`: allowed in this direction with `peer` (the other end)?
#[allow(clippy::too_many_arguments)]
fn direction_allows(
    policies: &[&Value],
    subject: &Endpoint,
    policy_type: &str,
    rules_key: &str,
    peers_key: &str,
    peer: &Endpoint,
    port: u16,
    protocol: &str,
) -> bool {
    let Endpoint::Pod {
        namespace, labels, ..
    } = subject
    else {
        return true;
    };
    let isolating: Vec<&&Value> = policies
        .iter()
        .filter(|p| p["metadata"]["namespace"].as_str() == Some(namespace))
        .filter(|p| selector_matches(&p["spec"]["podSelector"], labels))
        .filter(|p| has_type(p, policy_type))
        .collect();
    if isolating.is_empty() {
        return true;
    }
    isolating.iter().any(|p| {
        p["spec"][rules_key]
            .as_array()
            .into_iter()
            .flatten()
            .any(|rule| {
                let peers_ok = match rule.get(peers_key).and_then(Value::as_array) {
                    None => true,
                    Some(peers) => peers.iter().any(|x| peer_matches(x, namespace, peer)),
                };
                let ports_ok = match rule.get("ports").and_then(Value::as_array) {
                    None => true,
                    Some(ports) => ports.iter().any(|x| port_matches(x, port, protocol)),
                };
                peers_ok && ports_ok
            })
    })
}

/// `policyTypes`, defaulted as the API server does: Ingress always, Egress when the
/// policy has egress rules.
fn has_type(policy: &Value, policy_type: &str) -> bool {
    match policy["spec"]["policyTypes"].as_array() {
        Some(types) => types.iter().any(|t| t == policy_type),
        None => policy_type == "Ingress" || policy["spec"]["egress"].is_array(),
    }
}

fn peer_matches(peer: &Value, policy_namespace: &str, other: &Endpoint) -> bool {
    if let Some(block) = peer.get("ipBlock") {
        let ip = other.ip();
        let within = |cidr: &Value| in_cidr(ip, cidr.as_str().expect("a CIDR string"));
        return within(&block["cidr"])
            && !block["except"].as_array().into_iter().flatten().any(within);
    }
    let Endpoint::Pod {
        namespace, labels, ..
    } = other
    else {
        // Selectors select pods only.
        return false;
    };
    let namespace_ok = match peer.get("namespaceSelector") {
        Some(selector) => {
            let ns_labels =
                BTreeMap::from([("kubernetes.io/metadata.name".to_string(), namespace.clone())]);
            selector_matches(selector, &ns_labels)
        }
        None => namespace == policy_namespace,
    };
    let pod_ok = match peer.get("podSelector") {
        Some(selector) => selector_matches(selector, labels),
        None => true,
    };
    namespace_ok && pod_ok
}

fn port_matches(entry: &Value, port: u16, protocol: &str) -> bool {
    let want_protocol = entry["protocol"].as_str().unwrap_or("TCP");
    if want_protocol != protocol {
        return false;
    }
    match &entry["port"] {
        Value::Null => true,
        Value::Number(n) => {
            let start = n.as_u64().expect("a port number");
            let end = entry["endPort"].as_u64().unwrap_or(start);
            (start..=end).contains(&u64::from(port))
        }
        other => panic!("named ports are not modelled: {other}"),
    }
}

/// `matchLabels` only (an empty selector selects everything).
fn selector_matches(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.get("matchExpressions").is_none(),
        "matchExpressions are not modelled: {selector}"
    );
    selector["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.get(k).map(String::as_str) == v.as_str())
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (net, len) = cidr.split_once('/').expect("a CIDR with a prefix length");
    let net: IpAddr = net.parse().expect("a CIDR's address");
    let len: u32 = len.parse().expect("a CIDR's prefix length");
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_contain_what_they_should() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_cidr(ip("10.1.2.3"), "10.0.0.0/8"));
        assert!(!in_cidr(ip("11.0.0.1"), "10.0.0.0/8"));
        assert!(in_cidr(ip("8.8.8.8"), "0.0.0.0/0"));
        assert!(in_cidr(ip("169.254.169.254"), "169.254.0.0/16"));
        assert!(in_cidr(ip("fd00:ec2::254"), "fc00::/7"));
        assert!(!in_cidr(ip("2606:4700::1111"), "fc00::/7"));
        assert!(!in_cidr(ip("8.8.8.8"), "::/0"));
        assert!(in_cidr(ip("1.2.3.4"), "1.2.3.4/32"));
    }
}
