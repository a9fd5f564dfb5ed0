//! End-to-end tests and benchmarks live in `tests/` and `src/bin/`; this library holds
//! the helpers several suites share.

pub mod pod_security;
pub mod yaml_docs;
