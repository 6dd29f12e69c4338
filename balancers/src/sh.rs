//! `sh`: source hashing, as `net/netfilter/ipvs/ip_vs_sh.c`.
//!
//! A 256-bucket table (`CONFIG_IP_VS_SH_TAB_BITS = 8`) is filled by walking the backend list
//! round robin, each backend taking `weight` consecutive buckets (a weight-0 backend still takes
//! one, since `++d_count >= 0`; when Σ weights exceeds 256 the later backends get fewer or none).
//! A flow maps to bucket `(offset + hash_32(port + addr_fold, 8)) & 255` of its client address
//! (and client port with `sh-port`, else port 0). If that backend is unavailable (weight 0 or
//! overloaded) the result is `None` unless `sh-fallback`, which walks the buckets starting from
//! the rehashed offsets `(ihash + i) % 256` and returns the first available backend.

use std::net::IpAddr;
use std::sync::Arc;

use crate::hash::{addr_fold, hash_32};
use crate::{eligible, BackendSpec, BackendState, Flow};

/// Number of buckets of the `sh` and `dh` tables.
pub const HASH_TABLE_SIZE: usize = 256;
const TAB_BITS: u32 = 8;
const TAB_MASK: u32 = (HASH_TABLE_SIZE as u32) - 1;

/// Source hashing (IPVS `sh`), with the `sh-fallback` and `sh-port` flags.
#[derive(Debug)]
pub struct SourceHashing {
    weights: Box<[u32]>,
    buckets: Box<[u32; HASH_TABLE_SIZE]>,
    fallback: bool,
    port: bool,
}

/// `ip_vs_sh_hashkey`.
#[inline]
pub(crate) fn sh_hashkey(addr: IpAddr, port: u16, offset: u32) -> usize {
    let h = hash_32(u32::from(port).wrapping_add(addr_fold(addr)), TAB_BITS);
    (offset.wrapping_add(h) & TAB_MASK) as usize
}

/// `ip_vs_sh_reassign`: each backend takes `weight` (at least one) consecutive buckets.
pub(crate) fn sh_buckets(weights: &[u32]) -> Box<[u32; HASH_TABLE_SIZE]> {
    debug_assert!(!weights.is_empty(), "built with at least one backend");
    let mut buckets = Box::new([0u32; HASH_TABLE_SIZE]);
    let (mut p, mut d_count) = (0usize, 0u32);
    for b in buckets.iter_mut() {
        *b = p as u32;
        d_count += 1;
        if d_count >= weights[p] {
            p = (p + 1) % weights.len();
            d_count = 0;
        }
    }
    buckets
}

impl SourceHashing {
    pub(crate) fn new(backends: &[BackendSpec], fallback: bool, port: bool) -> Self {
        let weights: Box<[u32]> = backends.iter().map(|b| b.weight).collect();
        Self {
            buckets: sh_buckets(&weights),
            weights,
            fallback,
            port,
        }
    }

    pub(crate) fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The backend owning the bucket of `flow`, available or not (for tests and diagnostics).
    pub fn bucket_owner(&self, flow: &Flow) -> usize {
        let (addr, port) = self.key(flow);
        self.buckets[sh_hashkey(addr, port, 0)] as usize
    }

    #[inline]
    fn key(&self, flow: &Flow) -> (IpAddr, u16) {
        let port = if self.port { flow.client.port() } else { 0 };
        (flow.client.ip().to_canonical(), port)
    }

    #[inline]
    pub(crate) fn pick(&self, flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        let (addr, port) = self.key(flow);
        let available = |i: u32| eligible(self.weights[i as usize], states.get(i as usize));
        let ihash = sh_hashkey(addr, port, 0);
        let dest = self.buckets[ihash];
        if available(dest) {
            return Some(dest as usize);
        }
        if !self.fallback {
            return None;
        }
        (0..HASH_TABLE_SIZE as u32)
            .map(|offset| {
                let roffset = (offset + ihash as u32) % HASH_TABLE_SIZE as u32;
                self.buckets[sh_hashkey(addr, port, roffset)]
            })
            .find(|&d| available(d))
            .map(|d| d as usize)
    }
}
