//! Every core object the rollout controller generates — the new version's Deployment
//! (routed and by replicas), the canary and preview Services, the ingress-nginx canary
//! Ingress — passes `kubernetes-validate --strict` against the oldest supported and
//! the newest shipped schema; the HTTPRoute it writes is typed with the `gateway-api`
//! crate and round-trips through it unchanged. Pure: built from typed stable objects.

use std::collections::BTreeMap;

use gateway_api::httproutes::HttpRoute;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use pipelines::RequestMatch;
use serde_json::{Value, json};
use server::rollout::actions::Desired;
use server::rollout::objects::{CanaryPods, canary_deployment, canary_service};
use server::rollout::traffic::{canary_ingress, route_for};
use tests::k8s_tools::{KUBERNETES_VERSION, NEWEST_KUBERNETES, kubernetes_validate_strict};

fn stable() -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "namespace": "shop", "uid": "0b6c3f5e-2f7a-4c55-9d1e-8f6a3c1d2e4b" },
        "spec": {
            "replicas": 4,
            "selector": { "matchLabels": { "app": "web" } },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxSurge": "25%", "maxUnavailable": 0 } },
            "template": {
                "metadata": { "labels": { "app": "web", "tier": "front" } },
                "spec": { "containers": [{
                    "name": "web", "image": "registry.example.com/web:1",
                    "ports": [{ "name": "http", "containerPort": 8080 }],
                    "readinessProbe": { "httpGet": { "path": "/healthz", "port": "http" } }
                }] }
            }
        }
    }))
    .unwrap()
}

fn service() -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "selector": { "app": "web" }, "ports": [{ "name": "http", "port": 80, "targetPort": "http" }] }
    }))
    .unwrap()
}

fn typed_json<T: serde::Serialize>(kind: &str, api: &str, t: &T) -> Value {
    let mut v = serde_json::to_value(t).unwrap();
    // k8s-openapi serialises apiVersion and kind itself; check they are right.
    assert_eq!(
        (v["apiVersion"].as_str(), v["kind"].as_str()),
        (Some(api), Some(kind)),
        "{v}"
    );
    v.as_object_mut().unwrap().remove("status");
    v
}

#[test]
fn every_generated_core_object_passes_kubernetes_validate_strict() {
    let image = format!("registry.example.com/web@sha256:{}", "a".repeat(64));
    let selector: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    let mut objects = Vec::new();
    for keep in [false, true] {
        let d = canary_deployment(
            &stable(),
            &CanaryPods {
                image: &image,
                container: Some("web"),
                replicas: 1,
                keep_stable_labels: keep,
                service_selector: &selector,
                rollout: 42,
            },
        )
        .unwrap();
        objects.push(typed_json("Deployment", "apps/v1", &d));
    }
    for name in ["web-canary", "web-preview"] {
        let s = canary_service(name, &stable(), &service(), 42).unwrap();
        objects.push(typed_json("Service", "v1", &s));
    }
    let ingress: Ingress = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "ingressClassName": "nginx", "rules": [{ "host": "shop.example.com", "http": { "paths": [
            { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "name": "http" } } } }
        ] } }] }
    }))
    .unwrap();
    let d = Desired {
        weight: 20,
        matched: Some(RequestMatch::Header {
            name: "x-user-group".into(),
            value: "beta".into(),
        }),
        ..Default::default()
    };
    let owner = canary_deployment(
        &stable(),
        &CanaryPods {
            image: &image,
            container: None,
            replicas: 1,
            keep_stable_labels: false,
            service_selector: &selector,
            rollout: 42,
        },
    )
    .unwrap()
    .metadata;
    let canary = canary_ingress(&ingress, "web", "web-canary", &d, owner).unwrap();
    objects.push(typed_json("Ingress", "networking.k8s.io/v1", &canary));

    let mut yaml = String::new();
    for o in &objects {
        yaml.push_str("---\n");
        yaml.push_str(&serde_json::to_string_pretty(o).unwrap());
        yaml.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rollout-objects.yaml");
    std::fs::write(&file, &yaml).unwrap();
    for version in [KUBERNETES_VERSION, NEWEST_KUBERNETES] {
        if let Err(e) = kubernetes_validate_strict(&file, version, objects.len()) {
            panic!("{e}");
        }
    }
}

#[test]
fn the_route_is_gateway_api_typed_and_round_trips() {
    let route: HttpRoute = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "web", "namespace": "shop" },
        "spec": { "parentRefs": [{ "name": "gateway" }], "rules": [{ "backendRefs": [{ "name": "web", "port": 80 }] }] }
    }))
    .unwrap();
    let d = Desired {
        weight: 30,
        mirror: Some(10),
        matched: Some(RequestMatch::Cookie {
            name: "group".into(),
            value: "beta".into(),
        }),
        ..Default::default()
    };
    let got = route_for(&route, "web", "web-canary", &d).unwrap();
    let text = serde_json::to_value(&got).unwrap();
    let back: HttpRoute = serde_json::from_value(text.clone()).unwrap();
    assert_eq!(back, got);
    assert_eq!(text["kind"], "HTTPRoute");
    let filters = &text["spec"]["rules"][1]["filters"][0];
    assert_eq!(filters["type"], "RequestMirror", "{text:#}");
    assert_eq!(filters["requestMirror"]["percent"], 10);
}
