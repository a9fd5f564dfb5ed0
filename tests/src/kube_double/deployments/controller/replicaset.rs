//! The ReplicaSet controller (pkg/controller/replicaset/replica_set.go): each
//! ReplicaSet keeps `spec.replicas` active pods (not terminating, not Succeeded or
//! Failed) of those it controls — creating them from its template (`generateName`
//! `<rs>-`, its labels and annotations, an owner reference with `controller` and
//! `blockOwnerDeletion`), or deleting the least valuable first as
//! `ActivePodsWithRanks` orders them (pkg/controller/controller_utils.go):
//! unscheduled, then Pending < Unknown < Running, not ready, lower
//! `controller.kubernetes.io/pod-deletion-cost`, ready for less time
//! (logarithmic buckets, as with LogarithmicScaleDown), more restarts, newer.
//! Its status: `replicas`, `fullyLabeledReplicas`, `readyReplicas`,
//! `availableReplicas` (Ready for `minReadySeconds`, `podutil.IsPodAvailable`),
//! `observedGeneration`, and a `ReplicaFailure` condition when a pod cannot be
//! created. The status counts the pods after this sync's creations and deletions
//! (upstream counts them before and catches up on the next sync). Which pods it
//! controls is `claims`: matching orphans are adopted, relabelled ones released.

use std::cmp::Ordering;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::{Wake, claims, owner_ref};
use crate::kube_double::pod_runtime::Ctx;
use crate::kube_double::routes::{self, DeleteOpts};
use crate::kube_double::store::now;

const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

pub fn is_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// When the pod's Ready condition became True, if it is.
pub fn ready_since(p: &Pod) -> Option<Timestamp> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (c.status == "True").then(|| {
        c.last_transition_time
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
    })
}

/// Available: Ready for `min_ready` seconds; else when it will be, to wake then.
fn available(p: &Pod, min_ready: i64, now: Timestamp, wake: &mut Wake) -> bool {
    let Some(since) = ready_since(p) else {
        return false;
    };
    if min_ready <= 0 {
        return true;
    }
    let at = since + SignedDuration::from_secs(min_ready);
    if at < now {
        return true;
    }
    wake.at(at + SignedDuration::from_millis(10));
    false
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0)
}

/// `floor(log2(age in ns))`, the bucket LogarithmicScaleDown compares.
fn log_rank(t: Timestamp, now: Timestamp) -> i64 {
    let ns = now.duration_since(t).as_nanos();
    if ns <= 0 {
        -1
    } else {
        (ns as f64).log2().floor() as i64
    }
}

/// `ActivePodsWithRanks.Less`: `Less` is deleted first.
fn deletion_order(a: &Pod, b: &Pod, now: Timestamp) -> Ordering {
    let node = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default()
    };
    let phase = |p: &Pod| match p.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 0,
    };
    let cost = |p: &Pod| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELETION_COST))
            .and_then(|c| c.parse::<i32>().ok())
            .unwrap_or(0)
    };
    let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let (na, nb) = (node(a), node(b));
    if na != nb && (na.is_empty() || nb.is_empty()) {
        return if na.is_empty() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let by_phase = phase(a).cmp(&phase(b));
    if by_phase != Ordering::Equal {
        return by_phase;
    }
    let (ra, rb) = (ready_since(a), ready_since(b));
    if ra.is_some() != rb.is_some() {
        return if ra.is_none() {
            Ordering::Less
        } else {
            Ordering::Greater
        };
    }
    let by_cost = cost(a).cmp(&cost(b));
    if by_cost != Ordering::Equal {
        return by_cost;
    }
    if let (Some(ra), Some(rb)) = (ra, rb) {
        // Ready more recently (a smaller age bucket) first.
        let by_ready = log_rank(ra, now).cmp(&log_rank(rb, now));
        if by_ready != Ordering::Equal {
            return by_ready;
        }
    }
    let by_restarts = restarts(b).cmp(&restarts(a));
    if by_restarts != Ordering::Equal {
        return by_restarts;
    }
    match (created(a), created(b)) {
        (Some(ca), Some(cb)) => log_rank(ca, now).cmp(&log_rank(cb, now)),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// A pod for the ReplicaSet, from its template.
fn pod_for(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let rs_name = rs.metadata.name.clone().unwrap_or_default();
    // The name generator keeps 5 characters for its suffix within 63.
    let prefix: String = format!("{rs_name}-").chars().take(58).collect();
    let t = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            labels: t.labels,
            annotations: t.annotations,
            finalizers: t.finalizers,
            owner_references: Some(vec![owner_ref("ReplicaSet", &rs.metadata)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Syncs every ReplicaSet; those with pods to delete first, so that a rolling
/// update never has more pods than its ReplicaSets ask for together.
pub fn sync_all(ctx: &Arc<Ctx>, wake: &mut Wake) {
    let (sets, _) = ctx.store.list::<ReplicaSet>(None);
    let (pods, _) = ctx.store.list::<Pod>(None);
    let mut work: Vec<(ReplicaSet, Vec<Pod>)> = sets
        .into_iter()
        .map(|rs| {
            let selector = rs
                .spec
                .as_ref()
                .map(|s| s.selector.clone())
                .unwrap_or_default();
            let mine = claims::claim(ctx, "ReplicaSet", &rs.metadata, &selector, &pods, is_active);
            (rs, mine)
        })
        .collect();
    let surplus = |(rs, pods): &(ReplicaSet, Vec<Pod>)| {
        pods.iter().filter(|p| is_active(p)).count() as i32 - super::util::rs_replicas(rs)
    };
    work.sort_by_key(|w| std::cmp::Reverse(surplus(w)));
    for (rs, pods) in work {
        sync_one(ctx, &rs, pods, wake);
    }
}

fn sync_one(ctx: &Arc<Ctx>, rs: &ReplicaSet, owned: Vec<Pod>, wake: &mut Wake) {
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let name = rs.metadata.name.clone().unwrap_or_default();
    let now_ts = Timestamp::now();
    let mut active: Vec<Pod> = owned.into_iter().filter(is_active).collect();
    let want = super::util::rs_replicas(rs).max(0) as usize;
    let mut failure: Option<String> = None;
    if rs.metadata.deletion_timestamp.is_none() {
        if active.len() < want {
            for _ in active.len()..want {
                match routes::admit_pod(ctx, &ns, pod_for(rs)) {
                    Ok(p) => active.push(p),
                    Err(e) => {
                        failure = Some(e.message);
                        break;
                    }
                }
            }
        } else if active.len() > want {
            active.sort_by(|a, b| deletion_order(a, b, now_ts));
            let surplus = active.len() - want;
            for p in active.drain(..surplus) {
                let pod = p.metadata.name.clone().unwrap_or_default();
                let opts = DeleteOpts {
                    grace: None,
                    orphan: false,
                };
                let _ = routes::begin_pod_deletion(ctx, &ns, &pod, &opts);
            }
        }
    }
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let selector_labels = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| active.iter().filter(|p| f(p)).count() as i32;
    let labeled = count(&|p| {
        selector_labels
            .iter()
            .all(|(k, v)| p.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v))
    });
    let ready = count(&|p| ready_since(p).is_some());
    let mut avail_wake = Wake::default();
    let available = active
        .iter()
        .filter(|p| available(p, i64::from(min_ready), now_ts, &mut avail_wake))
        .count() as i32;
    wake.merge(avail_wake);
    let nz = |n: i32| (n != 0).then_some(n);
    let previous = rs.status.clone().unwrap_or_default();
    let conditions = match failure {
        Some(message) => {
            let since = previous
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")
                .and_then(|c| c.last_transition_time.clone());
            Some(vec![ReplicaSetCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some("FailedCreate".into()),
                message: Some(message),
                last_transition_time: since.or_else(|| Some(now())),
            }])
        }
        None => None,
    };
    let status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: nz(labeled),
        ready_replicas: nz(ready),
        available_replicas: nz(available),
        observed_generation: rs.metadata.generation,
        conditions,
        terminating_replicas: None,
    };
    ctx.store
        .update::<ReplicaSet>(&ns, &name, |r| r.status = Some(status));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, phase: &str, ready_secs_ago: Option<i64>, created_secs_ago: i64) -> Pod {
        let now = Timestamp::now();
        let ago = |s: i64| (now - SignedDuration::from_secs(s)).to_string();
        let conditions = match ready_secs_ago {
            Some(s) => json!([{"type": "Ready", "status": "True", "lastTransitionTime": ago(s)}]),
            None => json!([{"type": "Ready", "status": "False"}]),
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "creationTimestamp": ago(created_secs_ago)},
            "spec": {"nodeName": "n", "containers": []},
            "status": {"phase": phase, "conditions": conditions}
        }))
        .unwrap()
    }

    #[test]
    fn unready_and_young_pods_go_first() {
        let now = Timestamp::now();
        let mut pods = [
            pod("old-ready", "Running", Some(4000), 4000),
            pod("pending", "Pending", None, 10),
            pod("unready", "Running", None, 5000),
            pod("young-ready", "Running", Some(2), 3),
        ];
        pods.sort_by(|a, b| deletion_order(a, b, now));
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["pending", "unready", "young-ready", "old-ready"]);
    }
}
