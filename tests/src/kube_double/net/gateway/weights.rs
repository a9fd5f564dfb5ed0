//! Choosing by weight, deterministically: backendRefs by smooth weighted round
//! robin (nginx's upstream algorithm: over every run of sum(weights) requests each
//! backend gets exactly its weight, interleaved), and RequestMirror's
//! `percent`/`fraction` by an accumulator (exactly numerator of every denominator
//! requests). The spec asks for the proportion weight/sum(weights) and lets an
//! implementation pick how; Envoy picks at random, which has the same proportion
//! on average — this has it without the noise, so tests of a share are not flaky.
//! A weight of 0 is never chosen; all zero chooses nothing.
//!
//! State is kept per key (route uid and rule) and starts over when the weights
//! change.

use std::collections::HashMap;
use std::sync::Mutex;

#[derive(Default)]
struct Smooth {
    weights: Vec<u64>,
    current: Vec<i128>,
}

#[derive(Default)]
pub struct Weights {
    smooth: Mutex<HashMap<String, Smooth>>,
    mirrors: Mutex<HashMap<String, (u64, u64, u64)>>,
}

impl Weights {
    /// The index to send the next request to; `None` when every weight is 0.
    pub fn pick(&self, key: &str, weights: &[u64]) -> Option<usize> {
        let total: i128 = weights.iter().map(|w| i128::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut all = self.smooth.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() > 4096 {
            all.clear();
        }
        let s = all.entry(key.to_owned()).or_default();
        if s.weights != weights {
            s.weights = weights.to_vec();
            s.current = vec![0; weights.len()];
        }
        let mut best: Option<usize> = None;
        for (i, w) in weights.iter().enumerate() {
            if *w == 0 {
                continue;
            }
            s.current[i] += i128::from(*w);
            if best.is_none_or(|b| s.current[i] > s.current[b]) {
                best = Some(i);
            }
        }
        let b = best?;
        s.current[b] -= total;
        Some(b)
    }

    /// Whether the next request is mirrored: `numerator` of every `denominator`.
    pub fn mirror(&self, key: &str, numerator: u64, denominator: u64) -> bool {
        if denominator == 0 || numerator == 0 {
            return false;
        }
        if numerator >= denominator {
            return true;
        }
        let mut all = self.mirrors.lock().unwrap_or_else(|p| p.into_inner());
        if all.len() > 4096 {
            all.clear();
        }
        let (n, d, acc) = all
            .entry(key.to_owned())
            .or_insert((numerator, denominator, 0));
        if (*n, *d) != (numerator, denominator) {
            (*n, *d, *acc) = (numerator, denominator, 0);
        }
        *acc += numerator;
        if *acc >= denominator {
            *acc -= denominator;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_exact_per_round() {
        let w = Weights::default();
        let mut counts = [0; 3];
        for _ in 0..1000 {
            counts[w.pick("r", &[20, 80, 0]).unwrap()] += 1;
        }
        assert_eq!(counts, [200, 800, 0]);
        // Interleaved, not in blocks: no run of the light backend.
        let picks: Vec<usize> = (0..10).map(|_| w.pick("s", &[1, 1]).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1]);
        assert_eq!(w.pick("z", &[0, 0]), None);
        // New weights start over.
        assert_eq!(w.pick("r", &[0, 5]), Some(1));
    }

    #[test]
    fn mirror_fractions_are_exact() {
        let w = Weights::default();
        let n = (0..1000).filter(|_| w.mirror("m", 1, 4)).count();
        assert_eq!(n, 250);
        assert!((0..10).all(|_| w.mirror("all", 100, 100)));
        assert!(!(0..10).any(|_| w.mirror("none", 0, 100)));
    }
}
