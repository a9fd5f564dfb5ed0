//! The backend conformance suite on the Kubernetes backend, against the API-server
//! test double (`tests::kube_double`): the same cases as the local and Docker
//! backends. Needs Docker and the images from `bash .ci/images.sh`.

use crate::kube_support;

runner::conformance_tests!(kube_support::backend().await, Some(kube_support::image()));
