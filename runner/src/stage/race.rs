//! Timeouts and cancellation: a backend call raced against the stage's deadline and
//! its cancel token.

use tokio::time::Instant;

use super::driver::Driver;

/// Which of a backend call, the deadline or the cancel token came first.
pub(super) enum Raced<T> {
    Done(T),
    TimedOut,
    Cancelled,
}

impl Driver<'_> {
    /// Runs `fut` unless the deadline passes or the stage is cancelled first.
    pub(super) async fn race<F: Future>(
        &self,
        fut: F,
        deadline: Option<Instant>,
    ) -> Raced<F::Output> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Raced::Cancelled,
            _ = sleep_until_opt(deadline) => Raced::TimedOut,
            r = fut => Raced::Done(r),
        }
    }
}

pub(super) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
