//! The Kubernetes objects ringlb reads, checked but not yet resolved into the model.
//!
//! Only the fields ringlb uses are kept. Fields the standalone model cannot express yet
//! (traffic policies, node names, zones, terminating state, health check node port) are kept
//! here so that node mode can use them later; see the module documentation of
//! [`crate::k8s`] for what standalone mode does with each.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use balancers::SchedulerConfig;

pub use super::yaml::Loc;

/// One supported Kubernetes object (the items of a `v1 List` are flattened).
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A `v1 Service`.
    Service(Service),
    /// A `v1 Endpoints`.
    Endpoints(Endpoints),
    /// A `discovery.k8s.io/v1 EndpointSlice`.
    EndpointSlice(EndpointSlice),
}

impl Object {
    /// The object's metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Service(s) => &s.meta,
            Object::Endpoints(e) => &e.meta,
            Object::EndpointSlice(s) => &s.meta,
        }
    }

    /// The object's kind as Kubernetes spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Service(_) => "Service",
            Object::Endpoints(_) => "Endpoints",
            Object::EndpointSlice(_) => "EndpointSlice",
        }
    }
}

/// Where an object was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The source name given to [`crate::k8s::parse_manifests`] (usually the file name).
    pub source: Arc<str>,
    /// Where the object's mapping starts.
    pub loc: Loc,
}

/// The part of `metadata` ringlb reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when absent.
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// Where the object is.
    pub origin: Origin,
}

impl ObjectMeta {
    /// `namespace/name`, as Kubernetes names objects in messages.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// `spec.type` of a Service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// `ClusterIP` (the default): reachable on its cluster IPs (and external IPs).
    #[default]
    ClusterIp,
    /// `NodePort`: also on every node address at `nodePort`.
    NodePort,
    /// `LoadBalancer`: also on its load balancer ingress IPs and node ports.
    LoadBalancer,
    /// `ExternalName`: a DNS alias, never proxied.
    ExternalName,
}

/// A port protocol as Kubernetes spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    /// `TCP` (the default).
    #[default]
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`: accepted on endpoint ports (they never match), refused on service ports.
    Sctp,
}

impl fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::Sctp => "SCTP",
        })
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TrafficPolicy {
    /// `Cluster` (the default): every usable endpoint.
    #[default]
    Cluster,
    /// `Local`: only endpoints on this node (node mode only).
    Local,
}

/// `spec.ports[].targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named container port; each endpoint's port carries the number it resolved to.
    Name(String),
}

/// One entry of `spec.ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`; empty when unnamed (allowed only for a single port).
    pub name: String,
    /// `protocol` (never [`PortProtocol::Sctp`]: refused while parsing).
    pub protocol: PortProtocol,
    /// `port`: the service port on cluster, external and load balancer IPs.
    pub port: u16,
    /// `targetPort`, defaulting to `port`. Informational: backends take the port of their
    /// endpoint, as kube-proxy does.
    pub target_port: TargetPort,
    /// `nodePort`, for NodePort and LoadBalancer services.
    pub node_port: Option<u16>,
    /// Where the port entry is.
    pub loc: Loc,
}

/// `ipMode` of a load balancer ingress.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpMode {
    /// `VIP` (the default): traffic arrives addressed to the ingress IP; ringlb listens on it.
    #[default]
    Vip,
    /// `Proxy`: the load balancer delivers to node ports; ringlb does not listen on the IP.
    Proxy,
}

/// One entry of `status.loadBalancer.ingress`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancerIngress {
    /// `ip`, if any.
    pub ip: Option<IpAddr>,
    /// `hostname`, if any (never listened on).
    pub hostname: Option<String>,
    /// `ipMode`.
    pub ip_mode: IpMode,
}

/// A `v1 Service`, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    /// Metadata.
    pub meta: ObjectMeta,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`), without `None`.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.clusterIP: None`: a headless service, DNS only.
    pub headless: bool,
    /// `spec.externalName` of an ExternalName service.
    pub external_name: Option<String>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// Whether `spec.selector` is set (a Service without one gets hand-written endpoints).
    pub has_selector: bool,
    /// `spec.sessionAffinity: ClientIP` with its timeout; `None` for no affinity.
    pub session_affinity: Option<Duration>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `status.loadBalancer.ingress`.
    pub load_balancer_ingress: Vec<LoadBalancerIngress>,
    /// `spec.loadBalancerSourceRanges`, `None` when unset (manifests refuse it; node mode
    /// lets only these sources open flows to the load balancer IPs). Ranges that do not parse
    /// are left out with a warning, and a list left empty that way admits no one.
    pub load_balancer_source_ranges: Option<Vec<ipnet::IpNet>>,
    /// The scheduler from the annotations `ringlb.io/scheduler` and `ringlb.io/scheduler-flags`
    /// (`rr` by default).
    pub scheduler: SchedulerConfig,
    /// Where `ringlb.io/scheduler` is (or the object, when absent), for scheduler problems.
    pub scheduler_loc: Loc,
    /// Health checks of the endpoints (`ringlb.io/health-check`, `ringlb.io/health-interval`),
    /// for its TCP ports.
    pub health: Option<Box<crate::model::HealthCheck>>,
    /// Outlier detection (`ringlb.io/eject-after`), for its TCP ports.
    pub outliers: Option<crate::model::Outliers>,
}

/// A `v1 Endpoints`, checked. Its name is the name of its Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Metadata.
    pub meta: ObjectMeta,
    /// `subsets`.
    pub subsets: Vec<EndpointSubset>,
}

/// One entry of `subsets`: every address serves every port of the subset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSubset {
    /// `addresses`: ready endpoints.
    pub addresses: Vec<EndpointAddress>,
    /// `notReadyAddresses`: never backends.
    pub not_ready_addresses: Vec<EndpointAddress>,
    /// `ports`.
    pub ports: Vec<EndpointPort>,
}

/// One address of an Endpoints subset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointAddress {
    /// `ip`.
    pub ip: IpAddr,
    /// `nodeName`.
    pub node_name: Option<String>,
}

/// One port of an Endpoints subset or an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    /// `name`; empty when unnamed. Matched with the service port's name.
    pub name: String,
    /// `port`; `None` (allowed in slices) is ignored, as kube-proxy does.
    pub port: Option<u16>,
    /// `protocol`. Matched with the service port's protocol.
    pub protocol: PortProtocol,
}

/// `addressType` of an EndpointSlice (`FQDN` is refused while parsing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    /// `IPv4`.
    Ipv4,
    /// `IPv6`.
    Ipv6,
}

impl fmt::Display for AddressType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressType::Ipv4 => "IPv4",
            AddressType::Ipv6 => "IPv6",
        })
    }
}

/// `conditions` of a slice endpoint, with Kubernetes' defaults applied: `ready` and
/// `serving` default to true, `terminating` to false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointConditions {
    /// `ready`.
    pub ready: bool,
    /// `serving`.
    pub serving: bool,
    /// `terminating`.
    pub terminating: bool,
}

impl Default for EndpointConditions {
    fn default() -> Self {
        Self {
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// `addresses[0]` (the only one kube-proxy uses).
    pub address: IpAddr,
    /// `conditions`.
    pub conditions: EndpointConditions,
    /// `nodeName`.
    pub node_name: Option<String>,
    /// `zone`.
    pub zone: Option<String>,
    /// `hints.forZones[].name`: the zones the EndpointSlice controller wants this endpoint
    /// used from (topology aware routing; node mode only).
    pub zone_hints: Vec<String>,
}

/// A `discovery.k8s.io/v1 EndpointSlice`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Metadata.
    pub meta: ObjectMeta,
    /// The label `kubernetes.io/service-name`: the Service (same namespace) it belongs to.
    pub service_name: String,
    /// `addressType`.
    pub address_type: AddressType,
    /// `endpoints`.
    pub endpoints: Vec<SliceEndpoint>,
    /// `ports`.
    pub ports: Vec<EndpointPort>,
}
