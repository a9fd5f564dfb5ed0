//! The generic registry's update (staging/src/k8s.io/apiserver/pkg/registry/
//! generic/registry/store.go) for the apps kinds, shared by PUT, PATCH and the
//! `status` and `scale` subresources: a `metadata.resourceVersion` in what is
//! written is a precondition (stale → 409 Conflict), system fields (uid,
//! creationTimestamp, generation, deletionTimestamp) stay the server's, the main
//! resource keeps the stored status and the `status` subresource the stored spec
//! and labels, defaults are applied and the result validated (422) before it is
//! stored; an object being deleted whose last finalizer goes is removed.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use serde_json::Value;

use super::errors;
use super::patch::PatchKind;
use super::workload::Workload;
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::status::ApiError;

/// Problems, without the empty-selector one a missing selector also causes.
pub fn problems(missing: Vec<String>, found: Vec<String>) -> Vec<String> {
    let selector_missing = !missing.is_empty();
    missing
        .into_iter()
        .chain(
            found
                .into_iter()
                .filter(|p| !(selector_missing && p.contains("empty selector is invalid"))),
        )
        .collect()
}

/// Which part of the object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

/// Replaces a stored object by what `make` builds from it, as the generic
/// registry's update does; returns what was stored.
pub fn update<K: Workload>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    part: Part,
    make: impl FnOnce(&K) -> Result<K, ApiError>,
    missing: Vec<String>,
) -> Result<K, ApiError> {
    let mut outcome = Err(errors::not_found::<K>(name));
    let stored = ctx.store.update::<K>(ns, name, |obj| {
        let current = obj.clone();
        outcome = next_version(&current, part, make, missing).map(|next| *obj = next);
    });
    outcome?;
    let stored = stored.ok_or_else(|| errors::not_found::<K>(name))?;
    let meta = stored.metadata();
    if meta.deletion_timestamp.is_some() && meta.finalizers.as_ref().is_none_or(Vec::is_empty) {
        ctx.store.remove::<K>(ns, name);
    }
    Ok(stored)
}

fn next_version<K: Workload>(
    current: &K,
    part: Part,
    make: impl FnOnce(&K) -> Result<K, ApiError>,
    missing: Vec<String>,
) -> Result<K, ApiError> {
    let cm = current.metadata();
    let name = cm.name.clone().unwrap_or_default();
    let mut next = make(current)?;
    let nm = next.metadata_mut();
    if let Some(rv) = nm.resource_version.as_deref().filter(|v| !v.is_empty())
        && Some(rv) != cm.resource_version.as_deref()
    {
        return Err(errors::conflict::<K>(&name));
    }
    if let Some(uid) = nm.uid.as_deref().filter(|u| !u.is_empty())
        && Some(uid) != cm.uid.as_deref()
    {
        let mut e = errors::conflict::<K>(&name);
        e.message = format!(
            "Operation cannot be fulfilled on {}.apps \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            K::URL_PATH_SEGMENT,
            cm.uid.as_deref().unwrap_or_default()
        );
        return Err(e);
    }
    if cm.deletion_timestamp.is_some() {
        let old = cm.finalizers.clone().unwrap_or_default();
        let added: Vec<&String> = nm
            .finalizers
            .iter()
            .flatten()
            .filter(|f| !old.contains(f))
            .collect();
        if !added.is_empty() {
            return Err(errors::invalid::<K>(
                &name,
                &[format!(
                    "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                )],
            ));
        }
    }
    // The server's fields.
    nm.name = cm.name.clone();
    nm.namespace = cm.namespace.clone();
    nm.uid = cm.uid.clone();
    nm.creation_timestamp = cm.creation_timestamp.clone();
    nm.deletion_timestamp = cm.deletion_timestamp.clone();
    nm.deletion_grace_period_seconds = cm.deletion_grace_period_seconds;
    nm.generation = cm.generation;
    nm.resource_version = cm.resource_version.clone();
    nm.managed_fields = cm.managed_fields.clone();
    nm.self_link = None;
    match part {
        Part::Main => {
            next.keep_status(current);
            next.apply_defaults();
            let problems = problems(missing, next.validate(Some(current)));
            if !problems.is_empty() {
                return Err(errors::invalid::<K>(&name, &problems));
            }
            if next.bumps_generation(current) {
                let meta = next.metadata_mut();
                meta.generation = Some(meta.generation.unwrap_or(1) + 1);
            }
        }
        Part::Status => next.keep_spec_and_labels(current),
    }
    Ok(next)
}

/// The patch of a request: its kind from the content type, its JSON body.
pub fn read_patch(
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<(PatchKind, Value), ApiError> {
    if q.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the Kubernetes test double",
        ));
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let kind = PatchKind::from_content_type(content_type)?;
    let value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    Ok((kind, value))
}
