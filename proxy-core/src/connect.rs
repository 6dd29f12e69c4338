//! Connecting to a backend with a deadline, retrying the next one on failure.

use std::sync::atomic::Ordering::Relaxed;

use balancers::{ConnectionGuard, Flow};
use config::ServiceEntry;
use monoio::net::TcpStream;

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
/// # Cancel safety
/// Dropping the future drops a pending connect, which closes its socket; nothing is lost.
pub(crate) async fn connect(entry: &ServiceEntry, flow: &Flow) -> Result<Upstream, ConnectFailure> {
    let scheduler = entry.scheduler.as_ref().ok_or(ConnectFailure::NoBackend)?;
    let states = &entry.states;
    let first = choose(entry, flow).ok_or(ConnectFailure::NoBackend)?;
    let svc = &entry.service;
    let mut idx = first;
    for attempt in 1..=svc.max_connect_attempts.get() {
        entry.counters.connect_attempts.fetch_add(1, Relaxed);
        if attempt > 1 {
            entry.counters.connect_retries.fetch_add(1, Relaxed);
        }
        let addr = entry.backends[idx].address;
        // Counted as inactive while connecting (IPVS: not yet established), active once up.
        let mut guard = states[idx].connecting();
        match monoio::time::timeout(svc.connect_timeout, TcpStream::connect_addr(addr)).await {
            Ok(Ok(stream)) => {
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
                tracing::debug!(service = %svc.name, backend = %addr, attempt, error = %e, "connect failed");
            }
            Err(_) => {
                tracing::debug!(service = %svc.name, backend = %addr, attempt, timeout = ?svc.connect_timeout, "connect timed out");
            }
        }
        match scheduler.next_after(idx, states) {
            Some(next) if next != first => idx = next,
            _ => break,
        }
    }
    Err(ConnectFailure::AllFailed)
}

/// The backend for a new connection or UDP flow: the client's pinned one when the service has
/// ClientIP affinity and it is still eligible, else the scheduler's pick (then pinned).
pub(crate) fn choose(entry: &ServiceEntry, flow: &Flow) -> Option<usize> {
    let scheduler = entry.scheduler.as_ref()?;
    let states = &entry.states;
    let pick = || scheduler.pick(flow, states);
    match &entry.affinity {
        Some(affinity) => affinity.resolve(
            flow.client.ip(),
            std::time::Instant::now(),
            |i| scheduler.is_eligible(i, states),
            pick,
        ),
        None => pick(),
    }
}
