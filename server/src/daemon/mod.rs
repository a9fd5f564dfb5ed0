//! The server process's shell: configuration, shared state, metrics families,
//! `listener` (HTTP connections: timeouts, connection limit), `disk` (whether its
//! storage can be written) and `serve` (bind, start the workers, drain on SIGTERM).

pub mod config;
pub mod disk;
pub mod first_steps;
pub mod listener;
pub mod metrics;
pub mod serve;
pub mod state;
