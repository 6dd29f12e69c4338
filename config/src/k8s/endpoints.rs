//! `v1 Endpoints` and `discovery.k8s.io/v1 EndpointSlice`.

use std::net::IpAddr;

use super::rules::{protocol, required};
use super::types::{
    AddressType, EndpointAddress, EndpointConditions, EndpointPort, EndpointSlice, EndpointSubset,
    Endpoints, ObjectMeta, SliceEndpoint,
};
use super::yaml::{Checker, Fields, Node};

/// The label that maps an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

pub(crate) fn endpoints(ck: &mut Checker, meta: ObjectMeta, f: &Fields<'_>) -> Option<Endpoints> {
    let Some(n) = f.get("subsets") else {
        // An Endpoints without subsets is valid: the service has no endpoints.
        return Some(Endpoints {
            meta,
            subsets: Vec::new(),
        });
    };
    let items = ck.seq(n, "subsets")?;
    let mut ok = true;
    let mut subsets = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match subset(ck, item, &format!("subsets[{i}]")) {
            Some(s) => subsets.push(s),
            None => ok = false,
        }
    }
    ok.then_some(Endpoints { meta, subsets })
}

fn subset(ck: &mut Checker, n: &Node, path: &str) -> Option<EndpointSubset> {
    let f = ck.map(n, path)?;
    let ready = address_list(ck, &f, "addresses", path);
    let not_ready = address_list(ck, &f, "notReadyAddresses", path);
    let ports = ports(ck, &f, path, true);
    Some(EndpointSubset {
        addresses: ready?,
        not_ready_addresses: not_ready?,
        ports: ports?,
    })
}

fn address_list(
    ck: &mut Checker,
    f: &Fields<'_>,
    key: &str,
    path: &str,
) -> Option<Vec<EndpointAddress>> {
    let Some(n) = f.get(key) else {
        return Some(Vec::new());
    };
    let items = ck.seq(n, &format!("{path}.{key}"))?;
    let mut ok = true;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}.{key}[{i}]");
        let Some(a) = ck.map(item, &at) else {
            ok = false;
            continue;
        };
        let ip = required(ck, &a, &format!("{at}.ip")).and_then(|n| ck.ip(n, &format!("{at}.ip")));
        let node_name = optional_string(ck, &a, "nodeName", &at);
        match (ip, node_name) {
            (Some(ip), Some(node_name)) => out.push(EndpointAddress { ip, node_name }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

/// `ports` of an Endpoints subset (`port` required) or of a slice (`port` optional).
fn ports(
    ck: &mut Checker,
    f: &Fields<'_>,
    path: &str,
    port_required: bool,
) -> Option<Vec<EndpointPort>> {
    let Some(n) = f.get("ports") else {
        return Some(Vec::new());
    };
    let prefix = if path.is_empty() {
        "ports".to_owned()
    } else {
        format!("{path}.ports")
    };
    let items = ck.seq(n, &prefix)?;
    let mut ok = true;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        let Some(p) = ck.map(item, &at) else {
            ok = false;
            continue;
        };
        let name = optional_string(ck, &p, "name", &at).map(Option::unwrap_or_default);
        let port_field = format!("{at}.port");
        let port = match p.get("port") {
            Some(n) => ck.port(n, &port_field).map(Some),
            None if port_required => {
                ck.at(p.loc, &port_field, "required field is missing");
                None
            }
            None => Some(None),
        };
        let protocol = protocol(ck, &p, &format!("{at}.protocol"));
        match (name, port, protocol) {
            (Some(name), Some(port), Some(protocol)) => out.push(EndpointPort {
                name,
                port,
                protocol,
            }),
            _ => ok = false,
        }
    }
    ok.then_some(out)
}

pub(crate) fn endpoint_slice(
    ck: &mut Checker,
    meta: ObjectMeta,
    f: &Fields<'_>,
) -> Option<EndpointSlice> {
    let service_name = match meta.labels.get(SERVICE_NAME_LABEL) {
        Some(name) => Some(name.clone()),
        None => {
            let loc = f.get("metadata").map_or(meta.origin.loc, |m| m.loc);
            ck.at(
                loc,
                "metadata.labels",
                format!(
                    "missing label {SERVICE_NAME_LABEL}: it names the Service this slice belongs to"
                ),
            );
            None
        }
    };
    let address_type =
        required(ck, f, "addressType").and_then(|n| match ck.string(n, "addressType")?.as_str() {
            "IPv4" => Some(AddressType::Ipv4),
            "IPv6" => Some(AddressType::Ipv6),
            "FQDN" => {
                ck.at(
                    n.loc,
                    "addressType",
                    "FQDN EndpointSlices are not supported: ringlb, like kube-proxy, only \
                     proxies to IPv4 and IPv6 endpoints",
                );
                None
            }
            other => {
                ck.at(
                    n.loc,
                    "addressType",
                    format!("unknown addressType {other:?} (IPv4 or IPv6)"),
                );
                None
            }
        });
    let endpoints = match (f.get("endpoints"), address_type) {
        (None, _) => Some(Vec::new()),
        (Some(n), Some(family)) => slice_endpoints(ck, n, family),
        (Some(_), None) => None,
    };
    let ports = ports(ck, f, "", false);
    Some(EndpointSlice {
        meta,
        service_name: service_name?,
        address_type: address_type?,
        endpoints: endpoints?,
        ports: ports?,
    })
}

fn slice_endpoints(ck: &mut Checker, n: &Node, family: AddressType) -> Option<Vec<SliceEndpoint>> {
    let items = ck.seq(n, "endpoints")?;
    let mut ok = true;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match slice_endpoint(ck, item, &format!("endpoints[{i}]"), family) {
            Some(e) => out.push(e),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn slice_endpoint(
    ck: &mut Checker,
    n: &Node,
    path: &str,
    family: AddressType,
) -> Option<SliceEndpoint> {
    let e = ck.map(n, path)?;
    let field = format!("{path}.addresses");
    let address = required(ck, &e, &field)
        .and_then(|a| ck.seq(a, &field).map(|items| (a, items)))
        .and_then(|(a, items)| {
            let Some(first) = items.first() else {
                ck.at(a.loc, &field, "list at least one address");
                return None;
            };
            // Only addresses[0] is used (as kube-proxy); the others must still be strings.
            for (i, other) in items.iter().enumerate().skip(1) {
                ck.string(other, &format!("{field}[{i}]"));
            }
            let ip = ck.ip(first, &format!("{field}[0]"))?;
            if matches!(
                (family, ip),
                (AddressType::Ipv4, IpAddr::V6(_)) | (AddressType::Ipv6, IpAddr::V4(_))
            ) {
                ck.at(
                    first.loc,
                    &format!("{field}[0]"),
                    format!("{ip} does not match addressType {family}"),
                );
                return None;
            }
            Some(ip)
        });
    let conditions = match e.get("conditions") {
        None => Some(EndpointConditions::default()),
        Some(c) => ck.map(c, &format!("{path}.conditions")).and_then(|c| {
            let mut flag = |key: &str, default: bool| match c.get(key) {
                None => Some(default),
                Some(v) => ck.bool(v, &format!("{path}.conditions.{key}")),
            };
            let ready = flag("ready", true);
            let serving = flag("serving", true);
            let terminating = flag("terminating", false);
            Some(EndpointConditions {
                ready: ready?,
                serving: serving?,
                terminating: terminating?,
            })
        }),
    };
    let node_name = optional_string(ck, &e, "nodeName", path);
    let zone = optional_string(ck, &e, "zone", path);
    let zone_hints = zone_hints(ck, &e, path);
    Some(SliceEndpoint {
        address: address?,
        conditions: conditions?,
        node_name: node_name?,
        zone: zone?,
        zone_hints: zone_hints?,
    })
}

/// `hints.forZones[].name` of a slice endpoint (other hints are ignored).
fn zone_hints(ck: &mut Checker, e: &Fields<'_>, path: &str) -> Option<Vec<String>> {
    let Some(h) = e.get("hints") else {
        return Some(Vec::new());
    };
    let h = ck.map(h, &format!("{path}.hints"))?;
    let Some(zones) = h.get("forZones") else {
        return Some(Vec::new());
    };
    let field = format!("{path}.hints.forZones");
    let items = ck.seq(zones, &field)?;
    let mut ok = true;
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let name = ck
            .map(item, &at)
            .and_then(|z| required(ck, &z, &format!("{at}.name")))
            .and_then(|n| ck.string(n, &format!("{at}.name")));
        match name {
            Some(name) => out.push(name),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

/// An optional string field: `Some(None)` when absent, `None` when wrongly typed.
fn optional_string(
    ck: &mut Checker,
    f: &Fields<'_>,
    key: &str,
    path: &str,
) -> Option<Option<String>> {
    match f.get(key) {
        None => Some(None),
        Some(n) => ck.string(n, &format!("{path}.{key}")).map(Some),
    }
}
