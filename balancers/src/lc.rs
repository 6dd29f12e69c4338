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
        let mut least: Option<(usize, u64)> = None;
        for (i, (&w, s)) in self.weights.iter().zip(states).enumerate() {
            let snap = s.snapshot();
            if snap.overloaded() || w == 0 {
                continue;
            }
            let doh = snap.overhead();
            if least.is_none_or(|(_, loh)| doh < loh) {
                least = Some((i, doh));
            }
        }
        least.map(|(i, _)| i)
    }
}
