//! The API watch, node mode's configuration source: Services, EndpointSlices and this node's
//! Node watched with kube-rs, resolved into the model by [`config::k8s::resolve_node_service`],
//! and the cluster's ServiceCIDRs (for steering), as kube-proxy watches them.
//!
//! [`KubeWatch::start`] spawns the watchers as one task (`run`) on the runtime it is handed
//! (ringlb's control runtime); the data plane never sees it. Each watcher feeds a
//! reflector store. A watch event marks the Kubernetes Services it touches (a Service, or the
//! Service named by a slice's `kubernetes.io/service-name` label, before and after the
//! event); 100 ms after the first mark the marked Services alone are resolved again, the
//! model is put together from the per-Service results (`watch/state.rs`), and
//! [`KubeWatch::latest`] returns it with a callback telling the owner. A re-list (after a `410 Gone`, say) and a change of
//! this node's zone resolve every Service again.
//!
//! Watch errors are logged with their causes and retried with kube-rs's default backoff,
//! client-go's reflector backoff (0.8 s doubling to 30 s, each delay stretched by up to as
//! much again with jitter, reset by the next success); until the API answers again nothing
//! is published, so the last table keeps serving.
//!
//! Label rules are applied by the API server through the label selector, as kube-proxy sets
//! it: `!service.kubernetes.io/service-proxy-name` (or `=<ours>` with
//! [`config::k8s::NodeOptions::service_proxy_name`]) and `!service.kubernetes.io/headless`, on
//! Services and EndpointSlices alike (the EndpointSlice controller copies a Service's labels
//! to its slices). [`config::k8s::resolve_node_service`] checks the first rule again.

mod events;
mod published;
mod state;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use config::k8s::NodeOptions;
use kube::Client;
use tokio::sync::{mpsc, oneshot};

pub use self::events::{label_selector, SETTLE};
pub use self::published::KubeSnapshot;
use self::published::Shared;

/// Where the API is and who this node is.
#[derive(Clone, Debug, Default)]
pub struct KubeOptions {
    /// A kubeconfig file; `None`: the in-cluster configuration (service account token and
    /// `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`).
    pub kubeconfig: Option<PathBuf>,
    /// The node (its zone is read from its Node object and need not be set here).
    pub node: NodeOptions,
    /// NodePorts also on this node's primary addresses, one per family, read from its Node's
    /// `status.addresses` ([`crate::node_primary_addresses`]) and followed as the Node
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
    /// The watch's task ended before it connected (its runtime stopped).
    #[error("the Kubernetes watch stopped before it connected")]
    Stopped,
}

/// Sends new node addresses to a running [`KubeWatch`] from any thread.
#[derive(Clone, Debug)]
pub struct NodeAddresses(mpsc::UnboundedSender<Vec<IpAddr>>);

impl NodeAddresses {
    /// The addresses NodePorts listen on from now on. `false` once the watch has stopped.
    pub fn set(&self, addresses: Vec<IpAddr>) -> bool {
        self.0.send(addresses).is_ok()
    }
}

/// The running watch; dropping it stops the watch's task.
#[derive(Debug)]
pub struct KubeWatch {
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    addresses: mpsc::UnboundedSender<Vec<IpAddr>>,
}

impl KubeWatch {
    /// Connects (reads the kubeconfig or the in-cluster configuration) and starts watching, as
    /// a task on the runtime of `handle`; resolves once connected. `on_change` runs on that
    /// runtime after every publication (it should only send a message).
    pub async fn start(
        handle: &tokio::runtime::Handle,
        options: KubeOptions,
        on_change: impl Fn() + Send + Sync + 'static,
    ) -> Result<KubeWatch, KubeError> {
        let shared = Arc::new(Shared::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (addr_tx, addr_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        handle.spawn(run(
            options,
            Arc::clone(&shared),
            addr_rx,
            stop_rx,
            ready_tx,
            on_change,
        ));
        match ready_rx.await {
            Ok(Ok(())) => Ok(KubeWatch {
                shared,
                addresses: addr_tx,
                stop: Some(stop_tx),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(KubeError::Stopped),
        }
    }

    /// A handle that replaces the node addresses NodePorts listen on (this host's addresses
    /// changed); every Service is resolved again when they differ.
    pub fn node_addresses(&self) -> NodeAddresses {
        NodeAddresses(self.addresses.clone())
    }

    /// This node's eligibility for load balancer traffic (see [`crate::node_eligible`]), kept
    /// up to date by the watch, for the node health server.
    pub fn node_eligibility(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shared.node_eligible)
    }

    /// The latest published state, if the watchers have listed everything once.
    pub fn latest(&self) -> Option<Arc<KubeSnapshot>> {
        self.shared.latest()
    }

    /// Waits up to `timeout` for the first publication (every watcher has listed once).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only reads.
    pub async fn wait_synced(&self, timeout: Duration) -> Option<Arc<KubeSnapshot>> {
        self.shared.wait_synced(timeout).await
    }
}

impl Drop for KubeWatch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The whole watch as one future, for any tokio runtime with I/O and time: connects with
/// `options`, tells `ready` whether it could, then watches until `stop` fires or its sender
/// is dropped, publishing into `shared` and calling `on_change` after each publication.
async fn run(
    options: KubeOptions,
    shared: Arc<Shared>,
    addresses: mpsc::UnboundedReceiver<Vec<IpAddr>>,
    stop: oneshot::Receiver<()>,
    ready: oneshot::Sender<Result<(), KubeError>>,
    on_change: impl Fn() + Send + Sync + 'static,
) {
    let client = match client(&options).await {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let KubeOptions {
        node,
        primary_node_addresses,
        ..
    } = options;
    tokio::select! {
        () = events::watch(client, node, primary_node_addresses, addresses, shared, on_change) => {}
        _ = stop => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The watch is a future any runtime can spawn (it is `Send`), and it reports through
    /// `ready` where it could not connect.
    #[test]
    fn the_watch_runs_on_a_runtime_it_is_handed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_stop, stop_rx) = oneshot::channel();
        let (_addresses, addr_rx) = mpsc::unbounded_channel();
        let (ready, ready_rx) = oneshot::channel();
        let options = KubeOptions {
            kubeconfig: Some("no/such/kubeconfig".into()),
            ..KubeOptions::default()
        };
        let shared = Arc::new(Shared::default());
        let task = rt
            .handle()
            .spawn(run(options, shared, addr_rx, stop_rx, ready, || {}));
        rt.block_on(task).unwrap();
        let answer = rt.block_on(ready_rx).unwrap();
        assert!(
            matches!(answer, Err(KubeError::Kubeconfig { .. })),
            "{answer:?}"
        );
    }
}
