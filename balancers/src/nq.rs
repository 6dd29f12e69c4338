//! `nq`: never queue, as `net/netfilter/ipvs/ip_vs_nq.c`.
//!
//! Scanning in list order, the first eligible backend with no active connection wins at once
//! (an idle server never queues). Otherwise the eligible backend with the least
//! `(active + 1) / weight` wins, compared by cross-multiplication; ties keep the earlier one.

use std::sync::Arc;

use crate::sed::sed_overhead;
use crate::{BackendSpec, BackendState, Flow};

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
        let mut least: Option<(usize, u64, u64)> = None;
        for (i, (&w, s)) in self.weights.iter().zip(states).enumerate() {
            let snap = s.snapshot();
            if snap.overloaded() || w == 0 {
                continue;
            }
            if snap.active() == 0 {
                return Some(i);
            }
            let doh = sed_overhead(snap);
            let dw = u64::from(w);
            if least.is_none_or(|(_, lw, loh)| loh * dw > doh * lw) {
                least = Some((i, dw, doh));
            }
        }
        least.map(|(i, _, _)| i)
    }
}
