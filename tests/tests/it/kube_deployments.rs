//! apps/v1 Deployments on the API-server test double, driven by a real
//! `kube::Api<Deployment>`: their ReplicaSets and pods (run on Docker, ready by
//! their readiness probes), the API's refusals, optimistic concurrency and
//! generations, patches, scaling, deletion with each propagation policy, the
//! (rollouts and the progress deadline: kube_rollouts). Pods are few and every
//! wait is bounded.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use serde_json::json;
use tests::k8s_tools::{KUBERNETES_VERSION, kubernetes_validate_strict};

use crate::kube_support::apps::{
    WAIT, answer, app_image, condition, double, pod_ready, pod_template_hash, pods_of, rolled_out,
    terminating, wait_for, web,
};
use crate::kube_support::{Poll, eventually};

const NS: &str = "apps";
/// The newest Kubernetes whose schemas kubernetes-validate ships (as kube_objects).
const NEWEST_KUBERNETES: &str = "1.37.0";
const POLL: Poll = Poll::within(WAIT);

fn api_error(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn every_test_deployment_passes_kubernetes_validate_strict() {
    let rolling =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    let fixtures = [
        web("web", 3, "v1", serde_json::Value::Null),
        web("web", 3, "v2", rolling),
        web("re", 2, "v1", json!({"type": "Recreate"})),
    ];
    let mut yaml = String::new();
    for d in &fixtures {
        yaml.push_str("---\n");
        yaml.push_str(&serde_json::to_string_pretty(d).unwrap());
        yaml.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deployments.yaml");
    std::fs::write(&file, yaml).unwrap();
    for version in [KUBERNETES_VERSION, NEWEST_KUBERNETES] {
        kubernetes_validate_strict(&file, version, fixtures.len())
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_becomes_available_through_its_replica_set() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let sets: Api<ReplicaSet> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let created = deployments
        .create(
            &PostParams::default(),
            &web("web", 3, "v1", serde_json::Value::Null),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());
    // The API's defaults.
    let spec = created.spec.clone().unwrap();
    let rolling = spec.strategy.unwrap().rolling_update.unwrap();
    assert_eq!(
        serde_json::to_value(&rolling).unwrap(),
        json!({"maxSurge": "25%", "maxUnavailable": "25%"})
    );
    assert_eq!(spec.progress_deadline_seconds, Some(600));
    assert_eq!(
        spec.template.spec.unwrap().restart_policy.as_deref(),
        Some("Always")
    );

    let done = wait_for(&deployments, "web", "3 available replicas", rolled_out).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.unavailable_replicas, None);
    assert_eq!(
        condition(&done, "Available"),
        Some(("True".into(), "MinimumReplicasAvailable".into()))
    );
    assert_eq!(
        condition(&done, "Progressing"),
        Some(("True".into(), "NewReplicaSetAvailable".into()))
    );
    let revision = |a: &Option<BTreeMap<String, String>>| {
        a.as_ref()
            .and_then(|a| a.get("deployment.kubernetes.io/revision").cloned())
    };
    assert_eq!(revision(&done.metadata.annotations).as_deref(), Some("1"));

    // One ReplicaSet, owned by the Deployment, named and selected by the template hash.
    let rs_list = sets
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items;
    assert_eq!(rs_list.len(), 1, "{rs_list:#?}");
    let rs = &rs_list[0];
    let h = pod_template_hash(&rs.metadata.labels);
    assert!(!h.is_empty());
    assert_eq!(
        rs.metadata.name.as_deref(),
        Some(format!("web-{h}").as_str())
    );
    let owner = &rs.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Deployment", Some(true))
    );
    assert_eq!(Some(&owner.uid), created.metadata.uid.as_ref());
    assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(revision(&rs.metadata.annotations).as_deref(), Some("1"));

    let ready = pods_of(&pods, "web").await;
    assert_eq!(ready.len(), 3);
    for p in &ready {
        assert!(pod_ready(p), "{:#?}", p.status);
        assert_eq!(pod_template_hash(&p.metadata.labels), h);
        let owner = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", rs.metadata.name.as_deref().unwrap())
        );
        assert!(
            p.metadata
                .name
                .as_deref()
                .unwrap()
                .starts_with(&format!("web-{h}-"))
        );
        let container = &p
            .status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0];
        assert!(container.ready && container.started == Some(true));
        assert_eq!(answer(p).await, "v1\n");
    }

    // The double's kubeconfig reaches the same API (what an environment holds).
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&d.kubeconfig(NS)).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let same: Api<Deployment> = Api::default_namespaced(client);
    assert_eq!(
        same.get("web").await.unwrap().metadata.uid,
        created.metadata.uid
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_a_cluster_refuses() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pp = PostParams::default();
    let ok = web("ok", 0, "v1", serde_json::Value::Null);
    deployments.create(&pp, &ok).await.unwrap();
    let (code, reason, message) = api_error(deployments.create(&pp, &ok).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(message, "deployments.apps \"ok\" already exists");
    let (code, reason, message) = api_error(deployments.get("nope").await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (404, "NotFound", "deployments.apps \"nope\" not found")
    );

    let invalid = async |d: Deployment| {
        let (code, reason, message) = api_error(deployments.create(&pp, &d).await.unwrap_err());
        assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
        message
    };
    let mut mismatch = web("mismatch", 1, "v1", serde_json::Value::Null);
    mismatch.spec.as_mut().unwrap().selector =
        serde_json::from_value(json!({"matchLabels": {"app": "other"}})).unwrap();
    assert!(invalid(mismatch).await.contains("spec.template.metadata.labels: Invalid value: {\"app\":\"mismatch\"}: `selector` does not match template `labels`"));
    let both_zero = web(
        "zero",
        1,
        "v1",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": "0%"}}),
    );
    assert!(invalid(both_zero).await.contains("spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may not be 0 when `maxSurge` is 0"));
    let recreate = web(
        "re",
        1,
        "v1",
        json!({"type": "Recreate", "rollingUpdate": {"maxSurge": 1}}),
    );
    assert!(
        invalid(recreate)
            .await
            .contains("may not be specified when strategy `type` is 'Recreate'")
    );
    let mut never = web("never", 1, "v1", serde_json::Value::Null);
    never
        .spec
        .as_mut()
        .unwrap()
        .template
        .spec
        .as_mut()
        .unwrap()
        .restart_policy = Some("Never".into());
    assert!(invalid(never).await.contains("spec.template.spec.restartPolicy: Unsupported value: \"Never\": supported values: \"Always\""));

    // No selector at all (a typed client cannot send that): 422 Required.
    let mut raw = serde_json::to_value(web("raw", 1, "v1", serde_json::Value::Null)).unwrap();
    raw["spec"].as_object_mut().unwrap().remove("selector");
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments",
            d.base_url
        ))
        .json(&raw)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
    let status: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status["reason"], "Invalid");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("spec.selector: Required value"),
        "{status}"
    );

    // The selector is immutable (an unconditional update: no resourceVersion).
    let mut changed = deployments.get("ok").await.unwrap();
    changed.metadata.resource_version = None;
    let spec = changed.spec.as_mut().unwrap();
    spec.selector =
        serde_json::from_value(json!({"matchLabels": {"app": "ok", "tier": "web"}})).unwrap();
    spec.template
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert("tier".into(), "web".into());
    let (code, _, message) = api_error(deployments.replace("ok", &pp, &changed).await.unwrap_err());
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.selector: Invalid value") && message.contains("field is immutable"),
        "{message}"
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_optimistic_and_generations_count_spec_changes() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pp = PostParams::default();
    // No replicas: no pods needed to check the API.
    let created = deployments
        .create(&pp, &web("gen", 0, "v1", serde_json::Value::Null))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let generation = |d: &Deployment| d.metadata.generation.unwrap();
    // The controller writes the status (a new resourceVersion) until the rollout
    // is done: a write from before that would conflict, as on a cluster.
    let first = wait_for(&deployments, "gen", "its rollout", rolled_out).await;

    let mut next = first.clone();
    next.spec.as_mut().unwrap().min_ready_seconds = Some(1);
    let second = deployments.replace("gen", &pp, &next).await.unwrap();
    assert_eq!(generation(&second), 2);
    assert_ne!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    // The same write again, from the old resourceVersion: a conflict.
    let (code, reason, message) =
        api_error(deployments.replace("gen", &pp, &next).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        "Operation cannot be fulfilled on deployments.apps \"gen\": the object has been modified; please apply your changes to the latest version and try again"
    );

    let patch = |p: serde_json::Value| Patch::Merge(p);
    let pa = PatchParams::default();
    // A label is metadata: no new generation.
    let labelled = deployments
        .patch(
            "gen",
            &pa,
            &patch(json!({"metadata": {"labels": {"team": "a"}}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&labelled), 2);
    // The template is spec; annotations bump it too (they are copied to ReplicaSets).
    let merged = deployments
        .patch(
            "gen",
            &pa,
            &patch(json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&merged), 3);
    let annotated = deployments
        .patch(
            "gen",
            &pa,
            &patch(json!({"metadata": {"annotations": {"note": "x"}}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&annotated), 4);
    // A strategic merge patch merges containers by name.
    let image = app_image("v2");
    let strategic = Patch::Strategic(
        json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": image}]}}}}),
    );
    let patched = deployments.patch("gen", &pa, &strategic).await.unwrap();
    let container = &patched
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(container.image.as_deref(), Some(image.as_str()));
    assert!(
        container.readiness_probe.is_some(),
        "the other fields of the container stay"
    );
    assert_eq!(generation(&patched), 5);
    // A merge patch with a stale resourceVersion conflicts.
    let stale = patch(
        json!({"metadata": {"resourceVersion": first.metadata.resource_version}, "spec": {"replicas": 0}}),
    );
    assert_eq!(
        api_error(deployments.patch("gen", &pa, &stale).await.unwrap_err()).0,
        409
    );
    // JSON patch (kube's `Patch::Json` needs a feature this workspace leaves off:
    // plain HTTP); server-side apply is refused clearly.
    let resp = reqwest::Client::new()
        .patch(format!(
            "{}/apis/apps/v1/namespaces/{NS}/deployments/gen",
            d.base_url
        ))
        .header("content-type", "application/json-patch+json")
        .body(
            json!([
                {"op": "test", "path": "/spec/minReadySeconds", "value": 1},
                {"op": "replace", "path": "/spec/minReadySeconds", "value": 2}
            ])
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let patched: Deployment = resp.json().await.unwrap();
    assert_eq!(
        (
            patched.spec.as_ref().unwrap().min_ready_seconds,
            generation(&patched)
        ),
        (Some(2), 6)
    );
    let apply = Patch::Apply(
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gen"}}),
    );
    let (code, reason, _) = api_error(
        deployments
            .patch("gen", &PatchParams::apply("test"), &apply)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));

    // The status subresource: the controller's; no new generation from it.
    let current = deployments.get("gen").await.unwrap();
    let status = deployments.get_status("gen").await.unwrap();
    assert_eq!(status.metadata.generation, current.metadata.generation);
    let scaled = deployments
        .patch_scale("gen", &pa, &patch(json!({"spec": {"replicas": 0}})))
        .await
        .unwrap();
    assert_eq!(scaled.spec.unwrap().replicas, Some(0));
    assert_eq!(scaled.status.unwrap().selector.as_deref(), Some("app=gen"));

    // Watch with a label selector sees the changes of the selected ones only.
    let lp_rv = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = WatchParams::default().labels("team=a").timeout(10);
    let mut events = deployments.watch(&wp, &lp_rv).await.unwrap().boxed();
    deployments
        .create(&pp, &web("other", 0, "v1", serde_json::Value::Null))
        .await
        .unwrap();
    deployments
        .patch("gen", &pa, &patch(json!({"spec": {"minReadySeconds": 3}})))
        .await
        .unwrap();
    match events.try_next().await.unwrap() {
        Some(WatchEvent::Modified(d)) => assert_eq!(d.metadata.name.as_deref(), Some("gen")),
        other => panic!("expected the MODIFIED of gen, got {other:?}"),
    }
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_to_zero_and_back() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    deployments
        .create(
            &PostParams::default(),
            &web("sc", 2, "v1", serde_json::Value::Null),
        )
        .await
        .unwrap();
    wait_for(&deployments, "sc", "2 available replicas", rolled_out).await;

    let mut scale = deployments.get_scale("sc").await.unwrap();
    assert_eq!(scale.spec.as_ref().unwrap().replicas, Some(2));
    scale.spec.as_mut().unwrap().replicas = Some(0);
    deployments
        .replace_scale("sc", &PostParams::default(), &scale)
        .await
        .unwrap();
    let zero = wait_for(&deployments, "sc", "no replicas", |d| {
        rolled_out(d) && d.status.as_ref().unwrap().replicas.is_none()
    })
    .await;
    assert_eq!(zero.metadata.generation, Some(2));
    eventually("the pods gone", POLL, async || {
        pods_of(&pods, "sc").await.is_empty().then_some(())
    })
    .await;

    let back = Patch::Merge(json!({"spec": {"replicas": 2}}));
    deployments
        .patch("sc", &PatchParams::default(), &back)
        .await
        .unwrap();
    let two = wait_for(&deployments, "sc", "2 available replicas again", rolled_out).await;
    assert_eq!(two.metadata.generation, Some(3));
    // A scale is no rollout: still one ReplicaSet, revision 1.
    let sets: Api<ReplicaSet> = Api::namespaced(d.client(), NS);
    assert_eq!(
        sets.list(&ListParams::default().labels("app=sc"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_cascades_to_replica_sets_and_pods() {
    let d = double().await;
    let deployments: Api<Deployment> = Api::namespaced(d.client(), NS);
    let sets: Api<ReplicaSet> = Api::namespaced(d.client(), NS);
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    for name in ["bg", "fg", "or"] {
        deployments
            .create(
                &PostParams::default(),
                &web(name, 1, "v1", serde_json::Value::Null),
            )
            .await
            .unwrap();
    }
    for name in ["bg", "fg", "or"] {
        wait_for(&deployments, name, "1 available replica", rolled_out).await;
    }
    let sets_of = async |app: &str| {
        sets.list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap()
            .items
    };

    // Background (the default): gone at once, then its ReplicaSet and pods.
    let status = deployments
        .delete("bg", &DeleteParams::default())
        .await
        .unwrap()
        .right()
        .expect("a Status");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    assert_eq!(api_error(deployments.get("bg").await.unwrap_err()).0, 404);
    eventually("bg's ReplicaSet and pods gone", POLL, async || {
        (sets_of("bg").await.is_empty() && pods_of(&pods, "bg").await.is_empty()).then_some(())
    })
    .await;

    // Foreground: the Deployment stays, being deleted, until its pods are gone.
    let pending = deployments
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap()
        .left()
        .expect("the object");
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert_eq!(
        pending.metadata.finalizers.as_deref(),
        Some(&["foregroundDeletion".to_owned()][..])
    );
    eventually("fg gone", POLL, async || {
        deployments.get("fg").await.is_err().then_some(())
    })
    .await;
    assert!(
        pods_of(&pods, "fg").await.is_empty(),
        "the Deployment went only after its pods"
    );
    assert!(sets_of("fg").await.is_empty());

    // Orphan: the ReplicaSet and its pod stay, owned by nothing.
    deployments
        .delete("or", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually("or gone", POLL, async || {
        deployments.get("or").await.is_err().then_some(())
    })
    .await;
    let orphans = sets_of("or").await;
    assert_eq!(orphans.len(), 1);
    assert!(
        orphans[0]
            .metadata
            .owner_references
            .as_ref()
            .is_none_or(Vec::is_empty)
    );
    let left = pods_of(&pods, "or").await;
    assert_eq!(left.len(), 1);
    assert!(!terminating(&left[0]));
    // The same Deployment again adopts them (no new pod), and a Background delete
    // of it then takes them.
    let again = deployments
        .create(
            &PostParams::default(),
            &web("or", 1, "v1", serde_json::Value::Null),
        )
        .await
        .unwrap();
    let adopted = eventually("or's ReplicaSet adopted", POLL, async || {
        let rs = sets_of("or").await.pop()?;
        let owner = rs.metadata.owner_references.clone()?.pop()?;
        (owner.uid == again.metadata.uid.clone()?).then_some(rs)
    })
    .await;
    assert_eq!(adopted.metadata.name, orphans[0].metadata.name);
    wait_for(&deployments, "or", "1 available replica", rolled_out).await;
    let kept = pods_of(&pods, "or").await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].metadata.name, left[0].metadata.name);
    deployments
        .delete("or", &DeleteParams::default())
        .await
        .unwrap();
    eventually("or's ReplicaSet and pod gone", POLL, async || {
        (sets_of("or").await.is_empty() && pods_of(&pods, "or").await.is_empty()).then_some(())
    })
    .await;
    d.shutdown().await;
}
