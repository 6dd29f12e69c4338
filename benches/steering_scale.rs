//! The cost of programming ringlb's nftables table at 10,000 Services, with ringlb's own code
//! and `nft`, in a network namespace of its own.
//!
//! `cargo bench --bench steering_scale`; needs root (a network namespace), `nft` and
//! `conntrack`. Prints the numbers; asserts only that they were applied.

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::netns::{in_netns, netns, require_nft_and_conntrack};

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`) does not,
    // and must not start a benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        println!("steering_scale is a benchmark: run it with cargo bench --bench steering_scale");
        return;
    }
    nftables_transactions_at_ten_thousand_services();
}

/// The first (whole) transaction for 10,000 Services (a cluster IP and a node port each), then
/// one Service's endpoints going away and coming back (two element lines each way).
fn nftables_transactions_at_ten_thousand_services() {
    use node::steer::{SteerEntry, Steering, Verdict};
    let Some(ns) = netns("bench") else {
        return;
    };
    require_nft_and_conntrack();
    const SERVICES: u32 = 10_000;
    let entries: Vec<SteerEntry> = (0..SERVICES)
        .flat_map(|i| {
            let portal = 20_000 + (i % 40_000) as u16;
            let ip = std::net::Ipv4Addr::from(0x0a60_0000 + i); // 10.96.0.0 + i
            [
                SteerEntry::new(
                    config::Protocol::Tcp,
                    SocketAddr::new(ip.into(), 80),
                    Verdict::Redirect(portal),
                ),
                SteerEntry::new(
                    config::Protocol::Tcp,
                    SocketAddr::new([10, 241, 1, 1].into(), 30_000 + (i % 2_768) as u16),
                    Verdict::Redirect(portal),
                ),
            ]
        })
        .collect();
    let cluster_ips: Vec<std::net::IpAddr> = (0..SERVICES)
        .map(|i| std::net::Ipv4Addr::from(0x0a60_0000 + i).into())
        .collect();
    let name = ns.0.clone();
    let lines = in_netns(&name, move || {
        // `nft` runs as a child of this thread and so in its namespace; it is awaited on a
        // runtime of this thread, as ringlb awaits it on its control runtime.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async move {
            let mut steering = Steering::new("nft");
            let full = steering
                .sync(&entries, &cluster_ips, &[])
                .await
                .expect("whole table");
            let mut changed = entries.clone();
            let mut toggles = Vec::new();
            for round in 0..10 {
                changed[2 * round].verdict = Verdict::Reject;
                let one = steering.sync(&changed, &cluster_ips, &[]).await;
                toggles.push(one.expect("one change"));
                changed[2 * round].verdict = entries[2 * round].verdict;
                let back = steering.sync(&changed, &cluster_ips, &[]).await;
                toggles.push(back.expect("one change back"));
            }
            let mut took: Vec<Duration> = toggles.iter().map(|r| r.took).collect();
            took.sort();
            println!(
                "nftables: {SERVICES} services, {} frontends: whole table {} lines in {:?}; \
                 one service changed ({} lines): median {:?}, max {:?} (incl. starting nft)",
                full.steered,
                full.lines,
                full.took,
                toggles[0].lines,
                took[took.len() / 2],
                took[took.len() - 1]
            );
            steering.remove().expect("table removed");
            full.lines
        })
    });
    assert!(
        lines > SERVICES as usize,
        "every service in the whole table"
    );
}
