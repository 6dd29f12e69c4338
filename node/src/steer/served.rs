//! What node mode steers, from what it serves: each service's portal listeners
//! ([`Tables::portals`]), each frontend's verdict ([`entries`]), and ringlb's tables kept in
//! line with them for one run ([`Tables`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use config::k8s::Resolved;
use config::{Config, Table};
use ipnet::IpNet;

use super::ruleset::{SteerEntry, Verdict};
use super::{SteerError, Steering, SyncReport};

/// ringlb's nftables tables for one run of node mode: written whole at the first
/// [`Tables::sync`] (replacing what an earlier run left, in one transaction), kept in line
/// with each change, and left as they are at exit: they steer to the portals the master
/// keeps, for the next worker (a restart, an upgrade, a new pod) to serve. Only
/// [`super::cleanup`] (`ringlb cleanup`) deletes them.
#[derive(Debug)]
pub struct Tables {
    steering: Steering,
}

impl Tables {
    /// Tables written through `nft` from `PATH`, short-circuiting traffic from `pod_cidrs`
    /// (`--cluster-cidr`) and, with `client_ip_mark` (`--preserve-client-ip`), routing
    /// replies to sockets that connected from a client's address back to ringlb.
    pub fn new(pod_cidrs: Vec<IpNet>, client_ip_mark: Option<u32>) -> Tables {
        let mut steering = Steering::new("nft").with_pod_cidrs(pod_cidrs);
        if let Some(mark) = client_ip_mark {
            steering = steering.with_client_ip_mark(mark);
        }
        Tables { steering }
    }

    /// What the data plane serves for `config`: each service listens on a portal per address
    /// family of its frontends, a wildcard socket (`0.0.0.0`, `[::]`) on a port the kernel
    /// picks (kept across reloads), and the tables redirect its frontends there.
    pub fn portals(&self, config: &Config) -> Config {
        let mut config = config.clone();
        let ipv6 = self.steering.ipv6();
        let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0);
        let v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0);
        for svc in &mut config.services {
            let mut portals = Vec::new();
            if svc.listen.iter().any(SocketAddr::is_ipv4) {
                portals.push(v4);
            }
            if ipv6 && svc.listen.iter().any(SocketAddr::is_ipv6) {
                portals.push(v6);
            }
            if portals.is_empty() {
                // IPv6 frontends on a host without IPv6: nothing reaches this one.
                portals.push(v4);
            }
            svc.listen = portals;
        }
        config
    }

    /// Before the data plane swaps to `resolved`: the frontends whose Service lost all its
    /// endpoints are rejected or dropped (and short-circuit portals that go are removed)
    /// while their portals still serve the old endpoints (`table`), so from this transaction
    /// on the kernel refuses new connections and no portal is left to accept a steered
    /// client only to reset it (see [`Steering::withdraw`]). The [`Tables::sync`] after the
    /// swap writes the rest.
    pub async fn withdraw(
        &mut self,
        resolved: &Resolved,
        table: &Table,
    ) -> Result<SyncReport, SteerError> {
        self.steering.withdraw(&entries(resolved, table)).await
    }

    /// Brings the tables in line with `resolved`, the portals of `table` and the cluster's
    /// `service_cidrs` (one that does not parse is left out with a warning). IPv6 frontends
    /// that cannot be steered (no IPv6 on this host) are logged and reported.
    pub async fn sync(
        &mut self,
        resolved: &Resolved,
        service_cidrs: &[String],
        table: &Table,
    ) -> Result<SyncReport, SteerError> {
        let service_cidrs: Vec<IpNet> = service_cidrs
            .iter()
            .filter_map(|c| match c.parse() {
                Ok(cidr) => Some(cidr),
                Err(e) => {
                    tracing::warn!("ServiceCIDR {c}: {e}: left out of service-cidrs");
                    None
                }
            })
            .collect();
        let mut cluster_ips: Vec<IpAddr> = resolved
            .ports
            .iter()
            .flat_map(|p| p.cluster_ips.iter().copied())
            .collect();
        cluster_ips.sort_unstable();
        cluster_ips.dedup();
        let report = self
            .steering
            .sync(&entries(resolved, table), &cluster_ips, &service_cidrs)
            .await?;
        for e in &report.unsteered {
            tracing::warn!(frontend = %e.frontend, "not steered: this host has no IPv6");
        }
        Ok(report)
    }
}

/// Every frontend of `resolved` with its verdict: redirect to the service's portal of the
/// frontend's address family (its listen ports in `table`), reject when no endpoint exists
/// anywhere, drop when policy `Local` leaves none on this node (kube-proxy's rules); with the
/// short-circuit portal and the admitted sources where the Service has them.
fn entries(resolved: &Resolved, table: &Table) -> Vec<SteerEntry> {
    // Service name → (IPv4 portal, IPv6 portal).
    let mut portals: HashMap<&str, (Option<u16>, Option<u16>)> = HashMap::new();
    for s in table.services().iter() {
        let entry = portals.entry(s.service.name.as_str()).or_default();
        for addr in &s.service.listen {
            match addr {
                SocketAddr::V4(a) => entry.0 = Some(a.port()),
                SocketAddr::V6(a) => entry.1 = Some(a.port()),
            }
        }
    }
    let portal = |name: &str, frontend: &SocketAddr| {
        let served = portals.get(name).copied().unwrap_or_default();
        if frontend.is_ipv4() {
            served.0
        } else {
            served.1
        }
    };
    let with_backends: HashSet<&str> = resolved
        .config
        .services
        .iter()
        .filter(|s| !s.backends.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    let mut out = Vec::new();
    for (svc, port) in resolved.config.services.iter().zip(&resolved.ports) {
        for &frontend in &svc.listen {
            let verdict = if svc.backends.is_empty() {
                if port.any_endpoints {
                    Verdict::Drop
                } else {
                    Verdict::Reject
                }
            } else {
                match portal(&svc.name, &frontend) {
                    Some(p) => Verdict::Redirect(p),
                    None => continue,
                }
            };
            let local_portal = port
                .short_circuit
                .as_deref()
                .filter(|name| with_backends.contains(name))
                .and_then(|name| portal(name, &frontend));
            let sources = port
                .firewall
                .as_ref()
                .filter(|fw| fw.frontends.contains(&frontend))
                .map(|fw| fw.sources.clone());
            out.push(SteerEntry {
                protocol: svc.protocol,
                frontend,
                verdict,
                local_portal,
                sources,
            });
        }
    }
    out
}
