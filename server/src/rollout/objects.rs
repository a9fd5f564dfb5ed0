//! The objects a rollout adds beside a stable Deployment, built from the stable ones.
//! Pure: objects in, objects out.
//!
//! The new version runs as a second Deployment, `<deployment>-canary`, with the stable
//! pod template and the new image. Its pods carry [`CANARY_LABEL`]; which of the stable
//! labels they keep decides who sends them traffic:
//! - `replicas` traffic (and rolling batches): all of them, so the stable Service
//!   spreads requests over old and new pods by their numbers;
//! - a router (`gateway`, `nginx`) and blue-green: none of the stable Service's selector
//!   keys, so only the rollout's own Service (`<service>-canary` or the preview Service)
//!   reaches them, and the router or the switch decides how much.
//!
//! Everything created is labelled ([`ROLLOUT_LABEL`], managed-by) and owned by the stable
//! Deployment, so deleting that removes them too; the controller removes them itself
//! when a rollout ends either way.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};

/// On every pod of the new version: the stable Deployment's name.
pub const CANARY_LABEL: &str = "slipway.dev/canary";
/// On every object a rollout creates: the rollout's id.
pub const ROLLOUT_LABEL: &str = "slipway.dev/rollout";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "slipway");

/// `<deployment>-canary`.
pub fn canary_name(deployment: &str) -> String {
    format!("{deployment}-canary")
}

/// The stable pods' container image (the named container, else the first).
pub fn container_image(d: &Deployment, container: Option<&str>) -> Option<String> {
    let spec = d.spec.as_ref()?.template.spec.as_ref()?;
    let c = match container {
        Some(name) => spec.containers.iter().find(|c| c.name == name)?,
        None => spec.containers.first()?,
    };
    c.image.clone()
}

/// The stable Deployment's replica count (the API default is 1).
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn owner(d: &Deployment) -> Result<OwnerReference, String> {
    let name = d.metadata.name.clone().unwrap_or_default();
    let uid = d
        .metadata
        .uid
        .clone()
        .ok_or_else(|| format!("Deployment {name} has no uid"))?;
    Ok(OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name,
        uid,
        controller: Some(false),
        block_owner_deletion: Some(false),
    })
}

fn meta(name: &str, stable: &Deployment, rollout: i64) -> Result<ObjectMeta, String> {
    let mut labels = BTreeMap::new();
    labels.insert(ROLLOUT_LABEL.to_string(), rollout.to_string());
    labels.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
    Ok(ObjectMeta {
        name: Some(name.to_string()),
        namespace: stable.metadata.namespace.clone(),
        labels: Some(labels),
        owner_references: Some(vec![owner(stable)?]),
        ..Default::default()
    })
}

/// What a canary's pods should carry for the traffic to reach them as intended (see
/// the module doc): `keep_stable_labels` for `replicas` traffic.
pub struct CanaryPods<'a> {
    pub image: &'a str,
    pub container: Option<&'a str>,
    pub replicas: i32,
    pub keep_stable_labels: bool,
    /// The stable Service's selector: keys dropped when not keeping the stable labels.
    pub service_selector: &'a BTreeMap<String, String>,
    pub rollout: i64,
}

/// The new version's Deployment.
pub fn canary_deployment(stable: &Deployment, pods: &CanaryPods<'_>) -> Result<Deployment, String> {
    let name = stable.metadata.name.clone().unwrap_or_default();
    let spec = stable
        .spec
        .as_ref()
        .ok_or_else(|| format!("Deployment {name} has no spec"))?;
    let mut template = spec.template.clone();
    let tmeta = template.metadata.get_or_insert_with(Default::default);
    let labels = tmeta.labels.get_or_insert_with(Default::default);
    if !pods.keep_stable_labels {
        for k in pods.service_selector.keys() {
            labels.remove(k);
        }
        // The stable Deployment's selector must not match them either, or its
        // ReplicaSets would count them.
        if let Some(sel) = &spec.selector.match_labels {
            for k in sel.keys() {
                labels.remove(k);
            }
        }
    }
    labels.remove("pod-template-hash");
    labels.insert(CANARY_LABEL.to_string(), name.clone());
    let pod = template
        .spec
        .as_mut()
        .ok_or_else(|| format!("Deployment {name} has no pod spec"))?;
    let c = match pods.container {
        Some(want) => pod
            .containers
            .iter_mut()
            .find(|c| c.name == want)
            .ok_or_else(|| format!("Deployment {name} has no container `{want}`"))?,
        None => pod
            .containers
            .first_mut()
            .ok_or_else(|| format!("Deployment {name} has no containers"))?,
    };
    c.image = Some(pods.image.to_string());
    let mut selector = BTreeMap::new();
    selector.insert(CANARY_LABEL.to_string(), name.clone());
    Ok(Deployment {
        metadata: meta(&canary_name(&name), stable, pods.rollout)?,
        spec: Some(DeploymentSpec {
            replicas: Some(pods.replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template,
            min_ready_seconds: spec.min_ready_seconds,
            progress_deadline_seconds: spec.progress_deadline_seconds,
            strategy: spec.strategy.clone(),
            ..Default::default()
        }),
        status: None,
    })
}

/// A Service like the stable one (its ports) that selects only the new version's pods:
/// the canary Service a router sends the canary's share to, or blue-green's preview.
pub fn canary_service(
    name: &str,
    stable_deployment: &Deployment,
    stable_service: &Service,
    rollout: i64,
) -> Result<Service, String> {
    let sname = stable_service.metadata.name.clone().unwrap_or_default();
    let ports: Vec<ServicePort> = stable_service
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .ok_or_else(|| format!("Service {sname} has no ports"))?
        .into_iter()
        .map(|p| ServicePort {
            name: p.name,
            port: p.port,
            target_port: p.target_port,
            protocol: p.protocol,
            app_protocol: p.app_protocol,
            node_port: None,
        })
        .collect();
    let mut selector = BTreeMap::new();
    selector.insert(
        CANARY_LABEL.to_string(),
        stable_deployment.metadata.name.clone().unwrap_or_default(),
    );
    Ok(Service {
        metadata: meta(name, stable_deployment, rollout)?,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(ports),
            selector: Some(selector),
            ..Default::default()
        }),
        status: None,
    })
}

/// The selector that makes the stable Service send everything to the new version
/// (blue-green's switch).
pub fn switched_selector(deployment: &str) -> BTreeMap<String, String> {
    let mut s = BTreeMap::new();
    s.insert(CANARY_LABEL.to_string(), deployment.to_string());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn stable() -> Deployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": { "name": "web", "namespace": "shop", "uid": "u-1" },
            "spec": {
                "replicas": 4,
                "selector": { "matchLabels": { "app": "web" } },
                "template": {
                    "metadata": { "labels": { "app": "web", "tier": "front" } },
                    "spec": { "containers": [
                        { "name": "web", "image": "reg/web:1", "ports": [{ "containerPort": 8080 }] },
                        { "name": "sidecar", "image": "reg/side:1" }
                    ] }
                }
            }
        }))
        .unwrap()
    }

    fn selector() -> BTreeMap<String, String> {
        [("app".to_string(), "web".to_string())].into()
    }

    #[test]
    fn a_routed_canary_drops_the_stable_selector_and_is_owned_by_the_stable_deployment() {
        let sel = selector();
        let d = canary_deployment(
            &stable(),
            &CanaryPods {
                image: "reg/web@sha256:ab",
                container: Some("web"),
                replicas: 1,
                keep_stable_labels: false,
                service_selector: &sel,
                rollout: 7,
            },
        )
        .unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("web-canary"));
        let spec = d.spec.unwrap();
        let labels = spec.template.metadata.unwrap().labels.unwrap();
        assert!(!labels.contains_key("app"), "{labels:?}");
        assert_eq!(labels[CANARY_LABEL], "web");
        assert_eq!(labels["tier"], "front");
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("reg/web@sha256:ab")
        );
        assert_eq!(pod.containers[1].image.as_deref(), Some("reg/side:1"));
        let owner = &d.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("Deployment", "u-1")
        );
    }

    #[test]
    fn a_replicas_canary_keeps_the_stable_labels_so_the_stable_service_reaches_it() {
        let sel = selector();
        let d = canary_deployment(
            &stable(),
            &CanaryPods {
                image: "reg/web@sha256:ab",
                container: None,
                replicas: 2,
                keep_stable_labels: true,
                service_selector: &sel,
                rollout: 7,
            },
        )
        .unwrap();
        let labels = d.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["app"], "web");
        assert_eq!(labels[CANARY_LABEL], "web");
    }

    #[test]
    fn an_unknown_container_is_an_error_that_names_it() {
        let sel = selector();
        let e = canary_deployment(
            &stable(),
            &CanaryPods {
                image: "x@sha256:1",
                container: Some("api"),
                replicas: 1,
                keep_stable_labels: false,
                service_selector: &sel,
                rollout: 1,
            },
        )
        .unwrap_err();
        assert!(e.contains("no container `api`"), "{e}");
    }
}
