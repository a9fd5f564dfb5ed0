//! `kind: image` on the Kubernetes backend: a builder pod (rootless buildah, the
//! image from `bash .ci/builder-image.sh`) builds from the stage's workspace and
//! pushes to the real registry of `bash .ci/registry.sh`, through the API-server
//! test double. Pods share the host's network here so the builder reaches the
//! registry on 127.0.0.1.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;
use runner::conformance::{Run, drive, run, stage};
use runner::kubernetes::{BuilderOptions, names};
use runner::{ImageSpec, KubernetesBackend, RegistryAuth, Source, StageKind, Status};
use sha2::{Digest, Sha256};
use tests::kube_double::{self, KubeDouble, KubeDoubleOptions, PodNetwork};

use crate::kube_support::{Poll, eventually, options, poll_until, unique_runner};

const BUILDER_IMAGE: &str = "slipway-test/buildah:latest";
const BUILDER_NAMESPACE: &str = "builders";
const USER: &str = "slipway";
const PASSWORD: &str = "slipway-test";

fn registry() -> String {
    std::env::var("SLIPWAY_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

async fn double() -> KubeDouble {
    kube_double::start(KubeDoubleOptions {
        pod_network: PodNetwork::Host,
        ..Default::default()
    })
    .await
    .expect("starting the kube double (needs Docker and `bash .ci/images.sh`)")
}

fn backend(d: &KubeDouble, runner: &str) -> KubernetesBackend {
    let mut o = options(runner);
    let mut b = BuilderOptions::new(BUILDER_IMAGE, BUILDER_NAMESPACE);
    b.insecure_registries = vec![registry()];
    b.memory_bytes = 1024 * 1024 * 1024;
    o.builder = Some(b);
    KubernetesBackend::new(d.client(), o).unwrap()
}

/// A workspace with busybox and `dockerfile` as `app/Dockerfile`.
fn workspace(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("app")).unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("app/busybox")).unwrap();
    std::fs::write(dir.path().join("app/Dockerfile"), dockerfile).unwrap();
    std::fs::write(
        dir.path().join("app/greeting.txt"),
        "hello from the workspace\n",
    )
    .unwrap();
    dir
}

fn image_stage(
    id: &str,
    dir: &tempfile::TempDir,
    push: Option<String>,
    password: &str,
) -> runner::StageSpec {
    let mut spec = stage(id, &None, &[]);
    spec.source = Source::Directory(dir.path().to_path_buf());
    spec.kind = StageKind::Image(ImageSpec {
        dockerfile: "app/Dockerfile".into(),
        context: "app".into(),
        target: None,
        build_args: BTreeMap::from([("GREETING".into(), "built in a pod".into())]),
        labels: BTreeMap::from([("org.slipway.commit".into(), "0123abcd".into())]),
        push,
        registry_auth: Some(RegistryAuth {
            username: USER.into(),
            password: password.into(),
        }),
    });
    spec.secrets = vec![password.to_owned()];
    spec
}

fn unique_repo(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("slipway/kube-{what}-{}-{nanos}", std::process::id())
}

const DOCKERFILE: &str = "FROM scratch\n\
     COPY busybox /bin/busybox\n\
     RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
     ARG GREETING\n\
     COPY greeting.txt /greeting.txt\n\
     RUN echo \"greeting: $GREETING\" && echo \"$GREETING\" > /built-by-run\n\
     LABEL greeting=\"$GREETING\"\n";

/// How many builder pods and Secrets this runner still has: none, or as many as are
/// left after 30 s.
async fn builder_objects_left(d: &KubeDouble, runner: &str) -> usize {
    let lp = ListParams::default().labels(&format!(
        "{}={}",
        names::RUNNER_LABEL,
        names::label_value(runner)
    ));
    let pods: Api<Pod> = Api::namespaced(d.client(), BUILDER_NAMESPACE);
    let secrets: Api<Secret> = Api::namespaced(d.client(), BUILDER_NAMESPACE);
    let left = async || {
        pods.list(&lp).await.unwrap().items.len() + secrets.list(&lp).await.unwrap().items.len()
    };
    let poll = Poll::within(Duration::from_secs(30)).every(Duration::from_millis(200));
    match poll_until(poll, async || (left().await == 0).then_some(0)).await {
        Some(none) => none,
        None => left().await,
    }
}

/// The image step's log, both streams (run_stage writes its error to stderr).
fn log(r: &Run) -> String {
    let mut lines = r.text(0, runner::LogStreamKind::Stdout);
    lines.extend(r.text(0, runner::LogStreamKind::Stderr));
    lines.join("\n")
}

/// The build runs the Dockerfile's `RUN`s in the builder pod, pushes with the
/// registry Secret, and the stage's `digest` output is the manifest the registry
/// serves; the builder pod and its Secret are gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_stage_builds_in_a_builder_pod_and_pushes_by_digest() {
    let d = double().await;
    let runner = unique_runner("image");
    let backend = backend(&d, &runner);
    let dir = workspace(DOCKERFILE);
    let repo = unique_repo("pushed");
    let reference = format!("{}/{repo}:v1", registry());
    let spec = image_stage("image", &dir, Some(reference.clone()), PASSWORD);

    let r = run(&backend, &spec).await;
    let log = log(&r);
    assert_eq!(r.outcome.status, Status::Success, "{:#?}\n{log}", r.outcome);
    assert!(log.contains("greeting: built in a pod"), "{log}");
    assert!(!log.contains(PASSWORD), "{log}");
    assert_eq!(r.outcome.outputs.get("image"), Some(&reference));
    let digest = r
        .outcome
        .outputs
        .get("digest")
        .expect("a digest output")
        .clone();

    let manifest = reqwest::Client::new()
        .get(format!("http://{}/v2/{repo}/manifests/v1", registry()))
        .basic_auth(USER, Some(PASSWORD))
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(manifest.status(), 200);
    let body = manifest.bytes().await.unwrap();
    assert_eq!(
        format!("sha256:{}", hex::encode(Sha256::digest(&body))),
        digest
    );
    let manifest: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/{repo}/blobs/{config_digest}",
            registry()
        ))
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let labels = &config["config"]["Labels"];
    assert_eq!(labels["greeting"], "built in a pod", "{config}");
    assert_eq!(labels["org.slipway.commit"], "0123abcd", "{config}");
    assert_eq!(
        r.outcome.outputs.get("image_id").map(String::as_str),
        Some(config_digest)
    );
    assert_eq!(builder_objects_left(&d, &runner).await, 0);
}

/// A refused password is a push error that says so, is not retried, and never
/// shows the password; a failing `RUN` is a build error naming the instruction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_and_a_failing_run_are_clear_errors() {
    let d = double().await;
    let runner = unique_runner("image-err");
    let backend = backend(&d, &runner);

    let wrong = "wrong-password-9d2e";
    let dir = workspace(DOCKERFILE);
    let reference = format!("{}/{}:v1", registry(), unique_repo("denied"));
    let r = run(
        &backend,
        &image_stage("denied", &dir, Some(reference), wrong),
    )
    .await;
    let all = format!("{:?}\n{}", r.outcome, log(&r));
    assert_eq!(r.outcome.status, Status::Failure, "{all}");
    assert_eq!(r.outcome.steps[0].name, runner::IMAGE_STEP);
    assert!(
        all.contains("unauthorized") || all.contains("authentication required"),
        "{all}"
    );
    assert!(!all.contains(wrong), "{all}");
    assert!(!r.outcome.retryable, "{all}");

    let dir = workspace(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo about to fail; exit 3\"]\n",
    );
    let r = run(&backend, &image_stage("failing", &dir, None, PASSWORD)).await;
    let all = format!("{:?}\n{}", r.outcome, log(&r));
    assert_eq!(r.outcome.status, Status::Failure, "{all}");
    assert!(all.contains("about to fail"), "{all}");
    assert!(!r.outcome.retryable, "{all}");
    assert_eq!(builder_objects_left(&d, &runner).await, 0);
}

/// Without a builder the backend refuses image stages with a message that says
/// what to configure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_builder_image_stages_are_refused_with_what_to_set() {
    let d = double().await;
    let runner = unique_runner("image-none");
    let backend = KubernetesBackend::new(d.client(), options(&runner)).unwrap();
    let dir = workspace(DOCKERFILE);
    let r = run(&backend, &image_stage("none", &dir, None, PASSWORD)).await;
    let all = format!("{:?}\n{}", r.outcome, log(&r));
    assert_eq!(r.outcome.status, Status::Failure, "{all}");
    assert!(all.contains("kube_builder_image"), "{all}");
}

async fn builder_pods(d: &KubeDouble, runner: &str) -> usize {
    let lp = ListParams::default().labels(&format!(
        "{}={}",
        names::RUNNER_LABEL,
        names::label_value(runner)
    ));
    let pods: Api<Pod> = Api::namespaced(d.client(), BUILDER_NAMESPACE);
    pods.list(&lp).await.unwrap().items.len()
}

/// Waits (bounded) until this runner has a builder pod.
async fn until_a_builder_pod(d: &KubeDouble, runner: &str) {
    let poll = Poll::within(Duration::from_secs(60));
    eventually("a builder pod", poll, async || {
        (builder_pods(d, runner).await > 0).then_some(())
    })
    .await;
}

const SLOW_DOCKERFILE: &str = "FROM scratch\n\
     COPY busybox /bin/busybox\n\
     RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo building; sleep 300\"]\n";

/// Cancelling a stage mid-build removes its builder pod and Secret; a build whose
/// runner died is removed by the restarted runner's builder sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_or_abandoned_build_leaves_no_builder_pod() {
    let d = double().await;
    let runner = unique_runner("image-cancel");
    let backend = std::sync::Arc::new(backend(&d, &runner));
    let dir = workspace(SLOW_DOCKERFILE);
    let reference = format!("{}/{}:v1", registry(), unique_repo("cancelled"));
    let spec = image_stage("cancelled", &dir, Some(reference.clone()), PASSWORD);

    let cancel = tokio_util::sync::CancellationToken::new();
    let cancelled = {
        let (backend, spec, cancel) = (backend.clone(), spec.clone(), cancel.clone());
        tokio::spawn(
            async move { drive(&*backend, &spec, Default::default(), cancel, |_| {}).await },
        )
    };
    until_a_builder_pod(&d, &runner).await;
    cancel.cancel();
    let outcome = cancelled.await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:#?}");
    assert_eq!(builder_objects_left(&d, &runner).await, 0);

    // The runner dies mid-build (its task is dropped): a restarted one sweeps.
    let abandoned = {
        let (backend, spec) = (backend.clone(), spec.clone());
        tokio::spawn(async move { run(&*backend, &spec).await })
    };
    until_a_builder_pod(&d, &runner).await;
    abandoned.abort();
    let _ = abandoned.await;
    assert_eq!(
        builder_pods(&d, &runner).await,
        1,
        "the abandoned build's pod is left"
    );
    let restarted = self::backend(&d, &runner);
    let swept = restarted.sweep_builders().await.unwrap();
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!(builder_objects_left(&d, &runner).await, 0);

    // A runner that never comes back: the server's orphan sweep deletes the stage pod,
    // and with it goes the builder pod (whichever runner made it).
    let abandoned = {
        let (backend, spec) = (backend.clone(), spec.clone());
        tokio::spawn(async move { run(&*backend, &spec).await })
    };
    until_a_builder_pod(&d, &runner).await;
    abandoned.abort();
    let _ = abandoned.await;
    let sweeper = self::backend(&d, &unique_runner("server"));
    assert!(
        sweeper.sweep_orphan_builders().await.unwrap().is_empty(),
        "its stage pod is still there"
    );
    for (handle, _) in sweeper.stage_pods().await.unwrap() {
        sweeper.remove(&handle).await.unwrap();
    }
    let swept = sweeper.sweep_orphan_builders().await.unwrap();
    assert_eq!(swept.len(), 1, "{swept:?}");
    assert_eq!(builder_objects_left(&d, &runner).await, 0);
}

/// An API server older than 1.30 does not know the builder pod's `appArmorProfile`
/// and would drop it, leaving rootless buildah to fail far from the cause: connecting
/// refuses such a cluster, and a builder pod sent anyway is refused by the strict
/// field validation every create uses, naming the field — never silently weakened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_older_than_1_30_is_refused_and_never_silently_drops_a_field() {
    let d = kube_double::start(KubeDoubleOptions {
        pod_network: PodNetwork::Host,
        version: (1, 29),
        ..Default::default()
    })
    .await
    .expect("starting the kube double");
    let runner = unique_runner("old-cluster");
    let backend = backend(&d, &runner);
    let refused = backend.check_cluster().await.unwrap_err().to_string();
    assert!(
        refused.contains("v1.29") && refused.contains("needs 1.30 or later"),
        "{refused}"
    );

    let dir = workspace(DOCKERFILE);
    let spec = image_stage("old", &dir, None, PASSWORD);
    let r = run(&backend, &spec).await;
    let said = format!("{:?}\n{}", r.outcome, log(&r));
    assert_ne!(r.outcome.status, Status::Success, "{said}");
    assert!(
        said.contains("unknown field") && said.contains("appArmorProfile"),
        "{said}"
    );
    // What a plain create would have done: the field silently gone.
    let pods: Api<Pod> = Api::namespaced(d.client(), BUILDER_NAMESPACE);
    let mut pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe-dropped"},
        "spec": {"containers": [{"name": "c", "image": "slipway-test/busybox:latest",
            "command": ["true"],
            "securityContext": {"appArmorProfile": {"type": "Unconfined"}}}]}
    }))
    .unwrap();
    let created = pods
        .create(&kube::api::PostParams::default(), &pod)
        .await
        .unwrap();
    let sc = created.spec.unwrap().containers[0].security_context.clone();
    assert!(sc.and_then(|s| s.app_armor_profile).is_none());
    pod.metadata.name = Some("probe-strict".into());
    let err = runner::kubernetes::strict::create(&d.client(), &pods, &pod)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.containers[0].securityContext.appArmorProfile"),
        "{err}"
    );

    // A current cluster is accepted.
    let current = kube_double::start(KubeDoubleOptions::default())
        .await
        .unwrap();
    let backend = KubernetesBackend::new(current.client(), options(&unique_runner("new"))).unwrap();
    assert!(backend.check_cluster().await.unwrap().starts_with("v1.33"));
    assert_eq!(builder_objects_left(&d, &runner).await, 0);
}
