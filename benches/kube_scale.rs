//! Benchmarks at 10,000 Services through the real binary against the fake API server of the
//! tests: from an EndpointSlice change to traffic, with and without `--nftables`.
//!
//! `cargo bench --bench kube_scale` runs both; `cargo bench --bench kube_scale -- nftables`
//! only the names that contain `nftables`. The one with `--nftables` needs root (network
//! namespaces), `nft` and `conntrack`. Prints the numbers; asserts only that every change
//! was applied; bounded in time.

#[allow(dead_code)] // the benchmark uses only part of the fake API
#[path = "../tests/kube/fake_api.rs"]
mod fake_api;
#[allow(dead_code)]
#[path = "../tests/kube/shared.rs"]
mod shared;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fake_api::FakeApi;
use serde_json::{json, Value};
use shared::{node, node_a_in, slice};
use support::*;

/// The benchmarks by name.
const BENCHMARKS: [(&str, fn()); 2] = [
    (
        "endpoint_slice_change_to_traffic",
        endpoint_slice_change_to_traffic,
    ),
    (
        "endpoint_slice_change_to_traffic_with_nftables",
        endpoint_slice_change_to_traffic_with_nftables,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` (or `--all-targets`) does not,
    // and must not start a benchmark that takes minutes.
    if !args.iter().any(|a| a == "--bench") {
        println!("kube_scale is a benchmark: run it with cargo bench --bench kube_scale");
        return;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    for (name, bench) in BENCHMARKS {
        if filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())) {
            println!("{name}:");
            bench();
        }
    }
}

/// With 10,000 Services watched through the fake API server, the time from an EndpointSlice
/// change (written to the API) to the first new connection that reaches the new endpoint,
/// through the real binary. Each Service has its own cluster IP in 127.10.0.0/16, bound
/// directly (without `--nftables` ringlb listens on them; with it an endpoint change touches
/// no nftables element, since the portal stays).
fn endpoint_slice_change_to_traffic() {
    ten_thousand_services(None);
}

/// The same with `--nftables`, in a network namespace of its own (API server, endpoints,
/// ringlb and clients all inside it): also the time from a Service losing all its endpoints
/// to refused connections and back (one nftables element each way), and how many ports
/// the portals hold.
fn endpoint_slice_change_to_traffic_with_nftables() {
    if let Some(ns) = support::netns::netns("kbench") {
        support::netns::require_nft_and_conntrack();
        ten_thousand_services(Some(&ns));
    }
}

/// Runs `f` in namespace `ns`, or here.
fn within<T: Send + 'static>(
    ns: Option<&support::netns::Netns>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    match ns {
        Some(ns) => support::netns::in_netns(&ns.0, f),
        None => f(),
    }
}

/// Connects to `front` (from `ns`) until it answers `want`, or with `None` until it is
/// refused; how long that took. Bounded in time. Every try is a plain connection from the
/// node, so the client soon reuses its source ports, as a busy one does (ringlb withdraws a
/// redirect before its portal drops the endpoints, so no reset leaves a closed conntrack
/// entry that a reused port would join; see the limits in docs/node-mode.md).
fn until_answer(
    ns: Option<&support::netns::Netns>,
    front: SocketAddr,
    want: Option<&'static str>,
) -> Duration {
    within(ns, move || {
        let started = Instant::now();
        loop {
            let got = match std::net::TcpStream::connect(front) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(PATIENCE)).unwrap();
                    let mut text = String::new();
                    let _ = std::io::Read::read_to_string(&mut s, &mut text);
                    Some(text)
                }
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => None,
                Err(e) => Some(e.to_string()),
            };
            if got.as_deref() == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{front} never answered {want:?}; last {got:?}"
            );
        }
    })
}

fn ten_thousand_services(ns: Option<&support::netns::Netns>) {
    raise_nofile();
    const SERVICES: u32 = 10_000;
    const CHANGES: usize = 10;
    let ip_of = |i: u32| IpAddr::V4(Ipv4Addr::from(0x7f0a_0000 + i)); // 127.10.0.0 + i
    let port = within(ns, move || {
        std::net::TcpListener::bind(SocketAddr::new(ip_of(0), 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    });
    let (a, b) = within(ns, || (name_server("a"), name_server("b")));
    let api = within(ns, FakeApi::start);
    api.apply(node("node-a", "zone-a"));
    let started = Instant::now();
    for i in 0..SERVICES {
        let ip = ip_of(i).to_string();
        api.apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip],
                     "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}}));
        // Every other Service's endpoint is never dialled.
        let backend = if i == 0 {
            a
        } else {
            "127.0.0.1:9".parse().unwrap()
        };
        let mut s = slice(
            &format!("svc-{i}-1"),
            &format!("svc-{i}"),
            json!([{"addresses": [backend.ip().to_string()]}]),
            backend.port(),
        );
        s["metadata"]["namespace"] = json!("bench");
        api.apply(s);
    }
    let kubeconfig = api.kubeconfig();
    // One worker: one listening socket per Service and worker, and 10,000 stay under the
    // usual 20,000-descriptor hard limit.
    let proxy = node_a_in(ns, &kubeconfig);
    let listed = started.elapsed();
    assert_eq!(proxy.addrs.len(), SERVICES as usize);
    let front = SocketAddr::new(ip_of(0), port);
    until_answer(ns, front, Some("a"));

    let svc_0 = |to: Value, port: u16| {
        let mut s = slice("svc-0-1", "svc-0", to, port);
        s["metadata"]["namespace"] = json!("bench");
        s
    };
    let mut took = Vec::with_capacity(CHANGES);
    for round in 0..CHANGES {
        let (to, name) = if round % 2 == 0 { (b, "b") } else { (a, "a") };
        let changed = Instant::now();
        api.apply(svc_0(
            json!([{"addresses": [to.ip().to_string()]}]),
            to.port(),
        ));
        until_answer(ns, front, Some(name));
        took.push(changed.elapsed());
    }
    took.sort();
    println!(
        "{SERVICES} Services{}: listed and serving {listed:?} after the API held them; \
         EndpointSlice change to traffic over {CHANGES} changes: min {:?}, median {:?}, max {:?} \
         (includes the watch's {:?} settle window)",
        if ns.is_some() { " with --nftables" } else { "" },
        took[0],
        took[CHANGES / 2],
        took[CHANGES - 1],
        node::SETTLE
    );
    if let Some(ns) = ns {
        // All endpoints gone: the frontend is rejected (an nftables element); then back.
        let mut gone = Vec::with_capacity(CHANGES);
        let mut back = Vec::with_capacity(CHANGES);
        for _ in 0..CHANGES {
            let changed = Instant::now();
            api.apply(svc_0(json!([]), a.port()));
            until_answer(Some(ns), front, None);
            gone.push(changed.elapsed());
            let changed = Instant::now();
            api.apply(svc_0(
                json!([{"addresses": [a.ip().to_string()]}]),
                a.port(),
            ));
            until_answer(Some(ns), front, Some("a"));
            back.push(changed.elapsed());
        }
        gone.sort();
        back.sort();
        let listening = ns.exec(&["ss", "-Htln"]);
        let range = ns.exec(&["sysctl", "-n", "net.ipv4.ip_local_port_range"]);
        println!(
            "all endpoints gone to refused: median {:?}, max {:?}; back to traffic: median \
             {:?}, max {:?}; {} TCP listening sockets, ip_local_port_range {}",
            gone[CHANGES / 2],
            gone[CHANGES - 1],
            back[CHANGES / 2],
            back[CHANGES - 1],
            String::from_utf8_lossy(&listening.stdout).lines().count(),
            String::from_utf8_lossy(&range.stdout).trim()
        );
    }
    std::fs::remove_file(kubeconfig).unwrap();
}
