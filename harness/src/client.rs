//! The load's client side: each client thread runs its connections on a current-thread
//! runtime of its own (pinned to a CPU when asked); each connection sends its requests on
//! the timetable of its segment (open loop) or back to back (closed loop), and records
//! what happened to each in the step it counts in.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::load::{Load, Scenario};
use crate::progress::Counters;
use crate::stats::{Counts, ErrorKind, Recorder};
use crate::window::Window;

/// Intervals of the timeline: a tenth of a second, or finer than 300 over long loads.
fn interval(measured: Duration) -> Duration {
    (measured / 300).max(Duration::from_millis(100))
}

/// What one thread (or all of them, merged) measured.
#[derive(Debug)]
pub(crate) struct Measured {
    /// One per rate step.
    pub(crate) steps: Vec<Recorder>,
    pub(crate) timeline: Counts,
    /// CPU time the client threads spent (warm-up included).
    pub(crate) cpu: Duration,
}

impl Measured {
    pub(crate) fn new(window: &Window) -> Measured {
        let measured = window.end() - window.counted;
        Measured {
            steps: window.rates.iter().map(|_| Recorder::default()).collect(),
            timeline: Counts::new(window.counted, interval(measured), measured),
            cpu: Duration::ZERO,
        }
    }

    pub(crate) fn merge(&mut self, other: &Measured) {
        for (mine, theirs) in self.steps.iter_mut().zip(&other.steps) {
            mine.merge(theirs);
        }
        self.timeline.merge(&other.timeline);
        self.cpu += other.cpu;
    }
}

/// Thread `t`: its connections on a runtime of its own.
pub(crate) fn thread(
    load: &Arc<Load>,
    t: usize,
    window: &Window,
    counters: &Arc<Counters>,
) -> Measured {
    if let Some(&cpu) = load.cpus.get(t % load.cpus.len().max(1)) {
        // Not pinned, the load still runs.
        let _ = pin(cpu);
    }
    let cpu = crate::usage::thread_cpu();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return Measured::new(window),
    };
    let mut measured = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for j in (t..load.connections).step_by(load.threads) {
            let (load, window, counters) = (Arc::clone(load), window.clone(), Arc::clone(counters));
            tasks.spawn(async move { connection(&load, j, &window, &counters).await });
        }
        let mut measured = Measured::new(window);
        while let Some(done) = tasks.join_next().await {
            if let Ok(m) = done {
                measured.merge(&m);
            }
        }
        measured
    });
    measured.cpu = crate::usage::thread_cpu().saturating_sub(cpu);
    measured
}

/// Pins the calling thread (a process, called between fork and exec) to `cpu`. Only
/// `sched_setaffinity` is called, which is async-signal-safe.
pub fn pin(cpu: usize) -> std::io::Result<()> {
    pin_set(&[cpu])
}

/// Pins the calling thread (or process, as [`pin`]) to the CPUs of `cpus`; allocates nothing.
pub fn pin_set(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: `cpu_set_t` is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: CPU_SET writes one bit of `set`, which we own; `cpu` is within its size.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
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
    Stream(tokio::net::TcpStream),
    Udp(crate::udp::Flow),
}

/// Connection `j` of the load: through the warm-up and each step, its requests on the
/// step's timetable (open) or back to back (closed).
async fn connection(load: &Load, j: usize, window: &Window, counters: &Counters) -> Measured {
    let mut measured = Measured::new(window);
    let mut link = Link::None;
    let source = load.sources.get(j % load.sources.len().max(1)).copied();
    for (from, until, rate, step) in window.segments() {
        for k in 0u64.. {
            let scheduled = match rate {
                Some(rate) => {
                    let slot = (j as f64 + k as f64 * load.connections as f64) / rate;
                    from + Duration::from_secs_f64(slot)
                }
                None => Instant::now().max(from),
            };
            if scheduled >= until {
                break;
            }
            if scheduled > Instant::now() {
                // Only when it is due later: a timer that is due already still waits for
                // the runtime's next tick (up to a millisecond).
                tokio::time::sleep_until(scheduled).await;
            }
            let requested = request(load, source, &mut link);
            let outcome = tokio::time::timeout(load.timeout, requested).await;
            let outcome = outcome.unwrap_or(Err(ErrorKind::Timeout));
            let ended = Instant::now();
            counters.ended(outcome.is_ok());
            if outcome.is_err() {
                // A failed connection is made again for the next request.
                link = Link::None;
            }
            if let Some(step) = step {
                measured.timeline.ended(ended, outcome.is_ok());
                let recorder = &mut measured.steps[step];
                match outcome {
                    Ok(()) => recorder.answered(ended - scheduled),
                    Err(kind) => recorder.failed(kind),
                }
            }
            if outcome == Err(ErrorKind::Connect) && rate.is_none() {
                // Not a busy loop against a target that refuses.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    measured
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
            let reusable = conn.get(load.target, close).await?;
            if close || !reusable {
                *link = Link::None;
            }
            Ok(())
        }
        Scenario::Bulk => {
            if !matches!(link, Link::Stream(_)) {
                let stream = crate::http::connect(load.target, source).await;
                *link = Link::Stream(stream.map_err(|_| ErrorKind::Connect)?);
            }
            let Link::Stream(stream) = link else {
                unreachable!("opened above")
            };
            crate::bulk::send_chunk(stream).await
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
