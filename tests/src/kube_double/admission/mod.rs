//! Admission of pod creates, after validation and before storing, in the order the
//! API server runs its validating plugins (`PodSecurity` before `ResourceQuota`,
//! which is always last): Pod Security `restricted` for the namespaces configured so
//! ([`pod_security`]), then the namespace's ResourceQuotas ([`quota`]). Refusals are
//! 403 Forbidden `Status`es worded as the plugins word them. ResourceQuota objects
//! themselves: [`routes`].

pub mod pod_security;
pub mod quota;
pub mod routes;

use k8s_openapi::api::core::v1::{Pod, ResourceQuota};

use super::pod_runtime::Ctx;
use super::status::ApiError;

/// 403 as `apierrors.NewForbidden` words it: `pods "x" is forbidden: …`, or
/// `pods is forbidden: …` when the request named no pod.
fn forbidden(name: &str, why: String) -> ApiError {
    let message = if name.is_empty() {
        format!("pods is forbidden: {why}")
    } else {
        format!("pods \"{name}\" is forbidden: {why}")
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        name: Some(name.to_owned()),
        kind: Some("pods".to_owned()),
    }
}

/// Admits (or refuses) creating `pod` in `ns`. The caller holds
/// [`Ctx::admission_lock`] until the pod is stored, so two creates cannot both fit the
/// last of a quota (upstream serialises them through the quota's resourceVersion).
pub(super) fn admit(ctx: &Ctx, ns: &str, pod: &Pod) -> Result<(), ApiError> {
    let meta = &pod.metadata;
    let named = meta.name.clone().filter(|n| !n.is_empty());
    if ctx.options.restricted_namespaces.contains(ns)
        && let Some(why) = pod_security::refusal(pod)
    {
        // The plugin names what the request named: nothing for a generateName create.
        return Err(forbidden(named.as_deref().unwrap_or_default(), why));
    }
    let (quotas, _) = ctx.store.list::<ResourceQuota>(Some(ns));
    if quotas.is_empty() {
        return Ok(());
    }
    let (pods, _) = ctx.store.list::<Pod>(Some(ns));
    match quota::refusal(&quotas, &pods, pod) {
        // Quota admission names the object, or its generateName before one is made.
        Some(why) => Err(forbidden(
            named
                .or_else(|| meta.generate_name.clone())
                .as_deref()
                .unwrap_or("Unknown"),
            why,
        )),
        None => Ok(()),
    }
}
