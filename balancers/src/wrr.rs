//! `wrr`: interleaved weighted round robin, as `net/netfilter/ipvs/ip_vs_wrr.c`.
//!
//! IPVS keeps `(cl, cw)`: with `di = gcd(weights > 0)`, `mw = max_weight - (di - 1)` and `cw`
//! starting at `mw`, each pass over the list selects the dests with `weight >= cw`, then
//! `cw -= di`, wrapping to `mw` when `cw <= 0`; overloaded dests are skipped. Weights are fixed
//! for the life of a built scheduler, so the whole cycle (Σ weight/di picks) is precomputed here
//! and walked by a lock-free cursor; skipping an ineligible entry of the cycle is exactly IPVS
//! skipping that dest in its pass.

use std::ops::Deref;

use crate::cycle::Cyclic;
use crate::{BackendSpec, BuildError};

/// Longest precomputed cycle accepted (entries of 4 bytes: 16 MiB).
pub const MAX_WRR_CYCLE: usize = 1 << 22;

/// Interleaved weighted round robin over a precomputed cycle.
#[derive(Debug)]
pub struct WeightedRoundRobin(Cyclic);

pub(crate) fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl WeightedRoundRobin {
    pub(crate) fn new(backends: &[BackendSpec]) -> Result<Self, BuildError> {
        let weights: Box<[u32]> = backends.iter().map(|b| b.weight).collect();
        let di = weights
            .iter()
            .copied()
            .filter(|&w| w > 0)
            .fold(0, gcd)
            .max(1);
        let max = weights.iter().copied().max().unwrap_or(0);
        let len: u64 = weights.iter().map(|&w| u64::from(w / di)).sum();
        if len > MAX_WRR_CYCLE as u64 {
            return Err(BuildError::WrrCycleTooLong { len });
        }
        let mut order = Vec::with_capacity(len as usize);
        if max > 0 {
            // cw = mw, mw - di, ... > 0 with mw = max - (di - 1); every weight is a multiple of di.
            let mw = i64::from(max) - i64::from(di - 1);
            let mut cw = mw;
            while cw > 0 {
                order.extend(
                    weights
                        .iter()
                        .enumerate()
                        .filter(|(_, &w)| i64::from(w) >= cw)
                        .map(|(i, _)| i as u32),
                );
                cw -= i64::from(di);
            }
        }
        debug_assert_eq!(order.len() as u64, len, "wrr cycle length is Σ w/di");
        Ok(Self(Cyclic::new(weights, order)))
    }
}

impl Deref for WeightedRoundRobin {
    type Target = Cyclic;

    fn deref(&self) -> &Cyclic {
        &self.0
    }
}
