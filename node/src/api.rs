//! Objects read from the Kubernetes API (k8s-openapi types) into the checked types that
//! manifests are parsed into, so node mode resolves both the same way.
//!
//! The API server has validated these objects already; what ringlb still cannot read (an
//! address that does not parse, a slice without its Service's label, an FQDN slice) is left
//! out with a warning rather than failing the object, except where nothing useful remains.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use config::k8s::{
    guards_of_annotations, scheduler_of_annotations, AddressType, EndpointConditions, EndpointPort,
    EndpointSlice, IpMode, LoadBalancerIngress, Loc, ObjectMeta, Origin, PortProtocol, Service,
    ServicePort, ServiceType, SliceEndpoint, TargetPort, TrafficPolicy, SERVICE_NAME_LABEL,
};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta as ApiMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Kubernetes' default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_SECONDS: u64 = 10_800;
/// Kubernetes' longest ClientIP affinity timeout (1 day).
const MAX_AFFINITY_SECONDS: u64 = 86_400;

fn meta(m: &ApiMeta, origin: &Arc<str>) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
        origin: Origin {
            source: Arc::clone(origin),
            loc: Loc::default(),
        },
    }
}

fn protocol(p: Option<&str>) -> Result<PortProtocol, String> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(PortProtocol::Tcp),
        "UDP" => Ok(PortProtocol::Udp),
        "SCTP" => Ok(PortProtocol::Sctp),
        other => Err(format!("unknown protocol {other:?}")),
    }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// Parses addresses, naming each one that does not parse in `warnings`.
fn ips<'a>(
    list: impl IntoIterator<Item = &'a String>,
    what: &str,
    warnings: &mut Vec<String>,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for s in list {
        match s.parse() {
            Ok(ip) => out.push(ip),
            Err(_) => warnings.push(format!("{what}: {s:?} is not an IP address; left out")),
        }
    }
    out
}

/// A Service from the API, and what of it could not be read.
pub fn service(s: &core::Service) -> (Service, Vec<String>) {
    let origin: Arc<str> = Arc::from("Kubernetes API");
    let meta = meta(&s.metadata, &origin);
    let key = meta.key();
    let mut warnings = Vec::new();
    let (scheduler, problems) = scheduler_of_annotations(&meta.annotations);
    warnings.extend(problems.into_iter().map(|p| format!("Service {key}: {p}")));
    let (health, outliers, problems) = guards_of_annotations(&meta.annotations);
    warnings.extend(
        problems
            .into_iter()
            .map(|(annotation, p)| format!("Service {key}: {annotation}: {p}; left out")),
    );
    let spec = s.spec.clone().unwrap_or_default();
    let service_type = match spec.type_.as_deref() {
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        _ => ServiceType::ClusterIp,
    };
    // clusterIPs wins; clusterIP is its first entry in every object the API server returns.
    let written: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(list), _) if !list.is_empty() => list.clone(),
        (_, Some(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let headless = written
        .first()
        .is_none_or(|ip| ip == "None" || ip.is_empty());
    let cluster_ips = if headless {
        Vec::new()
    } else {
        ips(
            &written,
            &format!("Service {key}: spec.clusterIPs"),
            &mut warnings,
        )
    };
    let ports = ports(&spec, &key, &mut warnings);
    let session_affinity = session_affinity(&spec);
    let policy = |p: &Option<String>| match p.as_deref() {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    };
    let load_balancer_ingress = load_balancer_ingress(s, &key, &mut warnings);
    let external_ips = ips(
        spec.external_ips.iter().flatten(),
        &format!("Service {key}: spec.externalIPs"),
        &mut warnings,
    );
    let load_balancer_source_ranges = source_ranges(&spec, &key, &mut warnings);
    let service = Service {
        service_type,
        cluster_ips,
        headless,
        external_name: spec.external_name.clone(),
        ports,
        has_selector: spec.selector.as_ref().is_some_and(|s| !s.is_empty()),
        session_affinity,
        external_ips,
        external_traffic_policy: policy(&spec.external_traffic_policy),
        internal_traffic_policy: policy(&spec.internal_traffic_policy),
        health_check_node_port: spec.health_check_node_port.and_then(port_number),
        load_balancer_ingress,
        load_balancer_source_ranges,
        scheduler,
        scheduler_loc: Loc::default(),
        health: health.map(Box::new),
        outliers,
        meta,
    };
    (service, warnings)
}

/// `spec.ports`, each with its target port; a port without a usable number or protocol is
/// left out with a warning.
fn ports(spec: &core::ServiceSpec, key: &str, warnings: &mut Vec<String>) -> Vec<ServicePort> {
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let at = format!("Service {key}: spec.ports[{i}]");
        let (Some(port), Ok(protocol)) = (port_number(p.port), protocol(p.protocol.as_deref()))
        else {
            warnings.push(format!("{at}: unusable port or protocol; left out"));
            continue;
        };
        let target_port = match &p.target_port {
            Some(IntOrString::Int(n)) => {
                port_number(*n).map_or(TargetPort::Number(port), TargetPort::Number)
            }
            Some(IntOrString::String(s)) if !s.is_empty() => TargetPort::Name(s.clone()),
            _ => TargetPort::Number(port),
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
            target_port,
            node_port: p.node_port.and_then(port_number),
            loc: Loc::default(),
        });
    }
    ports
}

/// `sessionAffinity: ClientIP` with its timeout (Kubernetes' default where unset or out of
/// range), or `None`.
fn session_affinity(spec: &core::ServiceSpec) -> Option<Duration> {
    (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        let secs = spec
            .session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| (1..=MAX_AFFINITY_SECONDS).contains(t))
            .unwrap_or(DEFAULT_AFFINITY_SECONDS);
        Duration::from_secs(secs)
    })
}

/// `status.loadBalancer.ingress`; an IP that does not parse is left out with a warning.
fn load_balancer_ingress(
    s: &core::Service,
    key: &str,
    warnings: &mut Vec<String>,
) -> Vec<LoadBalancerIngress> {
    let mut load_balancer_ingress = Vec::new();
    let ingress = s
        .status
        .as_ref()
        .and_then(|st| st.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for g in ingress.into_iter().flatten() {
        let ip = g.ip.as_ref().and_then(|ip| {
            let parsed = ips(
                [ip],
                &format!("Service {key}: status.loadBalancer.ingress"),
                warnings,
            );
            parsed.first().copied()
        });
        load_balancer_ingress.push(LoadBalancerIngress {
            ip,
            hostname: g.hostname.clone(),
            ip_mode: match g.ip_mode.as_deref() {
                Some("Proxy") => IpMode::Proxy,
                _ => IpMode::Vip,
            },
        });
    }
    load_balancer_ingress
}

/// `spec.loadBalancerSourceRanges`, `None` when unset or empty.
fn source_ranges(
    spec: &core::ServiceSpec,
    key: &str,
    warnings: &mut Vec<String>,
) -> Option<Vec<ipnet::IpNet>> {
    // As kube-proxy: surrounding blanks are ignored, a range that does not parse is skipped.
    spec.load_balancer_source_ranges
        .as_ref()
        .filter(|r| !r.is_empty())
        .map(|ranges| {
            ranges
                .iter()
                .filter_map(|r| match r.trim().parse::<ipnet::IpNet>() {
                    Ok(net) => Some(net),
                    Err(e) => {
                        warnings.push(format!(
                            "Service {key}: spec.loadBalancerSourceRanges: {r:?} left out: {e}"
                        ));
                        None
                    }
                })
                .collect()
        })
}

/// An EndpointSlice from the API; `Err` says why it cannot be used at all (no Service label,
/// an FQDN slice).
pub fn endpoint_slice(
    s: &discovery::EndpointSlice,
) -> Result<(EndpointSlice, Vec<String>), String> {
    let origin: Arc<str> = Arc::from("Kubernetes API");
    let meta = meta(&s.metadata, &origin);
    let key = meta.key();
    let Some(service_name) = meta.labels.get(SERVICE_NAME_LABEL).cloned() else {
        return Err(format!(
            "EndpointSlice {key}: no label {SERVICE_NAME_LABEL}; ignored"
        ));
    };
    let address_type = match s.address_type.as_str() {
        "IPv4" => AddressType::Ipv4,
        "IPv6" => AddressType::Ipv6,
        other => return Err(format!("EndpointSlice {key}: addressType {other}; ignored")),
    };
    let mut warnings = Vec::new();
    let mut endpoints = Vec::new();
    for (i, e) in s.endpoints.iter().enumerate() {
        // Only addresses[0] is used, as kube-proxy.
        let Some(first) = e.addresses.first() else {
            continue;
        };
        let address: IpAddr = match first.parse() {
            Ok(ip) => ip,
            Err(_) => {
                warnings.push(format!(
                    "EndpointSlice {key}: endpoints[{i}]: {first:?} is not an IP address; left out"
                ));
                continue;
            }
        };
        if address.is_ipv4() != (address_type == AddressType::Ipv4) {
            warnings.push(format!(
                "EndpointSlice {key}: endpoints[{i}]: {address} is not {address_type}; left out"
            ));
            continue;
        }
        let c = e.conditions.clone().unwrap_or_default();
        endpoints.push(SliceEndpoint {
            address,
            conditions: EndpointConditions {
                ready: c.ready.unwrap_or(true),
                serving: c.serving.unwrap_or(true),
                terminating: c.terminating.unwrap_or(false),
            },
            node_name: e.node_name.clone(),
            zone: e.zone.clone(),
            zone_hints: e
                .hints
                .as_ref()
                .and_then(|h| h.for_zones.as_ref())
                .map(|z| z.iter().map(|z| z.name.clone()).collect())
                .unwrap_or_default(),
        });
    }
    let mut ports = Vec::new();
    for p in s.ports.iter().flatten() {
        // An unknown protocol never matches a service port: leave the port out.
        if let Ok(protocol) = protocol(p.protocol.as_deref()) {
            ports.push(EndpointPort {
                name: p.name.clone().unwrap_or_default(),
                port: p.port.and_then(port_number),
                protocol,
            });
        }
    }
    Ok((
        EndpointSlice {
            meta,
            service_name,
            address_type,
            endpoints,
            ports,
        },
        warnings,
    ))
}
