//! Slipway's server crate: the `slipway` command line, and (from the server issue on)
//! the HTTP API, webhooks, scheduler and store.

pub mod api;
pub mod backends;
pub mod blobs;
pub mod cache;
pub mod cli;
pub mod config;
pub mod cron;
pub mod crypto;
pub mod exec;
pub mod forge;
pub mod git;
pub mod kube_orphans;
pub mod logs;
pub mod metrics;
pub mod pipeline_files;
pub mod planner;
pub mod planning;
pub mod protocol;
pub mod repos;
pub mod routing;
pub mod runner_agent;
pub mod scheduler;
pub mod serve;
pub mod stage_spec;
pub mod state;
pub mod status;
pub mod store;
pub mod workers;
