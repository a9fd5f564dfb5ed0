//! The kube double's core/v1 Services (real TCP to ready pods, through a real
//! `kube::Client`), networking.k8s.io/v1 Ingresses and owner garbage collection.
//! Pods run the web app of `kube_support::web` on Docker; every wait is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::kube_support::web::{self, api_error};
use crate::kube_support::{self, Poll, eventually};

const NS: &str = "apps";
const QUICK: Poll = Poll::within(Duration::from_secs(20));

/// What a client of a Service without endpoints sees: the connection is reset.
async fn is_reset(addr: SocketAddr) -> bool {
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    matches!(read, Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

fn is_refused(r: std::io::Result<tokio::net::TcpStream>) -> bool {
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
}

#[tokio::test]
async fn a_service_spreads_connections_over_its_ready_pods() {
    let d = kube_support::double().await;
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let services: Api<Service> = Api::namespaced(d.client(), NS);
    let (v1, v2) = (
        web::image(d.docker(), "v1").await,
        web::image(d.docker(), "v2").await,
    );
    let svc = web::service("web", &[("app", "web")], json!("http"));
    services.create(&PostParams::default(), &svc).await.unwrap();
    let addr = d
        .service_addr(NS, "web", 80)
        .expect("a listener for port 80");
    assert!(
        is_reset(addr).await,
        "no endpoint yet: connections are reset"
    );

    web::start(
        &pods,
        vec![
            web::pod("web-v1", &v1, &[("app", "web")]),
            web::pod("web-v2", &v2, &[("app", "web")]),
            web::pod("other", &v2, &[("app", "other")]),
        ],
    )
    .await;
    let http = web::fresh_connections();
    // Both pods' servers listening: both versions answer.
    eventually("both versions answering", web::WAIT, async || {
        let a = web::get(&http, addr, "/", &[]).await.ok()?;
        let b = web::get(&http, addr, "/", &[]).await.ok()?;
        (a.0 == 200 && b.0 == 200 && a.1 != b.1).then_some(())
    })
    .await;
    let mut answers: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        let (status, body) = web::get(&http, addr, "/", &[]).await.unwrap();
        assert_eq!(status, 200);
        *answers.entry(body).or_default() += 1;
    }
    assert_eq!(answers.len(), 2, "{answers:?}");
    for version in ["v1", "v2"] {
        let n = answers.get(version).copied().unwrap_or(0);
        assert!(
            (80..=120).contains(&n),
            "{version}: {n} of 200 ({answers:?})"
        );
    }

    // A terminating pod is no endpoint any more.
    pods.delete("web-v2", &DeleteParams::default())
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(
            web::get(&http, addr, "/", &[]).await.unwrap(),
            (200, "v1".into())
        );
    }
    // The Service's address survives an update that keeps the port.
    let patch = json!({"spec": {"selector": {"app": "other"}}});
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(d.service_addr(NS, "web", 80), Some(addr));
    assert_eq!(
        web::get(&http, addr, "/", &[]).await.unwrap(),
        (200, "v2".into())
    );
    assert!(d.shutdown().await.is_empty());
}

#[tokio::test]
async fn deleting_a_service_closes_its_listener() {
    let d = kube_support::double().await;
    let services: Api<Service> = Api::namespaced(d.client(), NS);
    let svc = web::service("gone", &[("app", "none")], json!(8080));
    services.create(&PostParams::default(), &svc).await.unwrap();
    let addr = d.service_addr(NS, "gone", 80).unwrap();
    assert!(is_reset(addr).await);
    assert_eq!(d.service_addr(NS, "gone", 81), None, "no such port");
    services
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    // Closed when the DELETE returns.
    assert!(is_refused(tokio::net::TcpStream::connect(addr).await));
    assert_eq!(d.service_addr(NS, "gone", 80), None);
    assert!(d.shutdown().await.is_empty());
}

#[tokio::test]
async fn the_service_api_validates_and_guards_updates() {
    let d = kube_support::double().await;
    let services: Api<Service> = Api::namespaced(d.client(), NS);
    let pp = PostParams::default();
    let bad = |spec: serde_json::Value| -> Service {
        serde_json::from_value(json!({"metadata": {"name": "bad"}, "spec": spec})).unwrap()
    };
    for (spec, want) in [
        (
            json!({"selector": {"app": "web"}}),
            "spec.ports: Required value",
        ),
        (
            json!({"ports": [{"name": "http", "port": 80}, {"name": "http", "port": 81}]}),
            "spec.ports[1].name: Duplicate value: \"http\"",
        ),
        (
            json!({"ports": [{"port": 0}]}),
            "spec.ports[0].port: Invalid value: 0",
        ),
        (
            json!({"ports": [{"port": 80}], "selector": {"app": "not valid"}}),
            "spec.selector: Invalid value: \"not valid\"",
        ),
        (
            json!({"ports": [{"port": 80, "targetPort": "not_a_name"}]}),
            "spec.ports[0].targetPort: Invalid value: \"not_a_name\"",
        ),
        (
            json!({"type": "NodePort", "ports": [{"port": 80}]}),
            "spec.type: Unsupported value: \"NodePort\"",
        ),
    ] {
        let (code, message) = api_error(services.create(&pp, &bad(spec)).await);
        assert_eq!(code, 422, "{message}");
        assert!(
            message.starts_with("Service \"bad\" is invalid: "),
            "{message}"
        );
        assert!(message.contains(want), "{want} not in {message}");
    }

    let mut front = web::service("front", &[("app", "web")], json!(8080));
    front.metadata.labels = Some([("tier".to_owned(), "front".to_owned())].into());
    let created = services.create(&pp, &front).await.unwrap();
    let spec = created.spec.clone().unwrap();
    let ip: std::net::Ipv4Addr = spec.cluster_ip.clone().unwrap().parse().unwrap();
    assert_eq!(ip.octets()[0], 10);
    assert!((96..112).contains(&ip.octets()[1]), "{ip} in 10.96.0.0/12");
    assert_eq!(spec.cluster_ips, Some(vec![ip.to_string()]));
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));

    let mut taken = web::service("back", &[("app", "db")], json!(5432));
    taken.spec.as_mut().unwrap().cluster_ip = Some(ip.to_string());
    let (code, message) = api_error(services.create(&pp, &taken).await);
    assert_eq!(code, 422);
    assert!(
        message.contains("provided IP is already allocated"),
        "{message}"
    );
    taken.spec.as_mut().unwrap().cluster_ip = None;
    services.create(&pp, &taken).await.unwrap();
    let listed = services
        .list(&ListParams::default().labels("tier=front"))
        .await
        .unwrap();
    let names: Vec<_> = listed
        .items
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(names, vec!["front"]);

    // A replace from a stale read is a conflict.
    let stale = services.get("front").await.unwrap();
    let label = json!({"metadata": {"labels": {"changed": "yes"}}});
    services
        .patch("front", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    let (code, message) = api_error(services.replace("front", &pp, &stale).await);
    assert_eq!(code, 409, "{message}");
    assert!(
        message.contains("the object has been modified"),
        "{message}"
    );

    // The cluster IP cannot change; left out, it is kept.
    let mut fresh = services.get("front").await.unwrap();
    fresh.spec.as_mut().unwrap().cluster_ip = Some("10.96.7.7".into());
    fresh.spec.as_mut().unwrap().cluster_ips = None;
    let (code, message) = api_error(services.replace("front", &pp, &fresh).await);
    assert_eq!(code, 422);
    assert!(message.contains("may not change once set"), "{message}");
    fresh.spec.as_mut().unwrap().cluster_ip = None;
    fresh.spec.as_mut().unwrap().selector = Some([("app".to_owned(), "web2".to_owned())].into());
    let replaced = services.replace("front", &pp, &fresh).await.unwrap();
    assert_eq!(
        replaced.spec.as_ref().unwrap().cluster_ip,
        Some(ip.to_string())
    );

    // Merge patches are validated as the whole object; other patch types are refused.
    let (code, _) = api_error(
        services
            .patch(
                "front",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": {"ports": []}})),
            )
            .await,
    );
    assert_eq!(code, 422);
    let (code, _) = api_error(
        services
            .patch("front", &PatchParams::default(), &Patch::Strategic(&label))
            .await,
    );
    assert_eq!(code, 415);

    services
        .delete("front", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_error(services.get("front").await).0, 404);
    assert!(d.shutdown().await.is_empty());
}

#[tokio::test]
async fn the_ingress_api_validates_and_stores() {
    let d = kube_support::double().await;
    let ingresses: Api<Ingress> = Api::namespaced(d.client(), NS);
    let pp = PostParams::default();
    let ingress = |path_type: Option<&str>| -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "annotations": {"nginx.ingress.kubernetes.io/canary": "true"}},
            "spec": {"ingressClassName": "nginx", "rules": [{"host": "app.example.com", "http": {"paths": [
                {"path": "/", "pathType": path_type,
                 "backend": {"service": {"name": "web-canary", "port": {"number": 80}}}}
            ]}}]}
        }))
        .unwrap()
    };
    let (code, message) = api_error(ingresses.create(&pp, &ingress(None)).await);
    assert_eq!(code, 422);
    assert!(
        message.contains("spec.rules[0].http.paths[0].pathType: Required value"),
        "{message}"
    );
    let created = ingresses
        .create(&pp, &ingress(Some("Prefix")))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));

    let weight =
        json!({"metadata": {"annotations": {"nginx.ingress.kubernetes.io/canary-weight": "20"}}});
    let patched = ingresses
        .patch("web", &PatchParams::default(), &Patch::Merge(&weight))
        .await
        .unwrap();
    let annotations = patched.metadata.annotations.unwrap();
    assert_eq!(
        annotations["nginx.ingress.kubernetes.io/canary-weight"],
        "20"
    );
    assert_eq!(annotations["nginx.ingress.kubernetes.io/canary"], "true");
    assert_eq!(
        patched.metadata.generation,
        Some(1),
        "metadata is no spec change"
    );

    let (code, _) = api_error(ingresses.replace("web", &pp, &created).await);
    assert_eq!(code, 409, "a replace from a stale read");
    let mut current = ingresses.get("web").await.unwrap();
    current.spec.as_mut().unwrap().rules.as_mut().unwrap()[0].host = Some("new.example.com".into());
    let replaced = ingresses.replace("web", &pp, &current).await.unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    ingresses
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert!(
        ingresses
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(d.shutdown().await.is_empty());
}

fn owned_by(kind: &str, api_version: &str, name: &str, uid: &str) -> serde_json::Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid})
}

#[tokio::test]
async fn owners_take_their_dependents_with_them() {
    let d = kube_support::double().await;
    let services: Api<Service> = Api::namespaced(d.client(), NS);
    let ingresses: Api<Ingress> = Api::namespaced(d.client(), NS);
    let routes = web::httproutes(d.client(), NS);
    let pp = PostParams::default();
    let owner = |name: &str| web::service(name, &[("app", name)], json!(80));
    let owner_uid = services
        .create(&pp, &owner("owner"))
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let other_uid = services
        .create(&pp, &owner("other"))
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let by_owner = owned_by("Service", "v1", "owner", &owner_uid);
    let by_other = owned_by("Service", "v1", "other", &other_uid);
    let with_owners = |mut svc: Service, refs: Vec<serde_json::Value>| {
        svc.metadata.owner_references = Some(serde_json::from_value(json!(refs)).unwrap());
        svc
    };
    services
        .create(&pp, &with_owners(owner("dep"), vec![by_owner.clone()]))
        .await
        .unwrap();
    services
        .create(
            &pp,
            &with_owners(
                owner("two-owners"),
                vec![by_owner.clone(), by_other.clone()],
            ),
        )
        .await
        .unwrap();
    let widget = owned_by("Widget", "example.com/v1", "w", "0000-unknown-kind");
    services
        .create(&pp, &with_owners(owner("unknown-kind"), vec![widget]))
        .await
        .unwrap();
    let mut route = web::route("dep-route", Default::default());
    route.metadata.owner_references = Some(serde_json::from_value(json!([by_owner])).unwrap());
    routes.create(&pp, &route).await.unwrap();
    let ingress: Ingress = serde_json::from_value(json!({
        "metadata": {"name": "dep-ingress", "ownerReferences": [by_owner]},
        "spec": {"defaultBackend": {"service": {"name": "owner", "port": {"number": 80}}}}
    }))
    .unwrap();
    ingresses.create(&pp, &ingress).await.unwrap();
    // An owner that never existed: collected at once.
    let ghost = owned_by(
        "Service",
        "v1",
        "ghost",
        "00000000-0000-4000-8000-000000000000",
    );
    services
        .create(&pp, &with_owners(owner("orphaned"), vec![ghost]))
        .await
        .unwrap();
    eventually(
        "the dependent of a missing owner collected",
        QUICK,
        async || {
            services
                .get_opt("orphaned")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;

    services
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the owner's dependents collected", QUICK, async || {
        let gone = services.get_opt("dep").await.unwrap().is_none()
            && routes.get_opt("dep-route").await.unwrap().is_none()
            && ingresses.get_opt("dep-ingress").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    let two = services.get("two-owners").await.unwrap();
    let left: Vec<_> = two
        .metadata
        .owner_references
        .unwrap()
        .into_iter()
        .map(|r| r.uid)
        .collect();
    assert_eq!(
        left,
        vec![other_uid],
        "a live owner keeps it; the dangling reference goes"
    );
    assert!(
        services.get_opt("unknown-kind").await.unwrap().is_some(),
        "an owner the double cannot see"
    );

    // Orphan: the dependent stays, without the reference.
    services
        .delete("other", &DeleteParams::orphan())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = services.get("two-owners").await.unwrap();
    assert_eq!(kept.metadata.owner_references, None);
    assert!(d.shutdown().await.is_empty());
}
