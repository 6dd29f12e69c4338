//! What one TCP connection records on its way from accept to close ([`ConnTrace`]): its
//! service's counts, and with telemetry on its connect latency, duration and end; with the
//! decision log on, its line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use config::ServiceEntry;

use super::{
    AffinityOutcome, CloseReason, ConnectError, Count, Decision, ServiceStats, WorkerTelemetry,
    CONNECT_SCALE, DURATION_SCALE,
};

impl WorkerTelemetry {
    /// Starts tracing a TCP connection counted in `stats` that reached `frontend` (the address
    /// the client dialled).
    pub(crate) fn open(&self, stats: Arc<ServiceStats>, frontend: SocketAddr) -> ConnTrace {
        let log = self.logging().then(|| {
            Box::new(LogFacts {
                frontend,
                candidates: 0,
                affinity: AffinityOutcome::Off,
                attempts: 0,
            })
        });
        let started = (stats.detailed() || log.is_some()).then(Instant::now);
        ConnTrace {
            stats,
            started,
            log,
        }
    }

    /// Records the end of a traced TCP connection: its bytes and what its end counts as, with
    /// telemetry on its reason and duration, and logs it when the log was on for its whole
    /// life.
    pub(crate) fn close(
        &self,
        trace: ConnTrace,
        entry: &Arc<ServiceEntry>,
        client: SocketAddr,
        end: ConnEnd,
    ) {
        let stats = &trace.stats;
        stats.add(Count::BytesToBackend, end.to_backend);
        stats.add(Count::BytesToClient, end.to_client);
        match end.reason {
            CloseReason::NoBackend => stats.add(Count::NoBackend, 1),
            CloseReason::ConnectFailed => stats.add(Count::ConnectFailed, 1),
            CloseReason::IdleTimeout => stats.add(Count::IdleTimeouts, 1),
            CloseReason::ProxyHeader => stats.add(Count::ProxyHeader, 1),
            CloseReason::ProxyUntrusted => stats.add(Count::ProxyUntrusted, 1),
            _ => {}
        }
        let Some(started) = trace.started else {
            return;
        };
        let duration = started.elapsed();
        if stats.detailed() {
            // The reason first: a scraper that sees the connection in the duration histogram
            // then finds it among the reasons too.
            stats.closed[end.reason as usize].add(1);
            let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
            stats.duration.record(&DURATION_SCALE, micros);
        }
        if let Some(facts) = trace.log.filter(|_| self.logging()) {
            self.log(Decision {
                service: Arc::clone(entry),
                client,
                frontend: facts.frontend,
                candidates: facts.candidates,
                affinity: facts.affinity,
                backend: end.backend,
                attempts: facts.attempts,
                bytes_to_backend: end.to_backend,
                bytes_to_client: end.to_client,
                datagrams: None,
                duration,
                ended: SystemTime::now(),
                close: end.reason,
            });
        }
    }
}

/// What the decision log needs of a connection beyond its end (boxed: only while logging, so
/// the future of every connection stays small).
struct LogFacts {
    frontend: SocketAddr,
    candidates: u32,
    affinity: AffinityOutcome,
    attempts: u32,
}

/// What one TCP connection records on its way, from accept to close.
pub(crate) struct ConnTrace {
    stats: Arc<ServiceStats>,
    /// Accept time, when anything needs durations.
    started: Option<Instant>,
    log: Option<Box<LogFacts>>,
}

impl ConnTrace {
    /// Records the placement: the affinity outcome, and for the log how many backends were
    /// eligible (`candidates` counts them, only when the connection is logged).
    pub(crate) fn chose(&mut self, affinity: AffinityOutcome, candidates: impl FnOnce() -> u32) {
        self.stats.affinity(affinity);
        if let Some(facts) = &mut self.log {
            facts.candidates = candidates();
            facts.affinity = affinity;
        }
    }

    /// Connect attempt `attempt` (1 for the first) starts: returns its start time when latency
    /// is measured.
    #[inline]
    pub(crate) fn attempt(&mut self, attempt: u32) -> Option<Instant> {
        self.stats.add(Count::ConnectAttempts, 1);
        if attempt > 1 {
            self.stats.add(Count::ConnectRetries, 1);
        }
        if let Some(facts) = &mut self.log {
            facts.attempts += 1;
        }
        self.stats.detailed().then(Instant::now)
    }

    /// The attempt started at `since` connected.
    #[inline]
    pub(crate) fn connected(&self, since: Option<Instant>) {
        if let Some(t) = since.filter(|_| self.stats.detailed()) {
            let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.stats.connect.record(&CONNECT_SCALE, nanos);
        }
    }

    /// An attempt failed with `kind`.
    pub(crate) fn connect_error(&self, kind: ConnectError) {
        if self.stats.detailed() {
            self.stats.connect_errors[kind as usize].add(1);
        }
    }
}

/// How a TCP connection ended.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnEnd {
    pub(crate) backend: Option<SocketAddr>,
    pub(crate) to_backend: u64,
    pub(crate) to_client: u64,
    pub(crate) reason: CloseReason,
}

impl ConnEnd {
    /// Reset before reaching a backend.
    pub(crate) fn failed(reason: CloseReason) -> ConnEnd {
        ConnEnd {
            backend: None,
            to_backend: 0,
            to_client: 0,
            reason,
        }
    }
}
