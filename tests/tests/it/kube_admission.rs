//! Admission and scheduling as a cluster does them, on the API-server test double:
//! the scheduler's arithmetic for native sidecars, ResourceQuota objects and their
//! 403s, Pod Security `restricted` namespaces; and what the Kubernetes backend makes
//! of them: a used-up quota is waited out, a Pod Security refusal fails the stage at
//! once with the admission's message, and the backend's own pods pass `restricted`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use runner::conformance::{drive, run, stage};
use runner::kubernetes::RunAs;
use runner::{KubernetesBackend, RunOptions, StageEvent, Status};
use serde_json::{Value, json};
use tests::kube_double::{self, KubeDouble, KubeDoubleOptions};
use tokio_util::sync::CancellationToken;

use crate::kube_support::{
    self, IMAGE, NAMESPACE, Poll, eventually, image, options, unique_runner,
};

const WAIT: Poll = Poll::within(Duration::from_secs(60));

pub(crate) fn pods(d: &KubeDouble, ns: &str) -> Api<Pod> {
    Api::namespaced(d.client(), ns)
}

fn quotas(d: &KubeDouble) -> Api<ResourceQuota> {
    Api::namespaced(d.client(), NAMESPACE)
}

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

/// A container sleeping in the test image, requesting (and limited to) `cpu`, 64Mi.
fn sleeper(name: &str, cpu: &str) -> Value {
    json!({"name": name, "image": IMAGE, "command": ["sleep", "300"],
        "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}, "limits": {"cpu": cpu, "memory": "64Mi"}}})
}

fn forbidden(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 && s.reason == "Forbidden" => s.message,
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
}

async fn restricted_double(namespace: &str) -> KubeDouble {
    kube_double::start(KubeDoubleOptions {
        restricted_namespaces: BTreeSet::from([namespace.to_owned()]),
        ..Default::default()
    })
    .await
    .expect("starting the kube double (needs Docker and `bash .ci/images.sh`)")
}

async fn create_quota(d: &KubeDouble, name: &str, hard: Value) -> ResourceQuota {
    let q = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"hard": hard}}))
        .unwrap();
    quotas(d).create(&PostParams::default(), &q).await.unwrap()
}

fn status_of(q: &ResourceQuota, field: &str) -> Value {
    serde_json::to_value(q.status.as_ref().unwrap()).unwrap()[field].clone()
}

/// KEP-753: a regular init container runs beside the sidecars started before it,
/// so the scheduler needs room for both at once — not just for the largest of the
/// init containers and for the sidecars with the regular containers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_init_container_needs_room_beside_the_sidecars_before_it() {
    let d = kube_support::double().await;
    let info = d.docker().info().await.unwrap();
    let half = info.ncpu.unwrap() * 1000 / 2 + 100;
    let sidecar = {
        let mut s = sleeper("proxy", &format!("{half}m"));
        s["restartPolicy"] = json!("Always");
        s
    };
    let spec = |inits: Vec<Value>| {
        json!({"initContainers": inits, "containers": [sleeper("main", "100m")],
               "terminationGracePeriodSeconds": 0})
    };
    let api = pods(&d, NAMESPACE);
    let before = pod(
        "before",
        spec(vec![sidecar.clone(), sleeper("setup", &format!("{half}m"))]),
    );
    api.create(&PostParams::default(), &before).await.unwrap();
    let why = eventually("the pod to be found unschedulable", WAIT, async || {
        let p = api.get("before").await.ok()?;
        let c = p
            .status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled")?;
        (c.status == "False").then(|| c.message.unwrap_or_default())
    })
    .await;
    assert_eq!(why, "0/1 nodes are available: 1 Insufficient cpu.");
    // The same containers with the init container first fit: it runs alone.
    let after = pod(
        "after",
        spec(vec![sleeper("setup", &format!("{half}m")), sidecar]),
    );
    let created = api.create(&PostParams::default(), &after).await.unwrap();
    assert!(
        created.spec.unwrap().node_name.is_some(),
        "bound to the node"
    );
    d.shutdown().await;
}

/// ResourceQuota objects: created, read with the status the quota controller
/// keeps (`hard`, `used` from the namespace's pods), listed, deleted (the object
/// comes back); an unknown resource name is 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_quotas_are_objects_with_their_usage() {
    let d = kube_support::double().await;
    let q = create_quota(&d, "compute", json!({"requests.cpu": "1", "pods": "5"})).await;
    assert_eq!(
        status_of(&q, "used"),
        json!({"pods": "0", "requests.cpu": "0"})
    );
    pods(&d, NAMESPACE)
        .create(
            &PostParams::default(),
            &pod("a", json!({"containers": [sleeper("c", "250m")]})),
        )
        .await
        .unwrap();
    let q = quotas(&d).get("compute").await.unwrap();
    assert_eq!(
        status_of(&q, "hard"),
        json!({"pods": "5", "requests.cpu": "1"})
    );
    assert_eq!(
        status_of(&q, "used"),
        json!({"pods": "1", "requests.cpu": "250m"})
    );
    let all: Api<ResourceQuota> = Api::all(d.client());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    let bad = serde_json::from_value(
        json!({"metadata": {"name": "bad"}, "spec": {"hard": {"gpus": "1"}}}),
    )
    .unwrap();
    match quotas(&d).create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("spec.hard[gpus]: Invalid value: \"gpus\": must be a standard resource for quota"), "{}", s.message);
        }
        other => panic!("expected 422, got {other:?}"),
    }
    let gone = quotas(&d)
        .delete("compute", &DeleteParams::default())
        .await
        .unwrap();
    assert!(gone.left().is_some(), "the deleted object comes back");
    assert!(quotas(&d).get_opt("compute").await.unwrap().is_none());
    d.shutdown().await;
}

/// Pod creates over a quota get the quota admission's 403s, word for word; a pod
/// fits again once another is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_over_a_quota_are_forbidden_as_the_quota_admission_says() {
    let d = kube_support::double().await;
    create_quota(
        &d,
        "compute",
        json!({"requests.cpu": "1", "limits.memory": "1Gi"}),
    )
    .await;
    let api = pods(&d, NAMESPACE);
    let mut first = pod("first", json!({"containers": [sleeper("c", "600m")]}));
    first
        .spec
        .as_mut()
        .unwrap()
        .termination_grace_period_seconds = Some(0);
    api.create(&PostParams::default(), &first).await.unwrap();
    let second = pod("second", json!({"containers": [sleeper("c", "600m")]}));
    let refused = forbidden(
        api.create(&PostParams::default(), &second)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        refused,
        "pods \"second\" is forbidden: exceeded quota: compute, requested: requests.cpu=600m, used: requests.cpu=600m, limited: requests.cpu=1"
    );
    let bare = pod(
        "bare",
        json!({"containers": [{"name": "main", "image": IMAGE}]}),
    );
    assert_eq!(
        forbidden(api.create(&PostParams::default(), &bare).await.unwrap_err()),
        "pods \"bare\" is forbidden: failed quota: compute: must specify limits.memory for: main; requests.cpu for: main"
    );
    api.delete("first", &DeleteParams::default()).await.unwrap();
    eventually("the second pod to fit", WAIT, async || {
        api.create(&PostParams::default(), &second).await.ok()
    })
    .await;
    d.shutdown().await;
}

/// A namespace that enforces Pod Security `restricted` refuses a pod that breaks
/// it with the admission's 403; other namespaces take the same pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restricted_namespace_refuses_pods_that_break_the_profile() {
    let d = restricted_double("locked").await;
    let plain = pod(
        "plain",
        json!({"containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "1"]}]}),
    );
    let refused = forbidden(
        pods(&d, "locked")
            .create(&PostParams::default(), &plain)
            .await
            .unwrap_err(),
    );
    assert!(
        refused.starts_with(
            "pods \"plain\" is forbidden: violates PodSecurity \"restricted:latest\": "
        ),
        "{refused}"
    );
    assert!(
        refused.contains("allowPrivilegeEscalation must be false"),
        "{refused}"
    );
    assert!(
        refused.contains("capabilities.drop must contain ALL"),
        "{refused}"
    );
    pods(&d, "open")
        .create(&PostParams::default(), &plain)
        .await
        .unwrap();
    let mut compliant = plain.clone();
    compliant.spec = Some(
        serde_json::from_value(json!({
            "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "1"],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
        }))
        .unwrap(),
    );
    pods(&d, "locked")
        .create(&PostParams::default(), &compliant)
        .await
        .unwrap();
    d.shutdown().await;
}

/// The backend's stage pods are built to meet `restricted`: in a namespace that
/// enforces it, a stage runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backends_pods_pass_a_restricted_namespace() {
    let d = restricted_double(NAMESPACE).await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("psa-ok"))).unwrap();
    let spec = stage("psa-ok", &Some(image()), &["echo inside"]);
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    assert_eq!(r.stdout(0), vec!["inside"]);
    d.shutdown().await;
}

/// A pod the namespace's Pod Security refuses (here: the runner is configured to
/// run steps as root) fails the stage at once with the admission's message, not
/// retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_security_refusal_fails_the_stage_with_the_admission_message() {
    let d = restricted_double(NAMESPACE).await;
    let runner = unique_runner("psa-no");
    let mut o = options(&runner);
    o.run_as = RunAs { uid: 0, gid: 0 };
    let backend = KubernetesBackend::new(d.client(), o).unwrap();
    let mut spec = stage("psa-no", &Some(image()), &["echo never"]);
    spec.timeout = Some(Duration::from_secs(3600));
    let started = Instant::now();
    let r = run(&backend, &spec).await;
    let Status::Error(message) = &r.outcome.status else {
        panic!("expected an error, got {:?}", r.outcome.status);
    };
    assert!(
        message.contains("admission refused the stage's pod: pods \"slipway-psa-no-")
            && message.contains("\" is forbidden: violates PodSecurity \"restricted:latest\": ")
            && message.contains("spec.securityContext.runAsUser: must not be 0"),
        "{message}"
    );
    assert!(!r.outcome.retryable);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        pods(&d, NAMESPACE)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    d.shutdown().await;
}

/// The backend for a quota test: retries every 200 ms.
fn quota_backend(d: &KubeDouble, what: &str) -> Arc<KubernetesBackend> {
    let mut o = options(&unique_runner(what));
    o.quota_retry_interval = Duration::from_millis(200);
    Arc::new(KubernetesBackend::new(d.client(), o).unwrap())
}

/// Fills a one-pod quota with a pod of its own.
pub(crate) async fn fill_quota(d: &KubeDouble) {
    create_quota(d, "slots", json!({"pods": "1"})).await;
    let mut blocker = pod("blocker", json!({"containers": [sleeper("c", "100m")]}));
    blocker
        .spec
        .as_mut()
        .unwrap()
        .termination_grace_period_seconds = Some(0);
    pods(d, NAMESPACE)
        .create(&PostParams::default(), &blocker)
        .await
        .unwrap();
}

/// A stage whose pod is over the namespace's quota waits — with the quota's message
/// as its waiting reason — and runs once another pod is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_over_quota_waits_and_runs_once_quota_frees_up() {
    let d = kube_support::double().await;
    fill_quota(&d).await;
    let backend = quota_backend(&d, "quota");
    let spec = stage("quota", &Some(image()), &["echo ran"]);
    let run = {
        let (backend, spec) = (backend.clone(), spec.clone());
        tokio::spawn(async move { run(&*backend, &spec).await })
    };
    let reason = eventually("the stage to wait for quota", WAIT, async || {
        backend.waiting_reason("quota")
    })
    .await;
    // `pods "slipway-quota-<random>" is forbidden: …`, the quota admission's words.
    assert!(reason.starts_with("pods \"slipway-quota-"), "{reason}");
    assert!(
        reason.ends_with(
            "\" is forbidden: exceeded quota: slots, requested: pods=1, used: pods=1, limited: pods=1"
        ),
        "{reason}"
    );
    // Still waiting a while later, not failed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !run.is_finished(),
        "the stage ended while waiting for quota"
    );
    pods(&d, NAMESPACE)
        .delete("blocker", &DeleteParams::default())
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    assert_eq!(r.stdout(0), vec!["ran"]);
    assert_eq!(backend.waiting_reason("quota"), None);
    // The driver reported the wait, then its end, before the first step started.
    let before_steps: Vec<&StageEvent> = r
        .events
        .iter()
        .take_while(|e| !matches!(e, StageEvent::StepStarted { .. }))
        .collect();
    assert_eq!(
        before_steps,
        vec![
            &StageEvent::Waiting {
                stage: "quota".into(),
                reason: Some(reason)
            },
            &StageEvent::Waiting {
                stage: "quota".into(),
                reason: None
            },
        ]
    );
    d.shutdown().await;
}

/// Cancelling a stage that waits for quota ends it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_a_stage_waiting_for_quota() {
    let d = kube_support::double().await;
    fill_quota(&d).await;
    let backend = quota_backend(&d, "quota-cancel");
    let mut spec = stage("quota-cancel", &Some(image()), &["echo never"]);
    spec.timeout = Some(Duration::from_secs(3600));
    let cancel = CancellationToken::new();
    let run = {
        let (backend, spec, cancel) = (backend.clone(), spec.clone(), cancel.clone());
        tokio::spawn(
            async move { drive(&*backend, &spec, RunOptions::default(), cancel, |_| {}).await },
        )
    };
    eventually("the stage to wait for quota", WAIT, async || {
        backend.waiting_reason("quota-cancel")
    })
    .await;
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    assert_eq!(backend.waiting_reason("quota-cancel"), None);
    d.shutdown().await;
}
