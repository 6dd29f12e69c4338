//! The UDP flow table of one worker, as pure code: no sockets, no clock, no randomness.
//!
//! Time comes in as an argument and the hash seed at construction. The flow manager
//! (`manager.rs`) keeps it and decides what happens to flows; the I/O shell keeps the per-flow
//! payload (the connected upstream socket) in it. See `LIFECYCLE.md` beside this file.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What identifies a flow: the client's address and the local address it sent to (the
/// frontend's, or with a wildcard frontend the destination the client used), so replies go
/// back from exactly that address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub(crate) client: SocketAddr,
    pub(crate) local: SocketAddr,
}

/// A handle on a flow that stays safe after the flow ends: a slot and the slot's generation,
/// so a handle of an ended flow never reaches the flow that reuses its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct FlowId {
    slot: u32,
    generation: u32,
}

/// One live flow.
#[derive(Debug)]
pub(crate) struct Flow<T> {
    pub(crate) key: FlowKey,
    /// The backend the flow was given; it keeps it until the flow ends.
    pub(crate) backend: SocketAddr,
    /// Ends after this long without a datagram in either direction.
    pub(crate) idle: Duration,
    /// Last datagram in either direction.
    last: Instant,
    /// When its entry in the timers checks it (at or before `due`).
    check: Instant,
    /// What the shell keeps with the flow (its upstream socket).
    pub(crate) payload: T,
}

impl<T> Flow<T> {
    /// When the flow expires unless a datagram moves before.
    pub(crate) fn due(&self) -> Instant {
        self.last + self.idle
    }

    /// Time since the flow's last datagram.
    pub(crate) fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last)
    }
}

/// What [`FlowTable::lookup`] found.
pub(crate) enum Lookup<T> {
    /// A live flow, now marked active.
    Live(FlowId),
    /// The key's flow was idle for its whole timeout: it has ended, and the datagram opens a
    /// new one.
    Expired(Flow<T>),
    /// No flow.
    Missing,
}

/// Why a flow ended (see `LIFECYCLE.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    /// No datagram for the idle timeout.
    Idle,
    /// A table swap left its backend unusable for its frontend (removed, weight 0), or took
    /// the frontend out of the table.
    Unusable,
    /// Its backend refused it (ICMP unreachable on its socket).
    Refused,
    /// Its frontend socket closed on this worker.
    FrontendClosed,
    /// The worker stops.
    Stopped,
}

struct Slot<T> {
    generation: u32,
    flow: Option<Flow<T>>,
}

/// A `BuildHasher` from an injected seed: SipHash-1-3 (std's) keyed by writing the seed first.
/// The seed keeps clients from choosing colliding keys; tests pass a fixed one.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seeded(u64);

impl BuildHasher for Seeded {
    type Hasher = DefaultHasher;

    fn build_hasher(&self) -> DefaultHasher {
        let mut h = DefaultHasher::new();
        h.write_u64(self.0);
        h
    }
}

/// The flows of one worker, indexed by key, with their idle deadlines.
///
/// Idle expiry is lazy, as the TCP idle timers: a datagram only stores its time in the flow;
/// `timers` holds one check per flow, and a check that finds the flow active since is filed
/// again at `last + idle`. So a datagram costs one hash lookup and one store.
pub(crate) struct FlowTable<T> {
    index: HashMap<FlowKey, FlowId, Seeded>,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    timers: BTreeSet<(Instant, FlowId)>,
}

impl<T> FlowTable<T> {
    /// An empty table hashing with `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            index: HashMap::with_hasher(Seeded(seed)),
            slots: Vec::new(),
            free: Vec::new(),
            timers: BTreeSet::new(),
        }
    }

    /// Flows in the table.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// The flow of `key` for a datagram at `now`: marked active, or ended when its idle
    /// timeout already ran out (the sweeper had not come by yet; the timeout is exact).
    #[inline]
    pub(crate) fn lookup(&mut self, key: &FlowKey, now: Instant) -> Lookup<T> {
        let Some(&id) = self.index.get(key) else {
            return Lookup::Missing;
        };
        let due = match self.slots[id.slot as usize].flow.as_ref() {
            Some(flow) => flow.due(),
            None => return Lookup::Missing,
        };
        if due <= now {
            let flow = self.remove(id).expect("indexed flow is live");
            return Lookup::Expired(flow);
        }
        let flow = self.slots[id.slot as usize]
            .flow
            .as_mut()
            .expect("indexed flow is live");
        flow.last = flow.last.max(now);
        Lookup::Live(id)
    }

    /// Marks flow `id` active at `now` (a reply); `None` once the flow has ended.
    #[inline]
    pub(crate) fn touch(&mut self, id: FlowId, now: Instant) -> Option<&mut Flow<T>> {
        let flow = self.get_mut(id)?;
        flow.last = flow.last.max(now);
        Some(flow)
    }

    /// The live flow of `key`, without marking it active.
    #[cfg(test)]
    pub(crate) fn peek(&self, key: &FlowKey) -> Option<(FlowId, &Flow<T>)> {
        let &id = self.index.get(key)?;
        Some((id, self.slots[id.slot as usize].flow.as_ref()?))
    }

    /// The flow `id`, if it has not ended.
    pub(crate) fn get(&self, id: FlowId) -> Option<&Flow<T>> {
        let slot = self.slots.get(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.flow.as_ref()
    }

    /// The flow `id`, if it has not ended.
    pub(crate) fn get_mut(&mut self, id: FlowId) -> Option<&mut Flow<T>> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.flow.as_mut()
    }

    /// Opens a flow for `key` to `backend`. The key must not have a flow.
    pub(crate) fn insert(
        &mut self,
        key: FlowKey,
        backend: SocketAddr,
        idle: Duration,
        payload: T,
        now: Instant,
    ) -> FlowId {
        debug_assert!(!self.index.contains_key(&key), "a flow per key");
        let flow = Flow {
            key,
            backend,
            idle,
            last: now,
            check: now + idle,
            payload,
        };
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 flows");
                self.slots.push(Slot {
                    generation: 0,
                    flow: None,
                });
                slot
            }
        };
        let s = &mut self.slots[slot as usize];
        debug_assert!(s.flow.is_none(), "free slots are empty");
        s.flow = Some(flow);
        let id = FlowId {
            slot,
            generation: s.generation,
        };
        self.index.insert(key, id);
        self.timers.insert((now + idle, id));
        id
    }

    /// Ends flow `id` (a no-op returning `None` once it has ended).
    pub(crate) fn remove(&mut self, id: FlowId) -> Option<Flow<T>> {
        let flow = self.take(id)?;
        self.timers.remove(&(flow.check, id));
        Some(flow)
    }

    /// Takes the flow out of its slot and the index, leaving its timer entry (the callers
    /// remove it or are iterating the timers).
    fn take(&mut self, id: FlowId) -> Option<Flow<T>> {
        let slot = self.slots.get_mut(id.slot as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let flow = slot.flow.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.slot);
        let removed = self.index.remove(&flow.key);
        debug_assert_eq!(removed, Some(id), "index and slots agree");
        Some(flow)
    }

    /// The earliest time a flow may expire (a lower bound: the flow may have been active since).
    pub(crate) fn next_check(&self) -> Option<Instant> {
        self.timers.first().map(|&(t, _)| t)
    }

    /// Ends every flow idle for its whole timeout at `now`, appending them to `out`.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<(Flow<T>, End)>) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(flow) = self.get_mut(id) else {
                debug_assert!(false, "a timer entry outlived its flow");
                continue;
            };
            let due = flow.due();
            if due <= now {
                let flow = self.take(id).expect("checked above");
                out.push((flow, End::Idle));
            } else {
                // Active since the check was filed: check again when it can expire.
                flow.check = due;
                self.timers.insert((due, id));
            }
        }
        debug_assert_eq!(self.timers.len(), self.index.len(), "one timer per flow");
    }

    /// Ends every flow `keep` rejects, for `why`, appending them to `out`.
    pub(crate) fn retain(
        &mut self,
        mut keep: impl FnMut(&Flow<T>) -> bool,
        why: End,
        out: &mut Vec<(Flow<T>, End)>,
    ) {
        let ended: Vec<FlowId> = self
            .index
            .values()
            .copied()
            .filter(|&id| {
                self.slots[id.slot as usize]
                    .flow
                    .as_ref()
                    .is_some_and(|f| !keep(f))
            })
            .collect();
        for id in ended {
            if let Some(flow) = self.remove(id) {
                out.push((flow, why));
            }
        }
    }

    /// Every live flow (in no particular order).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Flow<T>> {
        self.index
            .values()
            .filter_map(|id| self.slots[id.slot as usize].flow.as_ref())
    }

    /// Ends every flow (the worker stops), appending them to `out`.
    pub(crate) fn clear(&mut self, out: &mut Vec<(Flow<T>, End)>) {
        let ids: Vec<FlowId> = self.index.values().copied().collect();
        for id in ids {
            if let Some(flow) = self.remove(id) {
                out.push((flow, End::Stopped));
            }
        }
    }

    /// Checks the table's invariants (tests and the simulation).
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let live = self.slots.iter().filter(|s| s.flow.is_some()).count();
        assert_eq!(live, self.index.len(), "every live slot is indexed");
        assert_eq!(self.timers.len(), self.index.len(), "one timer per flow");
        assert_eq!(
            live + self.free.len(),
            self.slots.len(),
            "slots are live or free"
        );
        for (key, id) in &self.index {
            let flow = self.slots[id.slot as usize]
                .flow
                .as_ref()
                .expect("indexed slot is live");
            assert_eq!(flow.key, *key, "the index points at the flow of its key");
            assert_eq!(self.slots[id.slot as usize].generation, id.generation);
        }
        for &(at, id) in &self.timers {
            let flow = self.slots[id.slot as usize]
                .flow
                .as_ref()
                .expect("timer of a live flow");
            assert_eq!(at, flow.check, "the flow knows its timer entry");
            assert!(
                at <= flow.due(),
                "a check is never later than the flow's due time"
            );
        }
    }
}
