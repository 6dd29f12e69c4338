//! Connecting to a backend with a deadline, retrying the next one on failure.

use std::io;
use std::net::{IpAddr, SocketAddr};

use balancers::{ConnectionGuard, Flow};
use config::ServiceEntry;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Socket, Type};

use crate::proxy_protocol;
use crate::telemetry::{AffinityOutcome, CloseReason, ConnTrace, ConnectError};

/// A connected backend.
pub(crate) struct Upstream {
    pub(crate) stream: TcpStream,
    /// Index of the backend in the service's table entry.
    pub(crate) backend: usize,
    /// Counts the connection as active on the backend until dropped.
    pub(crate) guard: ConnectionGuard,
}

/// Why no backend could be connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectFailure {
    /// No backend was eligible (none configured, or all quiesced).
    NoBackend,
    /// Every attempt failed (refused, timed out, unreachable).
    AllFailed,
}

/// Picks a backend (the client's pinned one first when the service has ClientIP affinity) and
/// connects, trying the next eligible backend after a failure, up to the
/// service's `max_connect_attempts` and never the first pick twice.
///
/// Every connect error is retryable here: nothing of the client's has been sent yet (the
/// relay starts only after this returns), so no byte can be duplicated.
///
/// `trace` records the placement, every attempt and the connect latency. `preface` (the
/// PROXY protocol header and the client's bytes read with a front load balancer's header) is
/// written to each connected backend before it counts as connected: a backend that cannot
/// take it is a failed attempt like a refused connect.
///
/// # Cancel safety
/// Dropping the future drops a pending connect, which closes its socket; nothing is lost.
pub(crate) async fn connect(
    entry: &ServiceEntry,
    flow: &Flow,
    preface: &[u8],
    trace: &mut ConnTrace,
) -> Result<Upstream, ConnectFailure> {
    let scheduler = entry.scheduler.as_ref().ok_or(ConnectFailure::NoBackend)?;
    let states = &entry.states;
    let choice = choose_traced(entry, flow, std::time::Instant::now());
    trace.chose(choice.affinity, || candidates(entry));
    let first = choice.backend.ok_or(ConnectFailure::NoBackend)?;
    let svc = &entry.service;
    let mut idx = first;
    for attempt in 1..=svc.max_connect_attempts.get() {
        let addr = entry.backends[idx].address;
        // Counted as inactive while connecting (IPVS: not yet established), active once up.
        let mut guard = states[idx].connecting();
        let started = trace.attempt(attempt);
        let source = svc
            .from_client(flow.client.ip(), addr.ip())
            .then(|| flow.client.ip());
        let connecting = connect_with(addr, source, preface);
        match monoio::time::timeout(svc.connect_timeout, connecting).await {
            Ok(Ok(stream)) => {
                trace.connected(started);
                let _ = stream.set_nodelay(true);
                guard.set_active();
                if idx != first {
                    if let Some(affinity) = &entry.affinity {
                        // The pinned backend failed: pin the client to the one that answered.
                        affinity.record(flow.client.ip(), idx, std::time::Instant::now());
                    }
                }
                return Ok(Upstream {
                    stream,
                    backend: idx,
                    guard,
                });
            }
            Ok(Err(e)) => {
                trace.connect_error(ConnectError::of(&e));
                tracing::debug!(service = %svc.name, backend = %addr, attempt, error = %e, "connect failed");
            }
            Err(_) => {
                trace.connect_error(ConnectError::Timeout);
                tracing::debug!(service = %svc.name, backend = %addr, attempt, timeout = ?svc.connect_timeout, "connect timed out");
            }
        }
        crate::outliers::failed(entry, idx);
        match scheduler.next_after(idx, states) {
            Some(next) if next != first => idx = next,
            _ => break,
        }
    }
    Err(ConnectFailure::AllFailed)
}

/// Places a client connection: who the client is (with `accept_proxy_protocol`, the front
/// load balancer's header says; see [`proxy_protocol::preface`]), then a connected backend
/// that has what must precede the client's bytes. Returns the client and the backend, or
/// the client and why the connection is to be reset.
pub(crate) async fn place(
    client: &mut TcpStream,
    entry: &ServiceEntry,
    flow: Flow,
    trace: &mut ConnTrace,
) -> Result<(SocketAddr, Upstream), (SocketAddr, CloseReason)> {
    let (flow, preface) = proxy_protocol::preface(client, entry, flow)
        .await
        .map_err(|reason| (flow.client, reason))?;
    match connect(entry, &flow, &preface, trace).await {
        Ok(upstream) => Ok((flow.client, upstream)),
        Err(ConnectFailure::NoBackend) => Err((flow.client, CloseReason::NoBackend)),
        Err(ConnectFailure::AllFailed) => Err((flow.client, CloseReason::ConnectFailed)),
    }
}

/// Connects to `addr` (from `source`, see [`connect_from`]) and writes `preface` there.
async fn connect_with(
    addr: SocketAddr,
    source: Option<IpAddr>,
    preface: &[u8],
) -> io::Result<TcpStream> {
    let mut stream = connect_from(addr, source).await?;
    if !preface.is_empty() {
        let (written, _) = stream.write_all(preface.to_vec()).await;
        written?;
    }
    Ok(stream)
}

/// Connects to `addr`, from `source` when given: a socket with `IP_TRANSPARENT` bound to an
/// address this host need not own (the client's), the port left to the kernel. The backend
/// sees the client; its replies come back to this socket only through the policy routing
/// that steering sets up (`socket transparent` marks them for local delivery). Without
/// `source`, or across address families, a plain connect.
async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(source) = source.filter(|s| s.is_ipv4() == addr.is_ipv4()) else {
        return TcpStream::connect_addr(addr).await;
    };
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    // The option sits at the IP level for IPv6 sockets too (one flag of the socket).
    socket.set_ip_transparent(true)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    stream.writable(false).await?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    match getsockopt(fd, sockopt::SocketError).map_err(io::Error::from)? {
        0 => Ok(stream),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

/// What [`choose_traced`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Choice {
    /// The backend's index; `None` when none is eligible.
    pub(crate) backend: Option<usize>,
    /// Whether the client's affinity pin was used.
    pub(crate) affinity: AffinityOutcome,
}

/// The backend for a new connection or UDP flow: the client's pinned one when the service has
/// ClientIP affinity and it is still eligible, else the scheduler's pick (then pinned); and
/// whether affinity answered ([`AffinityOutcome::Hit`]) or the scheduler had to pick
/// ([`AffinityOutcome::Miss`]). `now` times the affinity entries.
pub(crate) fn choose_traced(entry: &ServiceEntry, flow: &Flow, now: std::time::Instant) -> Choice {
    let Some(scheduler) = entry.scheduler.as_ref() else {
        let affinity = match entry.affinity {
            Some(_) => AffinityOutcome::Miss,
            None => AffinityOutcome::Off,
        };
        return Choice {
            backend: None,
            affinity,
        };
    };
    let states = &entry.states;
    match &entry.affinity {
        Some(affinity) => {
            // `resolve` calls the pick only when the client has no usable pin.
            let mut picked = false;
            let backend = affinity.resolve(
                flow.client.ip(),
                now,
                |i| scheduler.is_eligible(i, states),
                || {
                    picked = true;
                    scheduler.pick(flow, states)
                },
            );
            Choice {
                backend,
                affinity: if picked {
                    AffinityOutcome::Miss
                } else {
                    AffinityOutcome::Hit
                },
            }
        }
        None => Choice {
            backend: scheduler.pick(flow, states),
            affinity: AffinityOutcome::Off,
        },
    }
}

/// Backends of `entry` eligible for a new flow now (for the decision log: O(backends)).
pub(crate) fn candidates(entry: &ServiceEntry) -> u32 {
    let Some(scheduler) = entry.scheduler.as_ref() else {
        return 0;
    };
    let eligible = (0..entry.backends.len())
        .filter(|&i| scheduler.is_eligible(i, &entry.states))
        .count();
    u32::try_from(eligible).unwrap_or(u32::MAX)
}
