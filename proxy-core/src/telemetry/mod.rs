//! Data-plane telemetry: per-worker counters and histograms, and the per-flow decision log.
//!
//! Each worker owns one shard: per service it touched, a [`ServiceStats`] that only this worker
//! writes (a relaxed load and store per event, see [`Counter`]), so no event costs a shared
//! atomic or a lock. The admin thread reads every shard at scrape time and sums them into a
//! [`TelemetrySnapshot`]. A worker finds its stats for a service through a worker-local map
//! keyed by the identity of the service's [`ServiceState`] (which survives reloads that keep
//! the service's name), so the only lock a worker takes is its own shard's, once per service it
//! sees for the first time. The only node-wide numbers are what scheduling and admission need,
//! and they live elsewhere: backend connection counts, the UDP flow gauge, the descriptor
//! budget.
//!
//! What is counted per service (never per client): the service's [`Count`]s (connections,
//! bytes, UDP flows and datagrams; always on), and with telemetry on, backend connect latency
//! (successful attempts), connection duration (every accepted connection, whatever its end),
//! failed connect attempts by error, relayed connections by how they ended, and affinity hits
//! and misses. [`ProxyOptions::telemetry`](crate::ProxyOptions::telemetry) off turns those off
//! (no clock read); the counts and the decision log work either way.

mod conn;
mod counts;
mod decision;
mod histogram;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use config::{ServiceEntry, ServiceState, Table};

pub(crate) use conn::{ConnEnd, ConnTrace};
use counts::Counts;
pub use counts::{Count, CountsSnapshot};
pub use decision::{
    AffinityOutcome, BackendChange, BackendEvent, CloseReason, Datagrams, Decision, DecisionLog,
    Record, DECISION_QUEUE,
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
    /// Whether the histograms, reasons and affinity outcomes are recorded (telemetry on).
    detailed: bool,
    counts: Counts,
    connect: Histogram,
    duration: Histogram,
    connect_errors: [Counter; ConnectError::ALL.len()],
    closed: [Counter; CloseReason::ALL.len()],
    /// Hits, then misses.
    affinity: [Counter; 2],
}

impl ServiceStats {
    /// Adds `n` to `count`. Owning worker only.
    #[inline]
    pub(crate) fn add(&self, count: Count, n: u64) {
        self.counts.add(count, n);
    }

    /// Takes `n` from the gauge `count`. Owning worker only.
    #[inline]
    pub(crate) fn sub(&self, count: Count, n: u64) {
        self.counts.sub(count, n);
    }

    /// Whether histograms and the other details are recorded.
    #[inline]
    pub(crate) fn detailed(&self) -> bool {
        self.detailed
    }

    /// Counts what affinity did for a new connection or flow (with telemetry on).
    pub(crate) fn affinity(&self, outcome: AffinityOutcome) {
        if !self.detailed {
            return;
        }
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
    services: Mutex<Vec<(Arc<ServiceState>, Arc<ServiceStats>)>>,
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
    /// Shards for `workers` workers; `enabled` off records only the counts (the log still
    /// works).
    pub fn new(workers: usize, enabled: bool) -> Telemetry {
        Telemetry {
            enabled,
            shards: (0..workers).map(|_| Shard::default()).collect(),
            decisions: DecisionLog::new(DECISION_QUEUE),
        }
    }

    /// Whether histograms and the other details are collected (the counts always are).
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
            for (state, stats) in list.iter() {
                services
                    .entry(Arc::as_ptr(state) as usize)
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
    /// Whether histograms and the other details were collected (off with `--no-telemetry`;
    /// the counts always are).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The counts of `entry`'s service (zero when no connection reached it yet).
    pub fn service(&self, entry: &ServiceEntry) -> &ServiceSnapshot {
        self.services
            .get(&(Arc::as_ptr(&entry.state) as usize))
            .unwrap_or(&ServiceSnapshot::EMPTY)
    }
}

/// One service's counts over every worker.
#[derive(Clone, Copy, Debug)]
pub struct ServiceSnapshot {
    counts: CountsSnapshot,
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
        counts: CountsSnapshot::EMPTY,
        connect: HistogramSnapshot::empty(&CONNECT_SCALE),
        duration: HistogramSnapshot::empty(&DURATION_SCALE),
        connect_errors: [0; ConnectError::ALL.len()],
        closed: [0; CloseReason::ALL.len()],
        affinity: [0; 2],
    };

    fn add(&mut self, s: &ServiceStats) {
        self.counts.add(&s.counts);
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

    /// The value of `count`.
    pub fn count(&self, count: Count) -> u64 {
        self.counts.get(count)
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

    /// This worker's stats for `entry`'s service: one lookup in a worker-local map, and the
    /// first time for a service one push into the shard under its lock.
    pub(crate) fn stats(&self, entry: &ServiceEntry) -> Arc<ServiceStats> {
        let key = Arc::as_ptr(&entry.state) as usize;
        let mut cache = self.cache.borrow_mut();
        let stats = cache.entry(key).or_insert_with(|| {
            let stats = Arc::new(ServiceStats {
                detailed: self.shared.enabled,
                ..ServiceStats::default()
            });
            self.shared.shards[self.worker]
                .services
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((Arc::clone(&entry.state), Arc::clone(&stats)));
            stats
        });
        Arc::clone(stats)
    }

    /// Forgets services that are not in `table` (a reload removed them; a connection of theirs
    /// still open records into stats nobody reads any more).
    pub(crate) fn retain(&self, table: &Table) {
        let live: HashSet<usize> = table
            .services()
            .iter()
            .map(|s| Arc::as_ptr(&s.state) as usize)
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
                let stats = w.stats(&web);
                stats.duration.record(&DURATION_SCALE, 2_000);
                stats.closed[CloseReason::Eof as usize].add(1);
                stats.add(Count::Accepted, 1);
                stats.add(Count::BytesToClient, 10);
            }
            w.stats(&web).affinity(AffinityOutcome::Hit);
        }
        w1.stats(&web).affinity(AffinityOutcome::Miss);
        let snap = shared.snapshot();
        let s = snap.service(&web);
        assert_eq!(s.duration.count(), 5);
        assert_eq!(s.closed(CloseReason::Eof), 5);
        assert_eq!(s.affinity(AffinityOutcome::Hit), 2);
        assert_eq!(s.affinity(AffinityOutcome::Miss), 1);
        assert_eq!(s.connect.count(), 0);
        assert_eq!(s.count(Count::Accepted), 5);
        assert_eq!(s.count(Count::BytesToClient), 50);
        assert_eq!(s.count(Count::ConnectAttempts), 0);

        // A reload that drops the service forgets it; an unknown service reads as zero.
        w0.retain(&Table::default());
        let snap = shared.snapshot();
        assert_eq!(
            snap.service(&web).duration.count(),
            3,
            "worker 1 still has it"
        );
        assert_eq!(snap.service(&web).count(Count::Accepted), 3);
        assert_eq!(snap.service(&entry()).duration.count(), 0);
        assert_eq!(snap.service(&entry()).count(Count::Accepted), 0);
    }

    #[test]
    fn counts_survive_a_swap_that_keeps_the_service() {
        let shared = Arc::new(Telemetry::new(1, true));
        let w = WorkerTelemetry::new(Arc::clone(&shared), 0);
        let config = |weight| {
            let mut svc = entry().service.clone();
            svc.backends[0].weight = weight;
            Config {
                services: vec![svc],
            }
        };
        let accepted = |t: &Table| {
            shared
                .snapshot()
                .service(&t.services()[0])
                .count(Count::Accepted)
        };
        let t1 = Table::build(&config(1), None);
        w.stats(&t1.services()[0]).add(Count::Accepted, 1);
        // A reload that changes the service: a new entry with the service's identity.
        let t2 = Table::build(&config(3), Some(&t1));
        assert!(!Arc::ptr_eq(&t1.services()[0], &t2.services()[0]));
        w.retain(&t2);
        w.stats(&t2.services()[0]).add(Count::Accepted, 1);
        assert_eq!(accepted(&t2), 2, "counted before and after the swap");
        // Removed, then added again: another service, counted from zero.
        let t3 = Table::build(&Config::default(), Some(&t2));
        w.retain(&t3);
        let t4 = Table::build(&config(3), Some(&t3));
        assert_eq!(accepted(&t4), 0);
    }

    #[test]
    fn off_counts_but_records_no_details() {
        let shared = Arc::new(Telemetry::new(1, false));
        let w = WorkerTelemetry::new(Arc::clone(&shared), 0);
        let web = entry();
        let stats = w.stats(&web);
        assert!(!stats.detailed());
        stats.affinity(AffinityOutcome::Hit);
        stats.add(Count::Accepted, 1);
        let snap = shared.snapshot();
        assert_eq!(snap.service(&web).affinity(AffinityOutcome::Hit), 0);
        assert_eq!(snap.service(&web).count(Count::Accepted), 1);
        assert!(!snap.enabled());
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
