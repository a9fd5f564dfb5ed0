//! Restarting a container as the kubelet does. `restartPolicy: Always` restarts a
//! regular container whatever its exit, `OnFailure` after a non-zero exit (regular
//! init containers of such pods are restarted until they succeed), native sidecars
//! always. The first restart is immediate, then the back-off starts at
//! [`KubeDoubleOptions::restart_backoff`] and doubles up to `restart_backoff_max`;
//! two maximums without an exit reset it (the kubelet's `flowcontrol.Backoff` with
//! 10 s and 300 s, used by `doBackOff` in pkg/kubelet/kuberuntime). While backing
//! off the container waits as `CrashLoopBackOff`, its last run in `lastState`;
//! `restartCount` counts the runs after the first.
//!
//! [`KubeDoubleOptions::restart_backoff`]: crate::kube_double::KubeDoubleOptions::restart_backoff

use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;
use tokio_util::sync::CancellationToken;

use super::pod_run::{PodRun, Restart, Slot, Started};
use crate::kube_double::pod_status;

/// The kubelet's per-container back-off.
struct Backoff {
    initial: Duration,
    max: Duration,
    /// The delay before the next restart, and when the last exit was seen.
    entry: Option<(Duration, Instant)>,
}

impl Backoff {
    /// How long to wait before restarting after an exit at `now`.
    fn next(&mut self, now: Instant) -> Duration {
        match self.entry {
            Some((delay, last)) if now.duration_since(last) <= self.max * 2 => {
                self.entry = Some(((delay * 2).min(self.max), now));
                delay
            }
            _ => {
                self.entry = Some((self.initial.min(self.max), now));
                Duration::ZERO
            }
        }
    }
}

impl PodRun {
    /// Runs a container (starting at `first` when the caller already started it)
    /// until it ends for good under `restart`, or `stop` (a sidecar at the end of
    /// its pod) is cancelled: then its current run is stopped. Returns the last
    /// exit code.
    pub(super) async fn run_container(
        self: &Arc<Self>,
        slot: Slot,
        restart: Restart,
        mut first: Option<Started>,
        stop: Option<CancellationToken>,
    ) -> i32 {
        let stop = stop.unwrap_or_default();
        let mut backoff = Backoff {
            initial: self.ctx.options.restart_backoff,
            max: self.ctx.options.restart_backoff_max,
            entry: None,
        };
        loop {
            let started = match first.take() {
                Some(s) => s,
                None => self.start_container(slot).await,
            };
            let code = match started {
                Started::Running(id) => {
                    tokio::select! {
                        code = self.supervise(slot, &id) => code,
                        _ = stop.cancelled() => {
                            let grace = self.spec().termination_grace_period_seconds.unwrap_or(30);
                            self.stop_container(&id, grace).await;
                            return self.wait_container(slot, &id).await;
                        }
                    }
                }
                Started::FailedToStart(code) => code,
            };
            if !restart.wants(code) || stop.is_cancelled() || self.stop.is_cancelled() {
                return code;
            }
            let delay = backoff.next(Instant::now());
            let back_off = (!delay.is_zero()).then(|| {
                format!(
                    "back-off {} restarting failed container={} pod={}_{}({})",
                    go_duration(delay),
                    self.container(slot).name,
                    self.name,
                    self.ns,
                    self.pod.metadata.uid.as_deref().unwrap_or_default(),
                )
            });
            self.change_container(slot, |cs| pod_status::restarting(cs, back_off));
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.cancelled() => return code,
                _ = self.stop.cancelled() => return code,
            }
            self.change_container(slot, |cs| cs.restart_count += 1);
        }
    }
}

/// A duration as Go prints it in the kubelet's message (`10s`, `1m20s`, `500ms`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let (m, s) = ((secs / 60.0).floor() as u64, secs % 60.0);
    let s = if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{s}s")
    };
    if m == 0 { s } else { format!("{m}m{s}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_the_maximum_and_resets() {
        let mut b = Backoff {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(40),
            entry: None,
        };
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..5).map(|_| b.next(t0).as_secs()).collect();
        assert_eq!(delays, [0, 10, 20, 40, 40]);
        assert_eq!(b.next(t0 + Duration::from_secs(81)), Duration::ZERO);
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
        assert!(Restart::OnFailure.wants(1) && !Restart::OnFailure.wants(0));
    }
}
