//! Which addresses take NodePorts, as kube-proxy's `--nodeport-addresses` decides them: the
//! addresses given (`--node-address`), this node's primary addresses from its Node object
//! (`primary`, the default without either flag), or this host's addresses within some ranges,
//! read again as they change. Loopback addresses never take NodePorts (kube-proxy's nftables
//! mode). What the Node object says is read by the watch.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ipnet::IpNet;

use crate::watch::NodeAddresses;

/// How often this host's addresses are read again for `--nodeport-addresses` ranges.
const ADDRESS_POLL: Duration = Duration::from_secs(2);

/// One value of `--nodeport-addresses`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodePortAddress {
    /// `primary`: this node's primary addresses, from its Node object.
    Primary,
    /// This host's addresses within a range.
    Cidr(IpNet),
}

/// Why the NodePort addresses cannot be decided.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    /// `primary` with CIDRs (kube-proxy refuses it too: "can't use both 'primary' and CIDRs").
    #[error("--nodeport-addresses: primary stands alone, without CIDRs (as kube-proxy's)")]
    PrimaryWithCidrs,
    /// This host's addresses cannot be listed.
    #[error("cannot list this host's addresses for --nodeport-addresses: {0}")]
    Host(#[source] std::io::Error),
}

/// Where NodePorts are served besides `--node-address`, from `--nodeport-addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodePortSource {
    /// Nowhere else: `--node-address` without `--nodeport-addresses`.
    Given,
    /// This node's primary addresses from its Node object: `primary`, and the default
    /// without either flag (kube-proxy's nftables mode defaults to it).
    Primary,
    /// This host's addresses within these ranges.
    Within(Vec<IpNet>),
}

impl NodePortSource {
    /// What `--node-address` (`given`) and `--nodeport-addresses` (`flag`) ask for.
    /// `primary` must stand alone, as kube-proxy requires.
    pub fn new(given: &[IpAddr], flag: &[NodePortAddress]) -> Result<NodePortSource, AddressError> {
        let cidrs: Vec<IpNet> = flag
            .iter()
            .filter_map(|a| match a {
                NodePortAddress::Cidr(c) => Some(*c),
                NodePortAddress::Primary => None,
            })
            .collect();
        Ok(match flag {
            [] if given.is_empty() => NodePortSource::Primary,
            [] => NodePortSource::Given,
            [NodePortAddress::Primary] => NodePortSource::Primary,
            _ if cidrs.len() == flag.len() => NodePortSource::Within(cidrs),
            _ => return Err(AddressError::PrimaryWithCidrs),
        })
    }

    /// The addresses that take NodePorts at start: `given` (from [`given_addresses`]), and
    /// with [`NodePortSource::Within`] this host's addresses within a range (logged). The
    /// Node's primary addresses come later, from the watch.
    pub fn addresses(&self, given: &[IpAddr]) -> Result<Vec<IpAddr>, AddressError> {
        match self {
            NodePortSource::Given => Ok(given.to_vec()),
            NodePortSource::Primary => {
                tracing::info!(also = ?given, "NodePorts on this node's primary addresses, from its Node object (--nodeport-addresses primary)");
                Ok(given.to_vec())
            }
            NodePortSource::Within(cidrs) => {
                let host = local_addresses().map_err(AddressError::Host)?;
                for cidr in loopback_only(cidrs, &host) {
                    tracing::warn!(%cidr, "--nodeport-addresses: this range holds only loopback addresses of this host, which never take NodePorts (as in kube-proxy's nftables mode)");
                }
                let out = within(given, cidrs, &host);
                if out.len() == given.len() {
                    tracing::warn!(?cidrs, "no address of this host other than loopback is in --nodeport-addresses: NodePorts are not served there");
                }
                tracing::info!(addresses = ?out, "NodePort addresses from --nodeport-addresses");
                Ok(out)
            }
        }
    }

    /// With [`NodePortSource::Within`]: reads this host's addresses again every
    /// `ADDRESS_POLL` (2 s) and hands a changed set to the watch (an address added by DHCP or a
    /// new interface takes NodePorts, a removed one stops), as kube-proxy reads them again on
    /// every sync. A `getifaddrs` every few seconds costs microseconds; the task runs on the
    /// current runtime and ends with the watch. `first` is what [`NodePortSource::addresses`]
    /// gave for `given`.
    pub fn follow(&self, given: Vec<IpAddr>, first: Vec<IpAddr>, to: NodeAddresses) {
        let NodePortSource::Within(cidrs) = self else {
            return;
        };
        let cidrs = cidrs.clone();
        tokio::spawn(async move {
            let mut current = first;
            let mut poll = tokio::time::interval(ADDRESS_POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                poll.tick().await;
                let Ok(host) = local_addresses() else {
                    continue;
                };
                let now = within(&given, &cidrs, &host);
                if now != current {
                    tracing::info!(addresses = ?now, "this host's NodePort addresses changed");
                    if !to.set(now.clone()) {
                        return;
                    }
                    current = now;
                }
            }
        });
    }
}

/// `--node-address` without its loopback addresses (logged), which never take NodePorts.
pub fn given_addresses(given: &[IpAddr]) -> Vec<IpAddr> {
    let (loopback, given): (Vec<IpAddr>, Vec<IpAddr>) =
        given.iter().partition(|ip| ip.is_loopback());
    if !loopback.is_empty() {
        tracing::warn!(addresses = ?loopback, "--node-address: loopback addresses never take NodePorts (as in kube-proxy's nftables mode); left out");
    }
    given
}

/// `given`, then the addresses of `host` within one of `cidrs`, loopback left out.
fn within(given: &[IpAddr], cidrs: &[IpNet], host: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = given.to_vec();
    for ip in host {
        if !ip.is_loopback() && cidrs.iter().any(|c| c.contains(ip)) && !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

/// The ranges of `cidrs` that hold addresses of `host`, all of them loopback.
fn loopback_only(cidrs: &[IpNet], host: &[IpAddr]) -> Vec<IpNet> {
    cidrs
        .iter()
        .filter(|c| {
            let mut held = host.iter().filter(|ip| c.contains(*ip)).peekable();
            held.peek().is_some() && held.all(IpAddr::is_loopback)
        })
        .copied()
        .collect()
}

/// This host's interface addresses (in the network namespace of the calling thread).
pub fn local_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(Ipv4Addr::from(v4.ip())));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            out.push(IpAddr::V6(v6.ip()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn cidrs(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn nodeport_addresses_default_to_primary_without_node_address() {
        use NodePortAddress::{Cidr, Primary};
        let source = NodePortSource::new;
        let given = ips(&["192.0.2.1"]);
        let ten = Cidr("10.0.0.0/8".parse().unwrap());
        assert_eq!(source(&[], &[]).unwrap(), NodePortSource::Primary);
        assert_eq!(source(&given, &[]).unwrap(), NodePortSource::Given);
        assert_eq!(source(&given, &[Primary]).unwrap(), NodePortSource::Primary);
        assert_eq!(
            source(&[], &[ten]).unwrap(),
            NodePortSource::Within(cidrs(&["10.0.0.0/8"]))
        );
        // As kube-proxy: primary stands alone.
        assert!(source(&[], &[Primary, ten]).is_err());
        assert!(source(&[], &[ten, Primary]).is_err());
        assert!(source(&[], &[Primary, Primary]).is_err());
    }

    #[test]
    fn host_addresses_within_the_ranges_take_node_ports_but_loopback_never() {
        let host = ips(&["127.0.0.1", "10.1.2.3", "192.168.9.9", "::1", "fd00::5"]);
        assert_eq!(
            within(&ips(&["192.0.2.1"]), &cidrs(&["0.0.0.0/0", "::/0"]), &host),
            ips(&["192.0.2.1", "10.1.2.3", "192.168.9.9", "fd00::5"])
        );
        assert_eq!(
            within(&[], &cidrs(&["127.0.0.0/8", "10.0.0.0/8"]), &host),
            ips(&["10.1.2.3"])
        );
        // A given address inside a range is not repeated.
        assert_eq!(
            within(&ips(&["10.1.2.3"]), &cidrs(&["10.0.0.0/8"]), &host),
            ips(&["10.1.2.3"])
        );
        // Given loopback addresses never take NodePorts either.
        assert_eq!(
            given_addresses(&ips(&["127.0.0.1", "192.0.2.1", "::1"])),
            ips(&["192.0.2.1"])
        );
    }

    #[test]
    fn ranges_that_hold_only_loopback_addresses_are_found() {
        let host = ips(&["127.0.0.1", "127.0.0.53", "10.1.2.3", "::1"]);
        assert_eq!(
            loopback_only(
                &cidrs(&[
                    "127.0.0.0/8",
                    "::1/128",
                    "0.0.0.0/0",
                    "10.0.0.0/8",
                    "172.16.0.0/12"
                ]),
                &host
            ),
            // 0.0.0.0/0 holds 10.1.2.3 too; 172.16.0.0/12 holds nothing (warned apart).
            cidrs(&["127.0.0.0/8", "::1/128"])
        );
    }

    #[test]
    fn local_addresses_include_loopback() {
        let addrs = local_addresses().unwrap();
        assert!(
            addrs.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );
    }
}
