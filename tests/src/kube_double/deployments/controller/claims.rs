//! Which objects a controller controls, as `ControllerRefManager.ClaimObjects`
//! decides (pkg/controller/controller_ref_manager.go): those whose controller
//! reference names it and that its selector still matches; one whose labels no
//! longer match is released (the reference removed); one without a controller
//! that matches is adopted (a controller reference added), unless either is being
//! deleted. A Deployment claims ReplicaSets, a ReplicaSet claims pods: so a
//! Deployment recreated after an Orphan deletion takes its ReplicaSet back, and a
//! pod relabelled out of a ReplicaSet is replaced.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{controller_uid, owner_ref};
use crate::kube_double::deployments::label_selector;
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::store::Object;

/// Of `candidates` (objects of the owner's namespace), those `owner` controls
/// after adopting and releasing; `adoptable` says which may be adopted.
pub fn claim<K: Object>(
    ctx: &Ctx,
    owner_kind: &str,
    owner: &ObjectMeta,
    selector: &LabelSelector,
    candidates: &[K],
    adoptable: impl Fn(&K) -> bool,
) -> Vec<K> {
    let uid = owner.uid.as_deref().unwrap_or_default();
    let matches = |o: &K| {
        !label_selector::is_empty(selector)
            && label_selector::matches(selector, o.metadata().labels.as_ref())
    };
    let mut mine = Vec::new();
    for o in candidates {
        let m = o.metadata();
        if m.namespace != owner.namespace {
            continue;
        }
        let (ns, name) = (
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        );
        match controller_uid(m) {
            Some(c) if c == uid => {
                if matches(o) {
                    mine.push(o.clone());
                } else {
                    ctx.store.update::<K>(&ns, &name, |x| {
                        if let Some(refs) = &mut x.metadata_mut().owner_references {
                            refs.retain(|r| r.uid != uid);
                        }
                    });
                }
            }
            None if owner.deletion_timestamp.is_none()
                && m.deletion_timestamp.is_none()
                && matches(o)
                && adoptable(o) =>
            {
                let adopted = ctx.store.update::<K>(&ns, &name, |x| {
                    if controller_uid(x.metadata()).is_none() {
                        x.metadata_mut()
                            .owner_references
                            .get_or_insert_with(Vec::new)
                            .push(owner_ref(owner_kind, owner));
                    }
                });
                if let Some(a) = adopted.filter(|a| controller_uid(a.metadata()) == Some(uid)) {
                    mine.push(a);
                }
            }
            _ => {}
        }
    }
    mine
}
