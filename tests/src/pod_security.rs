//! The Pod Security Standard `restricted` profile (Kubernetes 1.30), as a check over a
//! pod in JSON form: what the API server's admission would refuse in a namespace labelled
//! `pod-security.kubernetes.io/enforce: restricted`.
//!
//! No cluster runs here, so the tests check every pod Slipway ships or generates with
//! this instead: `deploy/` manifests and, with the Kubernetes backend, each build pod.
//! The rules follow <https://kubernetes.io/docs/concepts/security/pod-security-standards/>
//! (baseline, then what restricted adds) and upstream's checks in
//! `k8s.io/pod-security-admission/policy` (`check_runAsNonRoot.go`: a pod-level `false`
//! is refused even when every container says `true`; `check_hostProbesAndHostLifecycle.go`,
//! baseline from 1.34: no `host` in a probe's or lifecycle handler's `httpGet`/`tcpSocket`);
//! each violation is reported with the field path.

use serde_json::Value;

/// Volume types `restricted` allows; everything else (hostPath above all) is refused.
const ALLOWED_VOLUME_TYPES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

/// Sysctls the baseline profile calls safe (namespaced, harmless to neighbours).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

const CONTAINER_LISTS: &[&str] = &["initContainers", "containers", "ephemeralContainers"];

/// Every way `pod` breaks the `restricted` profile; empty when it complies.
///
/// `pod` is anything with a pod `spec` and optional `metadata`: a Pod, or the `template`
/// of a Deployment, Job, StatefulSet….
pub fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut v = Vec::new();
    let spec = &pod["spec"];
    if !spec.is_object() {
        v.push("spec: missing, so nothing can be checked".to_string());
        return v;
    }
    let pod_sc = &spec["securityContext"];

    // Baseline: host namespaces.
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == Value::Bool(true) {
            v.push(format!("spec.{field}: must not be true"));
        }
    }
    if pod_sc["windowsOptions"]["hostProcess"] == Value::Bool(true) {
        v.push("spec.securityContext.windowsOptions.hostProcess: must not be true".into());
    }
    check_selinux(&pod_sc["seLinuxOptions"], "spec.securityContext", &mut v);
    check_apparmor_field(&pod_sc["appArmorProfile"], "spec.securityContext", &mut v);
    for sysctl in pod_sc["sysctls"].as_array().into_iter().flatten() {
        let name = sysctl["name"].as_str().unwrap_or("");
        if !SAFE_SYSCTLS.contains(&name) {
            v.push(format!(
                "spec.securityContext.sysctls: `{name}` is not a safe sysctl"
            ));
        }
    }
    if let Some(annotations) = pod["metadata"]["annotations"].as_object() {
        for (key, value) in annotations {
            let value = value.as_str().unwrap_or("");
            if key.starts_with("container.apparmor.security.beta.kubernetes.io/")
                && value != "runtime/default"
                && !value.starts_with("localhost/")
            {
                v.push(format!("metadata.annotations[{key}]: AppArmor `{value}`"));
            }
        }
    }

    // Restricted: volume types.
    for (i, volume) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = volume["name"].as_str().unwrap_or("?");
        let Some(fields) = volume.as_object() else {
            continue;
        };
        for kind in fields.keys().filter(|k| k.as_str() != "name") {
            if !ALLOWED_VOLUME_TYPES.contains(&kind.as_str()) {
                v.push(format!(
                    "spec.volumes[{i}] ({name}): volume type `{kind}` is not allowed"
                ));
            }
        }
    }

    // Restricted: pod-level settings that containers may inherit.
    if pod_sc["runAsUser"] == 0 {
        v.push("spec.securityContext.runAsUser: must not be 0 (root)".into());
    }
    let pod_non_root = pod_sc["runAsNonRoot"] == Value::Bool(true);
    if pod_sc["runAsNonRoot"] == Value::Bool(false) {
        v.push("spec.securityContext.runAsNonRoot: must not be false".into());
    }
    let pod_seccomp_ok = seccomp_confined(&pod_sc["seccompProfile"]);
    if pod_sc["seccompProfile"]["type"] == "Unconfined" {
        v.push("spec.securityContext.seccompProfile.type: must not be Unconfined".into());
    }

    let mut any_container = false;
    for list in CONTAINER_LISTS {
        for (i, c) in spec[*list].as_array().into_iter().flatten().enumerate() {
            any_container = true;
            let at = format!(
                "spec.{list}[{i}] ({})",
                c["name"].as_str().unwrap_or("unnamed")
            );
            check_container(c, &at, pod_non_root, pod_seccomp_ok, &mut v);
        }
    }
    if !any_container {
        v.push("spec.containers: the pod has no containers".into());
    }
    v
}

fn check_container(
    c: &Value,
    at: &str,
    pod_non_root: bool,
    pod_seccomp_ok: bool,
    v: &mut Vec<String>,
) {
    let sc = &c["securityContext"];
    if sc["privileged"] == Value::Bool(true) {
        v.push(format!("{at}: securityContext.privileged must not be true"));
    }
    if sc["windowsOptions"]["hostProcess"] == Value::Bool(true) {
        v.push(format!(
            "{at}: securityContext.windowsOptions.hostProcess must not be true"
        ));
    }
    for (j, port) in c["ports"].as_array().into_iter().flatten().enumerate() {
        if port["hostPort"].as_i64().is_some_and(|p| p != 0) {
            v.push(format!("{at}: ports[{j}].hostPort must not be set"));
        }
    }
    for handler in ["livenessProbe", "readinessProbe", "startupProbe"]
        .map(|p| (p.to_string(), &c[p]))
        .into_iter()
        .chain(["postStart", "preStop"].map(|h| (format!("lifecycle.{h}"), &c["lifecycle"][h])))
    {
        for action in ["httpGet", "tcpSocket"] {
            if handler.1[action]["host"]
                .as_str()
                .is_some_and(|h| !h.is_empty())
            {
                v.push(format!("{at}: {}.{action}.host must not be set", handler.0));
            }
        }
    }
    if sc["procMount"].as_str().is_some_and(|m| m != "Default") {
        v.push(format!("{at}: securityContext.procMount must be Default"));
    }
    check_selinux(&sc["seLinuxOptions"], at, v);
    check_apparmor_field(&sc["appArmorProfile"], at, v);

    if sc["allowPrivilegeEscalation"] != Value::Bool(false) {
        v.push(format!(
            "{at}: securityContext.allowPrivilegeEscalation must be false"
        ));
    }
    // Container settings override the pod's: an explicit `false` here loses even if
    // the pod says true.
    let non_root = match &sc["runAsNonRoot"] {
        Value::Bool(b) => *b,
        _ => pod_non_root,
    };
    if !non_root {
        v.push(format!(
            "{at}: runAsNonRoot must be true (on the container or the pod)"
        ));
    }
    if sc["runAsUser"] == 0 {
        v.push(format!(
            "{at}: securityContext.runAsUser must not be 0 (root)"
        ));
    }
    let seccomp = &sc["seccompProfile"];
    if seccomp.is_object() {
        if !seccomp_confined(seccomp) {
            v.push(format!(
                "{at}: securityContext.seccompProfile.type must be RuntimeDefault or Localhost"
            ));
        }
    } else if !pod_seccomp_ok {
        v.push(format!(
            "{at}: seccompProfile must be RuntimeDefault or Localhost (on the container or the pod)"
        ));
    }
    let caps = &sc["capabilities"];
    let drops_all = caps["drop"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|d| d == "ALL");
    if !drops_all {
        v.push(format!(
            "{at}: securityContext.capabilities.drop must contain ALL"
        ));
    }
    for cap in caps["add"].as_array().into_iter().flatten() {
        if cap != "NET_BIND_SERVICE" {
            v.push(format!(
                "{at}: securityContext.capabilities.add may only hold NET_BIND_SERVICE, not {cap}"
            ));
        }
    }
}

fn seccomp_confined(profile: &Value) -> bool {
    matches!(
        profile["type"].as_str(),
        Some("RuntimeDefault" | "Localhost")
    )
}

fn check_selinux(options: &Value, at: &str, v: &mut Vec<String>) {
    if !options.is_object() {
        return;
    }
    let kind = options["type"].as_str().unwrap_or("");
    if !SELINUX_TYPES.contains(&kind) {
        v.push(format!("{at}: seLinuxOptions.type `{kind}` is not allowed"));
    }
    for field in ["user", "role"] {
        if options[field].as_str().is_some_and(|s| !s.is_empty()) {
            v.push(format!("{at}: seLinuxOptions.{field} must not be set"));
        }
    }
}

fn check_apparmor_field(profile: &Value, at: &str, v: &mut Vec<String>) {
    if profile["type"] == "Unconfined" {
        v.push(format!("{at}: appArmorProfile.type must not be Unconfined"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compliant() -> Value {
        json!({
            "spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "step",
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}
                    }
                }],
                "volumes": [{"name": "workspace", "emptyDir": {}}]
            }
        })
    }

    #[test]
    fn a_compliant_pod_has_no_violations() {
        assert_eq!(restricted_violations(&compliant()), Vec::<String>::new());
    }

    #[test]
    fn each_forbidden_setting_is_reported_with_its_path() {
        let mut pod = compliant();
        pod["spec"]["hostNetwork"] = json!(true);
        pod["spec"]["volumes"] = json!([{"name": "root", "hostPath": {"path": "/"}}]);
        let c = &mut pod["spec"]["containers"][0]["securityContext"];
        c["privileged"] = json!(true);
        c["allowPrivilegeEscalation"] = json!(true);
        c["runAsNonRoot"] = json!(false);
        c["capabilities"] = json!({"add": ["SYS_ADMIN"]});
        c["seccompProfile"] = json!({"type": "Unconfined"});
        let v = restricted_violations(&pod);
        let expect = [
            "spec.hostNetwork",
            "volume type `hostPath`",
            "privileged must not be true",
            "allowPrivilegeEscalation must be false",
            "runAsNonRoot must be true",
            "drop must contain ALL",
            "not \"SYS_ADMIN\"",
            "seccompProfile.type must be RuntimeDefault",
        ];
        for e in expect {
            assert!(v.iter().any(|m| m.contains(e)), "no `{e}` in {v:#?}");
        }
        assert_eq!(v.len(), expect.len(), "{v:#?}");
    }

    #[test]
    fn a_pod_level_false_loses_even_when_every_container_says_true() {
        let mut pod = compliant();
        pod["spec"]["securityContext"]["runAsNonRoot"] = json!(false);
        pod["spec"]["containers"][0]["securityContext"]["runAsNonRoot"] = json!(true);
        assert_eq!(
            restricted_violations(&pod),
            vec!["spec.securityContext.runAsNonRoot: must not be false".to_string()]
        );
    }

    #[test]
    fn probe_and_lifecycle_hosts_are_refused() {
        let mut pod = compliant();
        let c = &mut pod["spec"]["containers"][0];
        // Unset or empty hosts (the pod's own IP) are fine.
        c["readinessProbe"] = json!({"httpGet": {"port": 80, "host": ""}});
        c["startupProbe"] = json!({"tcpSocket": {"port": 80}});
        assert_eq!(restricted_violations(&pod), Vec::<String>::new());
        let c = &mut pod["spec"]["containers"][0];
        c["livenessProbe"] = json!({"httpGet": {"port": 80, "host": "169.254.169.254"}});
        c["lifecycle"] = json!({"preStop": {"tcpSocket": {"port": 22, "host": "10.0.0.1"}}});
        let v = restricted_violations(&pod);
        assert_eq!(
            v,
            vec![
                "spec.containers[0] (step): livenessProbe.httpGet.host must not be set",
                "spec.containers[0] (step): lifecycle.preStop.tcpSocket.host must not be set",
            ],
        );
    }

    #[test]
    fn pod_level_defaults_must_be_set_somewhere() {
        let mut pod = compliant();
        pod["spec"]["securityContext"] = json!({});
        pod["spec"]["initContainers"] = json!([{"name": "fetch", "securityContext": {
            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}}}]);
        let v = restricted_violations(&pod);
        // The init container sets its own; the step container inherits nothing.
        assert_eq!(v.len(), 2, "{v:#?}");
        assert!(
            v.iter().all(|m| m.contains("spec.containers[0] (step)")),
            "{v:#?}"
        );
    }
}
