//! Routers: the HTTPRoute (Gateway API) and the ingress-nginx canary Ingress that give
//! the new version its share, its A/B group and its mirrored copies. Pure.
//!
//! The HTTPRoute belongs to the user (attached to their Gateway); the controller edits
//! only what it adds — a backendRef to the canary Service, rules named
//! [`MATCH_RULE`]`-<n>`, RequestMirror filters to the canary Service — and
//! [`route_for`] first strips all of that, so the same desired state always gives the
//! same route, and the default [`Desired`] gives the route back as it was (a stable
//! backendRef's weight is then unset, the API's default of 1).

use std::collections::BTreeMap;

use gateway_api::httproutes::{
    HttpRoute, HttpRouteRules, HttpRouteRulesBackendRefs, HttpRouteRulesFilters,
    HttpRouteRulesFiltersRequestMirror, HttpRouteRulesFiltersRequestMirrorBackendRef,
    HttpRouteRulesFiltersType, HttpRouteRulesMatches, HttpRouteRulesMatchesHeaders,
    HttpRouteRulesMatchesHeadersType, HttpRouteRulesMatchesPath, HttpRouteRulesMatchesPathType,
};
use k8s_openapi::api::networking::v1::Ingress;
use pipelines::RequestMatch;

use super::actions::Desired;

/// Name prefix of the rules that send an A/B group to the new version.
pub const MATCH_RULE: &str = "slipway-canary-match";

/// ingress-nginx's annotation prefix.
const NGINX: &str = "nginx.ingress.kubernetes.io";

/// The route with the desired traffic for the canary Service `canary` beside the stable
/// Service `stable`. `Err` when no rule of the route sends to `stable`.
pub fn route_for(
    route: &HttpRoute,
    stable: &str,
    canary: &str,
    d: &Desired,
) -> Result<HttpRoute, String> {
    let mut out = route.clone();
    out.status = None;
    let rules = out.spec.rules.get_or_insert_with(Vec::new);
    // Strip what an earlier step (or a crashed controller) added.
    rules.retain(|r| !r.name.as_deref().is_some_and(|n| n.starts_with(MATCH_RULE)));
    for r in rules.iter_mut() {
        if let Some(refs) = &mut r.backend_refs {
            refs.retain(|b| b.name != canary);
        }
        if let Some(fs) = &mut r.filters {
            fs.retain(|f| {
                f.request_mirror
                    .as_ref()
                    .is_none_or(|m| m.backend_ref.name != canary)
            });
            if fs.is_empty() {
                r.filters = None;
            }
        }
    }
    let stable_rules: Vec<usize> = rules
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.backend_refs
                .as_ref()
                .is_some_and(|refs| refs.iter().any(|b| b.name == stable))
        })
        .map(|(i, _)| i)
        .collect();
    if stable_rules.is_empty() {
        return Err(format!(
            "HTTPRoute {} has no rule whose backendRefs name the Service `{stable}`",
            route.metadata.name.as_deref().unwrap_or_default()
        ));
    }
    let mut match_rules = Vec::new();
    for &i in &stable_rules {
        let rule = &mut rules[i];
        let refs = rule.backend_refs.get_or_insert_with(Vec::new);
        let Some(stable_ref) = refs.iter_mut().find(|b| b.name == stable) else {
            continue;
        };
        let port = stable_ref.port;
        if d.weight > 0 {
            stable_ref.weight = Some(100 - i32::from(d.weight));
            let canary_ref = HttpRouteRulesBackendRefs {
                name: canary.to_string(),
                port,
                weight: Some(i32::from(d.weight)),
                ..Default::default()
            };
            refs.push(canary_ref);
        } else {
            stable_ref.weight = None;
        }
        if let Some(p) = d.mirror {
            rule.filters
                .get_or_insert_with(Vec::new)
                .push(HttpRouteRulesFilters {
                    r#type: HttpRouteRulesFiltersType::RequestMirror,
                    request_mirror: Some(HttpRouteRulesFiltersRequestMirror {
                        backend_ref: HttpRouteRulesFiltersRequestMirrorBackendRef {
                            name: canary.to_string(),
                            port,
                            ..Default::default()
                        },
                        percent: Some(i32::from(p)),
                        fraction: None,
                    }),
                    ..Default::default()
                });
        }
        if let Some(m) = &d.matched {
            match_rules.push(match_rule(rule, m, canary, port, match_rules.len()));
        }
    }
    // First, for people reading the route; precedence comes from the extra header
    // match, not from the order.
    for (n, r) in match_rules.into_iter().enumerate() {
        rules.insert(n, r);
    }
    Ok(out)
}

fn match_rule(
    base: &HttpRouteRules,
    m: &RequestMatch,
    canary: &str,
    port: Option<i32>,
    n: usize,
) -> HttpRouteRules {
    let header = match m {
        RequestMatch::Header { name, value } => HttpRouteRulesMatchesHeaders {
            name: name.clone(),
            r#type: Some(HttpRouteRulesMatchesHeadersType::Exact),
            value: value.clone(),
        },
        // Gateway API has no cookie match: a regular expression over the Cookie header
        // (Implementation-specific support; Envoy-based gateways take RE2).
        RequestMatch::Cookie { name, value } => HttpRouteRulesMatchesHeaders {
            name: "Cookie".into(),
            r#type: Some(HttpRouteRulesMatchesHeadersType::RegularExpression),
            value: format!(
                "(^|.*;\\s*){}={}(;.*|$)",
                regex_escape(name),
                regex_escape(value)
            ),
        },
    };
    let mut matches = base.matches.clone().unwrap_or_default();
    if matches.is_empty() {
        matches.push(HttpRouteRulesMatches {
            path: Some(HttpRouteRulesMatchesPath {
                r#type: Some(HttpRouteRulesMatchesPathType::PathPrefix),
                value: Some("/".into()),
            }),
            ..Default::default()
        });
    }
    for mm in &mut matches {
        mm.headers.get_or_insert_with(Vec::new).push(header.clone());
    }
    HttpRouteRules {
        name: Some(format!("{MATCH_RULE}-{n}")),
        matches: Some(matches),
        backend_refs: Some(vec![HttpRouteRulesBackendRefs {
            name: canary.to_string(),
            port,
            ..Default::default()
        }]),
        filters: None,
        timeouts: base.timeouts.clone(),
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `<ingress>-canary`.
pub fn canary_ingress_name(ingress: &str) -> String {
    format!("{ingress}-canary")
}

/// ingress-nginx's second Ingress for a canary: the stable Ingress's rules with the
/// stable Service swapped for the canary one, and the canary annotations for `d`.
/// `Err` for what ingress-nginx cannot do (mirror; a cookie must have the value
/// `always`, which is how ingress-nginx reads `canary-by-cookie`).
pub fn canary_ingress(
    stable_ingress: &Ingress,
    stable: &str,
    canary: &str,
    d: &Desired,
    owner_meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<Ingress, String> {
    if d.mirror.is_some() {
        return Err("ingress-nginx cannot mirror requests: use `traffic: gateway`".into());
    }
    let iname = stable_ingress.metadata.name.clone().unwrap_or_default();
    let mut spec = stable_ingress
        .spec
        .clone()
        .ok_or_else(|| format!("Ingress {iname} has no spec"))?;
    spec.tls = None;
    let mut found = false;
    let mut swap = |b: &mut k8s_openapi::api::networking::v1::IngressBackend| {
        if let Some(s) = &mut b.service
            && s.name == stable
        {
            s.name = canary.to_string();
            found = true;
        }
    };
    if let Some(b) = &mut spec.default_backend {
        swap(b);
    }
    for rule in spec.rules.iter_mut().flatten() {
        for p in rule.http.iter_mut().flat_map(|h| h.paths.iter_mut()) {
            swap(&mut p.backend);
        }
    }
    if !found {
        return Err(format!(
            "Ingress {iname} sends nothing to the Service `{stable}`"
        ));
    }
    let mut ann = BTreeMap::new();
    ann.insert(format!("{NGINX}/canary"), "true".to_string());
    ann.insert(format!("{NGINX}/canary-weight"), d.weight.to_string());
    match &d.matched {
        Some(RequestMatch::Header { name, value }) => {
            ann.insert(format!("{NGINX}/canary-by-header"), name.clone());
            ann.insert(format!("{NGINX}/canary-by-header-value"), value.clone());
        }
        Some(RequestMatch::Cookie { name, value }) => {
            if value != "always" {
                return Err(format!(
                    "ingress-nginx routes by cookie only when its value is `always` (not `{value}`): \
                     write `cookie: {{ {name}: always }}` or match a header"
                ));
            }
            ann.insert(format!("{NGINX}/canary-by-cookie"), name.clone());
        }
        None => {}
    }
    let mut meta = owner_meta;
    meta.name = Some(canary_ingress_name(&iname));
    meta.namespace = stable_ingress.metadata.namespace.clone();
    meta.annotations = Some(ann);
    Ok(Ingress {
        metadata: meta,
        spec: Some(spec),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> HttpRoute {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": {
                "parentRefs": [{ "name": "gw" }],
                "rules": [
                    { "matches": [{ "path": { "type": "PathPrefix", "value": "/" } }],
                      "backendRefs": [{ "name": "web", "port": 80 }] },
                    { "matches": [{ "path": { "type": "PathPrefix", "value": "/admin" } }],
                      "backendRefs": [{ "name": "admin", "port": 80 }] }
                ]
            }
        }))
        .unwrap()
    }

    fn desired(weight: u8) -> Desired {
        Desired {
            weight,
            ..Default::default()
        }
    }

    #[test]
    fn weights_split_the_stable_rule_and_leave_other_rules_alone() {
        let r = route_for(&route(), "web", "web-canary", &desired(20)).unwrap();
        let rules = r.spec.rules.unwrap();
        let refs = rules[0].backend_refs.as_ref().unwrap();
        assert_eq!(refs.len(), 2);
        assert_eq!((refs[0].name.as_str(), refs[0].weight), ("web", Some(80)));
        assert_eq!(
            (refs[1].name.as_str(), refs[1].weight),
            ("web-canary", Some(20))
        );
        assert_eq!(refs[1].port, Some(80));
        assert_eq!(rules[1].backend_refs.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn applying_twice_is_applying_once_and_the_default_restores_the_route() {
        let d = Desired {
            weight: 50,
            matched: Some(RequestMatch::Header {
                name: "x-group".into(),
                value: "beta".into(),
            }),
            mirror: Some(10),
            ..Default::default()
        };
        let once = route_for(&route(), "web", "web-canary", &d).unwrap();
        let twice = route_for(&once, "web", "web-canary", &d).unwrap();
        assert_eq!(once, twice);
        let back = route_for(&twice, "web", "web-canary", &Desired::default()).unwrap();
        assert_eq!(back, route());
    }

    #[test]
    fn a_match_adds_a_rule_with_the_header_that_sends_only_to_the_canary() {
        let d = Desired {
            matched: Some(RequestMatch::Cookie {
                name: "group".into(),
                value: "beta.1".into(),
            }),
            ..Default::default()
        };
        let r = route_for(&route(), "web", "web-canary", &d).unwrap();
        let rules = r.spec.rules.unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].name.as_deref(), Some("slipway-canary-match-0"));
        let m = &rules[0].matches.as_ref().unwrap()[0];
        let h = &m.headers.as_ref().unwrap()[0];
        assert_eq!(h.name, "Cookie");
        assert_eq!(h.value, "(^|.*;\\s*)group=beta\\.1(;.*|$)");
        assert_eq!(m.path.as_ref().unwrap().value.as_deref(), Some("/"));
        assert_eq!(
            rules[0].backend_refs.as_ref().unwrap()[0].name,
            "web-canary"
        );
        // No weight: the stable rule still sends everyone else to stable only.
        assert_eq!(rules[1].backend_refs.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn a_route_without_the_stable_service_is_an_error() {
        let e = route_for(&route(), "shop", "shop-canary", &desired(10)).unwrap_err();
        assert!(e.contains("Service `shop`"), "{e}");
    }

    #[test]
    fn nginx_gets_weight_and_header_annotations_and_refuses_mirror() {
        let ing: Ingress = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "web", "namespace": "shop" },
            "spec": { "ingressClassName": "nginx", "rules": [{ "host": "shop.example", "http": { "paths": [
                { "path": "/", "pathType": "Prefix", "backend": { "service": { "name": "web", "port": { "number": 80 } } } }
            ] } }] }
        }))
        .unwrap();
        let d = Desired {
            weight: 30,
            matched: Some(RequestMatch::Header {
                name: "x-group".into(),
                value: "beta".into(),
            }),
            ..Default::default()
        };
        let c = canary_ingress(&ing, "web", "web-canary", &d, Default::default()).unwrap();
        let ann = c.metadata.annotations.unwrap();
        assert_eq!(ann["nginx.ingress.kubernetes.io/canary-weight"], "30");
        assert_eq!(
            ann["nginx.ingress.kubernetes.io/canary-by-header-value"],
            "beta"
        );
        let spec = c.spec.unwrap();
        let svc = spec.rules.unwrap()[0].http.as_ref().unwrap().paths[0]
            .backend
            .service
            .clone()
            .unwrap();
        assert_eq!(svc.name, "web-canary");
        let mirror = Desired {
            mirror: Some(5),
            ..Default::default()
        };
        assert!(canary_ingress(&ing, "web", "web-canary", &mirror, Default::default()).is_err());
    }
}
