//! A set-up that waits for something outside the stage (a Kubernetes ResourceQuota)
//! says so: while it lasts, the backend's [`waiting_reason`](crate::Backend::waiting_reason)
//! is looked at and every change is sent as [`StageEvent::Waiting`], so the server
//! can show why a leased stage has not started its first step.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use super::driver::Driver;
use super::outcome::StageEvent;

/// How often a waiting set-up's reason is looked at (a map lookup in the backend).
const LOOK_EVERY: Duration = Duration::from_millis(250);

impl Driver<'_> {
    /// Awaits `setup`, reporting the backend's waiting reason while it lasts; a reason
    /// that was shown is withdrawn (`None`) when the set-up ends, whichever way.
    pub(super) async fn reporting_waits<T>(&self, setup: impl Future<Output = T>) -> T {
        let mut setup = pin!(setup);
        let mut shown: Option<String> = None;
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                done = &mut setup => {
                    if shown.is_some() {
                        self.send_waiting(None);
                    }
                    return done;
                }
                _ = look.tick() => {
                    let now = self
                        .backend
                        .waiting_reason(&self.spec.id)
                        .map(|r| self.masker.mask_str(&r));
                    if now != shown {
                        self.send_waiting(now.clone());
                        shown = now;
                    }
                }
            }
        }
    }

    fn send_waiting(&self, reason: Option<String>) {
        self.send(StageEvent::Waiting {
            stage: self.spec.id.clone(),
            reason,
        });
    }
}
