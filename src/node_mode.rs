//! `ringlb run --kubernetes`: node mode wired to the data plane. The node crate decides (the
//! API watch, the NodePort addresses, steering, the health servers); this file reads the
//! flags, hands each published model to the data plane in one table swap, keeps the tables and
//! health ports in line with it, and prints the lines scripts and tests wait for.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use config::k8s::{NodeOptions, NotProxiedReason, Resolved};
use config::Config;
use control::Plane;
use node::health::{HealthChecks, NodeHealth, NodeServer};
use node::steer::{SyncReport, Tables};
use node::{KubeOptions, KubeSnapshot, KubeWatch, NodePortSource};
use proxy_core::Proxy;

use crate::announce::announce_line;
use crate::cli::RunArgs;
use crate::reload::swap;

/// How often ringlb says it is still waiting for the API at start.
const SYNC_WAIT_LOG: Duration = Duration::from_secs(10);

/// What the watch calls after every publication, once the serve loop listens.
type Notify = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

/// The running watch and where it reports changes.
pub struct Kube {
    watch: KubeWatch,
    notify: Notify,
    /// The version of the snapshot the data plane serves.
    applied: u64,
    /// With `--nftables`: the tables that steer frontends to the portals.
    tables: Option<Tables>,
    /// The `healthCheckNodePort` servers.
    health: HealthChecks,
    /// The node health server (`--healthz-bind-address`).
    node_server: Option<NodeServer>,
    /// Whether the last change is in effect (`/healthz`, `serviceProxyHealthy`).
    node_health: Arc<NodeHealth>,
}

impl Kube {
    /// Connects to the API with the flags of `args`, waits until Services, EndpointSlices and
    /// the Node have been listed once (as kube-proxy waits for its caches), and returns the
    /// watch with the first model. The watch and the health ports run on the control runtime
    /// of `plane`.
    pub async fn start(args: &RunArgs, plane: &Plane) -> anyhow::Result<(Kube, Config)> {
        let node_name = node_name(args)?;
        let source = NodePortSource::new(&args.node_addresses, &args.nodeport_addresses)?;
        let given = node::given_addresses(&args.node_addresses);
        let addresses = source.addresses(&given)?;
        let options = KubeOptions {
            kubeconfig: args.kubeconfig.clone(),
            node: NodeOptions {
                node_name: node_name.clone(),
                zone: None,
                node_addresses: addresses.clone(),
                service_proxy_name: args.service_proxy_name.clone(),
                source_ranges_enforced: args.nftables,
                preserve_client_ip: args.preserve_client_ip,
                transparent_clients: transparent_clients(args),
            },
            primary_node_addresses: source == NodePortSource::Primary,
        };
        let notify: Notify = Arc::default();
        let to = Arc::clone(&notify);
        let watch = KubeWatch::start(&plane.handle, options, move || {
            if let Some(notify) = to.lock().expect("notify lock").as_ref() {
                notify();
            }
        })
        .await
        .context("cannot watch the Kubernetes API")?;
        tracing::info!(node = %node_name, service_proxy_name = ?args.service_proxy_name, "watching Services and EndpointSlices");
        source.follow(given, addresses, watch.node_addresses());
        let snapshot = first_snapshot(&watch).await;
        let node_health = Arc::new(NodeHealth::new(watch.node_eligibility()));
        // Not fatal: a node health port in use must not keep Services down (see `ensure`).
        let node_server = args.healthz_bind_address.map(|addr| {
            let mut server = NodeServer::new(addr, Arc::clone(&node_health), plane.clone());
            announce_healthz(server.ensure());
            server
        });
        let health = HealthChecks::new(node_name, Arc::clone(&node_health), plane.clone());
        let kube = Kube {
            watch,
            notify,
            applied: snapshot.version,
            tables: tables(args),
            health,
            node_server,
            node_health,
        };
        let config = kube.served(&snapshot.resolved.config);
        Ok((kube, config))
    }

    /// Calls `notify` after every change from now on.
    pub fn attach(&self, notify: impl Fn() + Send + 'static) {
        *self.notify.lock().expect("notify lock") = Some(Box::new(notify));
    }

    /// Serves the latest model if it is newer than the served one: one table swap in which
    /// only changed services are rebuilt. A failure (a frontend that cannot be bound) is
    /// logged and the current table keeps serving; the next change tries again.
    pub async fn apply(
        &mut self,
        proxy: &mut Proxy,
        serving: &mut Config,
        backend_drain: Option<Duration>,
    ) {
        let Some(snapshot) = self.watch.latest() else {
            return;
        };
        if snapshot.version <= self.applied {
            return;
        }
        let config = &self.served(&snapshot.resolved.config);
        if config == serving {
            self.applied = snapshot.version;
            // Frontends, verdicts or service CIDRs may have changed even so.
            self.log_steer(proxy, &snapshot).await;
            return;
        }
        // What stops going to a portal is withdrawn before the portal stops serving it.
        self.withdraw_steering(proxy, &snapshot).await;
        match swap(proxy, config.clone(), backend_drain).await {
            Ok(report) => {
                self.applied = snapshot.version;
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
                self.log_steer(proxy, &snapshot).await;
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

    /// What the data plane serves for `config`: with `--nftables` each service's portals
    /// ([`Tables::portals`]), else the frontends themselves.
    fn served(&self, config: &Config) -> Config {
        match &self.tables {
            Some(tables) => tables.portals(config),
            None => config.clone(),
        }
    }

    /// Starts the `healthCheckNodePort` servers and writes the first nftables tables
    /// (replacing stale ones) for the served model. An nftables error here means ringlb
    /// cannot do its job: the caller stops.
    pub async fn start_steering(&mut self, proxy: &Proxy) -> anyhow::Result<()> {
        let Some(snapshot) = self.watch.latest() else {
            return Ok(());
        };
        self.sync_health(&snapshot.resolved);
        self.steer(proxy, &snapshot)
            .await
            .context("cannot program the nftables tables (needs CAP_NET_ADMIN and nft)")
    }

    /// The health ports for `resolved`: its `healthCheckNodePort`s, and the node health server
    /// if it could not be bound so far.
    fn sync_health(&mut self, resolved: &Resolved) {
        self.health.sync(resolved);
        if let Some(server) = &mut self.node_server {
            announce_healthz(server.ensure());
        }
    }

    async fn log_steer(&mut self, proxy: &Proxy, snapshot: &KubeSnapshot) {
        self.sync_health(&snapshot.resolved);
        match self.steer(proxy, snapshot).await {
            Ok(()) => self.node_health.updated(),
            Err(e) => {
                self.node_health.failed();
                tracing::error!(
                    "nftables tables not updated, the previous ones keep steering: {e:#}"
                );
            }
        }
    }

    /// Before the data plane swaps to `snapshot`: what stops going to a portal (see
    /// [`Tables::withdraw`]). The [`Kube::steer`] after the swap writes the rest. A failure is
    /// logged; that sync writes the tables whole.
    async fn withdraw_steering(&mut self, proxy: &Proxy, snapshot: &KubeSnapshot) {
        let Some(tables) = &mut self.tables else {
            return;
        };
        match tables.withdraw(&snapshot.resolved, &proxy.table()).await {
            Ok(report) if report.lines > 0 => {
                announce_transaction(&report);
                tracing::info!(lines = report.lines, took = ?report.took, udp_conntrack_flushes = report.conntrack_flushes, "nftables: withdrawn before the table swap");
            }
            Ok(_) => {}
            Err(e) => tracing::error!("nftables: cannot withdraw before the table swap: {e}"),
        }
    }

    /// Brings the nftables tables in line with `snapshot` and the portals `proxy` serves.
    async fn steer(&mut self, proxy: &Proxy, snapshot: &KubeSnapshot) -> anyhow::Result<()> {
        let Some(tables) = &mut self.tables else {
            return Ok(());
        };
        let report = tables
            .sync(&snapshot.resolved, &snapshot.service_cidrs, &proxy.table())
            .await?;
        if report.lines > 0 {
            announce_transaction(&report);
            tracing::info!(full = report.full, lines = report.lines, steered = report.steered, took = ?report.took, udp_conntrack_flushes = report.conntrack_flushes, "nftables tables updated");
        }
        Ok(())
    }
}

/// This node's name: `--node-name`, else `NODE_NAME`.
fn node_name(args: &RunArgs) -> anyhow::Result<String> {
    match args
        .node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
    {
        Some(n) if !n.trim().is_empty() => Ok(n.trim().to_owned()),
        _ => bail!(
            "--kubernetes needs this node's name: give --node-name or set NODE_NAME \
             (a DaemonSet sets it from spec.nodeName through the downward API)"
        ),
    }
}

/// Waits for the watch's first publication, saying every [`SYNC_WAIT_LOG`] that it still
/// waits, and logs what it holds.
async fn first_snapshot(watch: &KubeWatch) -> Arc<KubeSnapshot> {
    let snapshot = loop {
        if let Some(s) = watch.wait_synced(SYNC_WAIT_LOG).await {
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
    snapshot
}

/// The clients whose connections leave from their own address on every frontend: the pods
/// (`--cluster-cidr`) with `--preserve-client-ip`, unless `--no-transparent`.
fn transparent_clients(args: &RunArgs) -> Vec<ipnet::IpNet> {
    if args.preserve_client_ip && !args.no_transparent {
        args.cluster_cidr.clone()
    } else {
        Vec::new()
    }
}

/// With `--nftables`: the tables, not written yet.
fn tables(args: &RunArgs) -> Option<Tables> {
    if !args.nftables {
        return None;
    }
    if args.cluster_cidr.is_empty() {
        tracing::warn!("--nftables without --cluster-cidr: ringlb cannot tell this node's pods from outside clients, so a pod reaching the load balancer IP, external IP or node port of an externalTrafficPolicy: Local Service on a node without a local endpoint is dropped, where the Kubernetes service-proxy spec wants it served (kube-proxy short-circuits it to any endpoint); give the pods' ranges with --cluster-cidr");
    }
    let mark = args.preserve_client_ip.then_some(args.client_ip_mark);
    Some(Tables::new(args.cluster_cidr.clone(), mark))
}

/// The stdout line of a node health server just bound.
fn announce_healthz(bound: Option<SocketAddr>) {
    if let Some(addr) = bound {
        announce_line(&format!("healthz addr={addr}"));
    }
}

/// The stdout line of one nftables transaction.
fn announce_transaction(report: &SyncReport) {
    announce_line(&format!(
        "nftables full={} lines={} steered={} took_us={}",
        report.full,
        report.lines,
        report.steered,
        report.took.as_micros()
    ));
}
