//! apps/v1 Deployments and ReplicaSets in the double: the API (`api`, `deletion`,
//! `scale`, with `write` for the generic update, `patch` for PATCH bodies, `defaults` and `validation` for what is
//! stored, `workload` for what differs between the two kinds, `errors` for the
//! group's error wording, `label_selector` for `spec.selector`) and the
//! controllers a cluster would run for them (`controller`: deployment, ReplicaSet,
//! garbage collection), whose pods run on Docker like any other.
//!
//! Checked against upstream Kubernetes (kubernetes/kubernetes): the registry
//! strategies pkg/registry/apps/{deployment,replicaset}/strategy.go, defaults
//! pkg/apis/apps/v1/defaults.go, validation pkg/apis/apps/validation/validation.go,
//! the deployment controller pkg/controller/deployment/{sync,rolling,recreate,
//! progress}.go and util/deployment_util.go, the ReplicaSet controller
//! pkg/controller/replicaset and pkg/controller/controller_utils.go; each module
//! names what it follows and where it departs.

mod api;
mod controller;
mod defaults;
mod deletion;
mod errors;
mod label_selector;
mod patch;
mod scale;
mod validation;
mod workload;
mod write;

pub use api::router;
pub use controller::spawn as spawn_controllers;
