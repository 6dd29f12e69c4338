//! `dh`: destination hashing, as `net/netfilter/ipvs/ip_vs_dh.c`.
//!
//! A 256-bucket table filled by walking the backend list round robin, one bucket per backend
//! per round (the kernel's `ip_vs_dh_reassign` ignores weight). A flow maps to bucket
//! `hash_32(addr_fold(destination address), 8)`. If that backend is unavailable (weight 0 or
//! overloaded) the result is `None`: the kernel has no fallback flag for `dh`.
//!
//! In ringlb the destination is the address the client connected to (the frontend, or the
//! original destination of redirected traffic), so `dh` pins each destination IP to one backend.

use std::sync::Arc;

use crate::hash::{addr_fold, hash_32};
use crate::sh::HASH_TABLE_SIZE;
use crate::{eligible, BackendSpec, BackendState, Flow};

/// Destination hashing (IPVS `dh`).
#[derive(Debug)]
pub struct DestinationHashing {
    weights: Box<[u32]>,
    buckets: Box<[u32; HASH_TABLE_SIZE]>,
}

impl DestinationHashing {
    pub(crate) fn new(backends: &[BackendSpec]) -> Self {
        let n = backends.len();
        let mut buckets = Box::new([0u32; HASH_TABLE_SIZE]);
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = (i % n) as u32;
        }
        Self {
            weights: backends.iter().map(|b| b.weight).collect(),
            buckets,
        }
    }

    pub(crate) fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The backend owning the bucket of `flow`, available or not.
    pub fn bucket_owner(&self, flow: &Flow) -> usize {
        let h = hash_32(addr_fold(flow.dest.ip().to_canonical()), 8) as usize;
        self.buckets[h] as usize
    }

    #[inline]
    pub(crate) fn pick(&self, flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        let d = self.bucket_owner(flow);
        eligible(self.weights[d], states.get(d)).then_some(d)
    }
}
