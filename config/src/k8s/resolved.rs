//! What resolution gives: the model with the Kubernetes side of each ringlb service
//! ([`ResolvedPort`], [`ResolvedEndpoint`]), what is not proxied and why, and the ringlb names
//! of service ports. Both modes give the same types; [`super::resolve`] makes them.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::model::{Config, Service as ModelService};

use super::types::{EndpointConditions, Service, ServicePort, TrafficPolicy};

/// The label that hands a Service to another proxy (kube-proxy ignores such services).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

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

/// What one Kubernetes Service resolves to in node mode (kept per Service
/// by the API watch and put together with [`super::assemble`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeService {
    /// Its ringlb services, one or two per served port, each with its Kubernetes side.
    pub services: Vec<(ModelService, ResolvedPort)>,
    /// The Service or those of its ports that are not served, with why.
    pub not_proxied: Vec<NotProxied>,
    /// What is served differently from what the Service asks.
    pub warnings: Vec<String>,
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
