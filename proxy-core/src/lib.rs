//! The ringlb data plane: workers, listeners, accept loops, connect with retry and the relay.
//!
//! [`Proxy::start`] binds one `SO_REUSEPORT` listener per frontend per worker, then runs each
//! worker as its own monoio runtime on its own named thread (io_uring with the ring flags that
//! make it pay, or epoll). Workers read the current [`config::Table`] with one `ArcSwap::load`
//! per new connection and never block on a lock. [`Proxy::shutdown`] stops accepting at once and
//! lets open connections finish until a deadline.
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
mod pool;
mod relay;
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
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use config::{Config, FrontendKey, Table};
use tokio_util::sync::CancellationToken;

pub use driver::{runtime, IoDriver, IoDriverKind, WorkerRuntime};
pub use error::ProxyError;
pub use fds::{is_exhaustion, nofile_limit, open_descriptors, FdBudget};
pub use sys::raise_nofile_limit;
pub use task::{PanicRecord, Panics, TaskKind};
pub use telemetry::{
    AffinityOutcome, CloseReason, ConnectError, Count, CountsSnapshot, Datagrams, Decision,
    DecisionLog, HistogramSnapshot, ServiceSnapshot, Telemetry, TelemetrySnapshot, DECISION_QUEUE,
};
pub use throttle::{Throttle, WARN_EVERY};
pub use udp::handover::{HandedOver, UdpFlowInfo};

/// Longer than any process lives: what a deadline too far for the clock is held to.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Relay buffer size: large buffers decide bulk throughput (see `shared/notes`), and a
/// connection only holds one while bytes are in flight.
pub const DEFAULT_BUFFER_SIZE: usize = 256 * 1024;

/// UDP receive coalescing's default pause: a NIC's interrupt moderation scale (tens of
/// microseconds), long enough for a loaded socket to gather a fuller batch.
pub const DEFAULT_UDP_COALESCE: Duration = Duration::from_micros(50);

/// How long [`Proxy::reload`] waits for every worker to apply a new table.
const APPLY_WAIT: Duration = Duration::from_secs(2);
/// After the drain deadline, how long [`Proxy::shutdown`] waits for the workers to reset what
/// is still open and count it.
const CUT_WAIT: Duration = Duration::from_secs(2);

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

/// What happened during [`Proxy::shutdown`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Workers that finished all their connections before the deadline.
    pub workers_drained: usize,
    /// Workers still serving connections at the deadline.
    pub workers_cut: usize,
    /// Connections still open at the deadline, reset on both sides.
    pub connections_reset: usize,
}

/// Listening sockets for every frontend of a configuration, one per worker, not yet served.
#[derive(Debug)]
pub struct Listeners {
    workers: usize,
    groups: Vec<listener::ListenGroup>,
    resolved: HashMap<(String, SocketAddr), SocketAddr>,
}

/// Binds every TCP frontend of `config`, `options.workers` sockets each, and rewrites listen
/// addresses with port 0 to the port the kernel picked, so the table built from `config`
/// afterwards names the real frontends. Fails on the first address that cannot be bound.
pub fn bind(config: &mut Config, options: &ProxyOptions) -> Result<Listeners, ProxyError> {
    let workers = options.workers.max(1);
    let mut listeners = Listeners {
        workers,
        groups: Vec::new(),
        resolved: HashMap::new(),
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
                let group = listener::bind_group(svc.protocol, *addr, self.workers, share)?;
                if configured.1.port() == 0 {
                    self.resolved.insert(configured, group.local_addr);
                }
                *addr = group.local_addr;
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

/// A running data plane.
#[derive(Debug)]
pub struct Proxy {
    table: Arc<ArcSwap<Table>>,
    frontends: Vec<BoundFrontend>,
    resolved: HashMap<(String, SocketAddr), SocketAddr>,
    workers: usize,
    share_ports: bool,
    commands: Vec<flume::Sender<worker::Command>>,
    drivers: Vec<IoDriverKind>,
    shutdown: CancellationToken,
    done_rx: mpsc::Receiver<usize>,
    threads: Vec<JoinHandle<()>>,
    telemetry: Arc<Telemetry>,
    fds: Arc<FdBudget>,
    panics: Arc<Panics>,
}

impl Proxy {
    /// Starts the workers on listeners bound by [`bind`] for the services of `table`. Returns
    /// once every worker runs its accept loops, so connections are served from then on.
    pub fn start(
        table: Arc<ArcSwap<Table>>,
        listeners: Listeners,
        options: &ProxyOptions,
    ) -> Result<Proxy, ProxyError> {
        let Listeners {
            workers,
            mut groups,
            resolved,
        } = listeners;
        let frontends = groups
            .iter()
            .map(|g| BoundFrontend {
                key: g.key,
                local_addr: g.local_addr,
            })
            .collect();

        let telemetry = Arc::new(Telemetry::new(workers, options.telemetry));
        let panics = Arc::new(Panics::default());
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let mut threads = Vec::with_capacity(workers);
        let mut commands = Vec::with_capacity(workers);
        for id in 0..workers {
            let (command_tx, command_rx) = flume::unbounded();
            commands.push(command_tx);
            let listeners = groups
                .iter_mut()
                .map(|g| (g.key, g.sockets.pop().expect("one socket per worker")))
                .collect();
            let ctx = worker::WorkerStart {
                id,
                table: Arc::clone(&table),
                listeners,
                driver: options.io_driver,
                buffer_size: options.buffer_size,
                udp: udp::UdpWake {
                    busy_poll: options.busy_poll,
                    coalesce: options.udp_coalesce,
                },
                shutdown: shutdown.clone(),
                ready: ready_tx.clone(),
                done: done_tx.clone(),
                commands: command_rx,
                telemetry: Arc::clone(&telemetry),
                handed_over: Arc::clone(&options.handed_over),
                fds: Arc::clone(&options.fd_budget),
                panics: Arc::clone(&panics),
            };
            let handle = std::thread::Builder::new()
                .name(format!("ringlb-worker-{id}"))
                .spawn(move || worker::run(ctx))
                .map_err(ProxyError::Spawn)?;
            threads.push(handle);
        }
        drop(ready_tx);
        let drivers = wait_ready(&ready_rx, workers, &shutdown)?;
        Ok(Proxy {
            table,
            frontends,
            resolved,
            workers,
            share_ports: options.share_ports,
            commands,
            drivers,
            shutdown,
            done_rx,
            threads,
            telemetry,
            fds: Arc::clone(&options.fd_budget),
            panics,
        })
    }

    /// Applies a new configuration without disturbing established connections: binds the
    /// frontends it adds (a failure changes nothing), publishes the new table with one atomic
    /// swap, then has every worker start accepting on the new frontends and stop on the removed
    /// ones. Connections keep the backend they have; those to a backend that left the table are
    /// closed `backend_drain` after the swap, or run until they end when it is `None`. UDP
    /// flows to backends that are no longer usable end. Returns once every worker has applied
    /// the change (waiting at most a couple of seconds).
    pub fn reload(
        &mut self,
        mut config: Config,
        backend_drain: Option<Duration>,
    ) -> Result<ReloadReport, ProxyError> {
        let existing: HashSet<FrontendKey> = self.frontends.iter().map(|f| f.key).collect();
        let mut fresh = Listeners {
            workers: self.workers,
            groups: Vec::new(),
            resolved: self.resolved.clone(),
        };
        fresh.bind_new(&mut config, &existing, self.share_ports)?;
        let wanted: HashSet<FrontendKey> = config
            .services
            .iter()
            .flat_map(|s| {
                s.listen.iter().map(|&addr| FrontendKey {
                    protocol: s.protocol,
                    addr,
                })
            })
            .collect();

        let old = self.table.load_full();
        let table = Arc::new(Table::build(&config, Some(&old)));
        self.table.store(Arc::clone(&table));

        let added: Vec<SocketAddr> = fresh.groups.iter().map(|g| g.local_addr).collect();
        for mut group in fresh.groups {
            for tx in &self.commands {
                let socket = group.sockets.pop().expect("one socket per worker");
                let _ = tx.send(worker::Command::Listen(group.key, socket));
            }
            self.frontends.push(BoundFrontend {
                key: group.key,
                local_addr: group.local_addr,
            });
        }
        let removed: Vec<SocketAddr> = existing.difference(&wanted).map(|k| k.addr).collect();
        for key in existing.difference(&wanted) {
            for tx in &self.commands {
                let _ = tx.send(worker::Command::Unlisten(*key));
            }
        }
        self.frontends.retain(|f| wanted.contains(&f.key));
        let (applied, acks) = mpsc::channel();
        for tx in &self.commands {
            let _ = tx.send(worker::Command::BackendsRemoved {
                table: Arc::clone(&table),
                deadline: backend_drain,
                applied: applied.clone(),
            });
        }
        drop(applied);
        // Return once every worker has applied the change (new frontends served, UDP flows of
        // unusable backends ended), so "reloaded" means in effect. Bounded: a worker busy
        // for longer applies it a little later.
        let deadline = Instant::now() + APPLY_WAIT;
        for _ in 0..self.commands.len() {
            if acks
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .is_err()
            {
                tracing::warn!("a worker did not confirm the new table within {APPLY_WAIT:?}");
                break;
            }
        }
        self.resolved = fresh.resolved;
        Ok(ReloadReport {
            version: table.version(),
            added,
            removed,
        })
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Frontends with the addresses actually bound.
    pub fn frontends(&self) -> &[BoundFrontend] {
        &self.frontends
    }

    /// The data plane's histograms, counters and decision log, for scrapers and log writers.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        Arc::clone(&self.telemetry)
    }

    /// A handle that lists the workers' live UDP flows, for the admin API.
    pub fn flow_list(&self) -> FlowList {
        FlowList {
            commands: self.commands.clone(),
        }
    }

    /// The data plane's share of the open-file limit, and what it holds now.
    pub fn fd_budget(&self) -> Arc<FdBudget> {
        Arc::clone(&self.fds)
    }

    /// The panics the workers caught (see [`Panics`]).
    pub fn panics(&self) -> Arc<Panics> {
        Arc::clone(&self.panics)
    }

    /// The I/O driver each worker ended up with.
    pub fn drivers(&self) -> &[IoDriverKind] {
        &self.drivers
    }

    /// Stops accepting on every worker at once, then waits up to `drain_timeout` for open
    /// connections to finish. Connections still open at the deadline are reset on both sides
    /// (a peer must not take a cut-short transfer for a complete one), and the workers count
    /// their bytes before this returns (waiting at most a couple of seconds more).
    pub fn shutdown(self, drain_timeout: Duration) -> DrainReport {
        self.shutdown.cancel();
        let now = Instant::now();
        // A timeout too long for the clock waits as long as the clock can.
        let deadline = now.checked_add(drain_timeout).unwrap_or(now + FOREVER);
        let total = self.threads.len();
        let wait_until = |deadline: Instant, done: &mut usize| {
            while *done < total {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.done_rx.recv_timeout(left) {
                    Ok(_) => *done += 1,
                    Err(_) => break,
                }
            }
        };
        let mut done = 0;
        wait_until(deadline, &mut done);
        let drained = done;
        let mut connections_reset = 0;
        if done < total {
            let (tx, rx) = mpsc::channel();
            let asked = self
                .commands
                .iter()
                .filter(|c| c.send(worker::Command::Cut(tx.clone())).is_ok())
                .count();
            drop(tx);
            let cut_deadline = Instant::now() + CUT_WAIT;
            for _ in 0..asked {
                let left = cut_deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(n) => connections_reset += n,
                    Err(_) => break,
                }
            }
            wait_until(cut_deadline, &mut done);
        }
        if done == total {
            for t in self.threads {
                let _ = t.join();
            }
        }
        DrainReport {
            workers_drained: drained,
            workers_cut: total - drained,
            connections_reset,
        }
    }
}

/// Waits until each of `workers` workers says it runs (with its driver) or failed to start;
/// on a failure the others are told to stop (`shutdown`) and the failure returned.
fn wait_ready(
    ready: &mpsc::Receiver<Result<IoDriverKind, ProxyError>>,
    workers: usize,
    shutdown: &CancellationToken,
) -> Result<Vec<IoDriverKind>, ProxyError> {
    let mut drivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        match ready.recv() {
            Ok(Ok(kind)) => drivers.push(kind),
            Ok(Err(e)) => {
                shutdown.cancel();
                return Err(e);
            }
            Err(_) => {
                shutdown.cancel();
                return Err(ProxyError::WorkerDied);
            }
        }
    }
    Ok(drivers)
}
