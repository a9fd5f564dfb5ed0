//! The backend conformance suite on the Docker backend: the same cases and
//! expectations as the local backend, steps in `slipway-test/busybox:latest`
//! (built by `bash .ci/images.sh`). Needs a Docker engine on this host.

use crate::support;

runner::conformance_tests!(
    std::sync::Arc::new(support::backend().await),
    Some(support::image())
);
