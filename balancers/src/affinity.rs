//! ClientIP session affinity (Kubernetes `sessionAffinity: ClientIP`), as a pure shared table.
//!
//! One [`Affinity`] per service port. It maps a client IP to a backend id (an opaque `usize` the
//! caller chooses; it should name the endpoint identity, not a position that changes across
//! table swaps) with an expiry. Time is a parameter ([`Instant`]), so tests and simulations drive
//! it.
//!
//! Semantics:
//! - An entry recorded or used at `t` is valid while `now < t + timeout` and gone from
//!   `now >= t + timeout` (the timeout is honoured exactly, to the nanosecond of the instants
//!   passed in). Every new connection that uses the entry re-arms it, as kube-proxy's iptables
//!   `recent --set` does.
//! - An entry whose backend is no longer usable (the caller's `is_usable`) is **dropped, not
//!   refreshed** (kubernetes#110302), and the caller picks anew.
//!
//! Concurrency: `SHARDS` independent `Mutex<HashMap>` shards, chosen by a hash of the client IP.
//! A lookup or insert locks one shard for O(1) work; [`Affinity::resolve`] holds that shard lock
//! across the caller's (cheap, non-blocking) pick so two racing first connections of one client
//! end on the same backend. A poisoned shard is used as is (entries are plain data).
//!
//! Memory: expired entries are reclaimed by an amortised sweep of a shard, run on insert when
//! the shard has grown to twice its size after the previous sweep and its earliest expiry has
//! passed. Each shard also has a hard capacity (`capacity / SHARDS`, rounded up): when a shard
//! is full after reclaiming, a **new** client is served without being recorded (no affinity)
//! rather than evicting a live entry: clients that already have a session keep it, and a flood
//! of new source addresses cannot push them out.

use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Kubernetes' default ClientIP timeout (3 h).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// Kubernetes' maximum ClientIP timeout (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;
/// Default number of entries an [`Affinity`] keeps at most.
pub const DEFAULT_AFFINITY_CAPACITY: usize = 65_536;

const SHARDS: usize = 16;
/// A shard is not swept before it holds this many entries.
const MIN_SWEEP_LEN: usize = 64;

/// Why an [`Affinity`] could not be created.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AffinityError {
    /// Timeout outside `1..=86400` seconds (Kubernetes validation).
    #[error("affinity timeout {0} s is outside 1..={MAX_AFFINITY_TIMEOUT_SECS} s")]
    Timeout(u32),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    backend: usize,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<IpAddr, Entry>,
    /// No entry expires before this (a lower bound; `None` when empty).
    earliest: Option<Instant>,
    /// Sweep again when the shard holds this many entries.
    sweep_at: usize,
}

impl Shard {
    fn sweep(&mut self, now: Instant) {
        self.map.retain(|_, e| e.expires > now);
        self.earliest = self.map.values().map(|e| e.expires).min();
        self.sweep_at = (self.map.len() * 2).max(MIN_SWEEP_LEN);
    }

    /// Reclaims expired entries if that is due (amortised) or forced by a full shard.
    fn maybe_sweep(&mut self, now: Instant, cap: usize) {
        let due = self.map.len() >= self.sweep_at.max(MIN_SWEEP_LEN) || self.map.len() >= cap;
        if due && self.earliest.is_some_and(|t| t <= now) {
            self.sweep(now);
        }
    }

    fn insert(
        &mut self,
        client: IpAddr,
        backend: usize,
        expires: Instant,
        now: Instant,
        cap: usize,
    ) {
        if let Some(e) = self.map.get_mut(&client) {
            *e = Entry { backend, expires };
        } else {
            let len = self.map.len();
            if len >= cap || len >= self.sweep_at.max(MIN_SWEEP_LEN) {
                self.maybe_sweep(now, cap);
                if self.map.len() >= cap {
                    return; // full of live sessions: serve the newcomer unpinned
                }
            }
            self.map.insert(client, Entry { backend, expires });
        }
        self.earliest = Some(self.earliest.map_or(expires, |t| t.min(expires)));
    }
}

/// ClientIP session affinity for one service (see the module docs).
#[derive(Debug)]
pub struct Affinity {
    timeout: Duration,
    shard_cap: usize,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl Affinity {
    /// An empty table with `timeout_secs` (1..=86400) and at most about `capacity` entries.
    pub fn new(timeout_secs: u32, capacity: NonZeroUsize) -> Result<Self, AffinityError> {
        if !(1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&timeout_secs) {
            return Err(AffinityError::Timeout(timeout_secs));
        }
        Ok(Self {
            timeout: Duration::from_secs(u64::from(timeout_secs)),
            shard_cap: capacity.get().div_ceil(SHARDS),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    /// The session timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The most entries this table holds (`SHARDS` × per-shard capacity).
    pub fn capacity(&self) -> usize {
        self.shard_cap * SHARDS
    }

    fn shard(&self, client: &IpAddr) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(client) as usize) % SHARDS;
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lookup_locked(
        &self,
        shard: &mut Shard,
        client: IpAddr,
        now: Instant,
        is_usable: impl FnOnce(usize) -> bool,
    ) -> Option<usize> {
        let MapEntry::Occupied(mut o) = shard.map.entry(client) else {
            return None;
        };
        let e = o.get_mut();
        if now >= e.expires || !is_usable(e.backend) {
            o.remove();
            return None;
        }
        e.expires = now + self.timeout;
        Some(e.backend)
    }

    /// The backend `client` is pinned to, if the entry is alive and `is_usable(backend)`;
    /// re-arms the entry on a hit, drops it when expired or unusable.
    pub fn lookup(
        &self,
        client: IpAddr,
        now: Instant,
        is_usable: impl FnOnce(usize) -> bool,
    ) -> Option<usize> {
        let mut shard = self.shard(&client);
        self.lookup_locked(&mut shard, client, now, is_usable)
    }

    /// Pins `client` to `backend` from `now` for the timeout (overwrites an existing entry).
    pub fn record(&self, client: IpAddr, backend: usize, now: Instant) {
        let expires = now + self.timeout;
        self.shard(&client)
            .insert(client, backend, expires, now, self.shard_cap);
    }

    /// Affinity first, else `pick` and record its answer, atomically for this client: the
    /// data-plane entry point. `pick` runs under a shard lock and must be cheap and
    /// non-blocking (a [`Scheduler::pick`](crate::Scheduler::pick) call).
    pub fn resolve(
        &self,
        client: IpAddr,
        now: Instant,
        is_usable: impl FnOnce(usize) -> bool,
        pick: impl FnOnce() -> Option<usize>,
    ) -> Option<usize> {
        let mut shard = self.shard(&client);
        if let Some(b) = self.lookup_locked(&mut shard, client, now, is_usable) {
            return Some(b);
        }
        let b = pick()?;
        shard.insert(client, b, now + self.timeout, now, self.shard_cap);
        Some(b)
    }

    /// A new table with the same timeout and capacity holding the live entries of this one,
    /// each moved to backend `remap(old)`; entries whose backend maps to `None` are dropped.
    ///
    /// The table builder calls this when a service's backend list changes, so that clients stay
    /// pinned to the same backend (by identity) although its index moved.
    pub fn remapped(&self, now: Instant, remap: impl Fn(usize) -> Option<usize>) -> Affinity {
        let next = Affinity {
            timeout: self.timeout,
            shard_cap: self.shard_cap,
            hasher: self.hasher.clone(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        };
        for (old, new) in self.shards.iter().zip(next.shards.iter()) {
            let old = old.lock().unwrap_or_else(PoisonError::into_inner);
            let mut new = new.lock().unwrap_or_else(PoisonError::into_inner);
            for (client, e) in old.map.iter().filter(|(_, e)| e.expires > now) {
                if let Some(backend) = remap(e.backend) {
                    new.insert(*client, backend, e.expires, now, self.shard_cap);
                }
            }
        }
        next
    }

    /// Removes the entry of `client`.
    pub fn forget(&self, client: IpAddr) {
        self.shard(&client).map.remove(&client);
    }

    /// Reclaims every expired entry now (the amortised sweep makes calling this optional).
    pub fn sweep(&self, now: Instant) {
        for s in self.shards.iter() {
            s.lock().unwrap_or_else(PoisonError::into_inner).sweep(now);
        }
    }

    /// Entries currently stored, expired or not.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len())
            .sum()
    }

    /// Whether no entry is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Default for Affinity {
    /// Timeout [`DEFAULT_AFFINITY_TIMEOUT_SECS`], capacity [`DEFAULT_AFFINITY_CAPACITY`].
    fn default() -> Self {
        Self::new(
            DEFAULT_AFFINITY_TIMEOUT_SECS,
            NonZeroUsize::new(DEFAULT_AFFINITY_CAPACITY).expect("non-zero constant"),
        )
        .expect("default timeout is valid")
    }
}
