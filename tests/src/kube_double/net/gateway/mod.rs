//! The double's gateway: one HTTP/1.1 listener on 127.0.0.1 that routes every
//! request by every stored HTTPRoute, as a Gateway API implementation's data plane
//! does (apis/v1/httproute_types.go, v1.5.1). parentRefs are not consulted: every
//! route is attached to this one gateway, whatever Gateway it names.
//!
//! Per request: the rule (`matching`; no rule → 404), the rule's filters, a
//! backendRef by weight (`weights`; no backendRefs, or every weight 0 → 500), the
//! backendRef's own filters, the backend — a Service in the route's namespace and
//! its port — and one ready pod of it, round robin, to which the request is
//! forwarded (`forward`) and whose answer (status, headers, body) goes back.
//! An invalid backendRef (not a core Service, another namespace — ReferenceGrants
//! are not implemented —, a Service or port that does not exist) is a 500, as the
//! spec requires for requests to an invalid backend; a Service with no ready pod
//! a 503, as it recommends. Filters: RequestMirror (a copy to one ready pod of the
//! mirror Service for `percent`/`fraction` of the requests — all when neither is
//! set —, answer dropped; an unresolvable mirror is skipped), RequestHeaderModifier,
//! ResponseHeaderModifier; any other filter type (RequestRedirect, URLRewrite,
//! CORS, ExtensionRef) is a 500 saying the double does not implement it.

mod forward;
mod matching;
mod weights;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::serve::ListenerExt;
use gateway_api::httproutes::{HttpRouteRulesFilters, HttpRouteRulesFiltersType as FilterType};
use k8s_openapi::api::core::v1::Service;
use serde::Serialize;

use super::endpoints::{self, Endpoint};
use super::httproute::HttpRouteObject;
use crate::kube_double::pod_runtime::Ctx;
use forward::{HeaderModifier, Outgoing, gateway_error};
use matching::{RequestView, RouteView};

/// Request bodies are buffered (a mirror needs a copy); larger ones are 413.
const MAX_BODY: usize = 16 << 20;

pub struct Gateway {
    listener: Mutex<Option<std::net::TcpListener>>,
    addr: SocketAddr,
    client: reqwest::Client,
    weights: weights::Weights,
    regexes: matching::Regexes,
}

impl Gateway {
    pub fn bind() -> std::io::Result<Gateway> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(Gateway {
            addr: listener.local_addr()?,
            listener: Mutex::new(Some(listener)),
            client: forward::client(),
            weights: weights::Weights::default(),
            regexes: matching::Regexes::default(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Serves the gateway until the double shuts down.
pub fn serve(ctx: Arc<Ctx>) {
    let taken = ctx
        .net
        .gateway
        .listener
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(listener) = taken.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) else {
        tracing::error!("kube double: the gateway's listener is gone");
        return;
    };
    // Answers go out in more than one write (head, then body): without NODELAY,
    // Nagle's algorithm holds the body back on a kept-alive connection.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let shutdown = ctx.shutdown.clone();
    let app = Router::new().fallback(handle).with_state(ctx);
    tokio::spawn(async move {
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        );
        tokio::select! {
            r = server => if let Err(e) = r { tracing::error!("kube double gateway: {e}") },
            _ = shutdown.cancelled() => {}
        }
    });
}

fn routes(ctx: &Ctx) -> Vec<RouteView> {
    let (stored, _) = ctx.store.list::<HttpRouteObject>(None);
    stored
        .iter()
        .filter_map(|r| {
            Some(RouteView {
                namespace: r.metadata.namespace.clone()?,
                name: r.metadata.name.clone()?,
                uid: r.metadata.uid.clone().unwrap_or_default(),
                created: r
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_default(),
                spec: r.typed_spec()?,
            })
        })
        .collect()
}

/// A backendRef's filter as the rule-level type (the crate generates one type per
/// place; the JSON is the same).
fn as_rule_filter(f: &impl Serialize) -> Option<HttpRouteRulesFilters> {
    serde_json::from_value(serde_json::to_value(f).ok()?).ok()
}

fn modifier(m: &impl Serialize) -> HeaderModifier {
    serde_json::to_value(m)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The gateway's own answer instead of a backend's.
struct Refusal(StatusCode, String);

impl Refusal {
    fn into_response(self) -> Response {
        gateway_error(self.0, &self.1)
    }
}

/// A backend reference: group, kind, namespace, name, port.
type BackendRef<'a> = (
    Option<&'a str>,
    Option<&'a str>,
    Option<&'a str>,
    &'a str,
    Option<i32>,
);

/// Resolves a backend reference to a ready pod.
fn backend(ctx: &Ctx, route_ns: &str, target: BackendRef<'_>) -> Result<Endpoint, Refusal> {
    let (group, kind, namespace, name, port) = target;
    let invalid = |why: String| Err(Refusal(StatusCode::INTERNAL_SERVER_ERROR, why));
    if !group.unwrap_or("").is_empty() || kind.unwrap_or("Service") != "Service" {
        return invalid(format!("backend {name}: only core Services are supported"));
    }
    if namespace.is_some_and(|n| n != route_ns) {
        return invalid(format!(
            "backend {name}: cross-namespace references need a ReferenceGrant (not implemented by the kube double)"
        ));
    }
    let Some(svc) = ctx.store.get::<Service>(route_ns, name) else {
        return invalid(format!("backend Service {route_ns}/{name} not found"));
    };
    let Some(sp) = port.and_then(|p| endpoints::port(&svc, p)) else {
        return invalid(format!(
            "backend Service {route_ns}/{name} has no port {port:?}"
        ));
    };
    let ready = endpoints::ready(ctx, route_ns, &svc, sp);
    if ready.is_empty() {
        return Err(Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no healthy upstream: Service {route_ns}/{name} has no ready endpoints"),
        ));
    }
    let key = format!("gw/{route_ns}/{name}/{}", sp.port);
    let i = ctx.net.balance.pick(&key, ready.len());
    Ok(ready.into_iter().nth(i).expect("index within the list"))
}

/// What a rule's (or backendRef's) filters do to the request.
#[derive(Default)]
struct Filters {
    request: Vec<HeaderModifier>,
    response: Vec<HeaderModifier>,
    mirrors: Vec<Endpoint>,
}

impl Filters {
    fn add(
        &mut self,
        ctx: &Ctx,
        ns: &str,
        key: &str,
        list: &[HttpRouteRulesFilters],
    ) -> Result<(), Refusal> {
        for (i, f) in list.iter().enumerate() {
            match f.r#type {
                FilterType::RequestHeaderModifier => {
                    self.request
                        .extend(f.request_header_modifier.as_ref().map(modifier));
                }
                FilterType::ResponseHeaderModifier => {
                    self.response
                        .extend(f.response_header_modifier.as_ref().map(modifier));
                }
                FilterType::RequestMirror => {
                    let Some(m) = &f.request_mirror else { continue };
                    let (num, den) = match (m.percent, &m.fraction) {
                        (Some(p), _) => (p, 100),
                        (None, Some(fr)) => (fr.numerator, fr.denominator.unwrap_or(100)),
                        (None, None) => (1, 1),
                    };
                    let chosen = ctx.net.gateway.weights.mirror(
                        &format!("{key}/mirror{i}"),
                        u64::try_from(num).unwrap_or(0),
                        u64::try_from(den).unwrap_or(0),
                    );
                    let r = &m.backend_ref;
                    let target = (
                        r.group.as_deref(),
                        r.kind.as_deref(),
                        r.namespace.as_deref(),
                        r.name.as_str(),
                        r.port,
                    );
                    // An unresolvable mirror is dropped, not an error for the client.
                    if chosen && let Ok(e) = backend(ctx, ns, target) {
                        self.mirrors.push(e);
                    }
                }
                ref other => {
                    return Err(Refusal(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("filter {other:?} is not implemented by the kube double's gateway"),
                    ));
                }
            }
        }
        Ok(())
    }
}

async fn handle(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body): Result<Bytes, _> = axum::body::to_bytes(body, MAX_BODY).await else {
        return gateway_error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    };
    let routes = routes(&ctx);
    let view = RequestView {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query(),
        host: matching::host_of(&parts.headers, parts.uri.host()),
        headers: &parts.headers,
    };
    let Some((ri, rule_i)) = matching::select(&routes, &view, &ctx.net.gateway.regexes) else {
        return gateway_error(
            StatusCode::NOT_FOUND,
            "no HTTPRoute rule matches this request",
        );
    };
    let route = &routes[ri];
    let rule = &route
        .spec
        .rules
        .as_ref()
        .expect("selected from these rules")[rule_i];
    let ns = route.namespace.as_str();
    let key = format!("{}/{rule_i}", route.uid);
    let mut filters = Filters::default();
    if let Err(refusal) = filters.add(&ctx, ns, &key, rule.filters.as_deref().unwrap_or_default()) {
        return refusal.into_response();
    }
    let refs = rule.backend_refs.as_deref().unwrap_or_default();
    let weights: Vec<u64> = refs
        .iter()
        .map(|r| u64::try_from(r.weight.unwrap_or(1)).unwrap_or(0))
        .collect();
    let Some(chosen) = ctx.net.gateway.weights.pick(&key, &weights) else {
        return gateway_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the matching rule has no backendRef with a weight above 0",
        );
    };
    let br = &refs[chosen];
    let own: Vec<HttpRouteRulesFilters> = br
        .filters
        .iter()
        .flatten()
        .filter_map(as_rule_filter)
        .collect();
    if let Err(refusal) = filters.add(&ctx, ns, &format!("{key}/{chosen}"), &own) {
        return refusal.into_response();
    }
    let target = (
        br.group.as_deref(),
        br.kind.as_deref(),
        br.namespace.as_deref(),
        br.name.as_str(),
        br.port,
    );
    let endpoint = match backend(&ctx, ns, target) {
        Ok(e) => e,
        Err(refusal) => return refusal.into_response(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let mut out = Outgoing::new(
        parts.method.clone(),
        path_and_query,
        parts.headers.clone(),
        body,
        client,
    );
    for m in &filters.request {
        m.apply(&mut out.headers);
    }
    for mirror in &filters.mirrors {
        forward::mirror(&ctx.net.gateway.client, mirror.addr, &out);
    }
    let response_filter = merge(&filters.response);
    forward::send(
        &ctx.net.gateway.client,
        endpoint.addr,
        &out,
        response_filter.as_ref(),
    )
    .await
}

/// The response modifiers of the rule and of the backendRef, in that order.
fn merge(list: &[HeaderModifier]) -> Option<HeaderModifier> {
    if list.is_empty() {
        return None;
    }
    let mut all = HeaderModifier::default();
    for m in list {
        all.set.extend(m.set.iter().cloned());
        all.add.extend(m.add.iter().cloned());
        all.remove.extend(m.remove.iter().cloned());
    }
    Some(all)
}
