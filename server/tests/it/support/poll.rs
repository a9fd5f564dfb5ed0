//! Waiting for something that happens in the background: one bounded polling loop, in
//! an async and a blocking flavour. A check answers `Ok(value)` when done, or
//! `Err(state)` with what it saw, which is what a timeout shows.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// No wait polls more often than this, however long its time limit.
const MAX_POLLS: u32 = 20_000;
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// What a wait that ran out saw last.
#[derive(Debug)]
pub struct TimedOut<S> {
    pub state: S,
    pub after: Duration,
    pub polls: u32,
}

/// Paces the polls of one wait: quick at first, then every [`LONGEST_PAUSE`].
struct Pacer {
    started: Instant,
    within: Duration,
    polls: u32,
    pause: Duration,
}

impl Pacer {
    fn new(within: Duration) -> Pacer {
        Pacer {
            started: Instant::now(),
            within,
            polls: 0,
            pause: FIRST_PAUSE,
        }
    }

    /// After a poll that was not done: the pause before the next one, or the timeout.
    fn next<S>(&mut self, state: S) -> Result<Duration, TimedOut<S>> {
        self.polls += 1;
        let after = self.started.elapsed();
        if after >= self.within || self.polls >= MAX_POLLS {
            return Err(TimedOut {
                state,
                after,
                polls: self.polls,
            });
        }
        let pause = self.pause.min(self.within - after);
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
        Ok(pause)
    }
}

/// Polls `check` until it is done or `within` has passed; on timeout, the last state.
pub async fn poll_until<T, S, F, Fut>(within: Duration, mut check: F) -> Result<T, TimedOut<S>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    let mut pacer = Pacer::new(within);
    loop {
        match check().await {
            Ok(done) => return Ok(done),
            Err(state) => tokio::time::sleep(pacer.next(state)?).await,
        }
    }
}

/// Polls `check` until it is done; panics after `within`, naming `what` and showing the
/// last state the check saw.
pub async fn eventually<T, S, F, Fut>(what: &str, within: Duration, check: F) -> T
where
    S: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, S>>,
{
    poll_until(within, check)
        .await
        .unwrap_or_else(|t| timed_out(what, t))
}

/// [`poll_until`] for plain `#[test]`s and other code that must not need a runtime.
pub fn poll_until_blocking<T, S, F>(within: Duration, mut check: F) -> Result<T, TimedOut<S>>
where
    F: FnMut() -> Result<T, S>,
{
    let mut pacer = Pacer::new(within);
    loop {
        match check() {
            Ok(done) => return Ok(done),
            Err(state) => std::thread::sleep(pacer.next(state)?),
        }
    }
}

/// [`eventually`] for plain `#[test]`s and other code that must not need a runtime.
pub fn eventually_blocking<T, S, F>(what: &str, within: Duration, check: F) -> T
where
    S: Display,
    F: FnMut() -> Result<T, S>,
{
    poll_until_blocking(within, check).unwrap_or_else(|t| timed_out(what, t))
}

fn timed_out<S: Display>(what: &str, t: TimedOut<S>) -> ! {
    panic!(
        "timed out waiting for {what} ({:.1?}, {} polls); last seen:\n{}",
        t.after, t.polls, t.state
    )
}
