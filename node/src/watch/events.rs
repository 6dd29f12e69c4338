//! The watch loop: the four watchers (Services, EndpointSlices, this Node, ServiceCIDRs) and
//! the node address changes as one stream of events, each marking what to resolve again, and
//! a publication [`SETTLE`] after the first mark of a burst.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use config::k8s::{NodeOptions, SERVICE_PROXY_NAME_LABEL};
use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::runtime::reflector;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::mpsc::UnboundedReceiver;

use super::published::Shared;
use super::state::{key_of, State, Stores};
use crate::this_node::{node_eligible, node_primary_addresses, node_zone};

/// Watch events arriving this soon after the first of a burst are applied together.
pub const SETTLE: Duration = Duration::from_millis(100);

/// The label selector kube-proxy puts on its Service and EndpointSlice informers.
pub fn label_selector(service_proxy_name: Option<&str>) -> String {
    let proxy = match service_proxy_name {
        None => format!("!{SERVICE_PROXY_NAME_LABEL}"),
        Some(name) => format!("{SERVICE_PROXY_NAME_LABEL}={name}"),
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

/// Every watcher's events, and the node addresses sent in, as one stream; with the stores
/// the reflectors keep.
fn events(
    client: Client,
    node: &NodeOptions,
    addresses: UnboundedReceiver<Vec<IpAddr>>,
) -> (Stores, impl Stream<Item = Event>) {
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
    let address_events = futures_util::stream::unfold(addresses, |mut rx| async move {
        rx.recv().await.map(|a| (Event::NodeAddresses(a), rx))
    });
    let events = futures_util::stream::select(
        futures_util::stream::select(svc_events, slice_events),
        futures_util::stream::select(
            futures_util::stream::select(node_events, address_events),
            cidr_events,
        ),
    );
    let stores = Stores {
        services,
        slices,
        cidrs,
    };
    (stores, events)
}

/// The watch loop: runs until its stream ends or it is dropped.
pub(crate) async fn watch(
    client: Client,
    node: NodeOptions,
    primary_node_addresses: bool,
    addresses: UnboundedReceiver<Vec<IpAddr>>,
    shared: Arc<Shared>,
    on_change: impl Fn(),
) {
    let (stores, events) = events(client, &node, addresses);
    // Watcher streams must be pinned before `.next()`.
    let mut events = std::pin::pin!(events);
    let mut watch = Watch {
        // With `primary_node_addresses`: the given node addresses, to which the Node's are
        // added.
        given_addresses: primary_node_addresses.then(|| node.node_addresses.clone()),
        node,
        state: State::default(),
        synced: [false; 3],
        shared,
    };
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let next = match deadline.filter(|_| watch.synced.iter().all(|s| *s)) {
            Some(at) => match tokio::time::timeout_at(at, events.next()).await {
                Ok(e) => e,
                Err(_) => {
                    deadline = None;
                    let shared = &watch.shared;
                    watch
                        .state
                        .publish(&stores, &watch.node, shared, &on_change);
                    continue;
                }
            },
            None => events.next().await,
        };
        let Some(event) = next else { break };
        if watch.on(event, &stores) && deadline.is_none() {
            deadline = Some(tokio::time::Instant::now() + SETTLE);
        }
    }
}

/// What the loop keeps besides [`State`]: this node as it changes.
struct Watch {
    node: NodeOptions,
    /// With `primary_node_addresses`: the node addresses as given, which the Node's primary
    /// addresses join.
    given_addresses: Option<Vec<IpAddr>>,
    state: State,
    /// Listed at least once: services, slices, node.
    synced: [bool; 3],
    shared: Arc<Shared>,
}

impl Watch {
    /// Takes in one event; whether it marked something to publish.
    fn on(&mut self, event: Event, stores: &Stores) -> bool {
        match event {
            Event::Service(e) => match *e {
                Ok(watcher::Event::Apply(s) | watcher::Event::Delete(s)) => {
                    self.state.dirty.insert(key_of(&s.metadata));
                    true
                }
                Ok(watcher::Event::InitDone) => {
                    self.synced[0] = true;
                    self.state.full = true;
                    true
                }
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
                Err(e) => watch_failed(&e),
            },
            Event::Slice(e) => match *e {
                Ok(watcher::Event::Apply(s)) => {
                    self.state.slice_changed(&s, true);
                    true
                }
                Ok(watcher::Event::Delete(s)) => {
                    self.state.slice_changed(&s, false);
                    true
                }
                Ok(watcher::Event::InitDone) => {
                    self.synced[1] = true;
                    self.state.index_slices(&stores.slices);
                    self.state.full = true;
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
            Event::NodeAddresses(addresses) => self.addresses_changed(addresses),
            Event::Node(e) => match *e {
                Ok(e) => self.node_changed(&e),
                Err(e) => watch_failed(&e),
            },
        }
    }

    /// This host's NodePort addresses are now `addresses`.
    fn addresses_changed(&mut self, addresses: Vec<IpAddr>) -> bool {
        if addresses != self.node.node_addresses {
            tracing::info!(node = %self.node.node_name, ?addresses, "NodePort addresses changed; resolving every service again");
            self.node.node_addresses = addresses;
            self.state.full = true;
        }
        self.state.full
    }

    /// An event of this node's Node: its eligibility, zone and primary addresses.
    fn node_changed(&mut self, e: &watcher::Event<Node>) -> bool {
        let eligible = match e {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => Some(node_eligible(n)),
            watcher::Event::Delete(_) => Some(false),
            _ => None,
        };
        if let Some(eligible) = eligible {
            let was = self.shared.node_eligible.swap(eligible, Ordering::Relaxed);
            if was != eligible {
                tracing::info!(node = %self.node.node_name, eligible, "node eligibility for load balancer traffic changed");
            }
        }
        let zone = match e {
            watcher::Event::Apply(n) | watcher::Event::InitApply(n) => {
                Some(node_zone(n.metadata.labels.as_ref()))
            }
            watcher::Event::Delete(_) => Some(None),
            watcher::Event::Init => None,
            watcher::Event::InitDone => {
                self.synced[2] = true;
                self.state.full = true;
                None
            }
        };
        if let Some(zone) = zone.filter(|z| *z != self.node.zone) {
            tracing::info!(node = %self.node.node_name, zone = ?zone, "node zone changed; resolving every service again");
            self.node.zone = zone;
            self.state.full = true;
        }
        // A deleted Node keeps its last addresses: it is usually re-registered.
        if let watcher::Event::Apply(n) | watcher::Event::InitApply(n) = e {
            self.primary_addresses(n);
        }
        matches!(e, watcher::Event::InitDone) || self.state.full
    }

    /// With `primary_node_addresses`: the given addresses and `n`'s primary ones take
    /// NodePorts.
    fn primary_addresses(&mut self, n: &Node) {
        let Some(given) = &self.given_addresses else {
            return;
        };
        let mut addresses = given.clone();
        for ip in node_primary_addresses(n) {
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
        if addresses != self.node.node_addresses || self.state.version == 0 {
            primary_addresses_changed(&self.node.node_name, &addresses, n);
        }
        if addresses != self.node.node_addresses {
            self.node.node_addresses = addresses;
            self.state.full = true;
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
