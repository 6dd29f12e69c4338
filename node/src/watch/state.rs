//! The watch's memory between events: each Kubernetes Service as last resolved, which slices
//! belong to which Service, and what to resolve again at the next publication; and the
//! publication itself, which resolves only what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use config::k8s::{self, NodeOptions, NodeService, NotProxiedReason};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use super::published::{KubeSnapshot, Shared};
use crate::api;

/// A Kubernetes object's (namespace, name).
pub(crate) type Key = (String, String);

pub(crate) fn key_of(m: &ObjectMeta) -> Key {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// The stores [`State::publish`] reads.
#[derive(Clone)]
pub(crate) struct Stores {
    pub(crate) services: Store<Service>,
    pub(crate) slices: Store<EndpointSlice>,
    pub(crate) cidrs: Store<ServiceCIDR>,
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

/// What the watch loop keeps between events.
#[derive(Default)]
pub(crate) struct State {
    /// Each Kubernetes Service resolved, by (namespace, name).
    resolved: BTreeMap<Key, NodeService>,
    /// Slice names per Service (namespace, name), from the slices' label.
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// The Service each slice (namespace, slice name) belonged to at its last event.
    owner: HashMap<Key, String>,
    /// Services to resolve again at the next publication.
    pub(crate) dirty: BTreeSet<Key>,
    /// Resolve everything at the next publication.
    pub(crate) full: bool,
    /// The version of the last publication (0: none yet).
    pub(crate) version: u64,
    /// The service CIDRs last published.
    service_cidrs: Vec<String>,
}

impl State {
    /// A slice was added, changed (`present`) or deleted: its Service before and after.
    pub(crate) fn slice_changed(&mut self, s: &EndpointSlice, present: bool) {
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
    pub(crate) fn index_slices(&mut self, slices: &Store<EndpointSlice>) {
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
        let (svc, mut warnings) = api::service(&svc);
        let mut own = Vec::new();
        for name in self.slices_of.get(key).into_iter().flatten() {
            let Some(s) = slices.get(&ObjectRef::new(name).within(&key.0)) else {
                continue;
            };
            match api::endpoint_slice(&s) {
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
    /// service CIDRs changed), then calls `on_change`.
    pub(crate) fn publish(
        &mut self,
        stores: &Stores,
        node: &NodeOptions,
        shared: &Shared,
        on_change: &impl Fn(),
    ) {
        let changed = self.resolve_changed(stores, node);
        let first = self.version == 0;
        let cidrs = service_cidrs(&stores.cidrs);
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
        shared.publish(KubeSnapshot {
            version: self.version,
            resolved,
            changed,
            service_cidrs: self.service_cidrs.clone(),
        });
        on_change();
    }

    /// Resolves the marked Services again (every one after a re-list); returns
    /// `namespace/name` of each whose result changed.
    fn resolve_changed(&mut self, stores: &Stores, node: &NodeOptions) -> Vec<String> {
        let keys: Vec<Key> = if std::mem::take(&mut self.full) {
            let mut all: BTreeSet<Key> = self.resolved.keys().cloned().collect();
            all.extend(stores.services.state().iter().map(|s| key_of(&s.metadata)));
            all.into_iter().collect()
        } else {
            self.dirty.iter().cloned().collect()
        };
        self.dirty.clear();
        let mut changed = Vec::new();
        for key in keys {
            let new = self.resolve_one(&key, &stores.services, &stores.slices, node);
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
                    log_resolved(old.as_ref(), n, &label);
                    self.resolved.insert(key, n.clone());
                }
                None => tracing::debug!(service = %label, "Service deleted"),
            }
            changed.push(label);
        }
        changed
    }
}

/// Logs what is new about Service `label` now resolved as `new`: its warnings when they
/// changed, and its ports not proxied.
fn log_resolved(old: Option<&NodeService>, new: &NodeService, label: &str) {
    let before = old.map(|o| &o.warnings);
    if before != Some(&new.warnings) {
        for w in &new.warnings {
            tracing::warn!(service = %label, "{w}");
        }
    }
    // An SCTP port is a Service the user expects served: warn when it first shows (a new
    // Service or port, a port turned SCTP), not at every change.
    let before = old.map_or(&[][..], |o| &o.not_proxied[..]);
    for np in &new.not_proxied {
        if np.reason == NotProxiedReason::Sctp && !before.contains(np) {
            tracing::warn!(service = %np.name, "not proxied: {}", np.reason);
        } else {
            tracing::debug!(service = %np.name, "not proxied: {}", np.reason);
        }
    }
}
