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

/// The kernel loop shared by `wlc` and `sed`: seed with the first eligible backend, then replace
/// it whenever `cost(least) / w(least) > cost(d) / w(d)`.
#[inline]
pub(crate) fn least_weighted(
    weights: &[u32],
    states: &[Arc<BackendState>],
    cost: impl Fn(Snapshot) -> u64,
) -> Option<usize> {
    let mut it = weights.iter().zip(states).enumerate();
    let (mut least, mut lw, mut loh) = loop {
        let (i, (&w, s)) = it.next()?;
        let snap = s.snapshot();
        if !snap.overloaded() && w > 0 {
            break (i, u64::from(w), cost(snap));
        }
    };
    for (i, (&w, s)) in it {
        let snap = s.snapshot();
        if snap.overloaded() {
            continue;
        }
        let doh = cost(snap);
        let dw = u64::from(w);
        if loh * dw > doh * lw {
            (least, lw, loh) = (i, dw, doh);
        }
    }
    Some(least)
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
