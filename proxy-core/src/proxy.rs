//! A running data plane: its workers' threads, and how the control plane starts them, swaps
//! their table and stops them.
//!
//! Every wait here is a future over `flume` channels (no timer, no runtime of its own), so the
//! control plane awaits it on its own runtime without blocking the thread that also answers
//! the admin API and the health ports, and bounds it with its own timers.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use config::{Config, FrontendKey, Table};
use tokio_util::sync::CancellationToken;

use crate::task::Panics;
use crate::telemetry::Telemetry;
use crate::{
    udp, worker, BoundFrontend, FdBudget, FlowList, IoDriverKind, Listeners, ProxyError,
    ProxyOptions, ReloadReport, SocketSource, UdpFlowInfo,
};

/// A running data plane.
#[derive(Debug)]
pub struct Proxy {
    table: Arc<ArcSwap<Table>>,
    frontends: Vec<BoundFrontend>,
    resolved: HashMap<(String, SocketAddr), SocketAddr>,
    /// The socket key of every frontend served, to release it when it goes.
    socket_keys: HashMap<FrontendKey, String>,
    sockets: Arc<dyn SocketSource>,
    workers: usize,
    share_ports: bool,
    commands: Vec<flume::Sender<worker::Command>>,
    drivers: Vec<IoDriverKind>,
    shutdown: CancellationToken,
    /// Set before `shutdown` when a successor process takes the sockets over.
    handed_over_at_stop: Arc<AtomicBool>,
    done_rx: flume::Receiver<usize>,
    /// Workers that reported drained so far.
    drained: usize,
    threads: Vec<JoinHandle<()>>,
    telemetry: Arc<Telemetry>,
    fds: Arc<FdBudget>,
    panics: Arc<Panics>,
}

/// A table swap the workers are applying (see [`Proxy::reload`]).
#[derive(Debug)]
pub struct Reload {
    /// What the swap changed.
    pub report: ReloadReport,
    acks: flume::Receiver<()>,
    workers: usize,
}

impl Reload {
    /// Resolves once every worker has applied the swap (new frontends served, UDP flows of
    /// unusable backends ended): "reloaded" then means in effect. Bound it with a timeout: a
    /// worker busy for longer applies it a little later.
    ///
    /// # Cancel safety
    ///
    /// Dropping it changes nothing: the workers apply the swap either way.
    pub async fn applied(&self) {
        for _ in 0..self.workers {
            if self.acks.recv_async().await.is_err() {
                return;
            }
        }
    }
}

impl Proxy {
    /// Starts the workers on listeners bound by [`crate::bind`] for the services of `table`.
    /// Resolves once every worker runs its accept loops, so connections are served from then
    /// on.
    pub async fn start(
        table: Arc<ArcSwap<Table>>,
        listeners: Listeners,
        options: &ProxyOptions,
    ) -> Result<Proxy, ProxyError> {
        let Listeners {
            workers,
            mut groups,
            resolved,
            socket_keys,
            sockets,
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
        let handed_over_at_stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = flume::unbounded();
        let (done_tx, done_rx) = flume::unbounded();
        let shared = WorkerShared {
            table: &table,
            options,
            shutdown: &shutdown,
            handed_over_at_stop: &handed_over_at_stop,
            ready: &ready_tx,
            done: &done_tx,
            telemetry: &telemetry,
            panics: &panics,
        };
        let (threads, commands) = spawn_workers(workers, &mut groups, &shared)?;
        drop(ready_tx);
        let drivers = wait_ready(&ready_rx, workers, &shutdown).await?;
        Ok(Proxy {
            table,
            frontends,
            resolved,
            socket_keys,
            sockets,
            workers,
            share_ports: options.share_ports,
            commands,
            drivers,
            shutdown,
            handed_over_at_stop,
            done_rx,
            drained: 0,
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
    /// reset `backend_drain` after the swap, or run until they end when it is `None`. UDP
    /// flows to backends that are no longer usable end. [`Reload::applied`] tells when every
    /// worker has applied it.
    pub fn reload(
        &mut self,
        mut config: Config,
        backend_drain: Option<Duration>,
    ) -> Result<Reload, ProxyError> {
        let existing: HashSet<FrontendKey> = self.frontends.iter().map(|f| f.key).collect();
        let mut fresh = Listeners {
            workers: self.workers,
            groups: Vec::new(),
            resolved: self.resolved.clone(),
            socket_keys: HashMap::new(),
            sockets: Arc::clone(&self.sockets),
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
            if let Some(socket_key) = self.socket_keys.remove(key) {
                self.sockets.release(&socket_key);
            }
        }
        self.socket_keys.extend(fresh.socket_keys);
        self.frontends.retain(|f| wanted.contains(&f.key));
        let (applied, acks) = flume::unbounded();
        for tx in &self.commands {
            let _ = tx.send(worker::Command::BackendsRemoved {
                table: Arc::clone(&table),
                deadline: backend_drain,
                applied: applied.clone(),
            });
        }
        self.resolved = fresh.resolved;
        Ok(Reload {
            report: ReloadReport {
                version: table.version(),
                added,
                removed,
            },
            acks,
            workers: self.commands.len(),
        })
    }

    /// The current table.
    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Where the current table is published: what the workers read at every pick (the
    /// health checks read it too, and mark backends in it).
    pub fn published(&self) -> Arc<ArcSwap<Table>> {
        Arc::clone(&self.table)
    }

    /// Frontends with the addresses actually bound.
    pub fn frontends(&self) -> &[BoundFrontend] {
        &self.frontends
    }

    /// The data plane's histograms, counters and decision log, for scrapers and log writers.
    pub fn telemetry(&self) -> Arc<Telemetry> {
        Arc::clone(&self.telemetry)
    }

    /// A handle that ends the workers' sessions to one backend, for the health checks.
    pub fn session_cutter(&self) -> crate::SessionCutter {
        crate::SessionCutter {
            commands: self.commands.clone(),
        }
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

    /// Stops accepting on every worker at once (listeners are shut down: new connections are
    /// refused); open connections go on until they end, [`Proxy::cut`] or the process exits.
    pub fn stop_accepting(&self) {
        self.shutdown.cancel();
    }

    /// Stops reading every frontend on every worker and leaves every listening socket as it
    /// is, for the successor process that serves the same sockets: what is queued on them is
    /// its to take. Resolves with the workers' UDP flows (final: nothing opens a flow any
    /// more), for the successor to keep their clients on their backends. Open connections go
    /// on as after [`Proxy::stop_accepting`]; the flows relay their backends' replies until
    /// the drain ends.
    ///
    /// # Cancel safety
    /// Dropping it leaves the workers stopping as asked; the flows are lost.
    pub async fn hand_over(&self) -> Vec<UdpFlowInfo> {
        let (tx, rx) = flume::unbounded();
        for worker in &self.commands {
            let _ = worker.send(worker::Command::HandOver(tx.clone()));
        }
        // A worker drops its sender once it has answered, a stopped one at once.
        drop(tx);
        let mut flows = Vec::new();
        while let Ok(mut some) = rx.recv_async().await {
            flows.append(&mut some);
        }
        self.handed_over_at_stop.store(true, Relaxed);
        self.shutdown.cancel();
        flows
    }

    /// The UDP frontends start reading (they were held with [`ProxyOptions::udp_held`]).
    pub fn open_udp(&self) {
        for worker in &self.commands {
            let _ = worker.send(worker::Command::OpenUdp);
        }
    }

    /// Resolves once every worker has drained (after [`Proxy::stop_accepting`]): no
    /// connection open. Bound it with the drain timeout.
    ///
    /// # Cancel safety
    ///
    /// Workers that reported before the future was dropped stay counted.
    pub async fn drained(&mut self) {
        while self.drained < self.threads.len() {
            if self.done_rx.recv_async().await.is_err() {
                return;
            }
            self.drained += 1;
        }
    }

    /// Workers that drained so far.
    pub fn workers_drained(&self) -> usize {
        self.drained
    }

    /// The drain deadline passed: every connection still open is reset on both sides (a peer
    /// must not take a cut-short transfer for a complete one), and its bytes are counted as
    /// its relay ends. Resolves with how many connections there were, once every worker still
    /// running has answered; [`Proxy::drained`] then tells when they have all ended.
    ///
    /// # Cancel safety
    ///
    /// Dropping it (a timeout) leaves the resets asked for; the count is lost.
    pub async fn cut(&self) -> usize {
        let (tx, rx) = flume::unbounded();
        for worker in &self.commands {
            let _ = worker.send(worker::Command::Cut(tx.clone()));
        }
        // A worker drops its sender once it has answered, a stopped one at once.
        drop(tx);
        let mut reset = 0;
        while let Ok(n) = rx.recv_async().await {
            reset += n;
        }
        reset
    }

    /// Joins the worker threads if every one has drained; otherwise leaves them to process
    /// exit. Returns whether they were joined.
    pub fn join(self) -> bool {
        if self.drained < self.threads.len() {
            return false;
        }
        for t in self.threads {
            let _ = t.join();
        }
        true
    }
}

/// Waits until each of `workers` workers says it runs (with its driver) or failed to start;
/// on a failure the others are told to stop (`shutdown`) and the failure returned.
async fn wait_ready(
    ready: &flume::Receiver<Result<IoDriverKind, ProxyError>>,
    workers: usize,
    shutdown: &CancellationToken,
) -> Result<Vec<IoDriverKind>, ProxyError> {
    let mut drivers = Vec::with_capacity(workers);
    for _ in 0..workers {
        match ready.recv_async().await {
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

/// What every worker of a [`Proxy`] shares, for [`spawn_workers`].
struct WorkerShared<'a> {
    table: &'a Arc<ArcSwap<Table>>,
    options: &'a ProxyOptions,
    shutdown: &'a CancellationToken,
    handed_over_at_stop: &'a Arc<AtomicBool>,
    ready: &'a flume::Sender<Result<IoDriverKind, ProxyError>>,
    done: &'a flume::Sender<usize>,
    telemetry: &'a Arc<Telemetry>,
    panics: &'a Arc<Panics>,
}

/// Worker threads' handles, and where to send each one commands.
type Spawned = (Vec<JoinHandle<()>>, Vec<flume::Sender<worker::Command>>);

/// Starts `workers` worker threads, each with one socket of every group of `groups`; returns
/// their handles and where to send each one commands.
fn spawn_workers(
    workers: usize,
    groups: &mut [crate::listener::ListenGroup],
    shared: &WorkerShared<'_>,
) -> Result<Spawned, ProxyError> {
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
            table: Arc::clone(shared.table),
            listeners,
            driver: shared.options.io_driver,
            buffer_size: shared.options.buffer_size,
            udp: udp::UdpWake {
                busy_poll: shared.options.busy_poll,
                coalesce: shared.options.udp_coalesce,
                held: shared.options.udp_held,
            },
            shutdown: shared.shutdown.clone(),
            handed_over_at_stop: Arc::clone(shared.handed_over_at_stop),
            ready: shared.ready.clone(),
            done: shared.done.clone(),
            commands: command_rx,
            telemetry: Arc::clone(shared.telemetry),
            handed_over: Arc::clone(&shared.options.handed_over),
            fds: Arc::clone(&shared.options.fd_budget),
            panics: Arc::clone(shared.panics),
        };
        let handle = std::thread::Builder::new()
            .name(format!("ringlb-worker-{id}"))
            .spawn(move || worker::run(ctx))
            .map_err(ProxyError::Spawn)?;
        threads.push(handle);
    }
    Ok((threads, commands))
}
