//! Node mode with nftables steering, end to end in network namespaces this test creates: a
//! "pod" namespace as the client, a "node" namespace running `ringlb run --kubernetes
//! --nftables` against a small static API server, and a "backend" namespace with the
//! endpoint. Addresses are private and exist only inside these namespaces; the host's own
//! networking is never touched. Skipped, with the reason printed, where namespaces cannot be
//! created; where they can, a missing `nft` or `conntrack` fails the test.

#[allow(dead_code)] // the steering tests use only part of the fake API
#[path = "kube/fake_api.rs"]
mod fake_api;
mod support;

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

/// The pod, node and backend namespaces of a steering test, or `None` (with the reason
/// printed) where namespaces cannot be created. Fails without `nft` or `conntrack`.
fn pod_node_backend(pod: &str, node: &str, backend: &str) -> Option<(Netns, Netns, Netns)> {
    match (
        Netns::create(pod),
        Netns::create(node),
        Netns::create(backend),
    ) {
        (Ok(p), Ok(n), Ok(b)) => {
            require_nft_and_conntrack();
            Some((p, n, b))
        }
        (p, n, b) => {
            let why = [p.err(), n.err(), b.err()].into_iter().flatten().next();
            println!("skipped: cannot create network namespaces: {why:?}");
            None
        }
    }
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
/// retransmission a second later (an ICMP error the kernel set aside; see the README).
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

#[test]
fn cluster_ip_node_port_and_external_ip_are_steered_and_the_table_goes_at_exit() {
    let Some((pod, node, backend)) = pod_node_backend("pod", "node", "be") else {
        return;
    };
    wire_ipv4(&pod, &node, &backend);
    serve_web(&backend);
    let udp_be = in_netns(&backend.0, || UdpSocket::bind("10.241.2.2:5353").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp_be.recv_from(&mut buf) {
            let reply = [b"dns:".as_slice(), &buf[..n]].concat();
            let _ = udp_be.send_to(&reply, from);
        }
    });
    // The API server, on the node's loopback.
    let api = FakeApi::start(&node.0, "steering", objects());
    // A stale table from an earlier run is replaced.
    let stale = node.exec(&["nft", "add table ip ringlb; add chain ip ringlb stale"]);
    assert!(stale.status.success());

    let node_proxy = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--kubernetes",
            "--kubeconfig",
            api.kubeconfig(),
            "--node-name",
            "node-a",
            "--nftables",
            "--admin",
            "off",
        ];
        args.extend_from_slice(extra);
        Ringlb::start_in_netns(&node.0, &args)
    };
    let decisions = std::env::temp_dir().join(format!(
        "ringlb-test-{}-steering-decisions.jsonl",
        std::process::id()
    ));
    let decisions_arg = decisions.to_str().unwrap().to_owned();
    let mut proxy = node_proxy(&[
        "--decision-log",
        &decisions_arg,
        "--nodeport-addresses",
        "10.241.1.0/24,127.0.0.0/8",
        "--healthz-bind-address",
        "0.0.0.0:10256",
        "--workers",
        "2",
    ]);
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
    for family in ["ip", "ip6"] {
        let gone = node.exec(&["nft", "list", "table", family, "ringlb"]);
        assert!(
            !gone.status.success(),
            "the {family} table is deleted at exit"
        );
    }

    let restarted = node_proxy(&[]);
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

/// The objects of the source-range and short-circuit test: a load balancer IP guarded by
/// `loadBalancerSourceRanges` (admitting the "outside" network only), a policy `Local`
/// service whose only endpoint is on another node, and one whose endpoint (on port 8081)
/// is here and tells each client its address.
fn guarded_objects() -> Objects {
    let svc = |name: &str, ip: &str, lb_ip: &str, node_port: u16, extra: Value| {
        let mut spec = json!({"type": "LoadBalancer", "clusterIP": ip, "clusterIPs": [ip],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http",
                       "nodePort": node_port}]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1"},
               "spec": spec,
               "status": {"loadBalancer": {"ingress": [{"ip": lb_ip}]}}})
    };
    let slice = |service: &str, node: &str, port: u16| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("{service}-1"), "namespace": "shop",
                            "resourceVersion": "1",
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
               "endpoints": [{"addresses": ["10.241.2.2"], "nodeName": node,
                              "conditions": {"ready": true}}]})
    };
    vec![
        (
            "services",
            svc(
                "guarded",
                "10.96.0.20",
                "10.241.9.20",
                30090,
                json!({"loadBalancerSourceRanges": ["10.241.3.0/24"]}),
            ),
        ),
        (
            "services",
            svc(
                "far",
                "10.96.0.21",
                "10.241.9.21",
                30091,
                json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32102}),
            ),
        ),
        ("services", {
            let mut keep = svc(
                "keep",
                "10.96.0.22",
                "10.241.9.22",
                30092,
                json!({"externalTrafficPolicy": "Local", "healthCheckNodePort": 32103}),
            );
            keep["spec"]["ports"].as_array_mut().unwrap().push(json!(
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353,
                 "nodePort": 30093}));
            keep
        }),
        ("endpointslices", slice("guarded", "node-a", 8080)),
        ("endpointslices", slice("far", "node-b", 8080)),
        ("endpointslices", {
            let mut keep = slice("keep", "node-a", 8081);
            keep["ports"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "dns", "port": 5353, "protocol": "UDP"}));
            keep
        }),
    ]
}

/// New TCP from `ns` to `to` is dropped: the client times out.
fn assert_dropped(ns: &str, to: &str) {
    let dropped = ask(ns, to).unwrap_err();
    assert!(
        matches!(dropped.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{ns} to {to}: {dropped}"
    );
}

#[test]
fn load_balancer_ips_are_guarded_local_traffic_short_circuited_and_clients_kept() {
    let Some((pod, node, backend)) = pod_node_backend("fwpod", "fwnode", "fwbe") else {
        return;
    };
    let outside = match Netns::create("fwext") {
        Ok(ns) => ns,
        Err(e) => {
            println!("skipped: cannot create network namespaces: {e}");
            return;
        }
    };
    wire_ipv4(&pod, &node, &backend);
    serve_web(&backend);
    link(
        &node,
        "n2",
        &["10.241.3.1/24"],
        &outside,
        "e0",
        &["10.241.3.2/24"],
    );
    outside.ip(&["route", "add", "default", "via", "10.241.3.1"]);
    // The local endpoint of `keep`: answers with the address it sees (UDP: and port).
    let be = in_netns(&backend.0, || TcpListener::bind("10.241.2.2:8081").unwrap());
    std::thread::spawn(move || {
        for s in be.incoming() {
            let Ok(mut s) = s else { continue };
            let peer = s
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = s.write_all(format!("{peer}\n").as_bytes());
        }
    });
    let udp_be = in_netns(&backend.0, || UdpSocket::bind("10.241.2.2:5353").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = udp_be.recv_from(&mut buf) {
            let _ = udp_be.send_to(from.to_string().as_bytes(), from);
        }
    });
    let api = FakeApi::start(&node.0, "guarded", guarded_objects());
    let mut proxy = Ringlb::start_in_netns(
        &node.0,
        &[
            "run",
            "--kubernetes",
            "--kubeconfig",
            api.kubeconfig(),
            "--node-name",
            "node-a",
            "--nftables",
            "--admin",
            "off",
            "--nodeport-addresses",
            "10.241.1.0/24",
            "--cluster-cidr",
            "10.241.1.0/24",
            "--preserve-client-ip",
            "--workers",
            "1",
        ],
    );

    // loadBalancerSourceRanges admit the outside network to the load balancer IP, and no
    // one else: not the pods either.
    assert_eq!(ask(&outside.0, "10.241.9.20:80").unwrap(), "web");
    assert_dropped(&pod.0, "10.241.9.20:80");
    // The ranges guard the load balancer IP only, as kube-proxy's: not the cluster IP or
    // the node port.
    assert_eq!(ask(&pod.0, "10.96.0.20:80").unwrap(), "web");
    assert_eq!(ask(&pod.0, "10.241.1.1:30090").unwrap(), "web");

    // externalTrafficPolicy: Local, the only endpoint on another node: dropped for the
    // outside, but a pod on this node (in --cluster-cidr) and the node itself reach the
    // service's endpoints through its load balancer IP and its node port.
    assert_dropped(&outside.0, "10.241.9.21:80");
    assert_eq!(ask(&pod.0, "10.241.9.21:80").unwrap(), "web");
    assert_eq!(ask(&pod.0, "10.241.1.1:30091").unwrap(), "web");
    assert_eq!(ask(&node.0, "10.241.9.21:80").unwrap(), "web");
    assert!(
        http_get(&pod.0, "10.241.1.1:32102").starts_with("HTTP/1.1 503 "),
        "no local endpoint for the load balancer's health check"
    );

    // --preserve-client-ip: the local endpoint of a policy Local service sees the outside
    // client's own address, as behind kube-proxy. A pod's connection is short-circuited to
    // the cluster-wide part, which connects from the node as usual.
    assert_eq!(ask(&outside.0, "10.241.9.22:80").unwrap(), "10.241.3.2");
    let (seen, client, from) = in_netns(&outside.0, || {
        let c = UdpSocket::bind("0.0.0.0:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.connect("10.241.9.22:53").unwrap();
        c.send(b"who").unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = c.recv_from(&mut buf).expect("a UDP answer");
        let client = SocketAddr::new(
            "10.241.3.2".parse().unwrap(),
            c.local_addr().unwrap().port(),
        );
        (
            String::from_utf8_lossy(&buf[..n]).into_owned(),
            client,
            from,
        )
    });
    assert_eq!(
        seen,
        client.to_string(),
        "UDP keeps the client's address and port"
    );
    assert_eq!(from, "10.241.9.22:53".parse::<SocketAddr>().unwrap());
    assert_eq!(ask(&pod.0, "10.241.9.22:80").unwrap(), "10.241.2.1");
    let rules = node.exec(&["ip", "rule", "show"]);
    assert!(
        String::from_utf8_lossy(&rules.stdout).contains("lookup 2400"),
        "{rules:?}"
    );
    assert!(
        !proxy.stderr().contains("without --cluster-cidr"),
        "no warning with --cluster-cidr: {}",
        proxy.stderr()
    );
    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success(), "{}", proxy.stderr());
    let rules = node.exec(&["ip", "rule", "show"]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("lookup 2400"),
        "the policy rule goes at exit: {rules:?}"
    );
}

/// The objects of the dual-stack test: addresses only in 10.241.0.0/16 and fd00:241::/32.
fn dual_stack_objects() -> Objects {
    let svc = |name: &str, ips: &[&str], port: Value, extra: Value| {
        let mut spec = json!({"clusterIP": ips[0], "clusterIPs": ips, "ports": [port]});
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1",
                            "annotations": {"ringlb.io/scheduler": "dh"}},
               "spec": spec})
    };
    let http = json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080});
    let slice = |name: &str, service: &str, family: &str, addrs: &[&str], node: &str| {
        let endpoints: Vec<Value> = addrs
            .iter()
            .map(|a| json!({"addresses": [a], "nodeName": node, "conditions": {"ready": true}}))
            .collect();
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "shop", "resourceVersion": "1",
                            "labels": {"kubernetes.io/service-name": service}},
               "addressType": family,
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": endpoints})
    };
    let mut dns6 = slice("dns6-1", "dns6", "IPv6", &["fd00:241:2::2"], "node-a");
    dns6["ports"] = json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]);
    vec![
        (
            "services",
            svc(
                "web",
                &["fd00:241:96::14", "10.241.96.20"],
                json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                       "nodePort": 30080}),
                json!({"type": "NodePort", "externalIPs": ["fd00:241:9::9"]}),
            ),
        ),
        (
            "services",
            svc(
                "v4eps",
                &["10.241.96.11", "fd00:241:96::11"],
                http.clone(),
                json!({}),
            ),
        ),
        (
            "services",
            svc("empty6", &["fd00:241:96::12"], http.clone(), json!({})),
        ),
        (
            "services",
            svc(
                "local6",
                &["fd00:241:96::13"],
                http,
                json!({"internalTrafficPolicy": "Local"}),
            ),
        ),
        (
            "services",
            svc(
                "dns6",
                &["fd00:241:96::15"],
                json!({"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}),
                json!({}),
            ),
        ),
        (
            "endpointslices",
            slice("web-6", "web", "IPv6", &BACKENDS_V6, "node-a"),
        ),
        (
            "endpointslices",
            slice("web-4", "web", "IPv4", &BACKENDS_V4, "node-a"),
        ),
        (
            "endpointslices",
            slice("v4eps-4", "v4eps", "IPv4", &["10.241.2.2"], "node-a"),
        ),
        (
            "endpointslices",
            slice("local6-6", "local6", "IPv6", &["fd00:241:2::2"], "node-b"),
        ),
        (
            "services",
            svc(
                "lb6",
                &["fd00:241:96::16"],
                json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080,
                       "nodePort": 30083}),
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                       "healthCheckNodePort": 32103}),
            ),
        ),
        (
            "endpointslices",
            slice("lb6-6", "lb6", "IPv6", &["fd00:241:2::2"], "node-a"),
        ),
        ("endpointslices", dns6),
        (
            "servicecidrs",
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
                   "metadata": {"name": "kubernetes", "resourceVersion": "1"},
                   "spec": {"cidrs": ["10.241.96.0/24", "fd00:241:96::/112"]}}),
        ),
        (
            "nodes",
            // Primary addresses (no --nodeport-addresses): the first InternalIP and the first
            // of the other family, never the ExternalIP (the node's backend side here).
            json!({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": "node-a", "resourceVersion": "1"},
                   "status": {"addresses": [
                       {"type": "Hostname", "address": "node-a"},
                       {"type": "ExternalIP", "address": "10.241.2.1"},
                       {"type": "InternalIP", "address": "fd00:241:1::1"},
                       {"type": "InternalIP", "address": "10.241.1.1"}]}}),
        ),
    ]
}

/// The endpoints of the dual-stack `web` Service, one backend namespace holding them all.
const BACKENDS_V6: [&str; 2] = ["fd00:241:2::2", "fd00:241:2::3"];
const BACKENDS_V4: [&str; 2] = ["10.241.2.2", "10.241.2.3"];

/// The endpoint `dh` gives `dest` among `backends` (in slice order), as the data plane does.
fn dh_pick(backends: &[&str], dest: &str) -> String {
    use balancers::{BackendSpec, Flow, Scheduler, SchedulerConfig, SchedulerKind};
    let specs: Vec<BackendSpec> = backends.iter().map(|_| BackendSpec::new(1)).collect();
    let config = SchedulerConfig::new(SchedulerKind::Dh);
    let scheduler = Scheduler::build(&config, &specs).unwrap();
    let states: Vec<_> = specs
        .iter()
        .map(|_| std::sync::Arc::new(balancers::BackendState::new(None)))
        .collect();
    let flow = Flow {
        client: "[fd00:241:1::2]:40000".parse().unwrap(),
        dest: dest.parse().unwrap(),
    };
    backends[scheduler.pick(&flow, &states).unwrap()].to_owned()
}

#[test]
fn ipv6_and_dual_stack_services_are_steered_family_by_family() {
    let Some((pod, node, backend)) = pod_node_backend("pod6", "node6", "be6") else {
        return;
    };
    if !std::path::Path::new("/proc/sys/net/ipv6").exists() {
        println!("skipped: this kernel has no IPv6");
        return;
    }
    link(
        &node,
        "n0",
        &["10.241.1.1/24", "fd00:241:1::1/64"],
        &pod,
        "p0",
        &["10.241.1.2/24", "fd00:241:1::2/64"],
    );
    link(
        &node,
        "n1",
        &["10.241.2.1/24", "fd00:241:2::1/64"],
        &backend,
        "b0",
        &[
            "10.241.2.2/24",
            "10.241.2.3/24",
            "fd00:241:2::2/64",
            "fd00:241:2::3/64",
        ],
    );
    pod.ip(&["route", "add", "default", "via", "10.241.1.1"]);
    pod.ip(&["-6", "route", "add", "default", "via", "fd00:241:1::1"]);
    backend.ip(&["route", "add", "default", "via", "10.241.2.1"]);
    backend.ip(&["-6", "route", "add", "default", "via", "fd00:241:2::1"]);
    // Routes for the service addresses, which only the node's tables know (and forwarding,
    // so that a pod's packet to an unserved port of a cluster IP reaches the forward hook).
    node.ip(&["route", "add", "default", "via", "10.241.2.2"]);
    node.ip(&["-6", "route", "add", "default", "via", "fd00:241:2::2"]);
    node.sysctl("net.ipv4.ip_forward=1");
    node.sysctl("net.ipv6.conf.all.forwarding=1");

    // Each endpoint answers with its own address.
    for addr in BACKENDS_V6.iter().chain(&BACKENDS_V4) {
        let at = SocketAddr::new(addr.parse().unwrap(), 8080);
        let listener = in_netns(&backend.0, move || TcpListener::bind(at).unwrap());
        let name = format!("{addr}\n");
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.write_all(name.as_bytes());
            }
        });
    }
    let udp_be = in_netns(&backend.0, || {
        UdpSocket::bind("[fd00:241:2::2]:5353").unwrap()
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = udp_be.recv_from(&mut buf) {
            let reply = [b"dns6:".as_slice(), &buf[..n]].concat();
            let _ = udp_be.send_to(&reply, from);
        }
    });
    let api = FakeApi::start(&node.0, "steering6", dual_stack_objects());
    let decisions = std::env::temp_dir().join(format!(
        "ringlb-test-{}-steering6-decisions.jsonl",
        std::process::id()
    ));
    let mut proxy = Ringlb::start_in_netns(
        &node.0,
        &[
            "run",
            "--kubernetes",
            "--kubeconfig",
            api.kubeconfig(),
            "--node-name",
            "node-a",
            "--nftables",
            "--admin",
            "off",
            "--decision-log",
            decisions.to_str().unwrap(),
        ],
    );
    // Without --cluster-cidr pods are outside clients to policy Local: ringlb says so.
    proxy.wait_stderr("--nftables without --cluster-cidr");
    let listed = node.exec(&["nft", "list", "table", "ip6", "ringlb"]);
    let table = String::from_utf8_lossy(&listed.stdout);
    assert!(table.contains("fd00:241:96::14 . tcp . 80"), "{table}");
    // A load balancer probing the node over IPv6 gets its healthCheckNodePort answer.
    let probed = http_get(&pod.0, "[fd00:241:1::1]:32103");
    assert!(probed.starts_with("HTTP/1.1 200 "), "{probed}");
    assert!(probed.contains("\"localEndpoints\": 1,"), "{probed}");
    // The service CIDRs are not needed to start serving; they follow once listed.
    for (family, cidr) in [("ip", "10.241.96.0/24"), ("ip6", "fd00:241:96::/112")] {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let set = node.exec(&["nft", "list", "set", family, "ringlb", "service-cidrs"]);
            if String::from_utf8_lossy(&set.stdout).contains(cidr) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{cidr} never reached {family} ringlb:\n{}",
                proxy.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    // `dh` hashes the address the client dialled (IP6T_SO_ORIGINAL_DST / SO_ORIGINAL_DST),
    // so every connection to one frontend lands on one endpoint; the cluster IP and the node
    // address (where the redirect delivers, and what the portal would show) hash apart.
    let cases = [
        ("[fd00:241:96::14]:80", &BACKENDS_V6[..], "fd00:241:96::14"),
        ("[fd00:241:1::1]:30080", &BACKENDS_V6[..], "fd00:241:1::1"),
        ("10.241.96.20:80", &BACKENDS_V4[..], "10.241.96.20"),
        ("10.241.1.1:30080", &BACKENDS_V4[..], "10.241.1.1"),
    ];
    assert_ne!(
        dh_pick(&BACKENDS_V6, "[fd00:241:96::14]:80"),
        dh_pick(&BACKENDS_V6, "[fd00:241:1::1]:80"),
        "the test needs a cluster IP and a node address that dh tells apart"
    );
    assert_ne!(
        dh_pick(&BACKENDS_V4, "10.241.96.20:80"),
        dh_pick(&BACKENDS_V4, "10.241.1.1:80"),
        "the test needs a cluster IP and a node address that dh tells apart"
    );
    for (to, backends, dest) in cases {
        let want = dh_pick(
            backends,
            &SocketAddr::new(dest.parse().unwrap(), 1).to_string(),
        );
        for _ in 0..4 {
            // Each family only reaches its own family's endpoints.
            assert_eq!(ask(&pod.0, to).unwrap(), want, "{to}");
        }
    }
    // The Node's ExternalIP is not a primary address: it takes no NodePort.
    let external = ask(&pod.0, "10.241.2.1:30080").unwrap_err();
    assert_eq!(external.kind(), ErrorKind::ConnectionRefused, "{external}");
    // The external IP, and the cluster IP from the node itself (the output hook).
    let answer = ask(&pod.0, "[fd00:241:9::9]:80").unwrap();
    assert!(BACKENDS_V6.contains(&answer.as_str()), "{answer}");
    let answer = ask(&node.0, "[fd00:241:96::14]:80").unwrap();
    assert!(BACKENDS_V6.contains(&answer.as_str()), "{answer}");
    // The decision log names the frontend each client dialled.
    for frontend in ["[fd00:241:96::14]:80", "[fd00:241:1::1]:30080"] {
        wait_decision_line(&decisions, frontend);
    }
    // UDP over IPv6: the answer comes back from the cluster IP the pod asked.
    let (answer, from) = in_netns(&pod.0, || {
        let c = UdpSocket::bind("[::]:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.send_to(b"q1", "[fd00:241:96::15]:53").unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = c.recv_from(&mut buf).expect("a UDP answer");
        (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
    });
    assert_eq!(answer, "dns6:q1");
    assert_eq!(from, "[fd00:241:96::15]:53".parse::<SocketAddr>().unwrap());

    // A dual-stack Service with IPv4 endpoints only: IPv4 works, IPv6 is refused at once.
    assert_eq!(ask(&pod.0, "10.241.96.11:80").unwrap(), "10.241.2.2");
    // No endpoint anywhere: refused at once.
    for to in ["[fd00:241:96::11]:80", "[fd00:241:96::12]:80"] {
        assert_refused_at_once(&pod.0, to);
    }
    // Policy Local, the only endpoint on another node: dropped (the client times out).
    let dropped = ask(&pod.0, "[fd00:241:96::13]:80").unwrap_err();
    assert!(
        matches!(dropped.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
        "{dropped}"
    );
    // A cluster IP on a port or protocol its Service does not have: refused, from a pod and
    // from the node, TCP and UDP.
    assert_unserved_ports_refused(
        [&pod.0, &node.0],
        "[fd00:241:96::14]:81",
        "[fd00:241:96::14]:53",
    );
    // The IPv6 portal behind [fd00:241:96::14]:80 cannot be dialled directly.
    assert_portal_not_dialable(
        &node,
        &pod,
        "[fd00:241:96::14]:80",
        &["fd00:241:1::1", "::1"],
    );

    // An unallocated address of a service CIDR: dropped, from a pod and from the node, as
    // kube-proxy drops it. (Something answers there if the traffic gets through.)
    backend.ip(&["addr", "add", "10.241.96.99/32", "dev", "lo"]);
    backend.ip(&["addr", "add", "fd00:241:96::99/128", "dev", "lo", "nodad"]);
    for at in ["10.241.96.99:80", "[fd00:241:96::99]:80"] {
        let at: SocketAddr = at.parse().unwrap();
        let leak = in_netns(&backend.0, move || TcpListener::bind(at).unwrap());
        std::thread::spawn(move || {
            for s in leak.incoming() {
                let Ok(mut s) = s else { continue };
                let _ = s.write_all(b"leak\n");
            }
        });
    }
    let tries: Vec<_> = [&pod.0, &node.0]
        .into_iter()
        .flat_map(|ns| {
            [
                (ns.clone(), "10.241.96.99:80"),
                (ns.clone(), "[fd00:241:96::99]:80"),
            ]
        })
        .map(|(ns, to)| std::thread::spawn(move || (ns.clone(), to, ask(&ns, to))))
        .collect();
    for t in tries {
        let (ns, to, got) = t.join().unwrap();
        let err = got.expect_err(&format!("{ns} reached unallocated {to}"));
        assert!(
            matches!(err.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "{ns} to {to}: {err}"
        );
    }

    proxy.signal(libc::SIGTERM);
    assert!(proxy.wait_exit().success(), "{}", proxy.stderr());
    for family in ["ip", "ip6"] {
        let gone = node.exec(&["nft", "list", "table", family, "ringlb"]);
        assert!(
            !gone.status.success(),
            "the {family} table is deleted at exit"
        );
    }
    let _ = std::fs::remove_file(&decisions);
}

/// What one connection from a client got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Try {
    /// Answered by the endpoint.
    Served,
    /// `ECONNREFUSED`: the kernel refused it (the `no-endpoints` reject).
    Refused,
    /// Accepted, then reset: a portal had no endpoint for it.
    Reset,
    /// Anything else (a timeout, a wrong answer).
    Other,
}

/// Connects from namespace `ns` to `to` again and again, one connection at a time, each read
/// to its end, until the last `run` tries all gave `until`; every outcome in order. Bounded
/// (10 s), so an outcome that never settles comes back for the caller to report.
fn tries_until(ns: &str, to: SocketAddr, until: Try, run: usize) -> Vec<Try> {
    in_netns(ns, move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tries = Vec::new();
        while Instant::now() < deadline {
            let got = match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => Try::Refused,
                Err(_) => Try::Other,
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut answer = String::new();
                    match std::io::Read::read_to_string(&mut s, &mut answer) {
                        Ok(_) if answer == "web\n" => Try::Served,
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => Try::Reset,
                        _ => Try::Other,
                    }
                }
            };
            tries.push(got);
            if tries.len() >= run && tries[tries.len() - run..].iter().all(|t| *t == until) {
                break;
            }
        }
        tries
    })
}

/// `tries` as runs, the first 40 of them: `Served×12 Refused×130`.
fn runs(tries: &[Try]) -> String {
    let mut out: Vec<(Try, usize)> = Vec::new();
    for t in tries {
        match out.last_mut() {
            Some((last, n)) if last == t => *n += 1,
            _ => out.push((*t, 1)),
        }
    }
    let mut text: Vec<String> = out
        .iter()
        .take(40)
        .map(|(t, n)| format!("{t:?}×{n}"))
        .collect();
    if out.len() > 40 {
        text.push(format!("and {} runs more", out.len() - 40));
    }
    text.join(" ")
}

/// A Service loses all its endpoints and gets them back, three times, while the node itself
/// keeps connecting to its cluster IP from a 128-port range, so the client soon reuses its
/// source ports (as a busy one does after some thousand connections). Each way the client
/// sees one switch and nothing else: served, then refused from the moment the `no-endpoints`
/// element is in; refused, then served from the moment the redirect is back. Never accepted
/// and reset: ringlb withdraws the redirect before its data plane drops the endpoints.
/// Before, the portal reset the clients of that window, and each reset (from the portal's
/// side, no FIN) left a conntrack entry in `CLOSE` that the kernel does not reopen for a new
/// SYN on the same ports: such a SYN skipped the `nat` chain and every `ct state new` check,
/// was reset again while the endpoints were gone and served early when they came back,
/// followed by refusals until the redirect was written.
#[test]
fn a_service_losing_and_regaining_its_endpoints_is_refused_then_served_never_reset() {
    let Some((pod, node, backend)) = pod_node_backend("churn-pod", "churn", "churn-be") else {
        return;
    };
    wire_ipv4(&pod, &node, &backend);
    serve_web(&backend);
    node.sysctl("net.ipv4.ip_local_port_range=40000 40127");
    let api = in_netns(&node.0, fake_api::FakeApi::start);
    api.apply(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}}));
    let slice = |endpoints: Value| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": "shop",
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": endpoints})
    };
    let endpoint = json!([{"addresses": ["10.241.2.2"], "nodeName": "node-a",
                           "conditions": {"ready": true}}]);
    api.apply(slice(endpoint.clone()));
    let kubeconfig = api.kubeconfig();
    let proxy = Ringlb::start_in_netns(
        &node.0,
        &[
            "run",
            "--kubernetes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            "node-a",
            "--nftables",
            "--admin",
            "off",
            "--workers",
            "1",
        ],
    );
    let front: SocketAddr = "10.96.0.10:80".parse().unwrap();
    assert_eq!(tries_until(&node.0, front, Try::Served, 1), [Try::Served]);
    // One switch from `from` to `to` (each try of the run is `from` until the first `to`,
    // then `to`), settled over the whole port range.
    let one_switch = |tries: &[Try], from: Try, to: Try| {
        let first = tries.iter().position(|t| *t == to).unwrap_or(tries.len());
        tries[..first].iter().all(|t| *t == from) && tries[first..].iter().all(|t| *t == to)
    };
    for round in 0..3 {
        api.apply(slice(json!([])));
        let gone = tries_until(&node.0, front, Try::Refused, 128);
        assert!(
            one_switch(&gone, Try::Served, Try::Refused) && gone.ends_with(&[Try::Refused; 128]),
            "round {round}, endpoints gone: {}\n{}",
            runs(&gone),
            proxy.stderr()
        );
        api.apply(slice(endpoint.clone()));
        let back = tries_until(&node.0, front, Try::Served, 128);
        assert!(
            one_switch(&back, Try::Refused, Try::Served) && back.ends_with(&[Try::Served; 128]),
            "round {round}, endpoints back: {}\n{}",
            runs(&back),
            proxy.stderr()
        );
    }
    drop(proxy);
    let _ = std::fs::remove_file(kubeconfig);
}

/// The cost of programming the table at scale, with ringlb's own code and `nft`, in a
/// namespace of its own: the first (whole) transaction for 10,000 Services (a cluster IP
/// and a node port each), then one Service's endpoints going away and coming back (two
/// element lines each way). Prints the numbers; asserts only that they were applied.
#[test]
#[ignore = "benchmark: run with --ignored --nocapture to print nftables transaction times"]
fn nftables_transactions_at_ten_thousand_services() {
    use proxy_core::steer::{SteerEntry, Steering, Verdict};
    let ns = match Netns::create("bench") {
        Ok(ns) => ns,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
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
        // `nft` runs as a child of this thread and so in its namespace.
        let mut steering = Steering::new("nft");
        let full = steering
            .sync(&entries, &cluster_ips, &[])
            .expect("whole table");
        let mut changed = entries.clone();
        let mut toggles = Vec::new();
        for round in 0..10 {
            changed[2 * round].verdict = Verdict::Reject;
            toggles.push(
                steering
                    .sync(&changed, &cluster_ips, &[])
                    .expect("one change"),
            );
            changed[2 * round].verdict = entries[2 * round].verdict;
            toggles.push(
                steering
                    .sync(&changed, &cluster_ips, &[])
                    .expect("one change back"),
            );
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
    });
    assert!(
        lines > SERVICES as usize,
        "every service in the whole table"
    );
}
