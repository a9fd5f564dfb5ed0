//! What the double does on the Docker engine: names and labels of the objects it
//! creates for a pod, the mapping of a Kubernetes container onto a Docker container,
//! and removal by label (so cleanup needs no memory of what was created).
//!
//! Here: names, labels, engine errors and removal by label. `sandbox` holds a pod's
//! volumes and network namespace; `container` maps a Kubernetes container onto a
//! Docker container.

mod container;
mod sandbox;

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListVolumesOptionsBuilder, RemoveContainerOptionsBuilder,
    RemoveVolumeOptionsBuilder,
};
use k8s_openapi::api::core::v1::Pod;

pub use container::{Waiting, container_body, image_user};
pub use sandbox::{PodNetwork, create_volumes, fill_secret_volumes, start_sandbox};

/// Label on every Docker object of one double instance (value: the instance id).
pub const INSTANCE_LABEL: &str = "io.slipway.kube-double";
/// Label naming the pod uid an object belongs to.
pub const POD_UID_LABEL: &str = "io.slipway.kube-double.pod-uid";
/// Label with `namespace/name` of the pod, for people reading `docker ps`.
pub const POD_LABEL: &str = "io.slipway.kube-double.pod";

/// Names of one pod's Docker objects. Kubernetes names are DNS labels, so `_`
/// cannot clash with a container or volume named by the pod.
#[derive(Debug, Clone)]
pub struct PodNames {
    prefix: String,
}

impl PodNames {
    pub fn new(instance: &str, uid: &str) -> PodNames {
        PodNames {
            prefix: format!("kd-{instance}-{uid}"),
        }
    }
    pub fn sandbox(&self) -> String {
        format!("{}_sandbox", self.prefix)
    }
    pub fn container(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }
    pub fn volume(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix)
    }
}

pub fn labels(instance: &str, pod: &Pod) -> HashMap<String, String> {
    HashMap::from([
        (INSTANCE_LABEL.to_owned(), instance.to_owned()),
        (
            POD_UID_LABEL.to_owned(),
            pod.metadata.uid.clone().unwrap_or_default(),
        ),
        (
            POD_LABEL.to_owned(),
            format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
        ),
    ])
}

/// The engine's own message when it sent one.
pub fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

pub fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// What [`remove_labelled`] removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Removed {
    pub containers: usize,
    pub volumes: usize,
    pub errors: Vec<String>,
}

/// Force-removes every container, then every volume, labelled `key=value`. Keeps
/// going after a failure and reports it.
pub async fn remove_labelled(docker: &Docker, key: &str, value: &str) -> Removed {
    let filter = HashMap::from([("label".to_owned(), vec![format!("{key}={value}")])]);
    let mut removed = Removed::default();
    match docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
    {
        Ok(list) => {
            for id in list.into_iter().filter_map(|c| c.id) {
                let opts = RemoveContainerOptionsBuilder::new().force(true).build();
                match docker.remove_container(&id, Some(opts)).await {
                    Ok(()) => removed.containers += 1,
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => removed
                        .errors
                        .push(format!("container {id}: {}", message(&e))),
                }
            }
        }
        Err(e) => removed
            .errors
            .push(format!("listing containers: {}", message(&e))),
    }
    match docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
    {
        Ok(list) => {
            for v in list.volumes.unwrap_or_default() {
                // A container removal still finishing keeps the volume busy briefly:
                // bounded retries.
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let opts = RemoveVolumeOptionsBuilder::new().force(true).build();
                    match docker.remove_volume(&v.name, Some(opts)).await {
                        Ok(()) => {
                            removed.volumes += 1;
                            break;
                        }
                        Err(e) if is_not_found(&e) => break,
                        Err(DockerError::DockerResponseServerError {
                            status_code: 409, ..
                        }) if attempt < 20 => {
                            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                        }
                        Err(e) => {
                            removed
                                .errors
                                .push(format!("volume {}: {}", v.name, message(&e)));
                            break;
                        }
                    }
                }
            }
        }
        Err(e) => removed
            .errors
            .push(format!("listing volumes: {}", message(&e))),
    }
    removed
}
