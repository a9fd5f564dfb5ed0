//! The server process's shell: configuration, shared state, metrics families, and
//! `serve` (bind, start the workers, drain on SIGTERM).

pub mod config;
pub mod metrics;
pub mod serve;
pub mod state;
