//! Two versions of a tiny web app for the double's Services and gateway: images
//! `slipway-test/web:<version>` built here FROM `slipway-test/httpd` (nothing can be
//! pulled), answering `GET /` with `<version>\n` and logging every request to the
//! pod log (`httpd -vv`: `url:/path` lines), so a test can tell which version
//! answered and count what a pod received.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::BuildImageOptionsBuilder;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use serde_json::json;

use super::{Poll, eventually};

/// Wait for a pod to become ready, or for an answer through the network.
pub const WAIT: Poll = Poll::within(Duration::from_secs(90));

/// The image answering `<version>`; built once per engine (the build cache makes a
/// rebuild a no-op).
pub async fn image(docker: &Docker, version: &str) -> String {
    let tag = format!("slipway-test/web:{version}");
    let dockerfile = format!(
        "FROM slipway-test/httpd:latest\n\
         RUN echo {version} > /www/index.html\n\
         CMD [\"httpd\", \"-f\", \"-vv\", \"-p\", \"8080\", \"-h\", \"/www\"]\n"
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .expect("a tar in memory");
    let body = bollard::body_full(tar.into_inner().expect("a tar in memory").into());
    let options = BuildImageOptionsBuilder::default()
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .build();
    let mut build = docker.build_image(options, None, Some(body));
    while let Some(step) = build.next().await {
        if let Err(e) = step {
            panic!("building {tag} (needs `bash .ci/images.sh` first): {e}");
        }
    }
    tag
}

/// A pod of the web app: labels `app`, `version`; container port 8080 named `http`.
pub fn pod(name: &str, image: &str, labels: &[(&str, &str)]) -> Pod {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "web",
                "image": image,
                "ports": [{"name": "http", "containerPort": 8080}],
            }],
        }
    }))
    .expect("a pod")
}

/// Creates the pods and waits until each is Ready.
pub async fn start(pods: &Api<Pod>, list: Vec<Pod>) {
    for p in &list {
        pods.create(&PostParams::default(), p)
            .await
            .expect("create pod");
    }
    for p in &list {
        let name = p.metadata.name.clone().expect("named");
        eventually(&format!("pod {name} ready"), WAIT, async || {
            let p = pods.get(&name).await.ok()?;
            let ready = p
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(())
        })
        .await;
    }
}

/// A client that opens a new connection for every request (a Service balances
/// connections, not requests).
pub fn fresh_connections() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("a client")
}

/// `GET http://{addr}{path}`: status and trimmed body.
pub async fn get(
    client: &reqwest::Client,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> reqwest::Result<(u16, String)> {
    let mut req = client.get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?.trim().to_owned()))
}

/// Waits until `addr` answers `GET /` with 200 (the pods' httpd listening).
pub async fn until_served(client: &reqwest::Client, addr: SocketAddr, headers: &[(&str, &str)]) {
    eventually(&format!("an answer from {addr}"), WAIT, async || {
        matches!(get(client, addr, "/", headers).await, Ok((200, _))).then_some(())
    })
    .await;
}

/// How many requests for `path` a pod's httpd logged.
pub async fn requests_logged(pods: &Api<Pod>, pod: &str, path: &str) -> usize {
    let log = pods
        .logs(pod, &LogParams::default())
        .await
        .unwrap_or_default();
    let needle = format!("url:{path}");
    log.lines().filter(|l| l.ends_with(&needle)).count()
}

/// HTTPRoutes through kube 5: the `gateway-api` crate's types are kube 4's, so the
/// object travels as JSON in a `DynamicObject`.
pub fn httproutes(client: kube::Client, ns: &str) -> Api<kube::api::DynamicObject> {
    let resource = kube::api::ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: "gateway.networking.k8s.io/v1".into(),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    };
    Api::namespaced_with(client, ns, &resource)
}

/// An HTTPRoute built from the `gateway-api` crate's typed spec.
pub fn route(name: &str, spec: gateway_api::httproutes::HttpRouteSpec) -> kube::api::DynamicObject {
    let typed = gateway_api::httproutes::HttpRoute::new(name, spec);
    serde_json::from_value(serde_json::to_value(typed).expect("routes serialize"))
        .expect("a route is a DynamicObject")
}

/// A backendRef to a Service port, with an optional weight.
pub fn backend(
    service: &str,
    port: i32,
    weight: Option<i32>,
) -> gateway_api::httproutes::HttpRouteRulesBackendRefs {
    gateway_api::httproutes::HttpRouteRulesBackendRefs {
        name: service.into(),
        port: Some(port),
        weight,
        ..Default::default()
    }
}

/// A ClusterIP Service `name` selecting `selector`, port 80 → `target`.
pub fn service(
    name: &str,
    selector: &[(&str, &str)],
    target: serde_json::Value,
) -> k8s_openapi::api::core::v1::Service {
    let selector: BTreeMap<&str, &str> = selector.iter().copied().collect();
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": target}]}
    }))
    .expect("a service")
}

/// The API error of a failed call: (HTTP code, message).
pub fn api_error<T: std::fmt::Debug>(r: kube::Result<T>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}
