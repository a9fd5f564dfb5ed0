//! The lines a failed run's page shows from its failing step's log (`web::failure`),
//! kept so that a page viewed again and again does not read a huge log each time:
//! keyed by the step and the log's line count when they were read, so a log that
//! grew (a live step) is read again and an ended one never.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::StepKey;

/// The lines a failure shows from one step's log.
#[derive(Debug)]
pub struct Lines {
    pub first: Vec<(u64, String)>,
    pub last: Vec<(u64, String)>,
}

/// Failures' lines kept, at most (each a few KiB: 17 lines of a log).
const CACHED: usize = 256;

/// The lines of the failures shown lately, by step and the log's line count when they
/// were read; the oldest entry goes first when it is full.
#[derive(Default)]
pub struct FailureCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<StepKey, (u64, Arc<Lines>)>,
    order: VecDeque<StepKey>,
}

impl FailureCache {
    /// The lines read from `key`'s log when it had `count` lines.
    pub fn get(&self, key: StepKey, count: u64) -> Option<Arc<Lines>> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.map.get(&key) {
            Some((c, lines)) if *c == count => Some(lines.clone()),
            _ => None,
        }
    }

    pub fn put(&self, key: StepKey, count: u64, lines: Arc<Lines>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.map.insert(key, (count, lines)).is_none() {
            inner.order.push_back(key);
        }
        while inner.order.len() > CACHED {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(step: u32) -> StepKey {
        StepKey {
            run: 1,
            stage: 1,
            step,
        }
    }

    fn lines(text: &str) -> Arc<Lines> {
        Arc::new(Lines {
            first: vec![(1, text.into())],
            last: Vec::new(),
        })
    }

    #[test]
    fn the_cache_answers_for_the_same_log_length_only_and_stays_bounded() {
        let cache = FailureCache::default();
        cache.put(key(0), 10, lines("a"));
        assert_eq!(cache.get(key(0), 10).unwrap().first[0].1, "a");
        // The log grew: read it again.
        assert!(cache.get(key(0), 11).is_none());
        cache.put(key(0), 11, lines("b"));
        assert_eq!(cache.get(key(0), 11).unwrap().first[0].1, "b");
        for step in 1..=CACHED as u32 {
            cache.put(key(step), 1, lines("x"));
        }
        assert!(cache.get(key(0), 11).is_none(), "the oldest went first");
        assert!(cache.get(key(CACHED as u32), 1).is_some());
        assert_eq!(cache.inner.lock().unwrap().map.len(), CACHED);
    }
}
