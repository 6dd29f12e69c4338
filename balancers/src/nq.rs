//! `nq`: never queue, as `net/netfilter/ipvs/ip_vs_nq.c`.
//!
//! Scanning in list order, the first eligible backend with no active connection wins at once
//! (an idle server never queues). Otherwise the eligible backend with the least
//! `(active + 1) / weight` wins, compared by cross-multiplication; ties keep the earlier one.

use std::sync::Arc;

use crate::state::Snapshot;
use crate::wlc::least_weighted;
use crate::{BackendSpec, BackendState, Flow};

/// The `nq` cost: 0 for a backend with no active connection, else `sed`'s `active + 1`.
///
/// Run through `least_weighted`, this is the kernel's `nq` exactly: the first eligible backend
/// with cost 0 replaces any earlier least (`loh * dw > 0`) and is never replaced itself
/// (`0 * dw > doh * lw` is false), and without an idle backend it is `sed`. Computed without a
/// branch, so the scan does not return early; the answer is the same.
#[inline]
fn nq_cost(s: Snapshot) -> u64 {
    let active = u64::from(s.active());
    (active + 1) * u64::from(active != 0)
}

/// Never queue (IPVS `nq`).
#[derive(Debug)]
pub struct NeverQueue {
    weights: Box<[u32]>,
}

impl NeverQueue {
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
        least_weighted(&self.weights, states, nq_cost)
    }
}
