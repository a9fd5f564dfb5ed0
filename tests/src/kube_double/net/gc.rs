//! The background reconciler of the network kinds, from the store's change events:
//! Service listeners follow Service changes (`service_proxy::reconcile`), and owner
//! garbage collection runs after every deletion of any object and every write of
//! a network object.
//!
//! Garbage collection as the garbage collector does it (kubernetes
//! pkg/controller/garbagecollector; docs "Garbage Collection"): a dependent whose
//! ownerReferences all name owners that no longer exist (matched by kind and uid)
//! is deleted; one that keeps a live owner only loses the dangling references.
//! Like the real collector it is asynchronous: the owner's DELETE returns first.
//! An owner of a kind the double does not store counts as alive (the double cannot
//! tell). Foreground deletion is treated as background (the owner goes at once);
//! Orphan strips the references before the owner goes (`orphan`, called by a
//! DELETE handler with `propagationPolicy: Orphan`).
//!
//! Kinds collected here: Service, Ingress, HTTPRoute. For another kind, call
//! [`sweep_kind`] for it (or add it to [`sweep`]).

use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use tokio::sync::broadcast::error::RecvError;

use super::HttpRouteObject;
use super::service_proxy;
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::store::{EventType, Object};

/// Resources whose writes trigger a sweep (they may name owners).
const NETWORK_RESOURCES: &[&str] = &["services", "ingresses", "httproutes"];

/// Follows the store until the double shuts down.
pub fn watch(ctx: Arc<Ctx>) {
    tokio::spawn(async move {
        let since = ctx.store.resource_version();
        let Ok(start) = ctx.store.watch::<Service>(Some(since)) else {
            return;
        };
        let mut live = start.live;
        // Anything written before the subscription.
        service_proxy::reconcile_all(&ctx);
        sweep(&ctx);
        loop {
            let ev = tokio::select! {
                ev = live.recv() => ev,
                _ = ctx.shutdown.cancelled() => return,
            };
            match ev {
                Ok(ev) => {
                    if ev.resource == <Service as k8s_openapi::Resource>::URL_PATH_SEGMENT
                        && let Some(name) =
                            ev.object.pointer("/metadata/name").and_then(|n| n.as_str())
                    {
                        service_proxy::reconcile(&ctx, &ev.namespace, name);
                    }
                    if ev.kind == EventType::Deleted || NETWORK_RESOURCES.contains(&ev.resource) {
                        sweep(&ctx);
                    }
                }
                // Missed events: reconcile everything.
                Err(RecvError::Lagged(_)) => {
                    service_proxy::reconcile_all(&ctx);
                    sweep(&ctx);
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}

/// Collects every network kind.
pub fn sweep(ctx: &Arc<Ctx>) {
    sweep_kind::<Service>(ctx);
    sweep_kind::<Ingress>(ctx);
    sweep_kind::<HttpRouteObject>(ctx);
}

/// Deletes the objects of one kind whose owners are all gone; strips dangling
/// references from those with a live owner left.
pub fn sweep_kind<K: Object>(ctx: &Arc<Ctx>) {
    let (objects, _) = ctx.store.list::<K>(None);
    for obj in objects {
        let meta = obj.metadata();
        let Some(refs) = meta.owner_references.as_ref().filter(|r| !r.is_empty()) else {
            continue;
        };
        let gone: Vec<&str> = refs
            .iter()
            .filter(|r| ctx.store.owner_exists(&r.kind, &r.uid) == Some(false))
            .map(|r| r.uid.as_str())
            .collect();
        if gone.is_empty() {
            continue;
        }
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        if gone.len() == refs.len() {
            if ctx.store.remove::<K>(&ns, &name).is_some() && K::URL_PATH_SEGMENT == "services" {
                service_proxy::reconcile(ctx, &ns, &name);
            }
        } else {
            let gone: Vec<String> = gone.into_iter().map(str::to_owned).collect();
            ctx.store.update::<K>(&ns, &name, |o| {
                if let Some(r) = &mut o.metadata_mut().owner_references {
                    r.retain(|r| !gone.contains(&r.uid));
                }
            });
        }
    }
}

/// `propagationPolicy: Orphan`: the network objects owned by `owner_uid` lose that
/// reference (call before removing the owner).
pub fn orphan(ctx: &Ctx, owner_uid: &str) {
    orphan_kind::<Service>(ctx, owner_uid);
    orphan_kind::<Ingress>(ctx, owner_uid);
    orphan_kind::<HttpRouteObject>(ctx, owner_uid);
}

fn orphan_kind<K: Object>(ctx: &Ctx, owner_uid: &str) {
    let (objects, _) = ctx.store.list::<K>(None);
    for obj in objects {
        let meta = obj.metadata();
        if !meta
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.uid == owner_uid)
        {
            continue;
        }
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        ctx.store.update::<K>(&ns, &name, |o| {
            let meta = o.metadata_mut();
            if let Some(r) = &mut meta.owner_references {
                r.retain(|r| r.uid != owner_uid);
            }
            if meta.owner_references.as_ref().is_some_and(Vec::is_empty) {
                meta.owner_references = None;
            }
        });
    }
}
