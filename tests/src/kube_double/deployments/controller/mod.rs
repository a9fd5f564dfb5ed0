//! The controllers a cluster runs for apps/v1 workloads, as one loop inside the
//! double: the garbage collector (`gc`), the ReplicaSet controller (`replicaset`)
//! and the deployment controller (`rollout`, with `new_rs`, `scaling`, `status`,
//! `util`, `hash`); `claims` is which objects each controls (adoption, release). A pass syncs everything: collect garbage, sync ReplicaSets,
//! sync Deployments, sync ReplicaSets again (so a rollout step's scale-down deletes
//! pods in the same pass, before the next scale-up creates any). A pass runs after
//! every change in the store (the controllers' own writes included, until nothing
//! changes: a write that changes nothing is no change) and when something
//! time-based falls due (a pod becoming available after `minReadySeconds`, a
//! progress deadline), with a slow periodic pass as a safety net.
//!
//! The controllers work on the store directly, as controllers with a perfect
//! informer cache would; their writes are ordinary changes (new resourceVersions,
//! watch events, a ReplicaSet's generation bumped by a spec change).

mod claims;
mod gc;
mod hash;
mod new_rs;
mod replicaset;
mod rollout;
mod scaling;
mod status;
mod util;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use crate::kube_double::pod_runtime::Ctx;

/// The safety-net pass.
const IDLE: Duration = Duration::from_secs(5);

/// The earliest time a pass is due for something time-based.
#[derive(Debug, Default, Clone, Copy)]
pub struct Wake(Option<Timestamp>);

impl Wake {
    pub fn at(&mut self, t: Timestamp) {
        self.0 = Some(self.0.map_or(t, |w| w.min(t)));
    }

    pub fn merge(&mut self, other: Wake) {
        if let Some(t) = other.0 {
            self.at(t);
        }
    }

    fn after(self) -> Duration {
        match self.0 {
            None => IDLE,
            Some(t) => {
                let left = t.duration_since(Timestamp::now()).as_millis().max(0);
                Duration::from_millis(left as u64).min(IDLE)
            }
        }
    }
}

/// The uid of the object's controller (the owner reference with `controller: true`).
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// The owner reference a controller puts on what it creates (`NewControllerRef`).
pub fn owner_ref(kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: kind.into(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Starts the controllers; they stop with the double.
pub fn spawn(ctx: Arc<Ctx>) {
    let mut changes = match ctx
        .store
        .watch::<Deployment>(Some(ctx.store.resource_version()))
    {
        Ok(start) => start.live,
        Err(_) => return,
    };
    tokio::spawn(async move {
        loop {
            let wake = pass(&ctx);
            tokio::select! {
                _ = ctx.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wake.after()) => {}
                received = changes.recv() => match received {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        // One pass for everything that happened meanwhile.
                        while let Ok(_) | Err(TryRecvError::Lagged(_)) = changes.try_recv() {}
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    });
}

/// One pass of every controller. A bug in one must not stop them for the rest of
/// the double's life: a panic is logged and the next pass tries again.
fn pass(ctx: &Arc<Ctx>) -> Wake {
    let run = std::panic::AssertUnwindSafe(|| controllers(ctx));
    std::panic::catch_unwind(run).unwrap_or_else(|_| {
        tracing::error!("kube double: a controller pass panicked");
        Wake(Some(
            Timestamp::now() + k8s_openapi::jiff::SignedDuration::from_secs(1),
        ))
    })
}

fn controllers(ctx: &Arc<Ctx>) -> Wake {
    let mut wake = Wake::default();
    gc::collect(ctx);
    replicaset::sync_all(ctx, &mut wake);
    rollout::sync_all(ctx, &mut wake);
    replicaset::sync_all(ctx, &mut wake);
    wake
}
