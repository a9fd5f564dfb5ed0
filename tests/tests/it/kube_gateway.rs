//! The kube double's HTTPRoutes (built with the `gateway-api` crate's types, sent
//! through a real kube 5 client) and its gateway routing real HTTP to pods by the
//! routes' matches, weights and mirror filters.

use std::collections::HashMap;
use std::time::Duration;

use gateway_api::httproutes::{
    HttpRouteParentRefs, HttpRouteRules, HttpRouteRulesFilters, HttpRouteRulesFiltersRequestMirror,
    HttpRouteRulesFiltersRequestMirrorBackendRef, HttpRouteRulesFiltersRequestMirrorFraction,
    HttpRouteRulesFiltersType, HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders,
    HttpRouteRulesMatchesHeadersType, HttpRouteSpec,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::kube_support::web::{self, api_error, backend};
use crate::kube_support::{self, Poll, eventually};

const NS: &str = "apps";
const HOST: &str = "app.example.com";

fn rule(
    matches: Option<Vec<HttpRouteRulesMatches>>,
    backends: Vec<gateway_api::httproutes::HttpRouteRulesBackendRefs>,
) -> HttpRouteRules {
    HttpRouteRules {
        matches,
        backend_refs: Some(backends),
        ..Default::default()
    }
}

fn header(name: &str, regex: bool, value: &str) -> Option<Vec<HttpRouteRulesMatches>> {
    Some(vec![HttpRouteRulesMatches {
        headers: Some(vec![HttpRouteRulesMatchesHeaders {
            name: name.into(),
            r#type: Some(if regex {
                HttpRouteRulesMatchesHeadersType::RegularExpression
            } else {
                HttpRouteRulesMatchesHeadersType::Exact
            }),
            value: value.into(),
        }]),
        ..Default::default()
    }])
}

fn spec(hostnames: &[&str], rules: Vec<HttpRouteRules>) -> HttpRouteSpec {
    HttpRouteSpec {
        hostnames: Some(hostnames.iter().map(|h| (*h).to_owned()).collect()),
        parent_refs: Some(vec![HttpRouteParentRefs {
            name: "gateway".into(),
            ..Default::default()
        }]),
        rules: Some(rules),
    }
}

/// Two pods, `stable` (v1) and `canary` (v2), each behind its own Service.
async fn stable_and_canary(d: &tests::kube_double::KubeDouble) -> Api<Pod> {
    let pods: Api<Pod> = Api::namespaced(d.client(), NS);
    let services: Api<Service> = Api::namespaced(d.client(), NS);
    let (v1, v2) = (
        web::image(d.docker(), "v1").await,
        web::image(d.docker(), "v2").await,
    );
    for track in ["stable", "canary"] {
        let svc = web::service(&format!("web-{track}"), &[("track", track)], json!(8080));
        services.create(&PostParams::default(), &svc).await.unwrap();
    }
    web::start(
        &pods,
        vec![
            web::pod("web-stable", &v1, &[("app", "web"), ("track", "stable")]),
            web::pod("web-canary", &v2, &[("app", "web"), ("track", "canary")]),
        ],
    )
    .await;
    pods
}

/// Answers of `n` requests through the gateway, by body.
async fn answers(
    http: &reqwest::Client,
    d: &tests::kube_double::KubeDouble,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let (status, body) = web::get(http, d.gateway_addr(), "/", headers)
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        *out.entry(body).or_default() += 1;
    }
    out
}

#[tokio::test]
async fn the_gateway_routes_by_header_cookie_and_weight() {
    let d = kube_support::double().await;
    stable_and_canary(&d).await;
    let routes = web::httproutes(d.client(), NS);
    let route = web::route(
        "web",
        spec(
            &[HOST],
            vec![
                rule(
                    header("x-group", false, "beta"),
                    vec![backend("web-canary", 80, None)],
                ),
                rule(
                    header("Cookie", true, ".*group=beta.*"),
                    vec![backend("web-canary", 80, None)],
                ),
                rule(None, vec![backend("web-stable", 80, None)]),
            ],
        ),
    );
    routes.create(&PostParams::default(), &route).await.unwrap();
    let http = reqwest::Client::new();
    let host = [("host", HOST)];
    for headers in [&host[..], &[("host", HOST), ("x-group", "beta")]] {
        web::until_served(&http, d.gateway_addr(), headers).await;
    }

    let only = |m: HashMap<String, usize>, version: &str| {
        assert_eq!(m.keys().collect::<Vec<_>>(), vec![version], "{m:?}");
    };
    only(
        answers(&http, &d, 40, &[("host", HOST), ("x-group", "beta")]).await,
        "v2",
    );
    only(
        answers(
            &http,
            &d,
            40,
            &[("host", HOST), ("cookie", "session=1; group=beta")],
        )
        .await,
        "v2",
    );
    only(
        answers(&http, &d, 40, &[("host", HOST), ("x-group", "alpha")]).await,
        "v1",
    );
    only(
        answers(&http, &d, 40, &[("host", HOST), ("cookie", "group=alpha")]).await,
        "v1",
    );
    only(answers(&http, &d, 40, &host).await, "v1");
    let (status, _) = web::get(
        &http,
        d.gateway_addr(),
        "/",
        &[("host", "other.example.com")],
    )
    .await
    .unwrap();
    assert_eq!(status, 404, "no route for that host");

    // 20 % to the canary: the whole rules list is replaced (lists are atomic).
    let mut split = serde_json::to_value(spec(
        &[HOST],
        vec![rule(
            None,
            vec![
                backend("web-stable", 80, Some(80)),
                backend("web-canary", 80, Some(20)),
            ],
        )],
    ))
    .unwrap();
    let patch = json!({"spec": {"rules": split["rules"].take()}});
    routes
        .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let got = answers(&http, &d, 1000, &host).await;
    let canary = got.get("v2").copied().unwrap_or(0);
    assert!(
        (150..=250).contains(&canary),
        "canary share {canary}/1000 for weight 20: {got:?}"
    );

    // Weight 0 gets nothing.
    let current = routes.get("web").await.unwrap();
    let mut replaced = current.clone();
    replaced.data["spec"]["rules"][0]["backendRefs"][1]["weight"] = json!(0);
    routes
        .replace("web", &PostParams::default(), &replaced)
        .await
        .unwrap();
    only(answers(&http, &d, 50, &host).await, "v1");
    assert!(d.shutdown().await.is_empty());
}

fn mirror_rule(fraction: Option<(i32, i32)>) -> HttpRouteRules {
    HttpRouteRules {
        filters: Some(vec![HttpRouteRulesFilters {
            r#type: HttpRouteRulesFiltersType::RequestMirror,
            request_mirror: Some(HttpRouteRulesFiltersRequestMirror {
                backend_ref: HttpRouteRulesFiltersRequestMirrorBackendRef {
                    name: "web-canary".into(),
                    port: Some(80),
                    ..Default::default()
                },
                fraction: fraction.map(|(numerator, d)| {
                    HttpRouteRulesFiltersRequestMirrorFraction {
                        numerator,
                        denominator: Some(d),
                    }
                }),
                percent: None,
            }),
            ..Default::default()
        }]),
        ..rule(None, vec![backend("web-stable", 80, None)])
    }
}

#[tokio::test]
async fn the_gateway_mirrors_copies_and_answers_from_the_primary() {
    let d = kube_support::double().await;
    let pods = stable_and_canary(&d).await;
    let routes = web::httproutes(d.client(), NS);
    let route = web::route("shadow", spec(&[HOST], vec![mirror_rule(None)]));
    routes.create(&PostParams::default(), &route).await.unwrap();
    let http = reqwest::Client::new();
    let host = [("host", HOST)];
    web::until_served(&http, d.gateway_addr(), &host).await;

    let logged = async |pod: &str| web::requests_logged(&pods, pod, "/index.html").await;
    for _ in 0..30 {
        let answer = web::get(&http, d.gateway_addr(), "/index.html", &host)
            .await
            .unwrap();
        assert_eq!(answer, (200, "v1".into()), "every answer from the primary");
    }
    let poll = Poll::within(Duration::from_secs(20));
    eventually(
        "30 mirrored requests logged by the canary",
        poll,
        async || (logged("web-canary").await == 30).then_some(()),
    )
    .await;
    assert_eq!(logged("web-stable").await, 30);

    // Half of the requests: 1 of every 2.
    let mut half = serde_json::to_value(spec(&[HOST], vec![mirror_rule(Some((1, 2)))])).unwrap();
    let patch = json!({"spec": {"rules": half["rules"].take()}});
    routes
        .patch("shadow", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    for _ in 0..20 {
        let answer = web::get(&http, d.gateway_addr(), "/index.html", &host)
            .await
            .unwrap();
        assert_eq!(answer, (200, "v1".into()));
    }
    eventually("10 more mirrored requests", poll, async || {
        (logged("web-canary").await == 40).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(logged("web-canary").await, 40, "no more than half mirrored");
    assert!(d.shutdown().await.is_empty());
}

#[tokio::test]
async fn the_gateway_answers_errors_as_the_spec_says() {
    let d = kube_support::double().await;
    let routes = web::httproutes(d.client(), NS);
    let services: Api<Service> = Api::namespaced(d.client(), NS);
    let http = reqwest::Client::new();
    let get = async |host: &str| {
        web::get(&http, d.gateway_addr(), "/", &[("host", host)])
            .await
            .unwrap()
    };
    assert_eq!(get(HOST).await.0, 404, "no routes at all");

    let empty = web::service("no-pods", &[("app", "nothing")], json!(8080));
    services
        .create(&PostParams::default(), &empty)
        .await
        .unwrap();
    let zero = backend("no-pods", 80, Some(0));
    let redirect =
        HttpRouteRules {
            filters: Some(vec![serde_json::from_value(json!({
            "type": "RequestRedirect", "requestRedirect": {"hostname": "elsewhere.example.com"}
        }))
        .unwrap()]),
            ..Default::default()
        };
    for (name, rules) in [
        (
            "missing.test",
            vec![rule(None, vec![backend("no-such-service", 80, None)])],
        ),
        (
            "wrong-port.test",
            vec![rule(None, vec![backend("no-pods", 81, None)])],
        ),
        (
            "no-pods.test",
            vec![rule(None, vec![backend("no-pods", 80, None)])],
        ),
        ("zero.test", vec![rule(None, vec![zero.clone()])]),
        ("redirect.test", vec![redirect.clone()]),
    ] {
        let route = web::route(&name.replace('.', "-"), spec(&[name], rules));
        routes.create(&PostParams::default(), &route).await.unwrap();
    }
    assert_eq!(
        get("missing.test").await.0,
        500,
        "an unknown backend Service"
    );
    assert_eq!(
        get("wrong-port.test").await.0,
        500,
        "a port the Service does not have"
    );
    assert_eq!(get("no-pods.test").await.0, 503, "no ready endpoint");
    assert_eq!(get("zero.test").await.0, 500, "every weight 0");
    let (status, body) = get("redirect.test").await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("not implemented"), "{body}");
    assert!(d.shutdown().await.is_empty());
}

#[tokio::test]
async fn the_httproute_api_validates_and_guards_updates() {
    let d = kube_support::double().await;
    let routes = web::httproutes(d.client(), NS);
    let pp = PostParams::default();
    let canary = spec(
        &[HOST],
        vec![
            rule(
                header("x-group", false, "beta"),
                vec![backend("web-canary", 80, None)],
            ),
            rule(
                None,
                vec![
                    backend("web-stable", 80, Some(90)),
                    backend("web-canary", 80, Some(10)),
                ],
            ),
        ],
    );
    let mut route = web::route("web", canary.clone());
    route.metadata.labels = Some([("app".to_owned(), "web".to_owned())].into());
    let created = routes.create(&pp, &route).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let spec_json = &created.data["spec"];
    assert_eq!(
        spec_json["rules"][0]["matches"][0]["path"],
        json!({"type": "PathPrefix", "value": "/"})
    );
    assert_eq!(
        spec_json["rules"][0]["backendRefs"][0]["weight"], 1,
        "defaulted"
    );
    assert_eq!(spec_json["rules"][0]["backendRefs"][0]["kind"], "Service");
    let conditions = &created.data["status"]["parents"][0]["conditions"];
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[0]["status"], "True");
    assert_eq!(conditions[1]["type"], "ResolvedRefs");
    assert_eq!(conditions[1]["status"], "False", "no such Services yet");

    let invalid = |name: &str, spec: serde_json::Value| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name}, "spec": spec
        }))
        .unwrap()
    };
    let too_many: Vec<_> = (0..17).map(|_| json!({})).collect();
    for (spec, want) in [
        (
            json!({"rules": [{"backendRefs": [{"name": "w", "port": 80, "weight": 1000001}]}]}),
            "spec.rules[0].backendRefs[0].weight: Invalid value: 1000001",
        ),
        (
            json!({"rules": [{"backendRefs": [{"port": 80}]}]}),
            "spec.rules[0].backendRefs[0].name: Required value",
        ),
        (
            json!({"rules": [{"matches": [{"headers": [{"name": "x", "type": "Prefix", "value": "a"}]}]}]}),
            "spec.rules[0].matches[0].headers[0].type: Unsupported value: \"Prefix\"",
        ),
        (
            json!({"rules": [{"filters": [{"type": "RequestMirror", "requestMirror": {
                "backendRef": {"name": "m", "port": 80}, "percent": 5, "fraction": {"numerator": 1}}}]}]}),
            "Only one of percent or fraction may be specified",
        ),
        (
            json!({"rules": too_many}),
            "spec.rules: Too many: 17: must have at most 16 items",
        ),
    ] {
        let (code, message) = api_error(routes.create(&pp, &invalid("bad", spec)).await);
        assert_eq!(code, 422, "{message}");
        assert!(
            message.starts_with("HTTPRoute.gateway.networking.k8s.io \"bad\" is invalid: "),
            "{message}"
        );
        assert!(message.contains(want), "{want} not in {message}");
    }

    // Updates: stale → 409, no resourceVersion → 422, a spec change bumps generation.
    let label = json!({"metadata": {"labels": {"step": "1"}}});
    let patched = routes
        .patch("web", &PatchParams::default(), &Patch::Merge(&label))
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(1));
    let (code, message) = api_error(routes.replace("web", &pp, &created).await);
    assert_eq!(code, 409, "{message}");
    let mut unversioned = patched.clone();
    unversioned.metadata.resource_version = None;
    let (code, message) = api_error(routes.replace("web", &pp, &unversioned).await);
    assert_eq!(code, 422);
    assert!(
        message.contains("must be specified for an update"),
        "{message}"
    );
    let mut next = patched.clone();
    next.data["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(50);
    let replaced = routes.replace("web", &pp, &next).await.unwrap();
    assert_eq!(replaced.metadata.generation, Some(2));
    assert_eq!(
        replaced.data["status"]["parents"][0]["conditions"][0]["observedGeneration"],
        2
    );

    // Unknown fields are pruned, as for any structural schema.
    let mut unknown = web::route("unknown", canary);
    unknown.data["spec"]["rules"][0]["colour"] = json!("blue");
    let created = routes.create(&pp, &unknown).await.unwrap();
    assert!(
        created.data["spec"]["rules"][0].get("colour").is_none(),
        "pruned"
    );
    let listed = routes
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    routes
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_error(routes.get("web").await).0, 404);
    assert!(d.shutdown().await.is_empty());
}
