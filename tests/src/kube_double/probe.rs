//! Container probes as the API defines them: what a valid probe is (checked when a
//! pod or a pod template is stored) and its timings with the API's defaults
//! (`SetDefaults_Probe` in pkg/apis/core/v1/defaults.go: timeout 1 s, period 10 s,
//! success and failure thresholds 1 and 3; `validateProbe` in
//! pkg/apis/core/validation/validation.go). Running them is `pod_runtime::probes`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const UNSUPPORTED: &str = "not supported by the Kubernetes test double";

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Readiness,
    Liveness,
}

impl Kind {
    pub fn field(self) -> &'static str {
        match self {
            Kind::Startup => "startupProbe",
            Kind::Readiness => "readinessProbe",
            Kind::Liveness => "livenessProbe",
        }
    }
}

/// When and how often a probe runs, and how many results in a row change its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    /// `terminationGracePeriodSeconds` of a liveness or startup probe: the grace of
    /// the kill it causes (the pod's when unset).
    pub kill_grace: Option<i64>,
}

/// A field of 0 means "unset" to the API's defaulting, as for these int32 fields.
fn or_default(v: Option<i32>, default: i32) -> i32 {
    match v {
        None | Some(0) => default,
        Some(n) => n,
    }
}

pub fn timing(p: &Probe) -> Timing {
    let secs = |n: i32| Duration::from_secs(n.max(0) as u64);
    Timing {
        initial_delay: secs(p.initial_delay_seconds.unwrap_or(0)),
        period: secs(or_default(p.period_seconds, 10)),
        timeout: secs(or_default(p.timeout_seconds, 1)),
        success_threshold: or_default(p.success_threshold, 1).max(1) as u32,
        failure_threshold: or_default(p.failure_threshold, 3).max(1) as u32,
        kill_grace: p.termination_grace_period_seconds,
    }
}

/// The probes a container has, in the order the kubelet gates them.
pub fn of(c: &Container) -> [(Kind, Option<&Probe>); 3] {
    [
        (Kind::Startup, c.startup_probe.as_ref()),
        (Kind::Readiness, c.readiness_probe.as_ref()),
        (Kind::Liveness, c.liveness_probe.as_ref()),
    ]
}

/// An IANA service name, what a named port must be.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

fn check_port(port: &IntOrString, at: &str, p: &mut Vec<String>) {
    match port {
        IntOrString::Int(n) if !(1..=65535).contains(n) => p.push(format!(
            "{at}: Invalid value: {n}: must be between 1 and 65535, inclusive"
        )),
        IntOrString::String(s) if !is_port_name(s) => p.push(format!(
            "{at}: Invalid value: {s:?}: must be no more than 15 characters, contain only lowercase alphanumerics and '-', and contain at least one letter"
        )),
        _ => {}
    }
}

/// Problems with one of a container's probes (`at` is the container's path).
pub fn validate(probe: &Probe, kind: Kind, at: &str) -> Vec<String> {
    let at = format!("{at}.{}", kind.field());
    let mut p = Vec::new();
    let handlers = [
        probe.exec.is_some(),
        probe.http_get.is_some(),
        probe.tcp_socket.is_some(),
        probe.grpc.is_some(),
    ]
    .iter()
    .filter(|h| **h)
    .count();
    match handlers {
        0 => p.push(format!("{at}: Required value: must specify a handler type")),
        1 => {}
        _ => p.push(format!(
            "{at}: Forbidden: may not specify more than 1 handler type"
        )),
    }
    for (field, v) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(n) = v.filter(|n| *n < 0) {
            p.push(format!(
                "{at}.{field}: Invalid value: {n}: must be greater than or equal to 0"
            ));
        }
    }
    let success = or_default(probe.success_threshold, 1);
    if kind != Kind::Readiness && success != 1 {
        p.push(format!(
            "{at}.successThreshold: Invalid value: {success}: must be 1"
        ));
    }
    if kind == Kind::Readiness && probe.termination_grace_period_seconds.is_some() {
        p.push(format!(
            "{at}.terminationGracePeriodSeconds: Invalid value: must not be set for readinessProbes"
        ));
    }
    if let Some(h) = &probe.http_get {
        check_port(&h.port, &format!("{at}.httpGet.port"), &mut p);
        if let Some(s) = h
            .scheme
            .as_deref()
            .filter(|s| !matches!(*s, "HTTP" | "HTTPS"))
        {
            p.push(format!(
                "{at}.httpGet.scheme: Unsupported value: {s:?}: supported values: \"HTTP\", \"HTTPS\""
            ));
        }
    }
    if let Some(t) = &probe.tcp_socket {
        check_port(&t.port, &format!("{at}.tcpSocket.port"), &mut p);
        if t.host.as_deref().is_some_and(|h| !h.is_empty()) {
            p.push(format!("{at}.tcpSocket.host: Forbidden: {UNSUPPORTED}"));
        }
    }
    if let Some(e) = &probe.exec
        && e.command.as_ref().is_none_or(Vec::is_empty)
    {
        p.push(format!("{at}.exec.command: Required value"));
    }
    if probe.grpc.is_some() {
        p.push(format!("{at}.grpc: Unsupported value: {UNSUPPORTED}"));
    }
    p
}

/// The container port a probe's `port` names: the number, or the `containerPort`
/// of the container's port with that name.
pub fn resolve_port(port: &IntOrString, c: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("invalid port {n}")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("couldn't find port: {name} in container {:?}", c.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn probe(v: serde_json::Value) -> Probe {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_and_problems() {
        let t = timing(&probe(json!({"httpGet": {"port": 8080}})));
        assert_eq!(t.period, Duration::from_secs(10));
        assert_eq!((t.success_threshold, t.failure_threshold), (1, 3));
        assert!(
            validate(
                &probe(json!({"httpGet": {"port": "http"}})),
                Kind::Readiness,
                "c"
            )
            .is_empty()
        );
        let p = validate(
            &probe(json!({"httpGet": {"port": 0}, "tcpSocket": {"port": "x_y"}, "successThreshold": 2})),
            Kind::Liveness,
            "spec.containers[0]",
        )
        .join("\n");
        for want in [
            "livenessProbe: Forbidden: may not specify more than 1 handler type",
            "livenessProbe.successThreshold: Invalid value: 2: must be 1",
            "httpGet.port: Invalid value: 0",
            "tcpSocket.port: Invalid value: \"x_y\"",
        ] {
            assert!(p.contains(want), "{want} missing from\n{p}");
        }
        let c: Container = serde_json::from_value(
            json!({"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}),
        )
        .unwrap();
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert!(resolve_port(&IntOrString::String("metrics".into()), &c).is_err());
    }
}
