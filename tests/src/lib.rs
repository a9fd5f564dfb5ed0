//! End-to-end tests and benchmarks live in `tests/` and `src/bin/`; this library holds
//! what several suites share: the Kubernetes API-server test double, the external
//! Kubernetes tools (kubernetes-validate), the `restricted` pod security check,
//! multi-document YAML, and the rollout rig (a real server driving rollouts in the
//! double) that the rollout tests and `bench_rollout` start from.

pub mod admission_policy;
pub mod bench_support;
pub mod k8s_tools;
pub mod kube_double;
pub mod network_policy;
pub mod pod_security;
pub mod rollout_rig;
pub mod server_support;
pub mod yaml_docs;
