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

/// Independent running minima kept by a scan. One minimum would chain every comparison on the
/// one before (compare, then conditional move, then the next compare), so a scan of 256
/// backends ran at the latency of that chain; four lanes over interleaved backends
/// (`i % LANES`) run in parallel and are merged at the end.
const LANES: usize = 4;

/// Calls `visit(lane, i, weight, state)` for every backend, backend `i` in lane `i % LANES`,
/// so that each lane sees its indices in increasing order. The lane loop is unrolled, which
/// keeps each lane's minimum in registers.
#[inline(always)]
fn for_each_lane(
    weights: &[u32],
    states: &[Arc<BackendState>],
    mut visit: impl FnMut(usize, usize, u32, Snapshot),
) {
    let mut ws = weights.chunks_exact(LANES);
    let mut ss = states.chunks_exact(LANES);
    let mut base = 0;
    for (w, s) in ws.by_ref().zip(ss.by_ref()) {
        for lane in 0..LANES {
            visit(lane, base + lane, w[lane], s[lane].snapshot());
        }
        base += LANES;
    }
    for (lane, (&w, s)) in ws.remainder().iter().zip(ss.remainder()).enumerate() {
        visit(lane, base + lane, w, s.snapshot());
    }
}

/// `lc`, branch-free: ineligible backends get the key u64::MAX, which no real overhead reaches
/// (at most 2^31 * 256 + 2^32); ties keep the earlier backend: `<` within a lane (indices
/// increase), the lower index across lanes.
#[inline]
fn least_overhead(weights: &[u32], states: &[Arc<BackendState>]) -> Option<usize> {
    let mut best = [u64::MAX; LANES];
    let mut best_i = [usize::MAX; LANES];
    for_each_lane(weights, states, |lane, i, w, snap| {
        let key = snap.lc_key(w);
        if key < best[lane] {
            best[lane] = key;
            best_i[lane] = i;
        }
    });
    let (key, i) = best.into_iter().zip(best_i).min()?;
    (key != u64::MAX).then_some(i)
}

/// The least-so-far of the kernel loop: index, weight, cost.
type Least = (usize, u64, u64);

/// The kernel loop of `wlc`, `sed` and `nq`: the first eligible backend seeds `least`, then any
/// later one replaces it when `cost(least) / w(least) > cost(d) / w(d)` (cross-multiplied).
/// That picks the first backend of least ratio, which is what the lanes compute and merge.
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
    const SEED: Least = (usize::MAX, 0, 1);
    let mut least = [SEED.0; LANES];
    let mut lw = [SEED.1; LANES];
    let mut loh = [SEED.2; LANES];
    for_each_lane(weights, states, |lane, i, w, snap| {
        let dw = u64::from(w) & !snap.overloaded_mask();
        let doh = cost(snap);
        if loh[lane] * dw > doh * lw[lane] {
            (least[lane], lw[lane], loh[lane]) = (i, dw, doh);
        }
    });
    let merged = (0..LANES).fold(SEED, |l, k| {
        let d = (least[k], lw[k], loh[k]);
        let (lhs, rhs) = (l.2 * d.1, d.2 * l.1);
        // An equal ratio goes to the lower index; `d.1 > 0` keeps an empty lane out.
        if lhs > rhs || (lhs == rhs && d.1 > 0 && d.0 < l.0) {
            d
        } else {
            l
        }
    });
    (merged.0 != usize::MAX).then_some(merged.0)
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
