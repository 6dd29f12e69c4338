//! `Scheduler::pick` for every scheduler at 2, 16, 256 and 4096 backends. Inputs (backends,
//! states with load, flows) are built before timing; each iteration picks for the next of 1024
//! precomputed flows.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use balancers::{
    BackendSpec, BackendState, ConnectionGuard, Flow, Scheduler, SchedulerConfig, SchedulerKind,
    DEFAULT_MH_TABLE_SIZE,
};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

struct Input {
    specs: Vec<BackendSpec>,
    states: Vec<Arc<BackendState>>,
    _guards: Vec<ConnectionGuard>,
    flows: Vec<Flow>,
}

fn input(n: usize) -> Input {
    let specs: Vec<_> = (0..n)
        .map(|i| {
            BackendSpec::new(1 + (i % 3) as u32).with_addr(SocketAddr::new(
                Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8).into(),
                8080,
            ))
        })
        .collect();
    let states: Vec<_> = (0..n).map(|_| Arc::new(BackendState::default())).collect();
    // Every backend busy (so nq cannot stop early), with varying load.
    let guards = states
        .iter()
        .enumerate()
        .flat_map(|(i, s)| (0..1 + i % 4).map(move |_| s.connect()))
        .collect();
    let flows = (0..1024u32)
        .map(|k| Flow {
            client: SocketAddr::new(
                Ipv4Addr::from(k.wrapping_mul(2_654_435_761)).into(),
                1024 + k as u16,
            ),
            dest: SocketAddr::new(Ipv4Addr::new(192, 0, 2, (k % 7) as u8).into(), 443),
        })
        .collect();
    Input {
        specs,
        states,
        _guards: guards,
        flows,
    }
}

fn bench_pick(c: &mut Criterion) {
    for n in [2usize, 16, 256, 4096] {
        let inp = input(n);
        let mut g = c.benchmark_group(format!("pick/{n}"));
        for &kind in SchedulerKind::ALL {
            // 4096 backends do not fit mh's default 4093-slot table (the kernel's -EINVAL):
            // use the next IPVS size there.
            let cfg = SchedulerConfig {
                mh_table_size: if n > 4093 {
                    8191
                } else {
                    DEFAULT_MH_TABLE_SIZE
                },
                ..SchedulerConfig::new(kind)
            };
            let s = Scheduler::build(&cfg, &inp.specs).unwrap();
            let mut k = 0usize;
            g.bench_function(BenchmarkId::from_parameter(kind), |b| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    black_box(s.pick(black_box(&inp.flows[k]), &inp.states))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_pick);
criterion_main!(benches);
