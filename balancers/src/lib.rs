//! IPVS-style schedulers for ringlb, as pure synchronous code.
//!
//! This crate owns the choice of a backend for a new connection or UDP flow: the nine IPVS
//! schedulers (`rr`, `wrr`, `lc`, `wlc`, `sh`, `dh`, `sed`, `nq`, `mh`, each in its own module and
//! following `net/netfilter/ipvs/ip_vs_<name>.c` rule for rule) and ClientIP session
//! [`Affinity`]. A [`Scheduler`] is built off the hot path from a backend list
//! ([`Scheduler::build`] precomputes every table); [`Scheduler::pick`] is cheap (O(1) for
//! rr/wrr/sh/dh/mh, one pass for lc/wlc/sed/nq), never allocates, never blocks and never does
//! I/O. Node-wide load counters live in [`BackendState`], shared by every worker and carried
//! across table swaps by the table builder.
//!
//! It must never do async, I/O or `unsafe`.
//!
//! # Eligibility
//!
//! As in IPVS, a backend may take a new connection only if its weight is above zero and it is
//! not overloaded ([`BackendState::is_overloaded`], driven by [`BackendSpec::max_connections`]).
//! Weight 0 means *quiesced*: existing connections continue, no new ones. When no backend is
//! eligible, `pick` returns `None`. Ties between equally loaded backends keep the earlier one in
//! list order.
//!
//! # Active and inactive connections
//!
//! `lc`, `wlc`, `sed` and `nq` read the counters of [`BackendState`]. ringlb counts them the way
//! IPVS's TCP state table does (only `ESTABLISHED` is active):
//!
//! | proxied flow | counted as | API |
//! |---|---|---|
//! | TCP, connect to the backend in progress | inactive (IPVS `SYN_RECV`) | [`BackendState::connecting`] |
//! | TCP, connect succeeded, both directions open | **active** | [`ConnectionGuard::set_active`], or [`BackendState::connect`] directly |
//! | TCP, one direction finished (EOF read, `shutdown(Write)` forwarded: half-closed) | inactive (IPVS `FIN_WAIT`/`CLOSE_WAIT`) | [`ConnectionGuard::set_inactive`] |
//! | TCP, closed both ways or reset | not counted | drop the [`ConnectionGuard`] |
//! | UDP flow, for its whole life | inactive (IPVS counts UDP as inactive) | [`BackendState::udp_flow`] |
//!
//! The overhead `lc`/`wlc` minimise is `active * 256 + inactive`; `sed`/`nq` use `active + 1`.
//! Counts are per node: every worker shares the same [`BackendState`], but other nodes' counts
//! are not seen.
#![forbid(unsafe_code)]

mod affinity;
mod cycle;
mod dh;
mod hash;
mod least;
mod mh;
pub mod outlier;
mod rr;
mod sh;
pub mod slow_start;
mod state;
mod wrr;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;

use least::Cost;

pub use affinity::{
    Affinity, AffinityError, DEFAULT_AFFINITY_CAPACITY, DEFAULT_AFFINITY_TIMEOUT_SECS,
    MAX_AFFINITY_TIMEOUT_SECS,
};
pub use cycle::Cyclic;
pub use dh::DestinationHashing;
pub use least::LeastLoad;
pub use mh::{Maglev, DEFAULT_MH_TABLE_SIZE, MH_TABLE_SIZES};
pub use rr::RoundRobin;
pub use sh::{SourceHashing, HASH_TABLE_SIZE};
pub use slow_start::SlowStart;
pub use state::{BackendState, ConnectionGuard};
pub use wrr::{WeightedRoundRobin, MAX_WRR_CYCLE};

/// Largest backend weight accepted (ipvsadm's range is 0..=65535). It keeps the `u64`
/// cross-multiplications of `wlc`/`sed`/`nq` free of overflow.
pub const MAX_WEIGHT: u32 = 65_535;

/// Which scheduling algorithm a service uses, by its IPVS name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    /// Round robin: circular over eligible backends; weight only switches a backend on or off.
    #[default]
    Rr,
    /// Weighted round robin, interleaved by gcd and max weight.
    Wrr,
    /// Least connection: least `active * 256 + inactive`.
    Lc,
    /// Weighted least connection: least `(active * 256 + inactive) / weight`.
    Wlc,
    /// Source hashing: 256-bucket table keyed on the client address (and port with `sh_port`).
    Sh,
    /// Destination hashing: 256-bucket table keyed on the destination address.
    Dh,
    /// Shortest expected delay: least `(active + 1) / weight`.
    Sed,
    /// Never queue: an idle backend first, else as `sed`.
    Nq,
    /// Maglev hashing keyed on the client address (and port with `mh_port`).
    Mh,
}

impl SchedulerKind {
    /// Every kind, in documentation order.
    pub const ALL: &'static [SchedulerKind] = &[
        SchedulerKind::Rr,
        SchedulerKind::Wrr,
        SchedulerKind::Lc,
        SchedulerKind::Wlc,
        SchedulerKind::Sh,
        SchedulerKind::Dh,
        SchedulerKind::Sed,
        SchedulerKind::Nq,
        SchedulerKind::Mh,
    ];

    /// The IPVS short name (`rr`, `wrr`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SchedulerKind::Rr => "rr",
            SchedulerKind::Wrr => "wrr",
            SchedulerKind::Lc => "lc",
            SchedulerKind::Wlc => "wlc",
            SchedulerKind::Sh => "sh",
            SchedulerKind::Dh => "dh",
            SchedulerKind::Sed => "sed",
            SchedulerKind::Nq => "nq",
            SchedulerKind::Mh => "mh",
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
#[error("unknown scheduler {0:?} (expected one of: rr, wrr, lc, wlc, sh, dh, sed, nq, mh)")]
pub struct UnknownScheduler(pub String);

/// The static description of one backend, as the scheduler sees it.
///
/// Build it with [`BackendSpec::new`] and the `with_*` methods; fields may be added later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    /// Relative weight, `0..=`[`MAX_WEIGHT`]; 0 means quiesced (no new connections).
    pub weight: u32,
    /// The last non-zero weight (IPVS `last_weight`), used only by `mh` to lay out its table,
    /// so that quiescing a backend (weight 0) does not move other clients. Equal to `weight`
    /// unless the backend was quiesced with [`BackendSpec::quiesced`].
    pub last_weight: u32,
    /// Connection limit (IPVS upper threshold); `None` or `Some(0)`: no limit. The data plane
    /// applies it through [`BackendState::new`] / [`BackendState::set_max_connections`].
    pub max_connections: Option<u32>,
    /// The backend's address: `mh` derives its Maglev permutation from it (IPVS hashes the
    /// dest address and port), so `mh` placement survives reordering and removals.
    pub addr: Option<SocketAddr>,
}

impl BackendSpec {
    /// A backend with `weight` (and `last_weight = weight`), no limit and no address.
    pub const fn new(weight: u32) -> Self {
        Self {
            weight,
            last_weight: weight,
            max_connections: None,
            addr: None,
        }
    }

    /// Sets the connection limit.
    pub const fn with_max_connections(mut self, max_connections: Option<u32>) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// Sets the backend address (used by `mh`).
    pub const fn with_addr(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// The same backend quiesced: weight 0, `last_weight` kept (IPVS graceful termination).
    pub const fn quiesced(mut self) -> Self {
        if self.weight > 0 {
            self.last_weight = self.weight;
        }
        self.weight = 0;
        self
    }
}

impl Default for BackendSpec {
    /// Weight 1, IPVS's default.
    fn default() -> Self {
        Self::new(1)
    }
}

/// The scheduler choice of a service with its flags (IPVS `--sched-flags`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SchedulerConfig {
    /// The algorithm.
    pub kind: SchedulerKind,
    /// `sh-fallback`: when the hashed backend is unavailable, walk to the next available one
    /// instead of returning none.
    pub sh_fallback: bool,
    /// `sh-port`: hash the client port too.
    pub sh_port: bool,
    /// `mh-fallback`: as `sh_fallback`, for `mh`.
    pub mh_fallback: bool,
    /// `mh-port`: hash the client port too, for `mh`.
    pub mh_port: bool,
    /// `mh` table size: one of [`MH_TABLE_SIZES`]; default [`DEFAULT_MH_TABLE_SIZE`].
    pub mh_table_size: u32,
}

impl SchedulerConfig {
    /// The flags that are on, by their IPVS names (`sh-fallback`, `sh-port`, `mh-fallback`,
    /// `mh-port`), in that order.
    pub fn flag_names(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.sh_fallback, "sh-fallback"),
            (self.sh_port, "sh-port"),
            (self.mh_fallback, "mh-fallback"),
            (self.mh_port, "mh-port"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
    }

    /// `kind` with every flag off and the default `mh` table size.
    pub const fn new(kind: SchedulerKind) -> Self {
        Self {
            kind,
            sh_fallback: false,
            sh_port: false,
            mh_fallback: false,
            mh_port: false,
            mh_table_size: DEFAULT_MH_TABLE_SIZE,
        }
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self::new(SchedulerKind::default())
    }
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
    /// A weight above [`MAX_WEIGHT`].
    #[error("backend {index}: weight {weight} is above the maximum {MAX_WEIGHT}")]
    WeightTooLarge {
        /// Index of the backend in the list.
        index: usize,
        /// The weight given.
        weight: u32,
    },
    /// `mh` table size not in [`MH_TABLE_SIZES`].
    #[error("mh table size {0} is not one of {MH_TABLE_SIZES:?}")]
    MhTableSize(u32),
    /// More backends than the `mh` table has slots (the kernel's `-EINVAL`).
    #[error("{count} backends do not fit an mh table of {max} slots")]
    TooManyBackends {
        /// Backends given.
        count: usize,
        /// Table size.
        max: usize,
    },
    /// The `wrr` cycle (Σ weight / gcd) is longer than [`MAX_WRR_CYCLE`].
    #[error("wrr cycle of {len} entries is longer than {MAX_WRR_CYCLE}; use smaller or more even weights")]
    WrrCycleTooLong {
        /// Σ weight / gcd.
        len: u64,
    },
}

/// A built scheduler: closed set of algorithms, static dispatch.
#[derive(Debug)]
pub enum Scheduler {
    /// `rr`
    Rr(RoundRobin),
    /// `wrr`
    Wrr(WeightedRoundRobin),
    /// `lc`
    Lc(LeastLoad),
    /// `wlc`
    Wlc(LeastLoad),
    /// `sh`
    Sh(SourceHashing),
    /// `dh`
    Dh(DestinationHashing),
    /// `sed`
    Sed(LeastLoad),
    /// `nq`
    Nq(LeastLoad),
    /// `mh`
    Mh(Maglev),
}

/// IPVS eligibility: weight above zero, not overloaded and not down; a missing state is not
/// eligible.
#[inline]
pub(crate) fn eligible(weight: u32, state: Option<&Arc<BackendState>>) -> bool {
    weight > 0 && state.is_some_and(|s| !s.snapshot().overloaded())
}

impl Scheduler {
    /// Builds the scheduler for `backends` (in list order; indices returned by [`Self::pick`]
    /// refer to this order). Every table is computed here, off the hot path.
    pub fn build(config: &SchedulerConfig, backends: &[BackendSpec]) -> Result<Self, BuildError> {
        if backends.is_empty() {
            return Err(BuildError::NoBackends);
        }
        if let Some((index, b)) = backends
            .iter()
            .enumerate()
            .find(|(_, b)| b.weight.max(b.last_weight) > MAX_WEIGHT)
        {
            return Err(BuildError::WeightTooLarge {
                index,
                weight: b.weight.max(b.last_weight),
            });
        }
        Ok(match config.kind {
            SchedulerKind::Rr => Scheduler::Rr(RoundRobin::new(backends)),
            SchedulerKind::Wrr => Scheduler::Wrr(WeightedRoundRobin::new(backends)?),
            SchedulerKind::Lc => Scheduler::Lc(LeastLoad::new(backends, Cost::Lc)),
            SchedulerKind::Wlc => Scheduler::Wlc(LeastLoad::new(backends, Cost::Wlc)),
            SchedulerKind::Sh => Scheduler::Sh(SourceHashing::new(
                backends,
                config.sh_fallback,
                config.sh_port,
            )),
            SchedulerKind::Dh => Scheduler::Dh(DestinationHashing::new(backends)),
            SchedulerKind::Sed => Scheduler::Sed(LeastLoad::new(backends, Cost::Sed)),
            SchedulerKind::Nq => Scheduler::Nq(LeastLoad::new(backends, Cost::Nq)),
            SchedulerKind::Mh => Scheduler::Mh(Maglev::new(
                backends,
                config.mh_table_size,
                config.mh_fallback,
                config.mh_port,
            )?),
        })
    }

    /// The algorithm of this scheduler.
    pub fn kind(&self) -> SchedulerKind {
        match self {
            Scheduler::Rr(_) => SchedulerKind::Rr,
            Scheduler::Wrr(_) => SchedulerKind::Wrr,
            Scheduler::Lc(_) => SchedulerKind::Lc,
            Scheduler::Wlc(_) => SchedulerKind::Wlc,
            Scheduler::Sh(_) => SchedulerKind::Sh,
            Scheduler::Dh(_) => SchedulerKind::Dh,
            Scheduler::Sed(_) => SchedulerKind::Sed,
            Scheduler::Nq(_) => SchedulerKind::Nq,
            Scheduler::Mh(_) => SchedulerKind::Mh,
        }
    }

    /// Number of backends the scheduler was built for.
    pub fn len(&self) -> usize {
        self.weights().len()
    }

    /// Always `false`: [`Self::build`] refuses an empty backend list.
    pub fn is_empty(&self) -> bool {
        self.weights().is_empty()
    }

    /// Picks the backend for a new connection or flow, or `None` when no backend is eligible
    /// (or, for `sh`/`dh`/`mh` without fallback, when the hashed backend is unavailable).
    ///
    /// `states` is aligned with the backend list given to [`Self::build`]; a backend without a
    /// state is treated as unavailable. Never allocates.
    #[inline]
    pub fn pick(&self, flow: &Flow, states: &[Arc<BackendState>]) -> Option<usize> {
        debug_assert_eq!(
            states.len(),
            self.len(),
            "states must align with the backends"
        );
        match self {
            Scheduler::Rr(s) => s.pick(flow, states),
            Scheduler::Wrr(s) => s.pick(flow, states),
            Scheduler::Lc(s) => s.pick(flow, states),
            Scheduler::Wlc(s) => s.pick(flow, states),
            Scheduler::Sh(s) => s.pick(flow, states),
            Scheduler::Dh(s) => s.pick(flow, states),
            Scheduler::Sed(s) => s.pick(flow, states),
            Scheduler::Nq(s) => s.pick(flow, states),
            Scheduler::Mh(s) => s.pick(flow, states),
        }
    }

    /// The backend to try after `failed` could not be connected to: the next eligible one in
    /// list order, never `failed` itself. `None` when there is no other eligible backend.
    pub fn next_after(&self, failed: usize, states: &[Arc<BackendState>]) -> Option<usize> {
        let n = self.len();
        (1..n)
            .map(|step| (failed + step) % n)
            .find(|&i| self.is_eligible(i, states))
    }

    /// Whether backend `i` may take a new connection now (weight > 0 and not overloaded).
    pub fn is_eligible(&self, i: usize, states: &[Arc<BackendState>]) -> bool {
        self.weights()
            .get(i)
            .is_some_and(|&w| eligible(w, states.get(i)))
    }

    /// The weights the scheduler was built with, in backend order.
    pub fn weights(&self) -> &[u32] {
        match self {
            Scheduler::Rr(s) => s.weights(),
            Scheduler::Wrr(s) => s.weights(),
            Scheduler::Lc(s) => s.weights(),
            Scheduler::Wlc(s) => s.weights(),
            Scheduler::Sh(s) => s.weights(),
            Scheduler::Dh(s) => s.weights(),
            Scheduler::Sed(s) => s.weights(),
            Scheduler::Nq(s) => s.weights(),
            Scheduler::Mh(s) => s.weights(),
        }
    }
}
