//! IPVS-style schedulers for ringlb, as pure synchronous code.
//!
//! This crate owns the choice of a backend for a new connection or UDP flow. A [`Scheduler`] is
//! built off the hot path from a backend list ([`Scheduler::build`]); [`Scheduler::pick`] is cheap,
//! never allocates and never does I/O. Node-wide load counters live in [`BackendState`], shared
//! by every worker and carried across table swaps by the table builder.
//!
//! It must never do async, I/O or `unsafe`.
#![forbid(unsafe_code)]

mod rr;
mod state;

use std::net::SocketAddr;

pub use rr::RoundRobin;
pub use state::{BackendState, ConnectionGuard};

/// Which scheduling algorithm a service uses, by its IPVS name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// Round robin: circular over eligible backends; weight only switches a backend on or off.
    #[default]
    Rr,
}

impl SchedulerKind {
    /// Every kind, in documentation order.
    pub const ALL: &'static [SchedulerKind] = &[SchedulerKind::Rr];

    /// The IPVS short name (`rr`, `wrr`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
        }
    }
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SchedulerKind {
    type Err = UnknownScheduler;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SchedulerKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownScheduler(s.to_owned()))
    }
}

/// A scheduler name that is not one of [`SchedulerKind::ALL`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown scheduler {0:?} (expected one of: rr)")]
pub struct UnknownScheduler(pub String);

/// The static description of one backend, as the scheduler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Relative weight; 0 means quiesced (no new connections).
    pub weight: u32,
}

/// The scheduler choice of a service with its flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// The algorithm.
    pub kind: SchedulerKind,
}

/// What the scheduler may key on for one new connection or flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The client's address.
    pub client: SocketAddr,
    /// The address the client connected to (the frontend, or the original destination).
    pub dest: SocketAddr,
}

/// Why a scheduler could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// No backend at all: a service with no backends must be handled before a scheduler exists.
    #[error("a scheduler needs at least one backend")]
    NoBackends,
}

/// A built scheduler: closed set of algorithms, static dispatch.
#[derive(Debug)]
pub enum Scheduler {
    /// `rr`
    Rr(RoundRobin),
}

impl Scheduler {
    /// Builds the scheduler for `backends` (in list order; indices returned by [`Self::pick`]
    /// refer to this order).
    pub fn build(config: &SchedulerConfig, backends: &[BackendSpec]) -> Result<Self, BuildError> {
        if backends.is_empty() {
            return Err(BuildError::NoBackends);
        }
        Ok(match config.kind {
            SchedulerKind::Rr => Scheduler::Rr(RoundRobin::new(backends)),
        })
    }

    /// Picks the backend for a new connection or flow, or `None` when no backend is eligible.
    ///
    /// `states` is aligned with the backend list given to [`Self::build`].
    #[inline]
    pub fn pick(&self, flow: &Flow, states: &[std::sync::Arc<BackendState>]) -> Option<usize> {
        match self {
            Scheduler::Rr(s) => s.pick(flow, states),
        }
    }

    /// The backend to try after `failed` could not be connected to: the next eligible one in
    /// list order, never `failed` itself. `None` when there is no other eligible backend.
    pub fn next_after(
        &self,
        failed: usize,
        states: &[std::sync::Arc<BackendState>],
    ) -> Option<usize> {
        let n = states.len();
        (1..n)
            .map(|step| (failed + step) % n)
            .find(|&i| self.eligible(i, states))
    }

    fn eligible(&self, i: usize, states: &[std::sync::Arc<BackendState>]) -> bool {
        match self {
            Scheduler::Rr(s) => s.eligible(i, states),
        }
    }
}
