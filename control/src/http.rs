//! The one HTTP/1.1 server behind every HTTP port ringlb serves: the admin API, the node
//! health server (`--healthz-bind-address`) and the `healthCheckNodePort` servers, each a task
//! on the control runtime ([`crate::ControlRuntime`]) speaking through hyper.
//!
//! It owns the limits that keep a port answering whatever its clients do ([`Limits`]): a
//! bounded request head (hyper's `max_buf_size` and `max_header_size`; a longer one ends the
//! connection with a 431 without buffering more), a deadline for the whole head (and for a
//! keep-alive connection's next request), a cap on concurrent connections per port that sheds
//! the one idle the longest (`slots.rs`), a cap on requests per connection, and an accept loop
//! that backs off and never gives up (`accept.rs`). Each port counts its connections
//! ([`Telemetry`]) and reports accepts that keep failing to [`Readiness`].
//!
//! It never parses HTTP itself and never blocks the control thread: a handler is a future, and
//! one that waits for something bounds its own wait.

mod accept;
mod slots;
pub(crate) mod telemetry;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONNECTION};
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use self::accept::Backoff;
use self::slots::{Admit, Slots};
use self::telemetry::Counters;
pub use self::telemetry::{Counts, ServerKind, Telemetry};
use crate::readiness::Readiness;
use crate::runtime::Plane;

/// A whole response body.
pub type Body = Full<Bytes>;
/// What a [`Handler`] returns: the response, once ready.
pub type Reply = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
/// Answers one request. It runs on the control thread: it must not block, and bounds any
/// wait of its own.
pub type Handler = Arc<dyn Fn(Request<Incoming>) -> Reply + Send + Sync>;

/// How long requests in flight may take to finish once a server stops; what is left is closed.
const GRACE: Duration = Duration::from_secs(2);

/// What one port tolerates of its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The whole request head must arrive within this, and a keep-alive connection's next
    /// request must start within it.
    pub header_timeout: Duration,
    /// Bytes of request line and headers at most (hyper's minimum is 8192).
    pub max_head: usize,
    /// Header fields at most.
    pub max_headers: usize,
    /// Concurrent connections at most; at the cap the one idle the longest is shed.
    pub max_connections: usize,
    /// Requests per connection at most; the last answer says `Connection: close`.
    pub max_requests: u32,
    /// Header names written in title case (`Content-Type`), as Go's servers write them.
    pub title_case_headers: bool,
}

impl Limits {
    /// The admin API: probes and scrapers, a few at a time, keep-alive welcome.
    pub const ADMIN: Limits = Limits {
        header_timeout: Duration::from_secs(10),
        max_head: 16 * 1024,
        max_headers: 64,
        max_connections: 128,
        max_requests: 100,
        title_case_headers: false,
    };

    /// A health port: one small request per connection, answered as kube-proxy answers it.
    pub const HEALTH: Limits = Limits {
        header_timeout: Duration::from_secs(5),
        max_head: 8192,
        max_headers: 32,
        max_connections: 64,
        max_requests: 1,
        title_case_headers: true,
    };
}

/// One port to serve.
#[derive(Clone, Debug)]
pub struct Spec {
    /// For its counters.
    pub kind: ServerKind,
    /// Names it in logs and in its readiness problems (`healthz 0.0.0.0:10256`).
    pub name: String,
    /// What it tolerates.
    pub limits: Limits,
}

/// A running server. [`HttpServer::stop`] stops it gracefully; dropping it stops it without
/// waiting.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddr,
    stop: CancellationToken,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl HttpServer {
    /// Serves `listener` on the control runtime of `plane`, answering with `handler`.
    pub fn start(
        plane: &Plane,
        listener: std::net::TcpListener,
        spec: Spec,
        handler: Handler,
    ) -> io::Result<HttpServer> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = plane.handle.enter();
            TcpListener::from_std(listener)?
        };
        plane.http.of(spec.kind).started.store(true, Relaxed);
        let port = Arc::new(Port {
            accept_problem: format!("{} accept", spec.name),
            slots: Mutex::new(Slots::new(spec.limits.max_connections)),
            spec,
            telemetry: Arc::clone(&plane.http),
            readiness: Arc::clone(&plane.readiness),
            handler,
            force: CancellationToken::new(),
        });
        let stop = CancellationToken::new();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        plane
            .handle
            .spawn(serve(listener, port, stop.clone(), done_tx));
        Ok(HttpServer { addr, stop, done })
    }

    /// The address bound (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (up to a grace of 2 s), closes the
    /// rest; resolves once done.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the server stopping on its own.
    pub async fn stop(mut self) {
        self.stop.cancel();
        // The task says when it is done; a stopped runtime drops it (and the sender).
        let done = &mut self.done;
        let _ = tokio::time::timeout(GRACE + Duration::from_secs(1), done).await;
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What every connection of one port shares.
struct Port {
    spec: Spec,
    /// The readiness key of accepts that keep failing.
    accept_problem: String,
    telemetry: Arc<Telemetry>,
    readiness: Arc<Readiness>,
    handler: Handler,
    /// The open connections, each with the token that closes it.
    slots: Mutex<Slots<CancellationToken>>,
    /// Cancelled when the grace after a stop is over: closes every connection left.
    force: CancellationToken,
}

impl Port {
    fn counters(&self) -> &Counters {
        self.telemetry.of(self.spec.kind)
    }

    fn slots(&self) -> MutexGuard<'_, Slots<CancellationToken>> {
        // Every change to the slots is one call that cannot panic halfway: keep using them.
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The accept loop of one port, until `stop`; then the graceful end. Tells `done` at the end.
///
/// # Cancel safety
///
/// Runs to completion as its own task. Losing the `accept` branch to `stop` drops at most a
/// connection the kernel accepted in that instant.
async fn serve(
    listener: TcpListener,
    port: Arc<Port>,
    stop: CancellationToken,
    done: tokio::sync::oneshot::Sender<()>,
) {
    let graceful = GracefulShutdown::new();
    let http = builder(&port.spec.limits);
    let mut backoff = Backoff::default();
    let warn = proxy_core::Throttle::default();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                if backoff.succeeded() {
                    port.readiness.clear(&port.accept_problem);
                    tracing::info!(server = %port.spec.name, "accepting again");
                }
                next_id += 1;
                admit(&port, next_id, stream, &http, &graceful);
                // One accept per turn of the runtime: the connection just admitted reads its
                // request before a burst of newer ones could make it the oldest idle one.
                tokio::task::yield_now().await;
            }
            Err(e) => {
                port.counters().accept_errors.fetch_add(1, Relaxed);
                if !proxy_core::is_exhaustion(&e) {
                    // One connection's trouble (a handshake the client aborted).
                    tracing::debug!(server = %port.spec.name, error = %e, "accept failed");
                    continue;
                }
                let wait = backoff.failed();
                port.readiness.set(
                    port.accept_problem.clone(),
                    format!("failing ({e}); retrying with backoff"),
                );
                if let Some(failures) = warn.hit(Instant::now()) {
                    tracing::warn!(server = %port.spec.name, error = %e, failures, "accept failed; backing off");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
    drop(listener);
    port.readiness.clear(&port.accept_problem);
    if tokio::time::timeout(GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::debug!(server = %port.spec.name, "requests still in flight after the grace; closing them");
    }
    port.force.cancel();
    let _ = done.send(());
}

fn builder(limits: &Limits) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_head)
        .max_header_size(limits.max_head)
        .max_headers(limits.max_headers)
        .title_case_headers(limits.title_case_headers)
        .keep_alive(limits.max_requests > 1);
    http
}

/// Counts `stream` in, shedding or refusing as [`Slots::admit`] decides, and serves it on its
/// own task.
fn admit(
    port: &Arc<Port>,
    id: u64,
    stream: TcpStream,
    http: &http1::Builder,
    graceful: &GracefulShutdown,
) {
    let close = port.force.child_token();
    let admitted = port.slots().admit(id, Instant::now(), close.clone());
    let counters = port.counters();
    match admitted {
        Admit::Admitted => {}
        Admit::Shed(_, shed) => {
            shed.cancel();
            counters.shed.fetch_add(1, Relaxed);
        }
        Admit::Refused => {
            counters.refused.fetch_add(1, Relaxed);
            tracing::debug!(server = %port.spec.name, "connection refused: every connection is answering");
            return;
        }
    }
    counters.accepted.fetch_add(1, Relaxed);
    let conn = Arc::new(Conn {
        port: Arc::clone(port),
        id,
        requests: AtomicU32::new(0),
    });
    let service = hyper::service::service_fn(move |req| {
        let conn = Arc::clone(&conn);
        async move { Ok::<_, Infallible>(conn.answer(req).await) }
    });
    let served = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
    let name = port.spec.name.clone();
    tokio::spawn(async move {
        tokio::select! {
            ended = served => if let Err(e) = ended {
                tracing::debug!(server = %name, error = %e, "connection ended with an error");
            },
            () = close.cancelled() => {}
        }
    });
}

/// One connection, shared by its requests; it leaves the slots when the last of it goes.
struct Conn {
    port: Arc<Port>,
    id: u64,
    requests: AtomicU32,
}

impl Conn {
    /// Answers one request: busy meanwhile (never shed), and the last allowed answer closes
    /// the connection.
    async fn answer(&self, req: Request<Incoming>) -> Response<Body> {
        let n = self.requests.fetch_add(1, Relaxed) + 1;
        self.port.slots().busy(self.id);
        let mut response = (self.port.handler)(req).await;
        if n >= self.port.spec.limits.max_requests {
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        self.port.slots().idle(self.id, Instant::now());
        response
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.port.slots().remove(self.id);
    }
}
