//! Time as the store and the lease-expiry worker see it: the system clock in a server,
//! a [`ManualClock`] in tests, which step time past a lease's deadline instead of
//! sleeping through it.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::watch;

/// `d` in whole milliseconds, saturating.
pub fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A source of "now" and of waits measured on it.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in unix milliseconds.
    fn now_ms(&self) -> i64;
    /// Completes once `d` has passed on this clock.
    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()>;
}

/// The operating system's wall clock; waits are tokio timers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        Box::pin(tokio::time::sleep(d))
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`]); its sleeps end when
/// it has been advanced past them.
#[derive(Debug)]
pub struct ManualClock {
    now: watch::Sender<i64>,
}

impl ManualClock {
    /// Starts at the system time, so that rows it stamps look ordinary.
    pub fn new() -> ManualClock {
        ManualClock::starting_at(SystemClock.now_ms())
    }

    pub fn starting_at(ms: i64) -> ManualClock {
        ManualClock {
            now: watch::Sender::new(ms),
        }
    }

    /// Moves the clock forward by `d` and wakes the sleeps that are now over.
    pub fn advance(&self, d: Duration) {
        self.now
            .send_modify(|now| *now = now.saturating_add(duration_ms(d)));
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.borrow()
    }

    fn sleep(&self, d: Duration) -> BoxFuture<'static, ()> {
        let deadline = self.now_ms().saturating_add(duration_ms(d));
        let mut now = self.now.subscribe();
        Box::pin(async move {
            if now.wait_for(|&t| t >= deadline).await.is_err() {
                // The clock is gone, so it never moves again.
                std::future::pending::<()>().await;
            }
        })
    }
}

/// Rounds every `period` on a clock. A round is due one period after the previous one,
/// at once if the clock has already passed that (a manual clock advanced while a round
/// ran: the next round must see the new time), and never more than one period away
/// (a wall clock set back).
#[derive(Debug)]
pub struct Ticker {
    clock: Arc<dyn Clock>,
    period_ms: i64,
    due: i64,
}

impl Ticker {
    pub fn new(clock: Arc<dyn Clock>, period: Duration) -> Ticker {
        let period_ms = duration_ms(period).max(1);
        let due = clock.now_ms().saturating_add(period_ms);
        Ticker {
            clock,
            period_ms,
            due,
        }
    }

    /// Waits until the next round is due.
    pub async fn tick(&mut self) {
        let now = self.clock.now_ms();
        let due = self.due.clamp(now, now.saturating_add(self.period_ms));
        let wait = Duration::from_millis(u64::try_from(due - now).unwrap_or(0));
        self.clock.sleep(wait).await;
        self.due = due.saturating_add(self.period_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// True when `fut` completes without the clock moving any further.
    async fn ready(fut: impl std::future::Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), fut)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_manual_sleep_ends_only_once_advanced_past() {
        let clock = ManualClock::starting_at(1_000);
        let sleep = clock.sleep(2 * SEC);
        tokio::pin!(sleep);
        assert!(!ready(&mut sleep).await);
        clock.advance(SEC);
        assert_eq!(clock.now_ms(), 2_000);
        assert!(!ready(&mut sleep).await);
        clock.advance(SEC);
        assert!(ready(&mut sleep).await);
        assert!(ready(clock.sleep(Duration::ZERO)).await);
    }

    #[tokio::test]
    async fn a_ticker_round_sees_an_advance_made_while_the_previous_round_ran() {
        let clock = Arc::new(ManualClock::starting_at(0));
        let mut ticker = Ticker::new(clock.clone(), SEC);
        {
            let first = ticker.tick();
            tokio::pin!(first);
            assert!(!ready(&mut first).await, "due one period after the start");
            clock.advance(SEC);
            assert!(ready(&mut first).await);
        }
        // The round runs; meanwhile the clock moves three periods on.
        clock.advance(3 * SEC);
        assert!(ready(ticker.tick()).await, "the clock passed the due time");
        // Then one period at a time again.
        assert!(!ready(ticker.tick()).await);
    }

    #[tokio::test]
    async fn a_ticker_waits_at_most_one_period_after_the_clock_went_back() {
        let clock = Arc::new(ManualClock::starting_at(0));
        let mut ticker = Ticker {
            clock: clock.clone(),
            period_ms: 1_000,
            // As if the wall clock had been an hour ahead when the last round ran.
            due: 3_600_000,
        };
        let tick = ticker.tick();
        tokio::pin!(tick);
        assert!(!ready(&mut tick).await);
        clock.advance(SEC);
        assert!(ready(&mut tick).await);
    }
}
