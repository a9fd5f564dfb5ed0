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
    /// `InvalidImageName`, …). `transient` (a registry's rate limit or 5xx, the
    /// back-off between attempts: see [`super::transient`]): retried for a bounded
    /// time; otherwise (not found, refused) fatal at once.
    ImagePull {
        image: String,
        message: String,
        transient: bool,
    },
    /// A container cannot be created from its spec (a missing secret key, an
    /// image that runs as root against `runAsNonRoot`): fatal after a short grace,
    /// as a referenced object may still be on its way. `service`: the service the
    /// container runs, if it is one.
    Config {
        container: String,
        service: Option<String>,
        message: String,
    },
    /// The runtime could not create a container for a reason that passes (a
    /// `CreateContainerError` of a slow or busy runtime): retried for a bounded time.
    Transient { container: String, message: String },
    /// A service's sidecar exited, crash-loops or cannot be started: fatal at once
    /// (a service runs for the whole stage; the kubelet would only keep restarting it).
    Service { service: String, message: String },
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

/// Waiting reasons of a container the kubelet tried and failed to run
/// (pkg/kubelet/container/sync_result.go, kuberuntime_container.go).
const START_FAILURES: &[&str] = &[
    "CrashLoopBackOff",
    "RunContainerError",
    "PostStartHookError",
];

/// The service a native sidecar runs: services are the pod's sidecars in order, and
/// `hostAliases` names them in the same order (see [`super::pod`]).
pub fn service_of(pod: &Pod, container: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let index = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .position(|c| c.name == container)?;
    let named = spec
        .host_aliases
        .iter()
        .flatten()
        .flat_map(|a| a.hostnames.iter().flatten())
        .nth(index);
    Some(named.cloned().unwrap_or_else(|| container.to_owned()))
}

fn has_startup_probe(pod: &Pod, container: &str) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .any(|c| c.name == container && c.startup_probe.is_some())
}

/// `exited with code 1 (Error): <termination message>`.
fn exit_text(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> String {
    let mut text = format!("exited with code {}", t.exit_code);
    if let Some(reason) = t.reason.as_deref().filter(|r| !r.is_empty()) {
        text.push_str(&format!(" ({reason})"));
    }
    if let Some(message) = t
        .message
        .as_deref()
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        text.push_str(&format!(": {message}"));
    }
    text
}

/// Why a service's sidecar is failing, if it is: it ended (a service must run for the
/// whole stage), or the kubelet cannot start it.
fn service_failure(c: &ContainerStatus, has_ready: bool) -> Option<String> {
    let text = service_failure_text(c)?;
    Some(if has_ready {
        format!(
            "{text} (the kubelet also restarts a service whose `ready` command does not pass within the service timeout)"
        )
    } else {
        text
    })
}

fn service_failure_text(c: &ContainerStatus) -> Option<String> {
    let state = c.state.as_ref()?;
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    if let Some(t) = &state.terminated {
        return Some(exit_text(t));
    }
    let waiting = state.waiting.as_ref();
    let reason = waiting
        .and_then(|w| w.reason.as_deref())
        .unwrap_or_default();
    if START_FAILURES.contains(&reason) {
        let mut text = reason.to_owned();
        if let Some(m) = waiting
            .and_then(|w| w.message.as_deref())
            .filter(|m| !m.is_empty())
        {
            text.push_str(&format!(": {m}"));
        }
        if let Some(t) = last {
            text.push_str(&format!("; {}", exit_text(t)));
        }
        return Some(text);
    }
    // Restarted at once after its first exit: running again, but it did end.
    if c.restart_count > 0 {
        return Some(match last {
            Some(t) => format!("{} and was restarted", exit_text(t)),
            None => format!("was restarted {} times", c.restart_count),
        });
    }
    None
}

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
    // While the pod ends (deleted, past its deadline) its sidecars are stopped on
    // purpose: that is no service failure.
    let ending =
        pod.metadata.deletion_timestamp.is_some() || status.phase.as_deref() == Some("Failed");
    for c in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
    {
        let service = service_of(pod, &c.name);
        if let Some(service) = &service
            && !ending
            && let Some(message) = service_failure(c, has_startup_probe(pod, &c.name))
        {
            return Some(Blocker::Service {
                service: service.clone(),
                message,
            });
        }
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
                transient: super::transient::pull_may_pass(&reason, &message),
                message: detail,
            });
        }
        if reason == "CreateContainerError" && super::transient::create_may_pass(&message) {
            return Some(Blocker::Transient {
                container: service.unwrap_or_else(|| c.name.clone()),
                message: detail,
            });
        }
        if reason == "CreateContainerConfigError" || reason == "CreateContainerError" {
            return Some(Blocker::Config {
                container: c.name.clone(),
                service,
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
    /// The error a stage fails with (for a transient blocker: once retrying it
    /// took too long, so the stage may be retried later).
    pub fn into_error(self) -> Error {
        match self {
            Blocker::ImagePull {
                image,
                message,
                transient: false,
            } => Error::ImagePull {
                image,
                reason: message,
            },
            Blocker::ImagePull { image, message, .. } => Error::Backend {
                op: "image pull",
                message: format!("image `{image}` still cannot be pulled: {message}"),
            },
            Blocker::Transient { container, message } => Error::Backend {
                op: "create container",
                message: format!("`{container}` still cannot be created: {message}"),
            },
            Blocker::Service { service, message } => Error::ServiceFailed { service, message },
            Blocker::Config {
                service: Some(service),
                message,
                ..
            } => Error::ServiceFailed {
                service,
                message: format!("its container cannot be created: {message}"),
            },
            Blocker::Config {
                container, message, ..
            } => Error::InvalidSpec(format!(
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
                message: "ErrImagePull: not found".into(),
                transient: false,
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

    fn with_service(status: serde_json::Value, deleting: bool) -> Pod {
        let mut metadata = json!({"name": "p"});
        if deleting {
            metadata["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "metadata": metadata,
            "spec": {"containers": [{"name": "workspace", "image": "helper"}],
                     "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["cache", "db"]}],
                     "initContainers": [
                        {"name": "source", "image": "helper"},
                        {"name": "svc-0-cache", "image": "redis", "restartPolicy": "Always"},
                        {"name": "svc-1-db", "image": "postgres", "restartPolicy": "Always"},
                        {"name": "step-0", "image": "app:1"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn db(state: serde_json::Value, restarts: i32, last: serde_json::Value) -> serde_json::Value {
        json!({"phase": "Pending", "initContainerStatuses": [{
            "name": "svc-1-db", "image": "postgres", "imageID": "", "ready": false,
            "restartCount": restarts, "state": state, "lastState": last}]})
    }

    #[test]
    fn a_crashing_or_unstartable_service_is_named_with_its_reason() {
        let crashed =
            json!({"terminated": {"exitCode": 1, "reason": "Error", "message": "bad config"}});
        let cases = [
            (
                db(crashed.clone(), 0, json!({})),
                "exited with code 1 (Error): bad config",
            ),
            (
                db(json!({"running": {}}), 1, crashed.clone()),
                "exited with code 1 (Error): bad config and was restarted",
            ),
            (
                db(
                    json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container=svc-1-db"}}),
                    2,
                    crashed,
                ),
                "CrashLoopBackOff: back-off 10s restarting failed container=svc-1-db; exited with code 1 (Error): bad config",
            ),
            (
                db(
                    json!({"waiting": {"reason": "RunContainerError", "message": "exec: \"postgres\": executable file not found"}}),
                    0,
                    json!({}),
                ),
                "RunContainerError: exec: \"postgres\": executable file not found",
            ),
        ];
        for (status, expected) in cases {
            assert_eq!(
                blocker(&with_service(status.clone(), false)),
                Some(Blocker::Service {
                    service: "db".into(),
                    message: expected.into()
                })
            );
            // Stopped because the pod goes: not a failure.
            assert_eq!(blocker(&with_service(status, true)), None);
        }
        let config = db(
            json!({"waiting": {"reason": "CreateContainerConfigError", "message": "secret \"p\" not found"}}),
            0,
            json!({}),
        );
        let b = blocker(&with_service(config, false)).unwrap();
        assert!(
            matches!(&b, Blocker::Config { service: Some(s), .. } if s == "db"),
            "{b:?}"
        );
        let e = b.into_error().to_string();
        assert!(
            e.contains("service `db` failed") && e.contains("CreateContainerConfigError"),
            "{e}"
        );
        assert_eq!(
            blocker(&with_service(
                db(json!({"running": {}}), 0, json!({})),
                false
            )),
            None
        );
    }

    #[test]
    fn transient_pull_and_create_errors_are_told_apart() {
        let waiting = |reason: &str, message: &str| {
            pod(json!({"phase": "Pending", "initContainerStatuses": [{
                "name": "step-0", "image": "app:1", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": message}}}]}))
        };
        let limited = waiting(
            "ErrImagePull",
            "failed to pull and unpack image \"app:1\": unexpected status code https://r/v2/app/manifests/1: 429 Too Many Requests",
        );
        assert!(matches!(
            blocker(&limited),
            Some(Blocker::ImagePull {
                transient: true,
                ..
            })
        ));
        let e = blocker(&limited).unwrap().into_error();
        assert!(e.is_retryable() && e.to_string().contains("429"), "{e}");
        assert!(matches!(
            blocker(&waiting(
                "CreateContainerError",
                "context deadline exceeded"
            )),
            Some(Blocker::Transient { .. })
        ));
        assert!(matches!(
            blocker(&waiting(
                "CreateContainerError",
                "executable file not found"
            )),
            Some(Blocker::Config { service: None, .. })
        ));
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
