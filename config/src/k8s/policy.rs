//! What the one resolver ([`super::resolve`]) needs besides the objects, and everything that
//! differs between its two callers: standalone mode (manifests from a file, ringlb on no
//! particular node) and node mode (the API's objects, served on one node as kube-proxy serves
//! them). Each method of [`Policy`] is one difference, with why; the resolver asks them and
//! never which mode it runs in.

use std::net::IpAddr;

use super::resolved::{NotProxiedReason, SERVICE_PROXY_NAME_LABEL};
use super::types::{Service, ServiceType, TrafficPolicy};

/// What standalone mode needs to know besides the manifests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandaloneOptions {
    /// Addresses on which NodePort and LoadBalancer services listen at their `nodePort`
    /// (kube-proxy's `--nodeport-addresses`). Empty: no node ports.
    pub node_addresses: Vec<IpAddr>,
}

/// What node mode knows about the node it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeOptions {
    /// This node's name: endpoints with this `nodeName` are local.
    pub node_name: String,
    /// This node's `topology.kubernetes.io/zone` label, for topology hints.
    pub zone: Option<String>,
    /// Addresses on which NodePort and LoadBalancer services listen at their `nodePort`.
    pub node_addresses: Vec<IpAddr>,
    /// Serve only Services labelled `service.kubernetes.io/service-proxy-name` with this
    /// value (to run beside kube-proxy); `None`: serve those without the label, as kube-proxy.
    pub service_proxy_name: Option<String>,
    /// Whether the data plane can enforce `loadBalancerSourceRanges` (nftables steering).
    /// Without it, the load balancer IPs of a Service with ranges are not served at all:
    /// serving them to every client would open what the ranges close.
    pub source_ranges_enforced: bool,
    /// Whether the data plane can connect from the client's address (`--preserve-client-ip`):
    /// then the external frontends of an `externalTrafficPolicy: Local` port keep the
    /// client address, as kube-proxy keeps it. Only where the internal policy is `Cluster`:
    /// there traffic from this node's pods is short-circuited elsewhere, so no pod's own
    /// address is taken (a pod's reply to another pod on its bridge would skip this host).
    pub preserve_client_ip: bool,
    /// Clients whose connections to every frontend leave from their own address (node
    /// mode's pods: `--cluster-cidr` with `--preserve-client-ip`, unless `--no-transparent`).
    /// Replies to them come back through this node from any endpoint. Empty: none.
    pub transparent_clients: Vec<ipnet::IpNet>,
}

/// How the resolver reads a Service: the mode, with that mode's options.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Policy<'a> {
    /// Standalone mode: every problem fails the manifests, and no node is local.
    Standalone(&'a StandaloneOptions),
    /// Node mode on the node these options describe.
    Node(&'a NodeOptions),
}

impl<'a> Policy<'a> {
    /// Where NodePort and LoadBalancer services listen at their `nodePort`.
    pub(crate) fn node_addresses(self) -> &'a [IpAddr] {
        match self {
            Policy::Standalone(o) => &o.node_addresses,
            Policy::Node(o) => &o.node_addresses,
        }
    }

    /// This node, for traffic policy `Local` and topology hints. Standalone mode runs on no
    /// node of the cluster: nothing is local to it, and no zone is preferred.
    pub(crate) fn node(self) -> Option<&'a NodeOptions> {
        match self {
            Policy::Standalone(_) => None,
            Policy::Node(o) => Some(o),
        }
    }

    /// The traffic policies (internal, external) that choose a port's endpoints. Standalone
    /// mode acts as `Cluster` for both, having no node to keep traffic on; node mode takes
    /// the Service's, and splits a port whose two policies differ.
    pub(crate) fn traffic_policies(self, svc: &Service) -> (TrafficPolicy, TrafficPolicy) {
        match self {
            Policy::Standalone(_) => (TrafficPolicy::Cluster, TrafficPolicy::Cluster),
            Policy::Node(_) => (svc.internal_traffic_policy, svc.external_traffic_policy),
        }
    }

    /// Whether each address family is served apart. Node mode does, as kube-proxy runs one
    /// single-stack proxier per family; standalone mode sends the clients of every family to
    /// all of a service's backends.
    pub(crate) fn families_apart(self) -> bool {
        matches!(self, Policy::Node(_))
    }

    /// Whether a port without a usable endpoint is served anyway, with no backends. Node mode
    /// does, so new connections are refused as kube-proxy rejects them; standalone mode lists
    /// it as not proxied.
    pub(crate) fn serves_without_endpoints(self) -> bool {
        matches!(self, Policy::Node(_))
    }

    /// Whether a scheduler that cannot serve a port's endpoints falls back to `rr` with a
    /// warning (node mode: a Service of a running cluster must not go off the air for an
    /// annotation) rather than fail the manifests (standalone mode).
    pub(crate) fn scheduler_falls_back(self) -> bool {
        matches!(self, Policy::Node(_))
    }

    /// Whether `loadBalancerSourceRanges` can be enforced (node mode with nftables steering).
    /// Manifests refuse the field, so standalone mode never meets it.
    pub(crate) fn source_ranges_enforced(self) -> bool {
        self.node().is_some_and(|o| o.source_ranges_enforced)
    }

    /// The clients whose connections leave from their own address, on every frontend.
    pub(crate) fn transparent_clients(self) -> &'a [ipnet::IpNet] {
        self.node().map_or(&[], |o| &o.transparent_clients)
    }

    /// Whether the external part of a short-circuited port keeps the client's address.
    pub(crate) fn preserve_client_ip(self) -> bool {
        self.node().is_some_and(|o| o.preserve_client_ip)
    }

    /// Why `svc` is not proxied at all, or `None`: kube-proxy's label rules (a Service
    /// labelled `service.kubernetes.io/service-proxy-name` belongs to another proxy, unless
    /// node mode's [`NodeOptions::service_proxy_name`] names it; with that set, only Services
    /// labelled with it are ours), then ExternalName and headless Services, which are DNS
    /// only. Node mode also skips a Service without a cluster IP as headless: it serves only
    /// Services that have one, where standalone mode still serves external IPs and node ports.
    pub(crate) fn not_proxied_reason(self, svc: &Service) -> Option<NotProxiedReason> {
        let ours = self.node().and_then(|o| o.service_proxy_name.as_deref());
        let label = svc.meta.labels.get(SERVICE_PROXY_NAME_LABEL);
        match (ours, label) {
            (None, Some(other)) => return Some(NotProxiedReason::OtherProxy(other.clone())),
            (Some(ours), Some(v)) if v == ours => {}
            (Some(ours), _) => return Some(NotProxiedReason::NotSelected(ours.to_owned())),
            (None, None) => {}
        }
        if svc.service_type == ServiceType::ExternalName {
            Some(NotProxiedReason::ExternalName(
                svc.external_name.clone().unwrap_or_default(),
            ))
        } else if svc.headless || (self.node().is_some() && svc.cluster_ips.is_empty()) {
            Some(NotProxiedReason::Headless)
        } else {
            None
        }
    }
}
