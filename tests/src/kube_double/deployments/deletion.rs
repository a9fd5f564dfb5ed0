//! Deleting a Deployment or ReplicaSet as the API server does for kinds whose
//! apps/v1 garbage-collection default is to delete dependents
//! (`DefaultGarbageCollectionPolicy` in pkg/registry/apps/deployment/strategy.go;
//! `shouldDeleteDependents`/`shouldOrphanDependents` in the generic registry):
//! `propagationPolicy` Background (the default) removes the object at once (200, a
//! Success `Status`) and the garbage collector then deletes its dependents;
//! Foreground and Orphan (or the deprecated `orphanDependents: true`) set
//! `deletionTimestamp` with the `foregroundDeletion` or `orphan` finalizer and return
//! the object (200): the collector deletes the dependents first, or takes their
//! owner reference away, then removes the object (see `controller::gc`). An object
//! with finalizers of its own waits for them to be removed.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::errors;
use super::workload::Workload;
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::{self, Q};
use crate::kube_double::status::ApiError;
use crate::kube_double::store::now;

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The policy a DeleteOptions body or query asks for (`None`: the kind's default).
fn propagation(body: &Bytes, q: &HashMap<String, String>) -> Result<Option<Propagation>, ApiError> {
    // Also refuses dryRun and preconditions, as the pod deletion does.
    routes::delete_opts(body, q)?;
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| q.get("propagationPolicy").cloned());
    let orphan_dependents = body
        .get("orphanDependents")
        .and_then(Value::as_bool)
        .or_else(|| q.get("orphanDependents").map(|v| v == "true"));
    Ok(match (policy.as_deref(), orphan_dependents) {
        (Some("Background"), _) => Some(Propagation::Background),
        (Some("Foreground"), _) => Some(Propagation::Foreground),
        (Some("Orphan"), _) | (None, Some(true)) => Some(Propagation::Orphan),
        (None, Some(false)) => Some(Propagation::Foreground),
        _ => None,
    })
}

/// What a DELETE answers: the object while it waits for finalizers, or the
/// Success `Status` of an object removed at once.
pub enum Deleted<K> {
    Pending(K),
    Gone(Value),
}

impl<K: Workload> IntoResponse for Deleted<K> {
    fn into_response(self) -> Response {
        match self {
            Deleted::Pending(obj) => axum::Json(obj).into_response(),
            Deleted::Gone(status) => axum::Json(status).into_response(),
        }
    }
}

/// Deletes one object with `policy` (`None`: Background, this kind's default).
pub fn delete_object<K: Workload>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    policy: Option<Propagation>,
) -> Result<Deleted<K>, ApiError> {
    let current = ctx
        .store
        .get::<K>(ns, name)
        .ok_or_else(|| errors::not_found::<K>(name))?;
    let mut finalizers = current.metadata().finalizers.clone().unwrap_or_default();
    if let Some(policy) = policy {
        finalizers.retain(|f| f != FOREGROUND && f != ORPHAN);
        match policy {
            Propagation::Foreground => finalizers.push(FOREGROUND.into()),
            Propagation::Orphan => finalizers.push(ORPHAN.into()),
            Propagation::Background => {}
        }
    }
    if finalizers.is_empty() {
        let gone = ctx
            .store
            .remove::<K>(ns, name)
            .ok_or_else(|| errors::not_found::<K>(name))?;
        return Ok(Deleted::Gone(json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": "apps",
                "kind": K::URL_PATH_SEGMENT,
                "uid": gone.metadata().uid,
            },
        })));
    }
    let pending = ctx
        .store
        .update::<K>(ns, name, |o| {
            let meta = o.metadata_mut();
            meta.deletion_timestamp.get_or_insert_with(now);
            meta.deletion_grace_period_seconds.get_or_insert(0);
            meta.finalizers = Some(finalizers);
        })
        .ok_or_else(|| errors::not_found::<K>(name))?;
    Ok(Deleted::Pending(pending))
}

pub async fn delete_one<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Deleted<K>, ApiError> {
    let policy = propagation(&body, &q)?;
    delete_object::<K>(&ctx, &ns, &name, policy)
}

pub async fn delete_collection<K: Workload>(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let policy = propagation(&body, &q)?;
    let mut deleted = Vec::new();
    for obj in routes::selected::<K>(&ctx, &ns, &q)? {
        let name = obj.metadata().name.clone().unwrap_or_default();
        match delete_object::<K>(&ctx, &ns, &name, policy) {
            Ok(Deleted::Pending(o)) => deleted.push(o),
            Ok(Deleted::Gone(_)) => deleted.push(obj),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(routes::list_response(&ctx, deleted))
}
