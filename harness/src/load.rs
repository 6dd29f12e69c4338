//! One load against one address: its shape ([`Load`]), and [`crate::run`], which drives it from
//! client threads (each its own current-thread runtime, pinned to a CPU when asked) and
//! merges what they measured into a [`crate::Report`].
//!
//! # Open loop
//!
//! With a rate R over C connections, request k of connection j is *scheduled* at
//! `start + (j + k·C) / R`: the timetable is fixed before the load starts. A connection waits
//! for its next slot, sends, and records the answer's latency from the slot, not from when it
//! could send: when the target stalls, every request that should have gone out meanwhile
//! carries the stall in its latency, as users who kept arriving would have seen it (wrk2's
//! correction of coordinated omission). A closed loop instead measures from the send, and a
//! stall shows only in the few requests it held.
//!
//! # Rate steps
//!
//! An open loop may step through several rates, each for the load's duration, back to back
//! after one warm-up at the first: the report has the percentiles of each step, and its
//! timeline shows the throughput follow the steps (or fail to).

use std::net::SocketAddr;
use std::time::Duration;

/// What is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// HTTP/1.1 `GET` over keep-alive connections.
    Rr,
    /// HTTP/1.1 `GET` with `Connection: close`, a new connection per request.
    Cps,
    /// A stream of bytes each connection writes as fast as the path takes them, to a server
    /// that discards them; a "request" is one chunk of [`crate::bulk::CHUNK`] bytes handed
    /// to the kernel.
    Bulk,
    /// A datagram, answered by one.
    Udp,
}

impl Scenario {
    /// `rr`, `cps`, `bulk` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Rr => "rr",
            Scenario::Cps => "cps",
            Scenario::Bulk => "bulk",
            Scenario::Udp => "udp",
        }
    }

    /// Bytes each answered request carries (`bulk`'s chunk; 0 for the others).
    pub fn bytes_per_request(self) -> u64 {
        match self {
            Scenario::Bulk => crate::bulk::CHUNK as u64,
            _ => 0,
        }
    }
}

/// How requests are paced.
#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    /// Fixed rates, requests a second over all connections, on a timetable: the first
    /// through the warm-up and the first step, each next one for a step of its own.
    Open { rates: Vec<f64> },
    /// Each connection sends its next request as soon as the last is answered.
    Closed,
}

impl Mode {
    /// An open loop at one rate.
    pub fn open(rate: f64) -> Mode {
        Mode::Open { rates: vec![rate] }
    }

    /// The rate of each step (`None`: as fast as answered).
    pub(crate) fn steps(&self) -> Vec<Option<f64>> {
        match self {
            Mode::Open { rates } => rates.iter().copied().map(Some).collect(),
            Mode::Closed => vec![None],
        }
    }
}

/// One load.
#[derive(Clone, Debug)]
pub struct Load {
    pub target: SocketAddr,
    pub scenario: Scenario,
    pub mode: Mode,
    /// Connections (UDP: sockets) over all threads.
    pub connections: usize,
    /// Client threads; connection j runs on thread `j % threads`.
    pub threads: usize,
    /// CPUs to pin the client threads to, in turn (empty: not pinned).
    pub cpus: Vec<usize>,
    /// What is measured after the warm-up (each step's length, with rate steps).
    pub duration: Duration,
    /// Requests of the warm-up are sent but not counted.
    pub warmup: Duration,
    /// A request not answered within this is a `timeout` error.
    pub timeout: Duration,
    /// Client addresses: connection j connects from `sources[j % len]` (a port the kernel
    /// picks), so that schedulers that hash the client (`sh`, `mh`) see many clients. Empty:
    /// the address the kernel picks.
    pub sources: Vec<std::net::IpAddr>,
    /// When the warm-up starts (to line up with backends' scheduled events); `None`: a
    /// moment after [`crate::run`] is called. A time already past is taken as that moment.
    pub start: Option<std::time::Instant>,
    /// Draw a live progress line on stderr while it runs (when stderr is a terminal).
    pub progress: bool,
}

impl Load {
    /// A load of `scenario` against `target`: closed loop, 16 connections, one thread,
    /// 10 s after a 2 s warm-up, 2 s timeout; change what differs.
    pub fn new(target: SocketAddr, scenario: Scenario) -> Load {
        Load {
            target,
            scenario,
            mode: Mode::Closed,
            connections: 16,
            threads: 1,
            cpus: Vec::new(),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            sources: Vec::new(),
            start: None,
            progress: false,
        }
    }

    /// How long the measured part lasts: the duration, once per rate step.
    pub fn measured(&self) -> Duration {
        self.duration * u32::try_from(self.mode.steps().len()).unwrap_or(u32::MAX)
    }
}

/// A load that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("a load needs at least one connection and one thread")]
    Empty,
    #[error("the rate must be a positive number of requests a second, not {0}")]
    Rate(f64),
    #[error("a bulk stream goes as fast as the path takes it: --rate paces requests")]
    PacedBulk,
    #[error("cannot start a client thread: {0}")]
    Thread(#[source] std::io::Error),
}
