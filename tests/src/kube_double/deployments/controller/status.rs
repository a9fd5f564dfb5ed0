//! A Deployment's status as the deployment controller computes it
//! (`calculateStatus` in pkg/controller/deployment/sync.go, `syncRolloutStatus` in
//! progress.go): counts summed over its ReplicaSets (`replicas`, `readyReplicas`,
//! `availableReplicas` from their status; `updatedReplicas` the new one's;
//! `unavailableReplicas` = their desired total − available, at least 0; zeros
//! omitted as Go's `omitempty` omits them), `observedGeneration`, and the
//! conditions: `Available` (True `MinimumReplicasAvailable` once available ≥
//! replicas − maxUnavailable, else False `MinimumReplicasUnavailable`) and, with a
//! progress deadline, `Progressing`: True `NewReplicaSetAvailable` when complete
//! (updated = total = available = replicas, generation observed), True
//! `ReplicaSetUpdated` with a new `lastUpdateTime` whenever progress is seen (more
//! updated, fewer old, more ready or available), False `ProgressDeadlineExceeded`
//! once `progressDeadlineSeconds` pass without progress; a ReplicaSet's
//! `ReplicaFailure` is copied over.

use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};
use k8s_openapi::jiff::SignedDuration;

use super::rollout::Sync;
use super::util::{
    self, desired, max_unavailable, rs_available, rs_ready, rs_replicas, rs_status_replicas, sum,
};

fn nz(n: i32) -> Option<i32> {
    (n != 0).then_some(n)
}

fn n(v: Option<i32>) -> i32 {
    v.unwrap_or(0)
}

impl Sync<'_> {
    pub fn calculate_status(&self, new: Option<usize>) -> DeploymentStatus {
        let all = self.refs(&(0..self.sets.len()).collect::<Vec<_>>());
        let available = sum(&all, rs_available);
        let total = sum(&all, rs_replicas);
        let old = self.d.status.clone().unwrap_or_default();
        let mut status = DeploymentStatus {
            observed_generation: self.d.metadata.generation,
            replicas: nz(sum(&all, rs_status_replicas)),
            updated_replicas: nz(new.map_or(0, |i| rs_status_replicas(&self.sets[i]))),
            ready_replicas: nz(sum(&all, rs_ready)),
            available_replicas: nz(available),
            unavailable_replicas: nz((total - available).max(0)),
            collision_count: old.collision_count,
            conditions: old.conditions,
            terminating_replicas: None,
        };
        let c = if available >= desired(&self.d) - max_unavailable(&self.d) {
            util::new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            )
        } else {
            util::new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            )
        };
        util::set_condition(&mut status, c);
        status
    }

    /// `DeploymentComplete`.
    pub fn complete(&self, s: &DeploymentStatus) -> bool {
        let want = desired(&self.d);
        n(s.updated_replicas) == want
            && n(s.replicas) == want
            && n(s.available_replicas) == want
            && s.observed_generation.unwrap_or(0) >= self.d.metadata.generation.unwrap_or(0)
    }

    /// `DeploymentProgressing`: the new status shows progress over the stored one.
    fn progressing(&self, new: &DeploymentStatus) -> bool {
        let old = self.d.status.clone().unwrap_or_default();
        let old_olds = n(old.replicas) - n(old.updated_replicas);
        let new_olds = n(new.replicas) - n(new.updated_replicas);
        n(new.updated_replicas) > n(old.updated_replicas)
            || new_olds < old_olds
            || n(new.ready_replicas) > n(old.ready_replicas)
            || n(new.available_replicas) > n(old.available_replicas)
    }

    fn deadline(&self) -> SignedDuration {
        let secs = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.progress_deadline_seconds)
            .unwrap_or(600);
        SignedDuration::from_secs(i64::from(secs))
    }

    /// `DeploymentTimedOut`.
    fn timed_out(&self, s: &DeploymentStatus) -> bool {
        let Some(c) = util::condition(s, "Progressing") else {
            return false;
        };
        match c.reason.as_deref() {
            Some("NewReplicaSetAvailable") => false,
            Some("ProgressDeadlineExceeded") => true,
            _ => c
                .last_update_time
                .as_ref()
                .is_some_and(|t| t.0 + self.deadline() < k8s_openapi::jiff::Timestamp::now()),
        }
    }

    pub fn sync_rollout_status(&mut self, new: Option<usize>) {
        let mut status = self.calculate_status(new);
        let deadline = util::has_progress_deadline(&self.d);
        if !deadline {
            util::remove_condition(&mut status, "Progressing");
        }
        let stored = self.d.status.clone().unwrap_or_default();
        let current = util::condition(&stored, "Progressing").cloned();
        let rs_name = new.and_then(|i| self.sets[i].metadata.name.clone());
        let message = |what: &str| match &rs_name {
            Some(rs) => format!("ReplicaSet {rs:?} {what}."),
            None => format!(
                "Deployment {:?} {what}.",
                self.d.metadata.name.as_deref().unwrap_or_default()
            ),
        };
        let complete_before = n(status.replicas) == n(status.updated_replicas)
            && current
                .as_ref()
                .is_some_and(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
        if deadline && !complete_before {
            if self.complete(&status) {
                let c = util::new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    message("has successfully progressed"),
                );
                util::set_condition(&mut status, c);
            } else if self.progressing(&status) {
                let mut c = util::new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    message("is progressing"),
                );
                // Only lastUpdateTime moves while it progresses.
                if let Some(cur) = &current {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    util::remove_condition(&mut status, "Progressing");
                }
                util::set_condition(&mut status, c);
            } else if self.timed_out(&status) {
                let c = util::new_condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    message("has timed out progressing"),
                );
                util::set_condition(&mut status, c);
            }
        }
        match self.replica_failure(new) {
            Some(c) => util::set_condition(&mut status, c),
            None => util::remove_condition(&mut status, "ReplicaFailure"),
        }
        self.requeue_stuck(&status, current.as_ref());
        self.d.status = Some(status);
    }

    /// `requeueStuckDeployment`: a pass when the deadline would pass.
    fn requeue_stuck(&mut self, status: &DeploymentStatus, current: Option<&DeploymentCondition>) {
        let Some(c) = current else { return };
        if !util::has_progress_deadline(&self.d)
            || self.complete(status)
            || c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        {
            return;
        }
        if let Some(t) = &c.last_update_time {
            self.wake
                .at(t.0 + self.deadline() + SignedDuration::from_millis(10));
        }
    }

    /// `getReplicaFailures`: the new ReplicaSet's, else any.
    fn replica_failure(&self, new: Option<usize>) -> Option<DeploymentCondition> {
        let failure = |i: usize| {
            self.sets[i]
                .status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "ReplicaFailure")
                .cloned()
        };
        let c = new
            .and_then(failure)
            .or_else(|| (0..self.sets.len()).find_map(failure))?;
        Some(DeploymentCondition {
            type_: c.type_,
            status: c.status,
            reason: c.reason,
            message: c.message,
            last_update_time: c.last_transition_time.clone(),
            last_transition_time: c.last_transition_time,
        })
    }
}
