//! `lc`: least connection, as `net/netfilter/ipvs/ip_vs_lc.c`.
//!
//! The eligible backend with the least `active * 256 + inactive` wins; weight only switches a
//! backend on (> 0) or off. Ties keep the earlier backend in list order.

use std::sync::Arc;

use crate::{BackendSpec, BackendState, Flow};

/// Least connection (IPVS `lc`): minimum connection overhead, weight ignored except 0.
#[derive(Debug)]
pub struct LeastConnection {
    weights: Box<[u32]>,
}

impl LeastConnection {
    pub(crate) fn new(backends: &[BackendSpec]) -> Self {
        Self {
            weights: backends.iter().map(|b| b.weight).collect(),
        }
    }

    pub(crate) fn weights(&self) -> &[u32] {
        &self.weights
    }

    #[inline]
    pub(crate) fn pick(&self, _flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        // Branch-free body (ineligible backends get the key u64::MAX, which no real overhead
        // reaches: at most 2^31 * 256 + 2^32): ties keep the earlier backend through `<`.
        let mut best = u64::MAX;
        let mut best_i = 0;
        for (i, (&w, s)) in self.weights.iter().zip(states).enumerate() {
            let key = s.snapshot().lc_key(w);
            if key < best {
                best = key;
                best_i = i;
            }
        }
        (best != u64::MAX).then_some(best_i)
    }
}
