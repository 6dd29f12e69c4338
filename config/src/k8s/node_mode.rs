//! Node mode: a Kubernetes Service and its EndpointSlices into ringlb services, with the rules
//! kube-proxy applies on a node (`pkg/proxy/topology.go` `CategorizeEndpoints`; the Kubernetes
//! repository's `docs/dev/sig-network/service-proxy.md`).
//!
//! Unlike standalone mode nothing here is a problem: the API server has validated the objects,
//! and one odd Service must not take the others off the air. What cannot be served as asked
//! is served the closest safe way and reported in [`NodeService::warnings`]; what is not
//! served at all is listed in [`NodeService::not_proxied`].
//!
//! - Label rules: a Service labelled `service.kubernetes.io/service-proxy-name` belongs to
//!   another proxy, unless [`NodeOptions::service_proxy_name`] is set, and then only Services
//!   with that exact label value are served. Headless and ExternalName Services are DNS only.
//!   SCTP ports are not served.
//! - Frontends: cluster IPs at `port` are *internal*; external IPs, VIP-mode load balancer
//!   IPs at `port` and every node address at `nodePort` are *external*.
//! - `loadBalancerSourceRanges` guard the load balancer IPs only (not external IPs or node
//!   ports, as in kube-proxy): [`ResolvedPort::firewall`] lists them with the sources of
//!   their family that may open flows, plus every node address and the load balancer IPs
//!   themselves when a node address is in a range (the spec's "any local IP", kube-proxy's
//!   `allowFromNode`). Ranges set but none of the family admit no one there.
//! - Short-circuit: under `externalTrafficPolicy: Local` (and `internalTrafficPolicy:
//!   Cluster`), traffic from this node and its pods to the external frontends goes to the
//!   cluster-wide endpoints, as kube-proxy sends it ("subject to neither form of traffic
//!   policy"); [`ResolvedPort::short_circuit`] names the ringlb service that serves it.
//! - Endpoints: per service port by name and protocol, port number from each slice. The
//!   cluster set is the ready endpoints, narrowed to this node's zone when *every* ready
//!   endpoint has a zone hint and one of them names the zone; if it is empty, the serving and
//!   terminating endpoints. The local set is the ready endpoints whose `nodeName` is this
//!   node; if none, the local serving and terminating ones. Internal frontends use the local
//!   set under `internalTrafficPolicy: Local`, external ones under `externalTrafficPolicy:
//!   Local`, else the cluster set. When the two policies differ, the port becomes two ringlb
//!   services, `namespace.name.port` (cluster IPs) and `namespace.name.port.external`.
//! - Address families are served apart, as kube-proxy runs one single-stack proxier per
//!   family: a Service is served in each family it has a cluster IP of, with that family's
//!   cluster IPs, external IPs, load balancer IPs and node addresses and only that family's
//!   endpoints (so a dual-stack Service with IPv4 endpoints only works on IPv4 and refuses on
//!   IPv6). The first cluster IP's family keeps the plain name; the other's ringlb services
//!   end in `.ipv6` (or `.ipv4`). External IPs and load balancer IPs of a family the Service
//!   has no cluster IP of are not served (a warning says so).
//! - A port with frontends but no usable endpoint is still served, with no backends: new
//!   connections are refused, as kube-proxy rejects them. [`ResolvedPort::any_endpoints`]
//!   tells a rejection (none anywhere) from a policy `Local` drop (none here).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use balancers::{Scheduler, SchedulerConfig};
use ipnet::IpNet;

use super::resolve::{endpoints_of, not_proxied_reason, service_port_name, Source};
use super::types::{
    EndpointSlice, IpMode, Object, PortProtocol, Service, ServicePort, ServiceType, TrafficPolicy,
};
use super::{
    Firewall, Frontends, NotProxied, NotProxiedReason, Resolved, ResolvedEndpoint, ResolvedPort,
};
use crate::model::{Backend, Protocol, Service as ModelService, ServiceDefaults};

/// The Node label with the node's zone, matched against endpoint zone hints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

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
}

/// What one Kubernetes Service resolves to in node mode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeService {
    /// Its ringlb services, one or two per served port, each with its Kubernetes side.
    pub services: Vec<(ModelService, ResolvedPort)>,
    /// The Service or those of its ports that are not served, with why.
    pub not_proxied: Vec<NotProxied>,
    /// What is served differently from what the Service asks.
    pub warnings: Vec<String>,
}

/// Resolves one Service with its EndpointSlices (those labelled with its name, in its
/// namespace) for this node.
pub fn resolve_node_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    options: &NodeOptions,
) -> NodeService {
    let mut out = NodeService::default();
    let meta = &svc.meta;
    let whole = format!("{}.{}", meta.namespace, meta.name);
    // No cluster IP is headless too here: node mode serves only Services that have one.
    let skip = not_proxied_reason(svc, options.service_proxy_name.as_deref()).or_else(|| {
        svc.cluster_ips
            .is_empty()
            .then_some(NotProxiedReason::Headless)
    });
    if let Some(reason) = skip {
        out.not_proxied.push(NotProxied {
            name: whole,
            reason,
        });
        return out;
    }
    let mut lb_ips: Vec<IpAddr> = svc
        .load_balancer_ingress
        .iter()
        .filter(|i| i.ip_mode == IpMode::Vip)
        .filter_map(|i| i.ip)
        .collect();
    if svc.load_balancer_source_ranges.is_some()
        && !options.source_ranges_enforced
        && !lb_ips.is_empty()
    {
        out.warnings.push(format!(
            "{whole}: load balancer IPs not served: loadBalancerSourceRanges are enforced only \
             with --nftables, and serving every client would open what the ranges close"
        ));
        lb_ips.clear();
    }
    let source = if slices.is_empty() {
        Source::None
    } else {
        Source::Slices(slices)
    };
    // kube-proxy proxies each address family on its own (one proxier per family): a
    // family's frontends exist only if the Service has a cluster IP of that family, and they
    // go to that family's endpoints only.
    let mut families: Vec<bool> = Vec::new();
    for ip in &svc.cluster_ips {
        if !families.contains(&ip.is_ipv6()) {
            families.push(ip.is_ipv6());
        }
    }
    let stray: Vec<String> = svc
        .external_ips
        .iter()
        .chain(&lb_ips)
        .filter(|ip| !families.contains(&ip.is_ipv6()))
        .map(ToString::to_string)
        .collect();
    if !stray.is_empty() {
        out.warnings.push(format!(
            "{whole}: external or load balancer IPs {} not served: the Service has no cluster \
             IP of their family (kube-proxy serves each family only with its own cluster IP)",
            stray.join(", ")
        ));
    }
    for port in &svc.ports {
        let name = service_port_name(svc, port);
        let protocol = match port.protocol {
            PortProtocol::Tcp => Protocol::Tcp,
            PortProtocol::Udp => Protocol::Udp,
            PortProtocol::Sctp => {
                out.not_proxied.push(NotProxied {
                    name,
                    reason: NotProxiedReason::Sctp,
                });
                continue;
            }
        };
        let all_eps = endpoints_of(&source, port).unwrap_or_default();
        for (i, &v6) in families.iter().enumerate() {
            // The primary family (that of the first cluster IP) keeps the plain name.
            let base = match (i, v6) {
                (0, _) => name.clone(),
                (_, true) => format!("{name}.ipv6"),
                (_, false) => format!("{name}.ipv4"),
            };
            let family = |ip: &IpAddr| ip.is_ipv6() == v6;
            let at_port = |ip: &IpAddr| SocketAddr::new(*ip, port.port);
            let internal: Vec<SocketAddr> = svc
                .cluster_ips
                .iter()
                .filter(|ip| family(ip))
                .map(at_port)
                .collect();
            let mut external: Vec<SocketAddr> = svc
                .external_ips
                .iter()
                .chain(&lb_ips)
                .filter(|ip| family(ip))
                .map(at_port)
                .collect();
            if let (Some(np), ServiceType::NodePort | ServiceType::LoadBalancer) =
                (port.node_port, svc.service_type)
            {
                external.extend(
                    options
                        .node_addresses
                        .iter()
                        .filter(|ip| family(ip))
                        .map(|ip| SocketAddr::new(*ip, np)),
                );
            }
            let mut seen: std::collections::HashSet<SocketAddr> =
                internal.iter().copied().collect();
            external.retain(|a| seen.insert(*a));
            let firewall = svc.load_balancer_source_ranges.as_ref().map(|ranges| {
                let frontends: Vec<SocketAddr> = lb_ips
                    .iter()
                    .filter(|ip| family(ip))
                    .map(at_port)
                    .filter(|a| external.contains(a))
                    .collect();
                let mut sources: Vec<IpNet> = ranges
                    .iter()
                    .filter(|r| family(&r.addr()))
                    .copied()
                    .collect();
                // A node address in the ranges admits every local address (the spec), and
                // the load balancer IPs themselves (kube-proxy's `allowFromNode`: a VIP is
                // often also a local address, and the node's requests to it come from it).
                let node_addresses = options.node_addresses.iter().filter(|a| family(a));
                if node_addresses
                    .clone()
                    .any(|a| sources.iter().any(|r| r.contains(a)))
                {
                    let local = node_addresses
                        .copied()
                        .chain(frontends.iter().map(|a| a.ip()));
                    sources.extend(local.map(IpNet::from));
                    sources.sort_unstable();
                    sources.dedup();
                }
                Firewall { frontends, sources }
            });
            let eps: Vec<ResolvedEndpoint> = all_eps
                .iter()
                .filter(|e| family(&e.address.ip()))
                .cloned()
                .collect();
            let part = PortFamily {
                name: base,
                protocol,
                internal,
                external,
                endpoints: eps,
                firewall: firewall.filter(|f| !f.frontends.is_empty()),
            };
            resolve_family(svc, port, part, options, &mut out);
        }
    }
    out
}

/// One service port in one address family: its frontends and endpoints of that family.
struct PortFamily {
    /// The ringlb name (of the internal part, when the policies split the port).
    name: String,
    protocol: Protocol,
    /// Cluster IPs at `port`.
    internal: Vec<SocketAddr>,
    /// External IPs and load balancer IPs at `port`, node addresses at `nodePort`.
    external: Vec<SocketAddr>,
    endpoints: Vec<ResolvedEndpoint>,
    /// `loadBalancerSourceRanges` over this family's load balancer IPs.
    firewall: Option<Firewall>,
}

/// The ringlb services of one service port in one address family.
fn resolve_family(
    svc: &Service,
    port: &ServicePort,
    part: PortFamily,
    options: &NodeOptions,
    out: &mut NodeService,
) {
    let PortFamily {
        name,
        protocol,
        internal,
        external,
        endpoints: eps,
        firewall,
    } = part;
    let sets = categorize(&eps, options);
    let itp = svc.internal_traffic_policy;
    let etp = svc.external_traffic_policy;
    // Traffic from this node and its pods to the external frontends of a policy `Local`
    // port is served by the cluster-wide endpoints, as kube-proxy short-circuits it
    // (unless the internal policy is `Local` too: then there is no cluster-wide set).
    let groups = if external.is_empty() {
        vec![(name, Frontends::All, internal, itp, None)]
    } else if itp == etp {
        let mut all = internal;
        all.extend(external);
        vec![(name, Frontends::All, all, itp, None)]
    } else {
        let external_name = format!("{name}.external");
        let short_circuit = (etp == TrafficPolicy::Local).then(|| name.clone());
        vec![
            (name, Frontends::Internal, internal, itp, None),
            (
                external_name,
                Frontends::External,
                external,
                etp,
                short_circuit,
            ),
        ]
    };
    for (svc_name, frontends, listen, policy, short_circuit) in groups {
        let usable = match policy {
            TrafficPolicy::Cluster => &sets.cluster,
            TrafficPolicy::Local => &sets.local,
        };
        let endpoints: Vec<ResolvedEndpoint> = eps
            .iter()
            .zip(usable)
            .map(|(e, &usable)| ResolvedEndpoint {
                usable,
                ..e.clone()
            })
            .collect();
        let backends: Vec<Backend> = endpoints
            .iter()
            .filter(|e| e.usable)
            .map(|e| Backend::new(e.address, ServiceDefaults::WEIGHT))
            .collect();
        let mut scheduler = svc.scheduler;
        let specs: Vec<_> = backends.iter().map(Backend::spec).collect();
        if !specs.is_empty() {
            if let Err(e) = Scheduler::build(&scheduler, &specs) {
                out.warnings.push(format!(
                    "{svc_name}: scheduler {} cannot serve its {} endpoints ({e}); using rr",
                    scheduler.kind,
                    specs.len()
                ));
                scheduler = SchedulerConfig::default();
            }
        }
        let mut model =
            ModelService::with_defaults(svc_name, protocol, listen, backends, scheduler);
        model.session_affinity = svc.session_affinity;
        model.preserve_client_ip = options.preserve_client_ip && short_circuit.is_some();
        out.services.push((
            model,
            ResolvedPort {
                service: svc.meta.key(),
                port_name: port.name.clone(),
                external_traffic_policy: etp,
                internal_traffic_policy: itp,
                endpoints,
                frontends,
                any_endpoints: sets.any,
                node_port: port.node_port,
                health_check_node_port: svc.health_check_node_port,
                cluster_ips: svc.cluster_ips.clone(),
                firewall: firewall
                    .clone()
                    .filter(|_| frontends != Frontends::Internal),
                short_circuit,
            },
        ));
    }
}

/// The usable endpoints of one service port under each traffic policy (flags aligned with
/// the endpoints), as kube-proxy's `CategorizeEndpoints`.
struct Sets {
    cluster: Vec<bool>,
    local: Vec<bool>,
    any: bool,
}

fn categorize(eps: &[ResolvedEndpoint], options: &NodeOptions) -> Sets {
    let ready = |e: &ResolvedEndpoint| e.conditions.ready;
    let draining = |e: &ResolvedEndpoint| e.conditions.serving && e.conditions.terminating;
    let local = |e: &ResolvedEndpoint| e.node_name.as_deref() == Some(options.node_name.as_str());
    // Topology: all or nothing per port, and only with a zone to prefer.
    let zone = options.zone.as_deref().filter(|_| {
        let mut ready_eps = eps.iter().filter(|e| ready(e)).peekable();
        ready_eps.peek().is_some() && ready_eps.all(|e| !e.zone_hints.is_empty())
    });
    let zone = zone.filter(|z| {
        eps.iter()
            .filter(|e| ready(e))
            .any(|e| e.zone_hints.iter().any(|h| h == z))
    });
    let in_topology =
        |e: &ResolvedEndpoint| zone.is_none_or(|z| e.zone_hints.iter().any(|h| h == z));
    let mut cluster: Vec<bool> = eps.iter().map(|e| ready(e) && in_topology(e)).collect();
    if !cluster.contains(&true) {
        cluster = eps.iter().map(draining).collect();
    }
    let mut local_set: Vec<bool> = eps.iter().map(|e| local(e) && ready(e)).collect();
    if !local_set.contains(&true) {
        local_set = eps.iter().map(|e| local(e) && draining(e)).collect();
    }
    Sets {
        cluster,
        local: local_set,
        any: eps.iter().any(|e| ready(e) || draining(e)),
    }
}

/// Puts resolved Services together into one model, in the order given. A frontend claimed by
/// two Services (two Services with one external IP and port, say) stays with the first; the
/// later one serves without it, with a warning.
pub fn assemble<'a>(parts: impl IntoIterator<Item = &'a NodeService>) -> Resolved {
    let mut out = Resolved::default();
    let mut frontends: HashMap<(Protocol, SocketAddr), String> = HashMap::new();
    for part in parts {
        out.not_proxied.extend(part.not_proxied.iter().cloned());
        out.warnings.extend(part.warnings.iter().cloned());
        for (model, port) in &part.services {
            let mut model = model.clone();
            let (name, protocol) = (model.name.clone(), model.protocol);
            model
                .listen
                .retain(|addr| match frontends.get(&(protocol, *addr)) {
                    Some(first) => {
                        out.warnings.push(format!(
                            "{name}: {protocol} {addr} is already a frontend of {first}; left out"
                        ));
                        false
                    }
                    None => {
                        frontends.insert((protocol, *addr), name.clone());
                        true
                    }
                });
            if model.listen.is_empty() {
                continue;
            }
            out.config.services.push(model);
            out.ports.push(port.clone());
        }
    }
    out
}

/// Resolves a whole set of objects for this node: each Service with the EndpointSlices
/// labelled with its name, in namespace and name order. `Endpoints` objects are ignored, as
/// kube-proxy ignores them (the mirroring controller turns custom ones into slices).
pub fn resolve_node(objects: &[Object], options: &NodeOptions) -> Resolved {
    let mut services: Vec<&Service> = Vec::new();
    let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for o in objects {
        match o {
            Object::Service(s) => services.push(s),
            Object::EndpointSlice(s) => slices
                .entry((s.meta.namespace.as_str(), s.service_name.as_str()))
                .or_default()
                .push(s),
            Object::Endpoints(_) => {}
        }
    }
    services
        .sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
    let parts: Vec<NodeService> = services
        .iter()
        .map(|s| {
            let key = (s.meta.namespace.as_str(), s.meta.name.as_str());
            let own = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
            resolve_node_service(s, own, options)
        })
        .collect();
    assemble(&parts)
}
