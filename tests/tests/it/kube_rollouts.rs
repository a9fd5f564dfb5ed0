//! Rollouts of a Deployment on the API-server test double, watched pod by pod:
//! RollingUpdate within maxSurge and maxUnavailable at every watch event, Recreate
//! never running old and new pods together. Both end on the new image, answering
//! on their pod IPs. A pod that never gets ready holds a rollout until its
//! progress deadline; pause, minReadySeconds, a deleted pod replaced, an image by
//! digest after a push to the test registry. At most 4 pods; every wait bounded.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

use crate::kube_support::apps::{
    WAIT, answer, app_image, condition, double, image, pod_ready, pod_template_hash, pods_of,
    rolled_out, terminating, wait_for, web,
};

const NS: &str = "rollouts";

/// Pods by name, as a watch keeps them.
#[derive(Default)]
struct Seen(BTreeMap<String, Pod>);

impl Seen {
    fn apply(&mut self, ev: WatchEvent<Pod>) {
        match ev {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                self.0.insert(p.metadata.name.clone().unwrap(), p);
            }
            WatchEvent::Deleted(p) => {
                self.0.remove(p.metadata.name.as_deref().unwrap());
            }
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error: {e:?}"),
        }
    }
    /// Pods that count: not terminating.
    fn live(&self) -> impl Iterator<Item = &Pod> {
        self.0.values().filter(|p| !terminating(p))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_stays_within_max_surge_and_max_unavailable() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    deployments
        .create(&PostParams::default(), &web("web", 3, "v1", strategy))
        .await
        .unwrap();
    wait_for(&deployments, "web", "3 available replicas", rolled_out).await;

    // Every pod event from here on, checked against the bounds.
    let list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    let mut seen = Seen::default();
    for p in list.items {
        seen.0.insert(p.metadata.name.clone().unwrap(), p);
    }
    let wp = WatchParams::default().labels("app=web").timeout(280);
    let mut events = pods
        .watch(&wp, list.metadata.resource_version.as_deref().unwrap())
        .await
        .unwrap()
        .boxed();

    let v2 = app_image("v2");
    let patch = Patch::Strategic(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": v2}]}}}}),
    );
    let updated = deployments
        .patch("web", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(updated.metadata.generation, Some(2));

    let (mut most, mut fewest_ready, mut events_seen) = (0, usize::MAX, 0);
    let watched = tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.try_next().await.unwrap() {
            seen.apply(ev);
            events_seen += 1;
            let live: Vec<&Pod> = seen.live().collect();
            let ready = live.iter().filter(|p| pod_ready(p)).count();
            most = most.max(live.len());
            fewest_ready = fewest_ready.min(ready);
            assert!(
                live.len() <= 4,
                "more than replicas + maxSurge pods: {:?}",
                seen.0.keys()
            );
            assert!(
                ready >= 2,
                "fewer than replicas - maxUnavailable ready pods: {:?}",
                seen.0.keys()
            );
            let done = seen.0.len() == 3 && seen.0.values().all(|p| image(p) == v2 && pod_ready(p));
            if done {
                return;
            }
        }
        panic!("the watch ended before the rollout did");
    })
    .await;
    assert!(
        watched.is_ok(),
        "the rollout did not finish within {WAIT:?}: {:#?}",
        seen.0.keys()
    );
    assert!(
        events_seen > 6 && most == 4,
        "the rollout used its surge: at most {most} pods, {events_seen} events"
    );
    assert!(fewest_ready >= 2);

    let done = wait_for(
        &deployments,
        "web",
        "the rollout of generation 2",
        rolled_out,
    )
    .await;
    assert_eq!(done.status.as_ref().unwrap().observed_generation, Some(2));
    assert_eq!(
        condition(&done, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into()))
    );
    for p in pods_of(&pods, "web").await {
        assert_eq!(answer(&p).await, "v2\n");
    }
    // The old ReplicaSet stays, scaled to 0, for a rollback.
    let sets: Api<ReplicaSet> = Api::namespaced(d.client(), NS);
    let mut replicas: Vec<(i32, String)> = sets
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .iter()
        .map(|rs| {
            let revision =
                rs.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision"]
                    .clone();
            (rs.spec.as_ref().unwrap().replicas.unwrap(), revision)
        })
        .collect();
    replicas.sort();
    assert_eq!(replicas, [(0, "1".to_owned()), (3, "2".to_owned())]);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_removes_every_old_pod_before_the_first_new_one() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    deployments
        .create(
            &PostParams::default(),
            &web("re", 2, "v1", json!({"type": "Recreate"})),
        )
        .await
        .unwrap();
    wait_for(&deployments, "re", "2 available replicas", rolled_out).await;
    let list = pods
        .list(&ListParams::default().labels("app=re"))
        .await
        .unwrap();
    let mut seen = Seen::default();
    for p in list.items {
        seen.0.insert(p.metadata.name.clone().unwrap(), p);
    }
    let old_hash = pod_template_hash(&seen.0.values().next().unwrap().metadata.labels);
    let wp = WatchParams::default().labels("app=re").timeout(280);
    let mut events = pods
        .watch(&wp, list.metadata.resource_version.as_deref().unwrap())
        .await
        .unwrap()
        .boxed();
    let v2 = app_image("v2");
    let patch = Patch::Strategic(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": v2}]}}}}),
    );
    deployments
        .patch("re", &PatchParams::default(), &patch)
        .await
        .unwrap();
    let watched = tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.try_next().await.unwrap() {
            seen.apply(ev);
            let old = seen
                .0
                .values()
                .filter(|p| pod_template_hash(&p.metadata.labels) == old_hash)
                .count();
            let new = seen.0.len() - old;
            assert!(
                old == 0 || new == 0,
                "old and new pods at once: {:?}",
                seen.0.keys()
            );
            if new == 2 && seen.0.values().all(pod_ready) {
                return;
            }
        }
        panic!("the watch ended before the rollout did");
    })
    .await;
    assert!(watched.is_ok(), "Recreate did not finish within {WAIT:?}");
    wait_for(
        &deployments,
        "re",
        "the rollout of generation 2",
        rolled_out,
    )
    .await;
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unready_pod_holds_the_rollout_until_the_progress_deadline() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let mut bad = web("unready", 1, "v1", serde_json::Value::Null);
    let spec = bad.spec.as_mut().unwrap();
    spec.progress_deadline_seconds = Some(4);
    let probe = spec.template.spec.as_mut().unwrap().containers[0]
        .readiness_probe
        .as_mut()
        .unwrap();
    probe.http_get.as_mut().unwrap().path = Some("/missing".into());
    deployments
        .create(&PostParams::default(), &bad)
        .await
        .unwrap();

    let timed_out = wait_for(&deployments, "unready", "ProgressDeadlineExceeded", |d| {
        condition(d, "Progressing").is_some_and(|(_, r)| r == "ProgressDeadlineExceeded")
    })
    .await;
    assert_eq!(condition(&timed_out, "Progressing").unwrap().0, "False");
    assert_eq!(
        condition(&timed_out, "Available"),
        Some(("False".into(), "MinimumReplicasUnavailable".into()))
    );
    let status = timed_out.status.unwrap();
    assert_eq!(
        (
            status.replicas,
            status.available_replicas,
            status.unavailable_replicas
        ),
        (Some(1), None, Some(1))
    );
    let pod = &pods_of(&pods, "unready").await[0];
    let s = pod.status.as_ref().unwrap();
    assert_eq!(s.phase.as_deref(), Some("Running"));
    assert!(!pod_ready(pod));
    assert!(!s.container_statuses.as_ref().unwrap()[0].ready);
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_rolls_out_only_when_resumed() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let sets: Api<ReplicaSet> = Api::namespaced(d.client(), NS);
    deployments
        .create(
            &PostParams::default(),
            &web("pz", 1, "v1", serde_json::Value::Null),
        )
        .await
        .unwrap();
    wait_for(&deployments, "pz", "1 available replica", rolled_out).await;
    let v2 = app_image("v2");
    let pause = Patch::Strategic(json!({"spec": {"paused": true, "template": {"spec": {
        "containers": [{"name": "web", "image": v2}]}}}}));
    deployments
        .patch("pz", &PatchParams::default(), &pause)
        .await
        .unwrap();
    let paused = wait_for(&deployments, "pz", "the pause observed", |d| {
        d.status.as_ref().unwrap().observed_generation == Some(2)
    })
    .await;
    assert_eq!(
        condition(&paused, "Progressing"),
        Some(("Unknown".into(), "DeploymentPaused".into()))
    );
    let rs = sets
        .list(&ListParams::default().labels("app=pz"))
        .await
        .unwrap();
    assert_eq!(rs.items.len(), 1, "no new ReplicaSet while paused");
    assert!(pods_of(&pods, "pz").await.iter().all(|p| image(p) != v2));

    let resume = Patch::Merge(json!({"spec": {"paused": false}}));
    deployments
        .patch("pz", &PatchParams::default(), &resume)
        .await
        .unwrap();
    let done = wait_for(&deployments, "pz", "the rollout after the resume", |d| {
        rolled_out(d)
            && condition(d, "Progressing").is_some_and(|(_, r)| r == "NewReplicaSetAvailable")
    })
    .await;
    assert_eq!(done.metadata.generation, Some(3));
    let now = pods_of(&pods, "pz").await;
    assert!(now.iter().any(|p| image(p) == v2 && pod_ready(p)));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_ready_seconds_delays_availability() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let mut slow = web("mr", 1, "v1", serde_json::Value::Null);
    slow.spec.as_mut().unwrap().min_ready_seconds = Some(2);
    deployments
        .create(&PostParams::default(), &slow)
        .await
        .unwrap();
    let available = wait_for(&deployments, "mr", "1 available replica", rolled_out).await;
    let since = |conditions: Vec<(String, String, Option<k8s_openapi::jiff::Timestamp>)>,
                 kind: &str| {
        conditions
            .into_iter()
            .find(|(t, s, _)| t == kind && s == "True")
            .and_then(|(_, _, at)| at)
            .unwrap_or_else(|| panic!("no {kind}=True"))
    };
    let deployment_conditions = available
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status, c.last_transition_time.map(|t| t.0)))
        .collect();
    let pod = &pods_of(&pods, "mr").await[0];
    let pod_conditions = pod
        .status
        .clone()
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .map(|c| (c.type_, c.status, c.last_transition_time.map(|t| t.0)))
        .collect();
    let ready_at = since(pod_conditions, "Ready");
    let available_at = since(deployment_conditions, "Available");
    // The server's own clock, to the second: available no sooner than ready + 2 s.
    assert!(
        available_at.duration_since(ready_at).as_secs() >= 2,
        "ready at {ready_at}, available at {available_at}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_pod_is_replaced() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    deployments
        .create(
            &PostParams::default(),
            &web("heal", 2, "v1", serde_json::Value::Null),
        )
        .await
        .unwrap();
    wait_for(&deployments, "heal", "2 available replicas", rolled_out).await;
    let before = pods_of(&pods, "heal").await;
    let victim = before[0].metadata.name.clone().unwrap();
    pods.delete(&victim, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    let healed = tokio::time::timeout(WAIT, async {
        loop {
            let now = pods_of(&pods, "heal").await;
            let fine = now.len() == 2
                && now.iter().all(pod_ready)
                && now
                    .iter()
                    .all(|p| p.metadata.name.as_deref() != Some(&victim));
            if fine {
                return now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the ReplicaSet replaced the deleted pod");
    assert!(
        healed
            .iter()
            .any(|p| p.metadata.name == before[1].metadata.name)
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_runs_an_image_by_digest() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let reference = crate::kube_support::apps::pushed_by_digest("v2");
    let mut by_digest = web("dg", 1, "v1", serde_json::Value::Null);
    let spec = by_digest.spec.as_mut().unwrap();
    spec.template.spec.as_mut().unwrap().containers[0].image = Some(reference.clone());
    let created = deployments
        .create(&PostParams::default(), &by_digest)
        .await
        .unwrap();
    let container = &created.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
    wait_for(&deployments, "dg", "1 available replica", rolled_out).await;
    let running = &pods_of(&pods, "dg").await[0];
    assert_eq!(image(running), reference);
    assert_eq!(answer(running).await, "v2\n");
    d.shutdown().await;
}
