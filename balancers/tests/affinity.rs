//! ClientIP affinity: stickiness across threads, exact expiry, never an unusable backend,
//! bounded memory.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use balancers::{Affinity, AffinityError, DEFAULT_AFFINITY_TIMEOUT_SECS};

fn ip(k: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k))
}

fn cap(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

#[test]
fn timeout_is_validated_and_defaults_to_three_hours() {
    assert_eq!(
        Affinity::new(0, cap(8)).unwrap_err(),
        AffinityError::Timeout(0)
    );
    assert_eq!(
        Affinity::new(86_401, cap(8)).unwrap_err(),
        AffinityError::Timeout(86_401)
    );
    assert!(Affinity::new(1, cap(8)).is_ok());
    assert!(Affinity::new(86_400, cap(8)).is_ok());
    assert_eq!(
        Affinity::default().timeout(),
        Duration::from_secs(u64::from(DEFAULT_AFFINITY_TIMEOUT_SECS))
    );
}

#[test]
fn expiry_is_exactly_at_the_timeout_and_use_rearms() {
    let a = Affinity::new(10, cap(64)).unwrap();
    let t0 = Instant::now();
    let usable = |_| true;
    a.record(ip(1), 3, t0);
    let just_before = t0 + Duration::from_secs(10) - Duration::from_nanos(1);
    assert_eq!(
        a.lookup(ip(1), just_before, usable),
        Some(3),
        "alive until t0 + timeout"
    );
    // that hit re-armed the entry to just_before + 10 s
    let rearmed = just_before + Duration::from_secs(10);
    assert_eq!(
        a.lookup(ip(1), rearmed - Duration::from_nanos(1), usable),
        Some(3)
    );
    a.record(ip(2), 4, t0);
    assert_eq!(
        a.lookup(ip(2), t0 + Duration::from_secs(10), usable),
        None,
        "gone at exactly t0 + timeout"
    );
    assert_eq!(
        a.lookup(ip(2), t0, usable),
        None,
        "an expired entry is removed, not revived"
    );
}

#[test]
fn never_returns_an_unusable_backend_and_drops_the_entry() {
    let a = Affinity::new(100, cap(64)).unwrap();
    let t0 = Instant::now();
    a.record(ip(1), 2, t0);
    assert_eq!(a.lookup(ip(1), t0, |b| b != 2), None);
    assert_eq!(a.len(), 0, "dropped, not refreshed");
    // resolve: unusable entry → pick anew and re-pin
    a.record(ip(1), 2, t0);
    let got = a.resolve(ip(1), t0, |b| b != 2, || Some(5));
    assert_eq!(got, Some(5));
    assert_eq!(a.lookup(ip(1), t0, |_| true), Some(5));
    // no backend at all: nothing recorded
    assert_eq!(a.resolve(ip(9), t0, |_| true, || None), None);
    assert_eq!(a.lookup(ip(9), t0, |_| true), None);
}

#[test]
fn sticky_across_threads() {
    let a = Affinity::new(60, cap(10_000)).unwrap();
    let t0 = Instant::now();
    let next = AtomicUsize::new(0);
    // 4 threads resolve the same 200 clients concurrently; a "round robin" pick hands out a
    // different backend on every call, so only the table can make them agree.
    let results: Vec<Vec<usize>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    (0..200)
                        .map(|k| {
                            a.resolve(
                                ip(k),
                                t0,
                                |_| true,
                                || Some(next.fetch_add(1, Ordering::Relaxed) % 7),
                            )
                            .unwrap()
                        })
                        .collect()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in &results[1..] {
        assert_eq!(r, &results[0]);
    }
    assert_eq!(
        next.load(Ordering::Relaxed),
        200,
        "one pick per client, the rest hit the table"
    );
}

#[test]
fn memory_is_bounded_and_expired_entries_are_reclaimed() {
    let a = Affinity::new(5, cap(1_000)).unwrap();
    let t0 = Instant::now();
    for k in 0..50_000 {
        a.record(ip(k), 1, t0);
    }
    assert!(a.len() <= a.capacity(), "{} > {}", a.len(), a.capacity());
    assert!(
        a.len() >= 900,
        "fills up to about its capacity: {}",
        a.len()
    );
    // Full of live sessions: existing clients keep theirs, newcomers are not pinned.
    let pinned = (0..50_000)
        .find(|&k| a.lookup(ip(k), t0, |_| true).is_some())
        .unwrap();
    a.record(ip(1_000_000), 2, t0);
    assert_eq!(a.lookup(ip(pinned), t0, |_| true), Some(1));
    // After expiry, new inserts reclaim the old entries without an explicit sweep.
    let later = t0 + Duration::from_secs(5);
    for k in 100_000..100_500 {
        a.record(ip(k), 3, later);
    }
    assert!(a.len() <= 1_000);
    let fresh = (100_000..100_500)
        .filter(|&k| a.lookup(ip(k), later, |_| true) == Some(3))
        .count();
    assert_eq!(
        fresh, 500,
        "every new client fits once the expired ones are reclaimed"
    );
    a.sweep(later + Duration::from_secs(5));
    assert!(a.is_empty());
}

#[test]
fn remapped_keeps_clients_on_the_same_backend_identity() {
    let a = Affinity::new(60, cap(64)).unwrap();
    let t0 = Instant::now();
    // Backends [A, B, C]; clients pinned to A, B and C.
    for (k, b) in [(1, 0), (2, 1), (3, 2)] {
        a.record(ip(k), b, t0);
    }
    // New list [C, A]: B was removed, A moved to 1, C to 0.
    let moved = a.remapped(t0, |old| match old {
        0 => Some(1),
        2 => Some(0),
        _ => None,
    });
    let t1 = t0 + Duration::from_secs(1);
    assert_eq!(moved.lookup(ip(1), t1, |_| true), Some(1));
    assert_eq!(
        moved.lookup(ip(2), t1, |_| true),
        None,
        "removed backend's clients are unpinned"
    );
    assert_eq!(moved.lookup(ip(3), t1, |_| true), Some(0));
    assert_eq!(moved.timeout(), a.timeout());
    // Expiry is carried, not restarted: the entry for client 1 was re-armed at t1 above, the
    // one for client 3 too; an entry never looked up keeps its original deadline.
    let b = Affinity::new(10, cap(64)).unwrap();
    b.record(ip(9), 0, t0);
    let b2 = b.remapped(t0 + Duration::from_secs(5), Some);
    assert_eq!(
        b2.lookup(ip(9), t0 + Duration::from_secs(10), |_| true),
        None,
        "deadline kept"
    );
}
