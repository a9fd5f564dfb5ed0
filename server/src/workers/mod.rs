//! The background workers a server runs beside its HTTP API. Each lives in its own
//! module and exposes `spawn(state, …) -> JoinHandle<()>`; this is the one list of them.

use std::net::SocketAddr;

use tokio::task::JoinHandle;

use crate::daemon::state::AppState;

pub mod commit_status;
pub mod cron;
pub mod disk_watch;
pub mod gates;
pub mod in_process_runner;
pub mod kube_orphans;
pub(crate) mod lease_expiry;
pub mod planner;
pub mod rollouts;

#[allow(
    clippy::vec_init_then_push,
    reason = "one line per worker keeps this list easy to extend and merge"
)]
pub fn spawn_all(state: &AppState, addr: SocketAddr) -> Vec<JoinHandle<()>> {
    let mut workers = Vec::new();
    workers.push(planner::spawn(state.clone()));
    workers.push(cron::spawn(state.clone()));
    workers.push(commit_status::spawn(state.clone()));
    workers.push(lease_expiry::spawn(state.clone()));
    workers.push(disk_watch::spawn(state.clone()));
    workers.push(gates::spawn(state.clone()));
    workers.push(rollouts::spawn(state.clone()));
    if state.config.in_process_runner {
        workers.push(in_process_runner::spawn(state.clone(), addr));
    }
    workers
}
