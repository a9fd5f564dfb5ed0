//! The deployment controller's sync of one Deployment (`syncDeployment` in
//! pkg/controller/deployment/deployment_controller.go and its rolling.go,
//! recreate.go): a Deployment being deleted only gets its status; a paused one,
//! or one whose replicas changed (a scaling event: an active ReplicaSet's
//! `desired-replicas` annotation differs), is scaled proportionally; otherwise it
//! rolls out. RollingUpdate scales the new ReplicaSet up within maxSurge, then old
//! ones down within maxUnavailable (unhealthy replicas first), one step per sync.
//! Recreate scales every old ReplicaSet to 0, waits until none of their pods is
//! left running (terminating ones included), then creates and scales up the new
//! one. Each sync ends by writing the Deployment's status (and revision
//! annotation) if it changed.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;

use super::util::{
    self, DESIRED_REPLICAS, MAX_REPLICAS, REVISION, annotation, desired, max_surge,
    max_unavailable, rs_available, rs_replicas, rs_status_replicas, set_rs_replicas, sum,
};
use super::{Wake, claims, controller_uid};
use crate::kube_double::pod_runtime::Ctx;

/// One Deployment's sync: a working copy of it (status and revision annotation
/// change here, written at the end) and the ReplicaSets it controls, oldest first.
pub(super) struct Sync<'a> {
    pub ctx: &'a Arc<Ctx>,
    pub d: Deployment,
    pub sets: Vec<ReplicaSet>,
    pub wake: &'a mut Wake,
}

pub fn sync_all(ctx: &Arc<Ctx>, wake: &mut Wake) {
    let (deployments, _) = ctx.store.list::<Deployment>(None);
    let (sets, _) = ctx.store.list::<ReplicaSet>(None);
    for d in deployments {
        let selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        let mut mine = claims::claim(ctx, "Deployment", &d.metadata, &selector, &sets, |_| true);
        mine.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        let stored = d.clone();
        let mut s = Sync {
            ctx,
            d,
            sets: mine,
            wake,
        };
        s.sync();
        s.write(&stored);
    }
}

impl Sync<'_> {
    pub fn ns(&self) -> String {
        self.d.metadata.namespace.clone().unwrap_or_default()
    }

    fn paused(&self) -> bool {
        self.d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }

    /// Indices of the ReplicaSets other than the new one.
    pub fn olds(&self, new: Option<usize>) -> Vec<usize> {
        (0..self.sets.len()).filter(|i| Some(*i) != new).collect()
    }

    /// Of `indices`, those with replicas (`FilterActiveReplicaSets`).
    pub fn active(&self, indices: &[usize]) -> Vec<usize> {
        indices
            .iter()
            .copied()
            .filter(|i| rs_replicas(&self.sets[*i]) > 0)
            .collect()
    }

    pub fn refs(&self, indices: &[usize]) -> Vec<&ReplicaSet> {
        indices.iter().map(|i| &self.sets[*i]).collect()
    }

    fn sync(&mut self) {
        if self.d.metadata.deletion_timestamp.is_some() {
            let new = self.get_all(false);
            self.d.status = Some(self.calculate_status(new));
            return;
        }
        self.check_paused_conditions();
        if self.paused() || self.is_scaling_event() {
            let new = self.get_all(false);
            self.scale(new);
            if let Some(new) = new {
                let olds = self.olds(Some(new));
                self.cleanup(&olds);
            }
            self.d.status = Some(self.calculate_status(new));
            return;
        }
        if util::is_rolling(&self.d) {
            self.rollout_rolling();
        } else {
            self.rollout_recreate();
        }
    }

    /// `checkPausedConditions`.
    fn check_paused_conditions(&mut self) {
        if !util::has_progress_deadline(&self.d) {
            return;
        }
        let paused = self.paused();
        let status = self.d.status.get_or_insert_with(Default::default);
        let reason = util::condition(status, "Progressing").and_then(|c| c.reason.clone());
        if reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return;
        }
        let paused_cond = reason.as_deref() == Some("DeploymentPaused");
        if paused && !paused_cond {
            let c = util::new_condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            );
            util::set_condition(status, c);
        } else if !paused && paused_cond {
            let c = util::new_condition(
                "Progressing",
                "Unknown",
                "DeploymentResumed",
                "Deployment is resumed".into(),
            );
            util::set_condition(status, c);
        }
    }

    /// `isScalingEvent`.
    fn is_scaling_event(&mut self) -> bool {
        let _ = self.get_all(false);
        let want = desired(&self.d).to_string();
        let all: Vec<usize> = (0..self.sets.len()).collect();
        self.active(&all).iter().any(|i| {
            annotation(&self.sets[*i].metadata.annotations, DESIRED_REPLICAS)
                .is_some_and(|d| d != want)
        })
    }

    fn rollout_rolling(&mut self) {
        let Some(new) = self.get_all(true) else {
            return;
        };
        if self.reconcile_new(new) || self.reconcile_olds(new) {
            return self.sync_rollout_status(Some(new));
        }
        let status = self.d.status.clone().unwrap_or_default();
        if self.complete(&status) {
            let olds = self.olds(Some(new));
            self.cleanup(&olds);
        }
        self.sync_rollout_status(Some(new));
    }

    /// `reconcileNewReplicaSet`.
    fn reconcile_new(&mut self, new: usize) -> bool {
        let want = desired(&self.d);
        let have = rs_replicas(&self.sets[new]);
        if have == want {
            return false;
        }
        if have > want {
            return self.scale_and_record(new, want);
        }
        let all: Vec<usize> = (0..self.sets.len()).collect();
        let count = self.new_rs_replicas(&self.refs(&all), &self.sets[new]);
        self.scale_and_record(new, count)
    }

    /// `NewRSNewReplicas`.
    pub fn new_rs_replicas(&self, all: &[&ReplicaSet], new: &ReplicaSet) -> i32 {
        let want = desired(&self.d);
        if !util::is_rolling(&self.d) {
            return want;
        }
        let surge = util::scaled(
            self.d
                .spec
                .as_ref()
                .and_then(|s| s.strategy.as_ref())
                .and_then(|s| s.rolling_update.as_ref())
                .and_then(|r| r.max_surge.as_ref()),
            want,
            true,
        );
        let current = sum(all, rs_replicas);
        let max_total = want + surge;
        if current >= max_total {
            return rs_replicas(new);
        }
        let up = (max_total - current).min(want - rs_replicas(new));
        rs_replicas(new) + up
    }

    /// `reconcileOldReplicaSets`.
    fn reconcile_olds(&mut self, new: usize) -> bool {
        let olds = self.active(&self.olds(Some(new)));
        let old_count = sum(&self.refs(&olds), rs_replicas);
        if old_count == 0 {
            return false;
        }
        let all: Vec<usize> = (0..self.sets.len()).collect();
        let all_count = sum(&self.refs(&all), rs_replicas);
        let min_available = desired(&self.d) - max_unavailable(&self.d);
        let new_unavailable = rs_replicas(&self.sets[new]) - rs_available(&self.sets[new]);
        let max_scaled_down = all_count - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return false;
        }
        // Unhealthy replicas first: removing them costs no availability.
        let mut cleaned = 0;
        for &i in &olds {
            if cleaned >= max_scaled_down {
                break;
            }
            let (spec, avail) = (rs_replicas(&self.sets[i]), rs_available(&self.sets[i]));
            if spec == 0 || spec == avail {
                continue;
            }
            let down = (max_scaled_down - cleaned).min(spec - avail);
            self.scale_and_record(i, spec - down);
            cleaned += down;
        }
        // Then within maxUnavailable.
        let available = sum(&self.refs(&all), rs_available);
        let mut scaled = 0;
        if available > min_available {
            let total = available - min_available;
            for &i in &olds {
                if scaled >= total {
                    break;
                }
                let spec = rs_replicas(&self.sets[i]);
                if spec == 0 {
                    continue;
                }
                let down = spec.min(total - scaled);
                self.scale_and_record(i, spec - down);
                scaled += down;
            }
        }
        cleaned + scaled > 0
    }

    fn rollout_recreate(&mut self) {
        let new = self.get_all(false);
        let olds = self.olds(new);
        let mut scaled_down = false;
        for i in self.active(&olds) {
            scaled_down |= self.scale_and_record(i, 0);
        }
        if scaled_down || self.old_pods_running(&olds) {
            return self.sync_rollout_status(new);
        }
        let new = match new.or_else(|| self.get_all(true)) {
            Some(i) => i,
            None => return,
        };
        self.scale_and_record(new, desired(&self.d));
        let status = self.d.status.clone().unwrap_or_default();
        if self.complete(&status) {
            let olds = self.olds(Some(new));
            self.cleanup(&olds);
        }
        self.sync_rollout_status(Some(new));
    }

    /// `oldPodsRunning`: old ReplicaSets still have pods, terminating ones included.
    fn old_pods_running(&self, olds: &[usize]) -> bool {
        if sum(&self.refs(olds), rs_status_replicas) > 0 {
            return true;
        }
        let uids: Vec<&str> = olds
            .iter()
            .filter_map(|i| self.sets[*i].metadata.uid.as_deref())
            .collect();
        let (pods, _) = self.ctx.store.list::<Pod>(Some(&self.ns()));
        pods.iter().any(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            controller_uid(&p.metadata).is_some_and(|u| uids.contains(&u))
                && !matches!(phase, Some("Succeeded" | "Failed"))
        })
    }

    /// `scaleReplicaSetAndRecordEvent`: only a change of size is written.
    pub fn scale_and_record(&mut self, i: usize, n: i32) -> bool {
        if rs_replicas(&self.sets[i]) == n {
            return false;
        }
        self.scale_rs(i, n)
    }

    /// `scaleReplicaSet`: size and the desired/max replicas annotations; true when
    /// the size changed.
    pub fn scale_rs(&mut self, i: usize, n: i32) -> bool {
        let size_changes = rs_replicas(&self.sets[i]) != n;
        let want = desired(&self.d);
        let max = want + max_surge(&self.d);
        let mut next = self.sets[i].clone();
        set_rs_replicas(&mut next, n);
        let annotations = next
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        annotations.insert(DESIRED_REPLICAS.into(), want.to_string());
        annotations.insert(MAX_REPLICAS.into(), max.to_string());
        if next == self.sets[i] {
            return false;
        }
        self.write_rs(i, next);
        size_changes
    }

    /// Writes a ReplicaSet's spec and annotations, bumping its generation when the
    /// spec changes, as an update through the API would.
    pub fn write_rs(&mut self, i: usize, next: ReplicaSet) {
        let ns = self.ns();
        let name = next.metadata.name.clone().unwrap_or_default();
        let stored = self.ctx.store.update::<ReplicaSet>(&ns, &name, |rs| {
            if rs.spec != next.spec {
                rs.metadata.generation = Some(rs.metadata.generation.unwrap_or(1) + 1);
            }
            rs.spec = next.spec;
            rs.metadata.annotations = next.metadata.annotations;
        });
        if let Some(rs) = stored {
            self.sets[i] = rs;
        }
    }

    /// Stores the Deployment's new status and revision annotation, if changed.
    fn write(&self, stored: &Deployment) {
        let revision = annotation(&self.d.metadata.annotations, REVISION).map(str::to_owned);
        if self.d.status == stored.status
            && revision.as_deref() == annotation(&stored.metadata.annotations, REVISION)
        {
            return;
        }
        let ns = self.ns();
        let name = self.d.metadata.name.clone().unwrap_or_default();
        let status = self.d.status.clone();
        self.ctx.store.update::<Deployment>(&ns, &name, |d| {
            d.status = status;
            if let Some(r) = revision {
                d.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(REVISION.into(), r);
            }
        });
    }
}
