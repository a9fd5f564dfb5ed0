//! What differs between the two apps/v1 kinds the double serves, for the generic
//! API handlers: defaults, validation, which changes bump `metadata.generation`
//! (a Deployment's spec or annotations, a ReplicaSet's spec: `PrepareForUpdate` in
//! pkg/registry/apps/{deployment,replicaset}/strategy.go), and the fields the
//! `scale` subresource reads and writes.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{defaults, validation};
use crate::kube_double::store::Object;

pub trait Workload: Object {
    fn apply_defaults(&mut self);
    /// Problems with the object; for an update, `old` is what it replaces.
    fn validate(&self, old: Option<&Self>) -> Vec<String>;
    /// Whether replacing `old` by `self` is a new generation.
    fn bumps_generation(&self, old: &Self) -> bool;
    /// A write of the main resource keeps the stored status.
    fn keep_status(&mut self, stored: &Self);
    /// A write of the `status` subresource keeps the stored spec and labels.
    fn keep_spec_and_labels(&mut self, stored: &Self);
    fn clear_status(&mut self);
    fn replicas(&self) -> i32;
    fn set_replicas(&mut self, replicas: i32);
    fn status_replicas(&self) -> i32;
    fn selector(&self) -> Option<&LabelSelector>;
}

impl Workload for Deployment {
    fn apply_defaults(&mut self) {
        defaults::deployment(self);
    }
    fn validate(&self, old: Option<&Self>) -> Vec<String> {
        let mut p = validation::deployment(self);
        if let (Some(new), Some(old)) = (self.selector(), old.and_then(|o| o.selector())) {
            p.extend(validation::immutable_selector(new, old));
        }
        p
    }
    fn bumps_generation(&self, old: &Self) -> bool {
        self.spec != old.spec || self.metadata.annotations != old.metadata.annotations
    }
    fn keep_status(&mut self, stored: &Self) {
        self.status = stored.status.clone();
    }
    fn keep_spec_and_labels(&mut self, stored: &Self) {
        self.spec = stored.spec.clone();
        self.metadata.labels = stored.metadata.labels.clone();
    }
    fn clear_status(&mut self) {
        self.status = None;
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
    fn status_replicas(&self) -> i32 {
        self.status.as_ref().and_then(|s| s.replicas).unwrap_or(0)
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.as_ref().map(|s| &s.selector)
    }
}

impl Workload for ReplicaSet {
    fn apply_defaults(&mut self) {
        defaults::replica_set(self);
    }
    fn validate(&self, old: Option<&Self>) -> Vec<String> {
        let mut p = validation::replica_set(self);
        if let (Some(new), Some(old)) = (self.selector(), old.and_then(|o| o.selector())) {
            p.extend(validation::immutable_selector(new, old));
        }
        p
    }
    fn bumps_generation(&self, old: &Self) -> bool {
        self.spec != old.spec
    }
    fn keep_status(&mut self, stored: &Self) {
        self.status = stored.status.clone();
    }
    fn keep_spec_and_labels(&mut self, stored: &Self) {
        self.spec = stored.spec.clone();
        self.metadata.labels = stored.metadata.labels.clone();
    }
    fn clear_status(&mut self) {
        self.status = None;
    }
    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }
    fn set_replicas(&mut self, replicas: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(replicas);
    }
    fn status_replicas(&self) -> i32 {
        self.status.as_ref().map_or(0, |s| s.replicas)
    }
    fn selector(&self) -> Option<&LabelSelector> {
        self.spec.as_ref().map(|s| &s.selector)
    }
}
