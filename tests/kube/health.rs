//! The node health port (`--healthz-bind-address`) of the real binary against hostile
//! clients (a request line that never ends, hundreds of slow clients), and a node health
//! port that cannot be bound, which `/readyz` reports until it binds; and a Service's
//! health-check annotation, which checks its endpoints from the node.

use std::io::{ErrorKind, Write};

use support::admin::{admin_addr, get, request};
use support::attack::{probe, proc_status, SlowClients};

use super::*;

/// `ringlb run --kubernetes` as node `node-a`, one worker, with the node health server on
/// `healthz` and the admin API on a free loopback port.
fn node_with_healthz(kubeconfig: &Path, healthz: &str) -> Ringlb {
    Ringlb::start(&[
        "run",
        "--kubernetes",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node-name",
        "node-a",
        "--admin",
        "127.0.0.1:0",
        "--workers",
        "1",
        "--healthz-bind-address",
        healthz,
    ])
}

/// The fake API with node `node-a` and nothing else.
fn api_with_node() -> FakeApi {
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    api
}

/// A fresh `GET /healthz` on `at` is answered 200 by the node health server.
fn assert_healthz_answers(at: SocketAddr, when: &str) {
    match probe(at, "/healthz") {
        Ok((200, body)) if body.ends_with("\"nodeEligible\": true}") => {}
        other => panic!("/healthz {when}: {other:?}"),
    }
}

/// A client sends a request line without an end, up to 64 MiB: ringlb closes the connection
/// long before (its request head is bounded), its memory does not grow with what was sent,
/// and the port answers the next probe.
#[test]
fn a_request_line_that_never_ends_is_cut_short_and_costs_no_memory() {
    let api = api_with_node();
    let kubeconfig = api.kubeconfig();
    let proxy = node_with_healthz(&kubeconfig, "127.0.0.1:0");
    let healthz = proxy.addr_before_ready("healthz addr=");
    assert_healthz_answers(healthz, "before");
    let before = proc_status(proxy.worker_pid(), "VmRSS");

    let mut s = connect(healthz);
    s.write_all(b"GET /").unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    let mut sent = 0usize;
    let cut = loop {
        if sent >= 64 << 20 {
            break None;
        }
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    let after = proc_status(proxy.worker_pid(), "VmRSS");
    eprintln!("request line cut after {sent} bytes ({cut:?}); VmRSS {before} -> {after} KiB");
    match cut {
        Some(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => {}
        other => panic!("the request line was not cut: {other:?} after {sent} bytes"),
    }
    assert!(sent < 16 << 20, "closed only after {sent} bytes");
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "VmRSS grew from {before} to {after} KiB"
    );
    assert_healthz_answers(healthz, "after");
    std::fs::remove_file(kubeconfig).unwrap();
}

/// 400 slow clients (a byte of a request head that never ends, every 200 ms, each connecting
/// again when closed) hold no thread each: the process's thread count does not move, and a
/// fresh probe is answered while they keep at it and after.
#[test]
fn slow_clients_take_no_thread_each_and_never_keep_a_probe_out() {
    let api = api_with_node();
    let kubeconfig = api.kubeconfig();
    let proxy = node_with_healthz(&kubeconfig, "127.0.0.1:0");
    let healthz = proxy.addr_before_ready("healthz addr=");
    assert_healthz_answers(healthz, "before");
    let threads = proc_status(proxy.worker_pid(), "Threads");

    let slow = SlowClients::start(healthz, 400, Duration::from_millis(200), true, None);
    let mut peak = threads;
    for i in 0..10 {
        peak = peak.max(proc_status(proxy.worker_pid(), "Threads"));
        assert_healthz_answers(healthz, &format!("during the attack (probe {i})"));
        // Pacing of the probes, not readiness: they spread over the attack.
        std::thread::sleep(Duration::from_millis(200));
    }
    let connects = slow.stop();
    eprintln!("threads {threads} before, at most {peak} during; {connects} slow connections");
    assert!(
        peak <= threads + 2,
        "{peak} threads during the attack, {threads} before"
    );
    assert_healthz_answers(healthz, "after");
    std::fs::remove_file(kubeconfig).unwrap();
}

/// `--healthz-bind-address` on an address already taken: ringlb serves anyway, `/readyz`
/// answers 503 naming the port; once the address is free the next change from the API binds
/// it, and ringlb is ready.
#[test]
fn a_node_health_port_that_cannot_be_bound_makes_readyz_say_so_until_it_binds() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let api = api_with_node();
    let kubeconfig = api.kubeconfig();
    let proxy = node_with_healthz(&kubeconfig, &at.to_string());
    let admin = admin_addr(&proxy);
    let readyz = request(admin, "GET", "/readyz");
    assert_eq!(readyz.status, 503, "{readyz:?}");
    assert!(
        readyz
            .body
            .starts_with(&format!("healthz {at}: cannot listen: ")),
        "{readyz:?}"
    );
    assert_eq!(readyz.body.lines().count(), 1, "{readyz:?}");

    drop(taken);
    let a = name_server("a");
    api.apply(web_service(own_address(89)));
    api.apply(slice("web-a", "web", eps(&[a]), a.port()));
    assert_eq!(
        proxy.wait_line("healthz addr="),
        format!("healthz addr={at}")
    );
    assert_eq!(get(admin, "/readyz"), "ready\n");
    assert_healthz_answers(at, "once bound");
    std::fs::remove_file(kubeconfig).unwrap();
}

/// A Service's `ringlb.io/health-check` reaches node mode: its endpoint that refuses is
/// checked from the node, marked down and skipped; an unusable annotation beside it is
/// logged and left out, and the Service still serves.
#[test]
fn a_services_health_check_annotation_takes_a_refusing_endpoint_out() {
    let good = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = good.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in good.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = std::io::Write::write_all(&mut s, b"good");
        }
    });
    let web = own_address(88);
    let api = FakeApi::start();
    api.apply(node("node-a", "zone-a"));
    let mut service = web_service(web);
    service["metadata"]["annotations"] = json!({
        "ringlb.io/health-check": "tcp",
        "ringlb.io/health-interval": "50ms",
        "ringlb.io/eject-after": "many",
    });
    api.apply(service);
    // The second endpoint's address has nothing listening at the port: refused.
    let endpoints = json!([{"addresses": ["127.0.0.1"]}, {"addresses": ["127.0.0.3"]}]);
    api.apply(slice("web-1", "web", endpoints, port));
    let kubeconfig = api.kubeconfig();
    let proxy = node_a(&kubeconfig);
    proxy.wait_stderr("ringlb.io/eject-after");
    proxy.wait_stderr(&format!("127.0.0.3:{port}"));
    proxy.wait_stderr("backend down");
    for _ in 0..10 {
        assert_eq!(answer(web), "good");
    }
    std::fs::remove_file(kubeconfig).unwrap();
}
