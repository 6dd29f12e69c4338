//! Idle timeouts of one worker's connections, kept in one ordered map instead of one timer per
//! connection.
//!
//! A monoio timer future is 640 bytes, and every open connection would carry one for its whole
//! life. Here a connection registers an [`Activity`] record (its last-activity time, its idle
//! timeout and a way to close it); the worker's [`IdleTimers::run`] task sleeps until the
//! earliest deadline, closes connections that really were idle that long, and re-files the
//! others at `last activity + timeout`. So the relay only stores a timestamp per read, and the
//! map is touched once per connection and at most once per idle period.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use monoio::time::Instant;

use crate::alarm::Alarm;

/// How the timer map closes a connection.
pub(crate) trait Close {
    /// Stops both directions (both peers see end of stream): nothing was cut short.
    fn close(&self);

    /// Resets both sides (both peers see a reset, never a clean end of stream): bytes in
    /// flight are cut short, and the peers must be able to tell.
    fn abort(&self);
}

/// One connection's activity, shared by its relay (which updates `last`) and the timers.
pub(crate) struct Activity<C> {
    last: Cell<Instant>,
    idle: Duration,
    closer: C,
    expired: Cell<bool>,
    /// Reset by the `close_at` deadline rather than closed by idleness.
    drained: Cell<bool>,
    /// Reset by [`IdleTimers::abort_all`] (the end of a shutdown's drain).
    cut: Cell<bool>,
    /// A deadline set from outside (a removed backend's drain), closing even a busy connection.
    close_at: Cell<Option<Instant>>,
    key: Cell<Key>,
}

type Key = (Instant, u64);

impl<C: Close> Activity<C> {
    pub(crate) fn new(idle: Duration, closer: C) -> Self {
        let now = Instant::now();
        Self {
            last: Cell::new(now),
            idle,
            closer,
            expired: Cell::new(false),
            drained: Cell::new(false),
            cut: Cell::new(false),
            close_at: Cell::new(None),
            key: Cell::new((now, 0)),
        }
    }

    /// Records that bytes moved now.
    #[inline]
    pub(crate) fn touch(&self) {
        self.last.set(Instant::now());
    }

    /// What closes the connection (and whatever else the relay keeps with it).
    pub(crate) fn closer(&self) -> &C {
        &self.closer
    }

    /// Whether the idle timeout (or a drain deadline) closed the connection.
    pub(crate) fn expired(&self) -> bool {
        self.expired.get()
    }

    /// Whether it was reset by a deadline from [`IdleTimers::close_matching`] (a drain), not
    /// closed by its idle timeout.
    pub(crate) fn drained(&self) -> bool {
        self.drained.get()
    }

    /// Whether it was reset by [`IdleTimers::abort_all`].
    pub(crate) fn cut(&self) -> bool {
        self.cut.get()
    }

    /// The time this connection is closed at, active or not.
    fn due(&self) -> Instant {
        let idle_due = self.last.get() + self.idle;
        self.close_at.get().map_or(idle_due, |t| t.min(idle_due))
    }
}

/// The idle deadlines of one worker's connections.
pub(crate) struct IdleTimers<C> {
    entries: RefCell<BTreeMap<Key, Rc<Activity<C>>>>,
    next_id: Cell<u64>,
    alarm: Alarm,
}

impl<C: Close> IdleTimers<C> {
    pub(crate) fn new() -> Self {
        Self {
            entries: RefCell::new(BTreeMap::new()),
            next_id: Cell::new(0),
            alarm: Alarm::default(),
        }
    }

    /// Starts watching `activity`; call [`Self::remove`] when the connection ends.
    pub(crate) fn insert(&self, activity: &Rc<Activity<C>>) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let key = (activity.last.get() + activity.idle, id);
        activity.key.set(key);
        self.entries.borrow_mut().insert(key, Rc::clone(activity));
        self.alarm.wake_if_before(key.0);
    }

    /// Stops watching `activity` (a no-op when it already expired).
    pub(crate) fn remove(&self, activity: &Activity<C>) {
        self.entries.borrow_mut().remove(&activity.key.get());
    }

    /// Resets the connections whose closer matches `pred` at `at` at the latest, however busy
    /// they are (a removed backend's drain deadline).
    pub(crate) fn close_matching(&self, at: Instant, pred: impl Fn(&C) -> bool) {
        let mut entries = self.entries.borrow_mut();
        let keys: Vec<Key> = entries
            .iter()
            .filter(|(_, a)| pred(&a.closer))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(activity) = entries.remove(&key) else {
                continue;
            };
            activity
                .close_at
                .set(Some(activity.close_at.get().map_or(at, |t| t.min(at))));
            let new_key = (activity.due(), key.1);
            activity.key.set(new_key);
            entries.insert(new_key, activity);
        }
        drop(entries);
        self.alarm.wake_if_before(at);
    }

    /// Resets every connection being watched now (the drain deadline of a shutdown); returns
    /// how many. Their relays see the reset, end and report it.
    pub(crate) fn abort_all(&self) -> usize {
        let entries = std::mem::take(&mut *self.entries.borrow_mut());
        for activity in entries.values() {
            activity.cut.set(true);
            activity.closer.abort();
        }
        entries.len()
    }

    /// Connections being watched.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// Closes every connection idle for its whole timeout by `now`; re-files the others.
    fn expire(&self, now: Instant) {
        let mut entries = self.entries.borrow_mut();
        while let Some(entry) = entries.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), activity) = entry.remove_entry();
            let due = activity.due();
            if due <= now {
                activity.expired.set(true);
                let drained = activity.close_at.get().is_some_and(|t| t <= now);
                activity.drained.set(drained);
                if drained {
                    activity.closer.abort();
                } else {
                    activity.closer.close();
                }
            } else {
                activity.key.set((due, id));
                entries.insert((due, id), activity);
            }
        }
    }

    /// The sweeper: runs for the life of the worker.
    ///
    /// # Cancel safety
    /// Dropping it stops idle timeouts; no connection state is lost.
    pub(crate) async fn run(&self) {
        loop {
            self.expire(Instant::now());
            let next = self.entries.borrow().keys().next().map(|k| k.0);
            self.alarm.sleep_until(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Flag(Rc<Cell<u32>>);

    impl Close for Flag {
        fn close(&self) {
            self.0.set(self.0.get() + 1);
        }

        fn abort(&self) {
            self.0.set(self.0.get() + 100);
        }
    }

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn closes_only_what_stayed_idle_and_forgets_removed_connections() {
        runtime().block_on(async {
            let timers = Rc::new(IdleTimers::new());
            let sweeper = monoio::spawn({
                let t = Rc::clone(&timers);
                async move { t.run().await }
            });
            let quiet = Flag::default();
            let busy = Flag::default();
            let gone = Flag::default();
            let ms = Duration::from_millis;
            let a_quiet = Rc::new(Activity::new(ms(60), quiet.clone()));
            let a_busy = Rc::new(Activity::new(ms(60), busy.clone()));
            let a_gone = Rc::new(Activity::new(ms(30), gone.clone()));
            for a in [&a_quiet, &a_busy, &a_gone] {
                timers.insert(a);
            }
            timers.remove(&a_gone);
            let start = Instant::now();
            while start.elapsed() < ms(150) {
                a_busy.touch();
                monoio::time::sleep(ms(10)).await;
            }
            assert_eq!(quiet.0.get(), 1, "the quiet connection is closed once");
            assert!(a_quiet.expired());
            assert_eq!(busy.0.get(), 0, "activity keeps a connection open");
            assert_eq!(gone.0.get(), 0, "a removed connection is never closed");
            assert_eq!(timers.len(), 1, "only the busy connection is still watched");
            drop(sweeper);
        });
    }

    #[test]
    fn a_drain_deadline_closes_even_a_busy_connection_and_tells_it_from_idleness() {
        runtime().block_on(async {
            let ms = Duration::from_millis;
            let timers = Rc::new(IdleTimers::new());
            let sweeper = monoio::spawn({
                let t = Rc::clone(&timers);
                async move { t.run().await }
            });
            let busy = Flag::default();
            let a_busy = Rc::new(Activity::new(Duration::from_secs(3600), busy.clone()));
            let a_quiet = Rc::new(Activity::new(ms(20), Flag::default()));
            timers.insert(&a_busy);
            timers.insert(&a_quiet);
            timers.close_matching(Instant::now() + ms(10), |f| Rc::ptr_eq(&f.0, &busy.0));
            let start = Instant::now();
            while !(a_busy.expired() && a_quiet.expired()) {
                assert!(start.elapsed() < Duration::from_secs(5), "never closed");
                a_busy.touch();
                monoio::time::sleep(ms(5)).await;
            }
            assert_eq!(busy.0.get(), 100, "reset (aborted), not closed");
            assert!(a_busy.drained(), "closed by the drain deadline");
            assert!(!a_quiet.drained(), "closed by its idle timeout");
            drop(sweeper);
        });
    }

    #[test]
    fn abort_all_resets_every_connection_once_and_forgets_them() {
        let timers: IdleTimers<Flag> = IdleTimers::new();
        let (a, b) = (Flag::default(), Flag::default());
        let a_a = Rc::new(Activity::new(Duration::from_secs(60), a.clone()));
        let a_b = Rc::new(Activity::new(Duration::from_secs(60), b.clone()));
        timers.insert(&a_a);
        timers.insert(&a_b);
        assert_eq!(timers.abort_all(), 2);
        assert_eq!((a.0.get(), b.0.get()), (100, 100), "each reset once");
        assert!(a_a.cut() && a_b.cut());
        assert!(!a_a.drained() && !a_a.expired());
        assert_eq!(timers.len(), 0);
        timers.remove(&a_a);
        assert_eq!(timers.abort_all(), 0);
    }

    #[test]
    fn an_earlier_deadline_wakes_the_sleeping_sweeper() {
        runtime().block_on(async {
            let timers = Rc::new(IdleTimers::new());
            let long = Rc::new(Activity::new(Duration::from_secs(3600), Flag::default()));
            timers.insert(&long);
            let sweeper = monoio::spawn({
                let t = Rc::clone(&timers);
                async move { t.run().await }
            });
            monoio::time::sleep(Duration::from_millis(5)).await; // sweeper now sleeps for an hour
            let short = Flag::default();
            let a_short = Rc::new(Activity::new(Duration::from_millis(20), short.clone()));
            timers.insert(&a_short);
            let start = Instant::now();
            while short.0.get() == 0 {
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "short timeout never fired"
                );
                monoio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(start.elapsed() >= Duration::from_millis(20));
            drop(sweeper);
        });
    }
}
