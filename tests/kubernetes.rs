//! Kubernetes manifests as the config: a selector-less Service with hand-written Endpoints in
//! front of "VMs", reached on its cluster IP, external IP and node port, then edited live.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};

use support::*;

/// A free port on `ip` (bound and released; the address is unique to this test process).
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind(SocketAddr::new(ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn manifests(
    cluster: SocketAddr,
    external: IpAddr,
    node_port: u16,
    backends: &[SocketAddr],
) -> String {
    let subsets = endpoint_subsets(backends);
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: vms\n  namespace: prod\nspec:\n  type: NodePort\n  \
         clusterIP: {}\n  externalIPs: [\"{external}\"]\n  ports:\n  - name: http\n    port: {}\n    \
         targetPort: web\n    nodePort: {node_port}\n---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  \
         name: vms\n  namespace: prod\nsubsets:\n{subsets}",
        cluster.ip(),
        cluster.port()
    )
}

#[test]
fn a_selector_less_service_serves_on_cluster_external_and_node_addresses_and_follows_edits() {
    let (a, b) = (name_server("a"), name_server("b"));
    // Loopback addresses of our own, so parallel runs do not collide.
    let octet = (std::process::id() % 200) as u8 + 20;
    let cluster_ip = IpAddr::V4(Ipv4Addr::new(127, 90, octet, 1));
    let external_ip = IpAddr::V4(Ipv4Addr::new(127, 90, octet, 2));
    let node_ip = IpAddr::V4(Ipv4Addr::new(127, 90, octet, 3));
    let port = free_port(cluster_ip);
    let cluster = SocketAddr::new(cluster_ip, port);
    let node_port = free_port(node_ip);
    let path = write_config("k8s", &manifests(cluster, external_ip, node_port, &[a, b]));

    let proxy = Ringlb::start(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--node-address",
        &node_ip.to_string(),
        "--workers",
        "1",
    ]);
    let mut listening = proxy.addrs.clone();
    listening.sort();
    let mut want = vec![
        cluster,
        SocketAddr::new(external_ip, port),
        SocketAddr::new(node_ip, node_port),
    ];
    want.sort();
    assert_eq!(
        listening, want,
        "cluster IP and external IP at port, node address at nodePort"
    );

    let mut names: Vec<String> = (0..4).map(|_| answer(cluster)).collect();
    names.sort();
    assert_eq!(
        names,
        ["a", "a", "b", "b"],
        "round robin over both hand-written endpoints"
    );
    for addr in &want {
        assert!(
            ["a", "b"].contains(&answer(*addr).as_str()),
            "{addr} serves"
        );
    }

    // Edit the Endpoints: only b is left.
    std::fs::write(&path, manifests(cluster, external_ip, node_port, &[b])).unwrap();
    proxy.wait_line("reloaded");
    for _ in 0..3 {
        assert_eq!(answer(cluster), "b");
    }
    std::fs::remove_file(&path).unwrap();
}
