//! `v1 Service`: spec, status and ringlb's annotations.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use super::annotations::scheduler;
use super::rules::{dns1123_label, iana_svc_name, protocol, required, LABEL_RULE};
use super::types::{
    IpMode, LoadBalancerIngress, ObjectMeta, PortProtocol, Service, ServicePort, ServiceType,
    TargetPort, TrafficPolicy,
};
use super::yaml::{Checker, Fields, Node, Value};

/// Kubernetes' default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_SECONDS: i64 = 10_800;
/// Kubernetes' longest ClientIP affinity timeout (1 day).
const MAX_AFFINITY_SECONDS: i64 = 86_400;

pub(crate) fn service(ck: &mut Checker, meta: ObjectMeta, f: &Fields<'_>) -> Option<Service> {
    let (scheduler, scheduler_loc) = scheduler(ck, f, meta.origin.loc);
    let spec = required(ck, f, "spec").and_then(|n| ck.map(n, "spec"))?;
    let service_type = match spec.get("type") {
        None => Some(ServiceType::ClusterIp),
        Some(n) => {
            let text = ck.string(n, "spec.type")?;
            service_type(ck, n, &text)
        }
    };
    let (cluster_ips, headless) = cluster_ips(ck, &spec).unzip();
    let external_name = match spec.get("externalName") {
        Some(n) => ck.string(n, "spec.externalName").map(Some),
        None if service_type == Some(ServiceType::ExternalName) => {
            ck.at(
                spec.loc,
                "spec.externalName",
                "required field is missing (type ExternalName)",
            );
            None
        }
        None => Some(None),
    };
    if headless == Some(true)
        && matches!(
            service_type,
            Some(ServiceType::NodePort | ServiceType::LoadBalancer)
        )
    {
        ck.at(
            spec.get("clusterIP").map_or(spec.loc, |n| n.loc),
            "spec.clusterIP",
            "may not be None for type NodePort or LoadBalancer",
        );
    }
    let ports = ports(ck, &spec, service_type, headless.unwrap_or(false));
    let has_selector = match spec.get("selector") {
        None => false,
        Some(n) => ck.map(n, "spec.selector").is_some(),
    };
    let session_affinity = session_affinity(ck, &spec);
    let external_ips = spec
        .get("externalIPs")
        .map(|n| ips(ck, n, "spec.externalIPs"))
        .unwrap_or(Some(Vec::new()));
    let external_traffic_policy = traffic_policy(ck, &spec, "externalTrafficPolicy");
    let internal_traffic_policy = traffic_policy(ck, &spec, "internalTrafficPolicy");
    let health_check_node_port = match spec.get("healthCheckNodePort") {
        None => Some(None),
        Some(n) => ck.port(n, "spec.healthCheckNodePort").map(Some),
    };
    if let Some(n) = spec.get("loadBalancerSourceRanges") {
        ck.at(
            n.loc,
            "spec.loadBalancerSourceRanges",
            "is not supported in standalone mode: ringlb would accept every client instead of these ranges (node mode with --nftables enforces them)",
        );
    }
    let load_balancer_ingress = load_balancer_ingress(ck, f);
    let (health, outliers) = guards(ck, f)?;
    Some(Service {
        meta,
        service_type: service_type?,
        cluster_ips: cluster_ips?,
        headless: headless?,
        external_name: external_name?,
        ports: ports?,
        has_selector,
        session_affinity: session_affinity?,
        external_ips: external_ips?,
        external_traffic_policy: external_traffic_policy?,
        internal_traffic_policy: internal_traffic_policy?,
        health_check_node_port: health_check_node_port?,
        load_balancer_ingress: load_balancer_ingress?,
        load_balancer_source_ranges: None,
        scheduler: scheduler?,
        scheduler_loc,
        health: health.map(Box::new),
        outliers,
    })
}

/// The health checks and outlier detection of the annotations, every problem located.
fn guards(
    ck: &mut Checker,
    f: &Fields<'_>,
) -> Option<(
    Option<crate::model::HealthCheck>,
    Option<crate::model::Outliers>,
)> {
    let located = super::rules::located_annotations(f);
    let plain = located
        .iter()
        .map(|(k, (v, _))| (k.clone(), v.clone()))
        .collect();
    let (health, outliers, problems) = super::annotations::guards_of_annotations(&plain);
    for (key, why) in &problems {
        let loc = located.get(*key).map_or(f.loc, |(_, loc)| *loc);
        ck.at(loc, &format!("metadata.annotations[{key:?}]"), why.clone());
    }
    problems.is_empty().then_some((health, outliers))
}

/// `spec.type`, written as `text` at `n`.
fn service_type(ck: &mut Checker, n: &Node, text: &str) -> Option<ServiceType> {
    match text {
        "ClusterIP" => Some(ServiceType::ClusterIp),
        "NodePort" => Some(ServiceType::NodePort),
        "LoadBalancer" => Some(ServiceType::LoadBalancer),
        "ExternalName" => Some(ServiceType::ExternalName),
        other => {
            ck.at(
                n.loc,
                "spec.type",
                format!(
                    "unknown type {other:?} (ClusterIP, NodePort, LoadBalancer or ExternalName)"
                ),
            );
            None
        }
    }
}

/// `spec.clusterIP` and `spec.clusterIPs`: the addresses, and whether the service is headless.
fn cluster_ips(ck: &mut Checker, spec: &Fields<'_>) -> Option<(Vec<IpAddr>, bool)> {
    let one = spec.get("clusterIP");
    let many = spec.get("clusterIPs");
    let mut ok = true;
    let read = |ck: &mut Checker, n: &Node, field: &str| -> Option<Option<IpAddr>> {
        let s = ck.string(n, field)?;
        match s.as_str() {
            "None" => Some(None),
            _ => ck.ip(n, field).map(Some),
        }
    };
    let first = match one {
        Some(n) if n.value == Value::Str(String::new()) => None,
        Some(n) => match read(ck, n, "spec.clusterIP") {
            Some(v) => Some((v, n.loc)),
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let mut list: Vec<Option<IpAddr>> = Vec::new();
    if let Some(n) = many {
        let items = ck.seq(n, "spec.clusterIPs")?;
        for (i, item) in items.iter().enumerate() {
            match read(ck, item, &format!("spec.clusterIPs[{i}]")) {
                Some(v) => list.push(v),
                None => ok = false,
            }
        }
        if list.len() > 2
            || (list.len() == 2
                && (list.contains(&None)
                    || list[0].map(|a| a.is_ipv4()) == list[1].map(|a| a.is_ipv4())))
        {
            ck.at(
                n.loc,
                "spec.clusterIPs",
                "at most one IPv4 and one IPv6 address (or a single None)",
            );
            ok = false;
        }
        if let (Some((v, loc)), Some(l0)) = (first, list.first()) {
            if v != *l0 {
                ck.at(
                    loc,
                    "spec.clusterIP",
                    "must be the same as spec.clusterIPs[0]",
                );
                ok = false;
            }
        }
    } else if let Some((v, _)) = first {
        list.push(v);
    }
    let headless = list.first() == Some(&None);
    ok.then(|| (list.into_iter().flatten().collect(), headless))
}

/// `spec.ports`.
fn ports(
    ck: &mut Checker,
    spec: &Fields<'_>,
    service_type: Option<ServiceType>,
    headless: bool,
) -> Option<Vec<ServicePort>> {
    let Some(n) = spec.get("ports") else {
        // Kubernetes requires ports except on headless and ExternalName services.
        if !headless && service_type != Some(ServiceType::ExternalName) {
            ck.at(spec.loc, "spec.ports", "required field is missing");
            return None;
        }
        return Some(Vec::new());
    };
    let items = ck.seq(n, "spec.ports")?;
    if items.is_empty() && !headless && service_type != Some(ServiceType::ExternalName) {
        ck.at(n.loc, "spec.ports", "list at least one port");
    }
    let mut ok = true;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match port(ck, item, &format!("spec.ports[{i}]"), service_type) {
            Some(p) => out.push((i, p)),
            None => ok = false,
        }
    }
    // Names: required with several ports, unique; (port, protocol) and nodePort unique.
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut numbers: HashMap<(u16, PortProtocol), usize> = HashMap::new();
    let mut node_ports: HashMap<(u16, PortProtocol), usize> = HashMap::new();
    for (i, p) in &out {
        let (i, p) = (*i, p);
        let path = format!("spec.ports[{i}]");
        if p.name.is_empty() && items.len() > 1 {
            ck.at(
                p.loc,
                &format!("{path}.name"),
                "required when the Service has more than one port",
            );
            ok = false;
        } else if let Some(first) = names.insert(&p.name, i).filter(|_| !p.name.is_empty()) {
            ck.at(
                p.loc,
                &format!("{path}.name"),
                format!(
                    "duplicate port name {:?} (also spec.ports[{first}])",
                    p.name
                ),
            );
            ok = false;
        }
        if let Some(first) = numbers.insert((p.port, p.protocol), i) {
            ck.at(
                p.loc,
                &format!("{path}.port"),
                format!(
                    "duplicate port {}/{} (also spec.ports[{first}])",
                    p.port, p.protocol
                ),
            );
            ok = false;
        }
        if let Some(first) = p
            .node_port
            .and_then(|np| node_ports.insert((np, p.protocol), i))
        {
            ck.at(
                p.loc,
                &format!("{path}.nodePort"),
                format!("duplicate nodePort (also spec.ports[{first}])"),
            );
            ok = false;
        }
    }
    ok.then(|| out.into_iter().map(|(_, p)| p).collect())
}

/// One entry of `spec.ports`.
fn port(
    ck: &mut Checker,
    n: &Node,
    path: &str,
    service_type: Option<ServiceType>,
) -> Option<ServicePort> {
    let f = ck.map(n, path)?;
    let name = match f.get("name") {
        None => Some(String::new()),
        Some(nn) => ck.string(nn, &format!("{path}.name")).and_then(|s| {
            if s.is_empty() || dns1123_label(&s) {
                Some(s)
            } else {
                ck.at(
                    nn.loc,
                    &format!("{path}.name"),
                    format!("invalid port name {s:?}: {LABEL_RULE}"),
                );
                None
            }
        }),
    };
    let proto_field = format!("{path}.protocol");
    let protocol = match protocol(ck, &f, &proto_field) {
        Some(PortProtocol::Sctp) => {
            let loc = f.get("protocol").map_or(f.loc, |p| p.loc);
            ck.at(loc, &proto_field, "SCTP is not supported (TCP or UDP)");
            None
        }
        p => p,
    };
    let number = super::rules::required(ck, &f, &format!("{path}.port"))
        .and_then(|p| ck.port(p, &format!("{path}.port")));
    let target_port = match f.get("targetPort") {
        None => number.map(TargetPort::Number),
        Some(t) => target_port(ck, t, &format!("{path}.targetPort"), number),
    };
    let node_port = match f.get("nodePort") {
        None => Some(None),
        // 0 asks the API server to allocate one: ringlb has nothing to allocate from.
        Some(np) if np.value == Value::Int(0) => Some(None),
        Some(np) => {
            let v = ck.port(np, &format!("{path}.nodePort"));
            if v.is_some()
                && matches!(
                    service_type,
                    Some(ServiceType::ClusterIp | ServiceType::ExternalName)
                )
            {
                ck.at(
                    np.loc,
                    &format!("{path}.nodePort"),
                    "only applies to type NodePort or LoadBalancer",
                );
                None
            } else {
                v.map(Some)
            }
        }
    };
    Some(ServicePort {
        name: name?,
        protocol: protocol?,
        port: number?,
        target_port: target_port?,
        node_port: node_port?,
        loc: n.loc,
    })
}

/// `targetPort`: a number (0 means "same as port", as Kubernetes defaults it) or a port name.
fn target_port(ck: &mut Checker, n: &Node, field: &str, port: Option<u16>) -> Option<TargetPort> {
    match &n.value {
        Value::Int(0) => port.map(TargetPort::Number),
        Value::Int(_) => ck.port(n, field).map(TargetPort::Number),
        Value::Str(s) if s.is_empty() => port.map(TargetPort::Number),
        Value::Str(s) if iana_svc_name(s) => Some(TargetPort::Name(s.clone())),
        Value::Str(s) => {
            ck.at(
                n.loc,
                field,
                format!(
                    "{s:?} is neither a port number (write numbers without quotes) nor a port \
                     name (at most 15 lower-case letters, digits and '-', with a letter)"
                ),
            );
            None
        }
        _ => {
            ck.at(
                n.loc,
                field,
                format!("expected a port number or name, got {}", n.value.kind()),
            );
            None
        }
    }
}

/// `spec.sessionAffinity` and `spec.sessionAffinityConfig.clientIP.timeoutSeconds`.
fn session_affinity(ck: &mut Checker, spec: &Fields<'_>) -> Option<Option<Duration>> {
    let client_ip = match spec.get("sessionAffinity") {
        None => Some(false),
        Some(n) => match ck.string(n, "spec.sessionAffinity")?.as_str() {
            "None" => Some(false),
            "ClientIP" => Some(true),
            other => {
                ck.at(
                    n.loc,
                    "spec.sessionAffinity",
                    format!("unknown session affinity {other:?} (None or ClientIP)"),
                );
                None
            }
        },
    };
    let Some(config) = spec.get("sessionAffinityConfig") else {
        return client_ip.map(|c| c.then(|| secs(DEFAULT_AFFINITY_SECONDS)));
    };
    let timeout = ck
        .map(config, "spec.sessionAffinityConfig")
        .and_then(|c| c.get("clientIP"))
        .and_then(|c| ck.map(c, "spec.sessionAffinityConfig.clientIP"))
        .and_then(|c| c.get("timeoutSeconds"));
    let field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds";
    let seconds = match timeout {
        None => Some(DEFAULT_AFFINITY_SECONDS),
        Some(t) => match &t.value {
            Value::Int(v) if !(1..=i128::from(MAX_AFFINITY_SECONDS)).contains(v) => {
                ck.at(
                    t.loc,
                    field,
                    format!(
                        "must be between 1 and {MAX_AFFINITY_SECONDS} seconds (as Kubernetes \
                         validates), got {v}"
                    ),
                );
                None
            }
            _ => ck.int_in(t, field, 1, MAX_AFFINITY_SECONDS),
        },
    };
    match client_ip? {
        true => seconds.map(|s| Some(secs(s))),
        false => {
            ck.at(
                config.loc,
                "spec.sessionAffinityConfig",
                "only applies with spec.sessionAffinity: ClientIP",
            );
            None
        }
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.unsigned_abs())
}

fn traffic_policy(ck: &mut Checker, spec: &Fields<'_>, key: &str) -> Option<TrafficPolicy> {
    let Some(n) = spec.get(key) else {
        return Some(TrafficPolicy::Cluster);
    };
    let field = format!("spec.{key}");
    match ck.string(n, &field)?.as_str() {
        "Cluster" => Some(TrafficPolicy::Cluster),
        "Local" => Some(TrafficPolicy::Local),
        other => {
            ck.at(
                n.loc,
                &field,
                format!("unknown policy {other:?} (Cluster or Local)"),
            );
            None
        }
    }
}

fn ips(ck: &mut Checker, n: &Node, field: &str) -> Option<Vec<IpAddr>> {
    let items = ck.seq(n, field)?;
    let all: Vec<_> = items
        .iter()
        .enumerate()
        .map(|(i, item)| ck.ip(item, &format!("{field}[{i}]")))
        .collect();
    all.into_iter().collect()
}

/// `status.loadBalancer.ingress`.
fn load_balancer_ingress(ck: &mut Checker, f: &Fields<'_>) -> Option<Vec<LoadBalancerIngress>> {
    let Some(list) = f
        .get("status")
        .and_then(|s| ck.map(s, "status"))
        .and_then(|s| s.get("loadBalancer"))
        .and_then(|lb| ck.map(lb, "status.loadBalancer"))
        .and_then(|lb| lb.get("ingress"))
    else {
        return Some(Vec::new());
    };
    let items = ck.seq(list, "status.loadBalancer.ingress")?;
    let mut ok = true;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("status.loadBalancer.ingress[{i}]");
        let Some(g) = ck.map(item, &path) else {
            ok = false;
            continue;
        };
        let ip = match g.get("ip") {
            None => Some(None),
            Some(n) => ck.ip(n, &format!("{path}.ip")).map(Some),
        };
        let hostname = match g.get("hostname") {
            None => Some(None),
            Some(n) => ck.string(n, &format!("{path}.hostname")).map(Some),
        };
        let ip_mode = match g.get("ipMode") {
            None => Some(IpMode::Vip),
            Some(n) => match ck.string(n, &format!("{path}.ipMode")).as_deref() {
                Some("VIP") => Some(IpMode::Vip),
                Some("Proxy") => Some(IpMode::Proxy),
                Some(other) => {
                    ck.at(
                        n.loc,
                        &format!("{path}.ipMode"),
                        format!("unknown ipMode {other:?} (VIP or Proxy)"),
                    );
                    None
                }
                None => None,
            },
        };
        match (ip, hostname, ip_mode) {
            (Some(ip), Some(hostname), Some(ip_mode)) => out.push(LoadBalancerIngress {
                ip,
                hostname,
                ip_mode,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}
