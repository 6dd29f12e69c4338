//! Warnings about events that can repeat thousands of times a second (out of descriptors, a
//! budget used up): logged at most once per period, each saying how many events it stands for.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// How often a repeating warning is logged at most.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

/// One repeating warning, kept by one thread or task (plain cells: no atomics).
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    /// When the next warning may be logged (`None`: at once).
    next: Cell<Option<Instant>>,
    /// Events since the last warning logged.
    pending: Cell<u64>,
}

impl Throttle {
    /// At most one warning per `period`.
    pub const fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            next: Cell::new(None),
            pending: Cell::new(0),
        }
    }

    /// Counts one event at `now`; `Some(n)` when the warning is due, `n` being the events it
    /// stands for (this one included, and every one held back since the last warning).
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let pending = self.pending.get() + 1;
        if self.next.get().is_some_and(|next| now < next) {
            self.pending.set(pending);
            return None;
        }
        self.pending.set(0);
        self.next.set(Some(now + self.period));
        Some(pending)
    }

    /// Whether any event was counted yet.
    #[cfg(test)]
    pub(crate) fn hit_yet(&self) -> bool {
        self.next.get().is_some()
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(WARN_EVERY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_the_first_then_one_per_period_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(5));
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(t.hit(at(0)), Some(1), "the first one at once");
        for ms in 1..45 {
            assert_eq!(t.hit(at(ms * 100)), None, "held back at {ms}00 ms");
        }
        assert_eq!(t.hit(at(5_000)), Some(45), "44 held back, and this one");
        assert_eq!(t.hit(at(5_001)), None);
        assert_eq!(t.hit(at(60_000)), Some(2));
    }
}
