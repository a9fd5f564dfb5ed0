//! The integration tests of the `tests` crate, one binary: one link of `server`,
//! `runner` and the kube double instead of one per file.

mod bench_help;
mod deploy_isolation;
mod deploy_manifests;
mod examples;
mod kube_admission;
mod kube_backend;
mod kube_conformance;
mod kube_deployments;
mod kube_double;
mod kube_exec;
mod kube_gateway;
mod kube_image;
mod kube_logs;
mod kube_node_loss;
mod kube_objects;
mod kube_pulls;
mod kube_quota_wait;
mod kube_restarts;
mod kube_rollouts;
mod kube_runner;
mod kube_services;
mod kube_stage_services;
mod kube_support;
mod purity;
mod rollout_objects;
mod rollouts;
mod test_command;
mod validate_agrees;

// The server's test harness (`server/tests/it/support`), the parts kube_runner and the
// rollouts' web test use.
#[path = "../../../server/tests/it/support/browser.rs"]
#[allow(unused)]
mod browser;
// browser.rs finds a free port through `super::process`.
use tests::server_support::process;
#[path = "../../../server/tests/it/support/db.rs"]
#[allow(unused)]
mod db;
#[path = "../../../server/tests/it/support/git.rs"]
#[allow(unused)]
mod git;
#[path = "../../../server/tests/it/support/poll.rs"]
#[allow(unused)]
mod poll;
#[path = "../../../server/tests/it/support/test_server.rs"]
#[allow(unused)]
mod test_server;
