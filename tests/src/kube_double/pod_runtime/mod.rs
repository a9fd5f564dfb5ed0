//! Runs one pod on Docker, like a kubelet: volumes and a sandbox holding the network
//! namespace; init containers one after another (a sidecar, `restartPolicy: Always`,
//! is started and left running); then the regular containers together, each
//! restarted as the pod's `restartPolicy` says and probed while it runs; sidecars
//! stopped when the regular containers are done for good.
//! Every transition is written to the stored pod's status (one resourceVersion per
//! change, so watchers see each step). `activeDeadlineSeconds` and deletion stop
//! the pod wherever it is.
//!
//! `ctx` is the state the HTTP handlers and the pod runners share (and pod deletion);
//! `pod_run` runs one pod through its phases; `containers` starts, waits for, records
//! and stops its containers; `restart` runs a container again after it ended, with
//! the kubelet's back-off; `probes` runs its startup, readiness and liveness probes.

mod containers;
mod ctx;
mod pod_run;
mod probes;
mod restart;

pub use ctx::Ctx;
