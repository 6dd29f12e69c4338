//! One worker: a monoio runtime on its own thread, its listeners and accept loops.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use arc_swap::ArcSwap;
use balancers::Flow;
use config::{FrontendKey, ServiceEntry, Table};
use monoio::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use tokio_util::sync::CancellationToken;

use crate::connect::{connect, ConnectFailure};
use crate::driver::{self, IoDriver, IoDriverKind};
use crate::idle::IdleTimers;
use crate::pool::BufferPool;
use crate::relay::{relay, PeerPair, RelayEnd};
use crate::sys::{set_reset_on_close, with_socket};
use crate::ProxyError;

/// Free relay buffers a worker keeps for reuse.
const POOL_KEEP: usize = 64;
/// Pause after the accept loop hit a resource limit (EMFILE, ENFILE, ENOBUFS, ENOMEM).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How often a draining worker checks whether its last connection ended.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Everything a worker thread starts with.
pub(crate) struct WorkerStart {
    pub(crate) id: usize,
    pub(crate) table: Arc<ArcSwap<Table>>,
    pub(crate) listeners: Vec<(FrontendKey, std::net::TcpListener)>,
    pub(crate) driver: IoDriver,
    pub(crate) buffer_size: usize,
    pub(crate) shutdown: CancellationToken,
    pub(crate) ready: mpsc::Sender<Result<IoDriverKind, ProxyError>>,
    pub(crate) done: mpsc::Sender<usize>,
}

/// Per-worker state shared by the worker's tasks (single thread: plain `Cell`/`Rc`).
struct Worker {
    table: Arc<ArcSwap<Table>>,
    pool: BufferPool,
    idle: IdleTimers<PeerPair>,
    open: Cell<usize>,
    stopping: Cell<bool>,
}

/// Thread body of worker `start.id`.
pub(crate) fn run(start: WorkerStart) {
    let (mut rt, kind) = match driver::build(start.driver) {
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
        shutdown,
        ready,
        done,
        ..
    } = start;
    let mut bound = Vec::with_capacity(listeners.len());
    for (key, std_listener) in listeners {
        // Converted here so the descriptor registers with this thread's driver.
        match TcpListener::from_std(std_listener) {
            Ok(l) => bound.push((key, l)),
            Err(source) => {
                let _ = ready.send(Err(ProxyError::Bind {
                    addr: key.addr,
                    source,
                }));
                return;
            }
        }
    }
    let _ = ready.send(Ok(kind));
    tracing::debug!(worker = id, driver = %kind, "worker running");

    let worker = Rc::new(Worker {
        table,
        pool: BufferPool::new(buffer_size, POOL_KEEP),
        idle: IdleTimers::new(),
        open: Cell::new(0),
        stopping: Cell::new(false),
    });
    let sweeper = Rc::clone(&worker);
    monoio::spawn(async move { sweeper.idle.run().await });
    let mut listeners = Vec::with_capacity(bound.len());
    for (key, listener) in bound {
        let listener = Rc::new(listener);
        listeners.push(Rc::clone(&listener));
        monoio::spawn(accept_loop(listener, key, Rc::clone(&worker)));
    }

    shutdown.cancelled().await;
    tracing::debug!(worker = id, "worker stopping");
    worker.stopping.set(true);
    // shutdown(2) on a listening socket refuses new connections at once and wakes a pending
    // accept with an error, on io_uring and epoll alike. (Cancelling the in-flight accept
    // through io_uring's AsyncCancel instead can hit a newer operation that reused the same
    // slot, since monoio keys cancellation by slot index.)
    for listener in listeners {
        let _ = with_socket(&*listener, |s| s.shutdown(std::net::Shutdown::Both));
    }
    while worker.open.get() > 0 {
        monoio::time::sleep(DRAIN_POLL).await;
    }
    tracing::debug!(worker = id, "worker drained");
    let _ = done.send(id);
}

/// Accepts until the worker stops. Never returns on an accept error: resource exhaustion
/// backs off, anything else (an aborted handshake) is skipped.
///
/// # Cancel safety
/// Not raced against anything: the worker stops it by shutting the listening socket down,
/// which completes the pending accept with an error.
async fn accept_loop(listener: Rc<TcpListener>, key: FrontendKey, worker: Rc<Worker>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if worker.stopping.get() {
                    set_reset_on_close(&stream);
                    break;
                }
                monoio::spawn(serve(stream, peer, key, Rc::clone(&worker)));
            }
            Err(_) if worker.stopping.get() => break,
            Err(e) if is_resource_exhaustion(&e) => {
                tracing::warn!(frontend = %key.addr, error = %e, "accept: out of resources, backing off");
                monoio::time::sleep(ACCEPT_BACKOFF).await;
            }
            Err(e) => tracing::debug!(frontend = %key.addr, error = %e, "accept failed"),
        }
    }
    tracing::debug!(frontend = %key.addr, "listener closed");
}

fn is_resource_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Counts an open connection on the worker and the service for as long as it lives.
struct OpenGuard<'a> {
    worker: &'a Worker,
    service: Option<Arc<ServiceEntry>>,
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.worker.open.set(self.worker.open.get() - 1);
        if let Some(s) = &self.service {
            s.counters.active.fetch_sub(1, Relaxed);
        }
    }
}

/// One client connection: pick, connect (with retries), relay, count.
async fn serve(client: TcpStream, peer: SocketAddr, key: FrontendKey, worker: Rc<Worker>) {
    worker.open.set(worker.open.get() + 1);
    let mut guard = OpenGuard {
        worker: &worker,
        service: None,
    };
    let Some(entry) = worker.table.load().lookup(&key).cloned() else {
        // The frontend left the table while this connection waited in the accept queue.
        set_reset_on_close(&client);
        return;
    };
    let counters = &entry.counters;
    counters.accepted.fetch_add(1, Relaxed);
    counters.active.fetch_add(1, Relaxed);
    guard.service = Some(Arc::clone(&entry));
    let _ = client.set_nodelay(true);

    let flow = Flow {
        client: peer,
        dest: key.addr,
    };
    // Boxed: the connect step is short-lived and must not widen the future every open
    // connection keeps for its whole life.
    let upstream = match Box::pin(connect(&entry, &flow)).await {
        Ok(u) => u,
        Err(failure) => {
            match failure {
                ConnectFailure::NoBackend => counters.no_backend.fetch_add(1, Relaxed),
                ConnectFailure::AllFailed => counters.connect_failed.fetch_add(1, Relaxed),
            };
            tracing::debug!(service = %entry.service.name, client = %peer, ?failure, "resetting client");
            set_reset_on_close(&client);
            return;
        }
    };
    let backend = entry.backends[upstream.backend].address;
    // IPVS counts a connection as inactive once it starts closing (the first half-close).
    let guard = std::cell::RefCell::new(upstream.guard);
    let half_closed = || guard.borrow_mut().set_inactive();
    let outcome = relay(
        client,
        upstream.stream,
        entry.service.idle_timeout,
        &worker.pool,
        &worker.idle,
        &half_closed,
    )
    .await;
    counters
        .bytes_to_backend
        .fetch_add(outcome.to_backend, Relaxed);
    counters
        .bytes_to_client
        .fetch_add(outcome.to_client, Relaxed);
    if outcome.end == RelayEnd::IdleTimeout {
        counters.idle_timeouts.fetch_add(1, Relaxed);
    }
    tracing::debug!(
        service = %entry.service.name, client = %peer, %backend,
        to_backend = outcome.to_backend, to_client = outcome.to_client, end = ?outcome.end,
        "connection closed"
    );
    drop(guard);
}
