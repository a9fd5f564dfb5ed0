//! Reading a pod's status: where a container is, and what keeps a pod from
//! progressing. Failures are read from the pod itself (container `waiting`
//! reasons, the `PodScheduled` condition, the phase) rather than from Events,
//! which the runner's Role cannot read — and which would need a second watch.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::backend::StepExit;
use crate::error::Error;

/// Where a container is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not started (or no status yet).
    Waiting,
    Running,
    Exited(StepExit),
}

pub fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

pub fn progress(pod: &Pod, container: &str) -> Progress {
    let Some(state) = container_status(pod, container).and_then(|c| c.state.as_ref()) else {
        return Progress::Waiting;
    };
    if let Some(t) = &state.terminated {
        return Progress::Exited(StepExit {
            exit_code: t.exit_code,
            oom_killed: t.reason.as_deref() == Some("OOMKilled"),
        });
    }
    if state.running.is_some() {
        return Progress::Running;
    }
    Progress::Waiting
}

/// Why a pod cannot progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// A container's image cannot be pulled (`ErrImagePull`, `ImagePullBackOff`,
    /// `InvalidImageName`, …): fatal at once, retrying the pull will not help
    /// within a stage's time.
    ImagePull { image: String, message: String },
    /// A container cannot be created from its spec (a missing secret key, an
    /// image that runs as root against `runAsNonRoot`): fatal after a short grace,
    /// as a referenced object may still be on its way.
    Config { container: String, message: String },
    /// The scheduler found no node: fatal after the scheduling timeout (a cluster
    /// autoscaler may add one).
    Unschedulable(String),
    /// The pod failed for a reason other than a step's exit (deadline, eviction).
    Failed(String),
}

const PULL_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// The first reason `pod` is stuck, if any.
pub fn blocker(pod: &Pod) -> Option<Blocker> {
    let status = pod.status.as_ref()?;
    let spec = pod.spec.as_ref();
    let image_of = |name: &str| {
        spec.into_iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
            })
            .find(|c| c.name == name)
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    for c in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
    {
        let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = w.reason.clone().unwrap_or_default();
        let message = w.message.clone().unwrap_or_default();
        let detail = if message.is_empty() {
            reason.clone()
        } else {
            format!("{reason}: {message}")
        };
        if PULL_REASONS.contains(&reason.as_str()) {
            return Some(Blocker::ImagePull {
                image: image_of(&c.name),
                message: detail,
            });
        }
        if reason == "CreateContainerConfigError" || reason == "CreateContainerError" {
            return Some(Blocker::Config {
                container: c.name.clone(),
                message: detail,
            });
        }
    }
    if status.phase.as_deref() == Some("Failed") {
        let reason = status.reason.clone().unwrap_or_else(|| "Failed".into());
        let message = status.message.clone().unwrap_or_default();
        return Some(Blocker::Failed(if message.is_empty() {
            reason
        } else {
            format!("{reason}: {message}")
        }));
    }
    let unschedulable = status.conditions.iter().flatten().find(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if let Some(c) = unschedulable {
        return Some(Blocker::Unschedulable(
            c.message.clone().unwrap_or_default(),
        ));
    }
    None
}

impl Blocker {
    /// The error a stage fails with.
    pub fn into_error(self) -> Error {
        match self {
            Blocker::ImagePull { image, message } => Error::ImagePull {
                image,
                reason: message,
            },
            Blocker::Config { container, message } => Error::InvalidSpec(format!(
                "container `{container}` cannot be created: {message}"
            )),
            Blocker::Unschedulable(message) => Error::Unschedulable(message),
            Blocker::Failed(message) => Error::Backend {
                op: "pod",
                message: format!("the stage's pod failed: {message}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "workspace", "image": "helper"}],
                     "initContainers": [{"name": "step-0", "image": "app:1"}]},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn pull_errors_name_the_image_and_reason() {
        let p = pod(json!({"phase": "Pending", "initContainerStatuses": [{
            "name": "step-0", "image": "app:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}));
        assert_eq!(
            blocker(&p),
            Some(Blocker::ImagePull {
                image: "app:1".into(),
                message: "ErrImagePull: not found".into()
            })
        );
        assert_eq!(progress(&p, "step-0"), Progress::Waiting);
    }

    #[test]
    fn exits_and_oom_come_from_terminated_states() {
        let p = pod(json!({"phase": "Failed", "initContainerStatuses": [{
            "name": "step-0", "image": "app:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}));
        assert_eq!(
            progress(&p, "step-0"),
            Progress::Exited(StepExit {
                exit_code: 137,
                oom_killed: true
            })
        );
        assert!(matches!(blocker(&p), Some(Blocker::Failed(_))));
    }

    #[test]
    fn unschedulable_is_read_from_the_condition() {
        let p = pod(json!({"phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}]}));
        assert!(
            matches!(blocker(&p), Some(Blocker::Unschedulable(m)) if m.contains("node affinity"))
        );
    }
}
