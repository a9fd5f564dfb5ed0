//! The API server's defaults for what it stores of apps/v1 workloads, applied on
//! every create and update before validation, as the real decoder does
//! (`SetDefaults_Deployment`, `SetDefaults_ReplicaSet` in pkg/apis/apps/v1/defaults.go;
//! `SetDefaults_PodSpec`, `SetDefaults_Container`, `SetDefaults_Probe`,
//! `SetDefaults_HTTPGetAction`, `SetDefaults_SecretVolumeSource` in
//! pkg/apis/core/v1/defaults.go). A client reading back what it wrote sees them, as
//! on a cluster. Pods created directly get none (the double's pod API predates
//! this; the pods a ReplicaSet creates carry its defaulted template).

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentStrategy, ReplicaSet, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{Container, PodSecurityContext, PodTemplateSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub fn deployment(d: &mut Deployment) {
    let spec = d.spec.get_or_insert_with(Default::default);
    spec.replicas.get_or_insert(1);
    let strategy = spec
        .strategy
        .get_or_insert_with(DeploymentStrategy::default);
    let kind = strategy
        .type_
        .get_or_insert_with(|| "RollingUpdate".into())
        .clone();
    if kind == "RollingUpdate" {
        let rolling = strategy
            .rolling_update
            .get_or_insert_with(RollingUpdateDeployment::default);
        rolling
            .max_unavailable
            .get_or_insert_with(|| IntOrString::String("25%".into()));
        rolling
            .max_surge
            .get_or_insert_with(|| IntOrString::String("25%".into()));
    }
    spec.revision_history_limit.get_or_insert(10);
    spec.progress_deadline_seconds.get_or_insert(600);
    pod_template(&mut spec.template);
}

pub fn replica_set(rs: &mut ReplicaSet) {
    let spec = rs.spec.get_or_insert_with(Default::default);
    spec.replicas.get_or_insert(1);
    if let Some(t) = spec.template.as_mut() {
        pod_template(t);
    }
}

pub fn pod_template(t: &mut PodTemplateSpec) {
    let Some(spec) = t.spec.as_mut() else { return };
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context
        .get_or_insert_with(PodSecurityContext::default);
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        container(c);
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(s) = v.secret.as_mut() {
            s.default_mode.get_or_insert(0o644);
        }
    }
}

/// `Always` for an image without a tag or tagged `latest` (and no digest), else
/// `IfNotPresent`.
fn pull_policy(image: &str) -> &'static str {
    if image.contains('@') {
        return "IfNotPresent";
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) if tag != "latest" => "IfNotPresent",
        _ => "Always",
    }
}

fn container(c: &mut Container) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    let policy = pull_policy(c.image.as_deref().unwrap_or_default());
    c.image_pull_policy.get_or_insert_with(|| policy.into());
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for p in [
        c.readiness_probe.as_mut(),
        c.liveness_probe.as_mut(),
        c.startup_probe.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        probe(p);
    }
}

fn probe(p: &mut Probe) {
    // Zero is "unset" for these fields, as in the Go defaulting.
    let set = |v: &mut Option<i32>, default: i32| {
        if v.is_none_or(|n| n == 0) {
            *v = Some(default);
        }
    };
    set(&mut p.timeout_seconds, 1);
    set(&mut p.period_seconds, 10);
    set(&mut p.success_threshold, 1);
    set(&mut p.failure_threshold, 3);
    if let Some(h) = p.http_get.as_mut() {
        if h.path.as_deref().is_none_or(str::is_empty) {
            h.path = Some("/".into());
        }
        h.scheme.get_or_insert_with(|| "HTTP".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_minimal_deployment_is_filled_in() {
        let mut d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "registry:5000/app@sha256:00",
                                                           "readinessProbe": {"httpGet": {"port": 8080}}}]}}}
        }))
        .unwrap();
        deployment(&mut d);
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["spec"]["replicas"], 1);
        assert_eq!(v["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(v["spec"]["progressDeadlineSeconds"], 600);
        let t = &v["spec"]["template"]["spec"];
        assert_eq!(t["restartPolicy"], "Always");
        assert_eq!(t["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(t["containers"][0]["readinessProbe"]["periodSeconds"], 10);
        assert_eq!(t["containers"][0]["readinessProbe"]["httpGet"]["path"], "/");
        assert_eq!(pull_policy("slipway-test/httpd"), "Always");
        assert_eq!(pull_policy("127.0.0.1:5000/app:v2"), "IfNotPresent");
    }
}
