//! The ringlb data plane: workers, listeners, accept loops, connect with retry and the relay.
//!
//! [`Proxy::start`] binds one `SO_REUSEPORT` listener per frontend per worker, then runs each
//! worker as its own monoio runtime on its own named thread (io_uring with the ring flags that
//! make it pay, or epoll). Workers read the current [`config::Table`] with one `ArcSwap::load`
//! per new connection and never block on a lock. [`Proxy::stop_accepting`] stops accepting at
//! once; open connections finish, until [`Proxy::cut`] resets what is left at the drain
//! deadline. Every wait of the control plane on the workers is a future (`proxy.rs`).
//!
//! `LIFECYCLE.md` beside this file follows one TCP connection from accept to close.
//! [`Telemetry`] holds what workers record on the way (per-worker counters and histograms, summed
//! by scrapers) and the queue of the per-connection decision log, drained by the binary.
//!
//! This crate owns all data-plane I/O. It never parses files and knows nothing of Kubernetes.

mod alarm;
mod connect;
mod driver;
mod error;
mod fds;
mod idle;
mod listener;
mod outliers;
mod pool;
mod proxy;
mod proxy_protocol;
mod relay;
mod sockets;
mod stop;
mod sys;
mod task;
mod telemetry;
#[cfg(test)]
mod tests;
mod throttle;
mod udp;
mod worker;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use config::{Config, FrontendKey};

pub use driver::{runtime, IoDriver, IoDriverKind, WorkerRuntime};
pub use error::ProxyError;
pub use fds::{is_exhaustion, nofile_limit, open_descriptors, FdBudget};
pub use proxy::{Proxy, Reload};
pub use sockets::{
    bind as bind_sockets, LocalSockets, Opened, SocketKind, SocketSource, SocketSpec,
};
pub use sys::raise_nofile_limit;
pub use task::{PanicRecord, Panics, TaskKind};
pub use telemetry::{
    AffinityOutcome, BackendChange, BackendEvent, CloseReason, ConnectError, Count, CountsSnapshot,
    Datagrams, Decision, DecisionLog, HistogramSnapshot, Record, ServiceSnapshot, Telemetry,
    TelemetrySnapshot, DECISION_QUEUE,
};
pub use throttle::{Throttle, WARN_EVERY};
pub use udp::handover::{HandedOver, UdpFlowInfo};

/// Relay buffer size: large buffers decide bulk throughput (see `shared/notes`), and a
/// connection only holds one while bytes are in flight.
pub const DEFAULT_BUFFER_SIZE: usize = 256 * 1024;

/// UDP receive coalescing's default pause: a NIC's interrupt moderation scale (tens of
/// microseconds), long enough for a loaded socket to gather a fuller batch.
pub const DEFAULT_UDP_COALESCE: Duration = Duration::from_micros(50);

/// How the data plane runs.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Worker threads (each one runtime, one listener per frontend).
    pub workers: usize,
    /// Which I/O driver the workers use.
    pub io_driver: IoDriver,
    /// Allow another process to join our `SO_REUSEPORT` groups (off: a taken port is an error).
    pub share_ports: bool,
    /// Relay buffer size in bytes.
    pub buffer_size: usize,
    /// Low-latency mode for UDP: after each relayed datagram a worker keeps polling (without
    /// blocking) for this long before it may sleep (`None`: sleep at once). Trades a busy core
    /// for not paying a cross-core wake-up per datagram.
    pub busy_poll: Option<Duration>,
    /// UDP receive coalescing: a socket that a drain found behind its traffic (several
    /// datagrams waiting, not a full batch) waits this long before it is watched again, so its
    /// next drain relays a fuller batch (`None`: never pause). Ignored with `busy_poll`.
    pub udp_coalesce: Option<Duration>,
    /// UDP flows handed over by the process this one replaces (see [`HandedOver`]): their
    /// clients keep their backends. Empty by default.
    pub handed_over: Arc<HandedOver>,
    /// Collect per-worker histograms, connect errors, close reasons and affinity outcomes (see
    /// [`Telemetry`]); off costs no clock read. The services' counts are kept either way.
    pub telemetry: bool,
    /// The data plane's share of the open-file limit (no cap by default); the caller sets its
    /// cap once it knows what the rest of the process holds.
    pub fd_budget: Arc<FdBudget>,
    /// Where the frontends' listening sockets come from (bound here by default; ringlb's
    /// master hands its workers sockets it keeps across restarts and upgrades).
    pub sockets: Arc<dyn SocketSource>,
    /// UDP frontends read nothing until [`Proxy::open_udp`]: a successor process first takes
    /// its predecessor's flows ([`ProxyOptions::handed_over`]), so their clients keep their
    /// backends.
    pub udp_held: bool,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            io_driver: IoDriver::Auto,
            share_ports: false,
            buffer_size: DEFAULT_BUFFER_SIZE,
            busy_poll: None,
            udp_coalesce: Some(DEFAULT_UDP_COALESCE),
            handed_over: HandedOver::new(),
            telemetry: true,
            fd_budget: Arc::new(FdBudget::default()),
            sockets: Arc::new(LocalSockets),
            udp_held: false,
        }
    }
}

/// A frontend the proxy listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundFrontend {
    /// The frontend (with the port actually bound).
    pub key: FrontendKey,
    /// The address actually bound.
    pub local_addr: SocketAddr,
}

/// Listening sockets for every frontend of a configuration, one per worker, not yet served.
#[derive(Debug)]
pub struct Listeners {
    workers: usize,
    groups: Vec<listener::ListenGroup>,
    resolved: HashMap<(String, SocketAddr), SocketAddr>,
    /// The [`SocketSpec::key`] of every frontend bound.
    socket_keys: HashMap<FrontendKey, String>,
    sockets: Arc<dyn SocketSource>,
}

/// Opens every frontend of `config`, `options.workers` sockets each, from `options.sockets`,
/// and rewrites listen addresses with port 0 to the port bound, so the table built from
/// `config` afterwards names the real frontends. Fails on the first that cannot be opened.
pub fn bind(config: &mut Config, options: &ProxyOptions) -> Result<Listeners, ProxyError> {
    let workers = options.workers.max(1);
    let mut listeners = Listeners {
        workers,
        groups: Vec::new(),
        resolved: HashMap::new(),
        socket_keys: HashMap::new(),
        sockets: Arc::clone(&options.sockets),
    };
    listeners.bind_new(config, &HashSet::new(), options.share_ports)?;
    Ok(listeners)
}

impl Listeners {
    /// Binds every frontend of `config` not in `existing`, rewriting port-0 addresses to the
    /// bound port (one a previous bind already resolved for the same service keeps its port).
    fn bind_new(
        &mut self,
        config: &mut Config,
        existing: &HashSet<FrontendKey>,
        share: bool,
    ) -> Result<(), ProxyError> {
        for svc in &mut config.services {
            for addr in &mut svc.listen {
                let configured = (svc.name.clone(), *addr);
                if let Some(bound) = self.resolved.get(&configured) {
                    *addr = *bound;
                }
                let key = FrontendKey {
                    protocol: svc.protocol,
                    addr: *addr,
                };
                if existing.contains(&key) || self.groups.iter().any(|g| g.key == key) {
                    continue;
                }
                let spec =
                    SocketSpec::frontend(&svc.name, svc.protocol, *addr, self.workers, share);
                let group = listener::ListenGroup::new(svc.protocol, self.sockets.open(&spec)?);
                if configured.1.port() == 0 {
                    self.resolved.insert(configured, group.local_addr);
                }
                *addr = group.local_addr;
                self.socket_keys.insert(group.key, spec.key);
                self.groups.push(group);
            }
        }
        Ok(())
    }
}

/// What a [`Proxy::reload`] changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadReport {
    /// The new table's version.
    pub version: u64,
    /// Frontends that started listening.
    pub added: Vec<SocketAddr>,
    /// Frontends that stopped listening (their open connections go on).
    pub removed: Vec<SocketAddr>,
}

/// Ends, from any thread, the open connections and UDP flows of a running [`Proxy`] to one
/// backend: what a health check that marks a backend down does when its service asks for
/// it (`on_marked_down: shutdown-sessions`, HAProxy's).
#[derive(Clone, Debug)]
pub struct SessionCutter {
    commands: Vec<flume::Sender<worker::Command>>,
}

impl SessionCutter {
    /// Has every worker reset its connections to `backend` (by identity: the state the table
    /// holds for it) and end its UDP flows to it. Returns at once; the workers do it as they
    /// read their commands.
    pub fn cut(&self, backend: &Arc<balancers::BackendState>) {
        for worker in &self.commands {
            let _ = worker.send(worker::Command::CutBackend(Arc::clone(backend)));
        }
    }
}

/// Lists the live UDP flows of a running [`Proxy`] from any thread.
#[derive(Clone, Debug)]
pub struct FlowList {
    commands: Vec<flume::Sender<worker::Command>>,
}

impl FlowList {
    /// Appends every worker's live UDP flows to `out`, as each worker answers; returns once
    /// all have (a stopped worker does not count). Bound the wait with a timeout.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future (a timeout) keeps in `out` the flows of the workers that answered;
    /// the others are left out, and their late answers are discarded.
    pub async fn udp(&self, out: &mut Vec<UdpFlowInfo>) {
        let (tx, rx) = flume::unbounded();
        for worker in &self.commands {
            let _ = worker.send(worker::Command::UdpFlows(tx.clone()));
        }
        // Each worker drops its sender once it has answered, a stopped one at once: the
        // channel ends when every worker has answered or is gone.
        drop(tx);
        while let Ok(mut flows) = rx.recv_async().await {
            out.append(&mut flows);
        }
    }
}
