//! A lock-free cursor over a precomputed cyclic schedule, and the scheduler `rr` and `wrr`
//! both are ([`Cyclic`]: the backends' weights and such a schedule over them).
//!
//! IPVS keeps one cursor per service under `svc->sched_lock` and walks the destination list from
//! the last pick, skipping ineligible entries. Here the walk's order is precomputed at build
//! time (`rr`: the weight > 0 backends in list order; `wrr`: the full interleaved cycle) and the
//! cursor is a single `AtomicUsize` holding a raw, ever-growing position:
//!
//! 1. `t = cursor.fetch_add(1)` claims position `t` (wait-free; concurrent picks get distinct
//!    positions, so they spread like IPVS's serialised picks).
//! 2. Scan the schedule from `t % len` for the first eligible entry, `d` steps later.
//! 3. If `d > 0`, try `compare_exchange(t + 1, t + 1 + d)` so the next pick starts right after the
//!    entry taken (IPVS: the cursor moves to the picked dest). Every quantity in the exchange is a
//!    raw position, never a reduced index. If another thread moved the cursor meanwhile, the
//!    exchange fails and that thread's position wins: a skip may then be repeated, which only
//!    affects fairness while backends are ineligible, never correctness.
//!
//! Single-threaded, the sequence of picks equals IPVS's exactly (the property tests check this
//! against a model of the kernel loop). No lock, no allocation; O(1) while the entry under the
//! cursor is eligible, at most one pass over the schedule otherwise.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::{eligible, BackendState, Flow};

/// The backends' weights and a cyclic schedule over them; `rr` and `wrr` differ only in the
/// schedule they build.
#[derive(Debug)]
pub struct Cyclic {
    weights: Box<[u32]>,
    cycle: Cycle,
}

impl Cyclic {
    /// `weights` of every backend, and `order`: the schedule, as backend indices.
    pub(crate) fn new(weights: Box<[u32]>, order: Vec<u32>) -> Self {
        Self {
            weights,
            cycle: Cycle::new(order),
        }
    }

    pub(crate) fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// The next backend of the schedule that is eligible (weight above zero, not overloaded).
    #[inline]
    pub(crate) fn pick(&self, _flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        self.cycle
            .next(|i| eligible(self.weights[i], states.get(i)))
    }

    /// Length of one full cycle.
    #[cfg(test)]
    pub(crate) fn cycle_len(&self) -> usize {
        self.cycle.len()
    }
}

#[derive(Debug)]
pub(crate) struct Cycle {
    /// Backend indices in schedule order.
    order: Box<[u32]>,
    cursor: AtomicUsize,
}

impl Cycle {
    pub(crate) fn new(order: Vec<u32>) -> Self {
        Self {
            order: order.into_boxed_slice(),
            cursor: AtomicUsize::new(0),
        }
    }

    /// Length of one full cycle.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    /// The next eligible backend in schedule order, or `None` when no entry is eligible.
    #[inline]
    pub(crate) fn next(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.order.len();
        if len == 0 {
            return None;
        }
        let t = self.cursor.fetch_add(1, Ordering::Relaxed);
        let start = t % len;
        let mut pos = start;
        for d in 0..len {
            let idx = self.order[pos] as usize;
            if eligible(idx) {
                if d > 0 {
                    let _ = self.cursor.compare_exchange(
                        t.wrapping_add(1),
                        t.wrapping_add(1 + d),
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                return Some(idx);
            }
            pos += 1;
            if pos == len {
                pos = 0;
            }
        }
        // Nothing eligible: give the position back, as IPVS leaves its cursor where it was.
        let _ = self.cursor.compare_exchange(
            t.wrapping_add(1),
            t,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        None
    }
}
