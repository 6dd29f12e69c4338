//! One load against one address: its shape ([`Load`]), and [`run`], which drives it from
//! client threads (each its own current-thread runtime, pinned to a CPU when asked) and
//! merges what they measured into a [`Report`].
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::stats::{ErrorKind, Recorder, Report};

/// What is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// HTTP/1.1 `GET` over keep-alive connections.
    Rr,
    /// HTTP/1.1 `GET` with `Connection: close`, a new connection per request.
    Cps,
    /// A datagram, answered by one.
    Udp,
}

impl Scenario {
    /// `rr`, `cps` or `udp`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Rr => "rr",
            Scenario::Cps => "cps",
            Scenario::Udp => "udp",
        }
    }
}

/// How requests are paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    /// A fixed rate, requests a second over all connections, on a timetable.
    Open { rate: f64 },
    /// Each connection sends its next request as soon as the last is answered.
    Closed,
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
    /// What is measured after the warm-up.
    pub duration: Duration,
    /// Requests of the warm-up are sent but not counted.
    pub warmup: Duration,
    /// A request not answered within this is a `timeout` error.
    pub timeout: Duration,
    /// Client addresses: connection j connects from `sources[j % len]` (a port the kernel
    /// picks), so that schedulers that hash the client (`sh`, `mh`) see many clients. Empty:
    /// the address the kernel picks.
    pub sources: Vec<std::net::IpAddr>,
}

/// A load that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("a load needs at least one connection and one thread")]
    Empty,
    #[error("the rate must be a positive number of requests a second, not {0}")]
    Rate(f64),
    #[error("cannot start a client thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// When the load starts, counts, and ends.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    counted: Instant,
    end: Instant,
}

/// Runs `load` and reports what it measured. Blocks for the warm-up and the duration (and
/// at most one request timeout more).
pub fn run(load: &Load) -> Result<Report, LoadError> {
    if load.connections == 0 || load.threads == 0 {
        return Err(LoadError::Empty);
    }
    if let Mode::Open { rate } = load.mode {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(LoadError::Rate(rate));
        }
    }
    // Every thread starts on the same timetable, a moment from now.
    let start = Instant::now() + Duration::from_millis(50);
    let window = Window {
        start,
        counted: start + load.warmup,
        end: start + load.warmup + load.duration,
    };
    let load = Arc::new(load.clone());
    let threads: Vec<_> = (0..load.threads)
        .map(|t| {
            let load = Arc::clone(&load);
            std::thread::Builder::new()
                .name(format!("bench-client-{t}"))
                .spawn(move || client_thread(&load, t, window))
                .map_err(LoadError::Thread)
        })
        .collect::<Result<_, _>>()?;
    let mut total = Recorder::default();
    for thread in threads {
        if let Ok(recorder) = thread.join() {
            total.merge(&recorder);
        }
    }
    Ok(report(&load, &total))
}

fn report(load: &Load, total: &Recorder) -> Report {
    let secs = load.duration.as_secs_f64();
    let requests = total.answered_count();
    Report {
        target: load.target.to_string(),
        scenario: load.scenario.name().to_owned(),
        mode: match load.mode {
            Mode::Open { .. } => "open".to_owned(),
            Mode::Closed => "closed".to_owned(),
        },
        rate: match load.mode {
            Mode::Open { rate } => Some(rate),
            Mode::Closed => None,
        },
        connections: load.connections,
        threads: load.threads,
        duration_s: secs,
        warmup_s: load.warmup.as_secs_f64(),
        requests,
        throughput_rps: if secs > 0.0 {
            requests as f64 / secs
        } else {
            0.0
        },
        errors: total.errors(),
        latency_us: total.latency(),
    }
}

/// Thread `t`: its connections on a runtime of its own.
fn client_thread(load: &Arc<Load>, t: usize, window: Window) -> Recorder {
    if let Some(&cpu) = load.cpus.get(t % load.cpus.len().max(1)) {
        // Not pinned, the load still runs.
        let _ = pin(cpu);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return Recorder::default(),
    };
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for j in (t..load.connections).step_by(load.threads) {
            tasks.spawn(connection(Arc::clone(load), j, window));
        }
        let mut recorder = Recorder::default();
        while let Some(done) = tasks.join_next().await {
            if let Ok(r) = done {
                recorder.merge(&r);
            }
        }
        recorder
    })
}

/// Pins the calling thread (a process, called between fork and exec) to `cpu`. Only
/// `sched_setaffinity` is called, which is async-signal-safe.
pub fn pin(cpu: usize) -> std::io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu_set_t` is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes one bit of `set`, which we own; `cpu` is within its size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the caller; `set` is a valid `cpu_set_t` of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// What one connection holds between requests.
enum Link {
    None,
    Http(crate::http::Connection),
    Udp(crate::udp::Flow),
}

/// Connection `j` of the load: its requests on the timetable (open) or back to back
/// (closed), until the window ends.
async fn connection(load: Arc<Load>, j: usize, window: Window) -> Recorder {
    let mut recorder = Recorder::default();
    let mut link = Link::None;
    tokio::time::sleep_until(window.start).await;
    for k in 0u64.. {
        let scheduled = match load.mode {
            Mode::Open { rate } => {
                let slot = (j as f64 + k as f64 * load.connections as f64) / rate;
                window.start + Duration::from_secs_f64(slot)
            }
            Mode::Closed => Instant::now(),
        };
        if scheduled >= window.end {
            break;
        }
        if scheduled > Instant::now() {
            // Only when it is due later: a timer that is due already still waits for the
            // runtime's next tick (up to a millisecond).
            tokio::time::sleep_until(scheduled).await;
        }
        let source = load.sources.get(j % load.sources.len().max(1)).copied();
        let requested = request(&load, source, &mut link);
        let outcome = tokio::time::timeout(load.timeout, requested).await;
        let outcome = outcome.unwrap_or(Err(ErrorKind::Timeout));
        if outcome.is_err() {
            // A failed connection is made again for the next request.
            link = Link::None;
        }
        if scheduled >= window.counted {
            match outcome {
                Ok(()) => recorder.answered(scheduled.elapsed()),
                Err(kind) => recorder.failed(kind),
            }
        }
        if outcome == Err(ErrorKind::Connect) && load.mode == Mode::Closed {
            // Not a busy loop against a target that refuses.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    recorder
}

/// One request of `load`'s scenario on `link`, connecting (from `source`, when given) first
/// when it has nothing open.
async fn request(
    load: &Load,
    source: Option<std::net::IpAddr>,
    link: &mut Link,
) -> Result<(), ErrorKind> {
    match load.scenario {
        Scenario::Rr | Scenario::Cps => {
            let close = load.scenario == Scenario::Cps;
            if close || !matches!(link, Link::Http(_)) {
                *link = Link::Http(crate::http::Connection::open(load.target, source).await?);
            }
            let Link::Http(conn) = link else {
                unreachable!("opened above")
            };
            let answered = conn.get(load.target, close).await;
            if close {
                *link = Link::None;
            }
            answered
        }
        Scenario::Udp => {
            if !matches!(link, Link::Udp(_)) {
                *link = Link::Udp(crate::udp::Flow::open(load.target, source).await?);
            }
            let Link::Udp(flow) = link else {
                unreachable!("opened above")
            };
            flow.ask().await
        }
    }
}
