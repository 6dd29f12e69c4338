//! Node mode resolution (a pure function of Services and EndpointSlices): the fixtures as a
//! node sees them, traffic policies, topology hints, label rules, SCTP and empty services.

use std::net::IpAddr;
use std::path::Path;

use config::k8s::{
    parse_manifests, resolve_node, Frontends, NodeOptions, NotProxiedReason, Object, Resolved,
};

fn options(zone: Option<&str>) -> NodeOptions {
    NodeOptions {
        node_name: "node-a".into(),
        zone: zone.map(str::to_owned),
        node_addresses: vec!["127.0.0.100".parse::<IpAddr>().unwrap()],
        service_proxy_name: None,
        source_ranges_enforced: true,
        preserve_client_ip: false,
        transparent_clients: Vec::new(),
    }
}

fn objects(text: &str) -> Vec<Object> {
    parse_manifests("inline.yaml", text).unwrap_or_else(|e| panic!("{e}"))
}

fn backends(r: &Resolved, name: &str) -> Vec<String> {
    let s = r
        .config
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name}"));
    let mut v: Vec<String> = s.backends.iter().map(|b| b.address.to_string()).collect();
    v.sort();
    v
}

#[test]
fn every_valid_fixture_resolves_in_node_mode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/config/k8s/valid");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let r = resolve_node(&objects(&text), &options(None));
        assert_eq!(r.config.services.len(), r.ports.len());
        for s in &r.config.services {
            assert!(!s.listen.is_empty(), "{}: {s:?}", path.display());
        }
        n += 1;
    }
    assert!(n >= 7, "fixtures missing");
}

const POLICIES: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 127.0.0.70
  externalIPs: [127.0.0.71]
  internalTrafficPolicy: Local
  externalTrafficPolicy: Cluster
  ports: [{name: http, port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [127.0.9.1], nodeName: node-a, hints: {forZones: [{name: zone-a}]}}
  - {addresses: [127.0.9.2], nodeName: node-b, hints: {forZones: [{name: zone-b}]}}
  - {addresses: [127.0.9.3], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
";

#[test]
fn differing_policies_split_internal_and_external_frontends() {
    let r = resolve_node(&objects(POLICIES), &options(None));
    let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shop.web.http", "shop.web.http.external"]);
    assert_eq!(r.ports[0].frontends, Frontends::Internal);
    assert_eq!(r.ports[1].frontends, Frontends::External);
    assert_eq!(
        r.config.services[0].listen,
        ["127.0.0.70:80".parse().unwrap()]
    );
    assert_eq!(
        r.config.services[1].listen,
        [
            "127.0.0.71:80".parse().unwrap(),
            "127.0.0.100:30080".parse().unwrap()
        ]
    );
    // Local: the ready endpoint on node-a; Cluster: every ready one.
    assert_eq!(backends(&r, "shop.web.http"), ["127.0.9.1:8080"]);
    assert_eq!(
        backends(&r, "shop.web.http.external"),
        ["127.0.9.1:8080", "127.0.9.2:8080"]
    );
}

#[test]
fn local_falls_back_to_local_terminating_endpoints_then_to_none() {
    let text = POLICIES.replace("nodeName: node-a, hints", "nodeName: node-c, hints");
    let r = resolve_node(&objects(&text), &options(None));
    // No ready endpoint on node-a: the serving and terminating one there.
    assert_eq!(backends(&r, "shop.web.http"), ["127.0.9.3:8080"]);
    let text = text.replace(
        "127.0.9.3], nodeName: node-a",
        "127.0.9.3], nodeName: node-c",
    );
    let r = resolve_node(&objects(&text), &options(None));
    // None here at all: served with no backend (refused), but endpoints exist elsewhere.
    assert!(backends(&r, "shop.web.http").is_empty());
    assert!(r.ports[0].any_endpoints);
}

#[test]
fn zone_hints_apply_only_when_every_ready_endpoint_has_one_and_one_matches() {
    let cluster = POLICIES.replace(
        "internalTrafficPolicy: Local",
        "internalTrafficPolicy: Cluster",
    );
    let r = resolve_node(&objects(&cluster), &options(Some("zone-a")));
    assert_eq!(backends(&r, "shop.web.http"), ["127.0.9.1:8080"]);
    // No endpoint hinted for our zone: no topology.
    let r = resolve_node(&objects(&cluster), &options(Some("zone-x")));
    assert_eq!(
        backends(&r, "shop.web.http"),
        ["127.0.9.1:8080", "127.0.9.2:8080"]
    );
    // One ready endpoint without a hint: no topology.
    let partial = cluster.replace(", hints: {forZones: [{name: zone-b}]}", "");
    let r = resolve_node(&objects(&partial), &options(Some("zone-a")));
    assert_eq!(
        backends(&r, "shop.web.http"),
        ["127.0.9.1:8080", "127.0.9.2:8080"]
    );
}

#[test]
fn label_rules_and_services_without_endpoints() {
    let text = "
apiVersion: v1
kind: Service
metadata: {name: theirs, labels: {service.kubernetes.io/service-proxy-name: other}}
spec: {clusterIP: 127.0.0.80, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ours, labels: {service.kubernetes.io/service-proxy-name: ringlb}}
spec: {clusterIP: 127.0.0.81, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec: {clusterIP: 127.0.0.82, ports: [{port: 80}]}
";
    let objs = objects(text);
    let r = resolve_node(&objs, &options(None));
    // No slices: served, with no backend, so connections are refused (kube-proxy rejects).
    assert_eq!(r.config.services.len(), 1);
    assert_eq!(r.config.services[0].name, "default.empty.80");
    assert!(r.config.services[0].backends.is_empty());
    assert!(!r.ports[0].any_endpoints);
    assert_eq!(r.not_proxied.len(), 2);
    let mut mine = options(None);
    mine.service_proxy_name = Some("ringlb".into());
    let r = resolve_node(&objs, &mine);
    let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["default.ours.80"]);
    assert!(r
        .not_proxied
        .iter()
        .any(|n| n.reason == NotProxiedReason::NotSelected("ringlb".into())));
}

const DUAL_STACK: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: fd00:241:96::10
  clusterIPs: [fd00:241:96::10, 10.241.96.10]
  externalIPs: [10.241.9.9, fd00:241:9::9]
  ports: [{name: http, port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v4, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [10.241.2.2], nodeName: node-a}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8081}]
endpoints:
  - {addresses: ['fd00:241:2::2'], nodeName: node-a}
  - {addresses: ['fd00:241:2::3'], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: v4only, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.241.96.11
  externalIPs: [fd00:241:9::11]
  ports: [{name: http, port: 80, nodePort: 30081}]
";

fn dual_stack_options() -> NodeOptions {
    let mut o = options(None);
    o.node_addresses = vec![
        "10.241.1.1".parse().unwrap(),
        "fd00:241:1::1".parse().unwrap(),
    ];
    o
}

fn listen(r: &Resolved, name: &str) -> Vec<String> {
    let s = r.config.services.iter().find(|s| s.name == name).unwrap();
    s.listen.iter().map(ToString::to_string).collect()
}

#[test]
fn each_address_family_is_served_apart_with_its_own_endpoints() {
    let r = resolve_node(&objects(DUAL_STACK), &dual_stack_options());
    let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
    // The first cluster IP's family keeps the plain name.
    assert_eq!(
        names,
        ["shop.v4only.http", "shop.web.http", "shop.web.http.ipv4"]
    );
    assert_eq!(
        listen(&r, "shop.web.http"),
        [
            "[fd00:241:96::10]:80",
            "[fd00:241:9::9]:80",
            "[fd00:241:1::1]:30080"
        ]
    );
    assert_eq!(
        backends(&r, "shop.web.http"),
        ["[fd00:241:2::2]:8081", "[fd00:241:2::3]:8081"]
    );
    assert_eq!(
        listen(&r, "shop.web.http.ipv4"),
        ["10.241.96.10:80", "10.241.9.9:80", "10.241.1.1:30080"]
    );
    assert_eq!(backends(&r, "shop.web.http.ipv4"), ["10.241.2.2:8080"]);
    // A single-stack Service takes neither the other family's node addresses nor its
    // external IPs, and says so for the latter.
    assert_eq!(
        listen(&r, "shop.v4only.http"),
        ["10.241.96.11:80", "10.241.1.1:30081"]
    );
    assert!(
        r.warnings
            .iter()
            .any(|w| w.starts_with("shop.v4only: external or load balancer IPs fd00:241:9::11")),
        "{:?}",
        r.warnings
    );
}

#[test]
fn a_dual_stack_service_without_endpoints_of_one_family_refuses_on_that_family_only() {
    // Without the IPv6 slice.
    let text: Vec<&str> = DUAL_STACK
        .split("---")
        .filter(|doc| !doc.contains("name: web-v6"))
        .collect();
    let text = text.join("---");
    let r = resolve_node(&objects(&text), &dual_stack_options());
    let at = |name: &str| {
        let i = r
            .config
            .services
            .iter()
            .position(|s| s.name == name)
            .unwrap();
        (&r.config.services[i], &r.ports[i])
    };
    let (v6, v6_port) = at("shop.web.http");
    assert!(v6.backends.is_empty());
    assert!(
        !v6_port.any_endpoints,
        "no IPv6 endpoint anywhere: rejected"
    );
    let (v4, v4_port) = at("shop.web.http.ipv4");
    assert_eq!(v4.backends.len(), 1);
    assert!(v4_port.any_endpoints);
}

const GUARDED: &str = "
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: shop}
spec:
  type: LoadBalancer
  clusterIP: 127.0.0.80
  externalIPs: [127.0.0.81]
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, nodePort: 30081}]
status:
  loadBalancer:
    ingress: [{ip: 127.0.0.82}, {ip: 127.0.0.83, ipMode: Proxy}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: shop, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: [127.0.9.2], nodeName: node-b}
";

/// The manifest above with `spec.loadBalancerSourceRanges` (which manifests refuse, since
/// standalone mode cannot enforce it) as the API would give it.
fn guarded(ranges: Option<&[&str]>) -> Vec<Object> {
    let mut objs = objects(GUARDED);
    for o in &mut objs {
        if let Object::Service(s) = o {
            s.load_balancer_source_ranges =
                ranges.map(|r| r.iter().map(|c| c.parse().unwrap()).collect());
        }
    }
    objs
}

#[test]
fn source_ranges_guard_load_balancer_ips_only_and_local_traffic_is_short_circuited() {
    let r = resolve_node(&guarded(None), &options(None));
    let names: Vec<&str> = r.config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["shop.lb.http", "shop.lb.http.external"]);
    // Served in VIP mode only; no ranges, no firewall.
    assert_eq!(
        listen(&r, "shop.lb.http.external"),
        ["127.0.0.81:80", "127.0.0.82:80", "127.0.0.100:30081"]
    );
    assert_eq!(r.ports[1].firewall, None);
    // Policy Local with the only endpoint on node-b: nothing here for external clients, but
    // this node's own and its pods' traffic goes to the cluster IP part's endpoints.
    assert!(backends(&r, "shop.lb.http.external").is_empty());
    assert_eq!(backends(&r, "shop.lb.http"), ["127.0.9.2:8080"]);
    assert_eq!(r.ports[0].short_circuit, None);
    assert_eq!(r.ports[1].short_circuit.as_deref(), Some("shop.lb.http"));
    assert!(!r.config.services[1].preserve_client_ip, "not asked for");
    let preserving = NodeOptions {
        preserve_client_ip: true,
        ..options(None)
    };
    let r = resolve_node(&guarded(None), &preserving);
    let keeps: Vec<bool> = r
        .config
        .services
        .iter()
        .map(|s| s.preserve_client_ip)
        .collect();
    assert_eq!(
        keeps,
        [false, true],
        "only the policy Local (external) part"
    );
    // Pods keep their address on every part (unless --no-transparent leaves the list empty).
    let pods: ipnet::IpNet = "10.244.0.0/16".parse().unwrap();
    let transparent = NodeOptions {
        preserve_client_ip: true,
        transparent_clients: vec![pods],
        ..options(None)
    };
    let r = resolve_node(&guarded(None), &transparent);
    for svc in &r.config.services {
        assert_eq!(svc.transparent_from, [pods], "{}", svc.name);
        let (pod, other) = ("10.244.1.5".parse().unwrap(), "192.0.2.9".parse().unwrap());
        let endpoint = "10.244.2.7".parse().unwrap();
        assert!(svc.from_client(pod, endpoint));
        assert!(
            !svc.from_client(pod, pod),
            "{}: never from the endpoint's own address",
            svc.name
        );
        assert_eq!(svc.from_client(other, endpoint), svc.preserve_client_ip);
    }

    let r = resolve_node(&guarded(Some(&["10.0.0.0/8", "fd00::/8"])), &options(None));
    let fw = r.ports[1].firewall.as_ref().expect("a firewall");
    assert_eq!(fw.frontends, ["127.0.0.82:80".parse().unwrap()]);
    assert_eq!(
        fw.sources,
        ["10.0.0.0/8".parse().unwrap()],
        "this family only"
    );
    assert_eq!(r.ports[0].firewall, None, "cluster IPs are not guarded");
    // A range with a node address admits every node address and the load balancer IPs too
    // (the spec's "any local IP"; kube-proxy's allowFromNode: a node reaching its own VIP
    // speaks from it).
    let mut two_addresses = options(None);
    two_addresses
        .node_addresses
        .push("127.0.0.101".parse().unwrap());
    let r = resolve_node(
        &guarded(Some(&["127.0.0.100/32", "10.0.0.0/8"])),
        &two_addresses,
    );
    let fw = r.ports[1].firewall.as_ref().expect("a firewall");
    let sources: Vec<String> = fw.sources.iter().map(ToString::to_string).collect();
    assert_eq!(
        sources,
        [
            "10.0.0.0/8",
            "127.0.0.82/32",
            "127.0.0.100/32",
            "127.0.0.101/32"
        ]
    );
    // Ranges of the other family only: no one is admitted.
    let r = resolve_node(&guarded(Some(&["fd00::/8"])), &options(None));
    assert_eq!(r.ports[1].firewall.as_ref().unwrap().sources, []);
    // Where nothing can enforce them, the load balancer IPs are not served at all.
    let unenforced = NodeOptions {
        source_ranges_enforced: false,
        ..options(None)
    };
    let r = resolve_node(&guarded(Some(&["10.0.0.0/8"])), &unenforced);
    assert_eq!(
        listen(&r, "shop.lb.http.external"),
        ["127.0.0.81:80", "127.0.0.100:30081"]
    );
    assert!(
        r.warnings[0].contains("loadBalancerSourceRanges are enforced only with --nftables"),
        "{:?}",
        r.warnings
    );
}
