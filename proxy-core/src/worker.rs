//! One worker: a monoio runtime on its own thread, its listeners and accept loops.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use balancers::Flow;
use config::{FrontendKey, Table};
use monoio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::connect;
use crate::driver::{self, IoDriver, IoDriverKind};
use crate::fds::{is_exhaustion, FdBudget, Fds};
use crate::idle::IdleTimers;
use crate::listener::ListenSocket;
use crate::outliers;
use crate::pool::BufferPool;
use crate::relay::{relay, PeerPair, RelayEnd};
use crate::stop::{ready_or_stop, Stop};
use crate::sys::{abort, accept, set_reset_on_close, with_socket};
use crate::task::{self, Panics, TaskKind};
use crate::telemetry::{CloseReason, ConnEnd, Count, ServiceStats, Telemetry, WorkerTelemetry};
use crate::throttle::Throttle;
use crate::udp::handover::{HandedOver, UdpFlowInfo};
use crate::udp::{Udp, UdpFrontend, UdpWake};
use crate::ProxyError;

/// Free relay buffers a worker keeps for reuse.
const POOL_KEEP: usize = 64;
/// Pause after the accept loop hit a resource limit (EMFILE, ENFILE, ENOBUFS, ENOMEM).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often a draining worker checks whether its last connection ended.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// After a handover, a worker keeps its UDP flows until none has seen a datagram for this
/// long: replies its backends still send reach their clients (the successor has the clients'
/// next datagrams).
const UDP_LINGER: Duration = Duration::from_secs(2);

/// Everything a worker thread starts with.
pub(crate) struct WorkerStart {
    pub(crate) id: usize,
    pub(crate) table: Arc<ArcSwap<Table>>,
    pub(crate) listeners: Vec<(FrontendKey, ListenSocket)>,
    pub(crate) driver: IoDriver,
    pub(crate) buffer_size: usize,
    pub(crate) udp: UdpWake,
    pub(crate) shutdown: CancellationToken,
    /// Read when `shutdown` fires: a successor process serves the same sockets, so they are
    /// left untouched (else they are shut down, refusing new connections at once).
    pub(crate) handed_over_at_stop: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) ready: flume::Sender<Result<IoDriverKind, ProxyError>>,
    pub(crate) done: flume::Sender<usize>,
    pub(crate) commands: flume::Receiver<Command>,
    pub(crate) telemetry: Arc<Telemetry>,
    pub(crate) handed_over: Arc<HandedOver>,
    pub(crate) fds: Arc<FdBudget>,
    pub(crate) panics: Arc<Panics>,
}

/// What the control plane asks of a running worker.
#[derive(Debug)]
pub(crate) enum Command {
    /// Serve a new frontend with this worker's socket of its group.
    Listen(FrontendKey, ListenSocket),
    /// Stop accepting on a frontend; its open connections go on.
    Unlisten(FrontendKey),
    /// The table was swapped: open connections to backends that are not in `table` are closed
    /// at `deadline` (`None`: they may run until they end). UDP flows to backends that are no
    /// longer usable end at once.
    BackendsRemoved {
        table: Arc<Table>,
        deadline: Option<Duration>,
        /// Told once this worker has applied the swap (and every command before it).
        applied: flume::Sender<()>,
    },
    /// Its health checks marked this backend down and its service asks for its sessions to
    /// end: reset its open connections and end its UDP flows now.
    CutBackend(Arc<balancers::BackendState>),
    /// List this worker's live UDP flows.
    UdpFlows(flume::Sender<Vec<UdpFlowInfo>>),
    /// The shutdown's drain deadline passed: reset every connection still open, both sides,
    /// and say how many there were.
    Cut(flume::Sender<usize>),
    /// A successor process takes this worker's sockets over: stop reading every frontend
    /// without touching its socket, and reply with the UDP flows (final: no frontend reads
    /// any more), which keep relaying their backends' replies until the drain ends.
    HandOver(flume::Sender<Vec<UdpFlowInfo>>),
    /// The UDP frontends may start reading (see `UdpWake::held`).
    OpenUdp,
}

/// One frontend's socket on this worker.
enum Frontend {
    Tcp {
        listener: Rc<TcpListener>,
        stop: Rc<Stop>,
    },
    Udp(Rc<UdpFrontend>),
}

impl Frontend {
    /// Nobody serves the frontend after this worker (it left the config, or ringlb stops):
    /// new connections are refused at once (`shutdown(2)` on the listening socket; the ones
    /// queued are reset) and the accept loop ends. UDP stops reading the same way.
    fn close(&self) {
        match self {
            Frontend::Tcp { listener, stop } => {
                stop.close();
                let _ = with_socket(&**listener, |s| s.shutdown(std::net::Shutdown::Both));
            }
            Frontend::Udp(frontend) => frontend.close(),
        }
    }

    /// A successor process serves the same socket from now on: this worker stops taking
    /// connections (datagrams) and leaves the socket, and what is queued on it, untouched.
    fn hand_over(&self) {
        match self {
            Frontend::Tcp { stop, .. } => stop.stop(),
            Frontend::Udp(frontend) => frontend.hand_over(),
        }
    }
}

/// Per-worker state shared by the worker's tasks (single thread: plain `Cell`/`Rc`).
struct Worker {
    table: Arc<ArcSwap<Table>>,
    pool: BufferPool,
    idle: IdleTimers<PeerPair>,
    open: Cell<usize>,
    stopping: Cell<bool>,
    /// Past the shutdown's drain deadline: a connection that gets its backend now is reset.
    cutting: Cell<bool>,
    /// A successor took the sockets over: UDP flows relay their backends' replies until the
    /// drain ends.
    handing_over: Cell<bool>,
    frontends: RefCell<HashMap<FrontendKey, Frontend>>,
    udp: Rc<Udp>,
    telemetry: Rc<WorkerTelemetry>,
    /// The data plane's share of the open-file limit.
    fds: Arc<FdBudget>,
    /// Accepts failing for want of descriptors or memory.
    exhausted: Throttle,
    /// Connections reset because the budget was used up.
    over_budget: Throttle,
}

impl Worker {
    /// After a handover: some UDP flow here saw a datagram within [`UDP_LINGER`], so its
    /// backend may still answer through it (until the drain deadline cuts).
    fn udp_lingers(&self) -> bool {
        !self.cutting.get() && self.udp.quiet_for(Instant::now()) < UDP_LINGER
    }

    /// Worker `id`'s state, serving nothing yet; built on the worker's own thread.
    fn new(
        id: usize,
        table: Arc<ArcSwap<Table>>,
        buffer_size: usize,
        udp: UdpWake,
        telemetry: Rc<WorkerTelemetry>,
        handed_over: Arc<HandedOver>,
        fds: Arc<FdBudget>,
    ) -> Rc<Worker> {
        Rc::new(Worker {
            table,
            pool: BufferPool::new(buffer_size, POOL_KEEP),
            idle: IdleTimers::new(),
            open: Cell::new(0),
            stopping: Cell::new(false),
            cutting: Cell::new(false),
            handing_over: Cell::new(false),
            frontends: RefCell::new(HashMap::new()),
            udp: Rc::new(Udp::new(
                hash_seed(id),
                udp,
                Rc::clone(&telemetry),
                handed_over,
                Arc::clone(&fds),
            )),
            telemetry,
            fds,
            exhausted: Throttle::default(),
            over_budget: Throttle::default(),
        })
    }

    /// Starts serving `socket` (converted on this thread so it registers here).
    fn listen(self: &Rc<Self>, key: FrontendKey, socket: ListenSocket) -> std::io::Result<()> {
        let frontend = match socket {
            ListenSocket::Tcp(listener) => {
                let listener = Rc::new(TcpListener::from_std(listener)?);
                let stop = Rc::new(Stop::default());
                task::spawn(
                    TaskKind::Accept,
                    accept_loop(Rc::clone(&listener), key, Rc::clone(&stop), Rc::clone(self)),
                );
                Frontend::Tcp { listener, stop }
            }
            ListenSocket::Udp(socket) => {
                Frontend::Udp(self.udp.listen(key, socket, Arc::clone(&self.table))?)
            }
        };
        if let Some(old) = self.frontends.borrow_mut().insert(key, frontend) {
            old.close();
        }
        Ok(())
    }

    fn unlisten(&self, key: &FrontendKey) {
        if let Some(f) = self.frontends.borrow_mut().remove(key) {
            f.close();
            if let Frontend::Udp(_) = f {
                self.udp.unlisten(key);
            }
        }
    }

    async fn commands(self: Rc<Self>, rx: flume::Receiver<Command>) {
        while let Ok(cmd) = rx.recv_async().await {
            match cmd {
                Command::Listen(key, listener) => {
                    if let Err(e) = self.listen(key, listener) {
                        tracing::error!(frontend = %key.addr, error = %e, "cannot serve the new frontend");
                    }
                }
                Command::Unlisten(key) => self.unlisten(&key),
                Command::BackendsRemoved {
                    table,
                    deadline,
                    applied,
                } => {
                    // Against the live table, which is this one or newer: a worker that
                    // applies a swap late must not end the flows, or forget the counts, of
                    // services and backends a later swap brought back or added.
                    let live_table = self.table.load();
                    self.udp.revalidate(&live_table);
                    self.telemetry.retain(&live_table);
                    let live: HashSet<*const balancers::BackendState> =
                        table.backend_states().map(Arc::as_ptr).collect();
                    let at = monoio::time::Instant::now() + deadline.unwrap_or(Duration::ZERO);
                    if deadline.is_some() {
                        self.idle
                            .close_matching(at, |c| !live.contains(&c.backend()));
                    }
                    let _ = applied.send(());
                }
                Command::CutBackend(backend) => {
                    let at = monoio::time::Instant::now();
                    let cut = Arc::as_ptr(&backend);
                    self.idle.close_matching(at, |c| c.backend() == cut);
                    self.udp.end_flows_to(&self.table.load(), cut);
                }
                Command::UdpFlows(reply) => {
                    let _ = reply.send(self.udp.flows(Instant::now()));
                }
                Command::HandOver(reply) => {
                    self.handing_over.set(true);
                    for (_, frontend) in self.frontends.borrow_mut().drain() {
                        frontend.hand_over();
                    }
                    let _ = reply.send(self.udp.flows(Instant::now()));
                }
                Command::OpenUdp => self.udp.open_gate(),
                Command::Cut(reply) => {
                    self.cutting.set(true);
                    let open = self.open.get();
                    let reset = self.idle.abort_all();
                    tracing::debug!(open, reset, "drain deadline: connections reset");
                    let _ = reply.send(open);
                }
            }
        }
    }
}

/// Thread body of worker `start.id`.
pub(crate) fn run(start: WorkerStart) {
    // Reports a panic that ends this thread (outside any task) as a lasting failure.
    let _panics = task::enter_worker(start.id, Arc::clone(&start.panics));
    let (mut rt, kind) = match driver::build(start.driver, start.udp.busy_poll.is_some()) {
        Ok(built) => built,
        Err(source) => {
            let driver = match start.driver {
                IoDriver::Epoll => "epoll",
                IoDriver::Uring => "io_uring",
                IoDriver::Auto => "auto",
            };
            let _ = start.ready.send(Err(ProxyError::Runtime {
                worker: start.id,
                driver,
                source,
            }));
            return;
        }
    };
    let id = start.id;
    rt.block_on(worker_main(start, kind));
    tracing::debug!(worker = id, "worker thread exiting");
}

async fn worker_main(start: WorkerStart, kind: IoDriverKind) {
    let WorkerStart {
        id,
        table,
        listeners,
        buffer_size,
        udp,
        shutdown,
        handed_over_at_stop,
        ready,
        done,
        commands,
        telemetry,
        handed_over,
        fds,
        ..
    } = start;
    let telemetry = Rc::new(WorkerTelemetry::new(telemetry, id));
    let worker = Worker::new(id, table, buffer_size, udp, telemetry, handed_over, fds);
    for (key, std_listener) in listeners {
        // Converted here so the descriptor registers with this thread's driver.
        if let Err(source) = worker.listen(key, std_listener) {
            let _ = ready.send(Err(ProxyError::Bind {
                addr: key.addr,
                source,
            }));
            return;
        }
    }
    let _ = ready.send(Ok(kind));
    tracing::debug!(worker = id, driver = %kind, "worker running");
    let sweeper = Rc::clone(&worker);
    task::spawn(TaskKind::Worker, async move { sweeper.idle.run().await });
    task::spawn(TaskKind::Worker, Rc::clone(&worker.udp).sweep());
    if let Some(busy) = worker.udp.busy_poll() {
        task::spawn(TaskKind::Worker, busy.keep());
    }
    if let Some(coalesce) = worker.udp.coalesce() {
        task::spawn(
            TaskKind::Worker,
            coalesce.keep(Rc::clone(&worker.telemetry)),
        );
    }
    task::spawn(TaskKind::Worker, Rc::clone(&worker).commands(commands));

    shutdown.cancelled().await;
    let hand_over = handed_over_at_stop.load(std::sync::atomic::Ordering::Relaxed);
    tracing::debug!(worker = id, hand_over, "worker stopping");
    worker.stopping.set(true);
    for (_, frontend) in worker.frontends.borrow_mut().drain() {
        if hand_over {
            frontend.hand_over();
        } else {
            frontend.close();
        }
    }
    // UDP has no goodbye to wait for: its flows end with the worker, and its sockets close
    // now, not at exit, so they stop taking datagrams meant for a successor on the port. A
    // successor that took the sockets over has the clients' next datagrams; the flows here
    // relay what their backends still answer until the drain ends.
    let handed_over = worker.handing_over.get();
    if !handed_over {
        worker.udp.clear();
        worker.udp.sockets_closed().await;
    }
    while worker.open.get() > 0 || (handed_over && worker.udp_lingers()) {
        monoio::time::sleep(DRAIN_POLL).await;
    }
    if handed_over {
        worker.udp.clear();
    }
    tracing::debug!(worker = id, "worker drained");
    let _ = done.send(id);
}

/// Connections accepted per readiness wake-up at most, before the worker's other tasks run.
const ACCEPT_BATCH: usize = 64;

/// Accepts until the frontend stops (removed, handed over, or the worker stops): waits for
/// the listener to be readable, then accepts what is queued without blocking (up to
/// [`ACCEPT_BATCH`] per wake-up). Never returns on an accept error: resource exhaustion
/// backs off, anything else (an aborted handshake) is skipped. A connection that the
/// descriptor budget has no room for is reset at once.
///
/// # Cancel safety
/// Not raced against anything from outside: [`Stop`] ends it, abandoning its pending
/// readiness wait (see `stop.rs`), which takes no connection.
async fn accept_loop(
    listener: Rc<TcpListener>,
    key: FrontendKey,
    stop: Rc<Stop>,
    worker: Rc<Worker>,
) {
    let fd = std::os::fd::AsRawFd::as_raw_fd(&*listener);
    'wait: while ready_or_stop(listener.readable(false), &stop)
        .await
        .is_some_and(|_| !stop.is_stopped())
    {
        for _ in 0..ACCEPT_BATCH {
            if stop.is_stopped() {
                break 'wait;
            }
            match accept(fd) {
                Ok((stream, peer)) => {
                    let stream = match TcpStream::from_std(stream) {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(frontend = %key.addr, error = %e, "accepted connection not registered");
                            continue;
                        }
                    };
                    match worker.fds.take(2) {
                        Some(fds) => task::spawn(
                            TaskKind::Connection,
                            serve(stream, peer, key, fds, Rc::clone(&worker)),
                        ),
                        None => worker.refuse(stream, &key),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue 'wait,
                Err(e) if is_exhaustion(&e) => {
                    if let Some(n) = worker.exhausted.hit(Instant::now()) {
                        tracing::warn!(frontend = %key.addr, error = %e, failures = n, "accept: out of resources, backing off ({n} failed accepts since the last warning)");
                    }
                    monoio::time::sleep(ACCEPT_BACKOFF).await;
                    continue 'wait;
                }
                // A listener shut down (the frontend closed) fails with EINVAL.
                Err(_) if stop.is_stopped() => break 'wait,
                Err(e) => tracing::debug!(frontend = %key.addr, error = %e, "accept failed"),
            }
        }
    }
    tracing::debug!(frontend = %key.addr, "listener closed");
}

impl Worker {
    /// Resets a connection the descriptor budget has no room for, counts it, and warns (at most
    /// every few seconds, with the count since the last warning).
    fn refuse(&self, stream: TcpStream, key: &FrontendKey) {
        set_reset_on_close(&stream);
        drop(stream);
        self.fds.count_refused_tcp();
        if let Some(entry) = self.table.load().lookup(key) {
            self.telemetry.stats(entry).add(Count::NoDescriptors, 1);
        }
        if let Some(n) = self.over_budget.hit(Instant::now()) {
            tracing::warn!(
                frontend = %key.addr, refused = n, budget = self.fds.cap(),
                "out of descriptors: new connections are reset ({n} since the last warning); raise the open-file limit (ulimit -n, LimitNOFILE)"
            );
        }
    }
}

/// Counts an open connection on the worker and the service, and holds its descriptors, for as
/// long as it lives.
struct OpenGuard<'a> {
    worker: &'a Worker,
    /// Its worker's counts of its service, once known.
    stats: Option<Arc<ServiceStats>>,
    _fds: Fds,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.worker.open.set(self.worker.open.get() - 1);
        if let Some(s) = &self.stats {
            s.sub(Count::Active, 1);
        }
    }
}

/// One client connection: pick, connect (with retries), relay, count.
async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    key: FrontendKey,
    fds: Fds,
    worker: Rc<Worker>,
) {
    worker.open.set(worker.open.get() + 1);
    let mut guard = OpenGuard {
        worker: &worker,
        stats: None,
        _fds: fds,
    };
    let Some(entry) = worker.table.load().lookup(&key).cloned() else {
        // The frontend left the table while this connection waited in the accept queue.
        set_reset_on_close(&client);
        return;
    };
    let stats = worker.telemetry.stats(&entry);
    stats.add(Count::Accepted, 1);
    stats.add(Count::Active, 1);
    guard.stats = Some(Arc::clone(&stats));
    let _ = client.set_nodelay(true);
    let dest = destination(&client, key.addr);
    let mut trace = worker.telemetry.open(stats, dest);

    // Boxed: short-lived, and not to widen every open connection's future for its whole life.
    let placing = connect::place(&mut client, &entry, Flow { client: peer, dest }, &mut trace);
    let (peer, upstream) = match Box::pin(placing).await {
        Ok(placed) => placed,
        Err((peer, reason)) => {
            tracing::debug!(service = %entry.service.name, client = %peer, ?reason, "resetting client");
            set_reset_on_close(&client);
            drop(client);
            worker
                .telemetry
                .close(trace, &entry, peer, ConnEnd::failed(reason));
            return;
        }
    };
    let upstream_idx = upstream.backend;
    let backend = entry.backends[upstream_idx].address;
    if worker.cutting.get() {
        // Connected after the shutdown's drain deadline: cut like the connections it reset.
        abort(&client);
        abort(&upstream.stream);
        let end = ConnEnd {
            backend: Some(backend),
            to_backend: 0,
            to_client: 0,
            reason: CloseReason::DrainTimeout,
        };
        worker.telemetry.close(trace, &entry, peer, end);
        return;
    }
    let outcome = relay(
        client,
        upstream.stream,
        upstream.guard,
        entry.service.idle_timeout,
        &worker.pool,
        &worker.idle,
    )
    .await;
    outliers::relayed(&entry, upstream_idx, &outcome);
    let end = ConnEnd {
        backend: Some(backend),
        to_backend: outcome.to_backend,
        to_client: outcome.to_client,
        reason: relay_reason(outcome.end),
    };
    worker.telemetry.close(trace, &entry, peer, end);
    tracing::debug!(
        service = %entry.service.name, client = %peer, %backend,
        to_backend = outcome.to_backend, to_client = outcome.to_client, end = ?outcome.end,
        "connection closed"
    );
}

/// How a relayed connection ended.
fn relay_reason(end: RelayEnd) -> CloseReason {
    match end {
        RelayEnd::Closed => CloseReason::Eof,
        RelayEnd::IdleTimeout => CloseReason::IdleTimeout,
        RelayEnd::Drained => CloseReason::Drained,
        RelayEnd::Cut => CloseReason::DrainTimeout,
        RelayEnd::Error => CloseReason::Reset,
    }
}

/// The address the client dialled, for the scheduler (`dh`) and the decision log. A listener
/// bound to one address is that address (no system call). On a wildcard listener it is the
/// destination before netfilter redirected the connection there (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` on `[::]`: node mode's portals, where it is the cluster IP, external
/// IP or node port the client used), or else the local address the connection reached.
fn destination(client: &TcpStream, listen: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    crate::sys::original_dst(client, listen.is_ipv6())
        .or_else(|| client.local_addr().ok())
        .unwrap_or(listen)
}

/// A per-worker seed for the UDP flow table's hash, so clients cannot aim collisions at it.
fn hash_seed(worker: usize) -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(worker)
}

#[cfg(test)]
#[path = "tests/accept.rs"]
mod tests;
