//! A node that stops reporting: the double's node lifecycle and taint eviction as
//! upstream's, and the Kubernetes backend failing such a stage within its bound and
//! removing the pod without hanging.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use runner::conformance::{drive, stage};
use runner::kubernetes::names;
use runner::{KubernetesBackend, KubernetesOptions, RunOptions, StageOutcome, Status};
use tests::kube_double::{self, KubeDouble, KubeDoubleOptions};
use tokio_util::sync::CancellationToken;

use crate::kube_support::{NAMESPACE, Poll, eventually, image, options, unique_runner};

const WAIT: Poll = Poll::within(Duration::from_secs(60));

/// A double whose node is declared lost one second after it stops reporting.
async fn double() -> KubeDouble {
    kube_double::start(KubeDoubleOptions {
        node_monitor_grace: Duration::from_secs(1),
        ..Default::default()
    })
    .await
    .expect("starting the kube double (needs Docker and `bash .ci/images.sh`)")
}

fn pods(d: &KubeDouble) -> Api<Pod> {
    Api::namespaced(d.client(), NAMESPACE)
}

fn condition(p: &Pod, kind: &str) -> Option<(String, Option<String>)> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == kind)?;
    Some((c.status.clone(), c.reason.clone()))
}

fn running(p: &Pod, container: &str) -> bool {
    let status = p.status.as_ref();
    status
        .and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .chain(status.and_then(|s| s.container_statuses.as_ref()))
        .flatten()
        .any(|c| c.name == container && c.state.as_ref().is_some_and(|s| s.running.is_some()))
}

/// The double: status freezes, logs fail, Ready turns False after the monitor
/// grace, the pod is evicted (DisruptionTarget) when its toleration runs out and
/// then stays Terminating until a deletion with grace 0 removes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_pods_go_stale_are_evicted_and_stay_until_force_deleted() {
    let d = double().await;
    let api = pods(&d);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "stale"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists",
                             "effect": "NoExecute", "tolerationSeconds": 2}],
            "containers": [{"name": "main", "image": image(), "command": ["sleep", "600"]}]
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod).await.unwrap();
    eventually("the pod to be ready", WAIT, async || {
        let p = api.get("stale").await.ok()?;
        (condition(&p, "Ready")?.0 == "True").then_some(())
    })
    .await;

    let lost_at = Instant::now();
    d.lose_node();
    let err = api.logs("stale", &Default::default()).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 500 && s.message.contains("10250")),
        "{err:?}"
    );
    let not_ready = eventually("Ready=False", WAIT, async || {
        let p = api.get("stale").await.ok()?;
        (condition(&p, "Ready")?.0 == "False").then_some(p)
    })
    .await;
    assert!(
        lost_at.elapsed() >= Duration::from_secs(1),
        "before the grace"
    );
    // Nothing reports the container: it still looks as it did.
    assert!(running(&not_ready, "main"), "{:?}", not_ready.status);
    let evicted = eventually("the taint eviction", WAIT, async || {
        let p = api.get("stale").await.ok()?;
        p.metadata.deletion_timestamp.as_ref()?;
        Some(p)
    })
    .await;
    assert!(
        lost_at.elapsed() >= Duration::from_secs(3),
        "before the toleration ran out"
    );
    assert_eq!(
        condition(&evicted, "DisruptionTarget"),
        Some(("True".into(), Some("DeletionByTaintManager".into())))
    );
    // No kubelet confirms the stop: the pod stays, graceful deletion or not.
    api.delete("stale", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        api.get_opt("stale").await.unwrap().is_some(),
        "gone without a kubelet"
    );
    let force = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    api.delete("stale", &force).await.unwrap();
    assert!(
        api.get_opt("stale").await.unwrap().is_none(),
        "still there after a forced deletion"
    );
    d.shutdown().await;
}

async fn runner_pods(d: &KubeDouble, runner: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!(
        "{}={}",
        names::RUNNER_LABEL,
        names::label_value(runner)
    ));
    pods(d).list(&lp).await.unwrap().items
}

/// Runs a stage whose step sleeps for ten minutes (stage timeout one hour) and, once
/// the step runs, loses the node; returns the outcome and how long it took after the
/// loss. `cancel_after` cancels the stage that long after the loss.
async fn run_and_lose_the_node(
    d: &KubeDouble,
    runner: &str,
    opts: KubernetesOptions,
    cancel_after: Option<Duration>,
) -> (StageOutcome, Duration) {
    let backend = Arc::new(KubernetesBackend::new(d.client(), opts).unwrap());
    let mut spec = stage("lost", &Some(image()), &["echo started\nsleep 600"]);
    spec.timeout = Some(Duration::from_secs(3600));
    let cancel = CancellationToken::new();
    let run = {
        let (backend, spec, cancel) = (backend.clone(), spec.clone(), cancel.clone());
        tokio::spawn(
            async move { drive(&*backend, &spec, RunOptions::default(), cancel, |_| {}).await },
        )
    };
    eventually("the step to run", WAIT, async || {
        let p = runner_pods(d, runner).await.into_iter().next()?;
        running(&p, "step-0").then_some(())
    })
    .await;
    let lost_at = Instant::now();
    d.lose_node();
    if let Some(after) = cancel_after {
        tokio::time::sleep(after).await;
        cancel.cancel();
    }
    let outcome = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the stage still waits two minutes after its node was lost")
        .unwrap();
    (outcome, lost_at.elapsed())
}

/// The stage pod tolerates a lost node for `node_lost_timeout`: then the cluster
/// evicts it and the stage fails, retryably and with the eviction's reason, instead
/// of waiting for its one-hour timeout; the Terminating pod is force-deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_on_a_lost_node_fails_retryably_within_the_bound_and_its_pod_goes() {
    let d = double().await;
    let runner = unique_runner("lost");
    let mut opts = options(&runner);
    opts.node_lost_timeout = Duration::from_secs(2);
    let (outcome, took) = run_and_lose_the_node(&d, &runner, opts, None).await;
    let Status::Error(message) = &outcome.status else {
        panic!("expected an error, got {outcome:?}");
    };
    assert!(
        message.contains("DeletionByTaintManager") && message.contains("node"),
        "{message}"
    );
    assert!(
        outcome.retryable,
        "a lost node is the cluster's fault: {outcome:?}"
    );
    // Declared lost after 1 s, evicted 2 s later; the rest is bounded slack.
    assert!(
        took >= Duration::from_secs(3),
        "failed before the eviction: {took:?}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(runner_pods(&d, &runner).await.is_empty(), "the pod stayed");
    d.shutdown().await;
}

/// Cancelling a stage whose node is lost, before any eviction: its pod never
/// confirms the stop, and the backend force-deletes it `force_delete_after` past the
/// kill grace instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_stage_on_a_lost_node_does_not_hang() {
    let d = double().await;
    let runner = unique_runner("lostcancel");
    let mut opts = options(&runner);
    opts.node_lost_timeout = Duration::from_secs(600);
    opts.force_delete_after = Duration::from_secs(2);
    let (outcome, took) =
        run_and_lose_the_node(&d, &runner, opts, Some(Duration::from_millis(500))).await;
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    // Kill grace 1 s + 2 s, then the forced deletion.
    assert!(took >= Duration::from_secs(3), "took {took:?}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(runner_pods(&d, &runner).await.is_empty(), "the pod stayed");
    d.shutdown().await;
}
