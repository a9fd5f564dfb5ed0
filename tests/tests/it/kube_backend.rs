//! Kubernetes-backend behaviour beyond the conformance suite, against the
//! API-server test double: failures read from pod status, services, cancel,
//! adoption after a runner restart. Objects are checked through the API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use runner::conformance::{Run, drive, run, run_with, stage};
use runner::kubernetes::names;
use runner::{Backend, KubernetesBackend, RunOptions, ServiceSpec, StageEvent, Status};
use tokio_util::sync::CancellationToken;

use crate::kube_support::{self, NAMESPACE, Poll, eventually, image, options, unique_runner};

fn pods(d: &tests::kube_double::KubeDouble) -> Api<Pod> {
    Api::namespaced(d.client(), NAMESPACE)
}

fn secrets(d: &tests::kube_double::KubeDouble) -> Api<Secret> {
    Api::namespaced(d.client(), NAMESPACE)
}

async fn runner_pods(d: &tests::kube_double::KubeDouble, runner: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!(
        "{}={}",
        names::RUNNER_LABEL,
        names::label_value(runner)
    ));
    pods(d).list(&lp).await.unwrap().items
}

/// How long a test waits for a pod to get somewhere.
const WAIT: Poll = Poll::within(Duration::from_secs(60));

/// An image that is not on the engine fails the stage with the kubelet's reason
/// within seconds — not after the stage's one-hour timeout — and leaves no pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_fails_the_stage_with_the_reason() {
    let d = kube_support::double().await;
    let runner = unique_runner("pull");
    let backend = KubernetesBackend::new(d.client(), options(&runner)).unwrap();
    let mut spec = stage(
        "pull",
        &Some("slipway-test/not-there:1".into()),
        &["echo never"],
    );
    spec.timeout = Some(Duration::from_secs(3600));
    let started = Instant::now();
    let r = run(&backend, &spec).await;
    let Status::Error(message) = &r.outcome.status else {
        panic!("expected an error, got {:?}", r.outcome.status);
    };
    assert!(
        message.contains("image `slipway-test/not-there:1` cannot be pulled")
            && message.contains("ErrImagePull"),
        "{message}"
    );
    assert!(!r.outcome.retryable, "a missing image is not retried");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "reported after {:?}",
        started.elapsed()
    );
    assert!(runner_pods(&d, &runner).await.is_empty());
    d.shutdown().await;
}

/// A node selector no node matches fails with the scheduler's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unschedulable_pod_fails_with_the_schedulers_reason() {
    let d = kube_support::double().await;
    let runner = unique_runner("sched");
    let backend = KubernetesBackend::new(d.client(), options(&runner)).unwrap();
    let mut spec = stage("sched", &Some(image()), &["echo never"]);
    spec.pod.node_selector = BTreeMap::from([("disktype".into(), "ssd".into())]);
    let r = run(&backend, &spec).await;
    let Status::Error(message) = &r.outcome.status else {
        panic!("expected an error, got {:?}", r.outcome.status);
    };
    assert!(message.contains("cannot be scheduled"), "{message}");
    assert!(message.contains("node"), "{message}");
    assert!(runner_pods(&d, &runner).await.is_empty());
    d.shutdown().await;
}

/// Services run beside the steps and are reachable by their name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_reachable_by_name() {
    let d = kube_support::double().await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("svc"))).unwrap();
    let mut spec = stage(
        "svc",
        &Some(image()),
        &["for i in $(seq 50); do wget -q -O- http://web:8080/ && exit 0; sleep 0.2; done; exit 1"],
    );
    spec.services = vec![ServiceSpec {
        name: "web".into(),
        image: "slipway-test/httpd:latest".into(),
        env: BTreeMap::new(),
        command: None,
        ready: None,
    }];
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    assert_eq!(r.stdout(0), vec!["hello from the service"]);
    d.shutdown().await;
}

/// A memory limit from the YAML is enforced, and its kill is reported as OOM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_over_its_memory_limit_is_reported_oom_killed() {
    let d = kube_support::double().await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("oom"))).unwrap();
    let mut spec = stage(
        "oom",
        &Some(image()),
        &["dd if=/dev/zero of=/dev/null bs=256M count=1"],
    );
    spec.container.memory_bytes = Some(32 * 1024 * 1024);
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure, "{:?}", r.outcome);
    assert!(r.outcome.steps[0].oom_killed, "{:?}", r.outcome.steps[0]);
    assert_eq!(r.outcome.steps[0].exit_code, Some(137));
    d.shutdown().await;
}

/// Secret values reach the step only through the stage's Secret, which is owned
/// by the pod; cancelling the stage deletes the pod and the Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_removes_the_pod_and_its_secret() {
    let d = kube_support::double().await;
    let runner = unique_runner("cancel");
    let backend = Arc::new(KubernetesBackend::new(d.client(), options(&runner)).unwrap());
    let secret = "hunter2-cancel-test";
    let mut spec = stage(
        "cancel",
        &Some(image()),
        &["echo token=$TOKEN\necho started\nsleep 300"],
    );
    spec.env = BTreeMap::from([("TOKEN".into(), secret.into())]);
    spec.secrets = vec![secret.into()];

    let cancel = CancellationToken::new();
    let run = {
        let (backend, spec, cancel) = (backend.clone(), spec.clone(), cancel.clone());
        tokio::spawn(async move {
            let mut lines = Vec::new();
            let outcome = drive(&*backend, &spec, RunOptions::default(), cancel, |e| {
                if let StageEvent::Line(l) = e {
                    lines.push(String::from_utf8_lossy(&l.bytes).into_owned());
                }
            })
            .await;
            (outcome, lines)
        })
    };
    let pod = eventually("the step to run", WAIT, async || {
        let p = runner_pods(&d, &runner).await.into_iter().next()?;
        let running = p
            .status
            .as_ref()?
            .init_container_statuses
            .as_ref()?
            .iter()
            .any(|c| c.name == "step-0" && c.state.as_ref().is_some_and(|s| s.running.is_some()));
        running.then_some(p)
    })
    .await;
    let name = pod.metadata.name.clone().unwrap();
    let pod_json = serde_json::to_string(&pod).unwrap();
    assert!(!pod_json.contains(secret), "the secret value is in the pod");
    let s = secrets(&d).get(&name).await.expect("the stage's Secret");
    let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Pod", pod.metadata.uid.as_deref().unwrap())
    );

    cancel.cancel();
    let (outcome, lines) = run.await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    assert!(lines.contains(&"token=********".to_owned()), "{lines:?}");
    assert!(pods(&d).get_opt(&name).await.unwrap().is_none(), "pod left");
    assert!(
        secrets(&d).get_opt(&name).await.unwrap().is_none(),
        "Secret left"
    );
    d.shutdown().await;
}

/// A runner that dies mid-stage leaves its pod running; the restarted runner
/// (same name, new process state) finds it by label, adopts it and finishes the
/// stage: the finished step and the running one both report, nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_runner_adopts_the_pod_and_finishes_the_stage() {
    let d = kube_support::double().await;
    let runner = unique_runner("adopt");
    let mut spec = stage(
        "adopt",
        &Some(image()),
        &[
            "echo first >> runs.log; echo one",
            "echo second >> runs.log; while [ ! -e go ]; do sleep 0.1; done; echo two",
            "cat runs.log",
        ],
    );
    spec.adoption = Some("lease 42".into());

    // The first runner process: runs until step 1 is under way, then dies.
    let first = Arc::new(KubernetesBackend::new(d.client(), options(&runner)).unwrap());
    let task = {
        let (first, spec) = (first.clone(), spec.clone());
        tokio::spawn(async move { run(&*first, &spec).await })
    };
    let pod = eventually("step 1 to run", WAIT, async || {
        let p = runner_pods(&d, &runner).await.into_iter().next()?;
        let running = p
            .status
            .as_ref()?
            .init_container_statuses
            .as_ref()?
            .iter()
            .any(|c| c.name == "step-1" && c.state.as_ref().is_some_and(|s| s.running.is_some()));
        running.then_some(p)
    })
    .await;
    task.abort();
    let _ = task.await;
    drop(first);

    // The restarted runner.
    let second = KubernetesBackend::new(d.client(), options(&runner)).unwrap();
    let found = second.adoptable().await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].data.as_deref(), Some("lease 42"));
    let found: Vec<_> = found.into_iter().map(|a| a.handle).collect();
    assert_eq!(found[0].id, pod.metadata.name.clone().unwrap());
    assert_eq!(found[0].stage, "adopt");
    second.adopt(&found[0]).await.unwrap();

    // Let step 1 finish (through exec, as an outside event).
    let name = found[0].id.clone();
    let api = pods(&d);
    let ap = kube::api::AttachParams::default()
        .container("step-1")
        .stdout(true)
        .stderr(false);
    let mut touch = api
        .exec(&name, ["touch", "/workspace/go"], &ap)
        .await
        .unwrap();
    let status = touch.take_status().unwrap().await;
    assert_eq!(status.and_then(|s| s.status).as_deref(), Some("Success"));

    let opts = RunOptions {
        adopt: Some(found[0].clone()),
        ..Default::default()
    };
    let r: Run = run_with(&second, &spec, opts).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    assert_eq!(r.stdout(0), vec!["one"]);
    assert_eq!(r.stdout(1), vec!["two"]);
    // Each step ran once.
    assert_eq!(r.stdout(2), vec!["first", "second"]);
    assert!(api.get_opt(&name).await.unwrap().is_none(), "pod left");
    d.shutdown().await;
}

/// The sweep removes this runner's pods and Secrets and nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_only_this_runners_pods() {
    let d = kube_support::double().await;
    let (mine, theirs) = (unique_runner("mine"), unique_runner("theirs"));
    let a = Arc::new(KubernetesBackend::new(d.client(), options(&mine)).unwrap());
    let b = Arc::new(KubernetesBackend::new(d.client(), options(&theirs)).unwrap());
    let mut spec = stage("long", &Some(image()), &["sleep 300"]);
    spec.env = BTreeMap::from([("T".into(), "s3cret-sweep".into())]);
    spec.secrets = vec!["s3cret-sweep".into()];
    let ha = a.setup_stage(&spec).await.unwrap();
    let hb = b.setup_stage(&spec).await.unwrap();
    let swept = KubernetesBackend::new(d.client(), options(&mine))
        .unwrap()
        .sweep()
        .await
        .unwrap();
    assert_eq!(swept, vec![ha.id.clone()]);
    eventually("the swept pod to go", WAIT, async || {
        pods(&d)
            .get_opt(&ha.id)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(secrets(&d).get_opt(&ha.id).await.unwrap().is_none());
    assert!(pods(&d).get_opt(&hb.id).await.unwrap().is_some());
    b.destroy_stage(&hb).await.unwrap();
    d.shutdown().await;
}
