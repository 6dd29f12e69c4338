//! The one resolver: a Kubernetes Service and its endpoints into ringlb services, for
//! standalone mode and node mode alike. What differs between them is asked of a [`Policy`];
//! the rules are kube-proxy's (`pkg/proxy/topology.go` `CategorizeEndpoints`; the Kubernetes
//! repository's `docs/dev/sig-network/service-proxy.md`):
//!
//! - Label rules, ExternalName and headless Services: [`Policy::not_proxied_reason`]. SCTP
//!   ports are not served (manifests refuse them already).
//! - Frontends: cluster IPs at `port` are *internal*; external IPs, VIP-mode load balancer
//!   IPs at `port` and every node address at `nodePort` (NodePort and LoadBalancer services)
//!   are *external*. A port with neither is not proxied.
//! - `loadBalancerSourceRanges` (node mode only) guard the load balancer IPs only (not
//!   external IPs or node ports, as in kube-proxy): [`ResolvedPort::firewall`] lists them with
//!   the sources of their family that may open flows, plus every node address and the load
//!   balancer IPs themselves when a node address is in a range (the spec's "any local IP",
//!   kube-proxy's `allowFromNode`). Ranges set but none of the family admit no one there.
//!   Where nothing enforces them, the load balancer IPs are not served, with a warning.
//! - Endpoints: per service port by name and protocol, port number from each slice
//!   ([`super::select`]). Internal frontends use the local set under `internalTrafficPolicy:
//!   Local`, external ones under `externalTrafficPolicy: Local`, else the cluster set (policies
//!   as [`Policy::traffic_policies`] gives them). When the two policies differ, the port
//!   becomes two ringlb services, `namespace.name.port` (cluster IPs) and
//!   `namespace.name.port.external`.
//! - Short-circuit: under `externalTrafficPolicy: Local` (and `internalTrafficPolicy:
//!   Cluster`), traffic from this node and its pods to the external frontends goes to the
//!   cluster-wide endpoints, as kube-proxy sends it ("subject to neither form of traffic
//!   policy"); [`ResolvedPort::short_circuit`] names the ringlb service that serves it.
//! - Address families, where [`Policy::families_apart`]: a Service is served in each family
//!   it has a cluster IP of, with that family's cluster IPs, external IPs, load balancer IPs
//!   and node addresses and only that family's endpoints (so a dual-stack Service with IPv4
//!   endpoints only works on IPv4 and refuses on IPv6). The first cluster IP's family keeps
//!   the plain name; the other's ringlb services end in `.ipv6` (or `.ipv4`). External IPs and
//!   load balancer IPs of a family the Service has no cluster IP of are not served (a warning
//!   says so).
//! - A port with frontends but no usable endpoint is served with no backends where
//!   [`Policy::serves_without_endpoints`] (new connections are refused, as kube-proxy rejects
//!   them), else not proxied. [`ResolvedPort::any_endpoints`] tells a rejection (none
//!   anywhere) from a policy `Local` drop (none here).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use balancers::{Scheduler, SchedulerConfig};
use ipnet::IpNet;

use crate::model::{Backend, Protocol, Service as ModelService, ServiceDefaults};

use super::policy::Policy;
use super::resolved::{
    service_port_name, Firewall, Frontends, NotProxied, NotProxiedReason, ResolvedEndpoint,
    ResolvedPort,
};
use super::select::{categorize, endpoints_of, Sets, Source};
use super::types::{IpMode, PortProtocol, Service, ServicePort, ServiceType, TrafficPolicy};

/// What one Kubernetes Service resolves to.
#[derive(Default)]
pub(crate) struct Resolution {
    /// Its ringlb services, one or more per served port.
    pub(crate) parts: Vec<Part>,
    /// The Service or those of its ports that are not served, with why.
    pub(crate) not_proxied: Vec<NotProxied>,
    /// What is served differently from what the Service asks.
    pub(crate) warnings: Vec<String>,
}

/// One ringlb service of a Kubernetes service port.
pub(crate) struct Part {
    pub(crate) model: ModelService,
    pub(crate) port: ResolvedPort,
    /// The port's index in `spec.ports`, to point at.
    pub(crate) index: usize,
    /// Why the scheduler cannot serve the endpoints, where the policy does not fall back.
    pub(crate) unusable_scheduler: Option<String>,
}

/// An address family to serve: `Some(true)` IPv6, `Some(false)` IPv4, `None` both together.
type Family = Option<bool>;

fn in_family(family: Family, ip: &IpAddr) -> bool {
    family.is_none_or(|v6| ip.is_ipv6() == v6)
}

/// Resolves `svc` with the endpoints of `source` under `policy`.
pub(crate) fn resolve_service(
    svc: &Service,
    source: &Source<'_>,
    policy: Policy<'_>,
) -> Resolution {
    let mut out = Resolution::default();
    let meta = &svc.meta;
    let whole = format!("{}.{}", meta.namespace, meta.name);
    if let Some(reason) = policy.not_proxied_reason(svc) {
        out.not_proxied.push(NotProxied {
            name: whole,
            reason,
        });
        return out;
    }
    let lb_ips = load_balancer_ips(svc, policy, &whole, &mut out.warnings);
    let families = families(svc, policy, &lb_ips, &whole, &mut out.warnings);
    for (index, port) in svc.ports.iter().enumerate() {
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
        let all = endpoints_of(source, port);
        for (i, &family) in families.iter().enumerate() {
            let name = family_name(&name, i, family);
            let (internal, external) = frontends(svc, port, family, &lb_ips, policy);
            if internal.is_empty() && external.is_empty() {
                out.not_proxied.push(NotProxied {
                    name,
                    reason: NotProxiedReason::NoListenAddress,
                });
                continue;
            }
            let endpoints: Vec<ResolvedEndpoint> = all
                .as_deref()
                .unwrap_or_default()
                .iter()
                .filter(|e| in_family(family, &e.address.ip()))
                .cloned()
                .collect();
            let sets = categorize(&endpoints, policy.node());
            if !sets.any && !policy.serves_without_endpoints() {
                let why = match &all {
                    Err(why) => (*why).to_owned(),
                    Ok(_) => no_usable_endpoint(&endpoints, port),
                };
                out.not_proxied.push(NotProxied {
                    name,
                    reason: NotProxiedReason::NoEndpoints(why),
                });
                continue;
            }
            let firewall = firewall(svc, port, family, &lb_ips, &external, policy);
            let part = PortFamily {
                name,
                index,
                protocol,
                internal,
                external,
                endpoints,
                sets,
                firewall,
            };
            resolve_family(svc, port, part, policy, &mut out);
        }
    }
    out
}

/// The ringlb name of a port in the `i`th family served: the primary family (that of the
/// first cluster IP) keeps the plain name.
fn family_name(name: &str, i: usize, family: Family) -> String {
    match (i, family) {
        (0, _) | (_, None) => name.to_owned(),
        (_, Some(true)) => format!("{name}.ipv6"),
        (_, Some(false)) => format!("{name}.ipv4"),
    }
}

/// Why a port with endpoints objects has no usable endpoint.
fn no_usable_endpoint(endpoints: &[ResolvedEndpoint], port: &ServicePort) -> String {
    if endpoints.is_empty() {
        format!(
            "no endpoint port named {:?} with protocol {}",
            port.name, port.protocol
        )
    } else {
        "no endpoint is ready, nor serving and terminating".to_owned()
    }
}

/// The Service's VIP-mode load balancer IPs: none where `loadBalancerSourceRanges` guard them
/// and nothing enforces the ranges (serving every client would open what the ranges close).
fn load_balancer_ips(
    svc: &Service,
    policy: Policy<'_>,
    whole: &str,
    warnings: &mut Vec<String>,
) -> Vec<IpAddr> {
    let mut lb_ips: Vec<IpAddr> = svc
        .load_balancer_ingress
        .iter()
        .filter(|i| i.ip_mode == IpMode::Vip)
        .filter_map(|i| i.ip)
        .collect();
    if svc.load_balancer_source_ranges.is_some()
        && !policy.source_ranges_enforced()
        && !lb_ips.is_empty()
    {
        warnings.push(format!(
            "{whole}: load balancer IPs not served: loadBalancerSourceRanges are enforced only \
             with --nftables, and serving every client would open what the ranges close"
        ));
        lb_ips.clear();
    }
    lb_ips
}

/// The address families to serve, in the order of the cluster IPs where they are served
/// apart: kube-proxy proxies each family on its own (one proxier per family), so a family's
/// frontends exist only if the Service has a cluster IP of that family.
fn families(
    svc: &Service,
    policy: Policy<'_>,
    lb_ips: &[IpAddr],
    whole: &str,
    warnings: &mut Vec<String>,
) -> Vec<Family> {
    if !policy.families_apart() {
        return vec![None];
    }
    let mut families: Vec<Family> = Vec::new();
    for ip in &svc.cluster_ips {
        if !families.contains(&Some(ip.is_ipv6())) {
            families.push(Some(ip.is_ipv6()));
        }
    }
    let stray: Vec<String> = svc
        .external_ips
        .iter()
        .chain(lb_ips)
        .filter(|ip| !families.contains(&Some(ip.is_ipv6())))
        .map(ToString::to_string)
        .collect();
    if !stray.is_empty() {
        warnings.push(format!(
            "{whole}: external or load balancer IPs {} not served: the Service has no cluster \
             IP of their family (kube-proxy serves each family only with its own cluster IP)",
            stray.join(", ")
        ));
    }
    families
}

/// The internal frontends (cluster IPs at `port`) and the external ones (external IPs and
/// load balancer IPs at `port`, node addresses at `nodePort`) of `family`, each once.
fn frontends(
    svc: &Service,
    port: &ServicePort,
    family: Family,
    lb_ips: &[IpAddr],
    policy: Policy<'_>,
) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
    let at_port = |ip: &IpAddr| SocketAddr::new(*ip, port.port);
    let mut internal: Vec<SocketAddr> = svc
        .cluster_ips
        .iter()
        .filter(|ip| in_family(family, ip))
        .map(at_port)
        .collect();
    let mut external: Vec<SocketAddr> = svc
        .external_ips
        .iter()
        .chain(lb_ips)
        .filter(|ip| in_family(family, ip))
        .map(at_port)
        .collect();
    if let (Some(np), ServiceType::NodePort | ServiceType::LoadBalancer) =
        (port.node_port, svc.service_type)
    {
        external.extend(
            policy
                .node_addresses()
                .iter()
                .filter(|ip| in_family(family, ip))
                .map(|ip| SocketAddr::new(*ip, np)),
        );
    }
    let mut seen: HashSet<SocketAddr> = HashSet::new();
    internal.retain(|a| seen.insert(*a));
    external.retain(|a| seen.insert(*a));
    (internal, external)
}

/// `loadBalancerSourceRanges` over the load balancer IPs of `family` among `external`, or
/// `None` where the Service has no ranges or no such frontend.
fn firewall(
    svc: &Service,
    port: &ServicePort,
    family: Family,
    lb_ips: &[IpAddr],
    external: &[SocketAddr],
    policy: Policy<'_>,
) -> Option<Firewall> {
    let ranges = svc.load_balancer_source_ranges.as_ref()?;
    let frontends: Vec<SocketAddr> = lb_ips
        .iter()
        .filter(|ip| in_family(family, ip))
        .map(|ip| SocketAddr::new(*ip, port.port))
        .filter(|a| external.contains(a))
        .collect();
    let mut sources: Vec<IpNet> = ranges
        .iter()
        .filter(|r| in_family(family, &r.addr()))
        .copied()
        .collect();
    // A node address in the ranges admits every local address (the spec), and the load
    // balancer IPs themselves (kube-proxy's `allowFromNode`: a VIP is often also a local
    // address, and the node's requests to it come from it).
    let node_addresses = policy
        .node_addresses()
        .iter()
        .filter(|a| in_family(family, a));
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
    (!frontends.is_empty()).then_some(Firewall { frontends, sources })
}

/// One service port in one address family: its frontends and endpoints of that family.
struct PortFamily {
    /// The ringlb name (of the internal part, when the policies split the port).
    name: String,
    /// The port's index in `spec.ports`.
    index: usize,
    protocol: Protocol,
    /// Cluster IPs at `port`.
    internal: Vec<SocketAddr>,
    /// External IPs and load balancer IPs at `port`, node addresses at `nodePort`.
    external: Vec<SocketAddr>,
    endpoints: Vec<ResolvedEndpoint>,
    /// The endpoints usable under each traffic policy.
    sets: Sets,
    /// `loadBalancerSourceRanges` over this family's load balancer IPs.
    firewall: Option<Firewall>,
}

/// One ringlb service of a port: its name, which frontends, their addresses, the traffic
/// policy that picks its endpoints, and the service that short-circuits it.
type Group = (
    String,
    Frontends,
    Vec<SocketAddr>,
    TrafficPolicy,
    Option<String>,
);

/// The ringlb services of one service port in one address family.
fn resolve_family(
    svc: &Service,
    port: &ServicePort,
    part: PortFamily,
    policy: Policy<'_>,
    out: &mut Resolution,
) {
    let PortFamily {
        name,
        index,
        protocol,
        internal,
        external,
        endpoints: eps,
        sets,
        firewall,
    } = part;
    let groups = groups(name, internal, external, policy.traffic_policies(svc));
    for (svc_name, frontends, listen, traffic, short_circuit) in groups {
        let usable = match traffic {
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
        let (scheduler, unusable_scheduler) =
            scheduler(svc, &svc_name, &backends, policy, &mut out.warnings);
        let mut model =
            ModelService::with_defaults(svc_name, protocol, listen, backends, scheduler);
        model.session_affinity = svc.session_affinity;
        if protocol == Protocol::Tcp {
            model.health = svc.health.as_deref().cloned();
            model.outliers = svc.outliers;
        }
        model.preserve_client_ip = policy.preserve_client_ip() && short_circuit.is_some();
        model.transparent_from = policy.transparent_clients().to_vec();
        let port = ResolvedPort {
            service: svc.meta.key(),
            port_name: port.name.clone(),
            external_traffic_policy: svc.external_traffic_policy,
            internal_traffic_policy: svc.internal_traffic_policy,
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
        };
        out.parts.push(Part {
            model,
            port,
            index,
            unusable_scheduler,
        });
    }
}

/// The ringlb services of a port's frontends under the traffic policies (internal,
/// external): one for all, or one per policy where they differ.
fn groups(
    name: String,
    internal: Vec<SocketAddr>,
    external: Vec<SocketAddr>,
    (itp, etp): (TrafficPolicy, TrafficPolicy),
) -> Vec<Group> {
    // Traffic from this node and its pods to the external frontends of a policy `Local`
    // port is served by the cluster-wide endpoints, as kube-proxy short-circuits it
    // (unless the internal policy is `Local` too: then there is no cluster-wide set).
    if external.is_empty() {
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
    }
}

/// The Service's scheduler for `backends`; where it cannot serve them, `rr` with a warning
/// (the policy falls back) or the scheduler with why (it does not).
fn scheduler(
    svc: &Service,
    name: &str,
    backends: &[Backend],
    policy: Policy<'_>,
    warnings: &mut Vec<String>,
) -> (SchedulerConfig, Option<String>) {
    let scheduler = svc.scheduler;
    let specs: Vec<_> = backends.iter().map(Backend::spec).collect();
    if specs.is_empty() {
        return (scheduler, None);
    }
    let Err(e) = Scheduler::build(&scheduler, &specs) else {
        return (scheduler, None);
    };
    let (kind, count) = (scheduler.kind, specs.len());
    if policy.scheduler_falls_back() {
        warnings.push(format!(
            "{name}: scheduler {kind} cannot serve its {count} endpoints ({e}); using rr"
        ));
        (SchedulerConfig::default(), None)
    } else {
        let why = format!("scheduler {kind} cannot serve the {count} endpoints of {name}: {e}");
        (scheduler, Some(why))
    }
}
