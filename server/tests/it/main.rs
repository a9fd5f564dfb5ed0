//! The server's integration tests in one binary (one link of the server instead of one
//! per file): a module per area, all on the harness in `support`.

mod support;

mod admin_cli;
mod api;
mod artifacts;
mod cache_paths;
mod chaos;
mod cli;
mod cli_docker;
mod crash;
mod cron;
mod crypto;
mod docker_e2e;
mod docker_sweep;
mod e2e;
mod exec_parity;
mod expressions;
mod first_steps;
mod forge;
mod full_disk;
mod git_mirror;
mod harness;
mod hooks;
mod leftovers;
mod logs;
mod people;
mod planner;
mod promptness;
mod quickstart;
mod release;
mod runner_protocol;
mod runners;
mod scoped_credentials;
mod secret_masking;
mod slow_clients;
mod status;
mod store;
mod truthful;
mod web;
mod web_admin;
mod web_env_rollout;
mod web_findings;
mod web_keys;
mod web_rollout;
mod webhook_flood;
