//! What this node's Node object tells node mode: its zone (for topology hints), its primary
//! addresses (NodePorts under `--nodeport-addresses primary`) and whether it may take load
//! balancer traffic, each read as kube-proxy reads it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1 as core;

/// The Node label with the node's zone, matched against endpoint zone hints.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The Cluster Autoscaler's taint on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// The zone label of a Node.
pub fn node_zone(labels: Option<&BTreeMap<String, String>>) -> Option<String> {
    labels.and_then(|l| l.get(ZONE_LABEL)).cloned()
}

/// A Node's primary addresses, which take NodePorts under kube-proxy's `--nodeport-addresses
/// primary` (its nftables mode's default): as `GetNodeHostIPs` picks them, the first address
/// of `status.addresses` with the `InternalIP` addresses before the `ExternalIP` ones, then
/// the first of the other family in that order (so one per family, the primary family
/// first). A loopback address among them is left out, as kube-proxy leaves it out: loopback
/// never takes NodePorts. Addresses that do not parse and other types (`Hostname`) are
/// skipped.
pub fn node_primary_addresses(node: &core::Node) -> Vec<IpAddr> {
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    let of_type = |kind: &'static str| {
        addresses
            .iter()
            .filter(move |a| a.type_ == kind)
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
    };
    let mut all = of_type("InternalIP").chain(of_type("ExternalIP"));
    let Some(first) = all.next() else {
        return Vec::new();
    };
    let mut out = vec![first];
    out.extend(all.find(|ip| ip.is_ipv4() != first.is_ipv4()));
    out.retain(|ip| !ip.is_loopback());
    out
}

/// Whether `node` may take load balancer traffic, as kube-proxy's `SyncNode` decides: not
/// being deleted and not tainted [`TO_BE_DELETED_TAINT`].
pub fn node_eligible(node: &core::Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(addresses: &[(&str, &str)]) -> core::Node {
        core::Node {
            status: Some(core::NodeStatus {
                addresses: Some(
                    addresses
                        .iter()
                        .map(|(kind, address)| core::NodeAddress {
                            type_: (*kind).to_owned(),
                            address: (*address).to_owned(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn primary_addresses_are_one_per_family_internal_before_external() {
        let n = node(&[
            ("Hostname", "node-a"),
            ("ExternalIP", "203.0.113.7"),
            ("InternalIP", "10.0.0.7"),
            ("InternalIP", "10.0.0.8"),
            ("ExternalIP", "2001:db8::7"),
        ]);
        // The IPv6 address is the first of its family once InternalIPs come first.
        assert_eq!(
            node_primary_addresses(&n),
            ips(&["10.0.0.7", "2001:db8::7"])
        );
        let v6_first = node(&[
            ("InternalIP", "fd00::7"),
            ("InternalIP", "fd00::8"),
            ("InternalIP", "10.0.0.7"),
        ]);
        assert_eq!(
            node_primary_addresses(&v6_first),
            ips(&["fd00::7", "10.0.0.7"])
        );
        let external_only = node(&[("ExternalIP", "203.0.113.7"), ("Hostname", "a")]);
        assert_eq!(
            node_primary_addresses(&external_only),
            ips(&["203.0.113.7"])
        );
    }

    #[test]
    fn primary_addresses_leave_loopback_and_unparsable_ones_out() {
        let n = node(&[
            ("InternalIP", "not-an-ip"),
            ("InternalIP", "127.0.0.1"),
            ("InternalIP", "::1"),
            ("InternalIP", "10.0.0.7"),
        ]);
        // 127.0.0.1 is the primary IPv4 address and ::1 the IPv6 one: neither takes
        // NodePorts, and 10.0.0.7 does not stand in (kube-proxy picks first, then filters).
        assert_eq!(node_primary_addresses(&n), Vec::<IpAddr>::new());
        assert_eq!(node_primary_addresses(&node(&[])), Vec::<IpAddr>::new());
        assert_eq!(
            node_primary_addresses(&core::Node::default()),
            Vec::<IpAddr>::new()
        );
    }
}
