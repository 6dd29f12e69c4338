//! The immutable endpoint table that workers read, and its builder.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use std::num::NonZeroUsize;
use std::time::Instant;

use balancers::outlier::monotonic_ms;
use balancers::{
    Affinity, BackendSpec, BackendState, Scheduler, SlowStart, DEFAULT_AFFINITY_CAPACITY,
};

use crate::model::{Config, Protocol, Service};

/// What a worker looks a new connection up by: the protocol and the local address it hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrontendKey {
    /// Transport protocol.
    pub protocol: Protocol,
    /// The local (listen) address.
    pub addr: SocketAddr,
}

/// What of one service is node-wide and outlives a table rebuild that keeps the service's
/// name: its identity, by which workers key their own counters of the service (they sum at
/// scrape time, see the data plane's telemetry), and the UDP flow gauge that `max_flows`
/// bounds across every worker. Nothing else is shared: a counter here would cost every
/// worker a contended atomic per event.
#[derive(Debug, Default)]
pub struct ServiceState {
    /// UDP flows open now, node-wide.
    flows: AtomicU64,
}

impl ServiceState {
    /// Takes a place for a new UDP flow when fewer than `limit` are open (node-wide); `false`
    /// (nothing taken) at the limit. [`ServiceState::release_flow`] gives it back.
    #[inline]
    pub fn take_flow(&self, limit: u64) -> bool {
        if self.flows.fetch_add(1, Relaxed) >= limit {
            self.flows.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }

    /// Gives back a place taken by [`ServiceState::take_flow`] (the flow ended).
    #[inline]
    pub fn release_flow(&self) {
        let before = self.flows.fetch_sub(1, Relaxed);
        debug_assert!(before > 0, "a flow place released twice");
    }

    /// UDP flows open now, node-wide.
    pub fn flows(&self) -> u64 {
        self.flows.load(Relaxed)
    }
}

/// One backend as workers see it.
#[derive(Clone, Debug)]
pub struct BackendEntry {
    /// Where to connect.
    pub address: SocketAddr,
    /// Configured weight.
    pub weight: u32,
}

/// One service in the table: its checked config, scheduler and shared state.
#[derive(Debug)]
pub struct ServiceEntry {
    /// The validated service definition.
    pub service: Service,
    /// `None` when the service has no backend (connections are refused).
    pub scheduler: Option<Scheduler>,
    /// Backends, aligned with `states` and with the scheduler's indices.
    pub backends: Vec<BackendEntry>,
    /// Node-wide per-backend state, aligned with `backends`.
    pub states: Vec<Arc<BackendState>>,
    /// The service's node-wide state, carried across rebuilds by service name.
    pub state: Arc<ServiceState>,
    /// ClientIP session affinity (node-wide: shared by every worker), when configured.
    pub affinity: Option<Arc<Affinity>>,
}

/// An immutable snapshot of every service; swapped whole, never mutated.
#[derive(Debug, Default)]
pub struct Table {
    version: u64,
    services: Vec<Arc<ServiceEntry>>,
    frontends: HashMap<FrontendKey, Arc<ServiceEntry>>,
}

impl Table {
    /// Builds the table for `config`. A service equal to its namesake in `previous` keeps its
    /// entry as it is; for a changed one, its [`ServiceState`] and the state of backends that also
    /// exist in `previous` (same service name; same backend address) are carried over, so load
    /// counts and statistics survive the swap.
    pub fn build(config: &Config, previous: Option<&Table>) -> Table {
        let prev: HashMap<&str, &Arc<ServiceEntry>> = previous
            .map(|t| {
                t.services
                    .iter()
                    .map(|s| (s.service.name.as_str(), s))
                    .collect()
            })
            .unwrap_or_default();
        let mut services = Vec::with_capacity(config.services.len());
        let mut frontends = HashMap::new();
        for svc in &config.services {
            let old = prev.get(svc.name.as_str()).copied();
            // An unchanged service keeps its entry: scheduler, state and affinity as they are.
            let entry = match old {
                Some(o) if o.service == *svc => Arc::clone(o),
                _ => Arc::new(build_service(svc, old)),
            };
            for addr in &svc.listen {
                let key = FrontendKey {
                    protocol: svc.protocol,
                    addr: *addr,
                };
                frontends.insert(key, Arc::clone(&entry));
            }
            services.push(entry);
        }
        Table {
            version: previous.map_or(1, |t| t.version + 1),
            services,
            frontends,
        }
    }

    /// A new table with `upserts` added or replacing their namesakes and the services named in
    /// `removals` gone; everything else is shared with `self`. This is the incremental path
    /// (one watch event, one service): it costs a copy of the top-level index plus the changed
    /// services, not a rebuild of the world. State is carried as in [`Table::build`].
    pub fn apply(&self, upserts: &[Service], removals: &[&str]) -> Table {
        let mut services = self.services.clone();
        let mut frontends = self.frontends.clone();
        let unmap = |frontends: &mut HashMap<FrontendKey, Arc<ServiceEntry>>, svc: &Service| {
            for addr in &svc.listen {
                frontends.remove(&FrontendKey {
                    protocol: svc.protocol,
                    addr: *addr,
                });
            }
        };
        services.retain(|s| {
            let keep = !removals.contains(&s.service.name.as_str());
            if !keep {
                unmap(&mut frontends, &s.service);
            }
            keep
        });
        for svc in upserts {
            let at = services.iter().position(|s| s.service.name == svc.name);
            let old = at.map(|i| Arc::clone(&services[i]));
            if let Some(o) = &old {
                unmap(&mut frontends, &o.service);
            }
            let entry = Arc::new(build_service(svc, old.as_ref()));
            for addr in &svc.listen {
                let key = FrontendKey {
                    protocol: svc.protocol,
                    addr: *addr,
                };
                frontends.insert(key, Arc::clone(&entry));
            }
            match at {
                Some(i) => services[i] = entry,
                None => services.push(entry),
            }
        }
        Table {
            version: self.version + 1,
            services,
            frontends,
        }
    }

    /// The table with the schedulers of services in slow start rebuilt for their backends'
    /// weights at `now` (see [`SlowStart`]); `None` when no scheduler's weights changed.
    /// It keeps the version: the configuration is the same. Everything but the changed
    /// schedulers is shared with `self`.
    pub fn reramped(&self, now: u64) -> Option<Table> {
        let changed: Vec<(usize, Arc<ServiceEntry>)> = self
            .services
            .iter()
            .enumerate()
            .filter_map(|(i, entry)| Some((i, reramp(entry, now)?)))
            .collect();
        if changed.is_empty() {
            return None;
        }
        let mut services = self.services.clone();
        let mut frontends = self.frontends.clone();
        for (i, next) in changed {
            for addr in &next.service.listen {
                let key = FrontendKey {
                    protocol: next.service.protocol,
                    addr: *addr,
                };
                frontends.insert(key, Arc::clone(&next));
            }
            services[i] = next;
        }
        Some(Table {
            version: self.version,
            services,
            frontends,
        })
    }

    /// The service behind a frontend.
    #[inline]
    pub fn lookup(&self, key: &FrontendKey) -> Option<&Arc<ServiceEntry>> {
        self.frontends.get(key)
    }

    /// All services, in configuration order.
    pub fn services(&self) -> &[Arc<ServiceEntry>] {
        &self.services
    }

    /// The state of every backend of every service (by identity; see [`BackendState`]).
    pub fn backend_states(&self) -> impl Iterator<Item = &Arc<BackendState>> {
        self.services.iter().flat_map(|s| s.states.iter())
    }

    /// Increases by one with every rebuild.
    pub fn version(&self) -> u64 {
        self.version
    }
}

fn build_service(svc: &Service, old: Option<&Arc<ServiceEntry>>) -> ServiceEntry {
    let old_states: HashMap<SocketAddr, &Arc<BackendState>> = old
        .map(|o| {
            o.backends
                .iter()
                .map(|b| b.address)
                .zip(o.states.iter())
                .collect()
        })
        .unwrap_or_default();
    let backends: Vec<BackendEntry> = svc
        .backends
        .iter()
        .map(|b| BackendEntry {
            address: b.address,
            weight: b.weight,
        })
        .collect();
    let states = svc
        .backends
        .iter()
        .map(|b| match old_states.get(&b.address) {
            Some(s) => {
                s.set_max_connections(b.max_connections);
                Arc::clone(s)
            }
            None => {
                let state = BackendState::new(b.max_connections);
                if old.is_some() {
                    // Added to a service that is serving: a slow start ramps it up.
                    state.came_back(monotonic_ms());
                }
                Arc::new(state)
            }
        })
        .collect::<Vec<_>>();
    let mut specs: Vec<BackendSpec> = svc.backends.iter().map(|b| b.spec()).collect();
    if let Some(ramped) = ramped_specs(svc, &specs, &states, monotonic_ms()) {
        specs = ramped;
    }
    ServiceEntry {
        service: svc.clone(),
        scheduler: Scheduler::build(&svc.scheduler, &specs).ok(),
        affinity: svc
            .session_affinity
            .map(|timeout| affinity_for(timeout, &backends, old)),
        backends,
        states,
        state: old.map_or_else(Default::default, |o| Arc::clone(&o.state)),
    }
}

/// The weights to build `svc`'s scheduler with while its slow start ramps a backend.
fn ramped_specs(
    svc: &Service,
    specs: &[BackendSpec],
    states: &[Arc<BackendState>],
    now: u64,
) -> Option<Vec<BackendSpec>> {
    SlowStart::new(svc.slow_start?).weights(svc.scheduler.kind, specs, states, now)
}

/// `entry` with its scheduler rebuilt for the weights its slow start gives at `now`, when
/// they are not the ones it was built with.
fn reramp(entry: &Arc<ServiceEntry>, now: u64) -> Option<Arc<ServiceEntry>> {
    let svc = &entry.service;
    svc.slow_start?;
    let built = entry.scheduler.as_ref()?.weights();
    let mut specs: Vec<BackendSpec> = svc.backends.iter().map(|b| b.spec()).collect();
    if let Some(ramped) = ramped_specs(svc, &specs, &entry.states, now) {
        specs = ramped;
    }
    if specs.iter().map(|s| s.weight).eq(built.iter().copied()) {
        return None;
    }
    Some(Arc::new(ServiceEntry {
        service: svc.clone(),
        scheduler: Scheduler::build(&svc.scheduler, &specs).ok(),
        backends: entry.backends.clone(),
        states: entry.states.clone(),
        state: Arc::clone(&entry.state),
        affinity: entry.affinity.clone(),
    }))
}

/// The affinity table of a service: the previous one when neither the timeout nor the backend
/// list changed, else a copy whose entries follow their backend to its new index (clients of a
/// removed backend lose their pin), else a new empty one.
fn affinity_for(
    timeout: std::time::Duration,
    backends: &[BackendEntry],
    old: Option<&Arc<ServiceEntry>>,
) -> Arc<Affinity> {
    let previous = old.and_then(|o| Some((o.affinity.as_ref()?, o)));
    if let Some((aff, o)) = previous.filter(|(aff, _)| aff.timeout() == timeout) {
        let same = o.backends.len() == backends.len()
            && o.backends
                .iter()
                .zip(backends)
                .all(|(a, b)| a.address == b.address);
        if same {
            return Arc::clone(aff);
        }
        let index: HashMap<SocketAddr, usize> = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.address, i))
            .collect();
        return Arc::new(aff.remapped(Instant::now(), |i| {
            index.get(&o.backends[i].address).copied()
        }));
    }
    let secs = u32::try_from(timeout.as_secs()).unwrap_or(u32::MAX);
    let capacity = NonZeroUsize::new(DEFAULT_AFFINITY_CAPACITY).expect("non-zero constant");
    // Validation keeps the timeout within 1 s..=24 h, which Affinity accepts.
    Arc::new(Affinity::new(secs, capacity).unwrap_or_default())
}
