//! The data plane's share of the process's open-file limit.
//!
//! A relayed TCP connection holds two descriptors (client and backend), a UDP flow one (its
//! upstream socket). Left alone, the data plane would take every descriptor the process may
//! open, and then the admin API and the health ports fail to accept exactly when an operator
//! needs them. [`FdBudget`] caps what the data plane opens at the limit minus what the rest of
//! the process holds minus a reserve for the control plane; the binary sets the cap
//! ([`FdBudget::set_cap`]) at start and whenever its listeners change.
//!
//! At the cap, a new TCP connection is accepted and reset at once (the client learns at once
//! and can retry elsewhere, as Envoy does at its connection limit, instead of waiting in the
//! accept queue), and a datagram that would open a UDP flow is dropped and counted as a
//! refused flow. One shared atomic per connection or flow opened and closed, never per byte or
//! datagram.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// How many descriptors the data plane may hold, and how many it holds.
#[derive(Debug)]
pub struct FdBudget {
    cap: AtomicUsize,
    used: AtomicUsize,
    refused_tcp: AtomicU64,
    refused_udp: AtomicU64,
}

impl Default for FdBudget {
    fn default() -> Self {
        FdBudget::new(usize::MAX)
    }
}

impl FdBudget {
    /// A budget of `cap` descriptors (`usize::MAX`: no cap).
    pub fn new(cap: usize) -> FdBudget {
        FdBudget {
            cap: AtomicUsize::new(cap),
            used: AtomicUsize::new(0),
            refused_tcp: AtomicU64::new(0),
            refused_udp: AtomicU64::new(0),
        }
    }

    /// Sets the cap; what is already open stays open.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Relaxed);
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap.load(Relaxed)
    }

    /// Descriptors held by open connections and flows now.
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// TCP connections reset at accept because the budget was used up.
    pub fn refused_tcp(&self) -> u64 {
        self.refused_tcp.load(Relaxed)
    }

    /// UDP flows refused because the budget (or the process's limit) was used up.
    pub fn refused_udp(&self) -> u64 {
        self.refused_udp.load(Relaxed)
    }

    /// Takes `n` descriptors, or `None` when that would pass the cap.
    pub(crate) fn take(self: &Arc<Self>, n: usize) -> Option<Fds> {
        let before = self.used.fetch_add(n, Relaxed);
        if before.saturating_add(n) > self.cap.load(Relaxed) {
            self.used.fetch_sub(n, Relaxed);
            return None;
        }
        Some(Fds {
            budget: Arc::clone(self),
            n,
        })
    }

    pub(crate) fn count_refused_tcp(&self) {
        self.refused_tcp.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_refused_udp(&self) {
        self.refused_udp.fetch_add(1, Relaxed);
    }
}

/// Descriptors taken from a [`FdBudget`], given back on drop.
#[derive(Debug)]
pub(crate) struct Fds {
    budget: Arc<FdBudget>,
    n: usize,
}

impl Drop for Fds {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.n, Relaxed);
    }
}

/// Whether an error means the process or the system ran out of descriptors or memory for
/// sockets (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`).
pub fn is_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The soft open-file limit of this process (`RLIMIT_NOFILE`).
pub fn nofile_limit() -> std::io::Result<u64> {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map(|(soft, _)| soft)
}

/// Descriptors this process has open now (the entries of `/proc/self/fd`, less the one the
/// listing itself uses).
pub fn open_descriptors() -> std::io::Result<usize> {
    let listed = std::fs::read_dir("/proc/self/fd")?.count();
    Ok(listed.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn takes_up_to_the_cap_and_gives_back_on_drop() {
        let budget = Arc::new(FdBudget::new(5));
        let a = budget.take(2).expect("2 of 5");
        let b = budget.take(2).expect("4 of 5");
        assert!(budget.take(2).is_none(), "6 would pass the cap");
        assert_eq!(budget.used(), 4, "a refusal takes nothing");
        let c = budget.take(1).expect("5 of 5");
        drop(a);
        assert_eq!(budget.used(), 3);
        budget.set_cap(2);
        assert!(budget.take(1).is_none(), "a lower cap refuses new ones");
        drop((b, c));
        assert_eq!(budget.used(), 0);
        assert!(budget.take(2).is_some());
    }

    #[test]
    fn exhaustion_is_told_from_one_connection_s_trouble() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(is_exhaustion(&std::io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EPROTO, libc::EPERM, libc::EINTR] {
            assert!(!is_exhaustion(&std::io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_exhaustion(&std::io::Error::other("no errno")));
    }

    #[test]
    fn the_process_limit_and_its_open_descriptors_are_read() {
        let limit = nofile_limit().unwrap();
        let open = open_descriptors().unwrap();
        assert!(open >= 3 && (open as u64) < limit, "{open} open of {limit}");
        let extra = std::fs::File::open("/proc/self/status").unwrap();
        assert!(open_descriptors().unwrap() > open);
        drop(extra);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the order of takes, drops and cap changes, what is held never passes the
        /// cap in force when it was taken, and everything comes back.
        #[test]
        fn never_more_than_the_cap(ops in proptest::collection::vec((0usize..4, 1usize..3), 1..64)) {
            let budget = Arc::new(FdBudget::new(6));
            let mut held = Vec::new();
            for (op, n) in ops {
                match op {
                    0 | 1 => {
                        let before = budget.used();
                        match budget.take(n) {
                            Some(fds) => {
                                prop_assert!(before + n <= budget.cap());
                                held.push(fds);
                            }
                            None => prop_assert!(before + n > budget.cap()),
                        }
                    }
                    2 => { held.pop(); }
                    _ => budget.set_cap(n * 3),
                }
                prop_assert_eq!(budget.used(), held.iter().map(|f| f.n).sum::<usize>());
            }
            held.clear();
            prop_assert_eq!(budget.used(), 0);
        }
    }
}
