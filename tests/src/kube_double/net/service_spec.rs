//! A Service's spec as the API server takes it: defaults (kubernetes
//! pkg/apis/core/v1/defaults.go SetDefaults_Service and the Service REST
//! strategy: type ClusterIP, sessionAffinity None, protocol TCP, targetPort = port,
//! internalTrafficPolicy Cluster, one IPv4 family), validation
//! (pkg/apis/core/validation/validation.go ValidateService, validateServicePort,
//! ValidateServiceUpdate; messages as there), and the cluster IP from
//! 10.96.0.0/12 (the default service CIDR; pkg/registry/core/service/ipallocator:
//! "provided IP is already allocated", "not in the valid range").
//!
//! The double runs ClusterIP Services on TCP only: NodePort, LoadBalancer and
//! ExternalName types, UDP and SCTP ports and ClientIP session affinity are 422
//! Unsupported, so a caller that needs them fails loudly.

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec, ServiceStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::names;
use crate::kube_double::pod_runtime::Ctx;

const UNSUPPORTED: &str = "not supported by the Kubernetes test double";
const CIDR_BASE: u32 = u32::from_be_bytes([10, 96, 0, 0]);
const CIDR_SIZE: u32 = 1 << 20;

pub fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().is_some_and(|s| {
        s.cluster_ip.as_deref() == Some("None")
            || s.cluster_ips
                .as_ref()
                .is_some_and(|ips| ips.first().map(String::as_str) == Some("None"))
    })
}

/// What the API server fills in before validating.
pub fn defaults(svc: &mut Service) {
    let spec = svc.spec.get_or_insert_with(ServiceSpec::default);
    spec.type_.get_or_insert_with(|| "ClusterIP".into());
    spec.session_affinity.get_or_insert_with(|| "None".into());
    for p in spec.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
        let unset = match &p.target_port {
            None => true,
            Some(IntOrString::Int(0)) => true,
            Some(IntOrString::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if unset {
            p.target_port = Some(IntOrString::Int(p.port));
        }
    }
    if spec.type_.as_deref() == Some("ClusterIP") {
        spec.internal_traffic_policy
            .get_or_insert_with(|| "Cluster".into());
        spec.ip_families.get_or_insert_with(|| vec!["IPv4".into()]);
        spec.ip_family_policy
            .get_or_insert_with(|| "SingleStack".into());
    }
    // The strategy keeps clusterIP and clusterIPs[0] the same.
    match (
        spec.cluster_ip.clone().filter(|ip| !ip.is_empty()),
        &spec.cluster_ips,
    ) {
        (Some(ip), None) => spec.cluster_ips = Some(vec![ip]),
        (None, Some(ips)) if !ips.is_empty() => spec.cluster_ip = Some(ips[0].clone()),
        _ => {}
    }
    svc.status.get_or_insert_with(|| ServiceStatus {
        load_balancer: Some(Default::default()),
        ..Default::default()
    });
}

/// Problems with a Service (after [`defaults`]), as `field: reason` lines.
pub fn validate(svc: &Service) -> Vec<String> {
    let mut out = Vec::new();
    names::object_name(
        svc.metadata.name.as_deref(),
        svc.metadata.generate_name.as_deref(),
        true,
        &mut out,
    );
    let default = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default);
    match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => {}
        t @ ("NodePort" | "LoadBalancer" | "ExternalName") => out.push(format!(
            "spec.type: Unsupported value: {t:?}: {UNSUPPORTED} (ClusterIP Services only)"
        )),
        t => out.push(format!(
            "spec.type: Unsupported value: {t:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        )),
    }
    let ports = spec.ports.as_deref().unwrap_or_default();
    if ports.is_empty() && !is_headless(svc) {
        out.push("spec.ports: Required value".into());
    }
    let mut port_names = HashSet::new();
    let mut seen = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        match p.name.as_deref().filter(|n| !n.is_empty()) {
            None if ports.len() > 1 => out.push(format!("{at}.name: Required value")),
            None => {}
            Some(n) => {
                names::dns1123_label(&format!("{at}.name"), n, &mut out);
                if !port_names.insert(n) {
                    out.push(format!("{at}.name: Duplicate value: {n:?}"));
                }
            }
        }
        names::port_number(&format!("{at}.port"), p.port, &mut out);
        let protocol = p.protocol.as_deref().unwrap_or("TCP");
        match protocol {
            "TCP" => {}
            "UDP" | "SCTP" => out.push(format!(
                "{at}.protocol: Unsupported value: {protocol:?}: {UNSUPPORTED} (TCP only)"
            )),
            other => out.push(format!(
                "{at}.protocol: Unsupported value: {other:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
            )),
        }
        match &p.target_port {
            Some(IntOrString::Int(n)) => {
                names::port_number(&format!("{at}.targetPort"), *n, &mut out)
            }
            Some(IntOrString::String(s)) => {
                names::port_name(&format!("{at}.targetPort"), s, &mut out)
            }
            None => {}
        }
        if p.node_port.is_some_and(|n| n != 0) {
            out.push(format!(
                "{at}.nodePort: Forbidden: may not be used when `type` is 'ClusterIP'"
            ));
        }
        if !seen.insert((protocol, p.port)) {
            out.push(format!(
                "{at}: Duplicate value: {{\"port\":{},\"protocol\":{protocol:?}}}",
                p.port
            ));
        }
    }
    if let Some(selector) = &spec.selector {
        names::labels("spec.selector", selector, &mut out);
    }
    match spec.session_affinity.as_deref().unwrap_or("None") {
        "None" => {}
        "ClientIP" => out.push(format!(
            "spec.sessionAffinity: Unsupported value: \"ClientIP\": {UNSUPPORTED}"
        )),
        other => out.push(format!(
            "spec.sessionAffinity: Unsupported value: {other:?}: supported values: \"ClientIP\", \"None\""
        )),
    }
    if let (Some(ip), Some(ips)) = (&spec.cluster_ip, &spec.cluster_ips)
        && !ip.is_empty()
        && ips.first().is_some_and(|first| first != ip)
    {
        out.push(format!(
            "spec.clusterIPs: Invalid value: {ips:?}: element [0] must match clusterIP"
        ));
    }
    out
}

/// Every cluster IP in use.
fn used(ctx: &Ctx) -> BTreeSet<String> {
    let (services, _) = ctx.store.list::<Service>(None);
    services
        .iter()
        .filter_map(|s| s.spec.as_ref()?.cluster_ip.clone())
        .collect()
}

/// Assigns `spec.clusterIP`/`clusterIPs` to a new Service: the one asked for, if
/// valid and free, else a free one. Problems are 422s.
pub fn allocate(ctx: &Ctx, svc: &mut Service) -> Vec<String> {
    if is_headless(svc) {
        let spec = svc.spec.get_or_insert_with(ServiceSpec::default);
        spec.cluster_ip = Some("None".into());
        spec.cluster_ips = Some(vec!["None".into()]);
        return Vec::new();
    }
    let taken = used(ctx);
    let spec = svc.spec.get_or_insert_with(ServiceSpec::default);
    let asked = spec.cluster_ip.clone().filter(|ip| !ip.is_empty());
    let ip = match asked {
        Some(ip) => {
            let Ok(addr) = ip.parse::<Ipv4Addr>() else {
                return vec![format!(
                    "spec.clusterIPs[0]: Invalid value: {ip:?}: must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                )];
            };
            let n = u32::from(addr);
            if !(CIDR_BASE..CIDR_BASE + CIDR_SIZE).contains(&n) {
                return vec![format!(
                    "spec.clusterIPs: Invalid value: [{ip:?}]: failed to allocate IP {ip}: the provided IP ({ip}) is not in the valid range. The range of valid IPs is 10.96.0.0/12"
                )];
            }
            if taken.contains(&ip) {
                return vec![format!(
                    "spec.clusterIPs: Invalid value: [{ip:?}]: failed to allocate IP {ip}: provided IP is already allocated"
                )];
            }
            ip
        }
        None => loop {
            // Not .0 (the network), nor 10.96.0.1 (the `kubernetes` Service's).
            let n = CIDR_BASE + 2 + rand::random::<u32>() % (CIDR_SIZE - 3);
            let ip = Ipv4Addr::from(n).to_string();
            if !taken.contains(&ip) {
                break ip;
            }
        },
    };
    spec.cluster_ip = Some(ip.clone());
    spec.cluster_ips = Some(vec![ip]);
    Vec::new()
}

/// An update keeps the allocated cluster IPs: omitted, they are carried over
/// (the registry's patchAllocatedValues); changed, they are refused.
pub fn keep_cluster_ips(old: &Service, next: &mut Service) -> Vec<String> {
    let old_spec = old.spec.clone().unwrap_or_default();
    let spec = next.spec.get_or_insert_with(ServiceSpec::default);
    let ip_unset = spec.cluster_ip.as_deref().is_none_or(str::is_empty);
    let ips_unset = spec.cluster_ips.as_ref().is_none_or(Vec::is_empty);
    if ip_unset && ips_unset {
        spec.cluster_ip = old_spec.cluster_ip.clone();
        spec.cluster_ips = old_spec.cluster_ips.clone();
        return Vec::new();
    }
    let new_ips = spec
        .cluster_ips
        .clone()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec![spec.cluster_ip.clone().unwrap_or_default()]);
    let old_ips = old_spec.cluster_ips.unwrap_or_default();
    if new_ips != old_ips {
        return vec![format!(
            "spec.clusterIPs[0]: Invalid value: {new_ips:?}: may not change once set"
        )];
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(v: serde_json::Value) -> Service {
        let mut s: Service = serde_json::from_value(v).unwrap();
        defaults(&mut s);
        s
    }

    #[test]
    fn defaults_fill_what_the_api_server_fills() {
        let s = svc(json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}}));
        let spec = s.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let p = &spec.ports.unwrap()[0];
        assert_eq!(p.protocol.as_deref(), Some("TCP"));
        assert_eq!(p.target_port, Some(IntOrString::Int(80)));
    }

    #[test]
    fn validation_names_the_fields() {
        let problems = validate(&svc(json!({
            "metadata": {"name": "web"},
            "spec": {
                "ports": [{"name": "http", "port": 80}, {"name": "http", "port": 70000}, {"port": 81}],
                "selector": {"app": "bad value"}
            }
        })));
        let text = problems.join("\n");
        for want in [
            "spec.ports[1].name: Duplicate value: \"http\"",
            "spec.ports[1].port: Invalid value: 70000",
            "spec.ports[2].name: Required value",
            "spec.selector: Invalid value: \"bad value\"",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
        let none = validate(&svc(json!({"metadata": {"name": "web"}, "spec": {}})));
        assert_eq!(none, vec!["spec.ports: Required value".to_owned()]);
        let headless = svc(json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "None"}}));
        assert!(validate(&headless).is_empty());
    }

    #[test]
    fn cluster_ips_are_immutable() {
        let old = svc(
            json!({"metadata": {"name": "w"}, "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]}}),
        );
        let mut omitted =
            svc(json!({"metadata": {"name": "w"}, "spec": {"ports": [{"port": 80}]}}));
        assert!(keep_cluster_ips(&old, &mut omitted).is_empty());
        assert_eq!(
            omitted.spec.unwrap().cluster_ip.as_deref(),
            Some("10.96.0.9")
        );
        let mut changed = svc(
            json!({"metadata": {"name": "w"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}),
        );
        let problems = keep_cluster_ips(&old, &mut changed);
        assert!(
            problems[0].contains("may not change once set"),
            "{problems:?}"
        );
    }
}
