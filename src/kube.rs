//! `ringlb run --kubernetes`: the Kubernetes watch as the config source of `serve`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use config::k8s::{NodeOptions, NotProxiedReason, Resolved};
use config::kube::{KubeOptions, KubeSnapshot, KubeWatch, NodeAddresses};
use config::{Config, Table};
use proxy_core::steer::{SteerEntry, Steering, Verdict};
use proxy_core::Proxy;

use crate::cli::RunArgs;
use crate::healthcheck::{HealthChecks, NodeHealth};
use crate::serve::{announce_line, Control};

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
    /// Whether the last change is in effect (`/healthz`, `serviceProxyHealthy`).
    node_health: Arc<NodeHealth>,
}

/// The nftables tables, deleted when ringlb exits.
struct OwnedTable(Steering);

impl Drop for OwnedTable {
    fn drop(&mut self) {
        match self.0.remove() {
            Ok(()) => tracing::info!("nftables tables {} deleted", proxy_core::steer::TABLE),
            Err(e) => tracing::error!("cannot delete the nftables tables: {e}"),
        }
    }
}

impl Kube {
    /// Connects to the API with the flags of `args`, waits until Services, EndpointSlices and
    /// the Node have been listed once (as kube-proxy waits for its caches), and returns the
    /// watch with the first model.
    pub fn start(args: &RunArgs) -> anyhow::Result<(Kube, Config)> {
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
        let addresses = node_addresses(args)?;
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
        follow_host_addresses(args, addresses, watch.node_addresses());
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
        if let Some(addr) = args.healthz_bind_address {
            // Not fatal: a node health port in use must not keep Services down.
            match crate::healthcheck::serve_node(addr, Arc::clone(&node_health)) {
                Ok(local) => announce_line(&format!("healthz addr={local}")),
                Err(e) => tracing::error!(%addr, error = %e, "cannot serve the node /healthz"),
            }
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
            )),
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
        self.health.borrow_mut().sync(&snapshot.resolved);
        self.steer(proxy, &snapshot)
            .context("cannot program the nftables tables (needs CAP_NET_ADMIN and nft)")
    }

    fn log_steer(&self, proxy: &Proxy, snapshot: &KubeSnapshot) {
        self.health.borrow_mut().sync(&snapshot.resolved);
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
            announce_line(&format!(
                "nftables full={} lines={} steered={} took_us={}",
                report.full,
                report.lines,
                report.steered,
                report.took.as_micros()
            ));
            tracing::info!(full = report.full, lines = report.lines, steered = report.steered, took = ?report.took, udp_conntrack_flushes = report.conntrack_flushes, "nftables tables updated");
        }
        Ok(())
    }
}

/// The addresses that take NodePorts: `--node-address`, and this host's addresses within a
/// `--nodeport-addresses` CIDR.
fn node_addresses(args: &RunArgs) -> anyhow::Result<Vec<std::net::IpAddr>> {
    let out = host_node_addresses(&args.node_addresses, &args.nodeport_addresses)
        .context("cannot list this host's addresses for --nodeport-addresses")?;
    if !args.nodeport_addresses.is_empty() {
        if out.len() == args.node_addresses.len() {
            tracing::warn!(cidrs = ?args.nodeport_addresses, "no address of this host is in --nodeport-addresses: NodePorts are not served");
        }
        tracing::info!(addresses = ?out, "NodePort addresses from --nodeport-addresses");
    }
    Ok(out)
}

/// `fixed`, then this host's addresses within one of `cidrs`.
fn host_node_addresses(
    fixed: &[std::net::IpAddr],
    cidrs: &[ipnet::IpNet],
) -> std::io::Result<Vec<std::net::IpAddr>> {
    let mut out = fixed.to_vec();
    if cidrs.is_empty() {
        return Ok(out);
    }
    for ip in proxy_core::steer::local_addresses()? {
        if cidrs.iter().any(|c| c.contains(&ip)) && !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

/// With `--nodeport-addresses`: reads this host's addresses again every [`ADDRESS_POLL`] and
/// hands a changed set to the watch (an address added by DHCP or a new interface takes
/// NodePorts, a removed one stops), as kube-proxy reads them again on every sync. A
/// `getifaddrs` every few seconds costs microseconds; the thread ends with the watch.
fn follow_host_addresses(args: &RunArgs, first: Vec<std::net::IpAddr>, to: NodeAddresses) {
    if args.nodeport_addresses.is_empty() {
        return;
    }
    let fixed = args.node_addresses.clone();
    let cidrs = args.nodeport_addresses.clone();
    let spawned = std::thread::Builder::new()
        .name("ringlb-addresses".into())
        .spawn(move || {
            let mut current = first;
            loop {
                std::thread::sleep(ADDRESS_POLL);
                let Ok(now) = host_node_addresses(&fixed, &cidrs) else {
                    continue;
                };
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
