//! `rr`: round robin, as `net/netfilter/ipvs/ip_vs_rr.c`.
//!
//! The cursor walks the backend list circularly from the last pick and returns the next backend
//! with `weight > 0` that is not overloaded. Weight is only an on/off switch.

use std::sync::Arc;

use crate::cycle::Cycle;
use crate::{eligible, BackendSpec, BackendState, Flow};

/// Circular over the backends whose weight is above zero; weight is otherwise ignored.
///
/// Concurrency: a lock-free shared cursor (see the `cycle` module docs in the source).
#[derive(Debug)]
pub struct RoundRobin {
    weights: Box<[u32]>,
    cycle: Cycle,
}

impl RoundRobin {
    pub(crate) fn new(backends: &[BackendSpec]) -> Self {
        let order = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.weight > 0)
            .map(|(i, _)| i as u32)
            .collect();
        Self {
            weights: backends.iter().map(|b| b.weight).collect(),
            cycle: Cycle::new(order),
        }
    }

    pub(crate) fn weights(&self) -> &[u32] {
        &self.weights
    }

    #[inline]
    pub(crate) fn pick(&self, _flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        self.cycle
            .next(|i| eligible(self.weights[i], states.get(i)))
    }
}
