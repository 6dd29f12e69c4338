//! Which connection makes room for a new one: the per-port cap on concurrent connections and
//! its shedding rule, as pure code (time is passed in).
//!
//! A connection is *busy* while a request of it is being answered, else *idle*: one still
//! sending its request head, or waiting between keep-alive requests, is idle. At the cap a new
//! connection takes the place of the one idle the longest (idle since it was accepted or since
//! its last answer, whichever is later; bytes of an unfinished head do not count, so a client
//! that dribbles never looks fresh). Only when every connection is busy is the new one refused.
//! So a port full of slow or parked clients still admits a probe, and an answer in progress is
//! never cut.

use std::collections::HashMap;
use std::time::Instant;

/// What [`Slots::admit`] decided for a new connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<T> {
    /// Below the cap: admitted.
    Admitted,
    /// At the cap: admitted in place of the connection with this id, which must now be closed
    /// (its handle is handed back; it no longer counts).
    Shed(u64, T),
    /// Every connection is busy: the new one is refused (its handle is dropped).
    Refused,
}

#[derive(Debug)]
struct Slot<T> {
    busy: bool,
    /// Accepted, or last answered.
    since: Instant,
    handle: T,
}

/// The open connections of one port, each with what closes it (`T`), at most `cap` of them.
#[derive(Debug)]
pub struct Slots<T> {
    cap: usize,
    open: HashMap<u64, Slot<T>>,
}

impl<T> Slots<T> {
    /// No connection yet; at most `cap` (at least 1) at once.
    pub fn new(cap: usize) -> Slots<T> {
        Slots {
            cap: cap.max(1),
            open: HashMap::new(),
        }
    }

    /// Connections counted now.
    #[cfg(test)]
    fn count(&self) -> usize {
        self.open.len()
    }

    /// A new connection `id`, accepted at `now`, closed through `handle`.
    pub fn admit(&mut self, id: u64, now: Instant, handle: T) -> Admit<T> {
        debug_assert!(
            !self.open.contains_key(&id),
            "connection {id} admitted twice"
        );
        let mut outcome = Admit::Admitted;
        if self.open.len() >= self.cap {
            let oldest = self
                .open
                .iter()
                .filter(|(_, slot)| !slot.busy)
                .min_by_key(|(id, slot)| (slot.since, **id))
                .map(|(id, _)| *id);
            let Some(victim) = oldest else {
                return Admit::Refused;
            };
            let shed = self.open.remove(&victim).expect("the victim is open");
            outcome = Admit::Shed(victim, shed.handle);
        }
        self.open.insert(
            id,
            Slot {
                busy: false,
                since: now,
                handle,
            },
        );
        outcome
    }

    /// Connection `id` is answering a request (a shed one is no longer counted: ignored).
    pub fn busy(&mut self, id: u64) {
        if let Some(slot) = self.open.get_mut(&id) {
            slot.busy = true;
        }
    }

    /// Connection `id` finished an answer at `now`.
    pub fn idle(&mut self, id: u64, now: Instant) {
        if let Some(slot) = self.open.get_mut(&id) {
            slot.busy = false;
            slot.since = now;
        }
    }

    /// Connection `id` ended (nothing happens when it was shed).
    pub fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn below_the_cap_every_connection_is_admitted() {
        let t = Instant::now();
        let mut slots = Slots::new(3);
        for id in 0..3 {
            assert_eq!(slots.admit(id, at(t, id), ()), Admit::Admitted);
        }
        assert_eq!(slots.count(), 3);
    }

    #[test]
    fn at_the_cap_the_connection_idle_the_longest_is_shed() {
        let t = Instant::now();
        let mut slots = Slots::new(3);
        for id in 0..3 {
            slots.admit(id, at(t, id), id * 10);
        }
        // 0 was accepted first, but answered a request since: 1 has been idle the longest.
        slots.busy(0);
        slots.idle(0, at(t, 5));
        assert_eq!(slots.admit(3, at(t, 6), 30), Admit::Shed(1, 10));
        assert_eq!(slots.admit(4, at(t, 7), 40), Admit::Shed(2, 20));
        assert_eq!(slots.admit(5, at(t, 8), 50), Admit::Shed(0, 0));
        assert_eq!(slots.count(), 3);
    }

    #[test]
    fn a_busy_connection_is_never_shed_and_when_all_are_busy_the_new_one_is_refused() {
        let t = Instant::now();
        let mut slots = Slots::new(2);
        slots.admit(0, at(t, 0), ());
        slots.admit(1, at(t, 1), ());
        slots.busy(0);
        assert_eq!(slots.admit(2, at(t, 2), ()), Admit::Shed(1, ()));
        slots.busy(2);
        assert_eq!(slots.admit(3, at(t, 3), ()), Admit::Refused);
        assert_eq!(slots.count(), 2);
        // An answer ends: that connection can make room again.
        slots.idle(0, at(t, 4));
        assert_eq!(slots.admit(3, at(t, 5), ()), Admit::Shed(0, ()));
    }

    #[test]
    fn a_shed_connection_that_ends_or_answers_later_changes_nothing() {
        let t = Instant::now();
        let mut slots = Slots::new(1);
        slots.admit(0, at(t, 0), ());
        assert_eq!(slots.admit(1, at(t, 1), ()), Admit::Shed(0, ()));
        slots.busy(0);
        slots.idle(0, at(t, 2));
        slots.remove(0);
        assert_eq!(slots.count(), 1);
        assert_eq!(slots.admit(2, at(t, 3), ()), Admit::Shed(1, ()));
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Admit,
        Busy(usize),
        Idle(usize),
        Remove(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Admit),
            2 => (0usize..64).prop_map(Op::Busy),
            2 => (0usize..64).prop_map(Op::Idle),
            1 => (0usize..64).prop_map(Op::Remove),
        ]
    }

    /// A model of the open connections: id, busy, since (ms).
    type Model = Vec<(u64, bool, u64)>;

    fn check_admit(model: &mut Model, cap: usize, id: u64, now: u64, got: Admit<u64>) {
        let idle_oldest = model
            .iter()
            .filter(|c| !c.1)
            .min_by_key(|c| (c.2, c.0))
            .map(|c| c.0);
        match got {
            Admit::Admitted => assert!(model.len() < cap, "admitted over the cap"),
            Admit::Shed(victim, handle) => {
                assert_eq!(model.len(), cap, "shed below the cap");
                assert_eq!(handle, victim, "the victim's own handle");
                assert_eq!(Some(victim), idle_oldest, "not the one idle the longest");
                model.retain(|c| c.0 != victim);
            }
            Admit::Refused => {
                assert_eq!(model.len(), cap, "refused below the cap");
                assert!(
                    idle_oldest.is_none(),
                    "refused while {idle_oldest:?} was idle"
                );
                return;
            }
        }
        model.push((id, false, now));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// The cap is never exceeded, a busy connection is never shed, the one shed is the
        /// one idle the longest, and only a port of busy connections refuses.
        #[test]
        fn the_cap_holds_and_only_the_longest_idle_connection_is_shed(
            cap in 1usize..6,
            ops in proptest::collection::vec(op(), 1..200),
        ) {
            let base = Instant::now();
            let mut slots = Slots::new(cap);
            let mut model: Model = Vec::new();
            for (step, op) in ops.into_iter().enumerate() {
                let now = step as u64;
                match op {
                    Op::Admit => {
                        let id = now;
                        let got = slots.admit(id, at(base, now), id);
                        check_admit(&mut model, cap, id, now, got);
                    }
                    Op::Busy(k) | Op::Idle(k) | Op::Remove(k) => {
                        if model.is_empty() {
                            continue;
                        }
                        let i = k % model.len();
                        let id = model[i].0;
                        match op {
                            Op::Busy(_) => {
                                slots.busy(id);
                                model[i].1 = true;
                            }
                            Op::Idle(_) => {
                                slots.idle(id, at(base, now));
                                model[i] = (id, false, now);
                            }
                            _ => {
                                slots.remove(id);
                                model.remove(i);
                            }
                        }
                    }
                }
                prop_assert!(slots.count() <= cap);
                prop_assert_eq!(slots.count(), model.len());
            }
        }
    }
}
