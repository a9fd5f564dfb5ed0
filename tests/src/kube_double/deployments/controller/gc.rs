//! The garbage collector for what Deployments and ReplicaSets own
//! (pkg/controller/garbagecollector): a ReplicaSet or pod whose owner references
//! all name Deployments or ReplicaSets that no longer exist is deleted (pods
//! gracefully, as a DELETE would); an owner deleted with the `foregroundDeletion`
//! finalizer has its dependents deleted (in the foreground themselves) and is
//! removed once none is left; one with the `orphan` finalizer has its dependents'
//! references to it removed, then is removed. Owners of other kinds (a pod owned
//! by something the double does not model) are left alone.

use std::collections::HashSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::kube_double::deployments::deletion::{self, FOREGROUND, ORPHAN, Propagation};
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::{self, DeleteOpts};
use crate::kube_double::store::Object;

const MODELLED: &[&str] = &["Deployment", "ReplicaSet"];

fn owned_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid)
}

/// Every owner reference names a Deployment or ReplicaSet that is gone.
fn orphaned(meta: &ObjectMeta, alive: &HashSet<String>) -> bool {
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    !refs.is_empty()
        && refs.iter().all(|o| {
            o.api_version == "apps/v1"
                && MODELLED.contains(&o.kind.as_str())
                && !alive.contains(&o.uid)
        })
}

fn drop_owner<K: Object>(ctx: &Ctx, dependent: &K, owner_uid: &str) {
    let m = dependent.metadata();
    let (ns, name) = (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    );
    ctx.store.update::<K>(&ns, &name, |o| {
        if let Some(refs) = &mut o.metadata_mut().owner_references {
            refs.retain(|r| r.uid != owner_uid);
        }
    });
}

fn delete_pod(ctx: &Arc<Ctx>, p: &Pod) {
    if p.metadata.deletion_timestamp.is_some() {
        return;
    }
    let ns = p.metadata.namespace.clone().unwrap_or_default();
    let name = p.metadata.name.clone().unwrap_or_default();
    let opts = DeleteOpts {
        grace: None,
        orphan: false,
    };
    let _ = routes::begin_pod_deletion(ctx, &ns, &name, &opts);
}

/// Removes a finalizer of an owner; the owner goes when none is left.
fn finish<K: Object>(ctx: &Ctx, owner: &K, finalizer: &str) {
    let m = owner.metadata();
    let (ns, name) = (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    );
    let after = ctx.store.update::<K>(&ns, &name, |o| {
        if let Some(f) = &mut o.metadata_mut().finalizers {
            f.retain(|x| x != finalizer);
        }
    });
    if after.is_some_and(|o| o.metadata().finalizers.as_ref().is_none_or(Vec::is_empty)) {
        ctx.store.remove::<K>(&ns, &name);
    }
}

fn has(meta: &ObjectMeta, finalizer: &str) -> bool {
    meta.deletion_timestamp.is_some() && meta.finalizers.iter().flatten().any(|f| f == finalizer)
}

pub fn collect(ctx: &Arc<Ctx>) {
    let (deployments, _) = ctx.store.list::<Deployment>(None);
    let (sets, _) = ctx.store.list::<ReplicaSet>(None);
    let (pods, _) = ctx.store.list::<Pod>(None);

    for d in &deployments {
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let dependents: Vec<&ReplicaSet> = sets
            .iter()
            .filter(|rs| owned_by(&rs.metadata, &uid))
            .collect();
        if has(&d.metadata, FOREGROUND) {
            for rs in &dependents {
                if rs.metadata.deletion_timestamp.is_none() {
                    let ns = rs.metadata.namespace.clone().unwrap_or_default();
                    let name = rs.metadata.name.clone().unwrap_or_default();
                    let _ = deletion::delete_object::<ReplicaSet>(
                        ctx,
                        &ns,
                        &name,
                        Some(Propagation::Foreground),
                    );
                }
            }
            if dependents.is_empty() {
                finish(ctx, d, FOREGROUND);
            }
        } else if has(&d.metadata, ORPHAN) {
            for rs in &dependents {
                drop_owner(ctx, *rs, &uid);
            }
            finish(ctx, d, ORPHAN);
        }
    }
    for rs in &sets {
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let dependents: Vec<&Pod> = pods
            .iter()
            .filter(|p| owned_by(&p.metadata, &uid))
            .collect();
        if has(&rs.metadata, FOREGROUND) {
            for p in &dependents {
                delete_pod(ctx, p);
            }
            if dependents.is_empty() {
                finish(ctx, rs, FOREGROUND);
            }
        } else if has(&rs.metadata, ORPHAN) {
            for p in &dependents {
                drop_owner(ctx, *p, &uid);
            }
            finish(ctx, rs, ORPHAN);
        }
    }

    // Dependents whose owners are all gone (a Background deletion, or an owner
    // removed meanwhile).
    let alive: HashSet<String> = deployments
        .iter()
        .map(|d| &d.metadata)
        .chain(sets.iter().map(|rs| &rs.metadata))
        .filter_map(|m| m.uid.clone())
        .collect();
    for rs in &sets {
        if rs.metadata.deletion_timestamp.is_none() && orphaned(&rs.metadata, &alive) {
            let ns = rs.metadata.namespace.clone().unwrap_or_default();
            let name = rs.metadata.name.clone().unwrap_or_default();
            let _ = deletion::delete_object::<ReplicaSet>(ctx, &ns, &name, None);
        }
    }
    for p in &pods {
        if orphaned(&p.metadata, &alive) {
            delete_pod(ctx, p);
        }
    }
}
