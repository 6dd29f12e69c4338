//! `ringlb run --kubernetes`: the Kubernetes watch as the config source of `serve`.

use std::cell::Cell;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use config::k8s::NodeOptions;
use config::kube::{KubeOptions, KubeWatch};
use config::Config;
use proxy_core::Proxy;

use crate::cli::RunArgs;
use crate::serve::{announce_line, Control};

/// How often ringlb says it is still waiting for the API at start.
const SYNC_WAIT_LOG: Duration = Duration::from_secs(10);

/// The running watch and where it reports changes.
pub struct Kube {
    watch: KubeWatch,
    control: Arc<Mutex<Option<mpsc::Sender<Control>>>>,
    /// The version of the snapshot the data plane serves.
    applied: Cell<u64>,
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
        let options = KubeOptions {
            kubeconfig: args.kubeconfig.clone(),
            node: NodeOptions {
                node_name: node_name.clone(),
                zone: None,
                node_addresses: args.node_addresses.clone(),
                service_proxy_name: args.service_proxy_name.clone(),
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
        let snapshot = loop {
            if let Some(s) = watch.wait_synced(SYNC_WAIT_LOG) {
                break s;
            }
            tracing::warn!("still waiting for the first list of Services, EndpointSlices and this Node from the API");
        };
        for np in &snapshot.resolved.not_proxied {
            tracing::info!(service = %np.name, "not proxied: {}", np.reason);
        }
        tracing::info!(
            services = snapshot.resolved.config.services.len(),
            "Kubernetes API listed"
        );
        let kube = Kube {
            watch,
            control,
            applied: Cell::new(snapshot.version),
        };
        Ok((kube, snapshot.resolved.config.clone()))
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
        let config = &snapshot.resolved.config;
        if config == serving {
            self.applied.set(snapshot.version);
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
            }
            Err(e) => tracing::error!(
                changed = ?snapshot.changed,
                "Kubernetes changes not applied, the current table keeps serving: {e}"
            ),
        }
    }
}
