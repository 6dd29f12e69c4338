//! The least-load schedulers, as `net/netfilter/ipvs/ip_vs_{lc,wlc,sed,nq}.c`. They differ
//! only in the cost they minimise, so they share one type and one scan.
//!
//! - `lc`: least `active * 256 + inactive`; weight only switches a backend on (> 0) or off.
//! - `wlc`: least `(active * 256 + inactive) / weight`.
//! - `sed`: least `(active + 1) / weight`; inactive connections are ignored ("SED includes the
//!   incoming job in the cost function").
//! - `nq`: the first eligible backend with no active connection wins (an idle server never
//!   queues); otherwise as `sed`.
//!
//! As in the kernel, ties keep the earlier backend in list order, and ratios are compared by
//! cross-multiplication (`loh * w > doh * lw` in `u64`: a cost is below 2^41 and a weight at
//! most [`MAX_WEIGHT`](crate::MAX_WEIGHT) = 2^16 - 1, so nothing overflows).

use std::sync::Arc;

use crate::state::Snapshot;
use crate::{BackendSpec, BackendState, Flow};

/// Which cost a [`LeastLoad`] scheduler minimises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cost {
    Lc,
    Wlc,
    Sed,
    Nq,
}

/// A least-load scheduler (IPVS `lc`, `wlc`, `sed` or `nq`).
#[derive(Debug)]
pub struct LeastLoad {
    weights: Box<[u32]>,
    cost: Cost,
}

impl LeastLoad {
    pub(crate) fn new(backends: &[BackendSpec], cost: Cost) -> Self {
        Self {
            weights: backends.iter().map(|b| b.weight).collect(),
            cost,
        }
    }

    pub(crate) fn weights(&self) -> &[u32] {
        &self.weights
    }

    #[inline]
    pub(crate) fn pick(&self, _flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        match self.cost {
            Cost::Lc => least_overhead(&self.weights, states),
            Cost::Wlc => least_weighted(&self.weights, states, Snapshot::overhead),
            Cost::Sed => least_weighted(&self.weights, states, sed_cost),
            Cost::Nq => least_weighted(&self.weights, states, nq_cost),
        }
    }
}

/// `lc`, branch-free: ineligible backends get the key u64::MAX, which no real overhead reaches
/// (at most 2^31 * 256 + 2^32); ties keep the earlier backend through `<`.
#[inline]
fn least_overhead(weights: &[u32], states: &[Arc<BackendState>]) -> Option<usize> {
    let mut best = u64::MAX;
    let mut best_i = 0;
    for (i, (&w, s)) in weights.iter().zip(states).enumerate() {
        let key = s.snapshot().lc_key(w);
        if key < best {
            best = key;
            best_i = i;
        }
    }
    (best != u64::MAX).then_some(best_i)
}

/// The kernel loop of `wlc`, `sed` and `nq`: the first eligible backend seeds `least`, then any
/// later one replaces it when `cost(least) / w(least) > cost(d) / w(d)` (cross-multiplied).
///
/// Written without branches on the data: an ineligible backend gets weight 0, which can never
/// win the comparison (`loh * 0 > doh * lw` is false), and the seed is a virtual backend of
/// weight 0 and cost 1 that the first eligible backend always beats (`1 * dw > doh * 0`).
#[inline]
fn least_weighted(
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

/// `ip_vs_sed_dest_overhead`: active connections plus the incoming one.
#[inline]
fn sed_cost(s: Snapshot) -> u64 {
    u64::from(s.active()) + 1
}

/// The `nq` cost: 0 for a backend with no active connection, else `sed`'s `active + 1`.
///
/// Run through [`least_weighted`], this is the kernel's `nq` exactly: the first eligible
/// backend with cost 0 replaces any earlier least (`loh * dw > 0`) and is never replaced itself
/// (`0 * dw > doh * lw` is false), and without an idle backend it is `sed`. Computed without a
/// branch, so the scan does not return early; the answer is the same.
#[inline]
fn nq_cost(s: Snapshot) -> u64 {
    let active = u64::from(s.active());
    (active + 1) * u64::from(active != 0)
}
