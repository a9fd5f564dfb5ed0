//! Checks a pod before it is stored: what the API server would reject (names,
//! required fields, references) and what the double deliberately does not
//! implement (other volume types, host namespaces, valueFrom sources other than
//! secrets, gRPC probes). Both are 422 Invalid, so a backend that generates
//! something the double cannot honour fails loudly instead of being half-run.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, Pod, Secret};

use super::{probe, quantity};

const UNSUPPORTED: &str = "not supported by the Kubernetes test double";

/// DNS-1123 label: what container, volume and port names must be.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// DNS-1123 subdomain: what object names must be.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

pub(super) fn check_name(name: Option<&str>, generate: Option<&str>, problems: &mut Vec<String>) {
    match (name.filter(|n| !n.is_empty()), generate) {
        (Some(n), _) if !is_dns_subdomain(n) => problems.push(format!(
            "metadata.name: Invalid value: {n:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        )),
        (Some(_), _) => {}
        (None, Some(g)) if !g.is_empty() => {}
        (None, _) => problems.push("metadata.name: Required value: name or generateName is required".into()),
    }
}

pub fn pod(pod: &Pod) -> Vec<String> {
    let mut p = Vec::new();
    check_name(
        pod.metadata.name.as_deref(),
        pod.metadata.generate_name.as_deref(),
        &mut p,
    );
    let Some(spec) = &pod.spec else {
        p.push("spec: Required value".into());
        return p;
    };
    // Unset is the API default, Always.
    match spec.restart_policy.as_deref() {
        None | Some("Always" | "OnFailure" | "Never") => {}
        Some(other) => p.push(format!(
            "spec.restartPolicy: Unsupported value: {other:?}: supported values: \"Always\", \"OnFailure\", \"Never\""
        )),
    }
    if spec.containers.is_empty() {
        p.push("spec.containers: Required value".into());
    }
    for (field, set) in [
        ("spec.hostNetwork", spec.host_network),
        ("spec.hostPID", spec.host_pid),
        ("spec.hostIPC", spec.host_ipc),
    ] {
        if set == Some(true) {
            p.push(format!("{field}: Forbidden: {UNSUPPORTED}"));
        }
    }
    if spec.active_deadline_seconds.is_some_and(|s| s <= 0) {
        p.push("spec.activeDeadlineSeconds: Invalid value: must be greater than 0".into());
    }
    let mut volumes = HashSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        if !is_dns_label(&v.name) || !volumes.insert(v.name.as_str()) {
            p.push(format!(
                "spec.volumes[{i}].name: Invalid value: {:?}",
                v.name
            ));
        }
        let supported = match (&v.empty_dir, &v.secret) {
            (Some(_), None) => true,
            (None, Some(s)) => s.secret_name.as_deref().is_some_and(|n| !n.is_empty()),
            _ => false,
        };
        // Any other source is set as well if the round trip shows more than the name
        // and the one supported source.
        let fields = serde_json::to_value(v)
            .ok()
            .and_then(|j| j.as_object().map(|o| o.len()))
            .unwrap_or(0);
        if !supported || fields != 2 {
            p.push(format!(
                "spec.volumes[{i}]: Unsupported value: {:?}: {UNSUPPORTED} (emptyDir and secret volumes only)",
                v.name
            ));
        }
    }
    let mut names = HashSet::new();
    let inits = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", c));
    let mains = spec.containers.iter().map(|c| ("containers", c));
    for (i, (list, c)) in inits.chain(mains).enumerate() {
        let at = format!("spec.{list}[{}]", index_in(spec, list, i));
        container(c, &at, list == "initContainers", &volumes, &mut p);
        if !names.insert(c.name.as_str()) {
            p.push(format!("{at}.name: Duplicate value: {:?}", c.name));
        }
    }
    p
}

/// Position within its own list, from the position in init ++ regular.
fn index_in(spec: &k8s_openapi::api::core::v1::PodSpec, list: &str, i: usize) -> usize {
    if list == "initContainers" {
        i
    } else {
        i - spec.init_containers.as_ref().map_or(0, Vec::len)
    }
}

fn container(c: &Container, at: &str, init: bool, volumes: &HashSet<&str>, p: &mut Vec<String>) {
    if !is_dns_label(&c.name) {
        p.push(format!("{at}.name: Invalid value: {:?}", c.name));
    }
    if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
        p.push(format!("{at}.image: Required value"));
    }
    match c.restart_policy.as_deref() {
        None => {}
        Some("Always") if init => {}
        Some(other) => p.push(format!(
            "{at}.restartPolicy: Unsupported value: {other:?}: only \"Always\" on init containers (sidecars)"
        )),
    }
    let sidecar = init && c.restart_policy.as_deref() == Some("Always");
    for (kind, spec) in probe::of(c) {
        let Some(spec) = spec else { continue };
        if init && !sidecar {
            p.push(format!(
                "{at}.{}: Forbidden: may not be set for init containers without restartPolicy=Always",
                kind.field()
            ));
        } else {
            p.extend(probe::validate(spec, kind, at));
        }
    }
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(m.name.as_str()) {
            p.push(format!(
                "{at}.volumeMounts[{j}].name: Not found: {:?}",
                m.name
            ));
        }
        if !m.mount_path.starts_with('/') {
            p.push(format!(
                "{at}.volumeMounts[{j}].mountPath: Invalid value: {:?}: must be absolute",
                m.mount_path
            ));
        }
        if m.sub_path.as_deref().is_some_and(|s| !s.is_empty()) {
            p.push(format!(
                "{at}.volumeMounts[{j}].subPath: Forbidden: {UNSUPPORTED}"
            ));
        }
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        if let Some(from) = &e.value_from {
            let secret_only = from.secret_key_ref.is_some()
                && from.config_map_key_ref.is_none()
                && from.field_ref.is_none()
                && from.resource_field_ref.is_none();
            if !secret_only {
                p.push(format!(
                    "{at}.env[{j}].valueFrom: Unsupported value: {UNSUPPORTED} (secretKeyRef only)"
                ));
            }
        }
    }
    for (j, e) in c.env_from.iter().flatten().enumerate() {
        if e.secret_ref.is_none() || e.config_map_ref.is_some() {
            p.push(format!(
                "{at}.envFrom[{j}]: Unsupported value: {UNSUPPORTED} (secretRef only)"
            ));
        }
    }
    if let Some(res) = &c.resources {
        for (which, map) in [("limits", &res.limits), ("requests", &res.requests)] {
            for (k, q) in map.iter().flatten() {
                if quantity::parse(&q.0).is_none() {
                    p.push(format!(
                        "{at}.resources.{which}[{k}]: Invalid value: {:?}: quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                        q.0
                    ));
                }
            }
        }
    }
    if c.security_context
        .as_ref()
        .is_some_and(|s| s.privileged == Some(true))
    {
        // Accepted by a real API server (unless admission forbids it); refusing it
        // here keeps privileged containers off the shared test engine.
        p.push(format!(
            "{at}.securityContext.privileged: Forbidden: {UNSUPPORTED}"
        ));
    }
    let sc = c.security_context.as_ref();
    let profiles = [
        (
            "seccompProfile",
            sc.and_then(|s| s.seccomp_profile.as_ref())
                .map(|p| &p.type_),
        ),
        (
            "appArmorProfile",
            sc.and_then(|s| s.app_armor_profile.as_ref())
                .map(|p| &p.type_),
        ),
    ];
    for (field, kind) in profiles {
        // The engine has no node-local profiles to load.
        if kind.is_some_and(|k| k == "Localhost") {
            p.push(format!(
                "{at}.securityContext.{field}.type: Unsupported value: \"Localhost\": {UNSUPPORTED}"
            ));
        }
    }
}

pub fn secret(secret: &Secret) -> Vec<String> {
    let mut p = Vec::new();
    check_name(
        secret.metadata.name.as_deref(),
        secret.metadata.generate_name.as_deref(),
        &mut p,
    );
    let keys = secret
        .data
        .iter()
        .flat_map(|d| d.keys())
        .chain(secret.string_data.iter().flat_map(|d| d.keys()));
    // Typed secrets must carry their key, as the API server checks.
    let has = |key: &str| {
        secret.data.as_ref().is_some_and(|d| d.contains_key(key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(key))
    };
    match secret.type_.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => {
            let raw = secret
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
                .map(|b| b.0.clone())
                .or_else(|| {
                    secret
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(".dockerconfigjson"))
                        .map(|s| s.clone().into_bytes())
                });
            match raw {
                None => p.push("data[.dockerconfigjson]: Required value".into()),
                Some(raw) if serde_json::from_slice::<serde_json::Value>(&raw).is_err() => {
                    p.push("data[.dockerconfigjson]: Invalid value: \"<secret contents redacted>\": invalid JSON".into())
                }
                Some(_) => {}
            }
        }
        Some("kubernetes.io/basic-auth") if !has("username") && !has("password") => {
            p.push("data[username]: Required value: either username or password must be set".into())
        }
        _ => {}
    }
    for k in keys {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            p.push(format!(
                "data[{k}]: Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn accepts_a_plain_pod_and_names_each_problem() {
        let ok = parse(json!({
            "metadata": {"name": "p"},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "x"}]}
        }));
        assert!(pod(&ok).is_empty(), "{:?}", pod(&ok));
        let bad = parse(json!({
            "metadata": {"name": "P!"},
            "spec": {
                "restartPolicy": "Sometimes",
                "containers": [{"name": "a", "image": "", "volumeMounts": [{"name": "nope", "mountPath": "rel"}]},
                               {"name": "a", "image": "x", "resources": {"limits": {"memory": "12Qi"}}}],
                "volumes": [{"name": "h", "hostPath": {"path": "/"}}]
            }
        }));
        let problems = pod(&bad).join("\n");
        for want in [
            "metadata.name",
            "spec.restartPolicy",
            "spec.containers[0].image",
            "volumeMounts[0].name: Not found",
            "mountPath",
            "spec.containers[1].name: Duplicate",
            "resources.limits[memory]",
            "spec.volumes[0]: Unsupported",
        ] {
            assert!(problems.contains(want), "{want} missing from:\n{problems}");
        }
    }
}
