//! `healthCheckNodePort` servers, answered exactly as kube-proxy answers them
//! (`pkg/proxy/healthcheck/service_health.go`): on every path, 200 when the Service has at
//! least one ready endpoint on this node and the proxy is healthy, else 503, with the same
//! JSON body and headers, so cloud load balancers send external traffic only to nodes that
//! can serve it locally (`externalTrafficPolicy: Local`).
//!
//! The node's own health server (`--healthz-bind-address`, kube-proxy's port 10256) answers
//! `/healthz` and `/livez` like kube-proxy's `proxier_health.go`: `/livez` 200 while the last
//! change from the API was applied (table and nftables), 503 after a failed one; `/healthz`
//! the same and also 503 while the node is not eligible for load balancer traffic (being
//! deleted, or tainted `ToBeDeletedByClusterAutoscaler`: KEP-3836), so cloud load balancers
//! drain a node before it goes. Bodies as kube-proxy's; times in RFC 3339.
//!
//! This file holds the answers; `health/ports.rs` ([`HealthChecks`], [`NodeServer`]) starts
//! and stops the ports. Every port is served by hyper through [`control::http`] (bounded head,
//! deadline, connection cap with shedding: [`control::http::Limits::HEALTH`]) on the control
//! runtime: nothing here parses HTTP, so no fuzz target is needed. A port answers one request
//! per connection and closes it (`Connection: close`), as ringlb always has.

mod ports;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use config::k8s::Resolved;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use hyper::{Response, StatusCode};

pub use self::ports::{HealthChecks, NodeServer};
use control::http::{Body, Handler};

/// Whether this node's proxy is up to date, shared by the servers here.
#[derive(Debug)]
pub struct NodeHealth {
    healthy: AtomicBool,
    last_updated: Mutex<SystemTime>,
    /// Whether the node may take load balancer traffic (kept by the Kubernetes watch).
    eligible: Arc<AtomicBool>,
}

impl Default for NodeHealth {
    fn default() -> Self {
        NodeHealth::new(Arc::new(AtomicBool::new(true)))
    }
}

impl NodeHealth {
    /// Healthy, with the node's eligibility read from `eligible`.
    pub fn new(eligible: Arc<AtomicBool>) -> Self {
        NodeHealth {
            healthy: AtomicBool::new(true),
            last_updated: Mutex::new(SystemTime::now()),
            eligible,
        }
    }

    /// A change from the API is now in effect.
    pub fn updated(&self) {
        *self.last_updated.lock().expect("health lock") = SystemTime::now();
        self.healthy.store(true, Ordering::Relaxed);
    }

    /// A change from the API could not be applied; healthy again after the next success.
    pub fn failed(&self) {
        self.healthy.store(false, Ordering::Relaxed);
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// `/healthz` (`with_node`: the node's eligibility counts and is reported) or `/livez`:
    /// status and body. While healthy, `lastUpdated` is the current time, as kube-proxy keeps
    /// it for older clients.
    fn response(&self, with_node: bool) -> (u16, String) {
        let at = |t: SystemTime| humantime::format_rfc3339_nanos(t).to_string();
        let now = SystemTime::now();
        let healthy = self.healthy();
        let last = if healthy {
            now
        } else {
            *self.last_updated.lock().expect("health lock")
        };
        let times = format!(
            "{{\"lastUpdated\": \"{}\",\"currentTime\": \"{}\"",
            at(last),
            at(now)
        );
        if with_node {
            let eligible = self.eligible.load(Ordering::Relaxed);
            let ok = healthy && eligible;
            (
                if ok { 200 } else { 503 },
                format!("{times}, \"nodeEligible\": {eligible}}}"),
            )
        } else {
            (if healthy { 200 } else { 503 }, format!("{times}}}"))
        }
    }
}

/// What one port reports.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Health {
    namespace: String,
    name: String,
    local_endpoints: usize,
}

/// The response kube-proxy sends: status, then the body (no trailing newline).
fn response(h: &Health, proxy_healthy: bool) -> (u16, String) {
    let q = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {}\n}}",
        q(&h.namespace),
        q(&h.name),
        h.local_endpoints,
        proxy_healthy
    );
    let status = if h.local_endpoints != 0 && proxy_healthy {
        200
    } else {
        503
    };
    (status, body)
}

/// The wanted health check ports of `resolved`: each Service's `healthCheckNodePort` with
/// its ready endpoints on `node`, counted as kube-proxy's `LocalReadyEndpoints` counts them:
/// unique IP addresses over all the Service's ports (a pod serving ports 80 and 443 is one
/// endpoint, not two; one serving only 80 and another only 443 are two). kube-proxy counts
/// within one address family, each family's proxier apart (kubernetes/kubernetes#114702),
/// so each family is counted apart here too and the larger count reported: a dual-stack pod
/// is one endpoint.
fn wanted(resolved: &Resolved, node: &str) -> BTreeMap<u16, Health> {
    // Per port: the Service, and its local ready IPs.
    let mut local: BTreeMap<u16, (&str, BTreeSet<IpAddr>)> = BTreeMap::new();
    for port in &resolved.ports {
        let Some(hc) = port.health_check_node_port else {
            continue;
        };
        let ips = &mut local
            .entry(hc)
            .or_insert((&port.service, BTreeSet::new()))
            .1;
        ips.extend(
            port.endpoints
                .iter()
                .filter(|e| e.conditions.ready && e.node_name.as_deref() == Some(node))
                .map(|e| e.address.ip()),
        );
    }
    local
        .into_iter()
        .map(|(hc, (service, ips))| {
            let (namespace, name) = service.split_once('/').unwrap_or(("", service));
            let v6 = ips.iter().filter(|ip| ip.is_ipv6()).count();
            let health = Health {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                local_endpoints: v6.max(ips.len() - v6),
            };
            (hc, health)
        })
        .collect()
}

/// kube-proxy's header for the endpoints a `healthCheckNodePort` reports.
const WEIGHT: HeaderName = HeaderName::from_static("x-load-balancing-endpoint-weight");

/// A response as kube-proxy writes it: JSON type, `nosniff`, and the endpoint weight when
/// given.
fn reply(status: u16, weight: Option<usize>, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status).expect("a valid status");
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Some(weight) = weight {
        headers.insert(WEIGHT, HeaderValue::from(weight));
    }
    response
}

/// The node health server's answers: `/healthz` and `/livez` (any method), else 404.
fn node_handler(health: Arc<NodeHealth>) -> Handler {
    Arc::new(move |req| {
        let (status, body) = match req.uri().path() {
            "/healthz" => health.response(true),
            "/livez" => health.response(false),
            _ => (404, "404 page not found\n".to_owned()),
        };
        Box::pin(std::future::ready(reply(status, None, body)))
    })
}

/// A `healthCheckNodePort`'s answer, on any path, with any method, as kube-proxy's.
fn service_handler(health: Arc<Mutex<Health>>, node: Arc<NodeHealth>) -> Handler {
    Arc::new(move |_req| {
        let health = health.lock().expect("health lock").clone();
        let (status, body) = response(&health, node.healthy());
        let weight = Some(health.local_endpoints);
        Box::pin(std::future::ready(reply(status, weight, body)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_kube_proxys() {
        let h = Health {
            namespace: "shop".into(),
            name: "web".into(),
            local_endpoints: 2,
        };
        let (status, body) = response(&h, true);
        assert_eq!(status, 200);
        assert_eq!(
            body,
            "{\n\t\"service\": {\n\t\t\"namespace\": \"shop\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 2,\n\t\"serviceProxyHealthy\": true\n}"
        );
        let none = Health {
            local_endpoints: 0,
            ..h
        };
        assert_eq!(response(&none, true).0, 503);
        assert_eq!(response(&none, true).1.lines().count(), 8);
    }

    /// kube-proxy's `LocalReadyEndpoints`: unique local ready IPs over every port of the
    /// Service, each address family apart.
    #[test]
    fn local_endpoints_are_unique_ready_ips_on_this_node_over_all_ports() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  clusterIPs: [10.96.0.10, "fd00:96::10"]
  ports:
    - {name: http, port: 80, targetPort: web, nodePort: 30080}
    - {name: metrics, port: 9100, nodePort: 30091}
---
# Pods 1 and 2 serve both ports: one endpoint each. 3 is on another node, 4 is not ready.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: metrics, port: 9100}]
endpoints:
  - {addresses: [10.0.0.1], nodeName: node-a}
  - {addresses: [10.0.0.2], nodeName: node-a}
  - {addresses: [10.0.0.3], nodeName: node-b}
  - {addresses: [10.0.0.4], nodeName: node-a, conditions: {ready: false}}
---
# Pod 5 serves http only (its "web" is 8081), pod 6 metrics only.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-2, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints:
  - {addresses: [10.0.0.5], nodeName: node-a}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-3, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: metrics, port: 9100}]
endpoints:
  - {addresses: [10.0.0.6], nodeName: node-a}
---
# The IPv6 addresses of pods 1 and 2.
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-v6, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv6
ports: [{name: http, port: 8080}, {name: metrics, port: 9100}]
endpoints:
  - {addresses: ["fd00::1"], nodeName: node-a}
  - {addresses: ["fd00::2"], nodeName: node-a}
"#;
        let objects = config::k8s::parse_manifests("web.yaml", yaml).unwrap();
        let options = config::k8s::NodeOptions {
            node_name: "node-a".into(),
            node_addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            ..Default::default()
        };
        let resolved = config::k8s::resolve_node(&objects, &options);
        // Two ports, two families, each in a cluster IP and an external part (the policies
        // differ): every endpoint shows several times.
        assert_eq!(resolved.ports.len(), 8);
        let want = |node: &str| {
            let w = wanted(&resolved, node);
            assert_eq!(w.keys().collect::<Vec<_>>(), [&32000]);
            w[&32000].local_endpoints
        };
        // 10.0.0.1, .2, .5 and .6 (each port has three; IPv6 has two).
        assert_eq!(want("node-a"), 4);
        assert_eq!(want("node-b"), 1);
        assert_eq!(want("node-c"), 0);
        assert_eq!(wanted(&resolved, "node-a")[&32000].name, "web");
    }

    #[test]
    fn node_health_follows_the_last_update_and_the_nodes_eligibility() {
        let eligible = Arc::new(AtomicBool::new(true));
        let node = NodeHealth::new(Arc::clone(&eligible));
        let (status, body) = node.response(true);
        assert_eq!(status, 200);
        assert!(body.starts_with("{\"lastUpdated\": \""), "{body}");
        assert!(body.ends_with("\", \"nodeEligible\": true}"), "{body}");
        let (status, live) = node.response(false);
        assert_eq!(status, 200);
        assert!(
            live.ends_with("Z\"}") && !live.contains("nodeEligible"),
            "{live}"
        );

        node.failed();
        assert_eq!(node.response(true).0, 503);
        assert_eq!(node.response(false).0, 503);
        node.updated();
        assert_eq!(node.response(true).0, 200);

        // Tainted ToBeDeletedByClusterAutoscaler or being deleted: /healthz sends load
        // balancers away, /livez still says the proxy itself is fine.
        eligible.store(false, Ordering::Relaxed);
        let (status, body) = node.response(true);
        assert_eq!(status, 503);
        assert!(body.ends_with("\"nodeEligible\": false}"), "{body}");
        assert_eq!(node.response(false).0, 200);
    }
}
