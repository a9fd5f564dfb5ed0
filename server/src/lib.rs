//! Slipway's server crate: the `slipway` command line, the HTTP API, webhooks, the
//! background workers, the runner agent and the store. ARCHITECTURE.md is the map.

pub mod admin;
pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod crypto;
pub mod daemon;
pub mod delivery;
pub mod disk_space;
pub mod forge;
pub mod git;
pub mod logs;
pub mod protocol;
pub mod rollout;
pub mod runs;
pub mod store;
pub mod web;
pub mod workers;
