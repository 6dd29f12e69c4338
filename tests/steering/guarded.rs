//! Load balancer IPs guarded by `loadBalancerSourceRanges`, policy `Local` short-circuited
//! on the node, and clients' source addresses kept.

use super::*;

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
    let Some(outside) = netns("fwext") else {
        return;
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
    serve_peer_address(&backend, "10.241.2.2:8081".parse().unwrap());
    let udp_be = in_netns(&backend.0, || UdpSocket::bind("10.241.2.2:5353").unwrap());
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = udp_be.recv_from(&mut buf) {
            let _ = udp_be.send_to(from.to_string().as_bytes(), from);
        }
    });
    let api = FakeApi::start(&node.0, "guarded", guarded_objects());
    let mut proxy = node_proxy(
        &node,
        &api,
        &[
            "--nodeport-addresses",
            "10.241.1.0/24",
            "--cluster-cidr",
            "10.241.1.0/24",
            "--preserve-client-ip",
            "--no-transparent",
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
    // the cluster-wide part, which, with --no-transparent, connects from the node.
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
        String::from_utf8_lossy(&rules.stdout).contains("lookup 2400"),
        "the policy rule stays at exit, with the tables: {rules:?}"
    );
    assert_tables_left_then_cleaned_up(&node, &proxy);
    let rules = node.exec(&["ip", "rule", "show"]);
    assert!(
        !String::from_utf8_lossy(&rules.stdout).contains("lookup 2400"),
        "ringlb cleanup deletes the policy rule: {rules:?}"
    );
}
