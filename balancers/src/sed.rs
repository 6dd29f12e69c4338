//! `sed`: shortest expected delay, as `net/netfilter/ipvs/ip_vs_sed.c`.
//!
//! The eligible backend with the least `(active + 1) / weight` wins; inactive connections are
//! ignored ("SED includes the incoming job in the cost function"). Same seed-and-compare loop
//! as `wlc`; ties keep the earlier backend.

use std::sync::Arc;

use crate::state::Snapshot;
use crate::wlc::least_weighted;
use crate::{BackendSpec, BackendState, Flow};

/// `ip_vs_sed_dest_overhead`: active connections plus the incoming one.
#[inline]
pub(crate) fn sed_overhead(s: Snapshot) -> u64 {
    u64::from(s.active()) + 1
}

/// Shortest expected delay (IPVS `sed`).
#[derive(Debug)]
pub struct ShortestExpectedDelay {
    weights: Box<[u32]>,
}

impl ShortestExpectedDelay {
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
        least_weighted(&self.weights, states, sed_overhead)
    }
}
