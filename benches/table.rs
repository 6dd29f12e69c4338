//! Table build at scale: 10,000 services × 10 endpoints, in full and after a one-endpoint
//! change (the new table is what workers see after one `ArcSwap::store`). Inputs are built
//! before timing.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicIsize, Ordering};

use balancers::SchedulerConfig;
use config::{Backend, Config, Protocol, Service, Table};
use criterion::{criterion_group, criterion_main, Criterion};

/// Counts live heap bytes, to report what a table holds.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on as is.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const SERVICES: usize = 10_000;
const ENDPOINTS: usize = 10;

fn config() -> Config {
    let services = (0..SERVICES)
        .map(|i| {
            let vip = SocketAddr::new(Ipv4Addr::new(10, 96, (i >> 8) as u8, i as u8).into(), 80);
            let backends = (0..ENDPOINTS)
                .map(|j| {
                    let n = i * ENDPOINTS + j;
                    Backend::new(
                        SocketAddr::new(
                            Ipv4Addr::new(10, 244, (n >> 8) as u8, n as u8).into(),
                            8080,
                        ),
                        1,
                    )
                })
                .collect();
            Service::with_defaults(
                format!("svc-{i}"),
                Protocol::Tcp,
                vec![vip],
                backends,
                SchedulerConfig::default(),
            )
        })
        .collect();
    Config { services }
}

fn bench_table(c: &mut Criterion) {
    let base = config();
    let mut changed = base.clone();
    changed.services[SERVICES / 2].backends[3]
        .address
        .set_port(9090);
    let before = LIVE.load(Ordering::Relaxed);
    let previous = Table::build(&base, None);
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    eprintln!(
        "table of {SERVICES} services x {ENDPOINTS} endpoints holds {:.1} MiB of heap ({} bytes per service)",
        bytes as f64 / (1024.0 * 1024.0),
        bytes / SERVICES as isize
    );

    let mut g = c.benchmark_group("table");
    g.sample_size(10);
    g.bench_function("full build 10k services x 10 endpoints", |b| {
        b.iter(|| black_box(Table::build(black_box(&base), None)))
    });
    g.bench_function("rebuild after one endpoint change", |b| {
        b.iter(|| black_box(Table::build(black_box(&changed), Some(&previous))))
    });
    let one = changed.services[SERVICES / 2].clone();
    g.bench_function("apply one changed service (incremental)", |b| {
        b.iter(|| black_box(previous.apply(black_box(std::slice::from_ref(&one)), &[])))
    });
    g.finish();
}

criterion_group!(benches, bench_table);
criterion_main!(benches);
