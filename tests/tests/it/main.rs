//! The integration tests of the `tests` crate, one binary: one link of `server`,
//! `runner` and the kube double instead of one per file.

mod deploy_manifests;
mod examples;
mod kube_backend;
mod kube_conformance;
mod kube_double;
mod kube_image;
mod kube_objects;
mod kube_runner;
mod kube_support;
mod purity;
mod validate_agrees;

/// The server harness of `server/tests`, shared by path.
#[path = "../../../server/tests/support_server/mod.rs"]
mod support_server;
