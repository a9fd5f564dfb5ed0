//! Building a pod's status the way the kubelet reports it: container states
//! (waiting with a reason, running, terminated with exit code and reason) and the
//! four conditions derived from them.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::store::now;

/// What the double knows about a pod while it runs it.
#[derive(Debug, Clone)]
pub struct PodState {
    pub phase: &'static str,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub start_time: Time,
    pub pod_ip: Option<String>,
    pub initialized: bool,
    pub init: Vec<ContainerStatus>,
    pub main: Vec<ContainerStatus>,
    conditions: Vec<PodCondition>,
}

pub fn waiting(name: &str, image: &str, reason: &str, message: Option<String>) -> ContainerStatus {
    ContainerStatus {
        name: name.to_owned(),
        image: image.to_owned(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_owned()),
                message,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn set_running(cs: &mut ContainerStatus, container_id: &str, image_id: &str, started: Time) {
    cs.container_id = Some(format!("docker://{container_id}"));
    cs.image_id = image_id.to_owned();
    // Without probes a running container is started and ready; a container's
    // probes then say otherwise (`pod_runtime::probes`).
    cs.started = Some(true);
    cs.ready = true;
    cs.state = Some(ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(started),
        }),
        ..Default::default()
    });
}

pub struct Exit {
    pub code: i32,
    pub reason: &'static str,
    pub message: Option<String>,
    pub started: Option<Time>,
    pub finished: Option<Time>,
}

pub fn set_terminated(cs: &mut ContainerStatus, container_id: Option<&str>, exit: Exit) {
    if let Some(id) = container_id {
        cs.container_id = Some(format!("docker://{id}"));
    }
    cs.started = Some(false);
    cs.ready = false;
    cs.state = Some(ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: exit.code,
            reason: Some(exit.reason.to_owned()),
            message: exit.message,
            started_at: exit.started,
            finished_at: exit.finished,
            container_id: cs.container_id.clone(),
            ..Default::default()
        }),
        ..Default::default()
    });
}

/// Before a container runs again: the run that ended becomes `lastState`; while the
/// kubelet backs off (`back_off`: its message) the container waits as
/// `CrashLoopBackOff`.
pub fn restarting(cs: &mut ContainerStatus, back_off: Option<String>) {
    if is_terminated(cs) {
        cs.last_state = cs.state.clone();
    }
    cs.ready = false;
    cs.started = Some(false);
    if let Some(message) = back_off {
        cs.state = Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some("CrashLoopBackOff".into()),
                message: Some(message),
            }),
            ..Default::default()
        });
    }
}

pub fn is_waiting(cs: &ContainerStatus) -> bool {
    cs.state.as_ref().is_none_or(|s| s.waiting.is_some())
}

pub fn is_running(cs: &ContainerStatus) -> bool {
    cs.state.as_ref().is_some_and(|s| s.running.is_some())
}

pub fn is_terminated(cs: &ContainerStatus) -> bool {
    cs.state.as_ref().is_some_and(|s| s.terminated.is_some())
}

pub fn waiting_reason(cs: &ContainerStatus) -> Option<String> {
    cs.state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.clone())
}

impl PodState {
    pub fn new(init: Vec<ContainerStatus>, main: Vec<ContainerStatus>) -> PodState {
        PodState {
            phase: "Pending",
            reason: None,
            message: None,
            start_time: now(),
            pod_ip: None,
            initialized: init.is_empty(),
            init,
            main,
            conditions: Vec::new(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self.phase, "Succeeded" | "Failed")
    }

    fn condition(&mut self, kind: &str, ok: bool, reason: Option<&str>, message: Option<String>) {
        let status = if ok { "True" } else { "False" };
        let previous = self.conditions.iter().find(|c| c.type_ == kind);
        // The transition time moves only when the status does.
        let since = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(now()),
        };
        let next = PodCondition {
            type_: kind.to_owned(),
            status: status.to_owned(),
            last_transition_time: since,
            reason: if ok { None } else { reason.map(str::to_owned) },
            message: if ok { None } else { message },
            ..Default::default()
        };
        self.conditions.retain(|c| c.type_ != kind);
        self.conditions.push(next);
    }

    /// The status to store, recomputing the conditions.
    pub fn status(&mut self) -> PodStatus {
        let not_done = |list: &[ContainerStatus], want_ready: bool| -> Vec<String> {
            list.iter()
                .filter(|c| {
                    if want_ready {
                        !c.ready
                    } else {
                        !is_terminated(c) && !c.ready
                    }
                })
                .map(|c| c.name.clone())
                .collect()
        };
        let terminal = self.is_terminal();
        let pending_init = not_done(&self.init, false);
        let unready = not_done(&self.main, true);
        self.condition("PodScheduled", true, None, None);
        self.condition(
            "Initialized",
            self.initialized,
            Some("ContainersNotInitialized"),
            Some(format!(
                "containers with incomplete status: [{}]",
                pending_init.join(" ")
            )),
        );
        let ready = !terminal && unready.is_empty() && !self.main.is_empty();
        let (reason, message) = if terminal {
            ("PodCompleted", None)
        } else {
            (
                "ContainersNotReady",
                Some(format!(
                    "containers with unready status: [{}]",
                    unready.join(" ")
                )),
            )
        };
        self.condition("ContainersReady", ready, Some(reason), message.clone());
        self.condition("Ready", ready, Some(reason), message);
        PodStatus {
            phase: Some(self.phase.to_owned()),
            reason: self.reason.clone(),
            message: self.message.clone(),
            start_time: Some(self.start_time.clone()),
            pod_ip: self.pod_ip.clone(),
            pod_ips: self.pod_ip.clone().map(|ip| vec![PodIP { ip }]),
            host_ip: Some("127.0.0.1".into()),
            conditions: Some(self.conditions.clone()),
            init_container_statuses: (!self.init.is_empty()).then(|| self.init.clone()),
            container_statuses: Some(self.main.clone()),
            qos_class: None,
            ..Default::default()
        }
    }
}
