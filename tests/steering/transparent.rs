//! `--preserve-client-ip` for every frontend: a pod's connections and UDP flows reach an
//! endpoint (of another node) from the pod's own address, through a cluster IP, a node port
//! and an external IP alike, over IPv4 and IPv6, past an nftables rule in the endpoint's
//! namespace that admits the pod's addresses only.

use super::*;

const POD: [&str; 2] = ["10.241.1.2", "fd00:241:1::2"];
const ENDPOINT: [&str; 2] = ["10.241.2.2", "fd00:241:2::2"];

/// A dual-stack Service of every frontend kind (cluster IP, node port, external IP), TCP and
/// UDP, whose one endpoint (an address of each family) is on another node.
fn transparent_objects() -> Objects {
    let slice = |family: &str, address: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": format!("who-{family}"), "namespace": "shop",
                            "resourceVersion": "1",
                            "labels": {"kubernetes.io/service-name": "who"}},
               "addressType": family,
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                         {"name": "dns", "port": 5353, "protocol": "UDP"}],
               "endpoints": [{"addresses": [address], "nodeName": "node-b",
                              "conditions": {"ready": true}}]})
    };
    vec![
        (
            "services",
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "who", "namespace": "shop", "resourceVersion": "1"},
                   "spec": {"type": "NodePort", "clusterIP": "10.96.0.30",
                            "clusterIPs": ["10.96.0.30", "fd00:241:96::30"],
                            "ipFamilies": ["IPv4", "IPv6"],
                            "ipFamilyPolicy": "RequireDualStack",
                            "externalIPs": ["10.241.9.30", "fd00:241:9::30"],
                            "ports": [
                                {"name": "http", "port": 80, "protocol": "TCP",
                                 "targetPort": 8080, "nodePort": 30100},
                                {"name": "dns", "port": 53, "protocol": "UDP",
                                 "targetPort": 5353, "nodePort": 30101}]}}),
        ),
        ("endpointslices", slice("IPv4", ENDPOINT[0])),
        ("endpointslices", slice("IPv6", ENDPOINT[1])),
    ]
}

/// The endpoint in `backend`, on each of its addresses: TCP 8080 answers each connection with
/// its peer's address, UDP 5353 each datagram with its sender's; an nftables rule admits the
/// pod's addresses only.
fn serve_who_guarded(backend: &Netns) {
    for address in ENDPOINT {
        let ip: std::net::IpAddr = address.parse().unwrap();
        serve_peer_address(backend, SocketAddr::new(ip, 8080));
        let udp = in_netns(&backend.0, move || {
            UdpSocket::bind(SocketAddr::new(ip, 5353)).unwrap()
        });
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(from.to_string().as_bytes(), from);
            }
        });
    }
    let guard = format!(
        "table inet guard {{\n  chain input {{\n    type filter hook input priority 0; \
         policy accept;\n    tcp dport 8080 ip saddr != {v4} drop\n    \
         udp dport 5353 ip saddr != {v4} drop\n    tcp dport 8080 ip6 saddr != {v6} drop\n    \
         udp dport 5353 ip6 saddr != {v6} drop\n  }}\n}}\n",
        v4 = POD[0],
        v6 = POD[1]
    );
    let path = std::env::temp_dir().join(format!("ringlb-test-{}-guard.nft", std::process::id()));
    std::fs::write(&path, guard).unwrap();
    let out = backend.exec(&["nft", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// A UDP datagram from the pod's address of `to`'s family in `ns` to `to`: the answer, and
/// the client's own address.
fn ask_udp(ns: &str, to: &str) -> (String, SocketAddr) {
    let to: SocketAddr = to.parse().unwrap();
    let from = POD[usize::from(to.is_ipv6())];
    let from = SocketAddr::new(from.parse().unwrap(), 0);
    in_netns(ns, move || {
        let c = UdpSocket::bind(from).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.connect(to).unwrap();
        c.send(b"who").unwrap();
        let mut buf = [0u8; 512];
        let n = c.recv(&mut buf).expect("a UDP answer");
        (
            String::from_utf8_lossy(&buf[..n]).into_owned(),
            c.local_addr().unwrap(),
        )
    })
}

#[test]
fn a_pod_reaches_endpoints_from_its_own_address_on_every_frontend() {
    let Some((pod, node, backend)) = pod_node_backend("tppod", "tpnode", "tpbe") else {
        return;
    };
    wire_dual_stack(
        &pod,
        &node,
        &backend,
        &["10.241.2.2/24", "fd00:241:2::2/64"],
    );
    serve_who_guarded(&backend);
    // The guard drops what does not come from the pod: the node's own address, for one.
    for to in ["10.241.2.2:8080", "[fd00:241:2::2]:8080"] {
        let direct = ask(&node.0, to).unwrap_err();
        assert!(
            matches!(direct.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "the node to {to}: {direct}"
        );
    }
    let api = FakeApi::start(&node.0, "transparent", transparent_objects());
    let _proxy = node_proxy(
        &node,
        &api,
        &[
            "--nodeport-addresses",
            "10.241.1.0/24,fd00:241:1::/64",
            "--cluster-cidr",
            "10.241.1.0/24,fd00:241:1::/64",
            "--preserve-client-ip",
            "--workers",
            "1",
        ],
    );
    let frontends = [
        ("10.96.0.30", POD[0]),
        ("10.241.1.1", POD[0]),
        ("10.241.9.30", POD[0]),
        ("[fd00:241:96::30]", POD[1]),
        ("[fd00:241:1::1]", POD[1]),
        ("[fd00:241:9::30]", POD[1]),
    ];
    for (at, pod_address) in frontends {
        let node_port = at == "10.241.1.1" || at == "[fd00:241:1::1]";
        let (tcp, udp) = if node_port { (30100, 30101) } else { (80, 53) };
        let to = format!("{at}:{tcp}");
        assert_eq!(ask(&pod.0, &to).unwrap(), pod_address, "TCP to {to}");
        let to = format!("{at}:{udp}");
        let (seen, client) = ask_udp(&pod.0, &to);
        assert_eq!(seen, client.to_string(), "UDP to {to}: address and port");
    }
}
