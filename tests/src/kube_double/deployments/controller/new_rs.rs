//! Finding or creating a Deployment's new ReplicaSet and keeping revisions
//! (`getAllReplicaSetsAndSyncRevision`, `getNewReplicaSet` in
//! pkg/controller/deployment/sync.go; `SetNewReplicaSetAnnotations` in its util).
//! The new ReplicaSet is the oldest whose template equals the Deployment's but for
//! `pod-template-hash`; its revision is one above every old one's
//! (`deployment.kubernetes.io/revision`, earlier ones kept in `revision-history`
//! when a rollback reuses it), the Deployment's annotations but the controller's
//! own are copied onto it, and the Deployment's revision annotation follows it. A
//! created one is named `<deployment>-<pod-template-hash>`, labelled and selected
//! by that hash, owned by the Deployment; a name taken by a ReplicaSet that is not
//! this one bumps `status.collisionCount` (the next hash differs).

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::hash;
use super::rollout::Sync;
use super::util::{
    self, DESIRED_REPLICAS, HASH_LABEL, MAX_REPLICAS, NOT_COPIED, REVISION, REVISION_HISTORY,
    annotation, desired, max_surge, revision, rs_template,
};
use super::{controller_uid, owner_ref};

impl Sync<'_> {
    fn template(&self) -> k8s_openapi::api::core::v1::PodTemplateSpec {
        self.d
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default()
    }

    fn min_ready(&self) -> Option<i32> {
        self.d.spec.as_ref().and_then(|s| s.min_ready_seconds)
    }

    /// The new ReplicaSet's index, created when `create` and missing.
    pub fn get_all(&mut self, create: bool) -> Option<usize> {
        let template = self.template();
        let new = self
            .sets
            .iter()
            .position(|rs| util::equal_ignore_hash(&rs_template(rs), &template));
        let max_old = self
            .olds(new)
            .iter()
            .map(|i| revision(&self.sets[*i]))
            .max()
            .unwrap_or(0);
        let new_revision = max_old + 1;
        if let Some(i) = new {
            let mut rs = self.sets[i].clone();
            let changed = self.set_new_rs_annotations(&mut rs, new_revision, true);
            let min_ready = rs.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if changed || min_ready != self.min_ready() {
                rs.spec
                    .get_or_insert_with(Default::default)
                    .min_ready_seconds = self.min_ready();
                self.write_rs(i, rs);
                return Some(i);
            }
            if let Some(r) = annotation(&rs.metadata.annotations, REVISION) {
                self.set_revision(r.to_owned());
            }
            let deadline = util::has_progress_deadline(&self.d);
            let status = self.d.status.get_or_insert_with(Default::default);
            if deadline && util::condition(status, "Progressing").is_none() {
                let name = rs.metadata.name.clone().unwrap_or_default();
                let c = util::new_condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    format!("Found new replica set {name:?}"),
                );
                util::set_condition(status, c);
            }
            return Some(i);
        }
        if !create {
            return None;
        }
        self.create_new(template, new_revision)
    }

    fn set_revision(&mut self, r: String) {
        self.d
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION.into(), r);
    }

    fn create_new(
        &mut self,
        mut template: k8s_openapi::api::core::v1::PodTemplateSpec,
        new_revision: i64,
    ) -> Option<usize> {
        let collisions = self.d.status.as_ref().and_then(|s| s.collision_count);
        let h = hash::compute(&template, collisions);
        let meta = template.metadata.get_or_insert_with(Default::default);
        meta.labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), h.clone());
        let labels = meta.labels.clone();
        let mut selector = self
            .d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(HASH_LABEL.into(), h.clone());
        let name = format!(
            "{}-{h}",
            self.d.metadata.name.as_deref().unwrap_or_default()
        );
        let mut rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.ns()),
                owner_references: Some(vec![owner_ref("Deployment", &self.d.metadata)]),
                labels,
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: self.min_ready(),
                selector,
                template: Some(template.clone()),
            }),
            status: None,
        };
        let mut all: Vec<&ReplicaSet> = self.sets.iter().collect();
        all.push(&rs);
        let replicas = self.new_rs_replicas(&all, &rs);
        util::set_rs_replicas(&mut rs, replicas);
        self.set_new_rs_annotations(&mut rs, new_revision, false);
        let deadline = util::has_progress_deadline(&self.d);
        match self.ctx.store.create(&self.ns(), rs) {
            Ok(created) => {
                self.sets.push(created);
                self.set_revision(new_revision.to_string());
                if deadline {
                    let c = util::new_condition(
                        "Progressing",
                        "True",
                        "NewReplicaSetCreated",
                        format!("Created new replica set {name:?}"),
                    );
                    util::set_condition(self.d.status.get_or_insert_with(Default::default), c);
                }
                Some(self.sets.len() - 1)
            }
            Err(e) if e.reason == "AlreadyExists" => {
                let existing = self.ctx.store.get::<ReplicaSet>(&self.ns(), &name)?;
                let ours = controller_uid(&existing.metadata) == self.d.metadata.uid.as_deref()
                    && util::equal_ignore_hash(&rs_template(&existing), &template);
                if ours {
                    self.sets.push(existing);
                    return Some(self.sets.len() - 1);
                }
                let status = self.d.status.get_or_insert_with(Default::default);
                status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                None
            }
            Err(e) => {
                if deadline {
                    let c = util::new_condition(
                        "Progressing",
                        "False",
                        "ReplicaSetCreateError",
                        format!("Failed to create new replica set {name:?}: {}", e.message),
                    );
                    util::set_condition(self.d.status.get_or_insert_with(Default::default), c);
                }
                None
            }
        }
    }

    /// `SetNewReplicaSetAnnotations`: true when `rs`'s annotations changed.
    fn set_new_rs_annotations(&self, rs: &mut ReplicaSet, new_revision: i64, exists: bool) -> bool {
        let mut changed = false;
        let annotations = rs.metadata.annotations.get_or_insert_with(Default::default);
        for (k, v) in self.d.metadata.annotations.iter().flatten() {
            if NOT_COPIED.contains(&k.as_str()) || annotations.get(k) == Some(v) {
                continue;
            }
            annotations.insert(k.clone(), v.clone());
            changed = true;
        }
        let old = annotations.get(REVISION).cloned();
        let old_n = match old.as_deref() {
            None | Some("") => 0,
            Some(o) => match o.parse::<i64>() {
                Ok(n) => n,
                Err(_) => return false,
            },
        };
        if old_n < new_revision {
            annotations.insert(REVISION.into(), new_revision.to_string());
            changed = true;
            if let Some(old) = old {
                let history = match annotations.get(REVISION_HISTORY) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old,
                };
                annotations.insert(REVISION_HISTORY.into(), history);
            }
        }
        if !exists {
            let want = desired(&self.d);
            for (k, v) in [
                (DESIRED_REPLICAS, want),
                (MAX_REPLICAS, want + max_surge(&self.d)),
            ] {
                if annotations.get(k).map(String::as_str) != Some(v.to_string().as_str()) {
                    annotations.insert(k.into(), v.to_string());
                    changed = true;
                }
            }
        }
        changed
    }
}
