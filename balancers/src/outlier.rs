//! Outlier detection's node-wide counts of one backend, as Envoy's consecutive-failure
//! detection at L4: failures in a row (a connect that failed, a connection reset before its
//! first byte back), how many times it was ejected, and until when; and the counters of its
//! ejections and of its health checks' down marks. The flags that take it out of the
//! schedulers are in [`crate::BackendState`]'s word.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds on the process's monotonic clock (from its first call): what ejection times
/// are kept in.
pub fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One backend's outlier counts.
#[derive(Debug, Default)]
pub struct Outlier {
    failures: AtomicU32,
    ejections: AtomicU32,
    /// When the current (or last) ejection ends, in [`monotonic_ms`].
    until: AtomicU64,
    /// Every ejection, and every time health checks marked the backend down, ever.
    ejected_total: AtomicU64,
    down_total: AtomicU64,
    /// An ejection happened that the control plane has not reported yet.
    unreported: AtomicBool,
}

impl Outlier {
    /// A connection that worked: the failure run starts over.
    #[inline]
    pub fn success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A failure: the failures in a row now.
    #[inline]
    pub fn failure(&self) -> u32 {
        self.failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1)
    }

    /// Ejections so far (since the count last started over).
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// When the current or last ejection ends.
    pub fn until(&self) -> u64 {
        self.until.load(Ordering::Relaxed)
    }

    /// Forgets earlier ejections (a backend that stayed in long enough).
    pub fn forgive(&self) {
        self.ejections.store(0, Ordering::Relaxed);
    }

    pub(crate) fn ejected(&self, until: u64) {
        self.until.store(until, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.ejected_total.fetch_add(1, Ordering::Relaxed);
        self.unreported.store(true, Ordering::Relaxed);
    }

    /// Whether an ejection happened since the last call: the control plane, which reports
    /// state changes off the workers, asks.
    pub fn take_unreported(&self) -> bool {
        self.unreported.load(Ordering::Relaxed) && self.unreported.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn marked_down(&self) {
        self.down_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Ejections ever (a counter).
    pub fn ejected_total(&self) -> u64 {
        self.ejected_total.load(Ordering::Relaxed)
    }

    /// Times health checks marked the backend down, ever (a counter).
    pub fn down_total(&self) -> u64 {
        self.down_total.load(Ordering::Relaxed)
    }

    /// Whether the current ejection ends by `now`.
    pub fn ejection_over(&self, now: u64) -> bool {
        now >= self.until.load(Ordering::Relaxed)
    }

    pub(crate) fn readmitted(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}
