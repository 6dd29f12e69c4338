//! What the API watch publishes ([`KubeSnapshot`]) and where readers on other threads find
//! it ([`Shared`]): the latest snapshot, a condition to wait for the first, and this node's
//! eligibility for load balancer traffic.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::k8s::Resolved;

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

/// What the watch shares with the threads that read it.
pub(crate) struct Shared {
    latest: Mutex<Option<Arc<KubeSnapshot>>>,
    published: tokio::sync::Notify,
    /// Whether this node is eligible to take load balancer traffic: not being deleted and
    /// not tainted `ToBeDeletedByClusterAutoscaler` (kube-proxy's `SyncNode`). True until the
    /// Node says otherwise.
    pub(crate) node_eligible: Arc<AtomicBool>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            latest: Mutex::default(),
            published: tokio::sync::Notify::new(),
            node_eligible: Arc::new(AtomicBool::new(true)),
        }
    }
}

/// A `Debug` that does not print the whole model.
impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeWatchState")
    }
}

impl Shared {
    /// Makes `snapshot` the latest and wakes whoever waits for one.
    pub(crate) fn publish(&self, snapshot: KubeSnapshot) {
        *self.latest.lock().expect("kube state lock") = Some(Arc::new(snapshot));
        self.published.notify_waiters();
    }

    /// The latest snapshot, if the watchers have listed everything once.
    pub(crate) fn latest(&self) -> Option<Arc<KubeSnapshot>> {
        self.latest.lock().expect("kube state lock").clone()
    }

    /// Waits up to `timeout` for the first snapshot.
    pub(crate) async fn wait_synced(&self, timeout: Duration) -> Option<Arc<KubeSnapshot>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a publication in between is not missed.
            let published = self.published.notified();
            tokio::pin!(published);
            published.as_mut().enable();
            if let Some(latest) = self.latest() {
                return Some(latest);
            }
            if tokio::time::timeout_at(deadline, published).await.is_err() {
                return self.latest();
            }
        }
    }
}
