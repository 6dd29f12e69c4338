//! `pick` must never allocate: a counting global allocator around the system one, checked for
//! every scheduler (with fallbacks exercised). Own test binary, so nothing else allocates on the
//! counted thread while it runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use balancers::{BackendSpec, BackendState, Flow, Scheduler, SchedulerConfig, SchedulerKind};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is exactly the system allocator's; the thread-local counter does not
// allocate (const-initialised `Cell`).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded contract, see the impl.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract, see the impl.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded contract, see the impl.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded contract, see the impl.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

#[test]
fn pick_never_allocates() {
    let b = allocs();
    drop(std::hint::black_box(vec![1u8; 10]));
    assert!(allocs() > b, "the counting allocator is in place");
    let n = 64;
    let specs: Vec<_> = (0..n)
        .map(|i| {
            let w = (i % 4) as u32; // some quiesced
            BackendSpec::new(w)
                .with_addr(SocketAddr::new(Ipv4Addr::new(10, 0, 0, i as u8).into(), 80))
        })
        .collect();
    let states: Vec<_> = (0..n)
        .map(|i| Arc::new(BackendState::new(if i % 5 == 0 { Some(1) } else { None })))
        .collect();
    // Load and overload some backends (allocations here are before the counted section).
    let _guards: Vec<_> = states
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, s)| s.connect())
        .collect();
    let flows: Vec<Flow> = (0..256u32)
        .map(|k| Flow {
            client: if k % 2 == 0 {
                SocketAddr::new(
                    Ipv4Addr::from(k.wrapping_mul(2_654_435_761)).into(),
                    k as u16,
                )
            } else {
                SocketAddr::new(Ipv6Addr::from(u128::from(k) << 64 | 7).into(), k as u16)
            },
            dest: SocketAddr::new(Ipv4Addr::from(k).into(), 443),
        })
        .collect();
    for &kind in SchedulerKind::ALL {
        for flags in [false, true] {
            let cfg = SchedulerConfig {
                sh_fallback: flags,
                sh_port: flags,
                mh_fallback: flags,
                mh_port: flags,
                ..SchedulerConfig::new(kind)
            };
            let s = Scheduler::build(&cfg, &specs).unwrap();
            let before = allocs();
            let mut picked = 0usize;
            for f in &flows {
                picked += s.pick(f, &states).map_or(0, |i| i + 1);
                picked += s.next_after(picked % n, &states).unwrap_or(0);
            }
            let after = allocs();
            assert_eq!(
                after - before,
                0,
                "{kind} (flags {flags}) allocated in pick"
            );
            std::hint::black_box(picked);
        }
    }
}
