//! Runs one pod on Docker, like a kubelet with `restartPolicy: Never`: volumes and
//! a sandbox holding the network namespace; init containers one after another (a
//! sidecar, `restartPolicy: Always`, is started and left running); then the regular
//! containers together; sidecars stopped when the regular containers are done.
//! Every transition is written to the stored pod's status (one resourceVersion per
//! change, so watchers see each step). `activeDeadlineSeconds` and deletion stop
//! the pod wherever it is.
//!
//! `ctx` is the state the HTTP handlers and the pod runners share (and pod deletion);
//! `pod_run` runs one pod through its phases; `containers` starts, waits for, records
//! and stops its containers.

mod containers;
mod ctx;
mod pod_run;

pub use ctx::Ctx;
