//! `rr`: round robin, as `net/netfilter/ipvs/ip_vs_rr.c`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{BackendSpec, BackendState, Flow};

/// Circular over the backends whose weight is above zero; weight is otherwise ignored.
#[derive(Debug)]
pub struct RoundRobin {
    weights: Box<[u32]>,
    cursor: AtomicUsize,
}

impl RoundRobin {
    pub(crate) fn new(backends: &[BackendSpec]) -> Self {
        Self {
            weights: backends.iter().map(|b| b.weight).collect(),
            cursor: AtomicUsize::new(0),
        }
    }

    pub(crate) fn eligible(&self, i: usize, _states: &[Arc<BackendState>]) -> bool {
        self.weights[i] > 0
    }

    #[inline]
    pub(crate) fn pick(&self, _flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        let n = self.weights.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let found = (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.eligible(i, states))?;
        if found != start {
            // Skip over the ineligible run so the next pick starts after `found`.
            let _ = self.cursor.compare_exchange(
                start + 1,
                found + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        Some(found)
    }
}
