//! End-to-end tests and benchmarks live in `tests/` and `src/bin/`; this library holds
//! what several suites share: the Kubernetes API-server test double.

pub mod kube_double;
