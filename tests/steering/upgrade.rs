//! Node mode through upgrades and worker crashes: a pod keeps dialling a cluster IP and a node
//! port and asking a UDP cluster IP while the worker is upgraded and killed; the nftables
//! table, polled every 10 ms, is never missing or empty.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use support::load::{Load, Spec};
use support::restart::{kill_worker, poll_table, upgrade, Ask, Crash};

use super::*;

/// How long before a crash an attempt may have started and still be lost to it.
const IN_FLIGHT: Duration = Duration::from_millis(500);

#[test]
fn steering_survives_upgrades_and_worker_crashes_and_the_table_is_never_missing() {
    let Some((pod, node, backend)) = pod_node_backend("uppod", "upnode", "upbe") else {
        return;
    };
    wire_ipv4(&pod, &node, &backend);
    serve_web(&backend);
    serve_dns(&backend);
    let api = FakeApi::start(&node.0, "upgrade", objects());
    let mut proxy = node_proxy(
        &node,
        &api,
        &["--nodeport-addresses", "10.241.1.0/24", "--workers", "2"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let poller = poll_table(&node.0, "ip", "10.96.0.10 . tcp . 80", Arc::clone(&stop));
    let load = Load::start(&Spec {
        netns: Some(pod.0.clone()),
        tcp: vec![
            "10.96.0.10:80".parse().unwrap(),
            "10.241.1.1:30080".parse().unwrap(),
        ],
        send: Vec::new(),
        expect: b"web\n".to_vec(),
        per_second: 300,
        streams: 0,
        stream_for: Duration::ZERO,
        udp: Some("10.96.0.15:53".parse().unwrap()),
        udp_clients: 4,
    });
    let pace = || std::thread::sleep(Duration::from_millis(300));
    let mut worker = proxy.worker_pid();
    for i in 0..5 {
        pace();
        let ask = if i % 2 == 0 {
            Ask::Signal
        } else {
            Ask::Command
        };
        worker = upgrade(&proxy, worker, ask);
    }
    let mut crashes: Vec<Crash> = Vec::new();
    for _ in 0..3 {
        pace();
        let (next, crash) = kill_worker(&proxy, worker);
        worker = next;
        crashes.push(crash);
    }
    pace();
    let report = load.stop();
    stop.store(true, Ordering::Relaxed);
    let (polls, missing) = poller.join().unwrap();
    println!(
        "node mode through 5 upgrades and 3 worker kills ({polls} table polls):\n{}",
        report.summary()
    );
    assert!(
        missing.is_empty(),
        "the table was missing or empty: {missing:?}"
    );
    let refused: Vec<_> = report
        .requests
        .failures
        .iter()
        .filter(|f| f.what == "refused")
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    let lost_to = |at: Instant| {
        crashes
            .iter()
            .any(|c| at >= c.killed - IN_FLIGHT && at < c.dead)
    };
    let later: Vec<_> = report
        .requests
        .failures
        .iter()
        .filter(|f| !lost_to(f.at))
        .collect();
    assert!(later.is_empty(), "failed outside a crash: {later:?}");
    // UDP: at most the datagram each client had in flight when a worker died.
    assert!(
        report.udp.failures.len() <= 4 * crashes.len(),
        "{:?}",
        report.udp.failures
    );
    let first_crash = crashes[0].killed - IN_FLIGHT;
    assert!(
        report.udp.moves.iter().all(|m| m.at >= first_crash),
        "upgrades kept each UDP client on its backend: {:?}",
        report.udp.moves
    );
    assert!(report.requests.ok > 0 && report.udp.ok > 0);
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success(), "{}", proxy.stderr());
    assert_tables_left_then_cleaned_up(&node, &proxy);
}
