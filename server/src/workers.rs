//! The background workers a server runs beside its HTTP API. Each lives in its own
//! module and exposes `spawn(state, …) -> JoinHandle<()>`; this is the one list of them.

use std::net::SocketAddr;

use tokio::task::JoinHandle;

use crate::state::AppState;

#[allow(
    clippy::vec_init_then_push,
    reason = "one line per worker keeps this list easy to extend and merge"
)]
pub fn spawn_all(state: &AppState, addr: SocketAddr) -> Vec<JoinHandle<()>> {
    let mut workers = Vec::new();
    workers.push(crate::planner::spawn(state.clone()));
    workers.push(crate::cron::spawn(state.clone()));
    workers.push(crate::status::spawn(state.clone()));
    workers.push(crate::scheduler::spawn(state.clone()));
    if state.config.in_process_runner {
        workers.push(crate::runner_agent::spawn_in_process(state.clone(), addr));
    }
    workers
}
