//! Node-wide per-backend state shared by all workers: connection counters, the overload flag
//! and the health flag.
//!
//! See the crate docs for what "active" and "inactive" mean for TCP and UDP.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Live counters of one backend, shared by every worker of the node.
///
/// The table builder keeps one `BackendState` per backend identity and carries it across table
/// swaps, so counts (and the overload flag) stay right when the table changes under open
/// connections. The two counters (active up to 2^31 - 1, inactive up to 2^32 - 1) and the
/// overload flag share one relaxed `AtomicU64`, so a scheduler reads a consistent snapshot of a
/// backend with a single load and a connection moves between active and inactive atomically;
/// like IPVS, no lock is taken.
///
/// # Overload (IPVS `u_threshold` / `l_threshold`)
///
/// With `max_connections = Some(u)` (u > 0) the backend becomes *overloaded* when a new
/// connection brings `active + inactive` to `u` or more (checked when a connection is counted,
/// like `ip_vs_bind_dest`), and stops being overloaded when a released connection brings the
/// total below 3/4 of `u` (`total * 4 < u * 3`, like `ip_vs_unbind_dest` with `l_threshold == 0`).
/// An overloaded backend is not eligible for new connections. `None` or `Some(0)` means no limit
/// (IPVS: threshold 0). Under concurrency the flag may lag a racing release by one connection;
/// it never stays set once the backend drains to zero.
///
/// # Down (health checks)
///
/// A health checker marks a backend down ([`BackendState::set_down`]); until it marks it up
/// again the backend is not eligible for new connections, exactly as if it were overloaded
/// (every scheduler skips it the same way), and its open connections are left alone.
///
/// # Ejected (outlier detection)
///
/// The data plane ejects a backend after consecutive failures ([`BackendState::outlier`],
/// [`BackendState::eject`]) and the control plane readmits it when its time is up; while
/// ejected it is skipped as when down. The two flags are apart: a passing health check does
/// not end an ejection.
#[derive(Debug, Default)]
pub struct BackendState {
    /// Packed so that the least-connection schedulers read everything with one load:
    /// bit 63 overloaded, bits 32..63 active (31 bits), bit 31 down, bit 30 ejected, bits
    /// 0..30 inactive.
    word: AtomicU64,
    /// Consecutive failures and ejections.
    outlier: crate::outlier::Outlier,
    /// Upper threshold; 0 = no limit.
    upper: AtomicU32,
    /// When the backend last came back (marked up, readmitted, added to a serving service),
    /// in [`crate::outlier::monotonic_ms`] plus one; 0 when it never did: where its slow
    /// start counts from.
    back_at: AtomicU64,
}

const OVERLOADED: u64 = 1 << 63;
const ACTIVE_ONE: u64 = 1 << 32;
const ACTIVE_MASK: u64 = (OVERLOADED - 1) & !(ACTIVE_ONE - 1);
const DOWN: u64 = 1 << 31;
const EJECTED: u64 = 1 << 30;
const INACTIVE_MASK: u64 = EJECTED - 1;

/// One consistent snapshot of a [`BackendState`] (a single atomic load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot(u64);

impl Snapshot {
    #[inline]
    pub(crate) fn active(self) -> u32 {
        ((self.0 & ACTIVE_MASK) >> 32) as u32
    }

    #[inline]
    pub(crate) fn inactive(self) -> u32 {
        (self.0 & INACTIVE_MASK) as u32
    }

    /// Overloaded, down or ejected: not eligible for new connections.
    #[inline]
    pub(crate) fn overloaded(self) -> bool {
        self.0 & (OVERLOADED | DOWN | EJECTED) != 0
    }

    #[inline]
    fn over_limit(self) -> bool {
        self.0 & OVERLOADED != 0
    }

    /// `active * 256 + inactive`, or `u64::MAX` when overloaded or `weight` is 0: the `lc`
    /// key, computed without branches (a real overhead is below 2^40).
    #[inline]
    pub(crate) fn lc_key(self, weight: u32) -> u64 {
        let overhead = ((self.0 & ACTIVE_MASK) >> 24) + (self.0 & INACTIVE_MASK);
        overhead | self.overloaded_mask() | u64::from(weight == 0).wrapping_neg()
    }

    /// All ones when overloaded, down or ejected, else 0 (bits 63, 31 and 30 each spread by
    /// an arithmetic shift, no branch).
    #[inline]
    pub(crate) fn overloaded_mask(self) -> u64 {
        let over = (self.0 as i64) >> 63;
        let down = ((self.0 << 32) as i64) >> 63;
        let ejected = ((self.0 << 33) as i64) >> 63;
        (over | down | ejected) as u64
    }

    /// `active * 256 + inactive`.
    #[inline]
    pub(crate) fn overhead(self) -> u64 {
        (u64::from(self.active()) << 8) + u64::from(self.inactive())
    }

    fn total(self) -> u64 {
        u64::from(self.active()) + u64::from(self.inactive())
    }
}

impl BackendState {
    /// A fresh state with the given connection limit (see the type docs).
    pub fn new(max_connections: Option<u32>) -> Self {
        Self {
            upper: AtomicU32::new(max_connections.unwrap_or(0)),
            ..Self::default()
        }
    }

    #[inline]
    pub(crate) fn snapshot(&self) -> Snapshot {
        Snapshot(self.word.load(Ordering::Relaxed))
    }

    /// Connections counted as active (see the crate docs).
    #[inline]
    pub fn active(&self) -> u32 {
        self.snapshot().active()
    }

    /// Connections counted as inactive (IPVS `inactconns`: connecting, half-closed, UDP).
    #[inline]
    pub fn inactive(&self) -> u32 {
        self.snapshot().inactive()
    }

    /// IPVS connection overhead: `active * 256 + inactive` (`ip_vs_dest_conn_overhead`).
    #[inline]
    pub fn overhead(&self) -> u64 {
        self.snapshot().overhead()
    }

    /// Whether the backend is over its connection limit (IPVS `IP_VS_DEST_F_OVERLOAD`).
    #[inline]
    pub fn is_overloaded(&self) -> bool {
        self.snapshot().over_limit()
    }

    /// Whether a health checker marked the backend down.
    #[inline]
    pub fn is_down(&self) -> bool {
        self.word.load(Ordering::Relaxed) & DOWN != 0
    }

    /// Whether outlier detection ejected the backend.
    #[inline]
    pub fn is_ejected(&self) -> bool {
        self.word.load(Ordering::Relaxed) & EJECTED != 0
    }

    /// Its consecutive failures and ejections.
    pub fn outlier(&self) -> &crate::outlier::Outlier {
        &self.outlier
    }

    /// Ejects the backend until `until` (see [`crate::outlier::monotonic_ms`]); `false` when
    /// it was ejected already (another worker was first).
    pub fn eject(&self, until: u64) -> bool {
        if self.word.fetch_or(EJECTED, Ordering::Relaxed) & EJECTED != 0 {
            return false;
        }
        self.outlier.ejected(until);
        true
    }

    /// Readmits the backend if its ejection ended by `now`; `true` when it did.
    pub fn readmit(&self, now: u64) -> bool {
        if !self.is_ejected() || !self.outlier.ejection_over(now) {
            return false;
        }
        self.outlier.readmitted();
        let readmitted = self.word.fetch_and(!EJECTED, Ordering::Relaxed) & EJECTED != 0;
        if readmitted {
            self.came_back(now);
        }
        readmitted
    }

    /// Notes that the backend came back into service at `now` (see
    /// [`crate::outlier::monotonic_ms`]): its slow start, if its service has one, counts
    /// from here.
    pub fn came_back(&self, now: u64) {
        self.back_at.store(now.saturating_add(1), Ordering::Relaxed);
    }

    /// When the backend last came back (see [`BackendState::came_back`]), if it ever did.
    pub fn back_since(&self) -> Option<u64> {
        match self.back_at.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t - 1),
        }
    }

    /// Marks the backend down (no new connections) or up again; returns whether that
    /// changed anything.
    pub fn set_down(&self, down: bool) -> bool {
        let before = if down {
            self.word.fetch_or(DOWN, Ordering::Relaxed)
        } else {
            self.word.fetch_and(!DOWN, Ordering::Relaxed)
        };
        let changed = (before & DOWN != 0) != down;
        if changed && down {
            self.outlier.marked_down();
        } else if changed {
            self.came_back(crate::outlier::monotonic_ms());
        }
        changed
    }

    /// The connection limit (IPVS upper threshold), `None` when unlimited.
    pub fn max_connections(&self) -> Option<u32> {
        match self.upper.load(Ordering::Relaxed) {
            0 => None,
            u => Some(u),
        }
    }

    /// Changes the connection limit, e.g. when a new table carries this state over.
    ///
    /// As `__ip_vs_update_dest`: removing the limit or raising it clears the overload flag;
    /// lowering it takes effect at the next counted connection.
    pub fn set_max_connections(&self, max_connections: Option<u32>) {
        let new = max_connections.unwrap_or(0);
        let old = self.upper.swap(new, Ordering::Relaxed);
        if new == 0 || new > old {
            self.word.fetch_and(!OVERLOADED, Ordering::Relaxed);
        }
    }

    /// Counts one new TCP connection whose connect to the backend **succeeded**: it starts
    /// active. Dropping the guard releases it.
    #[inline]
    pub fn connect(self: &Arc<Self>) -> ConnectionGuard {
        self.open(true)
    }

    /// Counts one new TCP connection whose connect to the backend is still **in progress**
    /// (IPVS `SYN_RECV`): it starts inactive; call [`ConnectionGuard::set_active`] once the
    /// connect succeeded.
    #[inline]
    pub fn connecting(self: &Arc<Self>) -> ConnectionGuard {
        self.open(false)
    }

    /// Counts one new UDP flow. IPVS counts UDP connections as inactive, so the guard starts
    /// (and normally stays) inactive.
    #[inline]
    pub fn udp_flow(self: &Arc<Self>) -> ConnectionGuard {
        self.open(false)
    }

    /// Test hook: sets the counters and the flags directly.
    #[cfg(test)]
    pub(crate) fn set_for_test(&self, active: u32, inactive: u32, overloaded: bool, down: bool) {
        let o = if overloaded { OVERLOADED } else { 0 } | if down { DOWN } else { 0 };
        let w = o | (u64::from(active & 0x7fff_ffff) << 32) | (u64::from(inactive) & INACTIVE_MASK);
        self.word.store(w, Ordering::Relaxed);
    }

    fn open(self: &Arc<Self>, active: bool) -> ConnectionGuard {
        let inc = if active { ACTIVE_ONE } else { 1 };
        let now = Snapshot(
            self.word
                .fetch_add(inc, Ordering::Relaxed)
                .wrapping_add(inc),
        );
        let upper = self.upper.load(Ordering::Relaxed);
        if upper != 0 && now.total() >= u64::from(upper) && !now.over_limit() {
            self.word.fetch_or(OVERLOADED, Ordering::Relaxed);
        }
        ConnectionGuard {
            state: Arc::clone(self),
            active,
        }
    }

    fn release(&self, active: bool) {
        let dec = if active { ACTIVE_ONE } else { 1 };
        let prev = Snapshot(self.word.fetch_sub(dec, Ordering::Relaxed));
        debug_assert!(
            if active {
                prev.active() > 0
            } else {
                prev.inactive() > 0
            },
            "connection count underflow"
        );
        let now = Snapshot(prev.0.wrapping_sub(dec));
        let upper = u64::from(self.upper.load(Ordering::Relaxed));
        // `ip_vs_unbind_dest` with l_threshold == 0: below 3/4 of the upper threshold.
        if now.over_limit() && (upper == 0 || now.total() * 4 < upper * 3) {
            self.word.fetch_and(!OVERLOADED, Ordering::Relaxed);
        }
    }
}

/// Holds one counted connection on a [`BackendState`]; dropping it releases the count.
///
/// The guard knows whether it is currently counted as active or inactive, so the data plane can
/// move it with [`set_inactive`](Self::set_inactive) (first FIN / half-close) and
/// [`set_active`](Self::set_active) (connect succeeded) without double counting.
#[derive(Debug)]
pub struct ConnectionGuard {
    state: Arc<BackendState>,
    active: bool,
}

impl ConnectionGuard {
    /// Whether this connection is currently counted as active.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The backend state this guard counts on.
    #[inline]
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }

    /// Moves the connection from active to inactive (idempotent). Call when one direction has
    /// finished (EOF/half-close), like IPVS leaving `ESTABLISHED`.
    #[inline]
    pub fn set_inactive(&mut self) {
        if self.active {
            // One atomic step: inactive + 1, active - 1 (active >= 1, so no borrow).
            self.state
                .word
                .fetch_add(1u64.wrapping_sub(ACTIVE_ONE), Ordering::Relaxed);
            self.active = false;
        }
    }

    /// Moves the connection from inactive to active (idempotent). Call when the connect to the
    /// backend succeeded, like IPVS entering `ESTABLISHED`.
    #[inline]
    pub fn set_active(&mut self) {
        if !self.active {
            // One atomic step: active + 1, inactive - 1 (inactive >= 1, so no borrow).
            self.state
                .word
                .fetch_add(ACTIVE_ONE.wrapping_sub(1), Ordering::Relaxed);
            self.active = true;
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.state.release(self.active);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_moves_between_counters_and_releases() {
        let s = Arc::new(BackendState::default());
        let mut g = s.connecting();
        assert_eq!((s.active(), s.inactive()), (0, 1));
        g.set_active();
        g.set_active();
        assert_eq!((s.active(), s.inactive()), (1, 0));
        g.set_inactive();
        g.set_inactive();
        assert_eq!((s.active(), s.inactive()), (0, 1));
        assert_eq!(s.overhead(), 1);
        let a = s.connect();
        assert!(a.is_active());
        assert_eq!(s.overhead(), 257);
        drop(g);
        drop(a);
        assert_eq!((s.active(), s.inactive()), (0, 0));
        let u = s.udp_flow();
        assert!(!u.is_active());
        assert_eq!(s.inactive(), 1);
    }

    #[test]
    fn overload_hysteresis_is_upper_then_three_quarters() {
        let s = Arc::new(BackendState::new(Some(8)));
        let mut guards: Vec<_> = (0..7).map(|_| s.connect()).collect();
        assert!(!s.is_overloaded(), "7 < 8");
        guards.push(s.udp_flow());
        assert!(s.is_overloaded(), "active + inactive reached 8");
        // 8 -> 7 -> 6: 6*4 = 24 == 8*3, still overloaded; 5*4 = 20 < 24 clears.
        guards.pop();
        guards.pop();
        assert!(s.is_overloaded(), "6 is not below 3/4 of 8");
        guards.pop();
        assert!(!s.is_overloaded(), "5 is below 3/4 of 8");
        guards.push(s.connect());
        assert!(
            !s.is_overloaded(),
            "back at 6: flag only set at the upper threshold"
        );
    }

    #[test]
    fn raising_or_removing_the_limit_clears_overload() {
        let s = Arc::new(BackendState::new(Some(1)));
        let _g = s.connect();
        assert!(s.is_overloaded());
        s.set_max_connections(Some(1));
        assert!(s.is_overloaded(), "same limit keeps the flag");
        s.set_max_connections(Some(4));
        assert!(!s.is_overloaded());
        assert_eq!(s.max_connections(), Some(4));
        s.set_max_connections(Some(0));
        assert_eq!(s.max_connections(), None);
    }

    #[test]
    fn down_is_sticky_apart_from_the_counts_and_the_overload() {
        let s = Arc::new(BackendState::new(Some(2)));
        assert!(s.set_down(true), "up to down is a change");
        assert!(!s.set_down(true), "down again is not");
        let a = s.connect();
        let b = s.connect();
        assert!(s.is_down() && s.is_overloaded());
        drop(a);
        drop(b);
        assert!(s.is_down(), "releasing connections keeps it down");
        assert!(!s.is_overloaded(), "and clears the overload alone");
        assert_eq!((s.active(), s.inactive()), (0, 0));
        assert!(s.snapshot().overloaded(), "not eligible while down");
        assert_eq!(s.snapshot().lc_key(1), u64::MAX);
        assert!(s.set_down(false));
        assert!(!s.snapshot().overloaded());
        assert_eq!(s.snapshot().lc_key(1), 0);
    }

    #[test]
    fn an_ejection_is_apart_from_down_and_ends_only_when_readmitted_in_time() {
        let s = Arc::new(BackendState::new(None));
        assert_eq!((s.outlier().failure(), s.outlier().failure()), (1, 2));
        assert!(s.eject(1_000));
        assert!(
            !s.eject(2_000),
            "another worker ejecting it too changes nothing"
        );
        assert!(s.is_ejected() && s.snapshot().overloaded());
        assert_eq!(s.snapshot().lc_key(1), u64::MAX);
        assert!(s.set_down(true) && s.set_down(false));
        assert!(s.is_ejected(), "a passing health check does not readmit it");
        assert!(!s.readmit(999), "not before its time");
        assert!(s.readmit(1_000));
        assert!(!s.is_ejected() && !s.snapshot().overloaded());
        assert_eq!(s.outlier().failure(), 1, "the failure run started over");
        assert_eq!(s.outlier().ejections(), 1);
        let _c = s.connect();
        assert_eq!(
            (s.active(), s.inactive()),
            (1, 0),
            "the flags never touch the counts"
        );
    }
}
