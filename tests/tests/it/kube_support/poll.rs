//! Waiting for what happens in the background (a pod to appear, to go, a log line):
//! polls a check, bounded both in time and in the number of tries. A check that
//! hangs counts against the time.

use std::time::{Duration, Instant};

/// How long and how often to poll.
#[derive(Debug, Clone, Copy)]
pub struct Poll {
    within: Duration,
    every: Duration,
}

impl Poll {
    /// At most `within`, every 100 ms.
    pub const fn within(within: Duration) -> Poll {
        Poll {
            within,
            every: Duration::from_millis(100),
        }
    }

    pub const fn every(self, every: Duration) -> Poll {
        Poll { every, ..self }
    }

    /// Enough tries to span `within` (one more for the try at the start).
    fn tries(&self) -> u128 {
        self.within.as_millis() / self.every.as_millis().max(1) + 1
    }
}

/// Runs `check` until it returns `Some`; `None` once the time or the tries are used up.
pub async fn poll_until<T>(poll: Poll, mut check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let started = Instant::now();
    for _ in 0..poll.tries() {
        let left = poll.within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, check()).await {
            Ok(Some(t)) => return Some(t),
            Ok(None) if started.elapsed() < poll.within => {}
            Ok(None) | Err(_) => return None,
        }
        tokio::time::sleep(poll.every).await;
    }
    None
}

/// [`poll_until`], failing the test with `what` when it runs out.
pub async fn eventually<T>(what: &str, poll: Poll, check: impl AsyncFnMut() -> Option<T>) -> T {
    match poll_until(poll, check).await {
        Some(t) => t,
        None => panic!(
            "timed out waiting for {what} ({} tries within {:?})",
            poll.tries(),
            poll.within
        ),
    }
}

#[tokio::test]
async fn polls_until_the_check_holds_and_no_longer() {
    let mut calls = 0;
    let poll = Poll::within(Duration::from_secs(5)).every(Duration::from_millis(1));
    let n = eventually("the third call", poll, async || {
        calls += 1;
        (calls == 3).then_some(calls)
    })
    .await;
    assert_eq!(n, 3);

    // Out of time: a check that never holds is given up on after `within`.
    let started = Instant::now();
    let poll = Poll::within(Duration::from_millis(300)).every(Duration::from_millis(50));
    assert_eq!(poll_until(poll, async || None::<()>).await, None);
    assert!(started.elapsed() < Duration::from_secs(2));

    // A check that hangs counts against the time.
    let started = Instant::now();
    let hangs = async || {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Some(())
    };
    assert_eq!(
        poll_until(Poll::within(Duration::from_millis(200)), hangs).await,
        None
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // Out of tries: bounded in count as well.
    let mut tries = 0;
    let poll = Poll::within(Duration::from_millis(30)).every(Duration::from_millis(10));
    let counted = async || {
        tries += 1;
        None::<()>
    };
    assert_eq!(poll_until(poll, counted).await, None);
    assert!(tries <= 4, "{tries}");
}
