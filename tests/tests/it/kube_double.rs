//! The Kubernetes API-server test double, driven by a real `kube::Client` over HTTP,
//! with pods running on the real Docker engine (image `slipway-test/busybox:latest`,
//! built by `bash .ci/images.sh`). Every wait is bounded; every test shuts its double
//! down, which removes its containers and volumes.
//!
//! Long on purpose: one test per behaviour of this area, each written out end to end;
//! the set-up they share is in `kube_support/`.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, ListVolumesOptionsBuilder};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use kube::api::{Api, DeleteParams, LogParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tests::kube_double::{self, KubeDouble, KubeDoubleOptions, POD_UID_LABEL};

use crate::kube_support::{Poll, eventually};

const IMAGE: &str = "slipway-test/busybox:latest";
const NS: &str = "ci";
/// Upper bound for any wait on a pod (the machine is shared and may be slow).
const WAIT: Duration = Duration::from_secs(60);
/// Polling for what a watch does not tell, bounded by [`WAIT`].
const POLL: Poll = Poll::within(WAIT);

async fn double() -> KubeDouble {
    kube_double::start(KubeDoubleOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).expect("test pod JSON is a Pod")
}

/// Watches one pod until `done` holds for it (checking the current state first).
async fn wait_for(api: &Api<Pod>, name: &str, what: &str, done: impl Fn(&Pod) -> bool) -> Pod {
    let last: std::sync::Mutex<Option<Pod>> = std::sync::Mutex::new(None);
    let fut = async {
        let fields = format!("metadata.name={name}");
        loop {
            let wp = WatchParams::default().fields(&fields).timeout(20);
            let mut events = api.watch(&wp, "0").await.expect("watch").boxed();
            while let Some(ev) = events.try_next().await.expect("watch event") {
                match ev {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                        if done(&p) {
                            return p;
                        }
                        *last.lock().unwrap() = Some(p);
                    }
                    WatchEvent::Error(e) => panic!("watch error: {e:?}"),
                    _ => {}
                }
            }
        }
    };
    match tokio::time::timeout(WAIT, fut).await {
        Ok(p) => p,
        Err(_) => panic!(
            "pod {name} never got {what}; last status: {:#?}",
            last.lock().unwrap().as_ref().and_then(|p| p.status.clone())
        ),
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn statuses(p: &Pod) -> HashMap<String, ContainerStatus> {
    let s = p.status.clone().unwrap_or_default();
    s.init_container_statuses
        .into_iter()
        .flatten()
        .chain(s.container_statuses.into_iter().flatten())
        .map(|c| (c.name.clone(), c))
        .collect()
}

fn exit_code(p: &Pod, container: &str) -> Option<i32> {
    statuses(p)
        .get(container)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

fn condition(p: &Pod, kind: &str) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status.clone())
}

async fn log(api: &Api<Pod>, name: &str, container: &str) -> String {
    let lp = LogParams {
        container: Some(container.into()),
        ..Default::default()
    };
    api.logs(name, &lp).await.expect("logs")
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn labelled(d: &KubeDouble, uid: &str) -> (usize, usize) {
    let filter = HashMap::from([("label".to_owned(), vec![format!("{POD_UID_LABEL}={uid}")])]);
    let containers = d
        .docker()
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    let volumes = d
        .docker()
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .unwrap();
    (containers.len(), volumes.volumes.unwrap_or_default().len())
}

fn sh(name: &str, script: &str) -> serde_json::Value {
    json!({
        "name": name, "image": IMAGE, "command": ["sh", "-c", script],
        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_on_a_shared_empty_dir_with_separate_logs() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    let created = api
        .create(
            &PostParams::default(),
            &pod(json!({
                "metadata": {"name": "ordered", "labels": {"app": "slipway", "stage": "s1"}},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsUser": 65534, "runAsGroup": 65534, "runAsNonRoot": true},
                    "volumes": [{"name": "work", "emptyDir": {}}],
                    "initContainers": [
                        sh("first", "echo one > /work/f; echo first-out; id -u"),
                        sh("second", "cat /work/f; echo two >> /work/f; echo to-stderr >&2"),
                    ],
                    "containers": [sh("main", "cat /work/f; pwd")],
                }
            })),
        )
        .await
        .unwrap();
    assert_eq!(phase(&created), "Pending");
    let rv0: u64 = created
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();

    let done = wait_for(&api, "ordered", "Succeeded", |p| phase(p) == "Succeeded").await;
    for c in ["first", "second", "main"] {
        assert_eq!(
            exit_code(&done, c),
            Some(0),
            "{c}: {:?}",
            statuses(&done)[c]
        );
        let t = statuses(&done)[c]
            .state
            .clone()
            .unwrap()
            .terminated
            .unwrap();
        assert_eq!(t.reason.as_deref(), Some("Completed"));
        assert!(t.started_at.is_some() && t.finished_at.is_some());
    }
    assert_eq!(condition(&done, "Initialized").as_deref(), Some("True"));
    assert_eq!(condition(&done, "Ready").as_deref(), Some("False"));
    assert_eq!(condition(&done, "PodScheduled").as_deref(), Some("True"));
    let rv1: u64 = done
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        rv1 > rv0 + 3,
        "each transition is a new resourceVersion: {rv0} → {rv1}"
    );

    // Each container's log on its own; the second saw the first's file, the main
    // container saw both, as the non-root user, in the image's working directory.
    assert_eq!(log(&api, "ordered", "first").await, "first-out\n65534\n");
    // stdout and stderr are separate pipes: their relative order is not kept.
    let mut second: Vec<String> = log(&api, "ordered", "second")
        .await
        .lines()
        .map(str::to_owned)
        .collect();
    second.sort();
    assert_eq!(second, ["one", "to-stderr"]);
    assert_eq!(log(&api, "ordered", "main").await, "one\ntwo\n/\n");

    let tail = LogParams {
        container: Some("main".into()),
        tail_lines: Some(1),
        ..Default::default()
    };
    assert_eq!(api.logs("ordered", &tail).await.unwrap(), "/\n");
    // Nothing was logged after an hour from now.
    let later = LogParams {
        container: Some("main".into()),
        since_time: Some(
            k8s_openapi::jiff::Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_hours(1),
        ),
        ..Default::default()
    };
    assert_eq!(api.logs("ordered", &later).await.unwrap(), "");

    // Listing by label.
    let lp = kube::api::ListParams::default().labels("app=slipway,stage in (s1,s2)");
    assert_eq!(api.list(&lp).await.unwrap().items.len(), 1);
    let lp = kube::api::ListParams::default().labels("app=other");
    assert!(api.list(&lp).await.unwrap().items.is_empty());

    assert!(
        d.requests()
            .contains_key("POST /api/v1/namespaces/{ns}/pods")
    );
    assert_eq!(d.shutdown().await, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_init_container_fails_the_pod_with_its_exit_code() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "failing"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [sh("boom", "echo failing; exit 7"), sh("never", "true")],
                "containers": [sh("main", "true")],
            }
        })),
    )
    .await
    .unwrap();
    let failed = wait_for(&api, "failing", "Failed", |p| phase(p) == "Failed").await;
    assert_eq!(exit_code(&failed, "boom"), Some(7));
    let st = statuses(&failed);
    let boom = st["boom"].state.clone().unwrap().terminated.unwrap();
    assert_eq!(boom.reason.as_deref(), Some("Error"));
    for c in ["never", "main"] {
        let waiting = st[c].state.clone().unwrap().waiting;
        assert_eq!(
            waiting.and_then(|w| w.reason).as_deref(),
            Some("PodInitializing"),
            "{c}"
        );
    }
    assert_eq!(condition(&failed, "Initialized").as_deref(), Some("False"));
    assert_eq!(log(&api, "failing", "boom").await, "failing\n");
    let (code, reason) = api_error(
        api.logs(
            "failing",
            &LogParams {
                container: Some("never".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (400, "BadRequest"));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_come_back_as_kubernetes_statuses() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    let p = pod(json!({
        "metadata": {"name": "dup"},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "300"]}]}
    }));
    api.create(&PostParams::default(), &p).await.unwrap();
    let (code, reason) = api_error(api.create(&PostParams::default(), &p).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let (code, reason) = api_error(api.get("nope").await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));

    let mut bad = p.clone();
    bad.metadata.name = Some("bad".into());
    bad.spec.as_mut().unwrap().restart_policy = Some("Sometimes".into());
    let (code, reason) = api_error(api.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    // Graceful deletion: the pod is returned with a deletionTimestamp, then goes.
    let dp = DeleteParams::default().grace_period(1);
    let deleting = api
        .delete("dup", &dp)
        .await
        .unwrap()
        .left()
        .expect("pod deletion is graceful");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let (code, reason) = eventually("pod deleted", POLL, async || {
        api.get("dup").await.err().map(api_error)
    })
    .await;
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    let (code, _) = api_error(api.delete("dup", &dp).await.unwrap_err());
    assert_eq!(code, 404);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followed_logs_stream_while_the_container_runs() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "follow"},
            "spec": {
                "restartPolicy": "Never",
                "volumes": [{"name": "work", "emptyDir": {}}],
                // Waits for the test to say "go" before its second line.
                "containers": [sh("c", "echo line1; while [ ! -f /work/go ]; do sleep 0.1; done; echo line2")],
            }
        })),
    )
    .await
    .unwrap();
    let running = wait_for(&api, "follow", "Running", |p| phase(p) == "Running").await;
    assert_eq!(condition(&running, "Ready").as_deref(), Some("True"));
    let lp = LogParams {
        container: Some("c".into()),
        follow: true,
        ..Default::default()
    };
    let mut lines = api.log_stream("follow", &lp).await.unwrap().lines();
    let first = tokio::time::timeout(WAIT, lines.next())
        .await
        .expect("first line")
        .unwrap()
        .unwrap();
    assert_eq!(first, "line1");
    // The container is still running (it waits for /work/go): the line was streamed.
    assert_eq!(phase(&api.get("follow").await.unwrap()), "Running");

    let id = statuses(&running)["c"].container_id.clone().unwrap();
    let id = id.trim_start_matches("docker://");
    let exec = d
        .docker()
        .create_exec(
            id,
            bollard::exec::CreateExecOptions {
                cmd: Some(vec!["touch", "/work/go"]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    d.docker()
        .start_exec(
            &exec.id,
            Some(bollard::exec::StartExecOptions {
                detach: true,
                ..Default::default()
            }),
        )
        .await
        .unwrap();

    let rest: Vec<String> = tokio::time::timeout(WAIT, lines.try_collect())
        .await
        .expect("the log ends when the container exits")
        .unwrap();
    assert_eq!(rest, vec!["line2".to_owned()]);
    wait_for(&api, "follow", "Succeeded", |p| phase(p) == "Succeeded").await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_reported_as_err_image_pull_and_the_pod_stays_pending() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "noimage"},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "c", "image": "slipway-test/does-not-exist:never"}]}
        })),
    )
    .await
    .unwrap();
    let waiting = |p: &Pod| {
        statuses(p)
            .get("c")
            .and_then(|c| c.state.clone()?.waiting)
            .filter(|w| {
                matches!(
                    w.reason.as_deref(),
                    Some("ErrImagePull" | "ImagePullBackOff")
                )
            })
    };
    let p = wait_for(&api, "noimage", "ErrImagePull", |p| waiting(p).is_some()).await;
    assert_eq!(phase(&p), "Pending");
    let w = waiting(&p).unwrap();
    assert!(
        w.message
            .unwrap_or_default()
            .contains("slipway-test/does-not-exist:never")
    );
    let backoff = wait_for(&api, "noimage", "ImagePullBackOff", |p| {
        waiting(p).and_then(|w| w.reason).as_deref() == Some("ImagePullBackOff")
    })
    .await;
    assert_eq!(phase(&backoff), "Pending");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_env_waits_for_its_secret_and_the_secret_goes_with_the_pod() {
    let d = double().await;
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let secrets: Api<Secret> = Api::namespaced(d.client(), NS);
    let created = pods
        .create(
            &PostParams::default(),
            &pod(json!({
                "metadata": {"name": "withsecret"},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "volumes": [{"name": "work", "emptyDir": {}}],
                    "containers": [{
                        "name": "c", "image": IMAGE,
                        "command": ["sh", "-c", "echo \"token=$TOKEN\"; exec sleep 300"],
                        "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "stage-secrets", "key": "token"}}}],
                        "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                        "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}},
                    }],
                }
            })),
        )
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let reason = |p: &Pod| {
        statuses(p)
            .get("c")
            .and_then(|c| c.state.clone()?.waiting?.reason)
    };
    let p = wait_for(&pods, "withsecret", "CreateContainerConfigError", |p| {
        reason(p).as_deref() == Some("CreateContainerConfigError")
    })
    .await;
    assert_eq!(phase(&p), "Pending");

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "stage-secrets", "ownerReferences": [{
            "apiVersion": "v1", "kind": "Pod", "name": "withsecret", "uid": uid, "controller": true,
        }]},
        "stringData": {"token": "s3cr3t"},
    }))
    .unwrap();
    let stored = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    assert_eq!(stored.data.unwrap()["token"].0, b"s3cr3t");
    assert!(stored.string_data.is_none());

    let running = wait_for(&pods, "withsecret", "Running", |p| phase(p) == "Running").await;
    let logged = eventually("the container's log", POLL, async || {
        Some(log(&pods, "withsecret", "c").await).filter(|l| !l.is_empty())
    })
    .await;
    assert_eq!(logged, "token=s3cr3t\n");
    // Limits reached Docker.
    let id = statuses(&running)["c"].container_id.clone().unwrap();
    let inspect = d
        .docker()
        .inspect_container(id.trim_start_matches("docker://"), None)
        .await
        .unwrap();
    let hc = inspect.host_config.unwrap();
    assert_eq!(
        (hc.memory, hc.nano_cpus),
        (Some(64 << 20), Some(500_000_000))
    );
    let (containers, volumes) = labelled(&d, &uid).await;
    assert_eq!(
        (containers, volumes),
        (2, 1),
        "sandbox + container, one emptyDir"
    );

    pods.delete("withsecret", &DeleteParams::default().grace_period(1))
        .await
        .unwrap();
    eventually("pod deleted", POLL, async || {
        pods.get_opt("withsecret")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // Owned secret collected; Docker objects gone with the pod.
    let (code, _) = api_error(secrets.get("stage-secrets").await.unwrap_err());
    assert_eq!(code, 404);
    assert_eq!(labelled(&d, &uid).await, (0, 0));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_deadline_seconds_kills_the_pod() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "slow"},
            "spec": {"restartPolicy": "Never", "activeDeadlineSeconds": 2, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": IMAGE, "command": ["sleep", "300"]}]}
        })),
    )
    .await
    .unwrap();
    let p = wait_for(&api, "slow", "DeadlineExceeded", |p| phase(p) == "Failed").await;
    let status = p.status.clone().unwrap();
    assert_eq!(status.reason.as_deref(), Some("DeadlineExceeded"));
    assert_eq!(exit_code(&p, "c"), Some(137));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_are_reachable_over_localhost_and_stopped_at_the_end() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "sidecar"},
            "spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "work", "emptyDir": {}}],
                "initContainers": [{
                    "name": "web", "image": IMAGE, "restartPolicy": "Always",
                    "command": ["sh", "-c", "mkdir -p /tmp/www && echo hello > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"],
                }],
                // Bounded retries while the sidecar comes up.
                "containers": [sh("main", "for i in $(seq 100); do wget -q -O - http://localhost:8080/ && exit 0; sleep 0.1; done; exit 1")],
            }
        })),
    )
    .await
    .unwrap();
    let p = wait_for(&api, "sidecar", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(exit_code(&p, "main"), Some(0));
    assert!(exit_code(&p, "web").is_some(), "the sidecar was stopped");
    assert_eq!(log(&api, "sidecar", "main").await, "hello\n");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_resume_from_a_resource_version_and_expire_beyond_the_history() {
    let d = kube_double::start(KubeDoubleOptions {
        watch_history: 3,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let secrets: Api<Secret> = Api::namespaced(d.client(), NS);
    let mk = |n: &str| -> Secret {
        serde_json::from_value(json!({"metadata": {"name": n, "labels": {"set": "a"}}})).unwrap()
    };
    let first = secrets
        .create(&PostParams::default(), &mk("s1"))
        .await
        .unwrap();
    let rv1 = first.metadata.resource_version.clone().unwrap();
    secrets
        .create(&PostParams::default(), &mk("s2"))
        .await
        .unwrap();
    secrets
        .delete("s1", &DeleteParams::default())
        .await
        .unwrap();

    let wp = WatchParams::default().labels("set=a").timeout(1);
    let events: Vec<_> = secrets
        .watch(&wp, &rv1)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            WatchEvent::Added(s) => format!("ADDED {}", s.metadata.name.clone().unwrap()),
            WatchEvent::Deleted(s) => format!("DELETED {}", s.metadata.name.clone().unwrap()),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, vec!["ADDED s2", "DELETED s1"]);

    for n in ["s3", "s4", "s5"] {
        secrets
            .create(&PostParams::default(), &mk(n))
            .await
            .unwrap();
    }
    let events: Vec<_> = secrets
        .watch(&wp, &rv1)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    match events.as_slice() {
        [WatchEvent::Error(e)] => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_failures_carry_the_kubelet_reasons() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "failures"},
            "spec": {"restartPolicy": "Never", "containers": [
                // A 64 MiB buffer under a 16 MiB limit without swap.
                {"name": "oom", "image": IMAGE, "command": ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
                 "resources": {"limits": {"memory": "16Mi"}}},
                {"name": "nocmd", "image": IMAGE, "command": ["/does/not/exist"]},
                {"name": "fails", "image": IMAGE, "command": ["sh", "-c", "exit 3"]},
                {"name": "ok", "image": IMAGE, "command": ["true"]},
            ]}
        })),
    )
    .await
    .unwrap();
    let p = wait_for(&api, "failures", "Failed", |p| phase(p) == "Failed").await;
    let reason = |c: &str| {
        let t = statuses(&p)[c].state.clone().unwrap().terminated.unwrap();
        (t.exit_code, t.reason.unwrap())
    };
    assert_eq!(reason("oom"), (137, "OOMKilled".into()));
    assert_eq!(reason("nocmd"), (128, "StartError".into()));
    assert_eq!(reason("fails"), (3, "Error".into()));
    assert_eq!(reason("ok"), (0, "Completed".into()));
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("kube-double"));

    // runAsNonRoot with an image that runs as root: the container never starts.
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "rootimage"},
            "spec": {"restartPolicy": "Never", "securityContext": {"runAsNonRoot": true},
                     "containers": [{"name": "c", "image": IMAGE, "command": ["true"]}]}
        })),
    )
    .await
    .unwrap();
    let p = wait_for(&api, "rootimage", "CreateContainerConfigError", |p| {
        statuses(p)
            .get("c")
            .and_then(|c| c.state.clone()?.waiting?.reason)
            .as_deref()
            == Some("CreateContainerConfigError")
    })
    .await;
    let w = statuses(&p)["c"].state.clone().unwrap().waiting.unwrap();
    assert!(w.message.unwrap().contains("runAsNonRoot"));
    assert_eq!(phase(&p), "Pending");

    // Several containers: the log API wants to know which one.
    let (code, _) = api_error(
        api.logs("failures", &LogParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_volumes_env_from_and_orphaned_secrets() {
    let d = double().await;
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let secrets: Api<Secret> = Api::namespaced(d.client(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "creds"},
        "stringData": {"token": "t0k", "user": "bob"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let created = pods
        .create(
            &PostParams::default(),
            &pod(json!({
                "metadata": {"name": "mounts"},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsUser": 65534, "runAsGroup": 65534},
                    "volumes": [{"name": "creds", "secret": {"secretName": "creds", "items": [{"key": "token", "path": "tok"}]}}],
                    "containers": [{
                        "name": "c", "image": IMAGE,
                        "command": ["sh", "-c", "cat /etc/creds/tok; echo; echo $S_user; ls /etc/creds; touch /etc/creds/x 2>/dev/null || echo read-only"],
                        "envFrom": [{"prefix": "S_", "secretRef": {"name": "creds"}}],
                        "volumeMounts": [{"name": "creds", "mountPath": "/etc/creds"}],
                    }],
                }
            })),
        )
        .await
        .unwrap();
    wait_for(&pods, "mounts", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        log(&pods, "mounts", "c").await,
        "t0k\nbob\ntok\nread-only\n"
    );

    // An owned secret survives its pod's deletion with propagationPolicy Orphan,
    // without the owner reference.
    let uid = created.metadata.uid.unwrap();
    let owned: Secret = serde_json::from_value(json!({
        "metadata": {"name": "owned", "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "mounts", "uid": uid}]},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &owned)
        .await
        .unwrap();
    pods.delete("mounts", &DeleteParams::orphan().grace_period(0))
        .await
        .unwrap();
    eventually("pod deleted", POLL, async || {
        pods.get_opt("mounts")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let kept = secrets.get("owned").await.unwrap();
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    assert!(secrets.get("creds").await.is_ok(), "unowned secrets stay");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_pods_reach_the_hosts_loopback() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = kube_double::start(KubeDoubleOptions {
        pod_network: kube_double::PodNetwork::Host,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // A one-shot HTTP server on the host's 127.0.0.1 (as the Slipway server in tests).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).await;
        conn.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nsource")
            .await
            .unwrap();
    });
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "fetch"},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": IMAGE, "command": ["wget", "-q", "-O", "-", format!("http://127.0.0.1:{port}/")]},
            ]}
        })),
    )
    .await
    .unwrap();
    let p = wait_for(&api, "fetch", "a finished phase", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })
    .await;
    assert_eq!(phase(&p), "Succeeded");
    assert_eq!(log(&api, "fetch", "c").await, "source");
    server.await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_pods_reach_the_host_as_host_docker_internal() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = double().await;
    // Listening on all interfaces: the pod comes in through the bridge gateway.
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).await;
        conn.write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 6\r\n\r\nsource")
            .await
            .unwrap();
    });
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    let url = format!("http://host.docker.internal:{port}/");
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "bridge"},
            "spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": IMAGE, "command": ["sh", "-c", format!("hostname; wget -q -O - {url}")]},
            ]}
        })),
    )
    .await
    .unwrap();
    let p = wait_for(&api, "bridge", "a finished phase", |p| {
        matches!(phase(p), "Succeeded" | "Failed")
    })
    .await;
    assert_eq!(log(&api, "bridge", "c").await, "bridge\nsource");
    assert_eq!(phase(&p), "Succeeded");
    assert!(p.status.unwrap().pod_ip.is_some());
    server.await.unwrap();
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_double_removes_its_docker_objects() {
    let d = double().await;
    let instance = d.instance.clone();
    let docker = d.docker().clone();
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "left"},
            "spec": {"restartPolicy": "Never", "volumes": [{"name": "work", "emptyDir": {}}],
                     "containers": [sh("c", "exec sleep 300")]}
        })),
    )
    .await
    .unwrap();
    wait_for(&api, "left", "Running", |p| phase(p) == "Running").await;
    let filter = HashMap::from([(
        "label".to_owned(),
        vec![format!("{}={instance}", kube_double::INSTANCE_LABEL)],
    )]);
    let count = |docker: bollard::Docker, filter: HashMap<String, Vec<String>>| async move {
        let c = docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filter)
                    .build(),
            ))
            .await
            .unwrap()
            .len();
        let v = docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filter).build(),
            ))
            .await
            .unwrap()
            .volumes
            .unwrap_or_default()
            .len();
        (c, v)
    };
    assert_eq!(count(docker.clone(), filter.clone()).await, (2, 1));
    drop(d);
    assert_eq!(count(docker, filter).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_are_refused_under_strict_field_validation() {
    let d = double().await;
    let body = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "typo"},
        "strngData": {"a": "b"},
    });
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/namespaces/{NS}/secrets", d.base_url);
    let strict = http
        .post(format!("{url}?fieldValidation=Strict"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(strict.status().as_u16(), 400);
    let status: serde_json::Value = strict.json().await.unwrap();
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"strngData\""),
        "{status}"
    );
    // The API's default, Warn: stored, with a Warning header naming the field.
    let warn = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(warn.status().as_u16(), 201);
    let warning = warn.headers()["warning"].to_str().unwrap().to_owned();
    assert!(warning.contains("strngData"), "{warning}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unschedulable_pods_stay_pending_with_the_schedulers_reason() {
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    let unfit = |name: &str, extra: serde_json::Value| {
        let mut spec = json!({"restartPolicy": "Never",
                              "containers": [{"name": "c", "image": IMAGE, "command": ["true"]}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        pod(json!({"metadata": {"name": name, "labels": {"batch": "x"}}, "spec": spec}))
    };
    let selector = api
        .create(
            &PostParams::default(),
            &unfit("selector", json!({"nodeSelector": {"pool": "gpu"}})),
        )
        .await
        .unwrap();
    let huge = json!({"containers": [{"name": "c", "image": IMAGE, "resources": {"requests": {"cpu": "100000"}}}]});
    let cpu = api
        .create(&PostParams::default(), &unfit("cpu", huge))
        .await
        .unwrap();
    for (p, want) in [
        (&selector, "node affinity/selector"),
        (&cpu, "Insufficient cpu"),
    ] {
        assert_eq!(phase(p), "Pending");
        let cond = p.status.clone().unwrap().conditions.unwrap();
        let scheduled = cond.iter().find(|c| c.type_ == "PodScheduled").unwrap();
        assert_eq!(
            (scheduled.status.as_str(), scheduled.reason.as_deref()),
            ("False", Some("Unschedulable"))
        );
        assert!(scheduled.message.clone().unwrap().contains(want));
        assert!(p.spec.clone().unwrap().node_name.is_none());
    }
    // The status subresource reads the same object.
    let status = api.get_status("selector").await.unwrap();
    assert_eq!(status.metadata.uid, selector.metadata.uid);

    // delete_collection by label: both go.
    let lp = kube::api::ListParams::default().labels("batch=x");
    let deleted = api
        .delete_collection(&DeleteParams::default().grace_period(0), &lp)
        .await
        .unwrap();
    assert_eq!(
        deleted
            .left()
            .expect("a list of the deleted pods")
            .items
            .len(),
        2
    );
    eventually("pods deleted", POLL, async || {
        api.list(&lp).await.unwrap().items.is_empty().then_some(())
    })
    .await;

    // Typed secrets are checked as the API server checks them.
    let secrets: Api<Secret> = Api::namespaced(d.client(), NS);
    let pull: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pull"}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "not json"},
    }))
    .unwrap();
    let (code, reason) = api_error(
        secrets
            .create(&PostParams::default(), &pull)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_stdin_and_stdout_and_reports_the_exit_code() {
    use kube::api::AttachParams;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = double().await;
    let api: Api<Pod> = Api::namespaced(d.client(), NS);
    api.create(
        &PostParams::default(),
        &pod(json!({
            "metadata": {"name": "execd"},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "volumes": [{"name": "work", "emptyDir": {}}],
                     "containers": [sh("c", "exec sleep 300")]}
        })),
    )
    .await
    .unwrap();
    wait_for(&api, "execd", "Running", |p| phase(p) == "Running").await;
    let run = async {
        // Into the pod through stdin…
        let ap = AttachParams::default()
            .container("c")
            .stdin(true)
            .stdout(false)
            .stderr(false);
        let mut p = api
            .exec("execd", ["sh", "-c", "cat > /work/in.txt"], &ap)
            .await
            .unwrap();
        let status = p.take_status().unwrap();
        let mut stdin = p.stdin().unwrap();
        stdin.write_all(b"payload\n").await.unwrap();
        stdin.shutdown().await.unwrap();
        drop(stdin);
        let status = status.await.expect("a status");
        assert_eq!(status.status.as_deref(), Some("Success"));
        p.join().await.unwrap();

        // …and out through stdout.
        let ap = AttachParams::default()
            .container("c")
            .stdout(true)
            .stderr(false);
        let mut p = api
            .exec("execd", ["cat", "/work/in.txt"], &ap)
            .await
            .unwrap();
        let mut out = String::new();
        p.stdout().unwrap().read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "payload\n");
        p.join().await.unwrap();

        // A failing command: the status carries its exit code.
        let ap = AttachParams::default()
            .container("c")
            .stdout(true)
            .stderr(false);
        let mut p = api
            .exec("execd", ["sh", "-c", "exit 4"], &ap)
            .await
            .unwrap();
        let status = p.take_status().unwrap().await.expect("a status");
        assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
        let cause = status.details.unwrap().causes.unwrap().remove(0);
        assert_eq!(
            (cause.reason.as_deref(), cause.message.as_deref()),
            (Some("ExitCode"), Some("4"))
        );
    };
    tokio::time::timeout(WAIT, run)
        .await
        .expect("exec finished");
    d.shutdown().await;
}
