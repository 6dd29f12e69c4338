//! IPv6-only and dual-stack Services, steered family by family.

use super::*;

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
    let ipv6 = std::path::Path::new("/proc/sys/net/ipv6")
        .exists()
        .then_some(())
        .ok_or("no /proc/sys/net/ipv6");
    if require(ipv6, "IPv6", "boot a kernel with IPv6 (ipv6.disable=0)").is_none() {
        return;
    }
    wire_dual_stack(
        &pod,
        &node,
        &backend,
        &[
            "10.241.2.2/24",
            "10.241.2.3/24",
            "fd00:241:2::2/64",
            "fd00:241:2::3/64",
        ],
    );

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
    let mut proxy = node_proxy(
        &node,
        &api,
        &["--decision-log", decisions.to_str().unwrap()],
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
    assert_tables_left_then_cleaned_up(&node, &proxy);
    let _ = std::fs::remove_file(&decisions);
}
