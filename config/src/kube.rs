//! Kubernetes node mode as a configuration source: Services, EndpointSlices and this node's
//! Node watched with kube-rs, resolved into the model by [`crate::k8s::resolve_node_service`],
//! and the cluster's ServiceCIDRs (for node mode's steering), as kube-proxy watches them.
//!
//! [`KubeWatch::start`] runs the watchers on a thread of their own (`ringlb-kube`, a
//! current-thread tokio runtime); the data plane never sees it. Each watcher feeds a
//! reflector store. A watch event marks the Kubernetes Services it touches (a Service, or the
//! Service named by a slice's `kubernetes.io/service-name` label, before and after the
//! event); 100 ms after the first mark the marked Services alone are resolved again, the
//! model is put together from the per-Service results, and [`KubeWatch::latest`] returns it
//! with a callback telling the owner. A re-list (after a `410 Gone`, say) and a change of
//! this node's zone resolve every Service again.
//!
//! Watch errors are logged with their causes and retried with kube-rs's default backoff,
//! client-go's reflector backoff (0.8 s doubling to 30 s, each delay stretched by up to as
//! much again with jitter, reset by the next success); until the API answers again nothing
//! is published, so the last table keeps serving.
//!
//! Label rules are applied by the API server through the label selector, as kube-proxy sets
//! it: `!service.kubernetes.io/service-proxy-name` (or `=<ours>` with
//! [`crate::k8s::NodeOptions::service_proxy_name`]) and `!service.kubernetes.io/headless`, on
//! Services and EndpointSlices alike (the EndpointSlice controller copies a Service's labels
//! to its slices). [`crate::k8s::resolve_node_service`] checks the first rule again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use crate::k8s::{self, NodeOptions, NodeService, NotProxiedReason, Resolved};

/// Watch events arriving this soon after the first of a burst are applied together.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Where the API is and who this node is.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// A kubeconfig file; `None`: the in-cluster configuration (service account token and
    /// `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`).
    pub kubeconfig: Option<PathBuf>,
    /// The node (its zone is read from its Node object and need not be set here).
    pub node: NodeOptions,
    /// NodePorts also on this node's primary addresses, one per family, read from its Node's
    /// `status.addresses` ([`k8s::api::node_primary_addresses`]) and followed as the Node
    /// changes: kube-proxy's `--nodeport-addresses primary`. They are added to
    /// [`NodeOptions::node_addresses`] as given here.
    pub primary_node_addresses: bool,
}

/// Why the watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file cannot be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No in-cluster configuration (not in a pod, or no service account).
    #[error("in-cluster Kubernetes configuration: {0} (outside a cluster, give --kubeconfig)")]
    InCluster(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The client cannot be built (TLS settings, say).
    #[error("Kubernetes client: {0}")]
    Client(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The watch thread cannot start.
    #[error("cannot start the Kubernetes watch thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// One published state of the cluster, as this node serves it.
#[derive(Clone, Debug)]
pub struct KubeSnapshot {
    /// Increases by one with every publication.
    pub version: u64,
    /// The model, what is not proxied, and warnings.
    pub resolved: Resolved,
    /// `namespace/name` of the Kubernetes Services resolved again for this publication
    /// (every Service after a re-list).
    pub changed: Vec<String>,
    /// The cluster's service CIDRs: `spec.cidrs` of every `networking.k8s.io/v1 ServiceCIDR`,
    /// sorted and without repeats, as kube-proxy collects them. Empty until they are listed,
    /// and where the API server does not serve ServiceCIDRs (before Kubernetes 1.33, or with
    /// `MultiCIDRServiceAllocator` off) or ringlb may not list them.
    pub service_cidrs: Vec<String>,
}

struct Shared {
    latest: Mutex<Option<Arc<KubeSnapshot>>>,
    published: Condvar,
    /// Whether this node is eligible to take load balancer traffic: not being deleted and
    /// not tainted `ToBeDeletedByClusterAutoscaler` (kube-proxy's `SyncNode`). True until the
    /// Node says otherwise.
    node_eligible: Arc<AtomicBool>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            latest: Mutex::default(),
            published: Condvar::new(),
            node_eligible: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// Sends new node addresses to a running [`KubeWatch`] from any thread.
#[derive(Clone, Debug)]
pub struct NodeAddresses(tokio::sync::mpsc::UnboundedSender<Vec<IpAddr>>);

impl NodeAddresses {
    /// The addresses NodePorts listen on from now on. `false` once the watch has stopped.
    pub fn set(&self, addresses: Vec<IpAddr>) -> bool {
        self.0.send(addresses).is_ok()
    }
}

/// The Cluster Autoscaler's taint on a node it is about to delete.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether `node` may take load balancer traffic, as kube-proxy's `SyncNode` decides: not
/// being deleted and not tainted [`TO_BE_DELETED_TAINT`].
pub fn node_eligible(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_none()
        && !node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT))
}

/// The running watch; dropping it stops the watch thread.
#[derive(Debug)]
pub struct KubeWatch {
    shared: Arc<SharedHandle>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    addresses: tokio::sync::mpsc::UnboundedSender<Vec<IpAddr>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `Shared` with a `Debug` that does not print the whole model.
struct SharedHandle(Shared);

impl std::fmt::Debug for SharedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeWatchState")
    }
}

impl KubeWatch {
    /// Connects (reads the kubeconfig or the in-cluster configuration) and starts watching;
    /// `on_change` runs on the watch thread after every publication.
    pub fn start(
        options: KubeOptions,
        on_change: impl Fn() + Send + 'static,
    ) -> Result<KubeWatch, KubeError> {
        let shared = Arc::new(SharedHandle(Shared::default()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (addr_tx, addr_rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let state = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("ringlb-kube".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(KubeError::Thread(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let client = match client(&options).await {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    tokio::select! {
                        () = watch(client, options.node, options.primary_node_addresses, addr_rx, state, on_change) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .map_err(KubeError::Thread)?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(KubeWatch {
                shared,
                addresses: addr_tx,
                stop: Some(stop_tx),
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(KubeError::Thread(std::io::Error::other(
                    "the watch thread ended before connecting",
                )))
            }
        }
    }

    /// A handle that replaces the node addresses NodePorts listen on (this host's addresses
    /// changed); every Service is resolved again when they differ.
    pub fn node_addresses(&self) -> NodeAddresses {
        NodeAddresses(self.addresses.clone())
    }

    /// This node's eligibility for load balancer traffic (see [`node_eligible`]), kept up to
    /// date by the watch, for the node health server.
    pub fn node_eligibility(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shared.0.node_eligible)
    }

    /// The latest published state, if the watchers have listed everything once.
    pub fn latest(&self) -> Option<Arc<KubeSnapshot>> {
        self.shared
            .0
            .latest
            .lock()
            .expect("kube state lock")
            .clone()
    }

    /// Waits up to `timeout` for the first publication (every watcher has listed once).
    pub fn wait_synced(&self, timeout: Duration) -> Option<Arc<KubeSnapshot>> {
        let guard = self.shared.0.latest.lock().expect("kube state lock");
        let (guard, _) = self
            .shared
            .0
            .published
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .expect("kube state lock");
        guard.clone()
    }
}

impl Drop for KubeWatch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn client(options: &KubeOptions) -> Result<Client, KubeError> {
    let config = match &options.kubeconfig {
        Some(path) => {
            let err = |e: Box<dyn std::error::Error + Send + Sync>| KubeError::Kubeconfig {
                path: path.clone(),
                source: e,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(|e| err(e.into()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(e.into()))?
        }
        None => kube::Config::incluster().map_err(|e| KubeError::InCluster(e.into()))?,
    };
    Client::try_from(config).map_err(|e| KubeError::Client(e.into()))
}

/// The label selector kube-proxy puts on its Service and EndpointSlice informers.
pub fn label_selector(service_proxy_name: Option<&str>) -> String {
    let proxy = match service_proxy_name {
        None => format!("!{}", k8s::SERVICE_PROXY_NAME_LABEL),
        Some(name) => format!("{}={name}", k8s::SERVICE_PROXY_NAME_LABEL),
    };
    format!("{proxy},!service.kubernetes.io/headless")
}

enum Event {
    // Boxed: the objects are large and of different sizes; one allocation per event is
    // nothing next to decoding it.
    Service(Box<watcher::Result<watcher::Event<Service>>>),
    Slice(Box<watcher::Result<watcher::Event<EndpointSlice>>>),
    Node(Box<watcher::Result<watcher::Event<Node>>>),
    ServiceCidr(Box<watcher::Result<watcher::Event<ServiceCIDR>>>),
    /// This host's NodePort addresses changed.
    NodeAddresses(Vec<IpAddr>),
}

type Key = (String, String);

/// The watch loop: runs until the thread is told to stop.
async fn watch(
    client: Client,
    mut node: NodeOptions,
    primary_node_addresses: bool,
    addresses: tokio::sync::mpsc::UnboundedReceiver<Vec<IpAddr>>,
    shared: Arc<SharedHandle>,
    on_change: impl Fn(),
) {
    let selector = label_selector(node.service_proxy_name.as_deref());
    let config = watcher::Config::default().labels(&selector);
    let (services, svc_writer) = reflector::store::<Service>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    let svc_events = watcher(Api::<Service>::all(client.clone()), config.clone())
        .default_backoff()
        .reflect(svc_writer)
        .map(|e| Event::Service(Box::new(e)));
    let slice_events = watcher(Api::<EndpointSlice>::all(client.clone()), config)
        .default_backoff()
        .reflect(slice_writer)
        .map(|e| Event::Slice(Box::new(e)));
    let node_config =
        watcher::Config::default().fields(&format!("metadata.name={}", node.node_name));
    let node_events = watcher(Api::<Node>::all(client.clone()), node_config)
        .default_backoff()
        .map(|e| Event::Node(Box::new(e)));
    // Not needed to start serving (kube-proxy does not wait for them either), and ends where
    // the API is not served or not allowed.
    let (cidrs, cidr_writer) = reflector::store::<ServiceCIDR>();
    let cidr_events = watcher(Api::<ServiceCIDR>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(cidr_writer)
        .take_while(|e| std::future::ready(service_cidrs_served(e)))
        .map(|e| Event::ServiceCidr(Box::new(e)));
    // Watcher streams must be pinned before `.next()`.
    let address_events = futures_util::stream::unfold(addresses, |mut rx| async move {
        rx.recv().await.map(|a| (Event::NodeAddresses(a), rx))
    });
    let mut events = std::pin::pin!(futures_util::stream::select(
        futures_util::stream::select(svc_events, slice_events),
        futures_util::stream::select(
            futures_util::stream::select(node_events, address_events),
            cidr_events,
        ),
    ));

    // With `primary_node_addresses`: the given node addresses, to which the Node's are added.
    let given_addresses = node.node_addresses.clone();
    let mut state = State::default();
    // Listed at least once: services, slices, node.
    let mut synced = [false; 3];
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline.filter(|_| synced.iter().all(|s| *s)) {
            Some(at) => match tokio::time::timeout_at(at, events.next()).await {
                Ok(e) => e,
                Err(_) => {
                    deadline = None;
                    let stores = Stores {
                        services: &services,
                        slices: &slices,
                        cidrs: &cidrs,
                    };
                    state.publish(&stores, &node, &shared, &on_change);
                    continue;
                }
            },
            None => events.next().await,
        };
        let Some(event) = next else { break };
        let marked = match event {
            Event::Service(e) => match *e {
                Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => {
                    state.dirty.insert(key_of(&s.metadata));
                    true
                }
                Ok(watcher::Event::InitDone) => {
                    synced[0] = true;
                    state.full = true;
                    true
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
                Err(e) => watch_failed(&e),
            },
            Event::Slice(e) => match *e {
                Ok(watcher::Event::Apply(s)) => {
                    state.slice_changed(&s, true);
                    true
                }
                Ok(watcher::Event::Delete(s)) => {
                    state.slice_changed(&s, false);
                    true
                }
                Ok(watcher::Event::InitDone) => {
                    synced[1] = true;
                    state.index_slices(&slices);
                    state.full = true;
                    true
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
                Err(e) => watch_failed(&e),
            },
            Event::ServiceCidr(e) => match *e {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => true,
                Ok(watcher::Event::InitDone) => true,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
                Err(e) => watch_failed(&e),
            },
            Event::NodeAddresses(addresses) => {
                if addresses != node.node_addresses {
                    tracing::info!(node = %node.node_name, ?addresses, "NodePort addresses changed; resolving every service again");
                    node.node_addresses = addresses;
                    state.full = true;
                }
                state.full
            }
            Event::Node(boxed) => match *boxed {
                Ok(e) => {
                    let eligible = match &e {
                        watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                            Some(node_eligible(n))
                        }
                        watcher::Event::Delete(_) => Some(false),
                        _ => None,
                    };
                    if let Some(eligible) = eligible {
                        let was = shared.0.node_eligible.swap(eligible, Ordering::Relaxed);
                        if was != eligible {
                            tracing::info!(node = %node.node_name, eligible, "node eligibility for load balancer traffic changed");
                        }
                    }
                    let zone = match &e {
                        watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                            Some(k8s::api::node_zone(n.metadata.labels.as_ref()))
                        }
                        watcher::Event::Delete(_) => Some(None),
                        watcher::Event::Init => None,
                        watcher::Event::InitDone => {
                            synced[2] = true;
                            state.full = true;
                            None
                        }
                    };
                    if let Some(zone) = zone.filter(|z| *z != node.zone) {
                        tracing::info!(node = %node.node_name, zone = ?zone, "node zone changed; resolving every service again");
                        node.zone = zone;
                        state.full = true;
                    }
                    // A deleted Node keeps its last addresses: it is usually re-registered.
                    if let (true, watcher::Event::Apply(n) | watcher::Event::InitApply(n)) =
                        (primary_node_addresses, &e)
                    {
                        let mut addresses = given_addresses.clone();
                        for ip in k8s::api::node_primary_addresses(n) {
                            if !addresses.contains(&ip) {
                                addresses.push(ip);
                            }
                        }
                        if addresses != node.node_addresses || state.version == 0 {
                            primary_addresses_changed(&node.node_name, &addresses, n);
                        }
                        if addresses != node.node_addresses {
                            node.node_addresses = addresses;
                            state.full = true;
                        }
                    }
                    matches!(e, watcher::Event::InitDone) || state.full
                }
                Err(e) => watch_failed(&e),
            },
        };
        if marked && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + SETTLE);
        }
    }
}

/// Logs the NodePort addresses taken from `node` (a warning when there are none).
fn primary_addresses_changed(node_name: &str, addresses: &[IpAddr], node: &Node) {
    if addresses.is_empty() {
        let listed: Vec<String> = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
            .map(|a| format!("{}={}", a.type_, a.address))
            .collect();
        tracing::warn!(node = %node_name, ?listed, "this Node has no InternalIP or ExternalIP other than loopback in status.addresses: NodePorts are not served (give --node-address or --nodeport-addresses CIDRs)");
    } else {
        tracing::info!(node = %node_name, ?addresses, "NodePort addresses from this Node's primary addresses (--nodeport-addresses primary)");
    }
}

/// Whether the ServiceCIDR watch goes on after `e`: not after the API server said it does
/// not serve the API (404) or ringlb may not list it (403), which is logged once.
fn service_cidrs_served(e: &watcher::Result<watcher::Event<ServiceCIDR>>) -> bool {
    let Err(watcher::Error::InitialListFailed(kube::Error::Api(status))) = e else {
        return true;
    };
    match status.code {
        404 => {
            tracing::info!("the API server does not serve networking.k8s.io/v1 ServiceCIDRs (Kubernetes before 1.33, or MultiCIDRServiceAllocator off): traffic to unallocated service addresses is not dropped");
            false
        }
        403 => {
            tracing::warn!("not allowed to list networking.k8s.io/v1 ServiceCIDRs (give ringlb's ClusterRole list and watch on servicecidrs): traffic to unallocated service addresses is not dropped");
            false
        }
        _ => true,
    }
}

/// The stores [`State::publish`] reads.
struct Stores<'a> {
    services: &'a Store<Service>,
    slices: &'a Store<EndpointSlice>,
    cidrs: &'a Store<ServiceCIDR>,
}

/// `spec.cidrs` of every ServiceCIDR in `store`, sorted, without repeats.
fn service_cidrs(store: &Store<ServiceCIDR>) -> Vec<String> {
    let set: BTreeSet<String> = store
        .state()
        .iter()
        .filter_map(|c| c.spec.as_ref()?.cidrs.clone())
        .flatten()
        .collect();
    set.into_iter().collect()
}

/// Logs a watch error with its causes (the watcher retries with backoff); marks nothing.
fn watch_failed(e: &watcher::Error) -> bool {
    tracing::warn!(error = %causes(e), "Kubernetes watch failed; retrying with backoff, the current table keeps serving");
    false
}

/// `e` and its causes on one line, each once: kube's errors name only their first cause
/// ("client error (Connect)"), and what an operator needs is the last ("Connection refused").
fn causes(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

fn key_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// What the watch loop keeps between events.
#[derive(Default)]
struct State {
    /// Each Kubernetes Service resolved, by (namespace, name).
    resolved: BTreeMap<Key, NodeService>,
    /// Slice names per Service (namespace, name), from the slices' label.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// The Service each slice (namespace, slice name) belonged to at its last event.
    owner: HashMap<Key, String>,
    /// Services to resolve again at the next publication.
    dirty: BTreeSet<Key>,
    /// Resolve everything at the next publication.
    full: bool,
    version: u64,
    /// The service CIDRs last published.
    service_cidrs: Vec<String>,
}

impl State {
    /// A slice was added, changed (`present`) or deleted: its Service before and after.
    fn slice_changed(&mut self, s: &EndpointSlice, present: bool) {
        let (ns, name) = key_of(&s.metadata);
        let label = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(k8s::SERVICE_NAME_LABEL))
            .cloned();
        if let Some(old) = self.owner.remove(&(ns.clone(), name.clone())) {
            let key = (ns.clone(), old);
            if let Some(set) = self.slices_of.get_mut(&key) {
                set.remove(&name);
                if set.is_empty() {
                    self.slices_of.remove(&key);
                }
            }
            self.dirty.insert(key);
        }
        if let (Some(svc), true) = (label, present) {
            let key = (ns.clone(), svc.clone());
            self.slices_of
                .entry(key.clone())
                .or_default()
                .insert(name.clone());
            self.owner.insert((ns, name), svc);
            self.dirty.insert(key);
        }
    }

    /// Rebuilds the slice index from the store after a (re-)list.
    fn index_slices(&mut self, slices: &Store<EndpointSlice>) {
        self.slices_of.clear();
        self.owner.clear();
        for s in slices.state() {
            self.slice_changed(&s, true);
        }
    }

    fn resolve_one(
        &self,
        key: &Key,
        services: &Store<Service>,
        slices: &Store<EndpointSlice>,
        node: &NodeOptions,
    ) -> Option<NodeService> {
        let svc = services.get(&ObjectRef::new(&key.1).within(&key.0))?;
        let (svc, mut warnings) = k8s::api::service(&svc);
        let mut own = Vec::new();
        for name in self.slices_of.get(key).into_iter().flatten() {
            let Some(s) = slices.get(&ObjectRef::new(name).within(&key.0)) else {
                continue;
            };
            match k8s::api::endpoint_slice(&s) {
                Ok((slice, w)) => {
                    own.push(slice);
                    warnings.extend(w);
                }
                Err(w) => warnings.push(w),
            }
        }
        let refs: Vec<&k8s::EndpointSlice> = own.iter().collect();
        let mut out = k8s::resolve_node_service(&svc, &refs, node);
        warnings.append(&mut out.warnings);
        out.warnings = warnings;
        Some(out)
    }

    /// Resolves what changed, puts the model together and publishes it (also when only the
    /// service CIDRs changed).
    fn publish(
        &mut self,
        stores: &Stores<'_>,
        node: &NodeOptions,
        shared: &SharedHandle,
        on_change: &impl Fn(),
    ) {
        let (services, slices) = (stores.services, stores.slices);
        let keys: Vec<Key> = if std::mem::take(&mut self.full) {
            let mut all: BTreeSet<Key> = self.resolved.keys().cloned().collect();
            all.extend(services.state().iter().map(|s| key_of(&s.metadata)));
            all.into_iter().collect()
        } else {
            self.dirty.iter().cloned().collect()
        };
        self.dirty.clear();
        let mut changed = Vec::new();
        for key in keys {
            let new = self.resolve_one(&key, services, slices, node);
            let old = self.resolved.remove(&key);
            if new == old {
                if let Some(n) = new {
                    self.resolved.insert(key, n);
                }
                continue;
            }
            let label = format!("{}/{}", key.0, key.1);
            match &new {
                Some(n) => {
                    let before = old.as_ref().map(|o| &o.warnings);
                    if before != Some(&n.warnings) {
                        for w in &n.warnings {
                            tracing::warn!(service = %label, "{w}");
                        }
                    }
                    // An SCTP port is a Service the user expects served: warn when it first
                    // shows (a new Service or port, a port turned SCTP), not at every change.
                    let before = old.as_ref().map_or(&[][..], |o| &o.not_proxied[..]);
                    for np in &n.not_proxied {
                        if np.reason == NotProxiedReason::Sctp && !before.contains(np) {
                            tracing::warn!(service = %np.name, "not proxied: {}", np.reason);
                        } else {
                            tracing::debug!(service = %np.name, "not proxied: {}", np.reason);
                        }
                    }
                    self.resolved.insert(key, n.clone());
                }
                None => tracing::debug!(service = %label, "Service deleted"),
            }
            changed.push(label);
        }
        let first = self.version == 0;
        let cidrs = service_cidrs(stores.cidrs);
        let cidrs_changed = cidrs != self.service_cidrs;
        if changed.is_empty() && !first && !cidrs_changed {
            return;
        }
        if cidrs_changed {
            tracing::info!(service_cidrs = ?cidrs, "service CIDRs changed");
            self.service_cidrs = cidrs;
        }
        self.version += 1;
        let resolved = k8s::assemble(self.resolved.values());
        for w in resolved
            .warnings
            .iter()
            .filter(|w| w.contains("already a frontend"))
        {
            tracing::warn!("{w}");
        }
        let snapshot = Arc::new(KubeSnapshot {
            version: self.version,
            resolved,
            changed,
            service_cidrs: self.service_cidrs.clone(),
        });
        *shared.0.latest.lock().expect("kube state lock") = Some(snapshot);
        shared.0.published.notify_all();
        on_change();
    }
}
