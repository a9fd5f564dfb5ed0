//! Slipway's server crate: the `slipway` command line, and (from the server issue on)
//! the HTTP API, webhooks, scheduler and store.

pub mod cli;
pub mod exec;
pub mod pipeline_files;
