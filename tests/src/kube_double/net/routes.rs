//! The HTTP paths of the network kinds, merged into the double's router (so they
//! are counted and share its 404/405 answers): Services under `/api/v1`,
//! Ingresses under `/apis/networking.k8s.io/v1`, HTTPRoutes under
//! `/apis/gateway.networking.k8s.io/v1`; each namespaced (list/watch, create,
//! get, replace, merge patch, delete) and listed across namespaces.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;

use super::httproute::{HttpRouteObject, api as httproutes};
use super::{ingress, services};
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::{get_one, list_all, list_ns};

pub fn routes() -> Router<Arc<Ctx>> {
    let svc = "/api/v1/namespaces/{ns}/services";
    let ing = "/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses";
    let hr = "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes";
    Router::new()
        .route(svc, get(list_ns::<Service>).post(services::create))
        .route(
            &format!("{svc}/{{name}}"),
            get(get_one::<Service>)
                .put(services::replace)
                .patch(services::patch)
                .delete(services::delete),
        )
        .route(&format!("{svc}/{{name}}/status"), get(get_one::<Service>))
        .route("/api/v1/services", get(list_all::<Service>))
        .route(ing, get(list_ns::<Ingress>).post(ingress::create))
        .route(
            &format!("{ing}/{{name}}"),
            get(get_one::<Ingress>)
                .put(ingress::replace)
                .patch(ingress::patch)
                .delete(ingress::delete),
        )
        .route(
            "/apis/networking.k8s.io/v1/ingresses",
            get(list_all::<Ingress>),
        )
        .route(hr, get(list_ns::<HttpRouteObject>).post(httproutes::create))
        .route(
            &format!("{hr}/{{name}}"),
            get(get_one::<HttpRouteObject>)
                .put(httproutes::replace)
                .patch(httproutes::patch)
                .delete(httproutes::delete),
        )
        .route(
            &format!("{hr}/{{name}}/status"),
            get(get_one::<HttpRouteObject>),
        )
        .route(
            "/apis/gateway.networking.k8s.io/v1/httproutes",
            get(list_all::<HttpRouteObject>),
        )
}
