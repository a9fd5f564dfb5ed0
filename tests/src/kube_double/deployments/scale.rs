//! The `scale` subresource (`autoscaling/v1` Scale), what `kubectl scale` and
//! `kube::Api::{get_scale, replace_scale, patch_scale}` use: `spec.replicas` is the
//! workload's, `status.replicas` its status's, `status.selector` its selector as a
//! query string. A write changes `spec.replicas` only (a new generation), with the
//! Scale's `metadata.resourceVersion` as a precondition.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec, ScaleStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::workload::Workload;
use super::write::{self, Part};
use super::{errors, label_selector, patch};
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::Q;
use crate::kube_double::status::ApiError;

fn scale_of<K: Workload>(obj: &K) -> Scale {
    let m = obj.metadata();
    Scale {
        metadata: ObjectMeta {
            name: m.name.clone(),
            namespace: m.namespace.clone(),
            uid: m.uid.clone(),
            resource_version: m.resource_version.clone(),
            creation_timestamp: m.creation_timestamp.clone(),
            ..Default::default()
        },
        spec: Some(ScaleSpec {
            replicas: Some(obj.replicas()),
        }),
        status: Some(ScaleStatus {
            replicas: obj.status_replicas(),
            selector: obj.selector().map(label_selector::to_query),
        }),
    }
}

fn apply_scale<K: Workload>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    make: impl FnOnce(Scale) -> Result<Scale, ApiError>,
) -> Result<axum::Json<Scale>, ApiError> {
    let stored = write::update::<K>(
        ctx,
        ns,
        name,
        Part::Main,
        |current| {
            let wanted = make(scale_of(current))?;
            let mut next = current.clone();
            next.metadata_mut().resource_version = wanted.metadata.resource_version;
            let replicas = wanted.spec.and_then(|s| s.replicas).unwrap_or(0);
            next.set_replicas(replicas);
            Ok(next)
        },
        Vec::new(),
    )?;
    Ok(axum::Json(scale_of(&stored)))
}

pub async fn get<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<axum::Json<Scale>, ApiError> {
    ctx.store
        .get::<K>(&ns, &name)
        .map(|o| axum::Json(scale_of(&o)))
        .ok_or_else(|| errors::not_found::<K>(&name))
}

pub async fn replace<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<axum::Json<Scale>, ApiError> {
    let sent: Scale = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not a Scale: {e}")))?;
    apply_scale::<K>(&ctx, &ns, &name, |_| Ok(sent))
}

pub async fn patch<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Scale>, ApiError> {
    let (kind, p) = write::read_patch(&headers, &q, &body)?;
    apply_scale::<K>(&ctx, &ns, &name, |current| {
        let json = serde_json::to_value(current).expect("a Scale serializes");
        let patched = patch::apply(kind, json, &p)?;
        serde_json::from_value(patched)
            .map_err(|e| ApiError::bad_request(format!("the patched Scale does not decode: {e}")))
    })
}
