//! A service port's endpoints: port matching (by name and protocol, the number from each
//! slice or subset) and selection (which endpoints are backends), as kube-proxy chooses them
//! (`pkg/proxy/topology.go` `CategorizeEndpoints`).

use std::net::SocketAddr;

use super::policy::NodeOptions;
use super::resolved::ResolvedEndpoint;
use super::types::{EndpointConditions, EndpointPort, EndpointSlice, Endpoints, ServicePort};

/// Where the endpoints of a Service come from: slices win over Endpoints, as in kube-proxy
/// (which reads only slices; the mirroring controller turns custom Endpoints into slices).
pub(crate) enum Source<'a> {
    Slices(&'a [&'a EndpointSlice]),
    Endpoints(&'a Endpoints),
    None,
}

fn matches(ep: &EndpointPort, port: &ServicePort) -> bool {
    ep.name == port.name && ep.protocol == port.protocol && ep.port.is_some()
}

/// Every endpoint of `port`, not yet `usable` ([`categorize`] decides); `Err` when the
/// Service has no endpoints object at all.
pub(crate) fn endpoints_of(
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
    Ok(out)
}

/// The usable endpoints of one service port under each traffic policy (flags aligned with
/// the endpoints), as kube-proxy's `CategorizeEndpoints`.
pub(crate) struct Sets {
    /// Policy `Cluster`: the ready endpoints, narrowed to this node's zone when *every* ready
    /// endpoint has a zone hint and one of them names the zone; if that leaves none, the
    /// serving and terminating ones.
    pub(crate) cluster: Vec<bool>,
    /// Policy `Local`: the ready endpoints on this node; if none, the serving and terminating
    /// ones on this node.
    pub(crate) local: Vec<bool>,
    /// Whether any endpoint is ready, or serving and terminating, anywhere: kube-proxy rejects
    /// when none is, and drops when policy `Local` leaves none here.
    pub(crate) any: bool,
}

/// Sorts `eps` into [`Sets`] for `node` (`None`: no node is local and no zone preferred).
pub(crate) fn categorize(eps: &[ResolvedEndpoint], node: Option<&NodeOptions>) -> Sets {
    let ready = |e: &ResolvedEndpoint| e.conditions.ready;
    let draining = |e: &ResolvedEndpoint| e.conditions.serving && e.conditions.terminating;
    let local = |e: &ResolvedEndpoint| {
        node.is_some_and(|n| e.node_name.as_deref() == Some(n.node_name.as_str()))
    };
    // Topology: all or nothing per port, and only with a zone to prefer.
    let zone = node.and_then(|n| n.zone.as_deref()).filter(|_| {
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
