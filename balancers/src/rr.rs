//! `rr`: round robin, as `net/netfilter/ipvs/ip_vs_rr.c`.
//!
//! The cursor walks the backend list circularly from the last pick and returns the next backend
//! with `weight > 0` that is not overloaded. Weight is only an on/off switch.

use std::ops::Deref;

use crate::cycle::Cyclic;
use crate::BackendSpec;

/// Circular over the backends whose weight is above zero; weight is otherwise ignored.
///
/// Concurrency: a lock-free shared cursor (see the `cycle` module docs in the source).
#[derive(Debug)]
pub struct RoundRobin(Cyclic);

impl RoundRobin {
    pub(crate) fn new(backends: &[BackendSpec]) -> Self {
        let order = backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.weight > 0)
            .map(|(i, _)| i as u32)
            .collect();
        Self(Cyclic::new(
            backends.iter().map(|b| b.weight).collect(),
            order,
        ))
    }
}

impl Deref for RoundRobin {
    type Target = Cyclic;

    fn deref(&self) -> &Cyclic {
        &self.0
    }
}
