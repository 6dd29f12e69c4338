//! Node mode with nftables steering, end to end in network namespaces this test creates: a
//! "pod" namespace as the client, a "node" namespace running `ringlb run --kubernetes
//! --nftables` against a small static API server, and a "backend" namespace with the
//! endpoint. Addresses are private and exist only inside these namespaces; the host's own
//! networking is never touched. Where namespaces cannot be created (not root) a test fails
//! under `CI` and is skipped with the reason printed elsewhere; where they can, a missing `nft`
//! or `conntrack` fails it.

#[allow(dead_code)] // the steering tests use only part of the fake API
#[path = "kube/fake_api.rs"]
mod fake_api;
mod support;

#[path = "steering/dual_stack.rs"]
mod dual_stack;
#[path = "steering/guarded.rs"]
mod guarded;
#[path = "steering/health.rs"]
mod health;
#[path = "steering/refusal.rs"]
mod refusal;
#[path = "steering/threads.rs"]
mod threads;
#[path = "steering/transparent.rs"]
mod transparent;
#[path = "steering/upgrade.rs"]
mod upgrade;

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::netns::*;
use support::*;

/// The objects the static API server lists; watches stay open and never report a change.
fn objects() -> Objects {
    let svc = |name: &str, ip: &str, extra: Value| {
        let mut spec = json!({"clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        if let Some(np) = extra.get("nodePort") {
            spec["ports"][0]["nodePort"] = np.clone();
            spec.as_object_mut().unwrap().remove("nodePort");
        }
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1"},
               "spec": spec})
    };
    let slice = |name: &str, service: &str, node: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1",
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": ["10.241.2.2"], "nodeName": node,
                              "conditions": {"ready": true}}]})
    };
    vec![
        (
            "services",
            svc(
                "web",
                "10.96.0.10",
                json!({"type": "NodePort", "externalIPs": ["10.241.9.9"], "nodePort": 30080}),
            ),
        ),
        ("services", {
            let mut empty = svc(
                "empty",
                "10.96.0.11",
                json!({"type": "NodePort", "externalIPs": ["10.241.9.11"], "nodePort": 30089}),
            );
            empty["spec"]["ports"].as_array_mut().unwrap().push(json!(
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053}));
            empty
        }),
        (
            "services",
            svc(
                "local",
                "10.96.0.12",
                json!({"internalTrafficPolicy": "Local"}),
            ),
        ),
        (
            "services",
            svc(
                "lb",
                "10.96.0.13",
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                       "healthCheckNodePort": 32100, "nodePort": 30081}),
            ),
        ),
        (
            "services",
            svc(
                "far",
                "10.96.0.14",
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                       "healthCheckNodePort": 32101, "nodePort": 30082}),
            ),
        ),
        (
            "services",
            svc(
                "dns",
                "10.96.0.15",
                json!({"ports": [{"name": "dns", "port": 53, "protocol": "UDP",
                                  "targetPort": 5353}]}),
            ),
        ),
        ("endpointslices", {
            let mut s = slice("dns-1", "dns", "node-a");
            s["ports"] = json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]);
            s
        }),
        ("endpointslices", slice("web-1", "web", "node-a")),
        ("endpointslices", slice("lb-1", "lb", "node-a")),
        ("endpointslices", slice("far-1", "far", "node-b")),
        ("endpointslices", slice("local-1", "local", "node-b")),
        (
            "nodes",
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": "node-a", "resourceVersion": "1"}}),
        ),
    ]
}

/// `GET /healthz` from namespace `ns`: the whole response.
fn http_get(ns: &str, to: &str) -> String {
    let to: SocketAddr = to.parse().unwrap();
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out).unwrap();
        out
    })
}

/// Waits (at most 5 s) until the decision log at `path` has a line naming `frontend`.
fn wait_decision_line(path: &std::path::Path, frontend: &str) {
    let want = format!("\"frontend\":\"{frontend}\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        if log.lines().any(|l| l.contains(&want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no decision line with {want}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pod, node and backend namespaces of a steering test, or `None` (skipped, with the reason
/// printed; a failure under `CI`) where namespaces cannot be created. Fails without `nft` or
/// `conntrack`.
fn pod_node_backend(pod: &str, node: &str, backend: &str) -> Option<(Netns, Netns, Netns)> {
    let namespaces = (netns(pod)?, netns(node)?, netns(backend)?);
    require_nft_and_conntrack();
    Some(namespaces)
}

/// The portal `frontend` (TCP) is redirected to cannot be dialled directly: from `pod` at
/// `at[0]` (a node address) and from `node` at `at[1]` (loopback).
fn assert_portal_not_dialable(node: &Netns, pod: &Netns, frontend: &str, at: &[&str; 2]) {
    let frontend: SocketAddr = frontend.parse().unwrap();
    let family = if frontend.is_ipv6() { "ip6" } else { "ip" };
    let listed = node.exec(&["nft", "list", "map", family, "ringlb", "portals"]);
    let portals = String::from_utf8_lossy(&listed.stdout).into_owned();
    let portal: u16 = portals
        .split(&format!("{} . tcp . {} : ", frontend.ip(), frontend.port()))
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no portal for {frontend} in {portals}"));
    for (ns, to) in [(&pod.0, at[0]), (&node.0, at[1])] {
        let to = SocketAddr::new(to.parse().unwrap(), portal).to_string();
        let direct = ask(ns, &to).unwrap_err();
        assert_eq!(
            direct.kind(),
            ErrorKind::ConnectionRefused,
            "{ns} to {to}: {direct}"
        );
    }
}

/// New TCP to `tcp` and UDP to `udp` (ports the Service lacks for that protocol) are refused
/// from each of `namespaces`.
fn assert_unserved_ports_refused(namespaces: [&str; 2], tcp: &str, udp: &str) {
    for ns in namespaces {
        let unserved = ask(ns, tcp).unwrap_err();
        assert_eq!(
            unserved.kind(),
            ErrorKind::ConnectionRefused,
            "{ns}: {unserved}"
        );
        assert_udp_refused(ns, udp);
    }
}

/// New TCP from `ns` to `to` is refused at once: with a reset, not only after the SYN's
/// retransmission a second later (an ICMP error the kernel set aside; see docs/node-mode.md).
fn assert_refused_at_once(ns: &str, to: &str) {
    let started = Instant::now();
    let refused = ask(ns, to).unwrap_err();
    assert_eq!(
        refused.kind(),
        ErrorKind::ConnectionRefused,
        "{ns} to {to}: {refused}"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "{ns} to {to}: after {took:?}"
    );
}

/// A UDP datagram from `ns` to `to` is refused: an ICMP port unreachable, which a connected
/// socket reports as `ConnectionRefused` (from the node itself, the send fails).
fn assert_udp_refused(ns: &str, to: &str) {
    let to: SocketAddr = to.parse().unwrap();
    let got = in_netns(ns, move || {
        let any: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let c = UdpSocket::bind(any).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        c.connect(to).unwrap();
        // On the node the reject happens in its own output path: the send itself fails.
        match c.send(b"q") {
            Err(e) if e.kind() == ErrorKind::PermissionDenied => Ok(ErrorKind::ConnectionRefused),
            Err(e) => Ok(e.kind()),
            Ok(_) => {
                let mut buf = [0u8; 64];
                match c.recv(&mut buf) {
                    Ok(n) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Err(e) => Ok(e.kind()),
                }
            }
        }
    });
    assert_eq!(
        got,
        Ok(ErrorKind::ConnectionRefused),
        "{ns}: UDP to {to} (Err: what answered)"
    );
}

/// The IPv4 network of a steering test: the pod at 10.241.1.2 and the backend at 10.241.2.2,
/// each linked to the node (10.241.1.1, 10.241.2.1), which forwards.
fn wire_ipv4(pod: &Netns, node: &Netns, backend: &Netns) {
    link(
        node,
        "n0",
        &["10.241.1.1/24"],
        pod,
        "p0",
        &["10.241.1.2/24"],
    );
    link(
        node,
        "n1",
        &["10.241.2.1/24"],
        backend,
        "b0",
        &["10.241.2.2/24"],
    );
    pod.ip(&["route", "add", "default", "via", "10.241.1.1"]);
    backend.ip(&["route", "add", "default", "via", "10.241.2.1"]);
    // A node has a default route; locally sent packets need a route before NAT redirects them.
    node.ip(&["route", "add", "default", "via", "10.241.2.2"]);
    node.sysctl("net.ipv4.ip_forward=1");
}

/// Pod, node and backend linked over both families (the backend holding `backend_addrs`),
/// the node forwarding and routing the service addresses, which only its tables know,
/// towards the backend.
fn wire_dual_stack(pod: &Netns, node: &Netns, backend: &Netns, backend_addrs: &[&str]) {
    link(
        node,
        "n0",
        &["10.241.1.1/24", "fd00:241:1::1/64"],
        pod,
        "p0",
        &["10.241.1.2/24", "fd00:241:1::2/64"],
    );
    link(
        node,
        "n1",
        &["10.241.2.1/24", "fd00:241:2::1/64"],
        backend,
        "b0",
        backend_addrs,
    );
    pod.ip(&["route", "add", "default", "via", "10.241.1.1"]);
    pod.ip(&["-6", "route", "add", "default", "via", "fd00:241:1::1"]);
    backend.ip(&["route", "add", "default", "via", "10.241.2.1"]);
    backend.ip(&["-6", "route", "add", "default", "via", "fd00:241:2::1"]);
    node.ip(&["route", "add", "default", "via", "10.241.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "fd00:241:2::2"]);
    node.sysctl("net.ipv4.ip_forward=1");
    node.sysctl("net.ipv6.conf.all.forwarding=1");
}

/// A TCP endpoint at `at` in `backend` that answers every connection with the address it
/// sees.
fn serve_peer_address(backend: &Netns, at: SocketAddr) {
    let listener = in_netns(&backend.0, move || TcpListener::bind(at).unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let peer = s
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = s.write_all(format!("{peer}\n").as_bytes());
        }
    });
}

/// The endpoint at 10.241.2.2:8080 in `backend`: answers every connection with `web`.
fn serve_web(backend: &Netns) {
    let be = in_netns(&backend.0, || TcpListener::bind("10.241.2.2:8080").unwrap());
    std::thread::spawn(move || {
        for s in be.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(b"web\n");
        }
    });
}

/// `ringlb run --kubernetes --nftables` as node `node-a` of `api`, in namespace `node`, with
/// `extra` (the admin API off unless `extra` names one).
fn node_proxy(node: &Netns, api: &FakeApi, extra: &[&str]) -> Ringlb {
    let mut args = vec![
        "run",
        "--kubernetes",
        "--kubeconfig",
        api.kubeconfig(),
        "--node-name",
        "node-a",
        "--nftables",
    ];
    if !extra.contains(&"--admin") {
        args.extend(["--admin", "off"]);
    }
    args.extend_from_slice(extra);
    Ringlb::start_in_netns(&node.0, &args)
}

/// The UDP endpoint at 10.241.2.2:5353 in `backend`: answers every datagram with `dns:` and
/// the datagram.
fn serve_dns(backend: &Netns) {
    let udp_be = in_netns(&backend.0, || UdpSocket::bind("10.241.2.2:5353").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp_be.recv_from(&mut buf) {
            let reply = [b"dns:".as_slice(), &buf[..n]].concat();
            let _ = udp_be.send_to(&reply, from);
        }
    });
}

#[test]
fn cluster_ip_node_port_and_external_ip_are_steered_and_the_table_stays_for_the_next_ringlb() {
    let Some((pod, node, backend)) = pod_node_backend("pod", "node", "be") else {
        return;
    };
    wire_ipv4(&pod, &node, &backend);
    serve_web(&backend);
    serve_dns(&backend);
    // The API server, on the node's loopback.
    let api = FakeApi::start(&node.0, "steering", objects());
    // A stale table from an earlier run is replaced.
    let stale = node.exec(&["nft", "add table ip ringlb; add chain ip ringlb stale"]);
    assert!(stale.status.success());

    let decisions = std::env::temp_dir().join(format!(
        "ringlb-test-{}-steering-decisions.jsonl",
        std::process::id()
    ));
    let decisions_arg = decisions.to_str().unwrap().to_owned();
    let mut proxy = node_proxy(
        &node,
        &api,
        &[
            "--decision-log",
            &decisions_arg,
            "--nodeport-addresses",
            "10.241.1.0/24,127.0.0.0/8",
            "--healthz-bind-address",
            "0.0.0.0:10256",
            "--workers",
            "2",
        ],
    );
    let listed = node.exec(&["nft", "list", "table", "ip", "ringlb"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(
        !table.contains("stale"),
        "the stale table was replaced:\n{table}"
    );
    assert!(table.contains("10.96.0.10 . tcp . 80"), "{table}");

    // From a pod (prerouting), to each kind of frontend.
    for to in ["10.96.0.10:80", "10.241.1.1:30080", "10.241.9.9:80"] {
        assert_eq!(ask(&pod.0, to).unwrap(), "web", "{to}");
    }
    // Each connection came through a portal, but the data plane saw the address the client
    // dialled (SO_ORIGINAL_DST): the decision log names it, as the scheduler's `dest` does.
    for frontend in ["10.96.0.10:80", "10.241.1.1:30080", "10.241.9.9:80"] {
        wait_decision_line(&decisions, frontend);
    }
    // externalTrafficPolicy: Local with a local endpoint: its node port serves, and its
    // healthCheckNodePort says so like kube-proxy; with none here, 503.
    assert_eq!(ask(&pod.0, "10.241.1.1:30081").unwrap(), "web");
    let ok = http_get(&pod.0, "10.241.1.1:32100");
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert!(ok.contains("X-Content-Type-Options: nosniff\r\n"), "{ok}");
    assert!(ok.contains("Content-Type: application/json\r\n"), "{ok}");
    assert!(
        ok.ends_with(
            "\r\n\r\n{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"lb\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        ),
        "{ok}"
    );
    let unavailable = http_get(&pod.0, "10.241.1.1:32101");
    assert!(unavailable.starts_with("HTTP/1.1 503 "), "{unavailable}");
    assert!(
        unavailable.contains("\"localEndpoints\": 0,"),
        "{unavailable}"
    );
    // UDP through its portal: the answer comes back from the cluster IP the pod asked.
    let (answer, from) = in_netns(&pod.0, || {
        let c = UdpSocket::bind("0.0.0.0:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.send_to(b"q1", "10.96.0.15:53").unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = c.recv_from(&mut buf).expect("a UDP answer");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });
    assert_eq!(answer, "dns:q1");
    assert_eq!(from, "10.96.0.15:53".parse::<SocketAddr>().unwrap());
    // The node's own health, as kube-proxy's on 10256.
    let healthz = http_get(&pod.0, "10.241.1.1:10256");
    assert!(healthz.starts_with("HTTP/1.1 200 "), "{healthz}");
    assert!(healthz.ends_with(", \"nodeEligible\": true}"), "{healthz}");
    // From the node itself (output).
    assert_eq!(ask(&node.0, "10.96.0.10:80").unwrap(), "web");
    // A node address outside --nodeport-addresses does not take NodePorts (nothing listens).
    let outside = ask(&pod.0, "10.241.2.1:30080").unwrap_err();
    assert_eq!(outside.kind(), ErrorKind::ConnectionRefused, "{outside}");
    // Loopback never takes NodePorts, even within --nodeport-addresses (logged), as in
    // kube-proxy's nftables mode.
    proxy.wait_stderr("holds only loopback addresses");
    let loopback = ask(&node.0, "127.0.0.1:30080").unwrap_err();
    assert_eq!(loopback.kind(), ErrorKind::ConnectionRefused, "{loopback}");
    // A new address of this host within --nodeport-addresses takes NodePorts once ringlb has
    // read the host's addresses again (every 2 s).
    node.ip(&["addr", "add", "10.241.1.7/24", "dev", "n0"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match ask(&pod.0, "10.241.1.7:30080") {
            Ok(answer) => {
                assert_eq!(answer, "web");
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "the new node address never took the NodePort: {e}\n{}",
                proxy.stderr()
            ),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // No endpoint anywhere: refused at once on each kind of frontend, TCP and UDP. On the
    // node port something listens, which only the reject keeps the pod from (the cluster
    // IP would be refused by the cluster-ips check, the external IP is routed on nowhere).
    let leak_tcp = in_netns(&node.0, || TcpListener::bind("10.241.1.1:30089").unwrap());
    std::thread::spawn(move || {
        for s in leak_tcp.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(b"leak\n");
        }
    });
    let leak_udp = in_netns(&node.0, || UdpSocket::bind("10.241.1.1:30053").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = leak_udp.recv_from(&mut buf) {
            let _ = leak_udp.send_to(b"leak", from);
        }
    });
    for to in ["10.96.0.11:80", "10.241.1.1:30089", "10.241.9.11:80"] {
        assert_refused_at_once(&pod.0, to);
    }
    for to in ["10.96.0.11:53", "10.241.1.1:30053", "10.241.9.11:53"] {
        assert_udp_refused(&pod.0, to);
    }
    // The portal behind 10.96.0.10:80 cannot be reached directly, from a pod at the node's
    // address or from the node itself, only through the redirect.
    assert_portal_not_dialable(&node, &pod, "10.96.0.10:80", &["10.241.1.1", "127.0.0.1"]);
    // A cluster IP on a port or protocol its service does not have: refused, from a pod and
    // from the node, TCP and UDP (kube-proxy's cluster-ips-check).
    assert_unserved_ports_refused([&pod.0, &node.0], "10.96.0.10:81", "10.96.0.10:53");
    // Policy Local, the only endpoint on another node: dropped (the client times out).
    let dropped = ask(&pod.0, "10.96.0.12:80").unwrap_err();
    assert!(
        matches!(dropped.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{dropped}"
    );

    // A UDP client that keeps one source port across a ringlb restart: its conntrack entry
    // points at the old process's portal, and conntrack would keep using it for as long as
    // the client keeps sending. The new process deletes such entries after its first sync.
    let pod_udp = in_netns(&pod.0, || {
        let c = UdpSocket::bind("0.0.0.0:0").unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        c
    });
    let ask_udp = |c: &UdpSocket, msg: &str| -> Option<String> {
        c.send_to(msg.as_bytes(), "10.96.0.15:53").unwrap();
        let mut buf = [0u8; 512];
        let (n, _) = c.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    assert_eq!(ask_udp(&pod_udp, "before").as_deref(), Some("dns:before"));

    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success(), "{}", proxy.stderr());
    assert_tables_left_then_cleaned_up(&node, &proxy);

    let restarted = node_proxy(&node, &api, &[]);
    // The cleanup runs on its own thread: the client retries as UDP clients do, always from
    // the same port (a stale entry would swallow every try).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answer = None;
    while answer.is_none() && Instant::now() < deadline {
        answer = ask_udp(&pod_udp, "after");
    }
    assert_eq!(
        answer.as_deref(),
        Some("dns:after"),
        "the UDP client is served after the restart:\n{}",
        restarted.stderr()
    );
    drop(restarted);
    let _ = std::fs::remove_file(&decisions);
}

/// After ringlb exits, its tables are still there for the next one (kube-proxy leaves its
/// rules too); `ringlb cleanup` deletes them, and refuses while a ringlb answers.
fn assert_tables_left_then_cleaned_up(node: &Netns, proxy: &Ringlb) {
    for family in ["ip", "ip6"] {
        let kept = node.exec(&["nft", "list", "table", family, "ringlb"]);
        assert!(kept.status.success(), "the {family} table stays at exit");
    }
    let cleanup = node.exec(&[
        env!("CARGO_BIN_EXE_ringlb"),
        "cleanup",
        "--handover-socket",
        proxy.handover_socket(),
    ]);
    assert!(cleanup.status.success(), "{cleanup:?}");
    for family in ["ip", "ip6"] {
        let gone = node.exec(&["nft", "list", "table", family, "ringlb"]);
        assert!(
            !gone.status.success(),
            "ringlb cleanup deletes the {family} table"
        );
    }
}
