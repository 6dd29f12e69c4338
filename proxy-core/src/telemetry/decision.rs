//! The per-flow decision log: what the data plane decided for one TCP connection or UDP flow,
//! and what happened to a backend (marked down or up, ejected or readmitted), handed to a
//! writer thread through a bounded queue.
//!
//! Workers never write, format or wait: [`DecisionLog::push`] is a `try_send` into a bounded
//! queue, and a full queue drops the record and counts it. Formatting and the destination
//! (file, stdout) belong to whoever drains the queue with [`DecisionLog::next`] (the `ringlb`
//! binary's writer thread).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use config::ServiceEntry;

/// Records the queue holds before new ones are dropped (a few MiB at most).
pub const DECISION_QUEUE: usize = 8192;

/// What ClientIP session affinity did for a new connection or flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityOutcome {
    /// The service has no session affinity.
    Off,
    /// The client's pinned backend was alive and eligible, and was used.
    Hit,
    /// No live pin (new client, expired, or its backend not eligible): the scheduler picked.
    Miss,
}

impl AffinityOutcome {
    /// `off`, `hit` or `miss`.
    pub fn name(self) -> &'static str {
        match self {
            AffinityOutcome::Off => "off",
            AffinityOutcome::Hit => "hit",
            AffinityOutcome::Miss => "miss",
        }
    }
}

/// Why a connection or flow ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// TCP: both directions reached end of stream.
    Eof,
    /// Nothing moved in either direction for the service's idle timeout.
    IdleTimeout,
    /// TCP: its backend left the table and `--backend-drain-timeout` passed, or its health
    /// checks marked it down with `on_marked_down: shutdown-sessions`; both sides were reset.
    Drained,
    /// TCP: a socket failed (typically a reset); the other side was reset too.
    Reset,
    /// No backend was eligible; the client was reset (TCP) or the datagram dropped (UDP).
    NoBackend,
    /// TCP: every connect attempt failed; the client was reset.
    ConnectFailed,
    /// UDP: the flow's backend stopped being usable (removed, weight 0, refused by ICMP).
    Rebalanced,
    /// UDP: the frontend was removed or the worker stopped.
    Stopped,
    /// TCP: still open when a shutdown's `--drain-timeout` ran out; both sides were reset.
    DrainTimeout,
    /// TCP: a frontend that reads the PROXY protocol got no valid header in time (malformed,
    /// too long, cut short); the client was reset.
    ProxyHeader,
    /// TCP: a frontend that reads the PROXY protocol was reached from outside its
    /// `accept_proxy_protocol` ranges; the client was reset.
    ProxyUntrusted,
}

impl CloseReason {
    /// Every reason, in index order.
    pub const ALL: [CloseReason; 11] = [
        CloseReason::Eof,
        CloseReason::IdleTimeout,
        CloseReason::Drained,
        CloseReason::Reset,
        CloseReason::NoBackend,
        CloseReason::ConnectFailed,
        CloseReason::Rebalanced,
        CloseReason::Stopped,
        CloseReason::DrainTimeout,
        CloseReason::ProxyHeader,
        CloseReason::ProxyUntrusted,
    ];

    /// The reason as logged and as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Eof => "eof",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::Drained => "drained",
            CloseReason::Reset => "reset",
            CloseReason::NoBackend => "no_backend",
            CloseReason::ConnectFailed => "connect_failed",
            CloseReason::Rebalanced => "rebalanced",
            CloseReason::Stopped => "stopped",
            CloseReason::DrainTimeout => "drain_timeout",
            CloseReason::ProxyHeader => "proxy_header",
            CloseReason::ProxyUntrusted => "proxy_untrusted",
        }
    }
}

/// Datagram counts of a UDP flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Datagrams {
    /// Client to backend.
    pub to_backend: u64,
    /// Backend to client.
    pub to_client: u64,
}

/// One line of the decision log: a TCP connection or UDP flow that ended.
#[derive(Clone, Debug)]
pub struct Decision {
    /// The service (its name, protocol and scheduler are logged).
    pub service: Arc<ServiceEntry>,
    /// The client's address.
    pub client: SocketAddr,
    /// The local address the client reached.
    pub frontend: SocketAddr,
    /// Backends eligible when the flow was placed.
    pub candidates: u32,
    /// What session affinity did.
    pub affinity: AffinityOutcome,
    /// The backend that served it; `None` when none was reached.
    pub backend: Option<SocketAddr>,
    /// Connect attempts (TCP; 1 for a UDP flow that had a backend, 0 without).
    pub attempts: u32,
    /// Bytes client to backend.
    pub bytes_to_backend: u64,
    /// Bytes backend to client.
    pub bytes_to_client: u64,
    /// Datagrams each way (UDP only).
    pub datagrams: Option<Datagrams>,
    /// From accept (TCP) or the first datagram (UDP) to the end.
    pub duration: Duration,
    /// When it ended.
    pub ended: SystemTime,
    /// Why it ended.
    pub close: CloseReason,
}

/// What happened to a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendChange {
    /// Its health checks marked it down, the last one for `reason`.
    Down {
        /// Why the last check failed.
        reason: String,
    },
    /// Its health checks marked it up again.
    Up,
    /// Outlier detection ejected it after `failures` in a row, for `time`.
    Ejected {
        /// Failures in a row.
        failures: u32,
        /// How long this ejection lasts.
        time: Duration,
    },
    /// Its ejection time was up: it takes connections again.
    Readmitted,
}

impl BackendChange {
    /// `down`, `up`, `ejected` or `readmitted`.
    pub fn name(&self) -> &'static str {
        match self {
            BackendChange::Down { .. } => "down",
            BackendChange::Up => "up",
            BackendChange::Ejected { .. } => "ejected",
            BackendChange::Readmitted => "readmitted",
        }
    }
}

/// One line of the decision log about a backend whose state changed.
#[derive(Clone, Debug)]
pub struct BackendEvent {
    /// The service's name.
    pub service: String,
    /// The backend.
    pub backend: SocketAddr,
    /// What changed.
    pub change: BackendChange,
    /// When.
    pub at: SystemTime,
}

/// One line of the decision log.
#[derive(Clone, Debug)]
pub enum Record {
    /// A connection or flow that ended.
    Flow(Decision),
    /// A backend whose state changed.
    Backend(BackendEvent),
}

/// The switch and queue of the decision log, shared by every worker, the control plane and
/// the writer.
#[derive(Debug)]
pub struct DecisionLog {
    enabled: AtomicBool,
    tx: flume::Sender<Record>,
    rx: flume::Receiver<Record>,
    dropped: AtomicU64,
}

impl DecisionLog {
    /// An empty log, off, holding at most `capacity` records.
    pub(crate) fn new(capacity: usize) -> DecisionLog {
        let (tx, rx) = flume::bounded(capacity);
        DecisionLog {
            enabled: AtomicBool::new(false),
            tx,
            rx,
            dropped: AtomicU64::new(0),
        }
    }

    /// Turns logging on or off. Connections already open when it is turned on are not logged
    /// (their placement was not recorded); turning it off stops logging at once.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
    }

    /// Whether connections and flows are being logged.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    /// Queues `decision` for the writer, or drops and counts it when the queue is full.
    /// Never blocks.
    pub(crate) fn push(&self, decision: Decision) {
        self.queue(Record::Flow(decision));
    }

    /// Queues `event` for the writer when the log is on (dropped and counted when the queue
    /// is full). Never blocks.
    pub fn backend(&self, event: BackendEvent) {
        if self.enabled() {
            self.queue(Record::Backend(event));
        }
    }

    fn queue(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// The next record, waiting up to `wait` for one (the writer thread's loop).
    pub fn next(&self, wait: Duration) -> Option<Record> {
        self.rx.recv_timeout(wait).ok()
    }

    /// The next record if one is queued.
    pub fn try_next(&self) -> Option<Record> {
        self.rx.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let log = DecisionLog::new(2);
        let d = Decision {
            service: super::super::tests::entry(),
            client: "127.0.0.1:1".parse().unwrap(),
            frontend: "127.0.0.1:2".parse().unwrap(),
            candidates: 1,
            affinity: AffinityOutcome::Off,
            backend: None,
            attempts: 0,
            bytes_to_backend: 0,
            bytes_to_client: 0,
            datagrams: None,
            duration: Duration::ZERO,
            ended: SystemTime::UNIX_EPOCH,
            close: CloseReason::NoBackend,
        };
        for _ in 0..5 {
            log.push(d.clone());
        }
        assert_eq!(log.dropped(), 3);
        assert!(log.try_next().is_some());
        assert!(log.next(Duration::from_millis(1)).is_some());
        assert!(log.try_next().is_none());
        let event = BackendEvent {
            service: "web".into(),
            backend: "127.0.0.1:1".parse().unwrap(),
            change: BackendChange::Up,
            at: SystemTime::UNIX_EPOCH,
        };
        log.backend(event.clone());
        assert!(
            log.try_next().is_none(),
            "nothing is queued while the log is off"
        );
        log.set_enabled(true);
        log.backend(event);
        assert!(matches!(log.try_next(), Some(Record::Backend(e)) if e.change.name() == "up"));
    }
}
