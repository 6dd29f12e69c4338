//! What a load measured, per client thread while it runs ([`Recorder`], [`Counts`]) and
//! merged into the [`Report`] users read: latency percentiles in microseconds from an
//! HdrHistogram (three significant digits, up to a minute), throughput, errors by kind, each
//! rate step's own, and a timeline of what was answered and what failed.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The longest latency recorded exactly, in microseconds (a minute); longer ones are
/// recorded as this.
const HIGHEST_US: u64 = 60_000_000;

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The connection could not be made (refused, unreachable).
    Connect,
    /// No answer within the request timeout.
    Timeout,
    /// The connection failed or closed mid-request (a reset, a close), or the answer was not
    /// HTTP.
    Io,
    /// An HTTP answer whose status was not 2xx.
    Status,
}

/// Failed requests, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorCounts {
    pub connect: u64,
    pub timeout: u64,
    pub io: u64,
    pub status: u64,
}

impl ErrorCounts {
    /// Every failed request.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.io + self.status
    }

    fn add(&mut self, other: &ErrorCounts) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.io += other.io;
        self.status += other.status;
    }
}

/// Latency percentiles of the successful requests, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// The outcome of one load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The address loaded.
    pub target: String,
    /// `rr`, `cps`, `bulk` or `udp`.
    pub scenario: String,
    /// `open` (fixed rates) or `closed`.
    pub mode: String,
    /// Requests a second asked for (open loop only; the first step's).
    pub rate: Option<f64>,
    pub connections: usize,
    pub threads: usize,
    /// The measured window (after the warm-up; every step).
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Requests answered within the window.
    pub requests: u64,
    /// Requests answered per second of the window.
    pub throughput_rps: f64,
    /// Bytes carried within the window (`bulk`; 0 for the others).
    pub bytes: u64,
    /// Bits carried a second, in billions (`bulk`).
    pub throughput_gbps: f64,
    pub errors: ErrorCounts,
    pub latency_us: Latency,
    /// Each rate step's own numbers (one step without steps), in order.
    pub steps: Vec<StepReport>,
    pub timeline: Timeline,
    /// CPU microseconds the load generator's client threads spent per request (answered or
    /// not, warm-up included): its own cost, to compare with a proxy's per core, so that a
    /// run never measures the harness instead of the target.
    pub client_cpu_us_per_request: f64,
}

/// One rate step of a load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Requests a second asked for (`null`: closed loop).
    pub rate: Option<f64>,
    /// When it started, after the warm-up.
    pub start_s: f64,
    pub duration_s: f64,
    pub requests: u64,
    pub throughput_rps: f64,
    pub bytes: u64,
    pub errors: ErrorCounts,
    pub latency_us: Latency,
}

/// Requests answered and failed in each interval of the measured window, by when they
/// ended: throughput over time (the first interval starts when the warm-up ends).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    pub interval_s: f64,
    pub answered: Vec<u64>,
    pub failed: Vec<u64>,
}

impl Timeline {
    /// Answered requests a second in each interval.
    pub fn throughput(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        let width = self.interval_s;
        self.answered
            .iter()
            .enumerate()
            .map(move |(i, &n)| (width * (i as f64 + 0.5), n as f64 / width.max(1e-9)))
    }
}

/// A client thread's timeline while it runs.
#[derive(Clone, Debug)]
pub struct Counts {
    origin: Instant,
    width: Duration,
    answered: Vec<u64>,
    failed: Vec<u64>,
}

impl Counts {
    /// Intervals of `width` from `origin` over `length`.
    pub fn new(origin: Instant, width: Duration, length: Duration) -> Counts {
        let n = (length.as_secs_f64() / width.as_secs_f64()).ceil().max(1.0) as usize;
        Counts {
            origin,
            width,
            answered: vec![0; n],
            failed: vec![0; n],
        }
    }

    /// A request that ended at `at`, answered or not (before the origin: not recorded;
    /// after the last interval: in the last).
    pub fn ended(&mut self, at: Instant, answered: bool) {
        let Some(since) = at.checked_duration_since(self.origin) else {
            return;
        };
        let i = (since.as_nanos() / self.width.as_nanos().max(1)) as usize;
        let series = if answered {
            &mut self.answered
        } else {
            &mut self.failed
        };
        let last = series.len() - 1;
        series[i.min(last)] += 1;
    }

    /// Adds `other`'s counts (of the same intervals) to these.
    pub fn merge(&mut self, other: &Counts) {
        for (a, b) in self.answered.iter_mut().zip(&other.answered) {
            *a += b;
        }
        for (a, b) in self.failed.iter_mut().zip(&other.failed) {
            *a += b;
        }
    }
}

impl From<&Counts> for Timeline {
    fn from(c: &Counts) -> Timeline {
        Timeline {
            interval_s: c.width.as_secs_f64(),
            answered: c.answered.clone(),
            failed: c.failed.clone(),
        }
    }
}

/// One client thread's measurements.
#[derive(Debug)]
pub struct Recorder {
    latency: Histogram<u64>,
    errors: ErrorCounts,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: Histogram::new_with_bounds(1, HIGHEST_US, 3)
                .expect("constant histogram bounds are valid"),
            errors: ErrorCounts::default(),
        }
    }
}

impl Recorder {
    /// A request answered `latency` after it was scheduled (or sent, in a closed loop).
    pub fn answered(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, HIGHEST_US);
        self.latency.saturating_record(us);
    }

    /// A request failed.
    pub fn failed(&mut self, kind: ErrorKind) {
        let counter = match kind {
            ErrorKind::Connect => &mut self.errors.connect,
            ErrorKind::Timeout => &mut self.errors.timeout,
            ErrorKind::Io => &mut self.errors.io,
            ErrorKind::Status => &mut self.errors.status,
        };
        *counter += 1;
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: &Recorder) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        self.errors.add(&other.errors);
    }

    /// Requests answered.
    pub fn answered_count(&self) -> u64 {
        self.latency.len()
    }

    /// Errors by kind.
    pub fn errors(&self) -> ErrorCounts {
        self.errors
    }

    /// The percentiles of the answered requests (all zero without any).
    pub fn latency(&self) -> Latency {
        let h = &self.latency;
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_merge_across_threads_and_errors_count_by_kind() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for ms in 1..=99 {
            a.answered(Duration::from_millis(ms));
        }
        b.answered(Duration::from_secs(2));
        b.failed(ErrorKind::Timeout);
        b.failed(ErrorKind::Connect);
        a.merge(&b);
        let l = a.latency();
        assert_eq!(a.answered_count(), 100);
        assert!((49_900..=50_100).contains(&l.p50), "{l:?}");
        assert!((98_900..=99_100).contains(&l.p99), "{l:?}");
        assert!((1_999_000..=2_001_000).contains(&l.max), "{l:?}");
        assert_eq!(a.errors().total(), 2);
        assert_eq!(a.errors().timeout, 1);
    }

    #[test]
    fn the_timeline_counts_by_interval_and_merges() {
        let origin = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Counts::new(origin, ms(100), ms(1000));
        let mut b = Counts::new(origin, ms(100), ms(1000));
        a.ended(origin + ms(50), true);
        a.ended(origin + ms(150), true);
        b.ended(origin + ms(199), false);
        b.ended(origin + ms(5000), true);
        a.merge(&b);
        let t = Timeline::from(&a);
        assert_eq!(t.answered.len(), 10);
        assert_eq!(&t.answered[..2], &[1, 1]);
        assert_eq!(t.failed[1], 1);
        assert_eq!(t.answered[9], 1, "late ends count in the last interval");
        let (x, rps) = t.throughput().next().unwrap();
        assert!((x - 0.05).abs() < 1e-9 && (rps - 10.0).abs() < 1e-9);
    }
}
