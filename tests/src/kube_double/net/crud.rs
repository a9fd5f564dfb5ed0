//! PUT (replace), PATCH (JSON merge patch) and DELETE for the network kinds, as
//! the API server's generic registry does them (k8s.io/apiserver
//! pkg/registry/generic/registry/store.go, pkg/endpoints/handlers/patch.go):
//!
//! - PUT needs the object to exist (404; no create-on-update for these kinds) and
//!   the URL's name; `metadata.resourceVersion`, when sent, must be the current one
//!   (409 Conflict "the object has been modified"); kinds that do not allow an
//!   unconditional update (custom resources) refuse a PUT without it (422).
//!   System metadata (uid, creationTimestamp, generation) is kept, `status` is kept
//!   (it has its own subresource), `generation` is bumped when the spec changes for
//!   kinds that track it. An update that changes nothing is no write.
//! - PATCH with `application/merge-patch+json` (RFC 7386) applies to the current
//!   object and is then an update; a conflict with a concurrent write is retried,
//!   unless the patch itself names a resourceVersion. Strategic merge, JSON patch
//!   and apply patches are 415.
//! - DELETE removes at once and answers a `Success` Status; `propagationPolicy:
//!   Orphan` strips the owner reference from dependents first (`gc`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::gc;
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::delete_opts;
use crate::kube_double::status::{self, ApiError};
use crate::kube_double::store::Object;

/// What PUT and PATCH need to know about a kind.
pub trait Updatable: Object {
    /// The kind as the API server names it in messages: `Service`,
    /// `Ingress.networking.k8s.io`.
    const QUALIFIED_KIND: &'static str;
    /// Whether a PUT may omit `metadata.resourceVersion`.
    const UNCONDITIONAL_UPDATE: bool;
    /// Whether `metadata.generation` counts spec changes.
    const TRACKS_GENERATION: bool;

    /// The part of an update that depends on the stored object (immutable fields,
    /// values the server allocated): problems are a 422.
    fn update_from(old: &Self, next: &mut Self) -> Vec<String>;
    /// The spec, to tell whether it changed.
    fn spec_json(&self) -> Value;
    /// Carries the stored status over to `next`.
    fn keep_status(old: &Self, next: &mut Self);
}

pub fn conflict(resource: &str, name: &str) -> ApiError {
    ApiError {
        code: 409,
        reason: "Conflict",
        message: format!(
            "Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        name: Some(name.to_owned()),
        kind: Some(resource.to_owned()),
    }
}

pub fn invalid<K: Updatable>(name: &str, problems: &[String]) -> ApiError {
    let mut e = ApiError::invalid(K::QUALIFIED_KIND, name, problems);
    e.kind = Some(K::KIND.to_owned());
    e
}

/// The name in the body must be the URL's (or empty: the URL's is used).
pub fn check_name<K: Object>(obj: &mut K, name: &str) -> Result<(), ApiError> {
    let meta = obj.metadata_mut();
    match meta.name.as_deref() {
        None | Some("") => meta.name = Some(name.to_owned()),
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    Ok(())
}

/// Replaces the stored object with `next` (decoded and validated on its own).
pub fn replace<K: Updatable>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    mut next: K,
    from_patch: bool,
) -> Result<K, ApiError> {
    check_name(&mut next, name)?;
    let want_rv = next
        .metadata()
        .resource_version
        .clone()
        .filter(|rv| !rv.is_empty());
    if want_rv.is_none() && !from_patch && !K::UNCONDITIONAL_UPDATE {
        return Err(invalid::<K>(
            name,
            &[
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
                    .into(),
            ],
        ));
    }
    let mut failure: Option<ApiError> = None;
    let mut next = Some(next);
    let stored = ctx.store.update::<K>(ns, name, |current| {
        let mut next = next.take().expect("the update closure runs once");
        if want_rv.is_some() && current.metadata().resource_version != want_rv {
            failure = Some(conflict(K::URL_PATH_SEGMENT, name));
            return;
        }
        let (old, new) = (current.metadata(), next.metadata_mut());
        new.namespace = old.namespace.clone();
        new.uid = old.uid.clone();
        new.creation_timestamp = old.creation_timestamp.clone();
        new.generation = old.generation;
        new.deletion_timestamp = old.deletion_timestamp.clone();
        new.deletion_grace_period_seconds = old.deletion_grace_period_seconds;
        new.generate_name = old.generate_name.clone();
        new.resource_version = old.resource_version.clone();
        new.managed_fields = None;
        new.self_link = None;
        K::keep_status(current, &mut next);
        if K::TRACKS_GENERATION && next.spec_json() != current.spec_json() {
            let meta = next.metadata_mut();
            meta.generation = Some(meta.generation.unwrap_or(1) + 1);
        }
        let problems = K::update_from(current, &mut next);
        if !problems.is_empty() {
            failure = Some(invalid::<K>(name, &problems));
            return;
        }
        *current = next;
    });
    match (stored, failure) {
        (_, Some(e)) => Err(e),
        (Some(obj), None) => Ok(obj),
        (None, None) => Err(ApiError::not_found(K::URL_PATH_SEGMENT, name)),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Times a patch is re-applied after losing a race with another write.
const PATCH_RETRIES: usize = 5;

/// PATCH: `admit` decodes and validates the patched JSON as a new object would be.
pub fn patch<K: Updatable>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    admit: impl Fn(Value) -> Result<K, ApiError>,
) -> Result<K, ApiError> {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if content_type != "application/merge-patch+json" {
        return Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!(
                "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json (the Kubernetes test double implements merge patches only; got {content_type:?})"
            ),
            name: None,
            kind: None,
        });
    }
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    if !patch.is_object() {
        return Err(ApiError::bad_request("a merge patch must be a JSON object"));
    }
    let pinned = patch.pointer("/metadata/resourceVersion").is_some();
    let mut tries = 0;
    loop {
        let current = ctx
            .store
            .get::<K>(ns, name)
            .ok_or_else(|| ApiError::not_found(K::URL_PATH_SEGMENT, name))?;
        let mut json = serde_json::to_value(&current).expect("objects serialize");
        merge_patch(&mut json, &patch);
        let next = admit(json)?;
        match replace(ctx, ns, name, next, true) {
            Err(e) if e.code == 409 && !pinned && tries < PATCH_RETRIES => tries += 1,
            other => return other,
        }
    }
}

/// DELETE of one object: removed at once, a `Success` Status.
pub fn delete<K: Object>(
    ctx: &Arc<Ctx>,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let opts = delete_opts(body, q)?;
    let obj = ctx
        .store
        .get::<K>(ns, name)
        .ok_or_else(|| ApiError::not_found(K::URL_PATH_SEGMENT, name))?;
    let uid = obj.metadata().uid.clone().unwrap_or_default();
    if opts.orphan {
        gc::orphan(ctx, &uid);
    }
    let gone = ctx
        .store
        .remove::<K>(ns, name)
        .ok_or_else(|| ApiError::not_found(K::URL_PATH_SEGMENT, name))?;
    Ok(axum::Json(status::success_deleted(
        K::URL_PATH_SEGMENT,
        name,
        gone.metadata().uid.as_deref(),
    ))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The example of RFC 7386 section 3.
        let mut target = json!({
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged"
        });
        let patch = json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null},
            "tags": ["example"]
        });
        merge_patch(&mut target, &patch);
        assert_eq!(
            target,
            json!({
                "title": "Hello!",
                "author": {"givenName": "John"},
                "tags": ["example"],
                "content": "This will be unchanged",
                "phoneNumber": "+01-123-456-7890"
            })
        );
    }
}
