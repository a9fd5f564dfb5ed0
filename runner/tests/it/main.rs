//! The runner's integration tests, one binary (one link instead of one per file).
//!
//! The Docker modules need a Docker engine on this host with the images of
//! `bash .ci/images.sh`; `image_build` also needs the registry of `.ci/registry.sh`.

mod docker_backend;
mod docker_conformance;
mod docker_services;
mod image_build;
mod local_conformance;
mod support;
