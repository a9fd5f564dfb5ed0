//! networking.k8s.io/v1 Ingress: stored, validated as the API server validates it
//! (kubernetes pkg/apis/networking/validation/validation.go: ValidateIngressSpec,
//! validateIngressRules, validateHTTPIngressPath, validateIngressBackend; messages
//! as there), never routed: the double has no ingress controller, so canary
//! annotations (ingress-nginx `canary-weight`, `canary-by-header`, …) are kept
//! as written and do nothing. `status.loadBalancer` is `{}`; `generation` counts
//! spec changes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend, IngressSpec, IngressStatus};
use serde_json::Value;

use super::crud::{self, Updatable};
use super::names;
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::{created, decode};
use crate::kube_double::status::ApiError;

type Q = Query<HashMap<String, String>>;

impl Updatable for Ingress {
    const QUALIFIED_KIND: &'static str = "Ingress.networking.k8s.io";
    const UNCONDITIONAL_UPDATE: bool = true;
    const TRACKS_GENERATION: bool = true;

    fn update_from(_old: &Self, next: &mut Self) -> Vec<String> {
        validate(next)
    }

    fn spec_json(&self) -> Value {
        serde_json::to_value(&self.spec).expect("specs serialize")
    }

    fn keep_status(old: &Self, next: &mut Self) {
        next.status = old.status.clone();
    }
}

const INVALID_SEQUENCES: &[&str] = &["//", "/./", "/../", "%2f", "%2F"];
const INVALID_SUFFIXES: &[&str] = &["/..", "/."];

fn host(field: &str, host: &str, out: &mut Vec<String>) {
    if host.parse::<IpAddr>().is_ok() {
        out.push(format!(
            "{field}: Invalid value: {host:?}: must be a DNS name, not an IP address"
        ));
    } else if let Some(rest) = host.strip_prefix("*.") {
        names::dns1123_subdomain(field, rest, out);
    } else {
        names::dns1123_subdomain(field, host, out);
    }
}

fn backend(field: &str, b: &IngressBackend, out: &mut Vec<String>) {
    match (&b.resource, &b.service) {
        (Some(_), Some(_)) => out.push(format!(
            "{field}: Invalid value: \"\": cannot set both resource and service backends"
        )),
        (Some(r), None) => {
            if r.kind.is_empty() {
                out.push(format!(
                    "{field}.resource.kind: Required value: kind is required"
                ));
            }
            if r.name.is_empty() {
                out.push(format!(
                    "{field}.resource.name: Required value: name is required"
                ));
            }
        }
        (None, Some(s)) => {
            if s.name.is_empty() {
                out.push(format!("{field}.service.name: Required value"));
            } else {
                names::dns1035_label(&format!("{field}.service.name"), &s.name, out);
            }
            let port = s.port.clone().unwrap_or_default();
            let named = port.name.as_deref().filter(|n| !n.is_empty());
            let number = port.number.filter(|n| *n != 0);
            match (named, number) {
                (Some(_), Some(_)) => out.push(format!(
                    "{field}: Invalid value: \"\": cannot set both port name & port number"
                )),
                (Some(n), None) => names::port_name(&format!("{field}.service.port.name"), n, out),
                (None, Some(n)) => {
                    names::port_number(&format!("{field}.service.port.number"), n, out)
                }
                (None, None) => out.push(format!(
                    "{field}: Required value: port name or number is required"
                )),
            }
        }
        (None, None) => out.push(format!(
            "{field}: Invalid value: \"\": resource or service backend is required"
        )),
    }
}

pub fn validate(ing: &Ingress) -> Vec<String> {
    let mut out = Vec::new();
    names::object_name(
        ing.metadata.name.as_deref(),
        ing.metadata.generate_name.as_deref(),
        false,
        &mut out,
    );
    let default = IngressSpec::default();
    let spec = ing.spec.as_ref().unwrap_or(&default);
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.is_empty() && spec.default_backend.is_none() {
        out.push(
            "spec: Invalid value: \"null\": either `defaultBackend` or `rules` must be specified"
                .into(),
        );
    }
    if let Some(b) = &spec.default_backend {
        backend("spec.defaultBackend", b, &mut out);
    }
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        if let Some(h) = rule.host.as_deref().filter(|h| !h.is_empty()) {
            host(&format!("{at}.host"), h, &mut out);
        }
        let Some(http) = &rule.http else { continue };
        if http.paths.is_empty() {
            out.push(format!("{at}.http.paths: Required value"));
        }
        for (j, path) in http.paths.iter().enumerate() {
            let at = format!("{at}.http.paths[{j}]");
            let p = path.path.as_deref().unwrap_or("");
            match path.path_type.as_str() {
                "" => {
                    out.push(format!("{at}.pathType: Required value: pathType must be specified"));
                    continue;
                }
                "Exact" | "Prefix" => {
                    if !p.starts_with('/') {
                        out.push(format!("{at}.path: Invalid value: {p:?}: must be an absolute path"));
                    }
                    for seq in INVALID_SEQUENCES.iter().filter(|s| p.contains(**s)) {
                        out.push(format!("{at}.path: Invalid value: {p:?}: must not contain '{seq}'"));
                    }
                    for suffix in INVALID_SUFFIXES.iter().filter(|s| p.ends_with(**s)) {
                        out.push(format!("{at}.path: Invalid value: {p:?}: cannot end with '{suffix}'"));
                    }
                }
                "ImplementationSpecific" => {
                    if !p.is_empty() && !p.starts_with('/') {
                        out.push(format!("{at}.path: Invalid value: {p:?}: must be an absolute path"));
                    }
                }
                other => out.push(format!(
                    "{at}.pathType: Unsupported value: {other:?}: supported values: \"Exact\", \"ImplementationSpecific\", \"Prefix\""
                )),
            }
            backend(&format!("{at}.backend"), &path.backend, &mut out);
        }
    }
    for (i, tls) in spec.tls.iter().flatten().enumerate() {
        for (j, h) in tls.hosts.iter().flatten().enumerate() {
            host(&format!("spec.tls[{i}].hosts[{j}]"), h, &mut out);
        }
    }
    if let Some(class) = &spec.ingress_class_name {
        names::dns1123_subdomain("spec.ingressClassName", class, &mut out);
    }
    out
}

pub async fn create(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mut ing, unknown): (Ingress, _) = decode(&body, &ns, &q)?;
    let problems = validate(&ing);
    if !problems.is_empty() {
        let name = ing.metadata.name.clone().unwrap_or_default();
        return Err(crud::invalid::<Ingress>(&name, &problems));
    }
    ing.status = Some(IngressStatus {
        load_balancer: Some(Default::default()),
    });
    let ing = ctx.store.create(&ns, ing)?;
    Ok(created(&ing, &unknown))
}

pub async fn replace(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (ing, _): (Ingress, _) = decode(&body, &ns, &q)?;
    Ok(axum::Json(crud::replace(&ctx, &ns, &name, ing, false)?).into_response())
}

pub async fn patch(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ing = crud::patch(&ctx, &ns, &name, &headers, &body, |json| {
        let bytes = serde_json::to_vec(&json).expect("JSON values serialize");
        decode::<Ingress>(&Bytes::from(bytes), &ns, &q).map(|(i, _)| i)
    })?;
    Ok(axum::Json(ing).into_response())
}

pub async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    crud::delete::<Ingress>(&ctx, &ns, &name, &q, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_need_a_type_and_backends_a_port() {
        let ing: Ingress = serde_json::from_value(json!({
            "metadata": {"name": "web"},
            "spec": {"rules": [{"host": "app.example.com", "http": {"paths": [
                {"path": "/", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
                {"path": "/x", "pathType": "Prefix", "backend": {"service": {"name": "web"}}},
                {"path": "x//y", "pathType": "Exact", "backend": {"service": {"name": "web", "port": {"name": "http"}}}}
            ]}}]}
        }))
        .unwrap();
        let text = validate(&ing).join("\n");
        for want in [
            "spec.rules[0].http.paths[0].pathType: Required value: pathType must be specified",
            "spec.rules[0].http.paths[1].backend: Required value: port name or number is required",
            "spec.rules[0].http.paths[2].path: Invalid value: \"x//y\": must be an absolute path",
            "spec.rules[0].http.paths[2].path: Invalid value: \"x//y\": must not contain '//'",
        ] {
            assert!(text.contains(want), "{want} missing from:\n{text}");
        }
    }
}
