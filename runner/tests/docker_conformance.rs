//! The backend conformance suite on the Docker backend: the same cases and
//! expectations as the local backend, steps in `slipway-test/busybox:latest`
//! (built by `bash .ci/images.sh`). Needs a Docker engine on this host.

mod docker_support;

runner::conformance_tests!(
    std::sync::Arc::new(docker_support::backend().await),
    Some(docker_support::image())
);
