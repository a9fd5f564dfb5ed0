//! Pods on the API-server test double as a kubelet runs them beyond
//! `restartPolicy: Never`: containers restarted with the crash-loop back-off
//! (`restartCount`, `lastState`, `CrashLoopBackOff`), a failing liveness probe
//! restarting a container, a startup probe holding readiness back, OnFailure.
//! The double's back-off is shortened (0.5 s doubling to 2 s); waits are bounded.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::kube_support::apps::{WAIT, double, pod_ready};

const NS: &str = "pods";
const IMAGE: &str = "slipway-test/busybox:latest";

fn pod(name: &str, restart: &str, container: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"restartPolicy": restart, "terminationGracePeriodSeconds": 1, "containers": [container]}
    }))
    .unwrap()
}

fn container(p: &Pod) -> ContainerStatus {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first().cloned())
        .unwrap_or_default()
}

fn waiting_reason(c: &ContainerStatus) -> Option<String> {
    c.state.as_ref()?.waiting.as_ref()?.reason.clone()
}

/// Every state of the pod until `done` holds, from a watch (bounded by [`WAIT`]).
async fn states_until(api: &Api<Pod>, name: &str, done: impl Fn(&Pod) -> bool) -> Vec<Pod> {
    let mut seen = Vec::new();
    let fields = format!("metadata.name={name}");
    let fut = async {
        let wp = WatchParams::default().fields(&fields).timeout(280);
        let mut events = api.watch(&wp, "0").await.expect("watch").boxed();
        while let Some(ev) = events.try_next().await.expect("watch event") {
            if let WatchEvent::Added(p) | WatchEvent::Modified(p) = ev {
                let end = done(&p);
                seen.push(p);
                if end {
                    return;
                }
            }
        }
        panic!("the watch ended first");
    };
    if tokio::time::timeout(WAIT, fut).await.is_err() {
        panic!(
            "{name}: not done within {WAIT:?}; last status {:#?}",
            seen.last().and_then(|p: &Pod| p.status.clone())
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_is_restarted_with_back_off() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    let c = json!({"name": "c", "image": IMAGE, "command": ["sh", "-c", "echo run; exit 3"]});
    api.create(&PostParams::default(), &pod("crash", "Always", c))
        .await
        .unwrap();
    let states = states_until(&api, "crash", |p| container(p).restart_count >= 3).await;
    let last = states.last().unwrap();
    let cs = container(last);
    let previous = cs
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.clone())
        .expect("lastState.terminated");
    assert_eq!(
        (previous.exit_code, previous.reason.as_deref()),
        (3, Some("Error"))
    );
    assert!(!cs.ready && !pod_ready(last));
    // Between runs the kubelet backs off, and says so.
    let backing_off: Vec<String> = states
        .iter()
        .filter(|p| waiting_reason(&container(p)).as_deref() == Some("CrashLoopBackOff"))
        .filter_map(|p| container(p).state?.waiting?.message)
        .collect();
    assert!(
        backing_off
            .iter()
            .any(|m| m.starts_with("back-off 500ms restarting failed container=c pod=crash_pods(")),
        "{backing_off:?}"
    );
    // A restarted pod keeps running: never Succeeded or Failed.
    assert!(states.iter().all(|p| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        matches!(phase, Some("Pending" | "Running"))
    }));
    assert_eq!(
        last.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_restarts_until_the_container_succeeds() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    // Fails on its first run (the emptyDir outlives the container), succeeds next.
    let c = json!({"name": "c", "image": IMAGE, "volumeMounts": [{"name": "state", "mountPath": "/state"}],
                   "command": ["sh", "-c", "test -f /state/ran && exit 0; touch /state/ran; exit 1"]});
    let mut p = pod("once", "OnFailure", c);
    p.spec.as_mut().unwrap().volumes = Some(vec![
        serde_json::from_value(json!({"name": "state", "emptyDir": {}})).unwrap(),
    ]);
    api.create(&PostParams::default(), &p).await.unwrap();
    let states = states_until(&api, "once", |p| {
        matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
    })
    .await;
    let last = states.last().unwrap();
    assert_eq!(
        last.status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    let cs = container(last);
    assert_eq!(cs.restart_count, 1);
    assert_eq!(cs.state.unwrap().terminated.unwrap().exit_code, 0);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_liveness_probe_restarts_the_container() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    // Healthy for about two seconds, then not.
    let c = json!({
        "name": "c", "image": IMAGE,
        "command": ["sh", "-c", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 600"],
        "livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2},
    });
    api.create(&PostParams::default(), &pod("live", "Always", c))
        .await
        .unwrap();
    let states = states_until(&api, "live", |p| container(p).restart_count >= 1).await;
    let cs = container(states.last().unwrap());
    let killed = cs
        .last_state
        .and_then(|s| s.terminated)
        .expect("the killed run in lastState");
    // sh (pid 1) ignores SIGTERM: killed after the grace period.
    assert_eq!(killed.exit_code, 137);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_gate_started_and_ready() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    // Started once /tmp/started exists (after ~2 s); ready while /tmp/ready exists.
    let c = json!({
        "name": "c", "image": IMAGE,
        "command": ["sh", "-c", "sleep 2; touch /tmp/started; touch /tmp/ready; sleep 3; rm /tmp/ready; sleep 600"],
        "startupProbe": {"exec": {"command": ["test", "-f", "/tmp/started"]}, "periodSeconds": 1, "failureThreshold": 30},
        "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1, "failureThreshold": 1},
    });
    api.create(&PostParams::default(), &pod("gated", "Always", c))
        .await
        .unwrap();
    // Until it is unready again after having been ready.
    let was_ready = std::cell::Cell::new(false);
    let states = states_until(&api, "gated", |p| {
        let cs = container(p);
        was_ready.set(was_ready.get() || cs.ready);
        was_ready.get() && !cs.ready && cs.restart_count == 0
    })
    .await;
    let running: Vec<ContainerStatus> = states
        .iter()
        .map(container)
        .filter(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()))
        .collect();
    assert!(
        running
            .first()
            .is_some_and(|c| c.started == Some(false) && !c.ready),
        "not started at first: {running:#?}"
    );
    assert!(running.iter().any(|c| c.ready), "ready at some point");
    assert!(
        running.iter().all(|c| !c.ready || c.started == Some(true)),
        "never ready before started"
    );
    d.shutdown().await;
}
