//! `wlc`: weighted least connection, as `net/netfilter/ipvs/ip_vs_wlc.c`.
//!
//! The eligible backend with the least `overhead / weight` wins, `overhead = active * 256 +
//! inactive`. As in the kernel, the first eligible backend seeds the search and later ones are
//! compared by cross-multiplication (`loh * w > doh * lw`, in `u64`: overhead < 2^41 and weight
//! ≤ [`MAX_WEIGHT`](crate::MAX_WEIGHT) = 2^16 - 1 cannot overflow); a weight-0 backend can never
//! win that comparison. Ties keep the earlier backend.

use std::sync::Arc;

use crate::state::Snapshot;
use crate::{BackendSpec, BackendState, Flow};

/// Weighted least connection (IPVS `wlc`).
#[derive(Debug)]
pub struct WeightedLeastConnection {
    weights: Box<[u32]>,
}

/// The kernel loop shared by `wlc` and `sed`: the first eligible backend seeds `least`, then
/// any later one replaces it when `cost(least) / w(least) > cost(d) / w(d)` (cross-multiplied).
///
/// Written without branches on the data: an ineligible backend gets weight 0, which can never
/// win the comparison (`loh * 0 > doh * lw` is false), and the seed is a virtual backend of
/// weight 0 and cost 1 that the first eligible backend always beats (`1 * dw > doh * 0`).
/// Products stay below 2^57 (cost < 2^41, weight < 2^16).
#[inline]
pub(crate) fn least_weighted(
    weights: &[u32],
    states: &[Arc<BackendState>],
    cost: impl Fn(Snapshot) -> u64,
) -> Option<usize> {
    let (mut least, mut lw, mut loh) = (usize::MAX, 0u64, 1u64);
    for (i, (&w, s)) in weights.iter().zip(states).enumerate() {
        let snap = s.snapshot();
        let dw = if snap.overloaded() { 0 } else { u64::from(w) };
        let doh = cost(snap);
        if loh * dw > doh * lw {
            (least, lw, loh) = (i, dw, doh);
        }
    }
    (least != usize::MAX).then_some(least)
}

impl WeightedLeastConnection {
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
        least_weighted(&self.weights, states, Snapshot::overhead)
    }
}
