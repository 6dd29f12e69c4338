//! Data-plane telemetry: per-worker histograms and counters, and the per-flow decision log.
//!
//! Each worker owns one shard: per service it touched, a [`ServiceStats`] that only this worker
//! writes (a relaxed load and store per event, see [`Counter`]), so no event costs a shared
//! atomic or a lock. The admin thread reads every shard at scrape time and sums them into a
//! [`TelemetrySnapshot`]. A worker finds its stats for a service through a worker-local map
//! keyed by the identity of the service's [`ServiceCounters`] (which survive reloads that keep
//! the service's name), so the only lock a worker takes is its own shard's, once per service it
//! sees for the first time.
//!
//! What is counted per service (never per client): backend connect latency (successful
//! attempts), connection duration (every accepted connection, whatever its end), failed
//! connect attempts by error, relayed connections by how they ended, and affinity hits and
//! misses. [`ProxyOptions::telemetry`](crate::ProxyOptions::telemetry) off turns all of it off
//! (no clock read, no map lookup); the decision log works either way.

mod decision;
mod histogram;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use config::{ServiceCounters, ServiceEntry, Table};

pub use decision::{
    AffinityOutcome, CloseReason, Datagrams, Decision, DecisionLog, DECISION_QUEUE,
};
pub use histogram::HistogramSnapshot;
use histogram::{Counter, Histogram, CONNECT_SCALE, DURATION_SCALE};

/// Why one connect attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectError {
    /// The backend answered with a reset (`ECONNREFUSED`): nothing listens.
    Refused,
    /// No answer within the service's `connect_timeout`.
    Timeout,
    /// No route (`ENETUNREACH`, `EHOSTUNREACH`, or an ICMP error for it).
    Unreachable,
    /// Anything else (out of descriptors or ports, ...).
    Other,
}

impl ConnectError {
    /// Every kind, in index order.
    pub const ALL: [ConnectError; 4] = [
        ConnectError::Refused,
        ConnectError::Timeout,
        ConnectError::Unreachable,
        ConnectError::Other,
    ];

    /// The kind as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            ConnectError::Refused => "refused",
            ConnectError::Timeout => "timeout",
            ConnectError::Unreachable => "unreachable",
            ConnectError::Other => "other",
        }
    }

    /// The kind of a failed `connect(2)`.
    pub(crate) fn of(e: &std::io::Error) -> ConnectError {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => ConnectError::Refused,
            Some(libc::ETIMEDOUT) => ConnectError::Timeout,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EHOSTDOWN | libc::ENETDOWN) => {
                ConnectError::Unreachable
            }
            _ => ConnectError::Other,
        }
    }
}

/// One worker's counts for one service. Only that worker writes it.
#[derive(Debug, Default)]
#[repr(align(64))] // its own cache lines: no false sharing with another worker's stats
pub(crate) struct ServiceStats {
    connect: Histogram,
    duration: Histogram,
    connect_errors: [Counter; ConnectError::ALL.len()],
    closed: [Counter; CloseReason::ALL.len()],
    /// Hits, then misses.
    affinity: [Counter; 2],
}

impl ServiceStats {
    fn affinity(&self, outcome: AffinityOutcome) {
        match outcome {
            AffinityOutcome::Off => {}
            AffinityOutcome::Hit => self.affinity[0].add(1),
            AffinityOutcome::Miss => self.affinity[1].add(1),
        }
    }
}

/// The services one worker has stats for; locked by the worker only to add or prune a service,
/// and by the scraper to read.
#[derive(Debug, Default)]
struct Shard {
    services: Mutex<Vec<(Arc<ServiceCounters>, Arc<ServiceStats>)>>,
    /// Pauses UDP receive coalescing took (counted with telemetry on or off).
    udp_coalesce_pauses: Counter,
}

/// Every worker's telemetry and the decision log: shared by the workers, the [`Proxy`](crate::Proxy)
/// (crate::Proxy) and whoever scrapes or writes the log.
#[derive(Debug)]
pub struct Telemetry {
    enabled: bool,
    shards: Vec<Shard>,
    decisions: DecisionLog,
}

impl Telemetry {
    /// Shards for `workers` workers; `enabled` off counts nothing (the log still works).
    pub(crate) fn new(workers: usize, enabled: bool) -> Telemetry {
        Telemetry {
            enabled,
            shards: (0..workers).map(|_| Shard::default()).collect(),
            decisions: DecisionLog::new(DECISION_QUEUE),
        }
    }

    /// Whether histograms and counters are collected.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The decision log's switch and queue.
    pub fn decision_log(&self) -> &DecisionLog {
        &self.decisions
    }

    /// Pauses UDP receive coalescing took, over every worker.
    pub fn udp_coalesce_pauses(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.udp_coalesce_pauses.get())
            .sum()
    }

    /// The sum over every worker now. Services nobody touched yet read as zero.
    pub fn snapshot(&self) -> TelemetrySnapshot {
        let mut services: HashMap<usize, ServiceSnapshot> = HashMap::new();
        for shard in &self.shards {
            let list = shard
                .services
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (counters, stats) in list.iter() {
                services
                    .entry(Arc::as_ptr(counters) as usize)
                    .or_insert(ServiceSnapshot::EMPTY)
                    .add(stats);
            }
        }
        TelemetrySnapshot {
            enabled: self.enabled,
            services,
        }
    }
}

/// Every worker's counts summed, per service.
#[derive(Debug)]
pub struct TelemetrySnapshot {
    enabled: bool,
    services: HashMap<usize, ServiceSnapshot>,
}

impl TelemetrySnapshot {
    /// Whether anything was collected (off with `--no-telemetry`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The counts of `entry`'s service (zero when no connection reached it yet).
    pub fn service(&self, entry: &ServiceEntry) -> &ServiceSnapshot {
        self.services
            .get(&(Arc::as_ptr(&entry.counters) as usize))
            .unwrap_or(&ServiceSnapshot::EMPTY)
    }
}

/// One service's counts over every worker.
#[derive(Clone, Copy, Debug)]
pub struct ServiceSnapshot {
    /// Latency of successful backend connects.
    pub connect: HistogramSnapshot,
    /// Life of client connections, accept to close, however they ended.
    pub duration: HistogramSnapshot,
    connect_errors: [u64; ConnectError::ALL.len()],
    closed: [u64; CloseReason::ALL.len()],
    affinity: [u64; 2],
}

impl ServiceSnapshot {
    const EMPTY: ServiceSnapshot = ServiceSnapshot {
        connect: HistogramSnapshot::empty(&CONNECT_SCALE),
        duration: HistogramSnapshot::empty(&DURATION_SCALE),
        connect_errors: [0; ConnectError::ALL.len()],
        closed: [0; CloseReason::ALL.len()],
        affinity: [0; 2],
    };

    fn add(&mut self, s: &ServiceStats) {
        self.connect.add(&s.connect);
        self.duration.add(&s.duration);
        for (total, c) in self.connect_errors.iter_mut().zip(&s.connect_errors) {
            *total += c.get();
        }
        for (total, c) in self.closed.iter_mut().zip(&s.closed) {
            *total += c.get();
        }
        for (total, c) in self.affinity.iter_mut().zip(&s.affinity) {
            *total += c.get();
        }
    }

    /// Connect attempts that failed with `kind`.
    pub fn connect_errors(&self, kind: ConnectError) -> u64 {
        self.connect_errors[kind as usize]
    }

    /// Connections (or flows) that ended for `reason`.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason as usize]
    }

    /// Affinity lookups with `outcome` (0 for [`AffinityOutcome::Off`]).
    pub fn affinity(&self, outcome: AffinityOutcome) -> u64 {
        match outcome {
            AffinityOutcome::Off => 0,
            AffinityOutcome::Hit => self.affinity[0],
            AffinityOutcome::Miss => self.affinity[1],
        }
    }
}

/// A worker's handle on its shard, with a local map from service to stats.
pub(crate) struct WorkerTelemetry {
    shared: Arc<Telemetry>,
    worker: usize,
    cache: RefCell<HashMap<usize, Arc<ServiceStats>>>,
}

impl WorkerTelemetry {
    pub(crate) fn new(shared: Arc<Telemetry>, worker: usize) -> WorkerTelemetry {
        debug_assert!(worker < shared.shards.len(), "one shard per worker");
        WorkerTelemetry {
            shared,
            worker,
            cache: RefCell::default(),
        }
    }

    /// This worker's stats for `entry`'s service; `None` when telemetry is off.
    fn stats(&self, entry: &ServiceEntry) -> Option<Arc<ServiceStats>> {
        if !self.shared.enabled {
            return None;
        }
        let key = Arc::as_ptr(&entry.counters) as usize;
        let mut cache = self.cache.borrow_mut();
        let stats = cache.entry(key).or_insert_with(|| {
            let stats = Arc::new(ServiceStats::default());
            self.shared.shards[self.worker]
                .services
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((Arc::clone(&entry.counters), Arc::clone(&stats)));
            stats
        });
        Some(Arc::clone(stats))
    }

    /// Forgets services that are not in `table` (a reload removed them; a connection of theirs
    /// still open records into stats nobody reads any more).
    pub(crate) fn retain(&self, table: &Table) {
        let live: HashSet<usize> = table
            .services()
            .iter()
            .map(|s| Arc::as_ptr(&s.counters) as usize)
            .collect();
        self.cache.borrow_mut().retain(|k, _| live.contains(k));
        self.shared.shards[self.worker]
            .services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(c, _)| live.contains(&(Arc::as_ptr(c) as usize)));
    }

    /// UDP receive coalescing paused this worker once.
    pub(crate) fn udp_coalesce_pause(&self) {
        self.shared.shards[self.worker].udp_coalesce_pauses.add(1);
    }

    /// Whether the decision log is on: build a [`Decision`] only then.
    #[inline]
    pub(crate) fn logging(&self) -> bool {
        self.shared.decisions.enabled()
    }

    /// Hands `decision` to the log's writer (dropped and counted when its queue is full).
    pub(crate) fn log(&self, decision: Decision) {
        self.shared.decisions.push(decision);
    }

    /// Counts what affinity did for a new flow of `entry` (UDP; TCP counts through
    /// [`ConnTrace::chose`]).
    pub(crate) fn affinity(&self, entry: &ServiceEntry, outcome: AffinityOutcome) {
        if outcome != AffinityOutcome::Off {
            if let Some(stats) = self.stats(entry) {
                stats.affinity(outcome);
            }
        }
    }

    /// Starts tracing a TCP connection of `entry` that reached `frontend` (the address the
    /// client dialled).
    pub(crate) fn open(&self, entry: &ServiceEntry, frontend: SocketAddr) -> ConnTrace {
        let stats = self.stats(entry);
        let log = self.logging().then(|| {
            Box::new(LogFacts {
                frontend,
                candidates: 0,
                affinity: AffinityOutcome::Off,
                attempts: 0,
            })
        });
        let started = (stats.is_some() || log.is_some()).then(Instant::now);
        ConnTrace {
            stats,
            started,
            log,
        }
    }

    /// Records the end of a traced TCP connection, and logs it when the log was on for its
    /// whole life.
    pub(crate) fn close(
        &self,
        trace: ConnTrace,
        entry: &Arc<ServiceEntry>,
        client: SocketAddr,
        end: ConnEnd,
    ) {
        let Some(started) = trace.started else {
            return;
        };
        let duration = started.elapsed();
        if let Some(stats) = &trace.stats {
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
    stats: Option<Arc<ServiceStats>>,
    /// Accept time, when anything needs durations.
    started: Option<Instant>,
    log: Option<Box<LogFacts>>,
}

impl ConnTrace {
    /// Records the placement: the affinity outcome, and for the log how many backends were
    /// eligible (`candidates` counts them, only when the connection is logged).
    pub(crate) fn chose(&mut self, affinity: AffinityOutcome, candidates: impl FnOnce() -> u32) {
        if let Some(stats) = &self.stats {
            stats.affinity(affinity);
        }
        if let Some(facts) = &mut self.log {
            facts.candidates = candidates();
            facts.affinity = affinity;
        }
    }

    /// A connect attempt starts: returns its start time when latency is measured.
    #[inline]
    pub(crate) fn attempt(&mut self) -> Option<Instant> {
        if let Some(facts) = &mut self.log {
            facts.attempts += 1;
        }
        self.stats.as_ref().map(|_| Instant::now())
    }

    /// The attempt started at `since` connected.
    #[inline]
    pub(crate) fn connected(&self, since: Option<Instant>) {
        if let (Some(stats), Some(t)) = (&self.stats, since) {
            let nanos = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            stats.connect.record(&CONNECT_SCALE, nanos);
        }
    }

    /// An attempt failed with `kind`.
    pub(crate) fn connect_error(&self, kind: ConnectError) {
        if let Some(stats) = &self.stats {
            stats.connect_errors[kind as usize].add(1);
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use balancers::SchedulerConfig;
    use config::{Backend, Config, Protocol, Service};

    /// A one-backend TCP service entry.
    pub(crate) fn entry() -> Arc<ServiceEntry> {
        let svc = Service::with_defaults(
            "web",
            Protocol::Tcp,
            vec!["127.0.0.1:80".parse().unwrap()],
            vec![Backend::new("127.0.0.1:81".parse().unwrap(), 1)],
            SchedulerConfig::default(),
        );
        let table = Table::build(
            &Config {
                services: vec![svc],
            },
            None,
        );
        Arc::clone(&table.services()[0])
    }

    #[test]
    fn workers_write_their_own_shards_and_the_snapshot_sums_them() {
        let shared = Arc::new(Telemetry::new(2, true));
        let (w0, w1) = (
            WorkerTelemetry::new(Arc::clone(&shared), 0),
            WorkerTelemetry::new(Arc::clone(&shared), 1),
        );
        let web = entry();
        for (w, n) in [(&w0, 2), (&w1, 3)] {
            for _ in 0..n {
                let stats = w.stats(&web).unwrap();
                stats.duration.record(&DURATION_SCALE, 2_000);
                stats.closed[CloseReason::Eof as usize].add(1);
            }
            w.affinity(&web, AffinityOutcome::Hit);
        }
        w1.affinity(&web, AffinityOutcome::Miss);
        let snap = shared.snapshot();
        let s = snap.service(&web);
        assert_eq!(s.duration.count(), 5);
        assert_eq!(s.closed(CloseReason::Eof), 5);
        assert_eq!(s.affinity(AffinityOutcome::Hit), 2);
        assert_eq!(s.affinity(AffinityOutcome::Miss), 1);
        assert_eq!(s.connect.count(), 0);

        // A reload that drops the service forgets it; an unknown service reads as zero.
        w0.retain(&Table::default());
        let snap = shared.snapshot();
        assert_eq!(
            snap.service(&web).duration.count(),
            3,
            "worker 1 still has it"
        );
        assert_eq!(snap.service(&entry()).duration.count(), 0);
    }

    #[test]
    fn off_counts_nothing() {
        let shared = Arc::new(Telemetry::new(1, false));
        let w = WorkerTelemetry::new(Arc::clone(&shared), 0);
        let web = entry();
        assert!(w.stats(&web).is_none());
        w.affinity(&web, AffinityOutcome::Hit);
        assert_eq!(
            shared
                .snapshot()
                .service(&web)
                .affinity(AffinityOutcome::Hit),
            0
        );
        assert!(!shared.snapshot().enabled());
    }

    #[test]
    fn connect_errors_are_classified_by_errno() {
        let e = |n| ConnectError::of(&std::io::Error::from_raw_os_error(n));
        assert_eq!(e(libc::ECONNREFUSED), ConnectError::Refused);
        assert_eq!(e(libc::ETIMEDOUT), ConnectError::Timeout);
        assert_eq!(e(libc::EHOSTUNREACH), ConnectError::Unreachable);
        assert_eq!(e(libc::EMFILE), ConnectError::Other);
    }
}
