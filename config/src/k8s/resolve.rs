//! Checked objects into the ringlb model for standalone mode: one [`crate::Service`] per
//! (Kubernetes Service, service port), endpoints chosen as kube-proxy chooses them.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use balancers::Scheduler;

use crate::error::Problem;
use crate::model::{Backend, Config, Protocol, Service as ModelService, ServiceDefaults};

use super::types::{
    EndpointConditions, EndpointPort, EndpointSlice, Endpoints, IpMode, Object, PortProtocol,
    Service, ServicePort, ServiceType, TrafficPolicy,
};
use super::yaml::Loc;

/// The label that hands a Service to another proxy (kube-proxy ignores such services).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

/// What standalone mode needs to know besides the manifests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandaloneOptions {
    /// Addresses on which NodePort and LoadBalancer services listen at their `nodePort`
    /// (kube-proxy's `--nodeport-addresses`). Empty: no node ports.
    pub node_addresses: Vec<IpAddr>,
}

/// The result of [`super::resolve`]: the model, and what is deliberately not proxied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    /// One service per proxied (Kubernetes Service, service port). May be empty.
    pub config: Config,
    /// The Kubernetes side of each entry of `config.services`, at the same index.
    pub ports: Vec<ResolvedPort>,
    /// Services and service ports accepted but not proxied, with why.
    pub not_proxied: Vec<NotProxied>,
    /// What node mode served differently from what a Service asked (an unusable scheduler
    /// annotation, a frontend claimed twice, load balancer IPs left out); always empty in
    /// standalone mode, where such things are problems.
    pub warnings: Vec<String>,
}

/// A Service or service port that is valid but not proxied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotProxied {
    /// `namespace.name` for a whole Service, `namespace.name.port` for one port.
    pub name: String,
    /// Why.
    pub reason: NotProxiedReason,
}

/// Why something is not proxied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotProxiedReason {
    /// `clusterIP: None`: DNS only, as kube-proxy.
    Headless,
    /// `type: ExternalName`: a DNS alias (CNAME) for the name, as kube-proxy.
    ExternalName(String),
    /// The label `service.kubernetes.io/service-proxy-name` gives it to another proxy.
    OtherProxy(String),
    /// No cluster IP, external IP, load balancer IP or node port to listen on.
    NoListenAddress,
    /// No usable endpoint (kube-proxy would reject connections); the text says which part
    /// is missing.
    NoEndpoints(String),
    /// An SCTP service port (node mode; standalone mode refuses the manifest).
    Sctp,
    /// Node mode with `--service-proxy-name`: the Service does not carry
    /// `service.kubernetes.io/service-proxy-name` with that name.
    NotSelected(String),
}

impl fmt::Display for NotProxiedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotProxiedReason::Headless => f.write_str("headless (clusterIP: None): DNS only"),
            NotProxiedReason::ExternalName(n) => write!(f, "ExternalName {n}: DNS only"),
            NotProxiedReason::OtherProxy(p) => {
                write!(f, "{SERVICE_PROXY_NAME_LABEL}={p}: served by another proxy")
            }
            NotProxiedReason::NoListenAddress => f.write_str(
                "no address to listen on (no clusterIP, externalIPs or load balancer IP, \
                 and no nodePort with node addresses)",
            ),
            NotProxiedReason::NoEndpoints(why) => write!(f, "no usable endpoints: {why}"),
            NotProxiedReason::Sctp => f.write_str("SCTP is not supported (TCP and UDP only)"),
            NotProxiedReason::NotSelected(ours) => write!(
                f,
                "not labelled {SERVICE_PROXY_NAME_LABEL}={ours}: served by another proxy"
            ),
        }
    }
}

/// The Kubernetes side of one proxied service port: what the model does not carry yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedPort {
    /// `namespace/name` of the Kubernetes Service.
    pub service: String,
    /// The service port's name (empty when unnamed).
    pub port_name: String,
    /// `externalTrafficPolicy` (standalone mode treats every policy as `Cluster`).
    pub external_traffic_policy: TrafficPolicy,
    /// `internalTrafficPolicy` (standalone mode treats every policy as `Cluster`).
    pub internal_traffic_policy: TrafficPolicy,
    /// Every endpoint of the port, usable or not, in slice (or subset) order.
    pub endpoints: Vec<ResolvedEndpoint>,
    /// Which frontends of the Kubernetes service port this ringlb service carries.
    pub frontends: Frontends,
    /// Whether the port has a usable endpoint anywhere in the cluster (ready, or serving and
    /// terminating), whatever the traffic policy: kube-proxy rejects when there is none and
    /// drops when there are some but none local under policy `Local`.
    pub any_endpoints: bool,
    /// `spec.ports[].nodePort`.
    pub node_port: Option<u16>,
    /// `spec.healthCheckNodePort` (LoadBalancer services with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
    /// The Service's cluster IPs (empty for headless services).
    pub cluster_ips: Vec<IpAddr>,
    /// Node mode: the load balancer IPs among these frontends that
    /// `loadBalancerSourceRanges` guard, and who may open flows to them.
    pub firewall: Option<Firewall>,
    /// Node mode: the ringlb service (the cluster IP part of the same port) that serves
    /// traffic from this node and its pods to these external frontends, when policy `Local`
    /// would otherwise keep it on this node's endpoints (kube-proxy's short-circuit).
    pub short_circuit: Option<String>,
}

/// Load balancer IPs whose new flows only some sources may open
/// (`spec.loadBalancerSourceRanges`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firewall {
    /// The guarded frontends: load balancer IPs at the service port.
    pub frontends: Vec<SocketAddr>,
    /// The sources admitted (of the frontends' family); empty admits no one.
    pub sources: Vec<ipnet::IpNet>,
}

/// Which frontends of a Kubernetes service port a ringlb service carries. Node mode splits a
/// port in two when its internal and external traffic policies differ, because each set of
/// frontends then has its own endpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Frontends {
    /// Cluster IPs, external IPs, load balancer IPs and node ports (one endpoint set).
    #[default]
    All,
    /// Cluster IPs only (`internalTrafficPolicy` applies).
    Internal,
    /// External IPs, load balancer IPs and node ports only (`externalTrafficPolicy`
    /// applies); the ringlb service's name ends in `.external`.
    External,
}

/// One endpoint of a service port, with its port resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEndpoint {
    /// Address and port (the port comes from the endpoint's slice or subset).
    pub address: SocketAddr,
    /// Conditions (for Endpoints: ready addresses are ready and serving, not-ready ones
    /// neither).
    pub conditions: EndpointConditions,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone` (slices only).
    pub zone: Option<String>,
    /// `hints.forZones[].name` (slices only).
    pub zone_hints: Vec<String>,
    /// Whether it is a backend: ready, or (when no endpoint is ready) serving and terminating.
    pub usable: bool,
}

/// Why a Service is not proxied at all, or `None`: kube-proxy's label rules (a Service
/// labelled `service.kubernetes.io/service-proxy-name` belongs to another proxy, unless
/// `ours` names it; with `ours` set, only Services labelled with it are ours), then
/// ExternalName and headless Services, which are DNS only.
pub(crate) fn not_proxied_reason(svc: &Service, ours: Option<&str>) -> Option<NotProxiedReason> {
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
    } else if svc.headless {
        Some(NotProxiedReason::Headless)
    } else {
        None
    }
}

/// The ringlb name of a service port: `namespace.name.portname`, or `namespace.name.port`
/// for an unnamed port. Kubernetes names and port names are DNS labels (no '.'), so the name
/// is unambiguous and uses only the characters of ringlb names.
pub fn service_port_name(service: &Service, port: &ServicePort) -> String {
    let meta = &service.meta;
    if port.name.is_empty() {
        format!("{}.{}.{}", meta.namespace, meta.name, port.port)
    } else {
        format!("{}.{}.{}", meta.namespace, meta.name, port.name)
    }
}

type Key<'a> = (&'a str, &'a str);

/// Problems of resolution, each with the source of its object.
#[derive(Default)]
struct Problems(Vec<(Arc<str>, Problem)>);

impl Problems {
    fn at(&mut self, object: &Object, loc: Loc, field: &str, reason: String) {
        let meta = object.meta();
        let label = format!("{} {}", object.kind(), meta.key());
        self.0.push((
            Arc::clone(&meta.origin.source),
            Problem {
                line: Some(loc.line),
                column: Some(loc.column),
                path: if field.is_empty() {
                    label
                } else {
                    format!("{label}: {field}")
                },
                reason,
            },
        ));
    }
}

/// Resolves objects into the model; `Err` holds every problem with its source.
pub(crate) fn resolve(
    objects: &[Object],
    options: &StandaloneOptions,
) -> Result<Resolved, Vec<(Arc<str>, Problem)>> {
    let mut problems = Problems::default();
    let mut services: Vec<(&Object, &Service)> = Vec::new();
    let mut by_key: HashMap<Key<'_>, &Object> = HashMap::new();
    let mut endpoints: HashMap<Key<'_>, &Endpoints> = HashMap::new();
    let mut slices: HashMap<Key<'_>, Vec<&EndpointSlice>> = HashMap::new();
    let mut seen: HashMap<(&str, Key<'_>), &Object> = HashMap::new();
    for o in objects {
        let meta = o.meta();
        let key = (meta.namespace.as_str(), meta.name.as_str());
        if let Some(first) = seen.insert((o.kind(), key), o) {
            let f = &first.meta().origin;
            problems.at(
                o,
                meta.origin.loc,
                "metadata.name",
                format!(
                    "duplicate {} {} (also {}:{})",
                    o.kind(),
                    meta.key(),
                    f.source,
                    f.loc
                ),
            );
            continue;
        }
        match o {
            Object::Service(s) => {
                services.push((o, s));
                by_key.insert(key, o);
            }
            Object::Endpoints(e) => {
                endpoints.insert(key, e);
            }
            Object::EndpointSlice(s) => slices
                .entry((meta.namespace.as_str(), s.service_name.as_str()))
                .or_default()
                .push(s),
        }
    }
    // Endpoints of a Service that is not there are most likely a typo in a name.
    for o in objects {
        let meta = o.meta();
        let (service, field) = match o {
            Object::Service(_) => continue,
            Object::Endpoints(_) => (meta.name.as_str(), "metadata.name".to_owned()),
            Object::EndpointSlice(s) => (
                s.service_name.as_str(),
                format!(
                    "metadata.labels[{:?}]",
                    super::endpoints::SERVICE_NAME_LABEL
                ),
            ),
        };
        if !by_key.contains_key(&(meta.namespace.as_str(), service)) {
            problems.at(
                o,
                meta.origin.loc,
                &field,
                format!("no Service {}/{service} in these manifests", meta.namespace),
            );
        }
    }

    let mut out = Resolved::default();
    let mut frontends: HashMap<(Protocol, SocketAddr), String> = HashMap::new();
    for (object, svc) in services {
        let meta = &svc.meta;
        let whole = format!("{}.{}", meta.namespace, meta.name);
        if let Some(reason) = not_proxied_reason(svc, None) {
            out.not_proxied.push(NotProxied {
                name: whole,
                reason,
            });
            continue;
        }
        let key = (meta.namespace.as_str(), meta.name.as_str());
        let source = match (slices.get(&key), endpoints.get(&key)) {
            (Some(s), _) => Source::Slices(s),
            (None, Some(e)) => Source::Endpoints(e),
            (None, None) => Source::None,
        };
        for (i, port) in svc.ports.iter().enumerate() {
            let name = service_port_name(svc, port);
            let listen = listen_addresses(svc, port, options);
            if listen.is_empty() {
                out.not_proxied.push(NotProxied {
                    name,
                    reason: NotProxiedReason::NoListenAddress,
                });
                continue;
            }
            let eps = match endpoints_of(&source, port) {
                Ok(eps) if eps.iter().any(|e| e.usable) => eps,
                Ok(eps) => {
                    let why = if eps.is_empty() {
                        format!(
                            "no endpoint port named {:?} with protocol {}",
                            port.name, port.protocol
                        )
                    } else {
                        "no endpoint is ready, nor serving and terminating".to_owned()
                    };
                    out.not_proxied.push(NotProxied {
                        name,
                        reason: NotProxiedReason::NoEndpoints(why),
                    });
                    continue;
                }
                Err(why) => {
                    out.not_proxied.push(NotProxied {
                        name,
                        reason: NotProxiedReason::NoEndpoints(why.to_owned()),
                    });
                    continue;
                }
            };
            let protocol = match port.protocol {
                PortProtocol::Udp => Protocol::Udp,
                _ => Protocol::Tcp,
            };
            let mut clash = false;
            for addr in &listen {
                if let Some(first) = frontends.get(&(protocol, *addr)) {
                    problems.at(
                        object,
                        port.loc,
                        &format!("spec.ports[{i}]"),
                        format!("{protocol} {addr} is already a frontend of {first}"),
                    );
                    clash = true;
                } else {
                    frontends.insert((protocol, *addr), name.clone());
                }
            }
            let backends: Vec<Backend> = eps
                .iter()
                .filter(|e| e.usable)
                .map(|e| Backend::new(e.address, ServiceDefaults::WEIGHT))
                .collect();
            let mut model = ModelService::with_defaults(
                name.clone(),
                protocol,
                listen,
                backends,
                svc.scheduler,
            );
            model.session_affinity = svc.session_affinity;
            let specs: Vec<_> = model.backends.iter().map(Backend::spec).collect();
            if let Err(e) = Scheduler::build(&model.scheduler, &specs) {
                problems.at(
                    object,
                    svc.scheduler_loc,
                    &format!("metadata.annotations[{:?}]", super::SCHEDULER_ANNOTATION),
                    format!(
                        "scheduler {} cannot serve the {} endpoints of {name}: {e}",
                        model.scheduler.kind,
                        specs.len()
                    ),
                );
                continue;
            }
            if clash {
                continue;
            }
            out.config.services.push(model);
            out.ports.push(ResolvedPort {
                service: meta.key(),
                port_name: port.name.clone(),
                external_traffic_policy: svc.external_traffic_policy,
                internal_traffic_policy: svc.internal_traffic_policy,
                endpoints: eps,
                frontends: Frontends::All,
                any_endpoints: true,
                node_port: port.node_port,
                health_check_node_port: svc.health_check_node_port,
                cluster_ips: svc.cluster_ips.clone(),
                firewall: None,
                short_circuit: None,
            });
        }
    }
    if problems.0.is_empty() {
        Ok(out)
    } else {
        Err(problems.0)
    }
}

/// Where the endpoints of a Service come from: slices win over Endpoints, as in kube-proxy
/// (which reads only slices; the mirroring controller turns custom Endpoints into slices).
pub(super) enum Source<'a> {
    Slices(&'a [&'a EndpointSlice]),
    Endpoints(&'a Endpoints),
    None,
}

/// Every cluster IP, external IP and VIP-mode load balancer IP at `port`, then every node
/// address at `nodePort` (NodePort and LoadBalancer services); without duplicates.
fn listen_addresses(
    svc: &Service,
    port: &ServicePort,
    options: &StandaloneOptions,
) -> Vec<SocketAddr> {
    let lb_ips = svc
        .load_balancer_ingress
        .iter()
        .filter(|i| i.ip_mode == IpMode::Vip)
        .filter_map(|i| i.ip);
    let mut out: Vec<SocketAddr> = svc
        .cluster_ips
        .iter()
        .chain(&svc.external_ips)
        .copied()
        .chain(lb_ips)
        .map(|ip| SocketAddr::new(ip, port.port))
        .collect();
    if let (Some(np), ServiceType::NodePort | ServiceType::LoadBalancer) =
        (port.node_port, svc.service_type)
    {
        out.extend(
            options
                .node_addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, np)),
        );
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|a| seen.insert(*a));
    out
}

fn matches(ep: &EndpointPort, port: &ServicePort) -> bool {
    ep.name == port.name && ep.protocol == port.protocol && ep.port.is_some()
}

/// Every endpoint of `port` with its `usable` flag; `Err` when the Service has no endpoints
/// object at all.
pub(super) fn endpoints_of(
    source: &Source<'_>,
    port: &ServicePort,
) -> Result<Vec<ResolvedEndpoint>, &'static str> {
    let mut out: Vec<ResolvedEndpoint> = Vec::new();
    let mut push = |e: ResolvedEndpoint| {
        // Overlapping slices may list an endpoint twice: the first copy wins.
        if !out.iter().any(|o| o.address == e.address) {
            out.push(e);
        }
    };
    match source {
        Source::None => return Err("no Endpoints or EndpointSlice for this Service"),
        Source::Slices(slices) => {
            for slice in *slices {
                for p in slice.ports.iter().filter(|p| matches(p, port)) {
                    let number = p.port.unwrap_or_default();
                    for e in &slice.endpoints {
                        push(ResolvedEndpoint {
                            address: SocketAddr::new(e.address, number),
                            conditions: e.conditions,
                            node_name: e.node_name.clone(),
                            zone: e.zone.clone(),
                            zone_hints: e.zone_hints.clone(),
                            usable: false,
                        });
                    }
                }
            }
        }
        Source::Endpoints(eps) => {
            for subset in &eps.subsets {
                for p in subset.ports.iter().filter(|p| matches(p, port)) {
                    let number = p.port.unwrap_or_default();
                    let ready = subset.addresses.iter().map(|a| (a, true));
                    let not_ready = subset.not_ready_addresses.iter().map(|a| (a, false));
                    for (a, ready) in ready.chain(not_ready) {
                        push(ResolvedEndpoint {
                            address: SocketAddr::new(a.ip, number),
                            conditions: EndpointConditions {
                                ready,
                                serving: ready,
                                terminating: false,
                            },
                            node_name: a.node_name.clone(),
                            zone: None,
                            zone_hints: Vec::new(),
                            usable: false,
                        });
                    }
                }
            }
        }
    }
    // kube-proxy: ready endpoints; if there are none, serving and terminating ones.
    let any_ready = out.iter().any(|e| e.conditions.ready);
    for e in &mut out {
        e.usable = if any_ready {
            e.conditions.ready
        } else {
            e.conditions.serving && e.conditions.terminating
        };
    }
    Ok(out)
}
