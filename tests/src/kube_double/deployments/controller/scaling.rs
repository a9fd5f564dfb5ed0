//! Scaling a Deployment without rolling it (`scale` and `cleanupDeployment` in
//! pkg/controller/deployment/sync.go): with one active ReplicaSet (or none: the
//! newest) that one takes all replicas; a saturated new ReplicaSet leaves the old
//! ones at 0; otherwise, for RollingUpdate, the replicas to add or remove (up to
//! replicas + maxSurge) are spread over the active ReplicaSets in proportion to
//! their size against their `max-replicas` annotation, the largest first (newer
//! first when growing, older first when shrinking), leftovers to the first.
//! Old ReplicaSets beyond `revisionHistoryLimit` are deleted once they have no
//! replicas, lowest revision first.

use super::rollout::Sync;
use super::util::{
    DESIRED_REPLICAS, MAX_REPLICAS, annotation, desired, max_surge, revision, rs_replicas,
    rs_status_replicas,
};
use crate::kube_double::deployments::deletion;
use k8s_openapi::api::apps::v1::ReplicaSet;

impl Sync<'_> {
    fn created(&self, i: usize) -> (Option<k8s_openapi::jiff::Timestamp>, Option<String>) {
        let m = &self.sets[i].metadata;
        (m.creation_timestamp.as_ref().map(|t| t.0), m.name.clone())
    }

    /// `FindActiveOrLatest`.
    fn active_or_latest(&self, new: Option<usize>, olds: &[usize]) -> Option<usize> {
        if new.is_none() && olds.is_empty() {
            return None;
        }
        let mut newest_first = olds.to_vec();
        newest_first.sort_by_key(|i| std::cmp::Reverse(self.created(*i)));
        let mut all = newest_first.clone();
        all.extend(new);
        let active = self.active(&all);
        match active.len() {
            0 => new.or_else(|| newest_first.first().copied()),
            1 => Some(active[0]),
            _ => None,
        }
    }

    /// `IsSaturated`.
    fn saturated(&self, new: Option<usize>) -> bool {
        let Some(i) = new else { return false };
        let want = desired(&self.d);
        let rs = &self.sets[i];
        rs_replicas(rs) == want
            && annotation(&rs.metadata.annotations, DESIRED_REPLICAS)
                .and_then(|d| d.parse::<i32>().ok())
                == Some(want)
    }

    /// `getReplicaSetFraction`.
    fn fraction(&self, rs: &ReplicaSet) -> i32 {
        let want = desired(&self.d);
        if want == 0 {
            return -rs_replicas(rs);
        }
        let max = want + max_surge(&self.d);
        let before = annotation(&rs.metadata.annotations, MAX_REPLICAS)
            .and_then(|m| m.parse::<i32>().ok())
            .filter(|m| *m != 0)
            .or_else(|| {
                self.d
                    .status
                    .as_ref()
                    .and_then(|s| s.replicas)
                    .filter(|r| *r != 0)
            });
        let Some(before) = before else { return 0 };
        let size = f64::from(rs_replicas(rs) * max) / f64::from(before);
        size.round() as i32 - rs_replicas(rs)
    }

    /// `GetReplicaSetProportion`.
    fn proportion(&self, rs: &ReplicaSet, to_add: i32, added: i32) -> i32 {
        if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
            return 0;
        }
        let fraction = self.fraction(rs);
        let allowed = to_add - added;
        if to_add > 0 {
            fraction.min(allowed)
        } else {
            fraction.max(allowed)
        }
    }

    pub fn scale(&mut self, new: Option<usize>) {
        let olds = self.olds(new);
        let want = desired(&self.d);
        if let Some(i) = self.active_or_latest(new, &olds) {
            if rs_replicas(&self.sets[i]) != want {
                self.scale_and_record(i, want);
            }
            return;
        }
        if self.saturated(new) {
            for i in self.active(&olds) {
                self.scale_and_record(i, 0);
            }
            return;
        }
        if !super::util::is_rolling(&self.d) {
            return;
        }
        let mut all = olds.clone();
        all.extend(new);
        let mut active = self.active(&all);
        let total: i32 = active.iter().map(|i| rs_replicas(&self.sets[*i])).sum();
        let allowed = if want > 0 {
            want + max_surge(&self.d)
        } else {
            0
        };
        let to_add = allowed - total;
        // Largest first; among equals, newer first when growing, older when shrinking.
        active.sort_by(|a, b| {
            let size = rs_replicas(&self.sets[*b]).cmp(&rs_replicas(&self.sets[*a]));
            let age = self.created(*a).cmp(&self.created(*b));
            size.then(if to_add > 0 { age.reverse() } else { age })
        });
        let mut added = 0;
        let mut sizes: Vec<(usize, i32)> = Vec::new();
        for &i in &active {
            let rs = &self.sets[i];
            let p = if to_add != 0 {
                self.proportion(rs, to_add, added)
            } else {
                0
            };
            added += p;
            sizes.push((i, rs_replicas(rs) + p));
        }
        for (k, (i, mut size)) in sizes.into_iter().enumerate() {
            if k == 0 && to_add != 0 {
                size = (size + to_add - added).max(0);
            }
            self.scale_rs(i, size);
        }
    }

    /// `cleanupDeployment`.
    pub fn cleanup(&mut self, olds: &[usize]) {
        let limit = self
            .d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10);
        let mut cleanable: Vec<usize> = olds
            .iter()
            .copied()
            .filter(|i| self.sets[*i].metadata.deletion_timestamp.is_none())
            .collect();
        let diff = cleanable.len() as i64 - i64::from(limit);
        if diff <= 0 {
            return;
        }
        cleanable.sort_by_key(|i| (revision(&self.sets[*i]), self.created(*i)));
        let ns = self.ns();
        for &i in cleanable.iter().take(diff as usize) {
            let rs = &self.sets[i];
            let observed = rs.status.as_ref().and_then(|s| s.observed_generation);
            if rs_status_replicas(rs) != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation > observed
            {
                continue;
            }
            let name = rs.metadata.name.clone().unwrap_or_default();
            let _ = deletion::delete_object::<ReplicaSet>(self.ctx, &ns, &name, None);
        }
    }
}
