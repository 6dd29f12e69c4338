//! Golden placement of `sh`, `dh` and `mh`: computed once with this implementation (which the
//! unit tests check against the kernel's hash functions and fill loops) and frozen here, so a
//! change of placement can never slip in silently. Every node must agree on these.

use std::net::{IpAddr, SocketAddr};

use balancers::{BackendSpec, Flow, Scheduler, SchedulerConfig, SchedulerKind};

const CLIENTS: [&str; 8] = [
    "10.0.0.1",
    "10.0.0.2",
    "192.168.1.77",
    "172.16.5.4",
    "203.0.113.9",
    "2001:db8::1",
    "2001:db8::2",
    "fe80::1234:5678",
];

fn flow(client: &str, port: u16) -> Flow {
    let ip: IpAddr = client.parse().unwrap();
    Flow {
        client: SocketAddr::new(ip, port),
        dest: SocketAddr::new(ip, 80),
    }
}

fn sh(weights: &[u32], port: bool) -> Vec<usize> {
    let specs: Vec<_> = weights.iter().map(|&w| BackendSpec::new(w)).collect();
    let cfg = SchedulerConfig {
        sh_port: port,
        ..SchedulerConfig::new(SchedulerKind::Sh)
    };
    let Scheduler::Sh(s) = Scheduler::build(&cfg, &specs).unwrap() else {
        unreachable!()
    };
    CLIENTS
        .iter()
        .map(|c| s.bucket_owner(&flow(c, 40_000)))
        .collect()
}

fn mh_specs(weights: &[u32]) -> Vec<BackendSpec> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let addr: SocketAddr = format!("10.244.{}.{}:8080", i / 200, 10 + i % 200)
                .parse()
                .unwrap();
            BackendSpec::new(w).with_addr(addr)
        })
        .collect()
}

fn mh(weights: &[u32], size: u32, port: bool) -> (Vec<Option<usize>>, Vec<usize>) {
    let cfg = SchedulerConfig {
        mh_port: port,
        mh_table_size: size,
        ..SchedulerConfig::new(SchedulerKind::Mh)
    };
    let Scheduler::Mh(m) = Scheduler::build(&cfg, &mh_specs(weights)).unwrap() else {
        unreachable!()
    };
    let owners = CLIENTS
        .iter()
        .map(|c| m.slot_owner(&flow(c, 40_000)))
        .collect();
    let mut counts = vec![0; weights.len()];
    for d in m.table().flatten() {
        counts[d] += 1;
    }
    (owners, counts)
}

#[test]
fn sh_placement_is_frozen() {
    assert_eq!(sh(&[1, 1, 1, 1], false), [3, 1, 0, 2, 0, 3, 0, 1]);
    assert_eq!(sh(&[1, 2, 3, 0, 5], false), [2, 2, 0, 3, 2, 2, 2, 2]);
    assert_eq!(sh(&[1, 2, 3, 0, 5], true), [4, 4, 2, 4, 0, 4, 4, 0]);
}

#[test]
fn dh_placement_is_frozen() {
    let specs = vec![BackendSpec::new(1); 4];
    let Scheduler::Dh(d) =
        Scheduler::build(&SchedulerConfig::new(SchedulerKind::Dh), &specs).unwrap()
    else {
        unreachable!()
    };
    // dh keys on the destination, which `flow` sets to the client's IP: same buckets as sh with
    // four weight-1 backends and no port.
    let owners: Vec<_> = CLIENTS
        .iter()
        .map(|c| d.bucket_owner(&flow(c, 1)))
        .collect();
    assert_eq!(owners, [3, 1, 0, 2, 0, 3, 0, 1]);
}

#[test]
fn mh_placement_is_frozen() {
    let s = Some;
    assert_eq!(
        mh(&[1, 1, 1, 1, 1], 4093, false),
        (
            vec![s(3), s(0), s(1), s(0), s(3), s(2), s(4), s(4)],
            vec![819, 819, 819, 818, 818]
        )
    );
    assert_eq!(
        mh(&[1, 2, 3, 0, 4], 251, false),
        (
            vec![s(2), s(2), s(2), s(1), s(1), s(1), s(0), s(0)],
            vec![26, 50, 75, 0, 100]
        )
    );
    assert_eq!(
        mh(&[1, 2, 3, 0, 4], 251, true),
        (
            vec![s(4), s(4), s(1), s(2), s(2), s(2), s(2), s(2)],
            vec![26, 50, 75, 0, 100]
        )
    );
    // gcd 1, max 1000: rshift = fls(1000) - 8 = 2, turns 250 : 2 : 1.
    assert_eq!(
        mh(&[1000, 10, 1], 65521, false),
        (vec![s(0); 8], vec![64747, 516, 258])
    );
}
