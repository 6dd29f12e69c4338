//! `ringlb run --kubernetes`: the Kubernetes watch as the config source of `serve`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use config::k8s::{NodeOptions, NotProxiedReason, Resolved};
use config::{Config, Table};
use node::health::{HealthChecks, NodeHealth, NodeServer};
use node::steer::{SteerEntry, Steering, Verdict};
use node::{KubeOptions, KubeSnapshot, KubeWatch, NodeAddresses};
use proxy_core::Proxy;

use crate::cli::{NodePortAddress, RunArgs};
use crate::serve::{announce_line, Control};
use control::Plane;

/// How often ringlb says it is still waiting for the API at start.
const SYNC_WAIT_LOG: Duration = Duration::from_secs(10);
/// How often this host's addresses are read again for `--nodeport-addresses`.
const ADDRESS_POLL: Duration = Duration::from_secs(2);

/// The running watch and where it reports changes.
pub struct Kube {
    watch: KubeWatch,
    control: Arc<Mutex<Option<mpsc::Sender<Control>>>>,
    /// The version of the snapshot the data plane serves.
    applied: Cell<u64>,
    /// With `--nftables`: the table that steers frontends to the portals.
    steering: Option<RefCell<OwnedTable>>,
    /// The `healthCheckNodePort` servers.
    health: RefCell<HealthChecks>,
    /// The node health server (`--healthz-bind-address`).
    node_server: Option<RefCell<NodeServer>>,
    /// Whether the last change is in effect (`/healthz`, `serviceProxyHealthy`).
    node_health: Arc<NodeHealth>,
}

/// The nftables tables, deleted when ringlb exits.
struct OwnedTable(Steering);

impl Drop for OwnedTable {
    fn drop(&mut self) {
        match self.0.remove() {
            Ok(()) => tracing::info!("nftables tables {} deleted", node::steer::TABLE),
            Err(e) => tracing::error!("cannot delete the nftables tables: {e}"),
        }
    }
}

impl Kube {
    /// Connects to the API with the flags of `args`, waits until Services, EndpointSlices and
    /// the Node have been listed once (as kube-proxy waits for its caches), and returns the
    /// watch with the first model. Its health ports run on the control runtime of `plane`.
    pub fn start(args: &RunArgs, plane: &Plane) -> anyhow::Result<(Kube, Config)> {
        let node_name = match args
            .node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok())
        {
            Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ => bail!(
                "--kubernetes needs this node's name: give --node-name or set NODE_NAME \
                 (a DaemonSet sets it from spec.nodeName through the downward API)"
            ),
        };
        let source = node_port_source(&args.node_addresses, &args.nodeport_addresses)?;
        let given = given_node_addresses(args);
        let addresses = node_addresses(&given, &source)?;
        let options = KubeOptions {
            kubeconfig: args.kubeconfig.clone(),
            node: NodeOptions {
                node_name: node_name.clone(),
                zone: None,
                node_addresses: addresses.clone(),
                service_proxy_name: args.service_proxy_name.clone(),
                source_ranges_enforced: args.nftables,
                preserve_client_ip: args.preserve_client_ip,
            },
            primary_node_addresses: source == NodePortSource::Primary,
        };
        let control: Arc<Mutex<Option<mpsc::Sender<Control>>>> = Arc::default();
        let notify = Arc::clone(&control);
        let watch = KubeWatch::start(options, move || {
            if let Some(tx) = notify.lock().expect("control lock").as_ref() {
                let _ = tx.send(Control::Kube);
            }
        })
        .context("cannot watch the Kubernetes API")?;
        tracing::info!(node = %node_name, service_proxy_name = ?args.service_proxy_name, "watching Services and EndpointSlices");
        follow_host_addresses(&source, given, addresses, watch.node_addresses());
        let snapshot = loop {
            if let Some(s) = watch.wait_synced(SYNC_WAIT_LOG) {
                break s;
            }
            tracing::warn!("still waiting for the first list of Services, EndpointSlices and this Node from the API");
        };
        // SCTP ports the watch has already warned of.
        for np in &snapshot.resolved.not_proxied {
            if np.reason != NotProxiedReason::Sctp {
                tracing::info!(service = %np.name, "not proxied: {}", np.reason);
            }
        }
        tracing::info!(
            services = snapshot.resolved.config.services.len(),
            "Kubernetes API listed"
        );
        let node_health = Arc::new(NodeHealth::new(watch.node_eligibility()));
        // Not fatal: a node health port in use must not keep Services down (see `ensure`).
        let node_server = args.healthz_bind_address.map(|addr| {
            let mut server = NodeServer::new(addr, Arc::clone(&node_health), plane.clone());
            announce_healthz(server.ensure());
            RefCell::new(server)
        });
        if args.nftables && args.cluster_cidr.is_empty() {
            tracing::warn!("--nftables without --cluster-cidr: ringlb cannot tell this node's pods from outside clients, so a pod reaching the load balancer IP, external IP or node port of an externalTrafficPolicy: Local Service on a node without a local endpoint is dropped, where the Kubernetes service-proxy spec wants it served (kube-proxy short-circuits it to any endpoint); give the pods' ranges with --cluster-cidr");
        }
        let steering = args.nftables.then(|| {
            let mut steering = Steering::new("nft").with_pod_cidrs(args.cluster_cidr.clone());
            if args.preserve_client_ip {
                steering = steering.with_client_ip_mark(args.client_ip_mark);
            }
            RefCell::new(OwnedTable(steering))
        });
        let kube = Kube {
            watch,
            control,
            applied: Cell::new(snapshot.version),
            steering,
            health: RefCell::new(HealthChecks::new(
                node_name.clone(),
                Arc::clone(&node_health),
                plane.clone(),
            )),
            node_server,
            node_health,
        };
        let config = kube.served(&snapshot.resolved.config);
        Ok((kube, config))
    }

    /// Sends a [`Control::Kube`] to `tx` after every change from now on.
    pub fn attach(&self, tx: mpsc::Sender<Control>) {
        *self.control.lock().expect("control lock") = Some(tx);
    }

    /// Serves the latest model if it is newer than the served one: one table swap in which
    /// only changed services are rebuilt. A failure (a frontend that cannot be bound) is
    /// logged and the current table keeps serving; the next change tries again.
    pub fn apply(&self, proxy: &mut Proxy, serving: &mut Config, backend_drain: Option<Duration>) {
        let Some(snapshot) = self.watch.latest() else {
            return;
        };
        if snapshot.version <= self.applied.get() {
            return;
        }
        let config = &self.served(&snapshot.resolved.config);
        if config == serving {
            self.applied.set(snapshot.version);
            // Frontends, verdicts or service CIDRs may have changed even so.
            self.log_steer(proxy, &snapshot);
            return;
        }
        // What stops going to a portal is withdrawn before the portal stops serving it.
        self.withdraw_steering(proxy, &snapshot);
        match proxy.reload(config.clone(), backend_drain) {
            Ok(report) => {
                self.applied.set(snapshot.version);
                *serving = config.clone();
                announce_line(&format!(
                    "kubernetes version={} services={}",
                    report.version,
                    config.services.len()
                ));
                tracing::info!(
                    version = report.version,
                    changed = ?snapshot.changed,
                    added = ?report.added,
                    removed = ?report.removed,
                    "Kubernetes changes applied"
                );
                self.log_steer(proxy, &snapshot);
            }
            Err(e) => {
                self.node_health.failed();
                tracing::error!(
                    changed = ?snapshot.changed,
                    "Kubernetes changes not applied, the current table keeps serving: {e}"
                )
            }
        }
    }

    /// What the data plane serves for `config`: with `--nftables` each service listens on
    /// a portal per address family of its frontends, a wildcard socket (`0.0.0.0`, `[::]`)
    /// on a port the kernel picks (kept across reloads), and the nftables tables redirect its
    /// frontends there; else the frontends themselves.
    fn served(&self, config: &Config) -> Config {
        let mut config = config.clone();
        if let Some(steering) = &self.steering {
            let ipv6 = steering.borrow().0.ipv6();
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
        }
        config
    }

    /// Starts the `healthCheckNodePort` servers and writes the first nftables tables
    /// (replacing stale ones) for the served model. An nftables error here means ringlb
    /// cannot do its job: the caller stops.
    pub fn start_steering(&self, proxy: &Proxy) -> anyhow::Result<()> {
        let Some(snapshot) = self.watch.latest() else {
            return Ok(());
        };
        self.sync_health(&snapshot.resolved);
        self.steer(proxy, &snapshot)
            .context("cannot program the nftables tables (needs CAP_NET_ADMIN and nft)")
    }

    /// The health ports for `resolved`: its `healthCheckNodePort`s, and the node health server
    /// if it could not be bound so far.
    fn sync_health(&self, resolved: &Resolved) {
        self.health.borrow_mut().sync(resolved);
        if let Some(server) = &self.node_server {
            announce_healthz(server.borrow_mut().ensure());
        }
    }

    fn log_steer(&self, proxy: &Proxy, snapshot: &KubeSnapshot) {
        self.sync_health(&snapshot.resolved);
        match self.steer(proxy, snapshot) {
            Ok(()) => self.node_health.updated(),
            Err(e) => {
                self.node_health.failed();
                tracing::error!(
                    "nftables tables not updated, the previous ones keep steering: {e:#}"
                );
            }
        }
    }

    /// Before the data plane swaps to `snapshot`: the frontends whose Service lost all its
    /// endpoints are rejected or dropped by the tables (and short-circuit portals that go
    /// are removed) while their portals still serve the old endpoints, so from that
    /// transaction on the kernel refuses new connections and no portal is left to accept a
    /// steered client only to reset it (see [`Steering::withdraw`]). The [`Kube::steer`]
    /// after the swap writes the rest. A failure is logged; that sync writes the tables whole.
    fn withdraw_steering(&self, proxy: &Proxy, snapshot: &KubeSnapshot) {
        let Some(steering) = &self.steering else {
            return;
        };
        let entries = steer_entries(&snapshot.resolved, &proxy.table());
        match steering.borrow_mut().0.withdraw(&entries) {
            Ok(report) if report.lines > 0 => {
                announce_transaction(&report);
                tracing::info!(lines = report.lines, took = ?report.took, udp_conntrack_flushes = report.conntrack_flushes, "nftables: withdrawn before the table swap");
            }
            Ok(_) => {}
            Err(e) => tracing::error!("nftables: cannot withdraw before the table swap: {e}"),
        }
    }

    /// Brings the nftables tables in line with `snapshot` and the portals `proxy` serves.
    fn steer(&self, proxy: &Proxy, snapshot: &KubeSnapshot) -> anyhow::Result<()> {
        let Some(steering) = &self.steering else {
            return Ok(());
        };
        let resolved = &snapshot.resolved;
        let service_cidrs: Vec<ipnet::IpNet> = snapshot
            .service_cidrs
            .iter()
            .filter_map(|c| match c.parse() {
                Ok(cidr) => Some(cidr),
                Err(e) => {
                    tracing::warn!("ServiceCIDR {c}: {e}: left out of service-cidrs");
                    None
                }
            })
            .collect();
        let entries = steer_entries(resolved, &proxy.table());
        let mut cluster_ips: Vec<std::net::IpAddr> = resolved
            .ports
            .iter()
            .flat_map(|p| p.cluster_ips.iter().copied())
            .collect();
        cluster_ips.sort_unstable();
        cluster_ips.dedup();
        let report = steering
            .borrow_mut()
            .0
            .sync(&entries, &cluster_ips, &service_cidrs)?;
        for e in &report.unsteered {
            tracing::warn!(frontend = %e.frontend, "not steered: this host has no IPv6");
        }
        if report.lines > 0 {
            announce_transaction(&report);
            tracing::info!(full = report.full, lines = report.lines, steered = report.steered, took = ?report.took, udp_conntrack_flushes = report.conntrack_flushes, "nftables tables updated");
        }
        Ok(())
    }
}

/// The stdout line of a node health server just bound.
fn announce_healthz(bound: Option<SocketAddr>) {
    if let Some(addr) = bound {
        announce_line(&format!("healthz addr={addr}"));
    }
}

/// The stdout line of one nftables transaction.
fn announce_transaction(report: &node::steer::SyncReport) {
    announce_line(&format!(
        "nftables full={} lines={} steered={} took_us={}",
        report.full,
        report.lines,
        report.steered,
        report.took.as_micros()
    ));
}

/// Where NodePorts are served besides `--node-address`, from `--nodeport-addresses`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum NodePortSource {
    /// Nowhere else: `--node-address` without `--nodeport-addresses`.
    Given,
    /// This node's primary addresses from its Node object: `primary`, and the default
    /// without either flag (kube-proxy's nftables mode defaults to it).
    Primary,
    /// This host's addresses within these ranges.
    Within(Vec<ipnet::IpNet>),
}

/// What `--node-address` (`given`) and `--nodeport-addresses` (`flag`) ask for. `primary`
/// must stand alone, as kube-proxy requires ("can't use both 'primary' and CIDRs").
fn node_port_source(given: &[IpAddr], flag: &[NodePortAddress]) -> anyhow::Result<NodePortSource> {
    let cidrs: Vec<ipnet::IpNet> = flag
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
        _ => bail!("--nodeport-addresses: primary stands alone, without CIDRs (as kube-proxy's)"),
    })
}

/// `--node-address` without its loopback addresses (logged), which never take NodePorts.
fn given_node_addresses(args: &RunArgs) -> Vec<IpAddr> {
    let (loopback, given): (Vec<IpAddr>, Vec<IpAddr>) =
        args.node_addresses.iter().partition(|ip| ip.is_loopback());
    if !loopback.is_empty() {
        tracing::warn!(addresses = ?loopback, "--node-address: loopback addresses never take NodePorts (as in kube-proxy's nftables mode); left out");
    }
    given
}

/// The addresses that take NodePorts at start: `given`, and with [`NodePortSource::Within`]
/// this host's addresses within a range (logged; the Node's primary addresses come later,
/// from the watch).
fn node_addresses(given: &[IpAddr], source: &NodePortSource) -> anyhow::Result<Vec<IpAddr>> {
    match source {
        NodePortSource::Given => Ok(given.to_vec()),
        NodePortSource::Primary => {
            tracing::info!(also = ?given, "NodePorts on this node's primary addresses, from its Node object (--nodeport-addresses primary)");
            Ok(given.to_vec())
        }
        NodePortSource::Within(cidrs) => {
            let host = node::steer::local_addresses()
                .context("cannot list this host's addresses for --nodeport-addresses")?;
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

/// `given`, then the addresses of `host` within one of `cidrs`, loopback left out.
fn within(given: &[IpAddr], cidrs: &[ipnet::IpNet], host: &[IpAddr]) -> Vec<IpAddr> {
    let mut out = given.to_vec();
    for ip in host {
        if !ip.is_loopback() && cidrs.iter().any(|c| c.contains(ip)) && !out.contains(ip) {
            out.push(*ip);
        }
    }
    out
}

/// The ranges of `cidrs` that hold addresses of `host`, all of them loopback.
fn loopback_only(cidrs: &[ipnet::IpNet], host: &[IpAddr]) -> Vec<ipnet::IpNet> {
    cidrs
        .iter()
        .filter(|c| {
            let mut held = host.iter().filter(|ip| c.contains(*ip)).peekable();
            held.peek().is_some() && held.all(IpAddr::is_loopback)
        })
        .copied()
        .collect()
}

/// With [`NodePortSource::Within`]: reads this host's addresses again every
/// [`ADDRESS_POLL`] and hands a changed set to the watch (an address added by DHCP or a new
/// interface takes NodePorts, a removed one stops), as kube-proxy reads them again on every
/// sync. A `getifaddrs` every few seconds costs microseconds; the thread ends with the
/// watch.
fn follow_host_addresses(
    source: &NodePortSource,
    given: Vec<IpAddr>,
    first: Vec<IpAddr>,
    to: NodeAddresses,
) {
    let NodePortSource::Within(cidrs) = source else {
        return;
    };
    let cidrs = cidrs.clone();
    let spawned = std::thread::Builder::new()
        .name("ringlb-addresses".into())
        .spawn(move || {
            let mut current = first;
            loop {
                std::thread::sleep(ADDRESS_POLL);
                let Ok(host) = node::steer::local_addresses() else {
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
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot follow this host's addresses; NodePort addresses stay as read at start");
    }
}

/// Every frontend of `resolved` with its verdict: redirect to the service's portal of the
/// frontend's address family (its listen ports in `table`), reject when no endpoint exists
/// anywhere, drop when policy `Local` leaves none on this node (kube-proxy's rules); with the
/// short-circuit portal and the admitted sources where the Service has them.
fn steer_entries(resolved: &Resolved, table: &Table) -> Vec<SteerEntry> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn cidrs(list: &[&str]) -> Vec<ipnet::IpNet> {
        list.iter().map(|c| c.parse().unwrap()).collect()
    }

    #[test]
    fn nodeport_addresses_default_to_primary_without_node_address() {
        use NodePortAddress::{Cidr, Primary};
        let given = ips(&["192.0.2.1"]);
        let ten = Cidr("10.0.0.0/8".parse().unwrap());
        assert_eq!(node_port_source(&[], &[]).unwrap(), NodePortSource::Primary);
        assert_eq!(
            node_port_source(&given, &[]).unwrap(),
            NodePortSource::Given
        );
        assert_eq!(
            node_port_source(&given, &[Primary]).unwrap(),
            NodePortSource::Primary
        );
        assert_eq!(
            node_port_source(&[], &[ten]).unwrap(),
            NodePortSource::Within(cidrs(&["10.0.0.0/8"]))
        );
        // As kube-proxy: primary stands alone.
        assert!(node_port_source(&[], &[Primary, ten]).is_err());
        assert!(node_port_source(&[], &[ten, Primary]).is_err());
        assert!(node_port_source(&[], &[Primary, Primary]).is_err());
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
}
