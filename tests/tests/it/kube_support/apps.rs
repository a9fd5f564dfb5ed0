//! Deployments on the double: a double with a short crash-loop back-off, two
//! versions of a web image (built here `FROM slipway-test/httpd`, each serving its
//! version at `/`), a Deployment of it with a readiness probe on a named port, and
//! waits on watches, bounded.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Resource;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tests::kube_double::{self, KubeDouble, KubeDoubleOptions};

/// Upper bound for any wait on pods (the machine is shared and may be slow).
pub const WAIT: Duration = Duration::from_secs(120);

pub const APP: &str = "slipway-test/deploy-app";

pub async fn double() -> KubeDouble {
    kube_double::start(KubeDoubleOptions {
        restart_backoff: Duration::from_millis(500),
        restart_backoff_max: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .expect("starting the kube double (needs Docker and `bash .ci/images.sh`)")
}

/// `slipway-test/deploy-app:<version>`, serving `<version>` at `/`: built once
/// per process (the engine's build cache makes it quick after the first time).
pub fn app_image(version: &str) -> String {
    static BUILT: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let image = format!("{APP}:{version}");
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    if built.get_or_insert_with(HashSet::new).contains(version) {
        return image;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!("FROM slipway-test/httpd:latest\nRUN echo {version} > /www/index.html\n"),
    )
    .unwrap();
    let out = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &image])
        .arg(dir.path())
        .output()
        .expect("running docker build");
    assert!(
        out.status.success(),
        "docker build of {image}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    built.as_mut().unwrap().insert(version.to_owned());
    image
}

/// A Deployment of the web image `version`, pods labelled `app: <name>`, with a
/// readiness probe on the named port `http` every second. `strategy` is the
/// `spec.strategy` as JSON (`null` for the default).
pub fn web(name: &str, replicas: i32, version: &str, strategy: Value) -> Deployment {
    let mut spec = json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                // busybox httpd (pid 1) ignores SIGTERM: a short grace period.
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "web",
                    "image": app_image(version),
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/", "port": "http"},
                        "periodSeconds": 1,
                        "failureThreshold": 3,
                    },
                }],
            },
        },
    });
    if !strategy.is_null() {
        spec["strategy"] = strategy;
    }
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": spec,
    }))
    .expect("the fixture is a Deployment")
}

/// Watches one object until `done` holds for it (the current state first).
pub async fn wait_for<K>(api: &Api<K>, name: &str, what: &str, done: impl Fn(&K) -> bool) -> K
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let last: Mutex<Option<K>> = Mutex::new(None);
    let fut = async {
        let fields = format!("metadata.name={name}");
        loop {
            let wp = WatchParams::default().fields(&fields).timeout(20);
            let mut events = api.watch(&wp, "0").await.expect("watch").boxed();
            while let Some(ev) = events.try_next().await.expect("watch event") {
                match ev {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        if done(&o) {
                            return o;
                        }
                        *last.lock().unwrap() = Some(o);
                    }
                    WatchEvent::Error(e) => panic!("watch error: {e:?}"),
                    _ => {}
                }
            }
        }
    };
    match tokio::time::timeout(WAIT, fut).await {
        Ok(o) => o,
        Err(_) => panic!(
            "{name} never got {what}; last seen: {:#?}",
            last.lock().unwrap()
        ),
    }
}

/// The Deployment's rollout is complete: every replica updated, ready and
/// available, no old one left, its generation observed.
pub fn rolled_out(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let s = d.status.clone().unwrap_or_default();
    let n = |v: Option<i32>| v.unwrap_or(0);
    s.observed_generation == d.metadata.generation
        && n(s.replicas) == want
        && n(s.updated_replicas) == want
        && n(s.ready_replicas) == want
        && n(s.available_replicas) == want
}

pub fn condition(d: &Deployment, kind: &str) -> Option<(String, String)> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone().unwrap_or_default()))
}

pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn terminating(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

/// The pods labelled `app=<app>` now.
pub async fn pods_of(pods: &Api<Pod>, app: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .expect("list pods")
        .items
}

/// What the pod's web server answers at `/` on its pod IP, port 8080.
pub async fn answer(p: &Pod) -> String {
    let ip = p
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a running pod has an IP");
    reqwest::get(format!("http://{ip}:8080/"))
        .await
        .expect("the pod answers on its IP")
        .text()
        .await
        .unwrap()
}

/// The `pod-template-hash` label of a ReplicaSet or pod.
pub fn pod_template_hash(labels: &Option<std::collections::BTreeMap<String, String>>) -> String {
    labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash").cloned())
        .unwrap_or_default()
}

/// The image of the pod's first container.
pub fn image(p: &Pod) -> String {
    p.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap_or_default()
}

/// The registry of `bash .ci/registry.sh` (user `slipway`, password `slipway-test`).
pub fn registry() -> String {
    std::env::var("SLIPWAY_TEST_REGISTRY").unwrap_or_else(|_| "127.0.0.1:5000".into())
}

/// [`app_image`] `version` pushed to the test registry, as
/// `<registry>/slipway-test-deploy-app@sha256:…`: how a release names an image.
/// The engine knows the digest from the push (its RepoDigests), so the double runs
/// it without pulling. The login goes to a throw-away Docker config.
pub fn pushed_by_digest(version: &str) -> String {
    let repo = format!("{}/slipway-test-deploy-app", registry());
    let tagged = format!("{repo}:{version}");
    let config = tempfile::tempdir().unwrap();
    let docker = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut cmd = std::process::Command::new("docker");
        cmd.arg("--config").arg(config.path()).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("running docker");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker {args:?}: {} (is the registry of `bash .ci/registry.sh` running?)",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    docker(&["tag", &app_image(version), &tagged], None);
    docker(
        &["login", "-u", "slipway", "--password-stdin", &registry()],
        Some("slipway-test"),
    );
    docker(&["push", "-q", &tagged], None);
    let digests = docker(
        &["image", "inspect", "-f", "{{json .RepoDigests}}", &tagged],
        None,
    );
    let digests: Vec<String> = serde_json::from_str(&digests).unwrap();
    digests
        .into_iter()
        .find(|d| d.starts_with(&format!("{repo}@sha256:")))
        .expect("the push recorded the digest")
}
